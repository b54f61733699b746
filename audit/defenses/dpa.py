"""Partition ensembles with their certificates: DPA, Finite Aggregation and Run-off Election.

The mixed training set is split into buckets by a deterministic hash of each point's bytes (so
an inserted or removed point lands in exactly one bucket); one victim is trained per learner on
its buckets with the victim's own procedure; ART's ``DeepPartitionEnsemble`` holds the learners
and gives their outputs. ART has no certify method, so the certificates are computed here
(:mod:`audit.maths.certificates`, exact integer arithmetic, checked against brute force):

* ``dpa`` (Levine & Feizi 2021): ``k`` learners on ``k`` buckets. ``aggregation: vote`` is DPA's
  majority vote; ``aggregation: runoff`` is Run-off Election over the same learners (Rezaei et al.
  2023, DPA+ROE): the two leaders of the vote meet in a run-off every learner votes in. One
  ensemble gives both certificates (``certified_curves`` ``dpa`` and ``roe``), whichever predicts.
* ``fa`` (Wang, Levine & Feizi 2022): ``k·d`` buckets, learner ``i`` trains on ``d`` of them
  (:func:`~audit.maths.certificates.fa_training_buckets`), so each point reaches ``d`` learners and the
  vote is certified by the sum of the corrupted buckets' powers; ``spread: 1`` is DPA, learner for learner.

A prediction with radius ``r ≥ m`` cannot change under any ``m`` inserted or removed training
points, so *certified accuracy at budget ε* is the share of test points predicted correctly
with ``r ≥ round(ε·n)``, and ``certified_curves`` give it at every radius ``0 … R``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from audit.defenses.base import CertificateDiagnostics, Defense, DefenseParams, DefenseResult
from audit.errors import AuditError
from audit.maths.certificates import (
    certified_curve,
    dpa_radius,
    fa_radius,
    fa_training_buckets,
    roe_radius,
    spread_offsets,
    top_class,
    vote_table,
)
from audit.models.victim import Fitted


def partition_of(row: np.ndarray, k: int) -> int:
    """Deterministic bucket id in ``[0, k)`` of a training point from its bytes (features and label)."""
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(row).tobytes()).digest()[:8], "little") % k


#: DPA's certificate from a vote table (n, c): prediction and radius (Levine & Feizi 2021, Thm. 1)
certificate = dpa_radius


@dataclass
class FittedEnsemble(Fitted):
    """A partition ensemble as a fitted victim: its learners (held by ART's DeepPartitionEnsemble) and how
    they aggregate — ``vote`` (plurality, ties to the smaller class) or ``runoff`` (Run-off Election)."""

    members: list[Fitted] = field(default_factory=list)
    art_ensemble: Any = None
    aggregation: str = "vote"

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """Every learner's scores, shape (K, n, c)."""
        return np.asarray(self.art_ensemble.predict(x.astype(np.float32), raw=True))

    def votes(self, x: np.ndarray) -> np.ndarray:
        """Votes per class (n, c): each learner's top class."""
        return vote_table(top_class(self.raw_scores(x)), int(self.n_classes))  # type: ignore[arg-type]  # set for classification

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The votes (n, c); under ``runoff`` the run-off winner's entry is raised above every other, so the argmax
        is the ensemble's prediction."""
        if self.aggregation == "vote":
            return self.votes(x).astype(np.float64)
        raw = self.raw_scores(x)
        out = vote_table(top_class(raw), int(self.n_classes)).astype(np.float64)  # type: ignore[arg-type]  # set for classification
        winner, _ = roe_radius(raw)
        out[np.arange(len(x)), winner] = len(self.members) + 1
        return out

    def class_losses(self, x: np.ndarray) -> np.ndarray:
        return -np.log(np.clip(self.votes(x) / max(len(self.members), 1), 1e-12, None))

    def to_art(self, clip_values: tuple[float, float] | None = None) -> Any:
        return self.art_ensemble


@dataclass
class PartitionDiagnostics(CertificateDiagnostics):
    """The buckets used and, with an evaluation set, the certificates: ``certified_accuracy`` (%) at the cell's
    budget for the ensemble's own aggregation, and ``certified_curves`` — per certificate (``dpa``, ``roe``,
    ``fa``) the certified accuracy (%) at radius ``r = 0, 1, …`` (list index), up to the first radius none reaches."""

    partitions: int | None = None
    partitions_asked: int | None = None
    partition_sizes: list[int] | None = None
    learners: int | None = None
    spread: int | None = None
    certificate: str | None = None
    certified_budget_points: int | None = None
    median_radius: float | None = None
    max_radius: int | None = None
    certified_curves: dict[str, list[float]] | None = None


DPADiagnostics = PartitionDiagnostics


class DPAParams(DefenseParams):
    partitions: int = Field(50, ge=2)
    aggregation: Literal["vote", "runoff"] = "vote"


class FAParams(DefenseParams):
    partitions: int = Field(50, ge=2)
    spread: int = Field(8, ge=1)


class PartitionEnsemble(Defense):
    """The contract shared by the partition defenses: bucket by hash, train one victim per learner on its buckets
    (seed ``seed + i``), aggregate, certify. Subclasses say which buckets each learner reads and which certificates
    their learners support."""

    draws_randomness: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Diagnostics = PartitionDiagnostics
    certifies: ClassVar[bool] = True
    victims: ClassVar[tuple[str, ...]] = ("torch",)

    def __init__(self, rate: float, seed: int, partitions: int = 50, spread: int = 1, aggregation: str = "vote",
                 evaluation: tuple[np.ndarray, np.ndarray] | None = None, n_clean: int | None = None) -> None:  # fmt: skip
        super().__init__(rate, seed)
        if partitions < 2:
            raise AuditError(f"{self.name} partitions must be ≥ 2 (got {partitions})")
        self.partitions, self.spread, self.aggregation = partitions, spread, aggregation
        self.evaluation = evaluation
        self.n_clean = n_clean

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"evaluation": (dataset.x_test, dataset.y_test), "n_clean": len(dataset.y_train)}

    def certify(self, raw: np.ndarray, k: int, offsets: np.ndarray, n_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{certificate: (prediction, radius)}`` of the learners' scores ``raw`` (K, n, c); the first is the
        ensemble's own aggregation."""
        top = top_class(raw)
        if len(offsets) > 1:
            return {"fa": fa_radius(top, offsets, n_classes)}
        vote = dpa_radius(vote_table(top, n_classes))
        roe = roe_radius(raw)
        return {"roe": roe, "dpa": vote} if self.aggregation == "runoff" else {"dpa": vote, "roe": roe}

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, hparams: dict[str, Any]) -> DefenseResult:
        from art.estimators.classification import DeepPartitionEnsemble

        if not victim.builds_modules:
            raise AuditError(f"{self.name} needs a torch victim (members are ART PyTorch classifiers)")
        # at least ~20 points per learner: k = min(partitions, ⌊N/20⌋), ≥ 2 (tiny partitions vote noise), N the clean
        # training set's size: k is fixed before any poison arrives (one that moved k would re-bucket every point)
        k, c = max(2, min(self.partitions, (self.n_clean or len(y)) // 20)), int(victim.n_classes)
        offsets = spread_offsets(k, self.spread, 0)
        rows = np.concatenate([x, y.reshape(-1, 1).astype(x.dtype)], axis=1)
        bucket = np.array([partition_of(r, k * self.spread) for r in rows])
        members = []
        for i, reads in enumerate(fa_training_buckets(k, offsets)):
            idx = np.flatnonzero(np.isin(bucket, reads))
            if len(idx) == 0:
                raise AuditError(f"{self.name}: learner {i} of {k * self.spread} has no training point; use fewer partitions")
            members.append(victim.fit(x[idx], y[idx], hparams, self.seed + i))
        ensemble = DeepPartitionEnsemble([m.to_art() for m in members], ensemble_size=len(members), channels_first=True)
        fitted = FittedEnsemble(task="classification", n_classes=c, members=members, art_ensemble=ensemble, aggregation=self.aggregation)
        diagnostics = PartitionDiagnostics(partitions=k, partitions_asked=self.partitions, learners=len(members), spread=self.spread,
                                           partition_sizes=np.bincount(bucket, minlength=k * self.spread).tolist())  # fmt: skip
        if self.evaluation is not None:
            x_e, y_e = self.evaluation
            certificates = self.certify(fitted.raw_scores(x_e), k, offsets, c)
            own, (prediction, radius) = next(iter(certificates.items()))
            budget = int(round(self.rate * (self.n_clean or len(y) / (1 + self.rate))))
            curves = {name: [round(float(v), 3) for v in certified_curve(p, r, y_e, np.arange(int(r.max()) + 2))]
                      for name, (p, r) in certificates.items()}  # fmt: skip
            diagnostics.update(
                certificate=own,
                certified_budget_points=budget,
                certified_accuracy=float(100 * np.mean((prediction == y_e) & (radius >= budget))),
                median_radius=float(np.median(radius)),
                max_radius=int(radius.max()),
                certified_curves=curves,
            )
        return DefenseResult(fitted=fitted, diagnostics=diagnostics)


class DeepPartitionAggregation(PartitionEnsemble):
    """DPA: ``k`` victims on hash partitions, plurality vote or run-off, DPA's and ROE's radius per test point."""

    name: ClassVar[str] = "dpa"
    description: ClassVar[str] = ("deep partition aggregation (ART DeepPartitionEnsemble) with a certified radius per test point; "
                                  "aggregation: runoff is Run-off Election over the same learners")  # fmt: skip
    Params = DPAParams

    def __init__(self, rate: float, seed: int, partitions: int = 50, aggregation: str = "vote",
                 evaluation: tuple[np.ndarray, np.ndarray] | None = None, n_clean: int | None = None) -> None:  # fmt: skip
        super().__init__(rate, seed, partitions, 1, aggregation, evaluation, n_clean)


class FiniteAggregation(PartitionEnsemble):
    """Finite Aggregation: ``k·d`` learners, each on ``d`` of ``k·d`` hash buckets; plurality vote, FA's radius."""

    name: ClassVar[str] = "fa"
    description: ClassVar[str] = "finite aggregation (Wang, Levine & Feizi 2022): k·d learners, each on d of k·d hash buckets, certified radius"
    Params = FAParams

    def __init__(self, rate: float, seed: int, partitions: int = 50, spread: int = 8,
                 evaluation: tuple[np.ndarray, np.ndarray] | None = None, n_clean: int | None = None) -> None:  # fmt: skip
        super().__init__(rate, seed, partitions, spread, "vote", evaluation, n_clean)
