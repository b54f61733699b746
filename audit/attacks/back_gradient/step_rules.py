"""How back-gradient moves its poisons along their hypergradients (``step_rule: paper | line_search``).

Each poison moves along its own hypergradient scaled to unit length (features, and the response when it is
optimised), by a length α in feature space, then is projected back (:class:`~.objectives.Feasible`):

- :func:`paper_step` — ``x ← Π(x + α·u)`` every iteration, unconditionally (carnerero-cano-2021, Algorithm 1);
- :func:`line_search` — backtracking on the attacker's objective along the same directions: a step is taken
  only if the objective at the model retrained on the moved poisons grows; the trial length shrinks on
  failure and grows after a first trial that gained (Demontis et al. 2019; SecML's ``pgd-ls``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from audit.attacks.back_gradient.hypergradients import Oracle, Point

#: ``move(x_p, y_p, grads, α)``: the poisons after a step of length α along ``grads`` (a point's hypergradients), projected
Move = Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], float], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Step:
    """One iteration's step: the moved poisons (None: no trial gained), the objective already evaluated there
    (None: not evaluated — the next gradient evaluates it), the step length the next iteration starts from, and
    how many trials it took."""

    moved: tuple[torch.Tensor, torch.Tensor] | None
    at: Point | None
    alpha: float
    tries: int = 1


def paper_step(move: Move, x_p: torch.Tensor, y_p: torch.Tensor, point: Point, alpha: float) -> Step:
    """The paper's fixed step of length ``alpha``: always taken, never evaluated here."""
    return Step(move(x_p, y_p, point.grads, alpha), None, alpha)


def line_search(
    oracle: Oracle,
    hypers: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]],
    move: Move,
    x_p: torch.Tensor,
    y_p: torch.Tensor,
    point: Point,
    alpha: float,
    shrink: float,
    grow: float,
    tries: int,
) -> Step:
    """Backtracking from length ``alpha``: up to ``tries`` trials, each ``alpha·shrink`` after a failure; a step
    found at the first trial lets the next iteration start at ``alpha·grow``. ``point``: the objective and its
    hypergradients at ``(x_p, y_p)``; ``hypers(x, y)``: the oracle's hyperparameters for poisons ``(x, y)``."""
    found, at, n = None, None, 0
    while found is None and n < tries:
        trial = move(x_p, y_p, point.grads, alpha)
        at = oracle.evaluate(hypers(*trial))
        n += 1
        if at.value > point.value:
            found = trial
        else:
            alpha *= shrink
    if found is not None and n == 1:  # the first trial gained: try a longer step next time
        alpha *= grow
    return Step(found, at if found is not None else None, alpha, n)
