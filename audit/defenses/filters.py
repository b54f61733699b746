"""Data-sanitisation filters for any torch victim (TGDA paper, tables 10–11; poisonability paper, table 3).

Each trains the victim on the mixed set with its own procedure, scores every point and
returns a keep-mask that drops the ``round(rate·N/(1+rate))`` highest-scoring points — the
number of poisons when the assumed rate is right — after which the grid retrains normally.

* loss filter (Koh et al. 2022): score = the point's training loss;
* influence filter (Koh & Liang 2017): score = the harm of up-weighting the point on the
  validation loss, ``−⟨∇L_val, (H + λI)⁻¹ ∇ℓ(z_i)⟩``, one CG solve on Hessian-vector products;
* Sever (Diakonikolas et al. 2019): per-sample gradients, centred, top right singular vector
  ``v``; score = ``⟨g_i − ḡ, v⟩²``; the removal is spread over ``rounds`` rounds, retraining
  between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from audit.defenses.base import Defense, DefenseParams, DefenseResult
from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.maths.autodiff import mean_gradient, objective_hvp, per_sample_gradients
from audit.maths.linear_solve import CG
from audit.models.candidate import Candidate


def _n_remove(rate: float, n_total: int) -> int:
    return int(round(n_total - n_total / (1 + rate)))


def _drop_top(scores: np.ndarray, k: int, keep: np.ndarray) -> np.ndarray:
    """Drop the ``k`` highest scores among the points still kept (ties by index, stable)."""
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    out = keep.copy()
    out[order[:k]] = False
    return out


def _module_of(fitted: Any, name: str) -> torch.nn.Module:
    from audit.models.surrogate import SklearnSurrogate

    module = fitted.module
    if module is None or isinstance(module, SklearnSurrogate):  # a scikit-learn model (its surrogate is for attacks)
        raise AuditError(f"defense {name!r} needs a torch victim (it reads gradients); a scikit-learn model cannot serve it")
    return module


def _tensors(fitted: Any, x: np.ndarray, y: np.ndarray, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(fitted.module.parameters()).device
    dtype = torch.long if task == "classification" else torch.float32
    return torch.as_tensor(x, dtype=torch.float32, device=device), torch.as_tensor(y, dtype=dtype, device=device)


@dataclass
class RemovedDiagnostics(Diagnostics):
    """How many points the filter removed (or flagged)."""

    removed: int | None = None


@dataclass
class InfluenceDiagnostics(Diagnostics):
    """How the inverse-Hessian solve H⁻¹∇L_val ended (Koh & Liang, Eq. 2)."""

    cg_iterations: int | None = None
    cg_residual: float | None = None
    cg_converged: bool | None = None


@dataclass
class SeverDiagnostics(Diagnostics):
    rounds: int | None = None
    last_layer_only: bool | None = None


class InfluenceParams(DefenseParams):
    damping: float = Field(0.01, ge=0)
    cg_iter: int = Field(200, ge=1)
    cg_tol: float = Field(1e-6, gt=0)


class SeverParams(DefenseParams):
    large_counts: ClassVar[frozenset[str]] = frozenset({"max_params"})

    rounds: int = Field(2, ge=1)
    max_params: int = Field(100_000, ge=1, le=10**10)  # a parameter count, not an iteration count


class LossFilter(Defense):
    """Remove the points with the largest training loss under the model trained on the mixed set."""

    filters: ClassVar[bool] = True

    name: ClassVar[str] = "loss_filter"
    draws_randomness: ClassVar[bool] = False
    Diagnostics = RemovedDiagnostics
    description: ClassVar[str] = "loss filter: drop the ε fraction with the largest training loss, retrain"

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        fitted = victim.fit(x, y, candidate.hparams, self.seed)
        if victim.task == "classification":
            scores = fitted.class_losses(x)[np.arange(len(y)), y.astype(int)]
        else:
            scores = (fitted.predict(x).reshape(-1) - y) ** 2
        keep = _drop_top(scores, _n_remove(self.rate, len(y)), np.ones(len(y), bool))
        return DefenseResult(keep=keep, diagnostics=RemovedDiagnostics(removed=int((~keep).sum())))


class InfluenceFilter(Defense):
    """Remove the points whose up-weighting raises the validation loss most (influence functions)."""

    filters: ClassVar[bool] = True

    name: ClassVar[str] = "influence_filter"
    draws_randomness: ClassVar[bool] = False
    Diagnostics = InfluenceDiagnostics
    victims: ClassVar[tuple[str, ...]] = ("torch",)
    description: ClassVar[str] = "influence filter: drop the ε fraction most harmful to the validation loss (H⁻¹ by CG)"

    def __init__(
        self,
        rate: float,
        seed: int,
        damping: float = 0.01,
        cg_iter: int = 200,
        cg_tol: float = 1e-6,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__(rate, seed)
        self.damping, self.cg_iter, self.cg_tol = damping, cg_iter, cg_tol
        self.validation = validation

    Params = InfluenceParams
    reads_validation: ClassVar[bool] = True

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"validation": dataset.defense_validation()}

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        if self.validation is None:
            raise AuditError("influence_filter needs the validation split (the grid passes it)")
        fitted = victim.fit(x, y, candidate.hparams, self.seed)
        module = _module_of(fitted, self.name)
        task = victim.task
        xt, yt = _tensors(fitted, x, y, task)
        xv, yv = _tensors(fitted, *self.validation, task)
        l2 = candidate.rho
        g_val = mean_gradient(module, xv, yv, task)
        solve = CG(self.cg_tol, self.cg_iter)(objective_hvp(module, xt, yt, task, l2, self.damping), g_val)
        grads = per_sample_gradients(module, xt, yt, task)
        scores = (-(grads @ solve.x)).detach().cpu().numpy()  # harm of up-weighting z_i on L_val
        keep = _drop_top(scores, _n_remove(self.rate, len(y)), np.ones(len(y), bool))
        return DefenseResult(keep=keep, diagnostics=InfluenceDiagnostics(solve.n_iter, solve.residual, solve.converged))


def top_right_singular_vector(a: torch.Tensor, tol: float = 1e-12, max_iter: int = 1000) -> torch.Tensor:
    """Top right singular vector of ``a`` (n × p) by power iteration on ``aᵀa`` (deterministic start).

    A full SVD of an (n × p) gradient matrix costs ~50 s for mnist5k logreg on 2 cores; this
    needs two matrix-vector products per iteration.
    """
    v = a.abs().sum(dim=0)  # deterministic, non-orthogonal to the top direction for generic data
    v = v / v.norm()
    for _ in range(max_iter):
        w = a.T @ (a @ v)
        w = w / w.norm()
        if float((w - v).norm()) <= tol:
            return w
        v = w
    return v


def sever_scores(grads: torch.Tensor) -> np.ndarray:
    """Sever's outlier scores: squared projection of the centred gradients on their top right singular vector."""
    centred = (grads - grads.mean(dim=0, keepdim=True)).double()
    v = top_right_singular_vector(centred)
    return ((centred @ v) ** 2).cpu().numpy()


