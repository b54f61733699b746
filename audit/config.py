"""Audit configuration: YAML → validated pydantic models, with one-line errors.

Every user mistake surfaces as :class:`audit.errors.AuditError` whose message names the
field, what was expected and what arrived, e.g.
``config: budgets[1]: must be in (0, 1] (got 1.7)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import yaml
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator

from audit.catalog import BATTERY, MODELS, PAPER_CLEAN_WARM_START, PAPER_L2_LR, PAPER_L2_RANGE, PROFILE_SPLITS
from audit.data import DatasetSpec, SplitSpec
from audit.errors import AuditError
from audit.spec import StrictModel, first_error

if TYPE_CHECKING:  # the registries import torch and ART; validation imports them only when it needs them
    from audit.attacks import AuditAttack
    from audit.defenses import Defense

__all__ = [
    "AXES",
    "AttackSpec",
    "AuditConfig",
    "DatasetSpec",
    "DefenseSpec",
    "ModelSpec",
    "SplitSpec",
    "TrainingSpec",
    "candidate_label",
    "load_config",
    "parse_config",
]

SCHEMA_VERSION = 1

# Hyperparameter axes a candidate grid may span, with their validators.
# l2 is ρ (README: How the audit works, the objective): objective = mean loss + (ρ/2)·‖w‖² over weights (biases free).
AXES: dict[str, str] = {
    "l2": "L2 strength ρ ≥ 0 (mean loss + ρ/2·‖w‖², biases unregularized)",
    "l1": "L1 strength λ₁ ≥ 0 (+ λ₁‖w‖₁; lasso and elastic_net)",
    "width": "hidden units per layer (mlp) or channels of the first conv layer (cnn), int ≥ 1",
    "depth": "hidden layers of the mlp, int ≥ 1",
    "epochs": "training epochs (full-batch: gradient steps), int ≥ 1",
    "lr": "learning rate > 0",
    "batch_size": "mini-batch size, int ≥ 1 (omit for full batch)",
    "momentum": "SGD momentum in [0, 1)",
}


SYMBOLS = {"l2": "ρ", "l1": "λ₁", "width": "width", "depth": "depth", "epochs": "epochs", "lr": "lr", "batch_size": "batch", "momentum": "momentum"}


def candidate_label(hparams: dict[str, Any]) -> str:
    """Short human label, e.g. ``ρ=1e-3, width=64``."""
    if not hparams:
        return "default"
    return ", ".join(f"{SYMBOLS.get(k, k)}={v:g}" if isinstance(v, float) else f"{SYMBOLS.get(k, k)}={v}" for k, v in hparams.items())


FLOAT32_MAX = 3.4028234663852886e38


def _check_axis_value(axis: str, value: Any) -> float | int:
    if isinstance(value, str):  # "1e-4" from JSON, or YAML 1.1's reading of it: a number like every other field's
        try:
            value = float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            pass
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value):
        raise ValueError(f"candidates.{axis}: values must be finite numbers (got {value!r})")
    if axis == "l2" and value < 0:
        raise ValueError(f"candidates.l2: ρ must be ≥ 0 (got {value})")
    if axis in ("l2", "l1") and value > FLOAT32_MAX:  # the objective is computed in float32
        raise ValueError(f"candidates.{axis}: {value:g} is beyond float32's range (≤ {FLOAT32_MAX:.3g}) the training computes in")
    if axis == "l1" and value < 0:
        raise ValueError(f"candidates.l1: λ₁ must be ≥ 0 (got {value})")
    if axis in ("width", "depth", "epochs", "batch_size"):
        if int(value) != value or value < 1:
            raise ValueError(f"candidates.{axis}: must be an integer ≥ 1 (got {value!r})")
        return int(value)
    if axis == "lr" and value <= 0:
        raise ValueError(f"candidates.lr: must be > 0 (got {value})")
    if axis == "momentum" and not 0 <= value < 1:
        raise ValueError(f"candidates.momentum: must be in [0, 1) (got {value})")
    return float(value)


class ModelSpec(StrictModel):
    """A model of the zoo (``logreg``, ``mlp``, ``cnn``, ``ridge``) or a user factory ``package.module:function``."""

    name: str
    factory: str | None = None
    width: int | None = Field(None, ge=1)
    depth: int = Field(2, ge=1, le=1000)

    @model_validator(mode="after")
    def _known(self) -> ModelSpec:
        if self.name not in MODELS:
            raise ValueError(f"model.name: unknown model {self.name!r}; valid: {', '.join(sorted(MODELS))}")
        if self.name == "user" and not self.factory:
            raise ValueError("model.factory: required for model 'user' (as 'package.module:function')")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"model.factory: expected 'package.module:function' (got {self.factory!r})")
        return self


class TrainingSpec(StrictModel):
    """The one training procedure used to pretrain, inside attacks and to retrain.

    Fields left out take the model's defaults (see :data:`audit.models.zoo.TRAINING_DEFAULTS`).
    ``batch_size`` None means full batch; ``lbfgs`` is full-batch only and ``epochs`` caps
    its iterations.
    """

    optimizer: Literal["lbfgs", "fista", "sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0, le=1e6)
    momentum: float | None = Field(None, ge=0, lt=1)
    epochs: int | None = Field(None, ge=1, le=1_000_000)  # bounded: a typo of 10¹² would run for ever
    batch_size: int | None = Field(None, ge=1)
    #: the user's own training, ``package.module:function`` called as ``fn(model, x, y, *, seed)`` (and ``l2=ρ``
    #: when it takes it) for every retraining of a torch victim; README: "Train as you train"
    factory: str | None = None

    @model_validator(mode="after")
    def _factory(self) -> TrainingSpec:
        if self.factory is not None and (":" not in self.factory or not all(self.factory.split(":", 1))):
            raise ValueError(f"training.factory: expected 'package.module:function' (got {self.factory!r})")
        return self


class _RegisteredSpec(StrictModel):
    """A registered attack or defense in the config: registry name, optional display id and its parameters.

    The parameters are checked with the registered class's ``Params``; ``key`` is the id the
    grid's cells are stored under.
    """

    name: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    axis: ClassVar[str]  # the config field: "attacks" or "defenses"

    @classmethod
    def registry(cls) -> dict[str, Any]:
        raise NotImplementedError

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> _RegisteredSpec:
        if info.context and info.context.get("shallow"):  # a first, fast pass: everything but the registries
            return self
        registry, what = self.registry(), self.axis.removesuffix("s")
        if self.name not in registry:
            raise ValueError(f"{self.axis}: unknown {what} {self.name!r}; valid: {', '.join(sorted(registry))}")
        try:
            registry[self.name].Params.model_validate(self.params)
        except ValidationError as err:
            raise ValueError(f"{self.axis}.{self.name}.params: {first_error(err)}") from None
        return self

    @property
    def key(self) -> str:
        """The id cells are stored under: the explicit id, else name plus sorted parameters."""
        if self.id:
            return self.id
        if not self.params:
            return self.name
        return self.name + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) + "]"


class AttackSpec(_RegisteredSpec):
    """One attack of the grid: registry name, an optional display id, its parameters and how many
    of the run's seeds it runs at (``seeds``: the first ones; None: all)."""

    axis: ClassVar[str] = "attacks"
    seeds: int | None = Field(None, ge=1)

    @classmethod
    def registry(cls) -> dict[str, Any]:
        from audit.attacks import ATTACKS

        return dict(ATTACKS)

    @property
    def attack(self) -> type[AuditAttack]:
        """The registered attack class."""
        return self.registry()[self.name]


