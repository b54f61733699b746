"""The defense contract: given the mixed training set, return a keep-mask or a trained model.

Filters return ``DefenseResult(keep=mask)`` and the grid retrains on the kept points with
the normal procedure; robust trainers (e.g. TRIM) return ``DefenseResult(fitted=model)``.
Every defense gets the assumed poison rate (default: the cell's ε) and a seed, and puts
its own diagnostics in the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class DefenseResult:
    keep: np.ndarray | None = None
    fitted: Any = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Defense(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self.seed = seed

    @classmethod
    def for_cell(cls, rate: float, seed: int, dataset: Any) -> Defense:
        """The defense for one grid cell (override to take more of the dataset, e.g. D_val)."""
        return cls(rate, seed)

    @abstractmethod
    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, hparams: dict[str, Any]) -> DefenseResult:
        """Filter or robustly train on the mixed set ``(x, y)`` (clean points first, poisons last)."""


class NoDefense(Defense):
    """Keep everything: the undefended baseline every other defense is compared with."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no defense: retrain on the clean and poisoned points as they are"

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, hparams: dict[str, Any]) -> DefenseResult:
        return DefenseResult(keep=np.ones(len(y), dtype=bool))
