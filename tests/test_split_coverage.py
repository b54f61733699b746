"""Coverage of the worst-case interval over re-drawn splits (issue: honest numbers, "coverage tested for real").

A seeded synthetic population — two Gaussian classes in 5 dimensions with 5 % label noise — whose accuracy
for any linear classifier is exact (normal CDFs), so the true expected damage of each attack, and the true
expected worst-of-attacks damage ``E[max_a D_a]`` for a training set of the audit's size, are Monte Carlo
means over 2000 fresh training sets with no test-point noise at all. Each simulated audit draws one dataset
of 3000 points, re-splits it k = 3 times (1800 train / 600 validation / 600 test), trains the victim (linear
discriminant analysis, closed form) clean and under four attacks, stores the cells as the grid does (with the
per-cell paired standard errors of :mod:`audit.grid.work`) and aggregates them with
:func:`audit.report.recommend.aggregate` exactly as a report does. Attacks: two injections of far-away
mislabelled points of nearly equal strength (so the worst attack changes from split to split), a random label
flip, and a flip of a single label — the near-zero-disagreement case, where most splits see no test point change.
"""

from __future__ import annotations

import json
import math

import numpy as np
from scipy.stats import norm

from audit.grid.store import Cell
from audit.grid.work import accuracy_se, paired_drop_se
from audit.report.recommend import aggregate

D, NOISE = 5, 0.05
MU = np.zeros((2, D))
MU[1, :2] = (1.6, 0.8)
N, N_VAL, N_TEST, EPS, K = 3000, 600, 600, 0.1, 3
ATTACKS = ["far_class_0", "far_class_1", "flip_random", "flip_one"]


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, D)) + MU[y]
    return x, np.where(rng.random(n) < NOISE, 1 - y, y)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear discriminant analysis: ``w = Σ⁻¹(μ₁ − μ₀)``, the boundary half-way between the class means."""
    m0, m1 = x[y == 0].mean(0), x[y == 1].mean(0)
    centred = np.concatenate([x[y == 0] - m0, x[y == 1] - m1])
    w = np.linalg.solve(centred.T @ centred / len(x) + 0.05 * np.eye(D), m1 - m0)
    return w, float(-w @ (m0 + m1) / 2)


def _points(model: tuple[np.ndarray, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 100.0 * (((x @ model[0] + model[1]) > 0).astype(int) == y)


def _population_accuracy(model: tuple[np.ndarray, float]) -> float:
    """The exact accuracy on the population (noisy labels included)."""
    w, b = model
    scale = float(np.linalg.norm(w))
    right = 0.5 * (norm.cdf((w @ MU[1] + b) / scale) + norm.cdf(-(w @ MU[0] + b) / scale))
    return 100.0 * ((1 - NOISE) * right + NOISE * (1 - right))


def _attacks(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = round(EPS * len(y))
    w, b = _fit(x, y)
    margin = (x @ w + b) * (2 * y - 1)
    direction = MU[1] - MU[0]
    out = {}
    for cls, shift, name in ((1, 1.5, "far_class_0"), (0, -1.45, "far_class_1")):  # the most confident points pushed out, relabelled
        far = x[y == cls][np.argsort(-margin[y == cls])[:n]] + shift * direction
        out[name] = (np.concatenate([x, far]), np.concatenate([y, np.full(n, 1 - cls)]))
    flipped = y.copy()
    i = rng.choice(len(y), n, replace=False)
    flipped[i] = 1 - flipped[i]
    out["flip_random"] = (x, flipped)
    one = y.copy()
    one[rng.integers(len(y))] ^= 1
    out["flip_one"] = (x, one)
    return out


def _truth(rng: np.random.Generator, draws: int = 2000) -> tuple[float, dict[str, float]]:
    """``E[max_a D_a]`` and each ``E[D_a]`` for a fresh training set of the audit's size, on the population."""
    worst, each = [], {a: [] for a in ATTACKS}
    for _ in range(draws):
        x, y = _draw(rng, N - N_VAL - N_TEST)
        clean = _population_accuracy(_fit(x, y))
        damage = {a: clean - _population_accuracy(_fit(*xy)) for a, xy in _attacks(x, y, rng).items()}
        worst.append(max(damage.values()))
        for a, d in damage.items():
            each[a].append(d)
    return float(np.mean(worst)), {a: float(np.mean(v)) for a, v in each.items()}


