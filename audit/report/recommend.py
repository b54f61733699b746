"""Aggregate the grid and pick the hyperparameters to deploy.

Selection uses the trusted validation split only (README: How the audit works, the recommendation): for each candidate, the
clean validation metric and the worst case over attacks of the poisoned validation
metric, per budget (means over seeds; monotone in the budget: the worst case at ε is over every attack at every budget up to
ε). Among candidates whose clean validation accuracy
is within ``clean_tolerance`` points of the best, the one with the best worst-case
validation accuracy at the target budget is recommended. Test metrics are reported
beside it, never used to choose.

"Damage" is the accuracy drop in points (classification) or the MSE increase
(regression); larger is worse.

**Uncertainty.** Every mean over seeds carries a standard error with two parts: the
seed-to-seed variation (sample variance / S) and the finite evaluation split — each
cell's standard error over the split's points, *paired* for a drop (the same points scored
by the clean and the poisoned model), averaged over seeds and counted once, not divided by
S, since every seed is scored on the same points:
``SE² = s²_seeds / S + (mean_s SE_points,s)²``. Intervals are normal,
``mean ± z·SE`` (95 % by default). The worst case over attacks gets
``[max_a lower_a, max_a upper_a]``, which covers the true worst case whenever each attack's
interval covers its own. That is the rule on one data split. Over k ≥ 2 splits (config ``splits``)
each split gets the rule above, the worst case is the worst-of-attacks figure per split averaged over
splits, and every interval is Student's t on the corrected between-split variance
(:func:`across_splits`).

**Ties are paired.** Every candidate is scored on the same validation points at the same
seeds, so two settings are compared by the *paired* difference of their worst-case
validation metric at the target budget: per repeat (split, seed), the mean over points of the
difference of the two worst attacks' per-point outcomes; its SE is :func:`combined_se` over the
seeds of a split (seed variation of the difference plus the points' paired SE), combined over
splits by :func:`across_splits`. A setting is **tied** with the
best one when the 95 % interval of that difference contains 0; the tie is broken by clean
validation accuracy. Cells stored before the per-point outcomes were recorded fall back to
overlapping unpaired intervals (and the reason says so).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from audit.config import candidate_label
from audit.grid.store import Cell, CleanRow
from audit.jsonio import unpack_points

__all__ = ["AttackStats", "CandidateSummary", "Recommendation", "aggregate", "candidate_label", "pair_id", "recommend"]


Z95 = NormalDist().inv_cdf(0.975)


def z_of(confidence: float) -> float:
    """The normal quantile of a two-sided interval at ``confidence`` (0.95 → 1.96)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def quantile(confidence: float, df: float = math.inf) -> float:
    """The two-sided quantile at ``confidence``: normal (``df`` infinite) or Student's t with ``df`` degrees of freedom."""
    if math.isinf(df):
        return z_of(confidence)
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Estimate:
    """A mean over repeats with its standard error and the degrees of freedom of its quantile (inf: normal)."""

    mean: float
    se: float
    df: float = math.inf

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        q = quantile(confidence, self.df)
        return (self.mean - q * self.se, self.mean + q * self.se)

    def upper(self, confidence: float) -> float:
        return self.interval(confidence)[1]


def combined_se(values: list[float], point_ses: list[float]) -> float:
    """SE of the mean over seeds: seed variation plus the evaluation split's sampling, counted once (module docstring)."""
    seeds = float(np.var(values, ddof=1)) / len(values) if len(values) > 1 else 0.0
    points = float(np.mean(point_ses)) if point_ses else 0.0
    return math.sqrt(seeds + points**2)


