"""Linear solvers as injectable callables (as torchopt's ``linear_solve``; docs/architecture.md, "Layers").

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

#: how often (iterations) CG reads on the host whether it is done, by device type (others: ``"default"``);
#: on a GPU each read waits for the device, on the CPU it costs nothing
CHECK_EVERY: dict[str, int] = {"cpu": 1, "default": 10}
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


class LinearSolver(Protocol):
    """``solve(matvec, b, x0=None) -> SolveResult``; settings are fixed at construction."""

    @property
    def name(self) -> str: ...

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult: ...


def conjugate_gradient(
    matvec: Matvec,
    b: torch.Tensor,
    tol: float = 1e-6,
    max_iter: int = 100,
    x0: torch.Tensor | None = None,
    check_every: int | None = None,
    precondition: Matvec | None = None,
) -> SolveResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` given as ``matvec``; stops at ``‖r‖ ≤ tol·‖b‖``.

    Hestenes & Stiefel (1952): at most ``max_iter`` matvecs; stops early, and says so, on a
    direction of non-positive curvature. ``precondition`` applies ``M⁻¹`` for a symmetric positive
    definite ``M ≈ A`` (preconditioned CG, Golub & Van Loan Alg. 11.5.1): the iterates change, the
    stopping rule does not (the true residual ``‖b − A x‖ ≤ tol·‖b‖``), so a solve is as exact with
    it as without.

    The loop's scalars stay on ``b``'s device (float64): the host reads whether the solve is done
    only every ``check_every`` iterations (default :data:`CHECK_EVERY`: every one on the CPU, where
    a read costs nothing, every 10 on a GPU, where each read waits for the device). Between reads, an
    iteration after the stop changes nothing (its step is masked to zero), so the result is the
    one an every-iteration check gives; a GPU solve only pays up to ``check_every − 1`` idle matvecs.
    """
    every = check_every if check_every is not None else CHECK_EVERY.get(b.device.type, CHECK_EVERY["default"])
    if every == 1:  # reading every iteration anyway: plain host scalars, no masking ops (the CPU's path)
        return _cg_host(matvec, b, tol, max_iter, x0, precondition)
    m_inv = precondition or (lambda u: u)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    z = m_inv(r)
    p = z.clone()
    rz = (r @ z).double()
    rs = (r @ r).double()
    threshold = (tol * b.norm().double()).clamp_min(tol * 1e-30) ** 2  # ‖r‖² ≤ (tol·‖b‖)²
    b_norm = b.norm().double().clamp_min(1e-30)
    zero = torch.zeros((), dtype=torch.float64, device=b.device)
    done = rs <= threshold  # bool tensors: stopped, and why
    bent = torch.zeros((), dtype=torch.bool, device=b.device)
    n_iter = torch.zeros((), dtype=torch.int64, device=b.device)
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        curvature = (p @ ap).double()
        bent = bent | (~done & (curvature <= 0))  # not positive definite along p: stop and say so
        done = done | bent
        alpha = torch.where(done, zero, rz / torch.where(done, torch.ones_like(rz), curvature))
        x = x + alpha.to(x.dtype) * p
        r = r - alpha.to(r.dtype) * ap
        z = m_inv(r)
        rz_new = torch.where(done, rz, (r @ z).double())
        p = torch.where(done, p, z + (rz_new / rz).to(p.dtype) * p)
        n_iter = n_iter + (~done).long()
        rz = rz_new
        rs = torch.where(done, rs, (r @ r).double())
        done = done | (rs <= threshold)
        if it % every == 0 and bool(done):
            break
    residual = float(rs.sqrt() / b_norm)
    stop: Stop = "curvature" if bool(bent) else ("tolerance" if residual <= tol else "max_iter")
    return SolveResult(x, int(n_iter), residual, residual <= tol, stop)


def _cg_host(matvec: Matvec, b: torch.Tensor, tol: float, max_iter: int, x0: torch.Tensor | None, precondition: Matvec | None = None) -> SolveResult:
    """:func:`conjugate_gradient` reading its scalars on the host every iteration (the same iterates)."""
    m_inv = precondition or (lambda u: u)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    z = m_inv(r)
    p = z.clone()
    rz = float(r @ z)
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
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * ap
        z = m_inv(r)
        rz_new = float(r @ z)
        p = z + (rz_new / rz) * p
        rz, rs = rz_new, float(r @ r)
    residual = rs**0.5 / b_norm
    if stop == "max_iter" and residual <= tol:
        stop = "tolerance"
    return SolveResult(x, n_iter, residual, residual <= tol, stop)


@dataclass(frozen=True)
class CG:
    """Conjugate gradient on ``A x = b`` (``A`` symmetric positive definite), preconditioned by
    ``precondition`` (``u ↦ M⁻¹u``) when one is given (:func:`conjugate_gradient`)."""

    tol: float = 1e-6
    max_iter: int = 100
    name: str = "cg"
    precondition: Matvec | None = None

    def __call__(self, matvec: Matvec, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        return conjugate_gradient(matvec, b, self.tol, self.max_iter, x0, precondition=self.precondition)


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