class DefenseSpec(_RegisteredSpec):
    """One defense of the grid: registry name, optional display id and parameters (a bare name is ``{name}``).

    A spec with neither id nor params serialises back to the bare name, so configs written
    before defenses took parameters keep their fingerprint.
    """

    axis: ClassVar[str] = "defenses"

    @classmethod
    def registry(cls) -> dict[str, Any]:
        from audit.defenses import DEFENSES

        return dict(DEFENSES)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> Any:
        return self.name if self.id is None and not self.params else handler(self)

    @property
    def defense(self) -> type[Defense]:
        """The registered defense class."""
        return self.registry()[self.name]


class PoisonabilitySpec(StrictModel):
    """Thresholds τ of GradPC target models, per candidate and seed, computed after clean training.

    ``enabled: auto`` computes them for torch classifiers (they need the model's logits).
    """

    enabled: Literal["auto", "on", "off"] = "auto"
    eps_w: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], min_length=1)
    gradpc_steps: int = Field(100, ge=1, le=1_000_000)

    @field_validator("eps_w")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        for i, v in enumerate(value):
            if not v > 0:
                raise ValueError(f"poisonability.eps_w[{i}]: must be > 0 (got {v!r})")
        return sorted(value)


class RecommendationSpec(StrictModel):
    """How the deployed setting is chosen: best worst-case validation metric at ``target_budget``
    among candidates whose clean validation accuracy is within ``clean_tolerance`` points of the best."""

    target_budget: float | None = Field(None, gt=0, le=1)
    clean_tolerance: float = Field(1.0, ge=0)
    #: how far the audit's clean retraining may score from the estimator handed over (points of accuracy;
    #: a fraction of the MSE for regression) before the run gives no verdict; None: 1 point / 0.05
    deployed_tolerance: float | None = Field(None, ge=0)
    #: give the verdict although the audited model does not match the user's (every output says so)
    allow_mismatch: bool = False