def _audit(rng: np.random.Generator, k: int) -> object:
    """One simulated audit on k re-drawn splits of one dataset: the aggregated summary of its only candidate."""
    x, y = _draw(rng, N)
    cells, clean_rows = [], []
    for j in range(k):
        order = rng.permutation(N)
        test, val, train = order[:N_TEST], order[N_TEST : N_TEST + N_VAL], order[N_TEST + N_VAL :]
        clean = _fit(x[train], y[train])
        cv, ct = _points(clean, x[val], y[val]), _points(clean, x[test], y[test])
        clean_rows.append(("{}", 0, cv.mean(), ct.mean(), 0.0, {"metric_se": {"val": accuracy_se(cv), "test": accuracy_se(ct)}}, j))
        for name, xy in _attacks(x[train], y[train], rng).items():
            model = _fit(*xy)
            pv, pt = _points(model, x[val], y[val]), _points(model, x[test], y[test])
            se = {"val_metric": accuracy_se(pv), "test_metric": accuracy_se(pt), "val_drop": paired_drop_se(cv, pv),
                  "test_drop": paired_drop_se(ct, pt)}  # fmt: skip
            cells.append(Cell(f"{name}/{j}", 0, "{}", name, EPS, "none", 0, "ok", cv.mean(), ct.mean(), pv.mean(), pt.mean(), 1, 0, 0,
                              0.0, diagnostics=json.dumps({"se": se}), split=j))  # fmt: skip
    share = N_TEST / (N - N_VAL - N_TEST)
    return aggregate(cells, clean_rows, [{}], ATTACKS, [EPS], [0], "none", splits=k, test_share=share)[0]


def test_the_worst_case_interval_over_re_drawn_splits_covers_the_true_worst_case():
    """400 simulated audits at k = 3 splits: the worst-of-attacks interval covers ``E[max_a D_a]`` 92–98 % of the
    time at nominal 95 % (measured 94.8 %), the near-zero attack's interval covers its true damage (≈ 0) too, and
    the worst attack does change between splits (the statistic is taken per split, not on one attack)."""
    true_worst, true_each = _truth(np.random.default_rng(123))
    assert true_worst > max(true_each.values()) + 0.1  # the two near-equal injections: the max over attacks matters
    rng = np.random.default_rng(7)
    covered = near_zero = changed = 0
    runs = 400
    for _ in range(runs):
        s = _audit(rng, K)
        lo, hi = s.worst_damage_test_ci[EPS]
        covered += lo <= true_worst <= hi
        lo1, hi1 = s.stats[("flip_one", EPS, "none")].damage_test_ci()
        near_zero += lo1 <= true_each["flip_one"] <= hi1
        winners = set(s.worst_attack_splits[EPS].values())
        changed += len(winners) > 1
        # the label names the attack(s) behind the figure: one name only where one attack was worst on every split
        assert (s.worst_attack_test[EPS] in winners) if len(winners) == 1 else (f"of {K} splits" in s.worst_attack_test[EPS]
                                                                               and all(w in s.worst_attack_test[EPS] for w in winners))
        assert s.worst_damage_test_est[EPS].df == K - 1 and math.isclose(hi - lo, 2 * s.worst_damage_test_est[EPS].se * 4.302653, rel_tol=1e-5)
    assert 0.92 <= covered / runs <= 0.98, covered / runs
    assert near_zero / runs >= 0.92, near_zero / runs
    assert changed > runs / 4, changed
