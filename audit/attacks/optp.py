"""OptP, the optimization-based regression poisoning attack (jagielski-2018, Algorithm 1, eq. 13–14).

Gradient ascent on the poisons' features *and* responses ``z_c = (x_c, y_c)`` ("response
variable optimization"), differentiating the outer objective through the trained model:

* inner solution θ(z) of mean ½(y − f)² + (ρ/2)‖w‖² [+ λ₁‖w‖₁] on D_tr ∪ D_p (bias free):
  for ρ-only models the exact solve of the normal equations (``torch.linalg.solve``, so
  the gradient is the implicit gradient of eq. 13–14); with an L1 term, ``unroll_steps``
  proximal-gradient (ISTA) steps from the clean solution, differentiated by autograd;
* outer objectives: ``W_tr`` (MSE of the poisoned model on the clean training set) and
  ``W_val`` (on the validation set);
* initialisation: ``inv_flip`` (y_c = y_lo + y_hi − y) and ``boundary_flip`` (y_c at the
  boundary farther from y) on training points drawn with the seed;
* projected ascent with a backtracking line search (the paper's line search), all poisons
  updated together, features in the box and responses in the response range.

``init: best`` and ``objective: best`` run all four combinations and keep the poisons that
raise the validation MSE most (D_att under the default threat, D_val in the papers': README, Four roles for the data).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from art.attacks.attack import PoisoningAttackWhiteBox
from pydantic import Field

from audit.attacks.base import AttackContext, AttackDiagnostics, AttackParams, AuditAttack, PoisonInput, ThreatModel
from audit.catalog import ProfileSetting
from audit.errors import AuditError


class OptPParams(AttackParams):
    init: Literal["best", "inv_flip", "boundary_flip"] = "best"
    objective: Literal["best", "train", "val"] = "best"
    iterations: int = Field(100, ge=1)
    step: float = Field(0.5, gt=0)
    unroll_steps: int = Field(300, ge=1)
    tol: float = Field(1e-6, ge=0)


def _augment(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)


def ista_step(x: torch.Tensor, l2: float) -> float:
    """1/L for the smooth part on data ``x`` (L = λmax(X̃ᵀX̃/n) + ρ), a constant for autograd."""
    a = _augment(x.detach())
    return 1.0 / (float(torch.linalg.eigvalsh(a.T @ a / len(a)).max()) + l2)


def inner_solution(
    x: torch.Tensor, y: torch.Tensor, l2: float, l1: float, theta0: torch.Tensor, unroll_steps: int, step: float | None = None
) -> torch.Tensor:
    """θ = (w, b) minimising mean ½(y − θᵀx̃)² + (ρ/2)‖w‖² + λ₁‖w‖₁ (differentiable in x and y).

    With an L1 term the solution is ``unroll_steps`` ISTA steps of size ``step`` (held
    constant: pass it so that the unrolled map, and so its gradient, is one function).
    """
    a = _augment(x)
    n, p = a.shape
    reg = torch.diag(torch.cat([torch.full((p - 1,), l2, dtype=x.dtype), torch.zeros(1, dtype=x.dtype)])).to(x.device)
    h = a.T @ a / n + reg
    rhs = a.T @ y / n
    if not l1:
        return torch.linalg.solve(h, rhs)  # eq. (13)–(14): the implicit gradient of the exact solution
    step = ista_step(x, l2) if step is None else step
    theta = theta0
    mask = torch.cat([torch.ones(p - 1, dtype=x.dtype), torch.zeros(1, dtype=x.dtype)]).to(x.device)
    for _ in range(unroll_steps):  # ISTA, unrolled
        moved = theta - step * (h @ theta - rhs)
        shrunk = torch.sign(moved) * torch.clamp(moved.abs() - step * l1, min=0.0)
        theta = mask * shrunk + (1 - mask) * moved
    return theta


@dataclass
class OptPDiagnostics(AttackDiagnostics):
    """The chosen start (``init``, ``objective``) and every run's objective, value, validation metric and iterations."""

    chosen: dict[str, Any] | None = None
    runs: list[dict[str, Any]] | None = None


