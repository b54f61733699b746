"""The defense contract: given the mixed training set, return a keep-mask or a trained model.

Filters return ``DefenseResult(keep=mask)`` and the grid retrains on the kept points with
the normal procedure; robust trainers (e.g. TRIM) return ``DefenseResult(fitted=model)``.
Every defense gets the assumed poison rate (default: the cell's ε) and a seed, and puts
its own diagnostics in the result (an instance of its class's ``Diagnostics`` dataclass).

A defense declares once, on its class: its configurable parameters (``Params``, a pydantic
model: the config's ``defenses: [{name, id, params}]`` is checked with it), the tasks it
applies to, the victim kinds it works with (``victims``), and the facts the report and the recommendation need — ``reads_validation``
(it selects points with D_val, so its validation figures are optimistic),
``designed_for_backdoors`` (a backdoor detector, not an indiscriminate-poisoning defense)
``certifies`` (it yields a certified accuracy) and ``filters`` (it removes points; the adaptive
stage then attacks it with attackers that know it, :mod:`audit.grid.adaptive`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError

from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.models.candidate import Candidate
from audit.spec import BoundedParams


@dataclass
class CertificateDiagnostics(Diagnostics):
    """Diagnostics of a defense that ``certifies``: the certified accuracy (%) at the cell's budget."""

    certified_accuracy: float | None = None


class DefenseParams(BoundedParams):
    """Base of defense parameter models: unknown keys are errors, counts and reals bounded (:class:`BoundedParams`)."""


@dataclass
class DefenseResult:
    """What a defense returns: a keep-mask over the mixed set, or a trained model (and then optionally a mask)."""

    keep: np.ndarray | None = None
    fitted: Any = None
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


class Defense(ABC):
    """One defense of the grid. Subclasses set the class facts below and write :meth:`apply`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    Diagnostics: ClassVar[type[Diagnostics]] = Diagnostics  # what its result's diagnostics hold
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    victims: ClassVar[tuple[str, ...]] = ("torch", "sklearn")  # the victim kinds it works with
    reads_validation: ClassVar[bool] = False
    designed_for_backdoors: ClassVar[bool] = False
    certifies: ClassVar[bool] = False
    draws_randomness: ClassVar[bool] = True  # False: the seed reaches it only through the victim's training
    filters: ClassVar[bool] = False  # True: it removes points (a keep-mask) and the victim retrains on the rest

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed
        # the victim's training seed of the cell, set by the grid before apply (the same for the clean training set and
        # every poisoned one of a repeat): a defense that trains victims itself seeds them from it
        self.train_seed: int | None = None

    @classmethod
    def validate_params(cls, params: dict[str, Any] | None) -> DefenseParams:
        """``params`` checked against :attr:`Params`; a one-line error naming the defense otherwise."""
        try:
            return cls.Params.model_validate(params or {})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuditError(f"defense {cls.name!r} parameter {where!r}: {first['msg']} (got {first.get('input')!r})") from None

    @classmethod
    def for_cell(cls, rate: float, seed: int, dataset: Any, params: dict[str, Any] | None = None) -> Defense:
        """The defense for one grid cell: its configured parameters plus what it takes of the dataset."""
        checked = cls.validate_params(params).model_dump()
        return cls(rate, seed, **checked, **cls.from_dataset(dataset))

    @classmethod
    def from_dataset(cls, dataset: Any) -> dict[str, Any]:
        """Constructor arguments taken from the dataset (override to read D_val, D_test, …)."""
        return {}

    @abstractmethod
    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        """Filter or robustly train on the mixed set ``(x, y)`` (clean points first, poisons last); ``victim`` trains with
        ``candidate.hparams`` (its ρ: ``candidate.rho``)."""


class NoDefense(Defense):
    """Keep everything: the undefended baseline every other defense is compared with."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no defense: retrain on the clean and poisoned points as they are"
    draws_randomness: ClassVar[bool] = False
    filters: ClassVar[bool] = False

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        return DefenseResult(keep=np.ones(len(y), dtype=bool))