class MinimaxSpec(StrictModel):
    """λ under attack (carnerero-cano-2021): the defender policies λ_CLEAN, λ re-tuned on D_val and λ_RMD.

    λ is the paper's log strength on a summed loss: the audit's ρ = e^λ / N on N training
    points. ``attack``: id of a ``back_gradient`` attack of the grid (its parameters craft the
    poisons; default the first one). Defaults are the paper's MNIST settings (Table 2, C.2).
    """

    attack: str | None = None
    l2_range: tuple[float, float] = PAPER_L2_RANGE
    l2_lr: float = Field(PAPER_L2_LR, gt=0)
    clean_iterations: int = Field(50, ge=1)
    warm_start: float = PAPER_CLEAN_WARM_START
    cv_folds: int = Field(5, ge=2)
    cv_grid: list[float] = Field(default_factory=lambda: [float(v) for v in range(-8, 2)], min_length=1)
    retune_grid: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _ranges(self) -> MinimaxSpec:
        low, high = self.l2_range
        if not low < high:
            raise ValueError(f"minimax.l2_range: expected (low, high) with low < high (got {list(self.l2_range)})")
        if not low <= self.warm_start <= high:
            raise ValueError(f"minimax.warm_start: {self.warm_start} is outside l2_range {list(self.l2_range)}")
        return self

    def retune(self) -> list[float]:
        """λ values the re-tuning defender tries: the configured grid, else 12 points over ``l2_range``."""
        if self.retune_grid is not None:
            return list(self.retune_grid)
        low, high = self.l2_range
        return [float(v) for v in np.linspace(low, high, 12)]


class AdaptiveSpec(StrictModel):
    """The adaptive stage: every filtering defense of the grid also faces attackers that know it.

    ``attacks``: ids of the grid's attacks to adapt, and ``minmax`` (the min-max attack of
    Steinhardt et al. 2017, convex victims); None: the default set — the grid's gradient
    attacks (Gradient Canceling, back-gradient) and, for binary softmax regression with a
    sphere/slab defense in the grid, min-max (every grid attack when the grid has no gradient attack).
    The plan writes the list out, so a stored config names what ran. ``rounds``: the
    filter-in-the-loop rounds (craft, filter, re-craft the removed poisons against the model
    trained on what survived); 0 keeps only an attack's own defense-aware mode.
    """

    enabled: Literal["auto", "off"] = "auto"
    attacks: list[str] | None = None
    rounds: int = Field(2, ge=0, le=10)


