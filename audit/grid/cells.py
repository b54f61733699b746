"""One cell of the audit grid and the one way a defense is applied to a training set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.defenses import Defense
from audit.grid.store import cell_key
from audit.jsonio import Diagnostics
from audit.models import Candidate


@dataclass(frozen=True)
class GridCell:
    """One cell ``(h, a, ε, d, s)`` of the grid, in run order (README: How the audit works).

    Attributes
    ----------
    position : int
        Index in the deterministic run order (candidate → split → seed → attack → budget → defense).
    candidate : audit.models.Candidate
        The hyperparameters ``h`` with the ρ the victim trains with (stored under ``candidate.key``).
    attack, defense : str
        The attack's and the defense's keys (their config ids).
    budget : float
        ε.
    seed : int
        The user's seed ``s``; the cell's own seeds derive from it.
    split : int
        Which draw of the data's partition the cell runs on (``splits``; 0: the configured split).
    """

    position: int
    candidate: Candidate
    attack: str
    budget: float
    defense: str
    seed: int
    split: int = 0

    @property
    def key(self) -> str:
        """The key the cell's result is stored under."""
        return cell_key(self.candidate.key, self.attack, self.budget, self.defense, self.seed, self.split)

    def identity(self) -> dict[str, Any]:
        """The fields that name this cell in its stored row (:class:`audit.grid.store.Cell`)."""
        return {
            "cell_key": self.key,
            "position": self.position,
            "candidate": self.candidate.key,
            "attack": self.attack,
            "budget": self.budget,
            "defense": self.defense,
            "seed": self.seed,
            "split": self.split,
        }


def apply_defense(
    defense: Defense, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate, train_seed: int
) -> tuple[Any, np.ndarray, Diagnostics]:
    """Run ``defense`` on ``(x, y)`` and train the model it yields.

    A filter's keep-mask selects the points the victim is retrained on with its own
    procedure, ``candidate.hparams`` and ``train_seed``; a robust trainer's model is used as it is (its
    mask, if any, only counts what it treated as outliers).

    Returns
    -------
    fitted : audit.models.Fitted
    keep : ndarray of bool, shape (n,)
    diagnostics : audit.jsonio.Diagnostics
        The defense's own diagnostics (its class's ``Diagnostics``).
    """
    defense.train_seed = train_seed
    result = defense.apply(x, y, victim, candidate)
    keep = np.ones(len(y), bool) if result.keep is None else np.asarray(result.keep, bool)
    assert keep.shape == (len(y),), f"{defense.name}: keep-mask of shape {keep.shape}, expected {(len(y),)}"
    fitted = result.fitted if result.fitted is not None else victim.fit(x[keep], y[keep], candidate.hparams, train_seed)
    return fitted, keep, result.diagnostics
