"""The three poisoning regimes of Wang, Mianjy & Arora (2021), §3, as *modification* attacks.

Unlike the injection attacks of the battery, these change the training set in place: the
adversary receives the sample ``S`` and hands the learner ``S̃`` of the same size (§1.1).
``poison(x, y)`` therefore returns the whole poisoned training set, ``n`` points, and the grid
trains on it instead of ``D_tr ∪ D_p`` (``modifies = True``). The budget ε of the grid means:

* **Regime A** (``regime_a``, clean label; Theorem 3.1): a fraction ε of the points is perturbed,
  each as far as it likes — anywhere in the feature box, or within ``radius·‖x_i‖`` — labels kept.
  The overall budget ``S = Σ‖δ_i‖`` is what the diagnostics report (absolute and relative to ‖x_i‖).
* **Regime B** (``regime_b``, clean label): *every* point is perturbed by ``‖δ_i‖ ≤ ε·‖x_i‖``
  (the paper's per-sample B on unit-norm inputs, ``B = ε``), labels kept.
* **Regime C** (``regime_c``, label flip): each label is flipped with probability β = ε —
  ``random``: independently; ``adversarial``: the number of flips is drawn Binomial(n, β) with
  the seed and those flips go to the points whose flipped loss under the clean model is largest.

The perturbations of A and B ascend the clean model's loss of the true label by projected
gradient ascent (PGD) on the input: ``steps`` steps of L2-normalised gradients of size
``2.5·r/steps`` projected onto the ball of radius r and the box (``steps: 1`` is one normalised
gradient step, "the direction that increases the loss under the clean model"); Regime A without
a radius takes signed-gradient steps in the box (L∞ PGD over its full width). The paper also
mentions "a new loss function that yields stronger poisoning attacks" in its Section 5, which
the text available to this project does not contain; it is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from art.attacks.attack import PoisoningAttackBlackBox
from pydantic import Field
from torch import nn

from audit.attacks.base import (
    AttackContext,
    AttackDiagnostics,
    AttackParams,
    AuditAttack,
    PoisonInput,
    ThreatModel,
    TorchAttack,
    task_and_classes,
)
from audit.attacks.label_flip import max_loss_flips
from audit.errors import AuditError
from audit.models.estimator import as_art_estimator


@dataclass
class RegimeDiagnostics(AttackDiagnostics):
    """What the regime changed: points modified, per-sample and overall perturbation (L2, absolute
    and relative to ‖x_i‖), labels flipped and the realised flip rate, the clean model's loss before/after."""

    regime: str | None = None
    n_modified: int | None = None
    max_delta: float | None = None
    max_relative_delta: float | None = None
    overall_delta: float | None = None  # S = Σ‖δ_i‖
    overall_relative_delta: float | None = None  # Σ‖δ_i‖/‖x_i‖
    n_flipped: int | None = None
    flip_rate: float | None = None
    clean_loss_before: float | None = None
    clean_loss_after: float | None = None


