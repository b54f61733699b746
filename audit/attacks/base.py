"""The one contract every attack of the audit keeps (STYLE.md §1).

:class:`AuditAttack` owns the public ``poison(x, y) -> (x_poison, y_poison)`` of ART: it
validates the input, draws the number of poisons ``n_p = round(ε·n)``, seeds a generator,
calls the subclass's ``_run``, clips the features to the feature box and checks shapes and
labels. Subclasses write only ``_run`` and declare their parameters once in ``Params``
(a pydantic model, so configs are checked with the same constraints). Diagnostics go to
``self.diagnostics``, never into the return value.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import AuditError


class AttackParams(BaseModel):
    """Base of attack parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class AttackContext:
    """What the grid hands an attack for one cell ``(h, a, ε, s)`` (DESIGN.md protocol step 2)."""

    dataset: Any  # audit.data.Dataset
    victim: Any  # audit.models.Victim
    fitted: Any  # audit.models.Fitted trained with h on D_tr
    hparams: dict[str, Any]
    budget: float
    seed: int


def torch_module(estimator: Any, who: str) -> Any:
    """The ``nn.Module`` of an ART PyTorch estimator (or the module itself); a one-line error otherwise."""
    from torch import nn

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


def victim_l2(ctx: AttackContext) -> float:
    """The L2 strength ρ the victim trains with for the cell's hyperparameters (0 for scikit-learn victims)."""
    return float(ctx.victim.train_config(ctx.hparams).l2) if hasattr(ctx.victim, "train_config") else 0.0


class AuditAttack:
    """Mixin that gives an ART poisoning attack the audit's contract. Put it first in the bases."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def _init_contract(
        self,
        budget: float,
        seed: int,
        lo: np.ndarray | float | None,
        hi: np.ndarray | float | None,
        n_classes: int | None,
        params: dict[str, Any],
    ) -> None:
        if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise AuditError(f"The 'budget' parameter of {type(self).__name__} must be a float in (0, 1]. Got {budget!r} instead.")
        try:
            self.params = self.Params.model_validate(params)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuditError(f"{type(self).__name__} parameter {where!r}: {first['msg']} (got {first.get('input')!r})") from None
        self.budget = float(budget)
        self.seed = int(seed)
        self.lo, self.hi = lo, hi
        self.n_classes = n_classes
        self.diagnostics: dict[str, Any] = {}

    @classmethod
    @abstractmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> AuditAttack:
        """Build the attack for one grid cell from its configured parameters."""

    def n_poison(self, n_train: int) -> int:
        """``round(ε·n_tr)`` points are added (DESIGN.md threat model)."""
        return int(round(self.budget * n_train))

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
        if kwargs:
            raise TypeError(f"{type(self).__name__}.poison takes only (x, y); got extra {sorted(kwargs)}")
        if y is None:
            raise AuditError(f"{type(self).__name__}.poison needs the training labels y")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 2 or y.shape != (len(x),):
            raise AuditError(f"{type(self).__name__}.poison: expected x (n, d) and y (n,); got {x.shape} and {y.shape}")
        if not np.all(np.isfinite(x)):
            raise AuditError(f"{type(self).__name__}.poison: x contains NaN or inf")
        n_p = self.n_poison(len(x))
        rng = np.random.default_rng(self.seed)
        start = time.perf_counter()
        if n_p == 0:
            x_p, y_p = np.zeros((0, x.shape[1]), np.float32), y[:0].copy()
        else:
            x_p, y_p = self._run(x.copy(), y.copy(), n_p, rng)
        x_p = np.asarray(x_p, dtype=np.float32)
        if self.lo is not None and self.hi is not None:
            x_p = np.clip(x_p, self.lo, self.hi).astype(np.float32)
        assert x_p.shape == (n_p, x.shape[1]), f"{self.name}: poisons have shape {x_p.shape}, expected {(n_p, x.shape[1])}"
        assert y_p.shape == (n_p,), f"{self.name}: poison labels have shape {y_p.shape}"
        if self.n_classes is not None and n_p:
            assert y_p.min() >= 0 and y_p.max() < self.n_classes, f"{self.name}: poison label outside 0..c-1"
        self.diagnostics.setdefault("seconds", time.perf_counter() - start)
        self.diagnostics.setdefault("n_poison", n_p)
        return x_p, y_p.astype(y.dtype)

    @abstractmethod
    def _run(self, x: np.ndarray, y: np.ndarray, n_poison: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The algorithm: return ``n_poison`` features and labels (clipping happens afterwards)."""