class ThreatSpec(StrictModel):
    """What the attacker reads besides the training data (README: Threat model).

    ``attacker_reads``: ``attacker_split`` (the default) — the attacks measure their objective on
    D_att, a held-out sample of the distribution of their own, so the defender's selection split
    D_val is never what an attacker optimised; ``validation`` — the papers' setting, where the
    attacker reads D_val (for reproductions; every output labels it). ``attacker_split``: how much
    is carved out as D_att when the data does not give ``x_att``/``y_att``: a fraction (or a count
    ≥ 1) of the training portion when the audit splits the data itself (default 0.25), of D_val
    when the user fixed the training split (default 0.5).
    """

    attacker_reads: Literal["attacker_split", "validation"] = "attacker_split"
    attacker_split: float | None = Field(None, gt=0)

    @field_validator("attacker_split")
    @classmethod
    def _share(cls, value: float | None) -> float | None:
        if value is not None and value >= 1 and int(value) != value:
            raise ValueError(f"a fraction in (0, 1) or a whole count ≥ 1 (got {value})")
        return value


CONFIRM_SUFFIX = "@paper"
"""What a confirmation attack's key ends with: ``back_gradient@paper`` is the battery's back-gradient
at its paper's settings, run to confirm a verdict screened with a reduced profile."""


