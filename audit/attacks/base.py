"""The one contract every attack of the audit keeps (docs/architecture.md; as foolbox's attack base).

:class:`AuditAttack` is an abstract base that owns

* the **keyword-only constructor** ``Attack(estimator, *, budget, seed=0, box=None,
  n_classes=None, **params)``: it validates the budget and the attack's declared
  parameters (``Params``, a pydantic model, so configs are checked with the same
  constraints) and initialises the ART attack it also is. Subclasses add their own
  keyword-only arguments and call ``super().__init__``; they never re-validate the common ones.
* the **final** ``poison(x, y) -> (x_poison, y_poison)`` of ART: it validates the input,
  draws ``n_p = round(ε·n)``, makes a numpy and a torch generator from the seed (the
  caller's global RNG states are left as they were, even by library code inside ``_run``), puts the data on the victim's device, calls the subclass's
  ``_run``, clips the features to the box and checks shapes and labels.

Subclasses write only ``_run`` (the algorithm) and ``for_cell`` (how the grid builds them).
Diagnostics go to ``self.diagnostics``, an instance of the class's ``Diagnostics`` dataclass
(:class:`audit.jsonio.Diagnostics`: typed fields, stored as JSON), never into the return value.
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, final

import numpy as np
import torch
from art.attacks.attack import PoisoningAttackWhiteBox
from pydantic import ValidationError
from torch import nn

from audit.attacks.feasible import Value, ValueAndGradient, refine
from audit.catalog import PROFILE_NAMES, ProfileSetting
from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.models.candidate import Candidate
from audit.models.estimator import as_art_estimator, clip_values, differentiable_model, infer_task
from audit.models.structure import last_linear
from audit.seeding import generators, preserved_global_rng
from audit.spec import BoundedParams

if TYPE_CHECKING:
    from audit.data import Dataset
    from audit.models import Fitted, Victim


def _torch_requirements() -> tuple[Any, ...]:
    from art.estimators.pytorch import PyTorchEstimator

    return ((PyTorchEstimator, nn.Module),)  # ART's form: the estimator inherits from one of these


#: the profiles an attack class may reduce itself under (``paper`` runs every attack at its defaults)
REDUCED_PROFILES: tuple[str, ...] = tuple(p for p in PROFILE_NAMES if p != "paper")


#: ART ``_estimator_requirements`` of the white-box attacks that differentiate the model
TORCH_REQUIREMENTS: tuple[Any, ...] = _torch_requirements()
TORCH_NEEDS = "a PyTorch model (an ART PyTorch estimator or an nn.Module)"


class AttackParams(BoundedParams):
    """Base of attack parameter models: unknown keys are errors, counts and reals bounded (:class:`BoundedParams`)."""


@dataclass
class AttackContext:
    """What the grid hands an attack for one cell ``(h, a, ε, s)`` (docs/architecture.md: what a run does).

    Build one from a plain dict of hyperparameters with :meth:`of`; the grid passes the
    :class:`~audit.models.Candidate` it planned."""

    dataset: Dataset
    victim: Victim
    fitted: Fitted  # trained with h on D_tr
    candidate: Candidate  # h, with the ρ (``candidate.rho``) and λ₁ the victim trains with
    budget: float
    seed: int
    #: the same attack's poisons at the grid's next smaller budget, ``(x_p, y_p)``, for an attack that
    #: :attr:`AuditAttack.warm_starts` (its objective at ε then starts where ε' < ε ended); None: a cold start
    warm_start: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(
        cls,
        dataset: Dataset,
        victim: Victim,
        fitted: Fitted,
        hparams: Mapping[str, Any],
        budget: float,
        seed: int,
        warm_start: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> AttackContext:
        """The context of a cell whose hyperparameters are ``hparams`` (their candidate built here)."""
        return cls(dataset, victim, fitted, Candidate.of(victim, hparams), budget, seed, warm_start)

    @property
    def hparams(self) -> dict[str, Any]:
        """The candidate's hyperparameters (what :meth:`Victim.fit` takes)."""
        return self.candidate.hparams

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's feature box ``(lo, hi)``."""
        return self.dataset.lo, self.dataset.hi

    def optimiser_arguments(self) -> dict[str, Any]:
        """The keyword arguments an attack that optimises a loss on the attacker's target set takes from a cell:
        ``x_val``/``y_val`` = D_att (D_val only in the papers' setting), ``budget``, ``l2`` (ρ), ``box`` and ``seed``."""
        x_att, y_att = self.dataset.attacker_target()
        return {"x_val": x_att, "y_val": y_att, "budget": self.budget, "l2": self.candidate.rho, "box": self.box, "seed": self.seed}


