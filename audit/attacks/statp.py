"""StatP, the statistical poisoning attack (jagielski-2018, section III-B).

Regression: sample from a multivariate normal with the training mean and covariance,
round every feature to the nearer corner of the feature box, and set the response at the
boundary of the response range that maximises the loss, found by querying the model
(black-box): the boundary farther from the model's prediction.

Classification variant (ours, as the regression issue asks): class-conditional Gaussians
(a class drawn with its training frequency), rounded to the box corners, and the label
with the largest loss under the clean model (queried through the estimator's predictions).

On a table (README "Tables") the samples are drawn inside the feature domain before the model
is queried: a categorical feature's one-hot group takes a category drawn with its (class's)
training frequency — the group's marginal under the fitted distribution — rather than the
corner rounding of each column, which leaves most groups all zero; the other discrete kinds
(integer, binary, levels) are in the domain at the box's corners already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from art.attacks.attack import PoisoningAttackBlackBox

from audit.attacks.base import AttackContext, AttackDiagnostics, AttackParams, AuditAttack, PoisonInput, ThreatModel, task_and_classes
from audit.attacks.label_flip import losses_from_predictions
from audit.catalog import ProfileSetting
from audit.errors import AuditError
from audit.models.estimator import clip_values, infer_task


class StatPParams(AttackParams):
    pass


def _gaussian(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from N(mean(x), cov(x)) (covariance floored at 1e-12 for rank-deficient data)."""
    mean = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False)) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    cov = cov + 1e-12 * np.eye(len(mean))
    return rng.multivariate_normal(mean, cov, size=n, method="eigh")


def round_to_corners(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Each feature to the nearer of lo and hi (ties to hi)."""
    return np.where(z >= (lo + hi) / 2, hi, lo)


@dataclass
class StatPDiagnostics(AttackDiagnostics):
    """Classification: the poisons' mean largest loss; regression: their mean absolute residual."""

    mean_loss: float | None = None
    mean_abs_residual: float | None = None


class StatP(AuditAttack, PoisoningAttackBlackBox):
    """StatP as an ART black-box poisoning attack.

    Parameters
    ----------
    estimator : ART estimator
        Queried with ``predict`` (responses for regression, class scores for classification).
    budget : float
        ε in (0, 1].
    box : (ndarray, ndarray), each shape (d,), optional
        The feature box ``(lo, hi)`` whose corners the poisons take; default the estimator's ``clip_values``.
    task : str, optional
        ``regression`` or ``classification``; default read from the estimator (a classifier or a
        regressor), ``regression`` when it does not say.
    y_range : (float, float)
        Response boundaries (regression); the training range by default in the audit.
    n_classes : int
        Number of classes (classification).
    seed : int
    """

    name: ClassVar[str] = "statp"
    title: ClassVar[str] = "StatP (statistical attack)"
    description: ClassVar[str] = "statistical attack: Gaussian samples rounded to box corners, loss-maximising response (black-box)"
    threat = ThreatModel(white_box=False, capability="injects points with features in the feature box and labels it chooses (data injection)")
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {"quick": ProfileSetting(seeds=1)}
    Params = StatPParams
    params: StatPParams
    Diagnostics = StatPDiagnostics
    diagnostics: StatPDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("regression", "classification")
    _estimator_requirements = ()

    def __init__(
        self,
        estimator: Any,
        *,
        budget: float,
        box: tuple[Any, Any] | None = None,
        task: str | None = None,
        y_range: tuple[float, float] = (0.0, 1.0),
        n_classes: int | None = None,
        seed: int = 0,
        **params: Any,
    ) -> None:
        if estimator is None or not hasattr(estimator, "predict"):
            raise AuditError("StatP needs an estimator with predict() to query (black-box)")
        if task is None and infer_task(estimator) is None:
            task = "regression"  # an estimator that does not say what it is: the paper's setting
        task, n_classes = task_and_classes(estimator, task, n_classes, "StatP")
        box = box if box is not None else clip_values(estimator)
        if box is None or len(box) != 2:
            raise AuditError(f"StatP needs the feature box (lo, hi) whose corners the poisons take, or an estimator with clip_values (got {box!r})")
        super().__init__(estimator, budget=budget, seed=seed, box=(np.asarray(box[0]), np.asarray(box[1])), n_classes=n_classes, **params)
        if y_range[0] >= y_range[1]:
            raise AuditError(f"StatP y_range must be increasing (got {y_range})")
        self.query_estimator = self.estimator
        self.task = task
        self.y_range = (float(y_range[0]), float(y_range[1]))

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> StatP:
        data = ctx.dataset
        y_range = data.response_range or (0.0, 1.0)
        return cls(
            ctx.fitted.to_art(), budget=ctx.budget, box=ctx.box, task=data.task, y_range=y_range, n_classes=data.n_classes, seed=ctx.seed, **params
        )

    def _draw(self, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n samples (n, d) of the fitted distribution of the rows ``x``, rounded to the box's corners, each
        one-hot group a category drawn with its frequency in ``x``."""
        lo, hi = np.broadcast_to(self.lo, x.shape[1:]), np.broadcast_to(self.hi, x.shape[1:])
        out = round_to_corners(_gaussian(x, n, rng), lo, hi)
        for _, _, cols in getattr(self.domain, "groups", ()):
            idx = np.asarray(cols)
            freq = x[:, idx].sum(axis=0).astype(np.float64)
            p = freq / freq.sum() if freq.sum() > 0 else np.full(len(idx), 1.0 / len(idx))
            out[:, idx] = 0.0
            out[np.arange(n), idx[rng.choice(len(idx), size=n, p=p)]] = 1.0
        return out

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        x, y, n_poison, rng = task.x, task.y, task.n_poison, task.rng
        if self.task == "regression":
            x_p = self._draw(x, n_poison, rng)
            pred = np.asarray(self.query_estimator.predict(self.estimator_input(x_p.astype(np.float32))), dtype=np.float64).reshape(-1)
            y_lo, y_hi = self.y_range
            # the boundary farther from the prediction maximises (y − f(x))²
            y_p = np.where(np.abs(pred - y_lo) >= np.abs(pred - y_hi), y_lo, y_hi)
            self.diagnostics.update(mean_abs_residual=float(np.mean(np.abs(pred - y_p))))
            return x_p, y_p.astype(np.float32)
        classes, counts = np.unique(y, return_counts=True)
        drawn = rng.choice(classes, size=n_poison, p=counts / counts.sum())
        x_p = np.zeros((n_poison, x.shape[1]))
        for c in classes:
            where = np.flatnonzero(drawn == c)
            if len(where):
                x_p[where] = self._draw(x[y == c], len(where), rng)
        losses = losses_from_predictions(self.query_estimator.predict(self.estimator_input(x_p.astype(np.float32))))
        y_p = losses.argmax(axis=1)
        self.diagnostics.update(mean_loss=float(losses.max(axis=1).mean()))
        return x_p, y_p.astype(np.int64)
