"""Deep partition aggregation (Levine & Feizi 2021) with the audit's certificate.

The mixed training set is split into ``k`` partitions by a deterministic hash of each
point's bytes (so an inserted point lands in exactly one partition); one victim is trained
per partition with the victim's own procedure; ART's ``DeepPartitionEnsemble`` aggregates
their top-1 votes. ART has no certify method, so the certificate is computed here:

    r(x) = ⌊(n_c − max_{c' ≠ c} (n_{c'} + 1[c' < c])) / 2⌋,

``n_c`` the votes of the predicted class c (ties broken towards the smaller class index, as
ART's argmax does). A prediction with ``r ≥ m`` cannot change under any ``m`` inserted or
removed training points, so *certified accuracy at budget ε* is the share of test points
predicted correctly with ``r ≥ round(ε·n)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from audit.defenses.base import CertificateDiagnostics, Defense, DefenseParams, DefenseResult
from audit.errors import AuditError
from audit.models.victim import Fitted


def partition_of(row: np.ndarray, k: int) -> int:
    """Deterministic partition id of a training point from its bytes (features and label)."""
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(row).tobytes()).digest()[:8], "little") % k


def certificate(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and certified radius per point from a vote table of shape (n, c).

    Returns
    -------
    prediction : ndarray (n,)
        argmax of the votes (smallest index on ties).
    radius : ndarray (n,)
        ``⌊(n_c − max_{c'≠c}(n_{c'} + 1[c' < c]))/2⌋`` (Levine & Feizi 2021, Theorem 1).
    """
    votes = np.asarray(votes, dtype=np.int64)
    prediction = votes.argmax(axis=1)
    n, c = votes.shape
    top = votes[np.arange(n), prediction]
    penalty = (np.arange(c)[None, :] < prediction[:, None]).astype(np.int64)  # ties go to the smaller index
    rivals = votes + penalty
    rivals[np.arange(n), prediction] = np.iinfo(np.int64).min
    gap = top - rivals.max(axis=1)
    return prediction, np.floor_divide(gap, 2)


@dataclass
class FittedEnsemble(Fitted):
    """The DPA ensemble as a fitted victim (votes aggregated by ART's DeepPartitionEnsemble)."""

    members: list[Fitted] = field(default_factory=list)
    art_ensemble: Any = None

    def votes(self, x: np.ndarray) -> np.ndarray:
        raw = self.art_ensemble.predict(x.astype(np.float32), raw=True)  # (k, n, c)
        counts = np.zeros((len(x), int(self.n_classes)), dtype=np.int64)  # type: ignore[arg-type]  # a name reused across types; checked at run time
        for member in raw:
            counts[np.arange(len(x)), member.argmax(axis=1)] += 1
        return counts

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.votes(x).astype(np.float64)

    def class_losses(self, x: np.ndarray) -> np.ndarray:
        return -np.log(np.clip(self.scores(x) / max(len(self.members), 1), 1e-12, None))

    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        return self.art_ensemble


@dataclass
class DPADiagnostics(CertificateDiagnostics):
    """The partitions used and, with an evaluation set, the certificate (Levine & Feizi, Thm. 1):
    the share of points whose prediction is correct and provably stable under the cell's budget."""

    partitions: int | None = None
    partitions_asked: int | None = None
    partition_sizes: list[int] | None = None
    certified_budget_points: int | None = None
    median_radius: float | None = None
    max_radius: int | None = None


class DPAParams(DefenseParams):
    partitions: int = Field(50, ge=2)


class DeepPartitionAggregation(Defense):
    """DPA: ``k`` victims on hash partitions, majority vote, certified radius per test point."""

    name: ClassVar[str] = "dpa"
    draws_randomness: ClassVar[bool] = False
    description: ClassVar[str] = "deep partition aggregation (ART DeepPartitionEnsemble) with a certified radius per test point"
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Diagnostics = DPADiagnostics

    def __init__(self, rate: float, seed: int, partitions: int = 50, evaluation: tuple[np.ndarray, np.ndarray] | None = None,
                 n_clean: int | None = None) -> None:  # fmt: skip
        super().__init__(rate, seed)
        if partitions < 2:
            raise AuditError(f"dpa partitions must be ≥ 2 (got {partitions})")
        self.partitions = partitions
        self.evaluation = evaluation
        self.n_clean = n_clean

    Params = DPAParams
    certifies: ClassVar[bool] = True
    victims: ClassVar[tuple[str, ...]] = ("torch",)

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"evaluation": (dataset.x_test, dataset.y_test), "n_clean": len(dataset.y_train)}

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, hparams: dict[str, Any]) -> DefenseResult:
        from art.estimators.classification import DeepPartitionEnsemble

        if not victim.builds_modules:
            raise AuditError("dpa needs a torch victim (members are ART PyTorch classifiers)")
        # at least ~20 points per member: k = min(partitions, ⌊N/20⌋), ≥ 2 (tiny partitions vote noise)
        k, c = max(2, min(self.partitions, len(y) // 20)), int(victim.n_classes)
        rows = np.concatenate([x, y.reshape(-1, 1).astype(x.dtype)], axis=1)
        part = np.array([partition_of(r, k) for r in rows])
        members = []
        for i in range(k):
            idx = np.flatnonzero(part == i)
            if len(idx) == 0 or len(np.unique(y[idx])) < 1:
                raise AuditError(f"dpa: partition {i} of {k} is empty; use fewer partitions")
            members.append(victim.fit(x[idx], y[idx], hparams, self.seed + i))
        ensemble = DeepPartitionEnsemble([m.to_art() for m in members], ensemble_size=k, channels_first=True)
        fitted = FittedEnsemble(task="classification", n_classes=c, members=members, art_ensemble=ensemble)
        diagnostics = DPADiagnostics(partitions=k, partitions_asked=self.partitions, partition_sizes=np.bincount(part, minlength=k).tolist())
        if self.evaluation is not None:
            x_e, y_e = self.evaluation
            prediction, radius = certificate(fitted.votes(x_e))
            correct = prediction == y_e
            budget = int(round(self.rate * (self.n_clean or len(y) / (1 + self.rate))))
            diagnostics.update(
                certified_budget_points=budget,
                certified_accuracy=float(100 * np.mean(correct & (radius >= budget))),
                median_radius=float(np.median(radius)),
                max_radius=int(radius.max()),
            )
        return DefenseResult(fitted=fitted, diagnostics=diagnostics)
