"""Poisons a table could hold: a relaxed poison rounded into the feature domain, then refined on the attacker's
objective (README: "Tables").

Rounding each discrete feature to its nearest value (a one-hot group to its largest entry, an integer or a
``levels:L`` feature to the nearest whole number or k/L, a binary one at ½) is one point of the domain near the
relaxed poison; its *neighbours* take, for some features, the other side instead (the second-largest category,
the other whole number, the other level, the other bit). :func:`refine` keeps the best of the rounded point and
neighbours found greedily: it ranks every single-feature move by the attacker's objective linearised at the
rounded point (``gain = ∇A · Δx``) and walks down that list: it tries the next k moves at once, keeps them when the
objective, evaluated exactly (the victim retrained), grows — then tries twice as many — and otherwise skips them and
tries the next one alone; a handful of evaluations besides the rounded point's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.data import FeatureDomain, levels_of

#: ``value_and_gradient(x_p)``: the attacker's objective at poisons ``x_p`` (m, d) and its gradient (m, d)
ValueAndGradient = Callable[[np.ndarray], tuple[float, np.ndarray]]
#: ``value(x_p)``: the attacker's objective alone
Value = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Moves:
    """Every single-feature move from a rounded poison set to a neighbour.

    ``scalar``: (m, d) the change of each integer, binary or ``levels`` feature to its other rounding (0: none);
    ``groups``: per one-hot group, its columns and, per poison, the column of its other category (−1: none)."""

    scalar: np.ndarray
    groups: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of(cls, domain: FeatureDomain, relaxed: np.ndarray, rounded: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Moves:
        """The moves of ``rounded`` (= ``domain.project(relaxed)``) toward the other side of ``relaxed``, inside the box ``[lo, hi]``."""
        x, q = relaxed.astype(np.float64), rounded.astype(np.float64)
        scalar = np.zeros_like(q)
        for j, kind in enumerate(domain.kinds):
            steps = levels_of(kind)
            step = 1.0 if kind in ("integer", "binary") else (1.0 / steps if steps else 0.0)
            if step == 0.0:
                continue
            side = np.sign(x[:, j] - q[:, j])
            if kind == "binary":
                side = np.where(x[:, j] == q[:, j], 0.0, 1.0 - 2.0 * q[:, j])
            other = q[:, j] + side * step
            inside = (other >= lo[j] - 1e-9) & (other <= hi[j] + 1e-9) & (side != 0)
            scalar[:, j] = np.where(inside, other - q[:, j], 0.0)
        groups = []
        for _, _, cols in domain.groups:
            idx = np.asarray(cols)
            order = np.argsort(-x[:, idx], axis=1, kind="stable")
            second = idx[order[:, 1]] if len(idx) > 1 else np.full(len(x), -1)
            exact = np.all(x[:, idx] == q[:, idx], axis=1)  # already one-hot: no other side to take
            groups.append((idx, np.where(exact, -1, second)))
        return cls(scalar, tuple(groups))

    def gains(self, rounded: np.ndarray, grad: np.ndarray) -> list[tuple[float, int, int, int]]:
        """``(gain, kind, row, column)`` of every move with a positive linearised gain, best first; kind −1 a scalar
        move, g ≥ 0 a move of one-hot group g to ``column``."""
        out: list[tuple[float, int, int, int]] = []
        rows, cols = np.nonzero(self.scalar)
        gain = grad[rows, cols] * self.scalar[rows, cols]
        out += [(float(v), -1, int(r), int(c)) for v, r, c in zip(gain, rows, cols) if v > 0]
        for g, (idx, alt) in enumerate(self.groups):
            has = np.flatnonzero(alt >= 0)
            current = idx[np.argmax(rounded[np.ix_(has, idx)], axis=1)] if len(has) else np.zeros(0, int)
            gain = grad[has, alt[has]] - grad[has, current]
            out += [(float(v), g, int(r), int(a)) for v, r, a in zip(gain, has, alt[has]) if v > 0]
        return sorted(out, key=lambda t: -t[0])

    def apply(self, x: np.ndarray, chosen: list[tuple[float, int, int, int]]) -> np.ndarray:
        """``x`` with the ``chosen`` moves made."""
        out = x.copy()
        for _, kind, row, col in chosen:
            if kind < 0:
                out[row, col] += self.scalar[row, col]
            else:
                idx = self.groups[kind][0]
                out[row, idx] = 0.0
                out[row, col] = 1.0
        return out


def refine(
    domain: FeatureDomain,
    relaxed: np.ndarray,
    rounded: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    value_and_gradient: ValueAndGradient,
    value: Value,
    evaluations: int = 10,
) -> tuple[np.ndarray, dict[str, float | int]]:
    """The rounded poisons, or a neighbour with a larger attacker's objective (module docstring).

    Parameters
    ----------
    relaxed, rounded : ndarray, shape (m, d)
        The poisons before and after ``domain.project``.
    lo, hi : ndarray, shape (d,)
        The feature box (a move never leaves it).
    value_and_gradient, value
        The attacker's objective (larger: more damage) with and without its gradient in the poisons.
    evaluations : int
        How many exact evaluations the search may spend after the rounded point's.

    Returns
    -------
    x : ndarray, shape (m, d), float32
        Points of the domain.
    info : dict
        ``rounded`` and ``refined`` objectives, ``moves`` made and ``evaluations`` spent.
    """
    x = rounded.astype(np.float32)
    start, grad = value_and_gradient(x)
    moves = Moves.of(domain, relaxed, x, lo, hi)
    ranked = moves.gains(x, grad)
    best, made, spent, at, k = start, 0, 0, 0, 1
    while at < len(ranked) and spent < evaluations:
        trial = moves.apply(x, ranked[at : at + k])
        score = value(trial)
        spent += 1
        if score > best:  # taken: the next try takes twice as many of the following moves
            x, best, made = trial, score, made + len(ranked[at : at + k])
            at, k = at + k, 2 * k
        else:  # the linearisation misled: skip these moves, try the next one alone
            at, k = at + k, 1
    return x.astype(np.float32), {"rounded": float(start), "refined": float(best), "moves": made, "evaluations": spent + 1}