class ConfirmSpec(StrictModel):
    """The confirmation stage (docs: README, "The verdict: screened, then confirmed").

    After the grid has screened every setting, the recommended setting and every setting tied
    with it are re-attacked with each attack of the battery at its paper's settings and every
    seed, at ``budgets`` (None: the target budget; the target budget is always confirmed). The
    verdict, the gate and the record use the confirmed figures. ``enabled: false`` (``confirm:
    false``, ``run --no-confirm``) leaves the verdict a labelled lower bound. ``attacks`` narrows
    the confirming battery to these battery ids (None: every entry that applies to the task and
    the victim; a resolved config writes the list out); every output names a narrowed set.
    """

    enabled: bool = True
    budgets: list[float] | None = Field(None, min_length=1)
    attacks: list[str] | None = None

    @field_validator("attacks")
    @classmethod
    def _battery_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        known = [e.id for e in BATTERY]
        for name in value:
            if name not in known:
                raise ValueError(f"confirm.attacks: {name!r} is not an attack of the battery; valid: {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"confirm.attacks: values repeat ({value!r})")
        return value


class ExecutorSpec(StrictModel):
    """Where the grid's cells run; it never changes a number, so it is not in the fingerprint.

    ``local`` (the default): this machine — ``workers`` 1 runs the cells in this process in run order;
    more run them in that many worker processes (:mod:`audit.grid.pool`), each cell at ``cpus_per_cell``
    threads (default 1); ``auto`` as many as the CPUs this process may use over ``cpus_per_cell`` (one on a
    GPU run); None (the default) is ``auto`` from the command line (``run --workers``) and 1 from Python.
    ``ray``: the coordinator plans the
    cells, submits the unfinished ones as Ray tasks and alone writes the store
    (:mod:`audit.grid.distributed`; ``pip install -e ".[ray]"``). ``address``: None joins the
    cluster ``RAY_ADDRESS`` names, else starts a private one on this machine; ``auto`` joins the
    cluster ``ray start --head`` runs here; ``host:port`` or ``ray://host:port`` one elsewhere.
    ``cpus_per_cell``: CPUs Ray reserves for a task (or a pool worker's), and torch's thread count in it (rounded up);
    ``gpus_per_cell``: a GPU share (0.25: four retrainings share one GPU; None: one GPU on a CUDA
    run, none on a CPU run). The coordinator resolves ``device``, so run it where the workers'
    device kind is visible. ``retries``: how often a
    task whose worker died is run again before its cells are recorded as failed.
    """

    kind: Literal["local", "ray"] = "local"
    workers: int | Literal["auto"] | None = None
    address: str | None = None
    cpus_per_cell: float = Field(1.0, gt=0, le=1024)
    gpus_per_cell: float | None = Field(None, ge=0, le=64)
    retries: int = Field(2, ge=0, le=20)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError(f"executor.workers: {value} is not between 1 and 1024 (or 'auto')")
        return value

    @model_validator(mode="after")
    def _workers_are_local(self) -> ExecutorSpec:
        if self.kind == "ray" and self.workers not in (None, "auto"):
            raise ValueError("executor.workers is for kind 'local'; Ray runs as many cells at once as its cluster has CPUs (cpus_per_cell each)")
        return self

    @property
    def cell_threads(self) -> int:
        """torch's intra-op threads in a Ray task or a pool worker (the fingerprint's thread count for such a run)."""
        return max(1, math.ceil(self.cpus_per_cell))


class SystemSpec(StrictModel):
    """The AI system the audit is for, as the user declares it: what the compliance record
    (``poison-audit export``) names in its identification section. Free text, escaped wherever it is
    shown; it never changes a number, so it is not in the fingerprint.

    ``name``/``version``: the system and its version; ``provider``: the organisation placing it on
    the market (EU AI Act Art. 3(3)); ``responsible``: the person responsible for the tests (who
    signs, Annex IV 2(g)); ``intended_purpose``: one sentence (Art. 3(12)); ``contact``: where
    questions go; ``model_version``: the model artefact's own version, when it has one.
    """

    name: str | None = Field(None, max_length=200)
    version: str | None = Field(None, max_length=100)
    model_version: str | None = Field(None, max_length=100)
    provider: str | None = Field(None, max_length=200)
    responsible: str | None = Field(None, max_length=200)
    intended_purpose: str | None = Field(None, max_length=2000)
    contact: str | None = Field(None, max_length=200)


class AuditConfig(StrictModel):
    """A whole audit. Defaults give the embedded default audit (``poison-audit run``)."""

    name: str = "default"  # the run directory's name: one plain path component (see _plain_name)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}", value):
            raise ValueError(
                f"must be one plain directory name — letters, digits, '_', '.', '-', not starting with '.', at most 100 characters (got {value!r})"
            )
        return value

    dataset: DatasetSpec = Field(default_factory=lambda: DatasetSpec(name="mnist5k"))
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="logreg"))
    training: TrainingSpec = TrainingSpec()
    candidates: dict[str, list[Any]] = Field(default_factory=lambda: {"l2": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]})
    profile: Literal["quick", "standard", "paper"] = "quick"  # audit.catalog.PROFILE_NAMES; each attack's AuditAttack.profiles
    attacks: list[AttackSpec] = Field(default_factory=list)  # empty: the profile's battery (see resolved)
    budgets: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3], min_length=1)
    defenses: list[DefenseSpec] = Field(default_factory=lambda: [DefenseSpec.model_construct(name="none", id=None, params={})], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    #: how many draws of the train/attacker/validation/test partition the grid runs on (README: Repeated splits);
    #: None: the profile's (audit.catalog.PROFILE_SPLITS). Data whose split the user fixed runs on that one split.
    splits: int | None = Field(None, ge=1, le=100)
    #: attack and defense specs by key (:meth:`_spec_index`), with the lists they were built from
    _specs: tuple[tuple[Any, ...], dict[str, AttackSpec], dict[str, DefenseSpec]] | None = PrivateAttr(None)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "reports"
    recommendation: RecommendationSpec = RecommendationSpec()
    poisonability: PoisonabilitySpec = Field(default_factory=PoisonabilitySpec)
    minimax: MinimaxSpec | None = None
    adaptive: AdaptiveSpec = AdaptiveSpec()
    confirm: ConfirmSpec = ConfirmSpec()
    threat: ThreatSpec = ThreatSpec()
    executor: ExecutorSpec = ExecutorSpec()
    system: SystemSpec = SystemSpec()

    @field_validator("candidates")
    @classmethod
    def _axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        checked = {}
        for axis, values in value.items():
            if axis not in AXES:
                raise ValueError(f"candidates: unknown axis {axis!r}; valid: {', '.join(AXES)}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"candidates.{axis}: expected a non-empty list (got {values!r})")
            checked[axis] = [_check_axis_value(axis, v) for v in values]
            if len(set(checked[axis])) != len(checked[axis]):
                raise ValueError(f"candidates.{axis}: values repeat ({values!r})")
        return checked

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_switch(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value  # ``confirm: false`` is the short form

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: list[float]) -> list[float]:
        for i, eps in enumerate(value):
            if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
                raise ValueError(f"budgets[{i}]: the poison budget ε must be in (0, 1] (got {eps!r})")
        if len(set(value)) != len(value):
            raise ValueError(f"budgets: values repeat ({value!r})")
        return sorted(float(v) for v in value)

    @field_validator("defenses")
    @classmethod
    def _defenses(cls, value: list[DefenseSpec]) -> list[DefenseSpec]:
        keys = [d.key for d in value]
        if len(set(keys)) != len(keys):
            raise ValueError(f"defenses: values repeat ({keys!r}); give each an 'id'")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _no_bool_seeds(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(s, bool) for s in value):
            raise ValueError(f"seeds: expected integers ≥ 0, not true/false (got {value!r})")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(not 0 <= s < 2**63 for s in value):
            raise ValueError(f"seeds: expected distinct integers in 0..2⁶³−1 (got {str(value)[:80]})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AuditConfig:
        if self.training.optimizer == "lbfgs" and (self.training.batch_size or "batch_size" in self.candidates):
            raise ValueError("training.batch_size: L-BFGS trains full batch; drop batch_size or use optimizer sgd/adam")
        if "attacks" in self.model_fields_set and not self.attacks:
            raise ValueError("attacks: the list is empty; leave the key out to run the profile's battery")
        keys = [a.key for a in self.attacks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"attacks: two attacks share an id ({keys!r}); give each an 'id'")
        if self.minimax is not None and self.attacks:  # the battery's back-gradient is checked when it is resolved
            self.minimax_attack()  # raises when there is no back_gradient attack to run it with
        target = self.recommendation.target_budget
        if target is not None and target not in self.budgets:
            raise ValueError(f"recommendation.target_budget: {target} is not one of the budgets {self.budgets}")
        for eps in self.confirm.budgets or []:
            if eps not in self.budgets:
                raise ValueError(f"confirm.budgets: {eps:g} is not one of the budgets {self.budgets}")
        return self

    # ------------------------------------------------------------------ derived
    def resolved(self, task: str, victim_kind: str | tuple[str, ...]) -> AuditConfig:
        """This config with its attacks made explicit under the profile: the profile's battery when
        the config lists none; each attack's parameters from the profile under its own ``params``;
        its seeds from the profile unless the config sets ``seeds`` (or the attack its ``seeds``).

        Idempotent (a resolved config resolves to itself), so a run's stored config reads back as
        what ran. Raises :class:`ValueError` when the battery has no attack for ``task`` and
        ``victim_kind`` (a kind, or the kinds a victim can be attacked as: ``Victim.attack_kinds``).
        """
        kinds = (victim_kind,) if isinstance(victim_kind, str) else tuple(victim_kind)
        from audit.attacks import profile_settings, spec_setting

        settings = profile_settings(self.profile)
        registry = AttackSpec.registry()
        if self.attacks:
            specs = self.attacks
        else:
            specs = [
                AttackSpec.model_construct(name=e.attack, id=e.id, params=dict(e.params), seeds=None)
                for e in BATTERY
                if e.applies(registry[e.attack], task, kinds) and not ((s := e.setting(self.profile, settings)) is not None and s.skip)
            ]
            if not specs:
                raise ValueError(f"profile {self.profile!r}: no attack of the battery applies to {task} with this victim")
        own_seeds = "seeds" in self.model_fields_set  # seeds the config chose are run by every attack
        out = []
        for spec in specs:
            setting = spec_setting(self.profile, spec.name, spec.key)
            params = {**(setting.params if setting else {}), **spec.params}
            nested = params.get("implicit") if setting and "implicit" not in spec.params else None
            if isinstance(nested, dict):  # the config's own values win over the profile's implicit ones too
                kept = {k: v for k, v in nested.items() if k not in spec.params}
                params = {k: v for k, v in params.items() if k != "implicit"} | ({"implicit": kept} if kept else {})
            seeds = spec.seeds if spec.seeds is not None else (setting.seeds if setting and not own_seeds else None)
            out.append(AttackSpec.model_construct(name=spec.name, id=spec.key, params=params, seeds=seeds))
        applies = [e.id for e in BATTERY if e.applies(registry[e.attack], task, kinds)]
        # every battery entry that applies (the paper profile skips none), or those of confirm.attacks that do
        wanted = applies if self.confirm.attacks is None else [i for i in applies if i in self.confirm.attacks]
        confirm = self.confirm.model_copy(update={"attacks": wanted})
        splits = self.splits if self.splits is not None else PROFILE_SPLITS[self.profile]
        resolved = self.model_copy(update={"attacks": out, "confirm": confirm, "splits": splits})
        if resolved.minimax is not None:
            resolved.minimax_attack()
        return resolved

    def attack_seeds(self, spec: AttackSpec) -> list[int]:
        """The run's seeds ``spec`` runs at: the first ``spec.seeds`` of them, else all."""
        return self.seeds[: spec.seeds] if spec.seeds is not None else list(self.seeds)

    @property
    def target_budget(self) -> float:
        """The budget the recommendation optimises: the configured one, else 0.1 if run, else the largest."""
        if self.recommendation.target_budget is not None:
            return self.recommendation.target_budget
        return 0.1 if 0.1 in self.budgets else self.budgets[-1]

    def minimax_attack(self) -> AttackSpec | None:
        """The attack the minimax stage uses, one whose class ``supports_minimax`` (back-gradient; None when the stage is off)."""
        if self.minimax is None:
            return None
        wanted = self.minimax.attack
        for spec in self.attacks:
            if spec.attack.supports_minimax and (wanted is None or spec.key == wanted):
                return spec
        if wanted is None:
            raise ValueError("minimax: needs a back_gradient attack in attacks (its parameters craft the poisons)")
        raise ValueError(f"minimax.attack: {wanted!r} is not the id of a back_gradient attack in attacks")

    @property
    def defense_keys(self) -> list[str]:
        """The defense axis as stored in the cells: each defense's key, in config order."""
        return [d.key for d in self.defenses]

    def attack_spec(self, key: str) -> AttackSpec:
        """The attack spec stored under ``key`` (a grid attack's, or a confirmation attack's)."""
        return self._spec_index()[0][key]

    def _spec_index(self) -> tuple[dict[str, AttackSpec], dict[str, DefenseSpec]]:
        """Attack specs (the grid's, then the confirmation stage's) and defense specs by key, built once per
        set of the lists they come from: a copy with other lists (``model_copy(update=…)``) builds its own."""
        sources = (self.attacks, self.defenses, self.confirm, self.confirm.attacks, self.seeds)
        cached = self._specs
        if cached is None or len(cached[0]) != len(sources) or any(a is not b for a, b in zip(cached[0], sources)):
            attacks = {a.key: a for a in [*self.confirmation_attacks(), *self.attacks]}  # a grid key wins
            cached = self._specs = (sources, attacks, {d.key: d for d in self.defenses})
        return cached[1], cached[2]

    @property
    def confirm_budgets(self) -> list[float]:
        """The budgets the confirmation stage confirms at: the configured ones and the target budget, ascending."""
        return sorted({*(self.confirm.budgets or []), self.target_budget})

    def confirmation_attacks(self) -> list[AttackSpec]:
        """The attacks that confirm a verdict: each battery entry of ``confirm.attacks`` at its paper's
        settings (the attack's defaults, every seed) under the key ``<id>@paper`` — except those the
        grid already runs so (same attack, same validated parameters, every seed), whose screening
        cells are full strength already. Empty for an unresolved config (``confirm.attacks`` None)."""
        entries = {e.id: e for e in BATTERY}
        out = []
        for entry_id in self.confirm.attacks or []:
            entry = entries[entry_id]
            spec = AttackSpec.model_construct(name=entry.attack, id=entry.id + CONFIRM_SUFFIX, params=dict(entry.params), seeds=None)
            if not any(self._full_strength(grid, spec) for grid in self.attacks):
                out.append(spec)
        return out

    def _full_strength(self, grid: AttackSpec, paper: AttackSpec) -> bool:
        """Whether grid attack ``grid`` is ``paper`` run as the paper runs it: same class, same validated parameters, every seed."""
        if grid.name != paper.name or len(self.attack_seeds(grid)) < len(self.seeds):
            return False
        params = grid.attack.Params
        return params.model_validate(dict(grid.params)).model_dump() == params.model_validate(dict(paper.params)).model_dump()

    def defense_spec(self, key: str) -> DefenseSpec:
        """The defense spec stored under ``key``."""
        return self._spec_index()[1][key]

    def candidate_grid(self) -> list[dict[str, Any]]:
        """Cartesian product of the candidate axes, in config order (deterministic)."""
        axes = list(self.candidates)
        return [dict(zip(axes, combo)) for combo in itertools.product(*(self.candidates[a] for a in axes))]

    def fingerprint(self) -> str:
        """Hash of everything that changes the grid's results (not the output directory, the executor, the declared
        system or the confirmation stage, whose cells have keys of their own)."""
        # confirm: the confirmation stage adds cells of its own keys and never changes a screening cell
        # recommendation.deployed_tolerance / allow_mismatch: whether a verdict is given, never a cell's numbers
        exclude: dict[str, Any] = {
            "output_dir": True,
            "executor": True,
            "system": True,
            "confirm": True,
            "recommendation": {"deployed_tolerance", "allow_mismatch"},
        }
        payload = self.model_dump(mode="json", exclude=exclude)
        if payload["training"].get("factory") is None:  # runs from before training.factory keep their fingerprint
            payload["training"].pop("factory", None)
        if payload.get("splits") in (None, 1):  # likewise one split (the runs from before repeated splits)
            payload.pop("splits", None)
        if payload["dataset"].get("domain") == "auto":  # likewise dataset.domain (a domain in force is in the plan's fingerprint)
            payload["dataset"].pop("domain", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def parse_config(data: dict[str, Any] | None, source: str = "config", shallow: bool = False) -> AuditConfig:
    """Validate a mapping into an :class:`AuditConfig`; raise :class:`AuditError` with one line.

    ``shallow`` checks everything but the attack and defense registries (names and their
    parameters), which import torch and ART: a fast first pass, so a mistake in the rest of
    the config is reported in a fraction of a second. Use the result only to fail early.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AuditError(f"{source}: expected a mapping of settings at the top level (got {type(data).__name__})")
    try:
        return AuditConfig.model_validate(data, context={"shallow": shallow})
    except ValidationError as err:
        raise AuditError(f"{source}: {first_error(err)}") from None


#: a config needs no more: a document with more aliases is refused before anything expands them (an alias bomb)
MAX_ALIASES = 100
MAX_CONFIG_BYTES = 1_000_000


class _YamlLimit(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-4`` is a number (YAML 1.1 needs ``1.0e-4``), and at most
    :data:`MAX_ALIASES` aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                raise _YamlLimit(f"more than {MAX_ALIASES} aliases (*name); a config needs none of that size")
        return super().compose_node(parent, index)


_ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def load_config(path: str | Path, shallow: bool = False) -> AuditConfig:
    """Read and validate a YAML config file (``shallow``: see :func:`parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AuditError(f"{path}: {path.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_ConfigLoader)
    except RecursionError:
        raise AuditError(f"{path}: YAML nested too deeply to read") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AuditError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise AuditError(f"{path}: the config file is empty (for the default audit run `poison-audit run` without a file)")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(dataset, dict) and isinstance(dataset.get("path"), str) and not Path(dataset["path"]).expanduser().is_absolute():
        # a relative dataset path means relative to the config file, wherever the command runs
        data = {**data, "dataset": {**dataset, "path": str(path.parent / Path(dataset["path"]).expanduser())}}
    return parse_config(data, source=str(path), shallow=shallow)
