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
  ``aggregation: runoff`` is FA+ROE (the run-off over FA's learners; certificates ``fa`` and ``fa_roe``).

A prediction with radius ``r ≥ m`` cannot change under any ``m`` inserted or removed training
points, so *certified accuracy at budget ε* is the share of test points predicted correctly
with ``r ≥ round(ε·n)``, and ``certified_curves`` give it at every radius ``0 … R``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from audit.defenses.base import CertificateDiagnostics, Defense, DefenseParams, DefenseResult
from audit.errors import AuditError
from audit.maths.batched import BatchedSoftmax, batched_newton_cg
from audit.maths.certificates import (
    certified_curve,
    dpa_radius,
    fa_radius,
    fa_roe_radius,
    fa_training_buckets,
    roe_radius,
    spread_offsets,
    top_class,
    vote_table,
)
from audit.models.candidate import Candidate
from audit.models.structure import convex_linear_layer, is_convex_linear
from audit.models.victim import Fitted, FittedTorch
from audit.seeding import seeded_init


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
        """Every learner's scores, shape (K, n, c): ART's ``DeepPartitionEnsemble.predict(x, raw=True)`` without its
        1/K weight per member (orders within a learner, all the votes and the run-off read, are the same), computed
        by each learner directly — ART's per-member data loader cost 41 of 196 s at 1200 learners on 5000 points."""
        return np.stack([member.scores(x.astype(np.float32)) for member in self.members])

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


class DPAParams(DefenseParams):
    partitions: int = Field(50, ge=2)
    aggregation: Literal["vote", "runoff"] = "vote"
    # a convex softmax-regression victim (L-BFGS, ρ > 0): every learner to its minimiser in one batch on the run's device
    batched: bool = True


class FAParams(DefenseParams):
    partitions: int = Field(50, ge=2)
    spread: int = Field(8, ge=1)
    aggregation: Literal["vote", "runoff"] = "vote"
    batched: bool = True


def batchable(victim: Any, candidate: Candidate) -> float | None:
    """ρ when every learner of ``victim`` is the unique minimiser of a softmax regression's objective — the audit's own
    full-batch L-BFGS training of one ``nn.Linear`` with ρ > 0, no L1 term, no user training — else None."""
    if getattr(victim, "user_training", None) is not None or getattr(victim, "task", None) != "classification" or not hasattr(victim, "train_config"):
        return None
    config = victim.train_config(candidate.hparams)
    if config is None or config.optimizer != "lbfgs" or config.batch_size is not None or config.l1 or not config.l2 > 0:
        return None
    with seeded_init(0):
        return candidate.rho if is_convex_linear(victim.build(candidate.hparams)) else None


def fit_batched(victim: Any, candidate: Candidate, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], tol: float = 1e-7) -> list[Fitted]:
    """Every learner of a convex softmax-regression victim trained at once (:func:`audit.maths.batched.batched_newton_cg`)
    on the points ``parts[i]`` each reads, to ``‖∇L_i‖ ≤ tol`` in float64; the same minimisers the victim's own
    training approaches one learner at a time (``tests/test_certificates.py`` compares them)."""
    rho, device, c = candidate.rho, victim.device, int(victim.n_classes)
    with seeded_init(0):
        modules = [victim.build(candidate.hparams) for _ in parts]
    layer = convex_linear_layer(modules[0])
    assert layer is not None
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            modules[0](torch.as_tensor(x, dtype=torch.float32))
    finally:
        handle.remove()
    phi_all = seen[0].reshape(len(x), layer.in_features).double().to(device)
    n_max = max(len(p) for p in parts)
    index = torch.zeros((len(parts), n_max), dtype=torch.long)
    mask = torch.zeros((len(parts), n_max), dtype=torch.float64)
    for i, idx in enumerate(parts):
        index[i, : len(idx)] = torch.as_tensor(idx)
        mask[i, : len(idx)] = 1.0
    index, mask = index.to(device), mask.to(device)
    problem = BatchedSoftmax(phi_all[index], torch.as_tensor(y, device=device)[index].long(), mask, rho, c)
    fit = batched_newton_cg(problem, torch.zeros((len(parts), c * (layer.in_features + 1)), dtype=torch.float64, device=device), tol)
    weights, biases = problem.split(fit.w)
    members: list[Fitted] = []
    for i, module in enumerate(modules):
        own = convex_linear_layer(module)
        assert own is not None
        with torch.no_grad():
            own.weight.copy_(weights[i].float().reshape(own.weight.shape))
            if own.bias is not None:
                own.bias.copy_(biases[i].float())
        module.to(device).eval()
        result = {
            "steps": int(fit.steps[i]),
            "objective": float(fit.value[i]),
            "grad_norm": float(fit.grad_norm[i]),
            "converged": bool(fit.grad_norm[i] <= victim.train_config(candidate.hparams).grad_tol),
            "batched": True,
        }
        members.append(
            FittedTorch(task="classification", n_classes=c, train_result=result, module=module, device=device, input_shape=victim.input_shape)
        )
    return members