class Sever(Defense):
    """Sever: remove the points whose centred gradients project most on the top singular direction."""

    filters: ClassVar[bool] = True

    name: ClassVar[str] = "sever"
    draws_randomness: ClassVar[bool] = False
    Diagnostics = SeverDiagnostics
    victims: ClassVar[tuple[str, ...]] = ("torch",)
    Params = SeverParams
    description: ClassVar[str] = "Sever: drop points with the largest squared projection of centred gradients on the top singular vector"

    def __init__(self, rate: float, seed: int, rounds: int = 2, max_params: int = 100_000) -> None:
        super().__init__(rate, seed)
        if rounds < 1:
            raise AuditError(f"Sever rounds must be ≥ 1 (got {rounds})")
        self.rounds = rounds
        self.max_params = max_params

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        total = _n_remove(self.rate, len(y))
        keep = np.ones(len(y), bool)
        shares = [total // self.rounds + (1 if r < total % self.rounds else 0) for r in range(self.rounds)]
        last_layer = None
        for share in shares:
            idx = np.flatnonzero(keep)
            fitted = victim.fit(x[idx], y[idx], candidate.hparams, self.seed)
            module = _module_of(fitted, self.name)
            last_layer = sum(p.numel() for p in module.parameters()) > self.max_params
            xt, yt = _tensors(fitted, x, y, victim.task)
            scores = sever_scores(per_sample_gradients(module, xt, yt, victim.task, last_layer_only=last_layer))
            keep = _drop_top(scores, share, keep)
        return DefenseResult(keep=keep, diagnostics=SeverDiagnostics(self.rounds, bool(last_layer)))