class OptP(AuditAttack, PoisoningAttackWhiteBox):
    """OptP as an ART white-box poisoning attack against linear regression (ridge, lasso, elastic net).

    Parameters
    ----------
    budget : float
        ε in (0, 1].
    x_val, y_val : ndarray
        The attacker's validation data (outer objective ``W_val``).
    l2, l1 : float
        The victim's regularization (ρ, λ₁).
    lo, hi : ndarray, shape (d,)
        Feature box.
    y_range : (float, float)
        Response range.
    seed : int
    **params
        :class:`OptPParams`.
    """

    name: ClassVar[str] = "optp"
    title: ClassVar[str] = "optimization attack on (x, y)"
    description: ClassVar[str] = "optimization attack on (x, y) through the trained linear model (regression, white-box)"
    threat = ThreatModel(white_box=True, capability="injects points with optimised features and responses in the feature box (data injection)")
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {"quick": ProfileSetting(seeds=1)}
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({"iterations": 5}, {"iterations": 3, "init": "boundary_flip", "objective": "train"})
    Params = OptPParams
    params: OptPParams
    Diagnostics = OptPDiagnostics
    diagnostics: OptPDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    _estimator_requirements = ()

    def __init__(
        self,
        estimator: Any = None,
        *,
        budget: float,
        x_val: np.ndarray,
        y_val: np.ndarray,
        l2: float = 0.0,
        l1: float = 0.0,
        box: tuple[Any, Any] | None = None,
        y_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(estimator, budget=budget, seed=seed, box=box, **params)
        if l2 < 0 or l1 < 0:
            raise AuditError(f"OptP: regularization strengths must be ≥ 0 (got l2={l2}, l1={l1})")
        if l2 == 0 and l1 == 0:
            l2 = 1e-8  # the normal equations need a definite matrix; ~ordinary least squares
        self.x_val = np.asarray(x_val, np.float64)
        self.y_val = np.asarray(y_val, np.float64)
        self.l2, self.l1 = float(l2), float(l1)
        self.y_range = (float(y_range[0]), float(y_range[1]))

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> OptP:
        y_range = (float(ctx.dataset.y_train.min()), float(ctx.dataset.y_train.max()))  # OptP attacks regression only
        return cls(**ctx.optimiser_arguments(), l1=ctx.candidate.l1, y_range=y_range, **params)

    # ------------------------------------------------------------------ objectives
    def objective_value(
        self, x_c: torch.Tensor, y_c: torch.Tensor, x: torch.Tensor, y: torch.Tensor, which: str, theta0: torch.Tensor, step: float | None = None
    ) -> torch.Tensor:
        """W_tr or W_val of the model trained on D_tr ∪ {(x_c, y_c)} (differentiable in x_c, y_c)."""
        theta = inner_solution(torch.cat([x, x_c]), torch.cat([y, y_c]), self.l2, self.l1, theta0, self.params.unroll_steps, step)
        xs, ys = (x, y) if which == "train" else (torch.as_tensor(self.x_val), torch.as_tensor(self.y_val))
        return ((_augment(xs) @ theta - ys) ** 2).mean()

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        x, y, n_poison, rng = task.x, task.y, task.n_poison, task.rng
        # float64 on the CPU: the normal equations of the ridge solution are ill-conditioned in float32
        xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        d = x.shape[1]
        lo = torch.tensor(np.broadcast_to(self.lo, (d,)) if self.lo is not None else np.full(d, -np.inf), dtype=torch.float64)
        hi = torch.tensor(np.broadcast_to(self.hi, (d,)) if self.hi is not None else np.full(d, np.inf), dtype=torch.float64)
        y_lo, y_hi = self.y_range
        with torch.no_grad():
            theta0 = inner_solution(xt, yt, self.l2, self.l1, torch.zeros(x.shape[1] + 1, dtype=torch.float64), 2000)
        idx = rng.choice(len(x), size=n_poison, replace=n_poison > len(x))
        inits = ["inv_flip", "boundary_flip"] if p.init == "best" else [p.init]
        objectives = ["train", "val"] if p.objective == "best" else [p.objective]
        runs = []
        for init, which in self.progress(list(itertools.product(inits, objectives)), "starts"):
            y0 = yt[idx]
            y_c = (y_lo + y_hi - y0) if init == "inv_flip" else torch.where(y0 - y_lo >= y_hi - y0, y_lo, y_hi).to(torch.float64)
            x_c, y_c, value, iters = self._ascend(xt[idx].clone(), y_c.clone(), xt, yt, which, theta0, lo, hi)
            with torch.no_grad():
                w_val = float(self.objective_value(x_c, y_c, xt, yt, "val", theta0))
            runs.append({"init": init, "objective": which, "value": value, "w_val": w_val, "iterations": iters, "x": x_c, "y": y_c})
        best = max(runs, key=lambda r: r["w_val"])
        self.diagnostics.update(
            chosen={"init": best["init"], "objective": best["objective"]},
            runs=[{k: r[k] for k in ("init", "objective", "value", "w_val", "iterations")} for r in runs],
        )
        return best["x"].numpy(), best["y"].numpy().astype(np.float32)

    def _ascend(
        self,
        x_c: torch.Tensor,
        y_c: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        which: str,
        theta0: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
        p = self.params
        y_lo, y_hi = self.y_range
        span = float(torch.max(hi - lo).clamp(max=1e6)) if torch.isfinite(hi - lo).all() else 1.0
        step = p.step * span
        iters = 0
        for iters in range(1, p.iterations + 1):  # noqa: B007 - the count is returned
            # ISTA step fixed for this iteration (0.9/L of the current mixed data): one function to ascend
            inner = 0.9 * ista_step(torch.cat([x, x_c]), self.l2)
            current = float(self.objective_value(x_c, y_c, x, y, which, theta0, inner))
            xv, yv = x_c.clone().requires_grad_(True), y_c.clone().requires_grad_(True)
            gx, gy = torch.autograd.grad(self.objective_value(xv, yv, x, y, which, theta0, inner), [xv, yv])
            scale = float(torch.cat([gx.abs().flatten(), gy.abs()]).max())
            if scale == 0:
                break
            accepted = False
            while step > 1e-8 * span:  # backtracking line search on the projected step
                x_new = torch.maximum(torch.minimum(x_c + step * gx / scale, hi), lo)
                y_new = (y_c + step * gy / scale).clamp(y_lo, y_hi)
                with torch.no_grad():
                    value = float(self.objective_value(x_new, y_new, x, y, which, theta0, inner))
                if value > current:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                break
            gain = value - current
            x_c, y_c, current = x_new, y_new, value
            step = min(step * 2, p.step * span)
            if gain <= p.tol * max(abs(current), 1e-12):
                break
        return x_c.detach(), y_c.detach(), current, iters
