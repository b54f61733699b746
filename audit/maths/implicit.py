"""Implicit hypergradients at the optimum of a convex training objective (issue 21; Koh & Liang 2017, Biggio et al. 2012).

For a victim trained to the minimiser ``w*(h)`` of a strongly convex objective ``L(w, h)``
(``h``: the poisons' features, the log L2 strength λ, …), the optimality condition
``∇_w L(w*, h) = 0`` gives, by the implicit function theorem,

    dA/dh = −(∇_h ∇_w L(w*, h))ᵀ H⁻¹ ∇_w A(w*),    H = ∇²_w L(w*, h)

for the attacker's objective ``A`` (the validation loss). One linear solve ``H v = ∇_w A`` —
conjugate gradient on Hessian-vector products, or any :class:`audit.maths.linear_solve.LinearSolver`
— and one mixed-partial product ``−∇_h⟨∇_w L(w*, h), v⟩`` give every hyperparameter's
gradient at once; unlike the unrolled reverse mode (:mod:`audit.maths.hypergrad`) the cost does
not grow with the number of training steps. It is the exact gradient only at the optimum:
``w`` must be the trained minimiser (the caller's solver decides how exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from audit.maths.hypergrad import Inner, Outer
from audit.maths.linear_solve import CG, LinearSolver, SolveResult


@dataclass
class ImplicitResult:
    """``A(w*)``, the hypergradients ``dA/dh`` (one per hyperparameter, same shapes), the solve and
    the gradient norm ``‖∇_w L(w*, h)‖`` that says how close ``w`` is to the optimum."""

    outer: float
    grads: tuple[torch.Tensor, ...]
    solve: SolveResult
    stationarity: float


def implicit_hypergradient(inner: Inner, outer: Outer, w: torch.Tensor, hypers: Sequence[torch.Tensor],
                           solver: LinearSolver | None = None) -> ImplicitResult:  # fmt: skip
    """``dA/dh`` at the minimiser ``w`` of ``inner(w, *hypers)`` (module docstring).

    Parameters
    ----------
    inner : callable(w, *hypers) -> scalar tensor
        The training objective ``L`` (strongly convex in ``w``, e.g. with ρ > 0).
    outer : callable(w) -> scalar tensor
        The attacker's objective ``A``.
    w : tensor, shape (p,)
        The trained weights ``w*`` (flat).
    hypers : tensors
        The hyperparameters ``h`` (any shapes), e.g. ``[x_p (m, d), log ρ ()]``.
    solver : LinearSolver, optional
        Solves ``H v = ∇_w A``; default ``CG(tol=1e-10, max_iter=500)``.
    """
    solver = solver or CG(tol=1e-10, max_iter=500)
    w_var = w.detach().requires_grad_(True)
    h_vars = [h.detach().requires_grad_(True) for h in hypers]
    with torch.enable_grad():
        a = outer(w_var)
        (g_val,) = torch.autograd.grad(a, w_var)
        (g_train,) = torch.autograd.grad(inner(w_var, *h_vars), w_var, create_graph=True)

        def hvp(u: torch.Tensor) -> torch.Tensor:
            (out,) = torch.autograd.grad(g_train, w_var, grad_outputs=u, retain_graph=True)
            return out

        solved = solver(hvp, g_val.detach())
        mixed = torch.autograd.grad(g_train, h_vars, grad_outputs=solved.x.detach(), allow_unused=True)
    grads = tuple(torch.zeros_like(h) if g is None else -g.detach() for h, g in zip(hypers, mixed))
    return ImplicitResult(float(a.detach()), grads, solved, float(g_train.detach().norm()))