def _mean(values: list[Any]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: list[Any]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _f(value: float | None) -> float:
    """A metric of a finished ('ok') cell, which is never missing."""
    assert value is not None, "a finished cell has every metric"
    return float(value)


@dataclass
class AttackStats:
    """One (candidate, attack, budget, defense) over seeds."""

    poisoned_val: float
    poisoned_test: float
    poisoned_test_std: float
    damage_test: float
    damage_val: float
    n_seeds: int
    seconds: float
    poisons_removed: float
    clean_removed: float
    damage_test_se: float = 0.0
    damage_val_se: float = 0.0
    poisoned_val_se: float = 0.0
    #: the damage on D_att, the split the attack optimised (None: the attack read D_val, or an older run)
    damage_att: float | None = None
    df: float = math.inf  # degrees of freedom of the intervals' quantile (k − 1 over k ≥ 2 splits; inf: normal)
    n_splits: int = 1

    def damage_test_ci(self, confidence: float = 0.95) -> tuple[float, float]:
        """The interval of :attr:`damage_test` at ``confidence``."""
        return Estimate(self.damage_test, self.damage_test_se, self.df).interval(confidence)


@dataclass
class CandidateSummary:
    key: str
    hparams: dict[str, Any]
    label: str
    clean_val: float
    clean_test: float
    clean_test_std: float
    stats: dict[tuple[str, float, str], AttackStats] = field(default_factory=dict)
    worst_val: dict[float, float] = field(default_factory=dict)
    worst_test: dict[float, float] = field(default_factory=dict)
    worst_damage_test: dict[float, float] = field(default_factory=dict)
    worst_damage_val: dict[float, float] = field(default_factory=dict)
    worst_attack: dict[float, str] = field(default_factory=dict)  # the worst on validation (what the selection saw)
    worst_attack_test: dict[float, str] = field(default_factory=dict)  # the attack whose test damage worst_damage_test is
    missing: int = 0
    defense: str = "none"
    clean_val_se: float = 0.0
    clean_test_se: float = 0.0
    #: per budget: the worst case's 95 % interval over attacks (test damage; validation poisoned metric)
    worst_damage_test_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    worst_damage_val_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    worst_val_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    #: (attack, ε', ε) where the attack's measured test damage at ε is below its damage at ε' < ε beyond both intervals
    falls: set[tuple[str, float, float]] = field(default_factory=set)
    #: per budget: repeat (split, seed) → the per-point validation metric, shape (n_val,), of the worst attack on its split,
    #: for paired ties; a budget is absent where a cell was stored without them
    worst_val_points: dict[float, dict[tuple[int, int], np.ndarray]] = field(default_factory=dict, repr=False)
    #: per budget: the repeats (split × seed) of the worst case's attacks (what the worst case's interval covers)
    worst_test_seeds: dict[float, int] = field(default_factory=dict)
    #: per budget: the worst case's test damage as an estimate (mean, SE, degrees of freedom): the gate's upper bound
    worst_damage_test_est: dict[float, Estimate] = field(default_factory=dict)
    #: per budget, over k ≥ 2 splits: split → the attack worst on it (the worst case is the mean of those)
    worst_attack_splits: dict[float, dict[str, str]] = field(default_factory=dict)
    #: per budget, over k ≥ 2 splits: split → the worst attack's test damage on it (mean over its seeds)
    worst_damage_test_splits: dict[float, dict[str, float]] = field(default_factory=dict)
    n_splits: int = 1
    test_share: float = 0.0  # n_test / n_train of a split (the corrected between-split variance, across_splits)

    @property
    def pair(self) -> str:
        """Identity of a (candidate, defense) setting: the unit the recommendation chooses among."""
        return pair_id(self.key, self.defense)


def pair_id(key: str, defense: str) -> str:
    return json.dumps([json.loads(key), defense], sort_keys=True)


@dataclass
class Recommendation:
    key: str | None
    label: str
    reason: str
    eligible: list[str]  # pair ids (candidate, defense)
    target_budget: float
    tolerance: float
    defense: str = "none"
    tied: list[str] = field(default_factory=list)  # pair ids tied with the pick (the pick first): what confirmation confirms


def aggregate(
    cells: list[Cell],
    clean_rows: Sequence[CleanRow | tuple[Any, ...]],
    candidates: list[dict[str, Any]],
    attacks: list[str],
    budgets: list[float],
    seeds: list[int],
    defense: str,
    higher_is_better: bool = True,
    planned: dict[str, list[int]] | None = None,
    attack_budgets: dict[str, list[float]] | None = None,
    splits: int = 1,
    test_share: float = 0.0,
) -> list[CandidateSummary]:
    """Means over repeats (split × seed) of every (candidate, attack, budget) for ``defense``, and the worst case over attacks.

    ``clean_rows``: :class:`audit.grid.store.CleanRow` (or its plain tuple ``(candidate, seed, val, test, seconds,
    record[, split])``). ``planned`` (the run's ``cell_seeds``:
    ``json([candidate, attack, defense])`` → seeds) says at which seeds each cell was planned — a profile runs some
    attacks at fewer seeds, and a cell no seed can change runs at one —; without it every cell is expected at every
    seed of ``seeds``; each on ``splits`` splits. ``attack_budgets``: the budgets an attack runs at where not every one
    (the confirmation stage's). ``test_share``: n_test / n_train of a split, for the corrected between-split variance
    (:func:`across_splits`).
    """
    sign = 1.0 if higher_is_better else -1.0
    ok = [c for c in cells if c.status == "ok"]
    clean_by: dict[tuple[str, int, int], tuple[float, float]] = {}
    clean_se: dict[tuple[str, int, int], dict[str, float]] = {}
    for row in (r if isinstance(r, CleanRow) else CleanRow(*r) for r in clean_rows):
        clean_by[(row.candidate, row.split, row.seed)] = (row.val, row.test)
        clean_se[(row.candidate, row.split, row.seed)] = (row.record or {}).get("metric_se") or {}
    out = []
    for hp in candidates:
        key = json.dumps(hp, sort_keys=True)
        repeats = sorted(r for r in clean_by if r[0] == key and r[2] in seeds)  # (split, seed) order, whatever order rows came in
        cv = [clean_by[r][0] for r in repeats]
        ct = [clean_by[r][1] for r in repeats]
        summary = CandidateSummary(key, hp, candidate_label(hp), _mean(cv), _mean(ct), _std(ct))
        summary.test_share = test_share
        if cv:
            summary.clean_val_se = across_splits(_by_split([(r[1], clean_by[r][0], clean_se[r].get("val", 0.0)) for r in repeats]), test_share).se
            summary.clean_test_se = across_splits(_by_split([(r[1], clean_by[r][1], clean_se[r].get("test", 0.0)) for r in repeats]), test_share).se
        for attack in attacks:
            for eps in (attack_budgets or {}).get(attack, budgets):
                rows = [c for c in ok if c.candidate == key and c.attack == attack and c.budget == eps and c.defense == defense]
                expected = (planned or {}).get(json.dumps([key, attack, defense]), seeds)
                summary.missing += max(len(expected) * splits - len(rows), 0)
                if rows:
                    summary.stats[(attack, eps, defense)] = _attack_stats(rows, sign, test_share)
        for i, eps in enumerate(budgets):
            # monotone in ε: an attacker with budget ε can do what one with ε' < ε did, so the worst case at ε is over
            # every attack at every budget up to ε; one from a smaller budget is named with it ("bg (at ε = 0.03)")
            names = {
                (a if e == eps else f"{a} (at ε = {e:g})"): (a, e) for e in budgets[: i + 1] for a in attacks if (a, e, defense) in summary.stats
            }
            if not any((a, eps, defense) in summary.stats for a in attacks):
                continue
            summary.falls.update(_falls(summary.stats, attacks, budgets[: i + 1], defense))
            rows_of = {
                name: [c for c in ok if c.candidate == key and c.attack == a and c.budget == e and c.defense == defense]
                for name, (a, e) in names.items()
            }
            _worst_case(summary, eps, names, rows_of, sign, test_share, defense)
        summary.n_splits = len({r[1] for r in repeats}) or 1
        summary.defense = defense
        if defense != "none":
            summary.label = f"{summary.label} + {defense}"
        out.append(summary)
    return out


def _by_split(values: list[tuple[int, float, float]]) -> dict[int, tuple[float, float]]:
    """``(split, value, point SE)`` of each repeat → split → (mean over its seeds, :func:`combined_se` over them)."""
    grouped: dict[int, list[tuple[float, float]]] = {}
    for split, value, se in values:
        grouped.setdefault(split, []).append((float(value), float(se)))
    return {j: (_mean([v for v, _ in vs]), combined_se([v for v, _ in vs], [e for _, e in vs])) for j, vs in sorted(grouped.items())}


def _split_stat(rows: list[Cell], value: Any, se_key: str) -> dict[int, tuple[float, float]]:
    """Split → (mean of ``value(cell)`` over its seeds, SE over seeds and points) of one attack's cells."""
    return _by_split([(c.split, value(c), c.recorded("se").get(se_key, 0.0)) for c in rows])


def _attack_stats(rows: list[Cell], sign: float, test_share: float) -> AttackStats:
    """One (candidate, attack, budget, defense) over its repeats (split × seed)."""
    pv = [_f(c.poisoned_val) for c in rows]
    pt = [_f(c.poisoned_test) for c in rows]
    dmg_test = across_splits(_split_stat(rows, lambda c: sign * (_f(c.clean_test) - _f(c.poisoned_test)), "test_drop"), test_share)
    dmg_val = across_splits(_split_stat(rows, lambda c: sign * (_f(c.clean_val) - _f(c.poisoned_val)), "val_drop"), test_share)
    level_val = across_splits(_split_stat(rows, lambda c: _f(c.poisoned_val), "val_metric"), test_share)
    return AttackStats(
        poisoned_val=_mean(pv),
        poisoned_test=_mean(pt),
        poisoned_test_std=_std(pt),
        damage_test=dmg_test.mean,
        damage_val=dmg_val.mean,
        n_seeds=len(rows),
        seconds=_mean([c.seconds for c in rows]),
        poisons_removed=_mean([_f(c.poisons_removed) / max(_f(c.n_poison), 1) for c in rows]),
        clean_removed=_mean([_f(c.clean_removed) for c in rows]),
        damage_test_se=dmg_test.se,
        damage_val_se=dmg_val.se,
        poisoned_val_se=level_val.se,
        damage_att=_damage_att(rows, sign),
        df=dmg_test.df,
        n_splits=len({c.split for c in rows}),
    )


def _worst_case(
    summary: CandidateSummary,
    eps: float,
    names: dict[str, tuple[str, float]],
    rows_of: dict[str, list[Cell]],
    sign: float,
    test_share: float,
    defense: str,
) -> None:
    """The worst case over attacks at ``eps`` (``names``: each attack, or an attack at a smaller budget, by its label).

    One split: the worst attack's mean over seeds, interval ``[max_a lower_a, max_a upper_a]`` (it covers the
    true worst case whenever each attack's interval covers its own). Several splits: the worst-of-attacks
    statistic itself — per split the worst attack's mean over seeds, then its mean over splits with the
    corrected between-split interval (:func:`across_splits`); the attacks named are those worst on some split,
    with how many (:func:`_most_often`).
    """
    per_attack = {name: summary.stats[(a, e, defense)] for name, (a, e) in names.items()}
    splits = sorted({c.split for rows in rows_of.values() for c in rows})
    if len(splits) <= 1:
        worst = max(per_attack, key=lambda a: per_attack[a].damage_val)
        worst_t = max(per_attack, key=lambda a: per_attack[a].damage_test)
        stats = per_attack.values()
        summary.worst_attack[eps] = worst
        summary.worst_val[eps] = per_attack[worst].poisoned_val
        summary.worst_damage_val[eps] = per_attack[worst].damage_val
        summary.worst_test[eps] = per_attack[worst_t].poisoned_test
        summary.worst_damage_test[eps] = per_attack[worst_t].damage_test
        summary.worst_attack_test[eps] = worst_t
        summary.worst_test_seeds[eps] = per_attack[worst_t].n_seeds
        summary.worst_damage_test_est[eps] = Estimate(per_attack[worst_t].damage_test, per_attack[worst_t].damage_test_se)
        summary.worst_damage_test_ci[eps] = (
            max(s.damage_test - Z95 * s.damage_test_se for s in stats),
            max(s.damage_test + Z95 * s.damage_test_se for s in stats),
        )
        summary.worst_damage_val_ci[eps] = (
            max(s.damage_val - Z95 * s.damage_val_se for s in stats),
            max(s.damage_val + Z95 * s.damage_val_se for s in stats),
        )
        # the worst poisoned validation metric (lower is worse for accuracy): the min over attacks, per end
        level = [(sign * s.poisoned_val, s.poisoned_val_se) for s in stats]
        summary.worst_val_ci[eps] = tuple(sorted((sign * min(m - Z95 * e for m, e in level), sign * min(m + Z95 * e for m, e in level))))  # type: ignore[assignment]  # a pair
        points = _val_points(rows_of[worst])
        if points is not None:
            summary.worst_val_points[eps] = points
        return
    split_of = {name: {j: [c for c in rows if c.split == j] for j in splits} for name, rows in rows_of.items()}

    def per_split(value: Any, se_key: str) -> dict[str, dict[int, tuple[float, float]]]:
        return {name: _split_stat(rows, value, se_key) for name, rows in rows_of.items()}

    dmg_test = per_split(lambda c: sign * (_f(c.clean_test) - _f(c.poisoned_test)), "test_drop")
    dmg_val = per_split(lambda c: sign * (_f(c.clean_val) - _f(c.poisoned_val)), "val_drop")
    lvl_test = per_split(lambda c: _f(c.poisoned_test), "test_metric")
    lvl_val = per_split(lambda c: _f(c.poisoned_val), "val_metric")
    worst_tj = {j: max((n for n in dmg_test if j in dmg_test[n]), key=lambda n: dmg_test[n][j][0]) for j in splits}
    worst_vj = {j: max((n for n in dmg_val if j in dmg_val[n]), key=lambda n: dmg_val[n][j][0]) for j in splits}
    est_t = across_splits({j: dmg_test[worst_tj[j]][j] for j in splits}, test_share)
    est_dv = across_splits({j: dmg_val[worst_vj[j]][j] for j in splits}, test_share)
    est_v = across_splits({j: lvl_val[worst_vj[j]][j] for j in splits}, test_share)
    summary.worst_attack[eps] = _most_often(worst_vj, per_attack, "damage_val")
    summary.worst_attack_test[eps] = _most_often(worst_tj, per_attack, "damage_test")
    summary.worst_attack_splits[eps] = {str(j): worst_tj[j] for j in splits}
    summary.worst_damage_test_splits[eps] = {str(j): dmg_test[worst_tj[j]][j][0] for j in splits}
    summary.worst_val[eps] = est_v.mean
    summary.worst_damage_val[eps] = est_dv.mean
    summary.worst_test[eps] = _mean([lvl_test[worst_tj[j]][j][0] for j in splits])
    summary.worst_damage_test[eps] = est_t.mean
    summary.worst_test_seeds[eps] = sum(len(split_of[worst_tj[j]][j]) for j in splits)
    summary.worst_damage_test_est[eps] = est_t
    summary.worst_damage_test_ci[eps] = est_t.interval()
    summary.worst_damage_val_ci[eps] = est_dv.interval()
    summary.worst_val_ci[eps] = est_v.interval()
    by_repeat: dict[tuple[int, int], np.ndarray] = {}
    for j in splits:
        found = _val_points(split_of[worst_vj[j]][j])
        if found is None:
            return
        by_repeat.update(found)
    summary.worst_val_points[eps] = by_repeat


def _most_often(by_split: dict[int, str], per_attack: dict[str, AttackStats], field: str) -> str:
    """The attack(s) behind a worst case over splits: one name where the same attack was worst on every split (the
    figure is then that attack's mean), else each with the number of splits it was worst on, most often first
    (ties: the larger mean ``field``) — "back_gradient on 2 of 3 splits, tgda on 1"."""
    counts = {n: list(by_split.values()).count(n) for n in set(by_split.values())}
    order = sorted(counts, key=lambda n: (counts[n], getattr(per_attack[n], field)), reverse=True)
    if len(order) == 1:
        return order[0]
    return ", ".join(f"{n} on {counts[n]}" + (f" of {len(by_split)} splits" if i == 0 else "") for i, n in enumerate(order))


def across_splits(per_split: dict[int, tuple[float, float]], test_share: float = 0.0) -> Estimate:
    """A statistic over repeats from its per-split means and within-split SEs (``split → (mean, SE)``).

    One split: its mean and SE (seeds and test points: :func:`combined_se`), normal quantiles. k ≥ 2 splits: the
    mean of the split means; its variance is the between-split variance corrected for the overlap of the training
    sets of random re-splits (Nadeau & Bengio 2003, "Inference for the generalization error", the corrected
    resampled t: ``(1/k + n_test/n_train)·s²``), with Student's t at k − 1 degrees of freedom. Each split mean
    carries its own test points' noise, so ``s²`` already covers them and they are not added again (the coverage
    simulation, ``tests/test_split_coverage.py``, measured 94.8 % (k = 3) and 96.0 % (k = 5) at nominal 95 % that way and 100 % with both
    added). Where ``s²`` degenerates to 0 — every split gives the same figure, as an attack that changes no test
    point does — the test points' adjusted variance (mean within-split SE² / k) stands in, so no interval is [m, m].
    """
    if not per_split:
        return Estimate(math.nan, 0.0)
    if len(per_split) == 1:
        mean, se = next(iter(per_split.values()))
        return Estimate(mean, se)
    means = [m for m, _ in per_split.values()]
    k = len(means)
    between = (1.0 / k + test_share) * float(np.var(means, ddof=1))
    within = float(np.mean([se**2 for _, se in per_split.values()])) / k
    return Estimate(float(np.mean(means)), math.sqrt(between if between > 0 else within), float(k - 1))


def _damage_att(rows: list[Cell], sign: float) -> float | None:
    """Mean damage on D_att over ``rows`` (each cell's ``attacker_split`` record); None unless every cell has one."""
    att = [c.recorded("attacker_split") for c in rows]
    if not att or any(not a for a in att):
        return None
    return sign * _mean([a["clean"] - a["poisoned"] for a in att])


def _val_points(cells: list[Cell]) -> dict[tuple[int, int], np.ndarray] | None:
    """Repeat (split, seed) → per-point validation metric of one attack's cells; None if any cell lacks them."""
    out = {}
    for c in cells:
        points = unpack_points(c.recorded("val_points"))
        if points is None:
            return None
        out[c.repeat] = points
    return out or None


def paired_difference(a: CandidateSummary, b: CandidateSummary, eps: float) -> Estimate | None:
    """``a``'s worst-case validation metric minus ``b``'s at ``eps``, paired over the repeats (split, seed) both ran and
    the validation points (module docstring), as an :class:`Estimate`; None when either lacks per-point outcomes."""
    pa, pb = a.worst_val_points.get(eps), b.worst_val_points.get(eps)
    repeats = sorted(set(pa or {}) & set(pb or {}))
    if pa is None or pb is None or not repeats or any(len(pa[r]) != len(pb[r]) for r in repeats):
        return None
    diffs = {r: pa[r] - pb[r] for r in repeats}
    point_se = {r: float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0 for r, d in diffs.items()}
    return across_splits(_by_split([(r[0], float(np.mean(diffs[r])), point_se[r]) for r in repeats]), a.test_share)


def _tied(s: CandidateSummary, best: CandidateSummary, eps: float, sign: float) -> tuple[bool, bool]:
    """``(tied, paired)``: whether ``s`` is tied with ``best`` at ``eps`` — the 95 % interval of their paired
    difference contains 0 — and whether the paired test applied (else: overlapping unpaired intervals)."""
    if s is best:
        return True, True
    paired = paired_difference(s, best, eps)
    if paired is None:
        return _overlap(_signed_ci(s, eps, sign), _signed_ci(best, eps, sign)), False
    lo, hi = paired.interval()
    return lo <= 0.0 <= hi, True


def _falls(stats: dict[tuple[str, float, str], AttackStats], attacks: list[str], budgets: list[float], defense: str) -> set[tuple[str, float, float]]:
    """Each attack whose test damage at the last of ``budgets`` is below its damage at an earlier one by more than
    ``Z95·√(SE² + SE'²)``: the measured damage falls as ε grows (the worst case carries the smaller budget's)."""
    eps = budgets[-1]
    out = set()
    for a in attacks:
        now = stats.get((a, eps, defense))
        for e in budgets[:-1]:
            before = stats.get((a, e, defense))
            if now is not None and before is not None:
                if before.damage_test - now.damage_test > Z95 * math.hypot(before.damage_test_se, now.damage_test_se):
                    out.add((a, e, eps))
    return out


def _signed_ci(s: CandidateSummary, eps: float, sign: float) -> tuple[float, float]:
    """The worst-case validation interval with "higher is better" orientation (a point when none was recorded)."""
    lo, hi = s.worst_val_ci.get(eps, (s.worst_val[eps], s.worst_val[eps]))
    return (sign * lo, sign * hi) if sign > 0 else (sign * hi, sign * lo)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def recommend(
    summaries: list[CandidateSummary],
    target_budget: float,
    tolerance: float,
    higher_is_better: bool = True,
    metric_name: str = "accuracy",
) -> Recommendation:
    """Best worst-case validation metric at ``target_budget`` among candidates within ``tolerance`` of the best clean one."""
    sign = 1.0 if higher_is_better else -1.0
    f = "{:.2f}".format if higher_is_better else "{:.4g}".format
    scored = [s for s in summaries if target_budget in s.worst_val and math.isfinite(s.clean_val)]
    if not scored:
        return Recommendation(
            None, "none", f"No candidate has finished cells at ε = {target_budget:g}; nothing to recommend.", [], target_budget, tolerance
        )
    best_clean = max(sign * s.clean_val for s in scored)
    eligible = [s for s in scored if sign * s.clean_val >= best_clean - tolerance]
    # best worst case by its point estimate; settings whose paired difference with it is not significant are tied,
    # and among the tied the better clean validation metric wins (then the earlier in the grid)
    best = max(eligible, key=lambda s: (sign * s.worst_val[target_budget], sign * s.clean_val, -summaries.index(s)))
    tests = {id(s): _tied(s, best, target_budget, sign) for s in eligible}
    tied = [s for s in eligible if tests[id(s)][0]]
    paired = all(p for _, p in tests.values())
    pick = max(tied, key=lambda s: (sign * s.clean_val, sign * s.worst_val[target_budget], -summaries.index(s)))
    unit = (" point" if tolerance == 1 else " points") if higher_is_better else ""
    best_clean_s = max(scored, key=lambda s: sign * s.clean_val)
    most_robust = max(scored, key=lambda s: sign * s.worst_val[target_budget])
    parts = [
        f"Recommended: {pick.label}. Among the {len(eligible)} of {len(scored)} candidates whose clean validation "
        f"{metric_name} is within {tolerance:g}{unit} of the best ({best_clean_s.label}: {f(best_clean_s.clean_val)}), "
        f"it keeps {'the best' if pick is best else 'a statistically tied'} worst-case validation {metric_name} at ε = {target_budget:g}: "
        f"{f(pick.worst_val[target_budget])} (clean {f(pick.clean_val)}, worst attack "
        f"{pick.worst_attack[target_budget]}).",
    ]
    others = [s for s in tied if s is not pick]
    if others:
        lo, hi = pick.worst_val_ci.get(target_budget, (math.nan, math.nan))
        names = ", ".join(s.label for s in others)
        rule = (
            "the 95 % interval of their paired difference (same validation points and seeds) contains 0"
            if paired
            else "their 95 % intervals overlap (unpaired: cells stored without per-point outcomes)"
        )
        if best is not pick:
            parts.append(
                f"{best.label} has the best worst case by its point estimate, but {pick.label} is tied with it — "
                f"{rule} (its worst case {f(lo)}–{f(hi)}; tied: {names}) — and has the better clean validation "
                f"{metric_name}, which breaks the tie."
            )
        else:
            parts.append(
                f"Its worst case ({f(lo)}–{f(hi)}, 95 %) is tied with {names} — {rule}; it has the best clean validation {metric_name} among them."
            )
    if most_robust is not pick and most_robust not in tied:
        parts.append(
            f"{most_robust.label} holds up better under attack ({f(most_robust.worst_val[target_budget])}) but its clean "
            f"validation {metric_name} ({f(most_robust.clean_val)}) is outside the tolerance."
        )
    parts.append(
        f"On the held-out test split it scores {f(pick.clean_test)} clean and {f(pick.worst_test[target_budget])} "
        f"in the worst case (a {'drop' if higher_is_better else 'rise'} of {f(pick.worst_damage_test[target_budget])}"
        f"{' points' if higher_is_better else ''}); "
        "the test split was not used to choose."
    )
    if pick.missing:
        parts.append(f"{pick.missing} of its cells are missing or failed, so its worst case is over fewer runs.")
    return Recommendation(
        pick.key,
        pick.label,
        " ".join(parts),
        [s.pair for s in eligible],
        target_budget,
        tolerance,
        pick.defense,
        [pick.pair, *(s.pair for s in tied if s is not pick)],
    )