def input_pgd(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    radius: torch.Tensor | None,
    lo: torch.Tensor | None,
    hi: torch.Tensor | None,
    steps: int,
) -> torch.Tensor:
    """Projected gradient ascent on each point's cross-entropy loss of its true label.

    ``x`` (n, d), ``y`` (n,), ``radius`` (n,): L2 ball ``‖δ_i‖ ≤ radius_i`` with normalised
    gradient steps of ``2.5·radius/steps``; None: signed-gradient steps of ``2.5·(hi − lo)/steps``
    in the box (the box is then required). Every iterate is projected onto the ball and the box.
    Returns the perturbed points (n, d), detached.
    """
    x0 = x.detach()
    delta = torch.zeros_like(x0)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(module(x0 + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if radius is None:
                assert lo is not None and hi is not None, "an unbounded perturbation needs the feature box"
                delta = delta + 2.5 * (hi - lo) / steps * grad.sign()
            else:
                norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = delta + (2.5 * radius[:, None] / steps) * grad / norm
                scale = (radius[:, None] / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                delta = delta * scale
            if lo is not None and hi is not None:
                delta = torch.minimum(torch.maximum(x0 + delta, lo), hi) - x0
        delta = delta.detach()
    return (x0 + delta).detach()


class _Perturbation(TorchAttack):
    """Regimes A and B: clean-label perturbations by PGD against the clean model (white-box)."""

    modifies: ClassVar[bool] = True
    Diagnostics = RegimeDiagnostics
    diagnostics: RegimeDiagnostics

    def __init__(self, estimator: Any, **kwargs: Any) -> None:
        super().__init__(estimator, **kwargs)
        self._check_params()

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> _Perturbation:
        module = ctx.fitted.require_module(cls.name)
        return cls(module, budget=ctx.budget, box=ctx.box, seed=ctx.seed, n_classes=ctx.dataset.n_classes, **params)

    def _chosen(self, task: PoisonInput) -> np.ndarray:
        """Indices of the points to perturb, shape (k,)."""
        raise NotImplementedError

    def _radius(self, norms: torch.Tensor) -> torch.Tensor | None:
        """Per-sample L2 radius of the chosen points (None: anywhere in the box)."""
        raise NotImplementedError

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        device, dtype = task.device, task.dtype
        idx = self._chosen(task)
        x = torch.as_tensor(task.x[idx], device=device, dtype=dtype)
        y = torch.as_tensor(task.y[idx], device=device, dtype=torch.long)
        lo = hi = None
        if self.box is not None:
            lo, hi = (
                torch.as_tensor(np.broadcast_to(np.asarray(b, np.float32), task.x.shape[1:]).copy(), device=device, dtype=dtype) for b in self.box
            )
        norms = x.norm(dim=1)
        radius = self._radius(norms)
        module = self.module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        try:
            moved = input_pgd(module, x, y, radius, lo, hi, self.params.steps)
            with torch.no_grad():
                before = float(nn.functional.cross_entropy(module(x), y))
                after = float(nn.functional.cross_entropy(module(moved), y))
        finally:
            for p in module.parameters():
                p.requires_grad_(True)
        out = task.x.copy()
        out[idx] = moved.cpu().numpy()
        if self.box is not None:  # the clip poison() applies afterwards must not move a point again
            out = np.clip(out, self.lo, self.hi)
        cap = getattr(self.params, "overall", None)
        if cap is not None:  # Regime A's overall budget S = Σ‖δ_i‖
            limit = cap * float(np.linalg.norm(task.x.astype(np.float64), axis=1).mean())
            total = float(np.linalg.norm(out[idx].astype(np.float64) - task.x[idx], axis=1).sum())
            if total > limit:
                out[idx] = (task.x[idx] + (out[idx] - task.x[idx]) * (limit / total) * (1 - 1e-6)).astype(np.float32)
        delta = np.linalg.norm(out[idx].astype(np.float64) - task.x[idx], axis=1)
        rel = delta / np.maximum(np.linalg.norm(task.x[idx].astype(np.float64), axis=1), 1e-12)
        self.diagnostics.update(
            regime=self.name,
            n_modified=int(np.sum(delta > 0)),
            max_delta=float(delta.max(initial=0.0)),
            max_relative_delta=float(rel.max(initial=0.0)),
            overall_delta=float(delta.sum()),
            overall_relative_delta=float(rel.sum()),
            n_flipped=0,
            flip_rate=0.0,
            clean_loss_before=before,
            clean_loss_after=after,
        )
        return out, task.y


class RegimeAParams(AttackParams):
    radius: float | None = Field(None, gt=0)  # per-sample ‖δ_i‖ ≤ radius·‖x_i‖; None: anywhere in the feature box
    overall: float | None = Field(None, gt=0)  # the overall budget S: Σ‖δ_i‖ ≤ S·mean‖x_i‖ (all δ scaled down together); None: no cap
    steps: int = Field(20, ge=1, le=1000)
    selection: Literal["random", "max_loss"] = "random"


class RegimeA(_Perturbation):
    """Regime A: a fraction ε of the points, each perturbed without a per-sample bound (labels kept).

    Parameters
    ----------
    estimator : ART PyTorch classifier or nn.Module
        The clean model (white-box).
    budget : float
        ε: the fraction of training points perturbed (``round(ε·n)`` of them).
    radius : float or None
        Per-sample L2 radius relative to ‖x_i‖; None (default): anywhere in the feature box.
    overall : float or None
        The overall budget S in units of the mean ‖x_i‖ of the training set: when the perturbations
        sum to more, every δ_i is scaled by the same factor (inside the box, which is convex and holds x_i).
    selection : ``random`` (default) or ``max_loss``
        Which points: uniformly drawn with the seed, or the largest clean losses.
    """

    name: ClassVar[str] = "regime_a"
    title: ClassVar[str] = "Regime A: few points, large perturbation (clean label)"
    description: ClassVar[str] = "Wang et al. 2021 regime A: a fraction ε of the points moved anywhere in the box (PGD), labels kept, white-box"
    threat = ThreatModel(
        white_box=True,
        capability="modifies a fraction ε of the training points in place: features perturbed inside the feature box (or a radius), "
        "labels kept (training-set modification, clean label)",
    )
    Params = RegimeAParams
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({"steps": 3}, {"steps": 3, "radius": 0.5, "selection": "max_loss"})
    params: RegimeAParams

    def _chosen(self, task: PoisonInput) -> np.ndarray:
        k = int(round(self.budget * len(task.x)))
        if self.params.selection == "random":
            return np.sort(task.rng.choice(len(task.x), size=k, replace=False))
        with torch.no_grad():
            logits = self.module.eval()(torch.as_tensor(task.x, device=task.device, dtype=task.dtype))
            losses = nn.functional.cross_entropy(logits, torch.as_tensor(task.y, device=task.device, dtype=torch.long), reduction="none")
        return np.sort(np.argsort(-losses.cpu().numpy(), kind="stable")[:k])

    def _radius(self, norms: torch.Tensor) -> torch.Tensor | None:
        return None if self.params.radius is None else self.params.radius * norms

    def _check_params(self) -> None:
        if self.params.radius is None and self.box is None:
            raise AuditError("RegimeA without a radius needs the feature box (box=(lo, hi) or the estimator's clip_values)")

    @classmethod
    def seed_free(cls, params: dict[str, Any]) -> bool:
        return cls.Params.model_validate(params).selection == "max_loss"


class RegimeBParams(AttackParams):
    steps: int = Field(10, ge=1, le=1000)


class RegimeB(_Perturbation):
    """Regime B: every point perturbed by ``‖δ_i‖ ≤ ε·‖x_i‖`` (labels kept); ε is the paper's B on unit-norm inputs."""

    name: ClassVar[str] = "regime_b"
    title: ClassVar[str] = "Regime B: every point, small perturbation (clean label)"
    description: ClassVar[str] = "Wang et al. 2021 regime B: every point moved by ‖δ‖ ≤ ε‖x‖ up the clean loss (PGD), labels kept, white-box"
    threat = ThreatModel(
        white_box=True,
        capability="modifies every training point in place by at most ε·‖x‖, labels kept (training-set modification, clean label)",
    )
    Params = RegimeBParams
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({"steps": 3},)
    params: RegimeBParams

    def _chosen(self, task: PoisonInput) -> np.ndarray:
        return np.arange(len(task.x))

    def _radius(self, norms: torch.Tensor) -> torch.Tensor | None:
        return self.budget * norms

    @classmethod
    def seed_free(cls, params: dict[str, Any]) -> bool:
        return True  # PGD from δ = 0 draws nothing


class RegimeCParams(AttackParams):
    variant: Literal["random", "adversarial"] = "random"


class RegimeC(AuditAttack, PoisoningAttackBlackBox):
    """Regime C: each training label flipped with probability β = ε (binary: the other class;
    multiclass: a uniform other class, or the largest-loss one for ``adversarial``)."""

    name: ClassVar[str] = "regime_c"
    title: ClassVar[str] = "Regime C: labels flipped with probability β"
    description: ClassVar[str] = "Wang et al. 2021 regime C: each label flipped with probability ε (random, or the max-loss points), black-box"
    threat = ThreatModel(
        white_box=False,
        capability="flips training labels in place, each with probability ε (training-set modification, label noise)",
    )
    modifies: ClassVar[bool] = True
    Params = RegimeCParams
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({"variant": "random"}, {"variant": "adversarial"})
    params: RegimeCParams
    Diagnostics = RegimeDiagnostics
    diagnostics: RegimeDiagnostics
    _estimator_requirements = ()

    def __init__(self, estimator: Any = None, *, budget: float, n_classes: int | None = None, seed: int = 0, **params: Any) -> None:
        _, n_classes = task_and_classes(as_art_estimator(estimator), "classification", n_classes, "RegimeC")
        super().__init__(estimator, budget=budget, seed=seed, n_classes=n_classes, **params)
        if self.params.variant == "adversarial" and (self.estimator is None or not hasattr(self.estimator, "predict")):
            raise AuditError("RegimeC(variant='adversarial') needs an estimator to query for class losses")

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> RegimeC:
        estimator = ctx.fitted.query_art() if params.get("variant") == "adversarial" else None
        return cls(estimator, budget=ctx.budget, n_classes=ctx.dataset.n_classes, seed=ctx.seed, **params)

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        c = self.n_classes
        assert c is not None
        x, y, rng, n = task.x, task.y.astype(np.int64), task.rng, len(task.y)
        new = y.copy()
        if self.params.variant == "random":
            flip = rng.random(n) < self.budget  # independent Bernoulli(β) per point (§1.1)
            new[flip] = (y[flip] + rng.integers(1, c, size=int(flip.sum()))) % c
        else:
            k = int(rng.binomial(n, self.budget))  # as many flips as Bernoulli(β) would make, in law
            best, flipped_loss = max_loss_flips(self, self.estimator, x, y)
            idx = np.argsort(-flipped_loss, kind="stable")[:k]
            new[idx] = best[idx]
        flipped = int(np.sum(new != y))
        self.diagnostics.update(
            regime=self.name, n_modified=flipped, n_flipped=flipped, flip_rate=flipped / max(n, 1), max_delta=0.0, overall_delta=0.0
        )
        return x, new
