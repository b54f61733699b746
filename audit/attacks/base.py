"""The one contract every attack of the audit keeps (STYLE.md §1, foolbox's attack base).

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

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, final

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.seeding import generators, preserved_global_rng
from audit.spec import StrictModel


class AttackParams(StrictModel):
    """Base of attack parameter models: unknown keys are errors."""


@dataclass
class AttackContext:
    """What the grid hands an attack for one cell ``(h, a, ε, s)`` (DESIGN.md protocol step 2)."""

    dataset: Any  # audit.data.Dataset
    victim: Any  # audit.models.Victim
    fitted: Any  # audit.models.Fitted trained with h on D_tr
    hparams: dict[str, Any]
    budget: float
    seed: int

    @property
    def l2(self) -> float:
        """The ρ the victim trains with for this cell's hyperparameters."""
        return float(self.victim.l2(self.hparams))

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's feature box ``(lo, hi)``."""
        return self.dataset.lo, self.dataset.hi


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


def torch_module(estimator: Any, who: str) -> nn.Module:
    """The ``nn.Module`` of an ART PyTorch estimator (or the module itself); a one-line error otherwise."""
    module = estimator if isinstance(estimator, nn.Module) else getattr(estimator, "model", None)
    if not isinstance(module, nn.Module):
        raise AuditError(f"{who} needs a PyTorch model (an ART PyTorch estimator or an nn.Module), not a scikit-learn model")
    return module


def validation_set(x_val: Any, y_val: Any, who: str) -> np.ndarray:
    """``x_val`` as float32 (m, d) with ``y_val`` of shape (m,), m ≥ 1; a one-line error otherwise."""
    x_val = np.asarray(x_val, dtype=np.float32)
    if x_val.ndim != 2 or len(x_val) == 0 or np.shape(y_val) != (len(x_val),):
        raise AuditError(f"{who} needs a validation set x_val (m, d), y_val (m,); got {x_val.shape} and {np.shape(y_val)}")
    return x_val


def check_l2(l2: float, who: str) -> None:
    if l2 < 0:
        raise AuditError(f"The 'l2' parameter of {who} must be ≥ 0. Got {l2!r} instead.")


def check_n_classes(n_classes: Any, who: str) -> int:
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
        raise AuditError(f"The 'n_classes' parameter of {who} must be an int ≥ 2. Got {n_classes!r} instead.")
    return n_classes


@dataclass
class AttackDiagnostics(Diagnostics):
    """What every attack reports: its wall time and the number of poisons; subclasses add their own fields."""

    seconds: float | None = None
    n_poison: int | None = None


@dataclass
class SourcedDiagnostics(AttackDiagnostics):
    """Diagnostics of an attack that makes each poison from a clean training point (a generator):
    ``source_examples`` are the first points' indices, so the report can show poison beside original."""

    source_examples: list[int] | None = None
    max_change: float | None = None
    mean_change: float | None = None