#: the learners of the last ensembles trained in this process, by (data and buckets, candidate, seed, victim)
_TRAINED: OrderedDict[tuple[Any, ...], list[Fitted]] = OrderedDict()


class PartitionEnsemble(Defense):
    """The contract shared by the partition defenses: bucket by hash, train one victim per learner on its buckets
    (:meth:`learners`), aggregate, certify (:meth:`certify`). ``spread`` is the number of buckets a learner reads
    (Finite Aggregation's d; 1 for DPA) and ``aggregation`` how the learners decide (``vote`` or ``runoff``)."""

    draws_randomness: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Diagnostics = PartitionDiagnostics
    certifies: ClassVar[bool] = True
    victims: ClassVar[tuple[str, ...]] = ("torch",)
    certificates: ClassVar[tuple[str, ...]] = ("dpa", "roe")  # what its learners certify: (its vote's, its run-off's)

    def __init__(
        self,
        rate: float,
        seed: int,
        partitions: int = 50,
        spread: int = 1,
        aggregation: str = "vote",
        evaluation: tuple[np.ndarray, np.ndarray] | None = None,
        n_clean: int | None = None,
        batched: bool = True,
    ) -> None:
        super().__init__(rate, seed)
        if partitions < 2:
            raise AuditError(f"{self.name} partitions must be ≥ 2 (got {partitions})")
        self.partitions, self.spread, self.aggregation, self.batched = partitions, spread, aggregation, batched
        self.evaluation = evaluation
        self.n_clean = n_clean

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        return {"evaluation": (dataset.x_test, dataset.y_test), "n_clean": len(dataset.y_train)}

    def certify(self, raw: np.ndarray, k: int, offsets: np.ndarray, n_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{certificate: (prediction, radius)}`` of the learners' scores ``raw`` (K, n, c); the first is the
        ensemble's own aggregation."""
        top = top_class(raw)
        compute = {
            "dpa": lambda: dpa_radius(vote_table(top, n_classes)),
            "roe": lambda: roe_radius(raw),
            "fa": lambda: fa_radius(top, offsets, n_classes),
            "fa_roe": lambda: fa_roe_radius(raw, offsets),
        }
        own = self.certificates[1] if self.aggregation == "runoff" else self.certificates[0]
        return {name: compute[name]() for name in (own, *[c for c in self.certificates if c != own])}

    def learners(self, x: np.ndarray, y: np.ndarray, bucket: np.ndarray, reads: np.ndarray, victim: Any, candidate: Candidate) -> list[Fitted]:
        """One victim per row of ``reads`` (the buckets it trains on), learner ``i`` seeded ``s + i`` — ``s`` the cell's
        training seed, so the ensemble on a poisoned set differs from the clean one only by the poisons, as the
        certificate assumes. The same buckets, data, candidate and seed give the same learners, so they are trained
        once: ``dpa`` with either aggregation and ``fa`` with ``spread: 1`` share them (:data:`_TRAINED`)."""
        base = self.train_seed if self.train_seed is not None else self.seed
        digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes() + reads.tobytes()).hexdigest()
        key = (digest, len(reads), candidate.key, base, id(victim), self.batched)
        if key in _TRAINED:
            _TRAINED.move_to_end(key)
            return _TRAINED[key]
        counts = np.bincount(bucket, minlength=int(reads.max()) + 1)
        groups = np.split(np.argsort(bucket, kind="stable"), np.cumsum(counts)[:-1])  # the points of each bucket, in order
        parts = [np.sort(np.concatenate([groups[h] for h in row])) for row in reads]
        for i, idx in enumerate(parts):
            if len(idx) == 0:
                raise AuditError(f"{self.name}: learner {i} of {len(reads)} has no training point; use fewer partitions")
        batch = batchable(victim, candidate) if self.batched else None
        if batch is not None:
            members: list[Fitted] = list(fit_batched(victim, candidate, x, y, parts))
        else:
            members = [victim.fit(x[idx], y[idx], candidate.hparams, base + i) for i, idx in enumerate(parts)]
        _TRAINED[key] = members
        while len(_TRAINED) > 2:
            _TRAINED.popitem(last=False)
        return members

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        from art.estimators.classification import DeepPartitionEnsemble

        if not victim.builds_modules:
            raise AuditError(f"{self.name} needs a torch victim (members are ART PyTorch classifiers)")
        # at least ~20 points per learner: k = min(partitions, ⌊N/20⌋), ≥ 2 (tiny partitions vote noise), N the clean
        # training set's size: k is fixed before any poison arrives (one that moved k would re-bucket every point)
        k, c = max(2, min(self.partitions, (self.n_clean or len(y)) // 20)), int(victim.n_classes)
        offsets = spread_offsets(k, self.spread, 0)
        rows = np.concatenate([x, y.reshape(-1, 1).astype(x.dtype)], axis=1)
        bucket = np.array([partition_of(r, k * self.spread) for r in rows])
        members = self.learners(x, y, bucket, fa_training_buckets(k, offsets), victim, candidate)
        ensemble = DeepPartitionEnsemble([m.to_art() for m in members], ensemble_size=len(members), channels_first=True)
        fitted = FittedEnsemble(task="classification", n_classes=c, members=members, art_ensemble=ensemble, aggregation=self.aggregation)
        diagnostics = PartitionDiagnostics(
            partitions=k,
            partitions_asked=self.partitions,
            learners=len(members),
            spread=self.spread,
            partition_sizes=np.bincount(bucket, minlength=k * self.spread).tolist(),
        )
        if self.evaluation is not None:
            x_e, y_e = self.evaluation
            certificates = self.certify(fitted.raw_scores(x_e), k, offsets, c)
            own, (prediction, radius) = next(iter(certificates.items()))
            budget = int(round(self.rate * (self.n_clean or len(y) / (1 + self.rate))))
            curves = {
                name: [round(float(v), 3) for v in certified_curve(p, r, y_e, np.arange(int(r.max()) + 2))] for name, (p, r) in certificates.items()
            }
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
    description: ClassVar[str] = (
        "deep partition aggregation (ART DeepPartitionEnsemble) with a certified radius per test point; "
        "aggregation: runoff is Run-off Election over the same learners"
    )
    Params = DPAParams

    def __init__(
        self,
        rate: float,
        seed: int,
        partitions: int = 50,
        aggregation: str = "vote",
        evaluation: tuple[np.ndarray, np.ndarray] | None = None,
        n_clean: int | None = None,
        batched: bool = True,
    ) -> None:
        super().__init__(rate, seed, partitions, 1, aggregation, evaluation, n_clean, batched)


class FiniteAggregation(PartitionEnsemble):
    """Finite Aggregation: ``k·d`` learners, each on ``d`` of ``k·d`` hash buckets; plurality vote or run-off, FA's and
    FA+ROE's radius."""

    name: ClassVar[str] = "fa"
    description: ClassVar[str] = (
        "finite aggregation (Wang, Levine & Feizi 2022): k·d learners, each on d of k·d hash buckets, certified "
        "radius; aggregation: runoff is Run-off Election over the same learners"
    )
    Params = FAParams
    certificates: ClassVar[tuple[str, ...]] = ("fa", "fa_roe")

    def __init__(
        self,
        rate: float,
        seed: int,
        partitions: int = 50,
        spread: int = 8,
        aggregation: str = "vote",
        evaluation: tuple[np.ndarray, np.ndarray] | None = None,
        n_clean: int | None = None,
        batched: bool = True,
    ) -> None:
        super().__init__(rate, seed, partitions, spread, aggregation, evaluation, n_clean, batched)
