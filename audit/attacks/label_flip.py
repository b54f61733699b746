"""Label flip attacks (TGDA paper, appendix A.4, eq. 36–37; Biggio et al. 2011).

Poisons are copies of ``round(ε·n)`` training points with new labels; features are not
touched, so they are always inside the feature box.

* ``random``: the points are drawn uniformly; the new label is uniform over the other
  classes (binary: the flip), or ``c − 1 − y`` with ``mapping: reverse`` (the TGDA paper's
  MNIST rule y ← 10 − y, 0-indexed).
* ``adversarial``: the new label is the class with the largest loss under the clean model
  (binary: the flip), queried black-box through an ART estimator's predictions. The points
  are those whose flipped loss is largest (``selection: max_loss``, default) or random ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from art.attacks.attack import PoisoningAttackBlackBox

from audit.attacks.base import AttackContext, AttackDiagnostics, AttackParams, AuditAttack, PoisonInput, ThreatModel, task_and_classes
from audit.catalog import ProfileSetting
from audit.errors import AuditError
from audit.models.estimator import as_art_estimator


class LabelFlipParams(AttackParams):
    variant: Literal["random", "adversarial"] = "random"
    mapping: Literal["uniform", "reverse"] = "uniform"
    selection: Literal["max_loss", "random"] = "max_loss"


def losses_from_predictions(pred: np.ndarray) -> np.ndarray:
    """−log p per class from an ART estimator's ``predict`` output (probabilities or logits)."""
    pred = np.asarray(pred, dtype=np.float64)
    is_proba = np.all(pred >= 0) and np.allclose(pred.sum(axis=1), 1.0, atol=1e-4)
    if is_proba:
        return -np.log(np.clip(pred, 1e-12, None))
    shifted = pred - pred.max(axis=1, keepdims=True)
    return -(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def max_loss_flips(attack: AuditAttack, estimator: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the other class of largest loss under ``estimator`` (queried black-box through
    ``predict``, in chunks of 4096 so its input copies stay bounded) and that loss: shapes (n,), (n,)."""
    chunk = 4096
    pred = [estimator.predict(attack.estimator_input(x[i : i + chunk])) for i in range(0, len(x), chunk)]
    losses = losses_from_predictions(np.concatenate(pred))
    own = np.arange(len(x))
    losses[own, y] = -np.inf
    best = losses.argmax(axis=1)  # appendix A: the class with the largest loss
    return best, losses[own, best]


@dataclass
class LabelFlipDiagnostics(AttackDiagnostics):
    """``variant`` (random/adversarial), the flipped points' mean loss and that of all points (appendix A)."""

    variant: str | None = None
    selection: str | None = None
    unchanged_labels: int | None = None
    mean_flipped_loss: float | None = None
    mean_flipped_loss_all: float | None = None


class LabelFlip(AuditAttack, PoisoningAttackBlackBox):
    """Random or adversarial label flip as an ART black-box poisoning attack.

    Parameters
    ----------
    estimator : ART classifier, optional
        Queried (``predict`` only) by the adversarial variant for per-class losses.
    budget : float
        ε in (0, 1]: ``round(ε·n)`` poisons are returned for ``n`` training points.
    n_classes : int
        Number of classes c.
    seed : int
        Seeds the choice of points and labels.
    variant, mapping, selection : str
        See the module docstring.
    """

    name: ClassVar[str] = "label_flip"
    title: ClassVar[str] = "label flip (random / adversarial)"
    description: ClassVar[str] = "copies of training points with flipped labels (random or max-loss), black-box"
    threat = ThreatModel(white_box=False, capability="injects copies of training points with labels it chooses (label control; features unchanged)")
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {"quick": ProfileSetting(seeds=1)}
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({"variant": "random"}, {"variant": "adversarial"})
    Params = LabelFlipParams
    params: LabelFlipParams
    Diagnostics = LabelFlipDiagnostics
    diagnostics: LabelFlipDiagnostics
    _estimator_requirements = ()

    def __init__(self, estimator: Any = None, *, budget: float, n_classes: int | None = None, seed: int = 0, **params: Any) -> None:
        _, n_classes = task_and_classes(as_art_estimator(estimator), "classification", n_classes, "LabelFlip")
        super().__init__(estimator, budget=budget, seed=seed, n_classes=n_classes, **params)
        self.query_estimator = self.estimator
        self._check_params()

    def _check_params(self) -> None:
        if self.params.variant == "adversarial" and (self.query_estimator is None or not hasattr(self.query_estimator, "predict")):
            raise AuditError("LabelFlip(variant='adversarial') needs an estimator to query for class losses")

    @classmethod
    def seed_free(cls, params: dict[str, Any]) -> bool:
        """The max-loss flip draws nothing: its poisons are a function of the clean model (ε ≤ 1 never samples)."""
        checked = cls.Params.model_validate(params)
        return checked.variant == "adversarial" and checked.selection == "max_loss"

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> LabelFlip:
        estimator = ctx.fitted.query_art() if params.get("variant") == "adversarial" else None
        return cls(estimator, budget=ctx.budget, n_classes=ctx.dataset.n_classes, seed=ctx.seed, **params)

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        c = self.n_classes
        assert c is not None
        x, y, n_poison, rng = task.x, task.y.astype(np.int64), task.n_poison, task.rng
        replace = n_poison > len(x)  # ε = 1 with rounding, or tiny data: sample with replacement
        if self.params.variant == "random":
            idx = rng.choice(len(x), size=n_poison, replace=replace)
            if self.params.mapping == "reverse":
                new = c - 1 - y[idx]
            else:  # uniform over the c − 1 other classes (eq. 37 with p_j = 1/(c − 1))
                new = (y[idx] + rng.integers(1, c, size=n_poison)) % c
            self.diagnostics.update(variant="random", unchanged_labels=int(np.sum(new == y[idx])))
            return x[idx], new

        best, flipped_loss = max_loss_flips(self, self.query_estimator, x, y)
        if self.params.selection == "max_loss" and not replace:
            idx = np.argsort(-flipped_loss, kind="stable")[:n_poison]  # ties to the earlier point: no seed enters
        else:
            idx = rng.choice(len(x), size=n_poison, replace=replace)
        self.diagnostics.update(
            variant="adversarial",
            selection=self.params.selection,
            mean_flipped_loss=float(flipped_loss[idx].mean()),
            mean_flipped_loss_all=float(flipped_loss.mean()),
        )
        return x[idx], best[idx]