@dataclass
class PoisonInput:
    """What ``_run`` receives: the clean training set, the number of poisons and the generators.

    Attributes
    ----------
    x : ndarray, shape (n, d), float32
        A copy of the clean training features (the caller's array is never touched).
    y : ndarray, shape (n,)
        A copy of the labels (class indices) or responses.
    n_poison : int
        ``round(ε·n)``, at least 1 (``poison`` handles 0 itself).
    rng : numpy.random.Generator
        Seeded from the attack's seed.
    torch_rng : torch.Generator
        Seeded from the attack's seed, on ``device``.
    device, dtype : torch.device, torch.dtype
        The victim's device and parameter dtype (CPU/float32 for black-box attacks).
    classification : bool
        Labels are class indices (``x_t``/``y_t`` then hold long labels).
    """

    x: np.ndarray
    y: np.ndarray
    n_poison: int
    rng: np.random.Generator
    torch_rng: torch.Generator
    device: torch.device
    dtype: torch.dtype
    classification: bool
    init_x: np.ndarray | None = None  # (k, d), k ≤ n_poison: poisons to start from (``init_poisons``), float32
    init_y: np.ndarray | None = None  # (k,): their labels (class indices) or responses

    @cached_property
    def x_t(self) -> torch.Tensor:
        """``x`` on the victim's device, in its dtype, shape (n, d)."""
        return torch.as_tensor(self.x, dtype=self.dtype, device=self.device)

    @cached_property
    def y_t(self) -> torch.Tensor:
        """``y`` on the victim's device: long labels, or responses in the victim's dtype, shape (n,)."""
        dtype = torch.long if self.classification else self.dtype
        return torch.as_tensor(self.y, dtype=dtype, device=self.device)

    def tensor(self, array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Any other array (a validation set, a box) on the victim's device, in its dtype by default."""
        return torch.as_tensor(np.asarray(array), dtype=dtype or self.dtype, device=self.device)


@contextmanager
def _preserved_modes(estimator: Any) -> Iterator[None]:
    """Restore the caller's module train/eval modes and ``requires_grad`` flags afterwards
    (ART's own ``predict`` switches a module to eval; the caller's module stays as it was)."""
    module = estimator if isinstance(estimator, nn.Module) else getattr(estimator, "model", None)
    if not isinstance(module, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    grads = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def torch_module(estimator: Any, who: str) -> nn.Module:
    """The ``nn.Module`` to differentiate: the module itself, or an ART PyTorch estimator's model in the
    estimator's input space (its preprocessing and input shape, :func:`audit.models.estimator.differentiable_model`)."""
    return differentiable_model(estimator, who)


def validation_set(x_val: Any, y_val: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    """``x_val`` as float32 (m, d) — flattened from (m, *input_shape) — and ``y_val`` of shape (m,)
    (class indices from one-hot rows), m ≥ 1; a one-line error otherwise."""
    x_val = np.asarray(x_val, dtype=np.float32)
    y_val = np.asarray(y_val)
    if y_val.ndim == 2 and y_val.shape[1] > 1 and len(y_val) == len(x_val):
        y_val = y_val.argmax(axis=1)
    elif y_val.ndim == 2 and y_val.shape[1] == 1:
        y_val = y_val[:, 0]
    if x_val.ndim < 2 or len(x_val) == 0 or y_val.shape != (len(x_val),):
        raise AuditError(f"{who} needs a validation set x_val (m, d), y_val (m,); got {x_val.shape} and {np.shape(y_val)}")
    return x_val.reshape(len(x_val), -1), y_val


def task_and_classes(estimator: Any, task: str | None, n_classes: Any, who: str) -> tuple[str, int | None]:
    """The task and number of classes, given or read from the estimator (ART's ``nb_classes``,
    scikit-learn's classifier/regressor type); a bare ``nn.Module`` counts as a classifier
    with as many classes as its output layer has units, unless ``task='regression'``."""
    inferred = infer_task(estimator)
    if task is None:
        task = inferred or "classification"
    if task not in ("classification", "regression"):
        raise AuditError(f"The 'task' parameter of {who} must be 'classification' or 'regression'. Got {task!r} instead.")
    if inferred is not None and inferred != task:
        raise AuditError(f"{who}: task={task!r} but the estimator is a {inferred} model")
    if task == "regression":
        return task, None
    if n_classes is None:
        n_classes = getattr(estimator, "nb_classes", None)
    if n_classes is None and hasattr(estimator, "classes_"):  # a fitted scikit-learn classifier
        n_classes = len(estimator.classes_)
    if n_classes is None and isinstance(estimator, nn.Module):
        try:
            n_classes = last_linear(estimator).out_features
        except ValueError:
            n_classes = None
    return task, check_n_classes(n_classes, who)


def check_l2(l2: float, who: str) -> None:
    if l2 < 0:
        raise AuditError(f"The 'l2' parameter of {who} must be ≥ 0. Got {l2!r} instead.")


def check_n_classes(n_classes: Any, who: str) -> int:
    if isinstance(n_classes, np.integer):
        n_classes = int(n_classes)
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
        raise AuditError(f"The 'n_classes' parameter of {who} must be an int ≥ 2. Got {n_classes!r} instead.")
    return n_classes


WHITE_BOX = "white-box: training data, model family, training procedure and hyperparameters; not the test set"
BLACK_BOX = "black-box: the training data and the clean model's predictions (no parameters, no gradients); not the test set"


@dataclass(frozen=True)
class ThreatModel:
    """What an attack's attacker knows and can do, in NIST AI 100-2 E2025's terms (the compliance record prints it;
    docs/threat-model.md). ``capability``: what it does to the training set, in words — "injects …" for an attack
    that adds points, "modifies …" (training-set modification) for one that :attr:`AuditAttack.modifies` it."""

    white_box: bool
    capability: str

    @property
    def knowledge(self) -> str:
        return WHITE_BOX if self.white_box else BLACK_BOX


@dataclass
class AttackDiagnostics(Diagnostics):
    """What every attack reports: its wall time and the number of poisons; subclasses add their own fields."""

    seconds: float | None = None
    n_poison: int | None = None
    domain_projected: int | None = None  # poisons the feature domain changed (a table's discrete columns); None: no domain
    #: the attacker's objective at the rounded poisons and at the refined ones, moves made, evaluations spent (feasible.refine)
    domain_refined: dict[str, float] | None = None


@dataclass
class SourcedDiagnostics(AttackDiagnostics):
    """Diagnostics of an attack that makes each poison from a clean training point (a generator):
    ``source_examples`` are the first points' indices, so the report can show poison beside original."""

    source_examples: list[int] | None = None
    max_change: float | None = None
    mean_change: float | None = None


class AuditAttack(ABC):
    """Abstract base that gives an ART poisoning attack the audit's contract. Put it first in the bases.

    Class-level facts a subclass declares: ``name`` (registry key), ``title``, ``description``, ``threat``
    (:class:`ThreatModel`: knowledge and capability, for the compliance record), ``Params``, ``Diagnostics`` (the
    dataclass of what a run reports), ``tasks`` (``classification`` and/or ``regression``), ``victims`` (the victim
    kinds it needs: ``torch`` for attacks that differentiate through the model), and where they apply
    ``adaptive``, ``supports_minimax``, ``warm_starts`` and ``modifies``.
    """

    name: ClassVar[str]
    title: ClassVar[str]  # short name for the report ("Gradient Canceling")
    description: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    Diagnostics: ClassVar[type[AttackDiagnostics]] = AttackDiagnostics
    diagnostics: AttackDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    victims: ClassVar[tuple[str, ...]] = ("torch", "sklearn")  # the victim kinds it can attack (Victim.kind)
    threat: ClassVar[ThreatModel]

    #: True for an attack the adaptive stage re-crafts by default against a filtering defense (its own defense-aware
    #: mode, :meth:`against`, or the filter in the loop); others join it when ``adaptive.attacks`` lists them
    adaptive: ClassVar[bool] = False

    #: True for an attack the minimax stage can craft with (it learns λ under attack: ``learn_l2``)
    supports_minimax: ClassVar[bool] = False

    #: True for an optimised attack that can start from given poisons (``init_poisons``): the grid hands it its own
    #: poisons at the next smaller budget, so its objective does not fall as ε grows (docs: README, "Monotone in the budget")
    warm_starts: ClassVar[bool] = False

    #: True for an attack that *modifies* the training set (Wang et al. 2021's regimes) instead of adding to it:
    #: ``poison(x, y)`` returns the whole poisoned training set and the grid trains on it in place of D_tr ∪ D_p
    modifies: ClassVar[bool] = False

    #: how the attack runs under the reduced profiles (``quick``, ``standard``; absent: its defaults at every seed).
    #: ``paper`` is always the defaults. A reduction states its measured strength against the paper setting
    #: (``ProfileSetting.strength``, printed next to the verdict) or why the profile's battery leaves it out (``skip``)
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {}

    #: small settings the contract tests (tests/attacks/test_contract.py) run the attack with, each on every task and
    #: victim kind it claims: a few iterations, one entry per code path worth exercising
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = ({},)

    COMMON_PARAMS: ClassVar[tuple[str, ...]] = ("budget", "seed", "box", "verbose")
    attack_params: list[str]  # ART's settable names, filled per class (common ones + Params fields)
    estimator: Any  # ART's property: the estimator the attack was built with (kept for black-box ones too)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "poison" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override poison(); implement _run (docs/architecture.md, 'Adding an attack')")
        if "name" in cls.__dict__ and not isinstance(getattr(cls, "threat", None), ThreatModel):
            raise TypeError(
                f"{cls.__name__} must declare threat = ThreatModel(white_box=..., capability=...) (docs/architecture.md, 'Adding an attack')"
            )
        unknown = set(cls.profiles) - set(REDUCED_PROFILES)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.profiles: {sorted(unknown)} are not reduced profiles ({', '.join(REDUCED_PROFILES)}; paper is the defaults)"
            )
        # ART's list of what set_params may change: the common arguments and every declared parameter
        cls.attack_params = [*AuditAttack.COMMON_PARAMS, *cls.Params.model_fields]

    def __init__(
        self,
        estimator: Any = None,
        *,
        budget: float,
        seed: int = 0,
        box: tuple[Any, Any] | None = None,
        n_classes: int | None = None,
        verbose: bool = False,
        init_poisons: tuple[Any, Any] | None = None,
        **params: Any,
    ) -> None:
        from art.exceptions import EstimatorError

        who = type(self).__name__
        estimator = as_art_estimator(estimator)  # a raw scikit-learn model is queried through ART's wrapper
        inferred = infer_task(estimator)
        if inferred is not None and inferred not in self.tasks:
            raise AuditError(f"{who} needs a {' or '.join(self.tasks)} model; the estimator {type(estimator).__name__} is a {inferred} model")
        self.params = self._validated_params(params)
        if isinstance(self, PoisoningAttackWhiteBox):
            try:
                PoisoningAttackWhiteBox.__init__(self, estimator)
            except EstimatorError:
                raise AuditError(f"{who} needs {self.estimator_needs}; got {type(estimator).__name__}") from None
        else:
            super().__init__()  # ART's black-box attacks take no estimator; the one given is still kept
        self._estimator = estimator
        self.budget, self.seed, box, self.verbose = self._validated_common(budget, seed, box, verbose)
        self.lo: Any = None if box is None else box[0]
        self.hi: Any = None if box is None else box[1]
        self.n_classes = int(n_classes) if isinstance(n_classes, np.integer) else n_classes
        self.init_poisons = self._validated_init(init_poisons, who)
        #: what each feature of a real point can be (audit.data.FeatureDomain); poisons are mapped into it
        #: after the box (:meth:`for_context` sets the dataset's); None: continuous features in the box
        self.domain: Any = None
        self.diagnostics = self.Diagnostics()

    def _validated_init(self, init: tuple[Any, Any] | None, who: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``init_poisons`` as flat float32 features (k, d) and labels (k,) (class indices from one-hot rows)."""
        if init is None:
            return None
        if not self.warm_starts:
            raise AuditError(f"{who} does not start from given poisons (init_poisons); it crafts its own")
        x0, y0 = np.asarray(init[0], dtype=np.float32), np.asarray(init[1])
        if x0.ndim < 2 or len(y0) != len(x0):
            raise AuditError(f"{who}: init_poisons must be (x (k, d), y (k,)); got {x0.shape} and {y0.shape}")
        if y0.ndim == 2:
            y0 = y0.argmax(axis=1) if y0.shape[1] > 1 else y0[:, 0]
        if not np.all(np.isfinite(x0)):
            raise AuditError(f"{who}: init_poisons contains NaN or inf")
        return x0.reshape(len(x0), -1), y0

    #: what the estimator must be, in words (the one-line error when ART's requirements are not met)
    estimator_needs: ClassVar[str] = "an ART estimator"

    def _validated_params(self, params: dict[str, Any]) -> Any:
        try:
            return self.Params.model_validate(params)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuditError(f"{type(self).__name__} parameter {where!r}: {first['msg']} (got {first.get('input')!r})") from None

    def _validated_common(self, budget: Any, seed: Any, box: Any, verbose: Any) -> tuple[float, int, tuple[Any, Any] | None, bool]:
        """The constructor's checks of ``budget``, ``seed``, ``box`` and ``verbose`` (also used by :meth:`set_params`).

        numpy scalars count as numbers. Without a box the estimator's ``clip_values`` bound the
        poisons; an explicit box must lie inside them.
        """
        who = type(self).__name__
        if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)) or not 0 < budget <= 1:
            raise AuditError(f"The 'budget' parameter of {who} must be a float in (0, 1]. Got {budget!r} instead.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise AuditError(f"The 'seed' parameter of {who} must be an int ≥ 0. Got {seed!r} instead.")
        if box is not None and (not isinstance(box, tuple) or len(box) != 2):
            raise AuditError(f"The 'box' parameter of {who} must be a (lo, hi) pair or None. Got {box!r} instead.")
        if not isinstance(verbose, (bool, np.bool_)):
            raise AuditError(f"The 'verbose' parameter of {who} must be a bool. Got {verbose!r} instead.")
        clip = clip_values(self._estimator)
        if box is None:
            box = clip
        elif clip is not None:
            lo, hi = (np.asarray(v, dtype=np.float32) for v in box)
            if np.any(lo < clip[0] - 1e-6) or np.any(hi > clip[1] + 1e-6):
                raise AuditError(
                    f"The 'box' of {who} reaches outside the estimator's clip_values "
                    f"[{float(np.min(clip[0])):g}, {float(np.max(clip[1])):g}]: poisons there are not valid inputs"
                )
        if box is not None:  # per-feature bounds given in the input shape (C, H, W) are flattened like the features
            box = tuple(b.reshape(-1) if isinstance(b, np.ndarray) and b.ndim > 1 else b for b in box)
        return float(budget), int(seed), box, bool(verbose)

    def set_params(self, **kwargs: Any) -> None:
        """Change parameters after construction, checked exactly as the constructor checks them (ART's API).

        ``budget``, ``seed``, ``box``, ``verbose`` and every field of :attr:`Params` may be set;
        anything else is an error naming what can be set.
        """
        who = type(self).__name__
        unknown = sorted(k for k in kwargs if k not in self.attack_params)
        if unknown:
            raise AuditError(f"{who}.set_params: {', '.join(map(repr, unknown))} cannot be set; valid: {', '.join(self.attack_params)}")
        common = {k: kwargs.pop(k) for k in self.COMMON_PARAMS if k in kwargs}
        budget, seed, box, verbose = self._validated_common(
            common.get("budget", self.budget), common.get("seed", self.seed), common.get("box", self.box), common.get("verbose", self.verbose)
        )
        params = self._validated_params({**self.params.model_dump(exclude_unset=True), **kwargs}) if kwargs else self.params
        previous = (self.params, self.budget, self.seed, self.lo, self.hi, self.verbose)
        self.params, self.budget, self.seed, self.verbose = params, budget, seed, verbose
        self.lo, self.hi = (None, None) if box is None else box
        try:
            self._check_params()
        except AuditError:
            self.params, self.budget, self.seed, self.lo, self.hi, self.verbose = previous
            raise

    def _check_params(self) -> None:  # noqa: B027  # a hook: most attacks have no checks across parameters
        """Checks across parameters (subclasses extend; called by the constructor's end and by :meth:`set_params`)."""

    def progress(self, iterable: Any, desc: str, total: int | None = None) -> Any:
        """``iterable`` with a tqdm bar when the attack was built with ``verbose=True`` (as ART's attacks do)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=f"{type(self).__name__} {desc}", total=total, disable=not self.verbose, leave=False)

    @classmethod
    @abstractmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> AuditAttack:
        """Build the attack for one grid cell from its configured parameters."""

    @classmethod
    def for_context(cls, params: dict[str, Any], ctx: AttackContext) -> AuditAttack:
        """:meth:`for_cell`, with the poisons kept inside the dataset's feature domain (a table's
        integer, binary and one-hot columns: README "Tables") — what the grid calls."""
        attack = cls.for_cell(params, ctx)
        attack.domain = getattr(ctx.dataset, "domain", None)
        return attack

    @classmethod
    def seed_free(cls, params: dict[str, Any]) -> bool:
        """True when the seed cannot change the poisons crafted with ``params`` against a given
        clean model (the grid then runs such a cell at one seed when training is seed-free too)."""
        return False

    @classmethod
    def against(cls, defense: str, defense_params: dict[str, Any], rate: float) -> dict[str, Any] | None:
        """Parameters that make this attack craft poisons the filter ``defense`` (registry name, with
        its parameters, assumed poison rate ``rate``) accepts, laid over the attack's own; None when it
        has no such mode (the
        adaptive stage then puts the filter in the loop, :mod:`audit.grid.adaptive`)."""
        return None

    @classmethod
    def against_sweep(cls, own: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        """The settings of the defense-aware mode the adaptive stage tries (each one start, the most damaging kept):
        ``own`` (:meth:`against`'s) alone, unless the attack sweeps a weight the config (``params``) did not fix."""
        return [own]

    @property
    def box(self) -> tuple[Any, Any] | None:
        """The feature box ``(lo, hi)`` the poisons are clipped to, or None (unbounded)."""
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)

    def device(self) -> tuple[torch.device, torch.dtype]:
        """The victim's device and dtype: those of the module's parameters (override for other victims)."""
        module = getattr(self, "module", None)
        if isinstance(module, nn.Module):
            ref = next(module.parameters(), None)
            if ref is not None:
                return ref.device, ref.dtype
        return torch.device("cpu"), torch.float32

    @property
    def is_classification(self) -> bool:
        """Labels are class indices (default: the attack was given ``n_classes``)."""
        return self.n_classes is not None

    def n_poison(self, n_train: int) -> int:
        """``round(ε·n_tr)`` points are added (README: How the audit works); a modifying attack returns all ``n_tr``."""
        return n_train if self.modifies else int(round(self.budget * n_train))

    @final
    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Craft the points to *add* to ``(x, y)``, in the format they were given (ART's conventions);
        for an attack that :attr:`modifies` the training set, the poisoned training set itself (n points).

        Parameters
        ----------
        x : ndarray, shape (n, d) or (n, *input_shape)
            Clean training features; images as ``(n, C, H, W)`` when the estimator takes them.
        y : ndarray, shape (n,) or (n, c)
            Clean training labels as class indices or one-hot rows, or responses.

        Returns
        -------
        x_poison : ndarray, shape (round(ε·n), *x.shape[1:]), float32, inside the feature box
        y_poison : ndarray, the labels in ``y``'s format (indices, or one-hot float32 rows)
        """
        who = type(self).__name__
        if kwargs:
            raise TypeError(f"{who}.poison takes only (x, y); got extra {sorted(kwargs)}")
        if y is None:
            raise AuditError(f"{who}.poison needs the training labels y")
        try:
            x = np.asarray(x, dtype=np.float32)
            y = np.asarray(y)
        except (TypeError, ValueError) as err:
            raise AuditError(f"{who}.poison: x must be numeric features ({err}); encode categorical columns first") from None
        sample_shape = x.shape[1:]
        if x.ndim < 2 or len(y) != len(x):
            raise AuditError(f"{who}.poison: expected x (n, d) and y (n,) (or x (n, *input_shape), one-hot y (n, c)); got {x.shape} and {y.shape}")
        expected = getattr(self._estimator, "input_shape", None)
        if expected and int(np.prod(expected)) != int(np.prod(sample_shape)):
            raise AuditError(
                f"{who}.poison: x has {int(np.prod(sample_shape))} features per point but the estimator's "
                f"input_shape {tuple(expected)} has {int(np.prod(expected))}"
            )
        x = x.reshape(len(x), -1)
        if not np.issubdtype(y.dtype, np.number) and not np.issubdtype(y.dtype, np.bool_):
            raise AuditError(f"{who}.poison: y must be numeric class indices, one-hot rows or responses (got dtype {y.dtype})")
        y, one_hot = self._labels(y, who)
        if not np.all(np.isfinite(x)):
            raise AuditError(f"{who}.poison: x contains NaN or inf")
        if self.is_classification and len(y) and len(np.unique(y)) < 2:
            raise AuditError(f"{who}.poison: y has a single class ({int(y[0])}); poisoning a one-class training set means nothing")
        x_p, y_p = self._poison_flat(x, y)
        x_p = x_p.reshape(len(x_p), *sample_shape)
        if one_hot is not None:
            y_p = np.eye(one_hot, dtype=np.float32)[y_p.astype(np.int64)]
        return x_p, y_p

    def _labels(self, y: np.ndarray, who: str) -> tuple[np.ndarray, int | None]:
        """Labels as class indices (n,) or responses (n,), and the one-hot width when they came one-hot."""
        if self.is_classification and y.ndim == 2 and y.shape[1] > 1:
            if self.n_classes is not None and y.shape[1] != self.n_classes:
                raise AuditError(f"{who}.poison: one-hot y has {y.shape[1]} columns but n_classes is {self.n_classes}")
            return y.argmax(axis=1), int(y.shape[1])
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise AuditError(f"{who}.poison: expected y of shape (n,) or one-hot (n, c); got {y.shape}")
        if self.is_classification and self.n_classes is not None and len(y):
            if np.any(y != np.round(y)) or y.min() < 0 or y.max() >= self.n_classes:
                raise AuditError(
                    f"{who}.poison: labels must be class indices 0..{self.n_classes - 1} (n_classes={self.n_classes}); "
                    f"got values in [{y.min():g}, {y.max():g}]"
                )
        return y, None

    def estimator_input(self, x: np.ndarray) -> np.ndarray:
        """Flat features ``(n, d)`` in the shape the estimator's ``predict`` takes (its ``input_shape``)."""
        shape = tuple(getattr(self.estimator, "input_shape", ()) or ())
        return x.reshape(len(x), *shape) if len(shape) > 1 else x

    def _poison_flat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_p = self.n_poison(len(x))
        device, dtype = self.device()
        rng, torch_rng = generators(self.seed, device)
        start = time.perf_counter()
        if n_p == 0:
            x_p, y_p = np.zeros((0, x.shape[1]), np.float32), y[:0].copy()
        else:
            task = PoisonInput(x.copy(), y.copy(), n_p, rng, torch_rng, device, dtype, self.is_classification)
            if self.init_poisons is not None and len(self.init_poisons[1]):
                x0, y0 = self.init_poisons
                if x0.shape[1] != x.shape[1]:
                    raise AuditError(f"{type(self).__name__}: init_poisons have {x0.shape[1]} features, the training set {x.shape[1]}")
                task.init_x, task.init_y = x0[:n_p].copy(), y0[:n_p].astype(y.dtype)
            with preserved_global_rng(device), _preserved_modes(self.estimator):
                x_p, y_p = self._run(task)
        x_p = np.asarray(x_p, dtype=np.float32)
        y_p = np.asarray(y_p)
        if self.box is not None:
            x_p = np.clip(x_p, self.lo, self.hi).astype(np.float32)
        if self.domain is not None and self.domain.discrete and n_p:
            x_p = self._into_domain(x, y, x_p, y_p)
        assert x_p.shape == (n_p, x.shape[1]), f"{self.name}: poisons have shape {x_p.shape}, expected {(n_p, x.shape[1])}"
        assert y_p.shape == (n_p,), f"{self.name}: poison labels have shape {y_p.shape}"
        if self.n_classes is not None and n_p:
            assert y_p.min() >= 0 and y_p.max() < self.n_classes, f"{self.name}: poison label outside 0..c-1"
        self.diagnostics.setdefault("seconds", time.perf_counter() - start)
        self.diagnostics.setdefault("n_poison", n_p)
        return x_p, y_p.astype(y.dtype)

    def _into_domain(self, x: np.ndarray, y: np.ndarray, x_p: np.ndarray, y_p: np.ndarray) -> np.ndarray:
        """The poisons ``x_p`` (m, d) as points the data could hold (one-hot groups, integers, binaries, levels), refined on
        the attack's objective where it has one (:meth:`domain_objective`, :func:`audit.attacks.feasible.refine`)."""
        rounded, changed = self.domain.project(x_p)
        self.diagnostics.setdefault("domain_projected", changed)
        if not changed:
            return rounded
        device = self.device()[0]
        with preserved_global_rng(device), _preserved_modes(self.estimator):
            objective = self.domain_objective(x, y, y_p)
            if objective is None:
                return rounded
            d = x.shape[1]
            lo = np.broadcast_to(self.lo, (d,)) if self.lo is not None else np.full(d, -np.inf)
            hi = np.broadcast_to(self.hi, (d,)) if self.hi is not None else np.full(d, np.inf)
            refined, info = refine(self.domain, x_p, rounded, lo, hi, *objective)
        self.diagnostics.setdefault("domain_refined", info)
        return refined

    def domain_objective(self, x: np.ndarray, y: np.ndarray, y_p: np.ndarray) -> tuple[ValueAndGradient, Value] | None:
        """The attacker's objective (larger: more damage) at poison features ``x_p`` (m, d) with labels ``y_p`` added to the
        training set ``(x, y)``, with and without its gradient in ``x_p``, for refining rounded poisons; None (the default):
        the attack has none, and its poisons are rounded only."""
        return None

    @abstractmethod
    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        """The algorithm: return ``task.n_poison`` features and labels (clipping happens afterwards)."""


class TorchAttack(AuditAttack, PoisoningAttackWhiteBox):
    """Base of the white-box attacks that differentiate a PyTorch victim (back-gradient, TGDA, Gradient Canceling,
    min-max, the perturbation regimes): it owns their shared prelude so that a subclass takes only its own arguments.

    ``Attack(estimator, *, budget, task=None, n_classes=None, l2=0.0, box=None, seed=0, x_val=None, y_val=None,
    init_poisons=None, **params)``: ``estimator`` an ART PyTorch estimator or an ``nn.Module`` (kept as
    ``self.module``, in the estimator's input space: :func:`torch_module`); the task and number of classes given
    or read from it (:func:`task_and_classes`; the class's only task when it has one); ``l2`` the defender's ρ
    (``self.l2``, ≥ 0); and, for a class that :attr:`uses_validation`, the attacker's set ``x_val`` (m, d),
    ``y_val`` (m,) (``self.x_val``, ``self.y_val``: long labels or float32 responses).
    """

    victims: ClassVar[tuple[str, ...]] = ("torch",)
    _estimator_requirements = TORCH_REQUIREMENTS
    estimator_needs: ClassVar[str] = TORCH_NEEDS

    #: True for an attack whose objective is a loss on a validation (attacker's) set: ``x_val``/``y_val`` required
    uses_validation: ClassVar[bool] = False

    module: nn.Module
    task: str
    l2: float
    x_val: np.ndarray
    y_val: np.ndarray

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__.__signature__ = _joined_signature(cls)  # type: ignore[attr-defined]

    def __init__(
        self,
        estimator: Any,
        *,
        budget: float,
        task: str | None = None,
        n_classes: int | None = None,
        l2: float = 0.0,
        box: tuple[Any, Any] | None = None,
        seed: int = 0,
        x_val: Any = None,
        y_val: Any = None,
        init_poisons: tuple[Any, Any] | None = None,
        **params: Any,
    ) -> None:
        who = type(self).__name__
        module = torch_module(estimator, who)
        if task is None and len(self.tasks) == 1:
            task = self.tasks[0]
        task, n_classes = task_and_classes(estimator, task, n_classes, who)
        super().__init__(estimator, budget=budget, seed=seed, box=box, n_classes=n_classes, init_poisons=init_poisons, **params)
        check_l2(l2, who)
        self.module, self.task, self.l2 = module, task, float(l2)
        if self.uses_validation:
            if x_val is None or y_val is None:
                raise AuditError(f"{who} needs a validation set x_val (m, d), y_val (m,): the attacker's objective is a loss on it")
            x_val, y_val = validation_set(x_val, y_val, who)
            self.x_val = x_val
            self.y_val = np.asarray(y_val, dtype=np.int64 if task == "classification" else np.float32)
        elif x_val is not None or y_val is not None:
            raise TypeError(f"{who} takes no validation set (x_val, y_val)")

    def domain_objective(self, x: np.ndarray, y: np.ndarray, y_p: np.ndarray) -> tuple[ValueAndGradient, Value] | None:
        """For refining rounded poisons (:meth:`AuditAttack.domain_objective`) of an attack that optimises a loss on the
        attacker's set (``uses_validation``, e.g. TGDA): that loss at the victim retrained exactly on ``(x, y)`` ∪ the
        poisons, with its implicit gradient — back-gradient's objective (:meth:`BackGradient.domain_objective`), where the
        victim is convex and linear with ρ > 0 and a loss with curvature; None otherwise (rounding only)."""
        from audit.models.structure import is_convex_linear
        from audit.models.training import loss_kind

        if not self.uses_validation or self.l2 <= 0 or not is_convex_linear(self.module) or loss_kind(self.module) == "hinge":
            return None
        from audit.attacks.back_gradient import BackGradient

        own = BackGradient(
            self.module,
            budget=self.budget,
            task=self.task,
            n_classes=self.n_classes,
            l2=self.l2,
            box=self.box,
            seed=self.seed,
            x_val=self.x_val,
            y_val=self.y_val,
            hypergradient="implicit",
        )
        own._resolve()
        own._region = None
        return own.domain_objective(x, y, y_p)


def _joined_signature(cls: type[TorchAttack]) -> inspect.Signature:
    """The signature a subclass's ``__init__(self, estimator, *, its own, **kwargs)`` really has: its own keyword-only
    parameters followed by those of :class:`TorchAttack` it passes ``**kwargs`` on to — ``x_val``/``y_val`` (required)
    only where it :attr:`~TorchAttack.uses_validation`, ``init_poisons`` only where it
    :attr:`~AuditAttack.warm_starts` — so that ``help()``, ``inspect`` and the contract tests see every argument."""
    mine = inspect.signature(cls.__init__)
    if not any(p.kind is p.VAR_KEYWORD for p in mine.parameters.values()):
        return mine
    kept = [p for p in mine.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in kept}
    for p in inspect.signature(TorchAttack.__init__).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in names:
            continue
        if p.name in ("x_val", "y_val"):
            if not cls.uses_validation:
                continue
            p = p.replace(default=inspect.Parameter.empty)
        if p.name == "init_poisons" and not cls.warm_starts:
            continue
        kept.append(p)
    kept += [p for p in inspect.signature(TorchAttack.__init__).parameters.values() if p.kind is p.VAR_KEYWORD]
    return mine.replace(parameters=kept)
