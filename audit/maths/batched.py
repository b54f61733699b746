"""Many independent softmax regressions trained at once: the learners of a partition ensemble (README: Certificates).

Learner ``i`` minimises its own strongly convex objective (ρ > 0)

    L_i(W_i, b_i) = (1/n_i) Σ_{j ∈ part i} CE(W_i φ_j + b_i, y_j) + (ρ/2)‖W_i‖²

on its own points; the problems share nothing, so they are solved side by side as one batch — a padded
tensor of shape (K, n_max, d) with a mask — by truncated Newton whose every scalar (CG's step lengths, the
Armijo backtracking, the stopping test) is per learner: each learner follows the path it would follow alone
(:func:`audit.maths.implicit.newton_cg`'s rule) and stops at ``‖∇L_i‖ ≤ tol``. One batched matrix product per
Hessian-vector product instead of K small ones: what makes K = 1200 learners cheap on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class BatchedSoftmax:
    """``K`` softmax regressions on padded inputs.

    Attributes
    ----------
    phi : tensor, shape (K, n_max, d)
        Each learner's points (padding rows arbitrary, masked out).
    labels : tensor, shape (K, n_max), long
    mask : tensor, shape (K, n_max)
        1 for a learner's own points, 0 for padding.
    rho : float
    n_out : int
        ``c``, the classes.
    """

    phi: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    rho: float
    n_out: int

    def __post_init__(self) -> None:
        self.count = self.mask.sum(1).clamp_min(1.0)  # (K,)
        self.onehot = torch.nn.functional.one_hot(self.labels, self.n_out).to(self.phi.dtype)

    def take(self, rows: torch.Tensor) -> BatchedSoftmax:
        """The learners ``rows`` alone (their data copied): the batch the solvers shrink to as learners finish."""
        return BatchedSoftmax(self.phi[rows], self.labels[rows], self.mask[rows], self.rho, self.n_out)

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w`` (K, c·d + c) → weights (K, c, d) and biases (K, c) (``nn.Linear``'s order, per learner)."""
        c, d = self.n_out, self.phi.shape[2]
        return w[:, : c * d].reshape(-1, c, d), w[:, c * d :]

    def _logits(self, w: torch.Tensor) -> torch.Tensor:
        weight, bias = self.split(w)
        return torch.einsum("knd,kcd->knc", self.phi, weight) + bias[:, None, :]

    def value(self, w: torch.Tensor) -> torch.Tensor:
        """Each learner's objective, shape (K,)."""
        z = self._logits(w)
        loss = (torch.logsumexp(z, dim=2) - (z * self.onehot).sum(2)) * self.mask
        return loss.sum(1) / self.count + 0.5 * self.rho * self.split(w)[0].pow(2).sum((1, 2))

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """Each learner's gradient, shape (K, c·d + c)."""
        r = (torch.softmax(self._logits(w), dim=2) - self.onehot) * (self.mask / self.count[:, None])[:, :, None]
        gw = torch.einsum("knc,knd->kcd", r, self.phi) + self.rho * self.split(w)[0]
        return torch.cat([gw.reshape(len(w), -1), r.sum(1)], dim=1)

    def hvp(self, w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``u ↦ H_i u_i`` for every learner at ``w`` (a function of (K, p) → (K, p))."""
        p = torch.softmax(self._logits(w), dim=2)
        scale = (self.mask / self.count[:, None])[:, :, None]

        def matvec(u: torch.Tensor) -> torch.Tensor:
            du, db = self.split(u)
            dz = torch.einsum("knd,kcd->knc", self.phi, du) + db[:, None, :]
            pdz = p * dz
            dz = (pdz - p * pdz.sum(2, keepdim=True)) * scale
            gw = torch.einsum("knc,knd->kcd", dz, self.phi) + self.rho * du
            return torch.cat([gw.reshape(len(u), -1), dz.sum(1)], dim=1)

        return matvec


@dataclass
class BatchedFit:
    """Per learner: the weights (K, p), the objective and ``‖∇‖`` reached (K,), and Newton steps taken (K,)."""

    w: torch.Tensor
    value: torch.Tensor
    grad_norm: torch.Tensor
    steps: torch.Tensor


def _batched_cg(problem: BatchedSoftmax, w: torch.Tensor, b: torch.Tensor, tol: torch.Tensor, max_iter: int, compact_every: int = 20) -> torch.Tensor:
    """CG for every learner's system ``H_i x_i = b_i`` (``H_i`` at ``w_i``) at once, each stopping at
    ``‖r_i‖ ≤ tol_i·‖b_i‖`` or on non-positive curvature; every ``compact_every`` iterations the batch shrinks to the
    learners still iterating, so the slowest few do not carry the finished ones' cost."""
    x = torch.zeros_like(b)
    rows = torch.arange(len(b), device=b.device)  # the learners still in the batch
    sub, matvec = problem, problem.hvp(w)
    r, p = b.clone(), b.clone()
    rs = (r * r).sum(1)
    threshold = (tol * b.norm(dim=1)) ** 2
    done = rs <= threshold
    for it in range(max_iter):
        if bool(done.all()):
            break
        if it and it % compact_every == 0 and bool(done.any()):
            keep = torch.nonzero(~done).flatten()
            rows, r, p, rs, threshold, done = rows[keep], r[keep], p[keep], rs[keep], threshold[keep], done[keep]
            sub = sub.take(keep)
            matvec = sub.hvp(w[rows])
        ap = matvec(p)
        curvature = (p * ap).sum(1)
        done = done | (curvature <= 0)
        alpha = torch.where(done, torch.zeros_like(rs), rs / torch.where(done, torch.ones_like(rs), curvature))
        x[rows] += alpha[:, None] * p
        r = r - alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        beta = torch.where(done, torch.zeros_like(rs), rs_new / rs.clamp_min(1e-300))
        p = torch.where(done[:, None], p, r + beta[:, None] * p)
        rs = torch.where(done, rs, rs_new)
        done = done | (rs <= threshold)
    return x


def batched_newton_cg(problem: BatchedSoftmax, w0: torch.Tensor, tol: float = 1e-8, max_iter: int = 100, cg_max_iter: int = 500) -> BatchedFit:
    """Every learner's minimiser by truncated Newton, independently (module docstring): per learner, CG to the
    relative residual ``min(0.5, √‖∇‖)``, Armijo backtracking along its own direction, stop at ``‖∇‖ ≤ tol``."""
    w = w0.detach().clone()
    value, g = problem.value(w), problem.grad(w)
    steps = torch.zeros(len(w), dtype=torch.long, device=w.device)
    for _ in range(max_iter):
        active = torch.nonzero(g.norm(dim=1) > tol).flatten()
        if len(active) == 0:
            break
        sub, wa, ga, va = problem.take(active), w[active], g[active], value[active]  # the learners not at their minimum
        g_norm = ga.norm(dim=1)
        d = _batched_cg(sub, wa, -ga, torch.clamp(g_norm.sqrt(), max=0.5), cg_max_iter)
        slope = (ga * d).sum(1)
        bad = slope >= 0  # CG stopped on curvature: a gradient step there
        d = torch.where(bad[:, None], -ga, d)
        slope = torch.where(bad, -(g_norm**2), slope)
        t = torch.ones_like(va)
        pending = torch.ones_like(va, dtype=torch.bool)
        for _ in range(40):  # Armijo, per learner
            trial = sub.value(wa + t[:, None] * d)
            ok = (trial <= va + 1e-4 * t * slope) | (-slope <= 1e-12 * va.abs().clamp_min(1.0))
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        w[active] = wa + t[:, None] * d
        value[active], g[active] = sub.value(w[active]), sub.grad(w[active])
        steps[active] += 1
    return BatchedFit(w, value, g.norm(dim=1), steps)
