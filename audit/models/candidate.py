"""One candidate setting ``h`` of the grid, with the ρ and λ₁ its victim trains with (docs/architecture.md).

A candidate is built once, where the run plans its cells (:meth:`audit.grid.plan.RunPlan.candidates`),
and carried on every cell and attack context: the regularisation strength a cell uses is read as
``candidate.rho``, never worked out again from the hyperparameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "candidate_key"]


def candidate_key(hparams: Mapping[str, Any]) -> str:
    """Canonical JSON of a candidate's hyperparameters, the key it is stored under."""
    return json.dumps(dict(hparams), sort_keys=True)


@dataclass(frozen=True, eq=False)
class Candidate:
    """The hyperparameters ``h`` of one grid setting and what the victim makes of them.

    Attributes
    ----------
    key : str
        Canonical JSON of :attr:`hparams` (:func:`candidate_key`): the store's key, and what two
        candidates are compared and hashed by.
    hparams : dict
        The candidate axes' values, e.g. ``{"l2": 0.01, "width": 64}`` (what :meth:`Victim.fit` takes).
    rho : float
        ρ of the training objective ``mean loss + (ρ/2)‖w‖²`` for these hyperparameters
        (:meth:`audit.models.Victim.l2`: the training config's, or a scikit-learn estimator's C mapped).
    l1 : float
        λ₁ of the L1 term (lasso, elastic net); 0 without one.
    """

    key: str
    hparams: dict[str, Any] = field(repr=False)
    rho: float
    l1: float = 0.0

    @classmethod
    def of(cls, victim: Any, hparams: Mapping[str, Any]) -> Candidate:
        """The candidate ``hparams`` of ``victim`` (an :class:`audit.models.Victim`)."""
        hp = dict(hparams)
        return cls(candidate_key(hp), hp, float(victim.l2(hp)), float(victim.l1(hp)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)
