"""Linear solvers as injectable callables (torchopt's ``linear_solve``; STYLE.md §3).

A solver is called as ``solve(matvec, b, x0=None) -> SolveResult``, where ``matvec`` applies
a square operator ``A`` (shape ``(d,) → (d,)``, typically a damped Hessian-vector product)
and ``b`` has shape ``(d,)``. Its settings (tolerance, iteration cap) are fixed when it is
built, so callers such as TGDA's implicit gradient (Eq. 15–17) or the influence filter
(Koh & Liang 2017, Eq. 2) take a solver and never decide how it solves. Every result says
how the solve ended: iterations, relative residual ``‖A x − b‖ / ‖b‖``, whether it met its
tolerance and why it stopped.

* :class:`CG` — conjugate gradient for symmetric positive definite ``A`` (convex victims);
* :class:`NormalCG` — CG on the normal equations ``A² x = A b`` (symmetric but indefinite
  ``A``: the Hessian of a network), the same solution when ``A`` is invertible;
* :class:`ExactSolve` — builds ``A`` from ``d`` matvecs and solves it by LU (least squares
  when singular): for tests and small problems, where it is the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]
Stop = Literal["tolerance", "max_iter", "curvature", "exact"]


@dataclass
class SolveResult:
    """``x`` (shape ``(d,)``) solves ``A x = b`` to relative residual ``residual`` after ``n_iter`` iterations.

    ``stop`` says why the solver ended: ``tolerance`` (met it), ``max_iter`` (ran out),
    ``curvature`` (CG met a direction of non-positive curvature: ``A`` is not positive
    definite there) or ``exact`` (a direct solve).
    """

    x: torch.Tensor
    n_iter: int
    residual: float
    converged: bool
    stop: Stop = "tolerance"
    method: str = "cg"


CGResult = SolveResult  # the name the first wave used


class LinearSolver(Protocol):
    """``solve(matvec, b, x0=None) -> SolveResult``; settings are fixed at construction."""

    @property
    def name(self) -> str: ...

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult: ...


def conjugate_gradient(matvec: Matvec, b: torch.Tensor, tol: float = 1e-6, max_iter: int = 100,
                       x0: torch.Tensor | None = None) -> SolveResult:  # fmt: skip
    """Solve ``A x = b`` for symmetric positive definite ``A`` given as ``matvec``; stops at ``‖r‖ ≤ tol·‖b‖``.

    Hestenes & Stiefel (1952): at most ``max_iter`` matvecs; stops early, and says so, on a
    direction of non-positive curvature.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = float(r @ r)
    b_norm = max(float(b.norm()), 1e-30)
    n_iter = 0
    stop: Stop = "max_iter"
    for n_iter in range(1, max_iter + 1):
        if rs**0.5 <= tol * b_norm:
            n_iter -= 1
            stop = "tolerance"
            break
        ap = matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0:  # not positive definite along p: stop and say so
            stop = "curvature"
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    residual = rs**0.5 / b_norm
    if stop == "max_iter" and residual <= tol:
        stop = "tolerance"
    return SolveResult(x, n_iter, residual, residual <= tol, stop)


@dataclass(frozen=True)
class CG:
    """Conjugate gradient on ``A x = b`` (``A`` symmetric positive definite)."""

    tol: float = 1e-6
    max_iter: int = 100
    name: str = "cg"

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        return conjugate_gradient(matvec, b, self.tol, self.max_iter, x0)


@dataclass(frozen=True)
class NormalCG:
    """Conjugate gradient on the normal equations ``A² x = A b`` (``A`` symmetric, possibly indefinite).

    Each iteration costs two matvecs. The reported residual is that of the normal equations,
    ``‖A² x − A b‖ / ‖A b‖``, the quantity the tolerance applies to.
    """

    tol: float = 1e-6
    max_iter: int = 100
    name: str = "normal"

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        result = conjugate_gradient(lambda u: matvec(matvec(u)), matvec(b), self.tol, self.max_iter, x0)
        result.method = self.name
        return result


@dataclass(frozen=True)
class ExactSolve:
    """Direct solve: ``A`` assembled column by column from ``d`` matvecs, then LU (least squares if singular).

    Costs ``d`` matvecs and ``O(d²)`` memory, so it is for tests and small problems; its
    residual is the true ``‖A x − b‖ / ‖b‖``.
    """

    tol: float = 1e-6
    name: str = "exact"

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        eye = torch.eye(len(b), dtype=b.dtype, device=b.device)
        a = torch.stack([matvec(e) for e in eye], dim=1)
        try:
            x = torch.linalg.solve(a, b)
        except RuntimeError:  # singular: the least-squares solution
            x = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        residual = float((a @ x - b).norm()) / max(float(b.norm()), 1e-30)
        return SolveResult(x, len(b), residual, residual <= self.tol, "exact", self.name)


SOLVER_NAMES = ("cg", "normal", "exact")


def make_solver(name: str, tol: float, max_iter: int) -> LinearSolver:
    """The solver a config names (``cg``, ``normal`` or ``exact``) with its tolerance and iteration cap."""
    if name == "cg":
        return CG(tol, max_iter)
    if name == "normal":
        return NormalCG(tol, max_iter)
    if name == "exact":
        return ExactSolve(tol)
    raise ValueError(f"unknown linear solver {name!r}; valid: {', '.join(SOLVER_NAMES)}")