class AuditAttack(ABC):
    """Abstract base that gives an ART poisoning attack the audit's contract. Put it first in the bases.

    Class-level facts a subclass declares: ``name`` (registry key), ``title``, ``description``,
    ``Params``, ``Diagnostics`` (the dataclass of what a run reports), ``tasks``
    (``classification`` and/or ``regression``) and ``victims`` (the victim kinds it needs:
    ``torch`` for attacks that differentiate through the model).
    """

    name: ClassVar[str]
    title: ClassVar[str]  # short name for the report ("Gradient Canceling")
    description: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    Diagnostics: ClassVar[type[AttackDiagnostics]] = AttackDiagnostics
    diagnostics: AttackDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    victims: ClassVar[tuple[str, ...]] = ("torch", "sklearn")  # the victim kinds it can attack (Victim.kind)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "poison" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override poison(); implement _run (STYLE.md §1)")

    def __init__(
        self,
        estimator: Any = None,
        *,
        budget: float,
        seed: int = 0,
        box: tuple[Any, Any] | None = None,
        n_classes: int | None = None,
        **params: Any,
    ) -> None:
        from art.attacks.attack import PoisoningAttackWhiteBox

        who = type(self).__name__
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise AuditError(f"The 'budget' parameter of {who} must be a float in (0, 1]. Got {budget!r} instead.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise AuditError(f"The 'seed' parameter of {who} must be an int ≥ 0. Got {seed!r} instead.")
        if box is not None and (not isinstance(box, tuple) or len(box) != 2):
            raise AuditError(f"The 'box' parameter of {who} must be a (lo, hi) pair or None. Got {box!r} instead.")
        try:
            self.params = self.Params.model_validate(params)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuditError(f"{who} parameter {where!r}: {first['msg']} (got {first.get('input')!r})") from None
        if isinstance(self, PoisoningAttackWhiteBox):
            PoisoningAttackWhiteBox.__init__(self, estimator)
        else:
            super().__init__()  # ART's black-box attacks hold no estimator
        self.budget = float(budget)
        self.seed = int(seed)
        self.lo: Any = None if box is None else box[0]
        self.hi: Any = None if box is None else box[1]
        self.n_classes = n_classes
        self.diagnostics = self.Diagnostics()

    @classmethod
    @abstractmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> AuditAttack:
        """Build the attack for one grid cell from its configured parameters."""

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
        """``round(ε·n_tr)`` points are added (DESIGN.md threat model)."""
        return int(round(self.budget * n_train))

    @final
    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Craft the points to *add* to ``(x, y)``.

        Parameters
        ----------
        x : ndarray, shape (n, d)
            Clean training features.
        y : ndarray, shape (n,)
            Clean training labels (class indices) or responses.

        Returns
        -------
        x_poison : ndarray, shape (round(ε·n), d), float32, inside the feature box
        y_poison : ndarray, shape (round(ε·n),)
        """
        who = type(self).__name__
        if kwargs:
            raise TypeError(f"{who}.poison takes only (x, y); got extra {sorted(kwargs)}")
        if y is None:
            raise AuditError(f"{who}.poison needs the training labels y")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 2 or y.shape != (len(x),):
            raise AuditError(f"{who}.poison: expected x (n, d) and y (n,); got {x.shape} and {y.shape}")
        if not np.all(np.isfinite(x)):
            raise AuditError(f"{who}.poison: x contains NaN or inf")
        n_p = self.n_poison(len(x))
        device, dtype = self.device()
        rng, torch_rng = generators(self.seed, device)
        start = time.perf_counter()
        if n_p == 0:
            x_p, y_p = np.zeros((0, x.shape[1]), np.float32), y[:0].copy()
        else:
            task = PoisonInput(x.copy(), y.copy(), n_p, rng, torch_rng, device, dtype, self.is_classification)
            with preserved_global_rng(device):
                x_p, y_p = self._run(task)
        x_p = np.asarray(x_p, dtype=np.float32)
        y_p = np.asarray(y_p)
        if self.box is not None:
            x_p = np.clip(x_p, self.lo, self.hi).astype(np.float32)
        assert x_p.shape == (n_p, x.shape[1]), f"{self.name}: poisons have shape {x_p.shape}, expected {(n_p, x.shape[1])}"
        assert y_p.shape == (n_p,), f"{self.name}: poison labels have shape {y_p.shape}"
        if self.n_classes is not None and n_p:
            assert y_p.min() >= 0 and y_p.max() < self.n_classes, f"{self.name}: poison label outside 0..c-1"
        self.diagnostics.setdefault("seconds", time.perf_counter() - start)
        self.diagnostics.setdefault("n_poison", n_p)
        return x_p, y_p.astype(y.dtype)

    @abstractmethod
    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        """The algorithm: return ``task.n_poison`` features and labels (clipping happens afterwards)."""
