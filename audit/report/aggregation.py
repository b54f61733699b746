"""Aggregating a run's stored rows: the figures the report, summary, gate and record share (no wording here).

:func:`aggregate_run` turns a :class:`~audit.report.reading.StoredRun` into an :class:`Analysis` — every
setting's worst cases and intervals (:func:`audit.report.recommend.aggregate`), the recommendation, whether
its verdict is confirmed (:meth:`Analysis.strength`) and about the user's model (:meth:`Analysis.deployed`) —
and the series the report's sections draw from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.grid.adaptive import MINMAX, SANITISER_DEFENSES, adaptive_axes, adaptive_key, filtering_defenses
from audit.grid.confirm import is_confirmation
from audit.grid.store import Cell, CleanRow, DefendedDiagnostics, DefendedRow, PolicyRow, stored_splits
from audit.models.training import lambda_from_rho
from audit.report.reading import StoredRun, attack_keys, confirmation_plan, grid_attack_keys, planned_cell_keys
from audit.report.recommend import Z95, AttackStats, CandidateSummary, Recommendation, aggregate, pair_id, recommend


@dataclass(frozen=True)
class Completeness:
    """Planned cells of a run (or of one budget): finished, failed and not run; ``corrupt``: one line per stored
    row that does not match the run's plan or holds an impossible metric (:func:`check_cells`)."""

    planned: int
    finished: int
    failed: int
    missing: int
    corrupt: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.missing == 0 and self.finished == self.planned and not self.corrupt

    def describe(self) -> str:
        text = f"{self.finished} of {self.planned} cells finished, {self.failed} failed, {self.missing} not run"
        if self.corrupt:
            more = f" and {len(self.corrupt) - 1} more" if len(self.corrupt) > 1 else ""
            text += f"; CORRUPT STORE: {len(self.corrupt)} stored rows do not match the plan ({self.corrupt[0]}{more})"
        return text


LOWER_BOUND = "lower bound: reduced-strength attacks, not confirmed"
"""What every output that states an unconfirmed verdict says (docs: README, "The verdict")."""


@dataclass(frozen=True)
class Strength:
    """Whether a verdict (the recommended setting at one budget) rests on full-strength attacks.

    ``text`` is the one line every output prints beside the verdict; ``why`` says what was confirmed,
    or why it was not."""

    confirmed: bool
    text: str
    why: str


MISMATCH = "no verdict: the audited model does not match yours"
"""What every output says instead of a verdict when the audit's retraining is not the user's model (README: "Train as you train")."""


@dataclass(frozen=True)
class DeployedCheck:
    """The estimator the user handed over against the audit's own clean retraining, on the test split.

    ``value``: the user's model as handed over; ``audited``: the clean retraining closest to it
    (candidate ``label``), whose retrainings over the run's seeds scored ``low``–``high``
    (``n_seeds`` of them); ``gap``: how far ``value`` lies outside that range (0 inside: a faithful
    retraining differs from the user's model by seed noise alone, 0.75 points on digits' 359 test
    points), and ``limit``, in points of accuracy or as a fraction of the user's MSE. ``trained``:
    the user's model beats the trivial predictor ``trivial`` (an untrained architecture handed over
    is not compared). ``accepted``: the user accepted a mismatch
    (``--allow-mismatch``), so the verdict is given about the audit's model and says so.
    """

    value: float
    audited: float
    label: str
    gap: float
    limit: float
    higher_is_better: bool
    trained: bool = True
    accepted: bool = False
    trivial: float | None = None
    training: str | None = None
    low: float = math.nan
    high: float = math.nan
    n_seeds: int = 1

    @property
    def matches(self) -> bool:
        return not self.trained or self.gap <= self.limit

    @property
    def withheld(self) -> bool:
        """No verdict: the audited model is not the user's and the user did not accept that."""
        return not self.matches and not self.accepted

    @property
    def gap_text(self) -> str:
        return f"{self.gap:.1f} points" if self.higher_is_better else f"{100 * self.gap:.0f} % of your MSE"

    @property
    def limit_text(self) -> str:
        return f"{self.limit:g} point{'s' if self.limit != 1 else ''}" if self.higher_is_better else f"{100 * self.limit:g} %"

    def sentence(self, metric: str) -> str:
        """One line for every output: the comparison, and what it means for the verdict."""
        shown = (lambda v: f"{v:.2f}") if self.higher_is_better else (lambda v: f"{v:.4g}")
        if not self.trained:
            return (
                f"the model handed over scores {shown(self.value)} test {metric}, no better than predicting "
                f"{'the majority class' if self.higher_is_better else 'the mean'} ({shown(self.trivial or 0.0)}): taken as an "
                "untrained architecture, not compared with the audit's retraining"
            )
        spread = f"{shown(self.low)}–{shown(self.high)} over {self.n_seeds} seeds" if self.n_seeds > 1 else shown(self.audited)
        compared = (
            f"your model scores {shown(self.value)} test {metric} as handed over, the audit's clean retraining "
            f"{spread} ({self.label}), {self.gap_text} apart (tolerance {self.limit_text})"
        )
        if self.matches:
            return f"the audited model matches yours: {compared}"
        if self.accepted:
            return f"MISMATCH ACCEPTED (allow_mismatch): the verdict is about the audit's retrained model, not yours — {compared}"
        return (
            f"{MISMATCH} — {compared}; retrain as you train (fit_kwargs, train_fn, or training: epochs, batch_size, "
            "factory) or accept the mismatch with --allow-mismatch"
        )


@dataclass
class Analysis:
    """Everything the report, summary and gate read from a run."""

    config: AuditConfig
    meta: dict[str, Any]
    cells: list[Cell]
    summaries: list[CandidateSummary]
    recommendation: Recommendation
    defense: str
    metric: str
    higher_is_better: bool
    targets: list[dict[str, Any]]
    pairs: list[CandidateSummary]
    samples: list[dict[str, Any]] = field(default_factory=list)
    policies: list[PolicyRow] = field(default_factory=list)  # the λ-under-attack stage's rows
    clean_records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (candidate, seed) → clean training record
    screened: list[CandidateSummary] = field(default_factory=list)  # every setting over the grid's attacks alone (no confirmation cells)
    clean_tests: dict[tuple[str, int], float] = field(default_factory=dict)  # (candidate, seed) → clean retraining's test metric
    corrupt: list[str] = field(default_factory=list)  # stored rows that match no planned cell (check_cells); left out of every figure
    # (candidate, split, seed, defense, diagnostics) of each defense run on clean data (the certificates' curves, …)
    clean_defended: list[DefendedDiagnostics] = field(default_factory=list)
    clean_defended_rows: list[DefendedRow] = field(default_factory=list)  # each defense's figures on clean data

    @property
    def confirmation(self) -> dict[str, Any]:
        """The confirmation stage's stored state (``{}`` when it never ran: a run from before it existed)."""
        return self.meta.get("confirmation") or {}

    def strength(self, budget: float | None = None) -> Strength:
        """Whether the recommended setting's verdict at ``budget`` (default: the target budget) is confirmed."""
        eps = self.recommendation.target_budget if budget is None else budget
        conf, cfg = self.confirmation, self.config
        left_out = conf.get("left_out") or []
        narrowed = f" (confirm.attacks leaves out {', '.join(left_out)})" if left_out else ""
        if not cfg.confirmation_attacks():
            return Strength(
                True,
                "confirmed: the grid itself ran every attack of the battery at its paper's settings and every seed" + narrowed,
                "no attack of the grid was reduced, so its screen is the confirmation",
            )
        rec = self.recommendation
        if rec.key is None:
            return Strength(False, LOWER_BOUND, "nothing is recommended yet")
        if not conf:
            return Strength(False, LOWER_BOUND, "the confirmation stage has not run on this run directory")
        if not conf.get("enabled", True):
            return Strength(False, LOWER_BOUND, "the confirmation stage was turned off (confirm: false or run --no-confirm)")
        if eps not in conf.get("budgets", []):
            confirmed = ", ".join(f"{b:g}" for b in conf.get("budgets", []))
            return Strength(False, LOWER_BOUND, f"ε = {eps:g} was screened only; the run confirms ε = {confirmed} (confirm.budgets)")
        pair = [json.loads(rec.key), rec.defense]
        if [rec.key, rec.defense] not in conf.get("pairs", []):
            return Strength(False, LOWER_BOUND, "the recommended setting has not been confirmed (the stage did not finish)")
        mine = [k for k in conf.get("cells", []) if (lambda c: [c[0], c[3]] == pair and c[2] == eps)(json.loads(k))]
        done = {c.cell_key for c in self.cells if c.status == "ok"}
        missing = [k for k in mine if k not in done]
        if missing:
            return Strength(
                False,
                LOWER_BOUND,
                f"confirmation incomplete: {len(missing)} of {len(mine)} confirmation cells of the recommended setting have not finished",
            )
        return Strength(
            True,
            "confirmed: every attack of the battery at its paper's settings and every seed" + narrowed,
            f"{len(mine)} confirmation cells of the recommended setting at ε = {eps:g}",
        )

    def deployed(self, allow_mismatch: bool = False) -> DeployedCheck | None:
        """The user's model against the audit's clean retraining (None: no trained model was handed
        over, or no clean retraining finished). ``allow_mismatch`` accepts a mismatch (the gate's flag);
        the run's own acceptance (``recommendation.allow_mismatch``, ``run --allow-mismatch``) counts too."""
        stored = self.meta.get("deployed") or {}
        value = stored.get("test_metric", self.meta.get("deployed_test_metric"))
        ranges = []  # (distance of the user's value from a candidate's range over seeds, low, high, seeds, label)
        for s in self.summaries:
            tests = [t for (cand, _), t in self.clean_tests.items() if cand == s.key and t is not None and math.isfinite(t)]
            tests = tests or ([s.clean_test] if s.clean_test is not None and math.isfinite(s.clean_test) else [])
            if tests and value is not None:
                ranges.append((max(min(tests) - value, value - max(tests), 0.0), min(tests), max(tests), len(tests), s.label))
        if value is None or not ranges:
            return None
        distance, low, high, n_seeds, label = min(ranges, key=lambda r: r[0])
        audited = min(max(value, low), high)  # the retraining nearest the user's model
        tolerance = stored.get("tolerance")
        if self.higher_is_better:
            gap, limit = distance, 1.0 if tolerance is None else float(tolerance)
        else:
            gap, limit = distance / max(abs(value), 1e-12), 0.05 if tolerance is None else float(tolerance)
        trivial = stored.get("trivial_metric")
        trained = trivial is None or (value > trivial if self.higher_is_better else value < trivial)
        return DeployedCheck(
            value,
            audited,
            label,
            gap,
            limit,
            self.higher_is_better,
            trained,
            bool(allow_mismatch or stored.get("allow_mismatch")),
            trivial,
            stored.get("training"),
            low,
            high,
            n_seeds,
        )

    @property
    def attack_keys(self) -> list[str]:
        """The grid's attacks, then the adaptive attackers (``<attack>~adaptive``): what a worst case is over."""
        return attack_keys(self.config)

    @property
    def unit(self) -> str:
        return "accuracy drop (points)" if self.higher_is_better else "MSE increase"

    def completeness(self, budget: float | None = None) -> Completeness:
        """How many planned cells finished, failed or never ran (at ``budget`` only, when given): the grid's,
        and the confirmation cells the stage planned, matched to the stored rows by key one-to-one; the rows
        that match no planned cell or hold impossible metrics are ``corrupt`` (the run is then not complete)."""
        planned_keys = planned_cell_keys(self.meta, self.config)
        if planned_keys is not None:
            keys = [k for k in planned_keys if budget is None or json.loads(k)[2] == budget]
            by_key = {c.cell_key: c.status for c in self.cells}
            ok, failed = sum(by_key.get(k) == "ok" for k in keys), sum(by_key.get(k) == "failed" for k in keys)
            return Completeness(len(keys), ok, failed, len(keys) - ok - failed, list(self.corrupt))
        # a run from before the store kept its seed plan: counted against the planned total
        cells = [c for c in self.cells if (budget is None or c.budget == budget) and not is_confirmation(c.attack)]
        total = int(self.meta.get("total_cells", len(cells)))
        if budget is not None:
            total = total // max(len(self.config.budgets), 1)  # the grid is a full product over budgets
        ok = sum(c.status == "ok" for c in cells)
        failed = sum(c.status == "failed" for c in cells)
        status = {c.cell_key: c.status for c in self.cells}
        planned = [k for k in self.confirmation.get("cells", []) if budget is None or json.loads(k)[2] == budget]
        total += len(planned)
        ok += sum(status.get(k) == "ok" for k in planned)
        failed += sum(status.get(k) == "failed" for k in planned)
        return Completeness(total, ok, failed, max(total - ok - failed, 0), list(self.corrupt))

    def interval_scope(self, budget: float | None = None) -> dict[str, Any]:
        """What the recommended setting's worst-case interval at ``budget`` (default: the target) covers: the
        data splits, the seeds of the worst case's attacks, the test points; ``text`` says it in words, naming what
        it does not cover (split-to-split variation on one split; seed variation when the worst attack ran at one seed)."""
        eps = self.recommendation.target_budget if budget is None else budget
        rec, n_test = self.recommended(), int(self.meta.get("dataset", {}).get("n_test") or 0)
        repeats = rec.worst_test_seeds.get(eps, 0) if rec is not None else 0
        est = rec.worst_damage_test_est.get(eps) if rec is not None else None
        splits = int(est.df) + 1 if est is not None and not math.isinf(est.df) else 1
        if splits >= 2:
            seeds = repeats // splits
            covers = ["splits", "test points"] + (["seeds"] if seeds > 1 else [])
            missing = [] if seeds > 1 else ["seed variation on a split beyond what re-drawn training data brings (one seed per split)"]
            text = (
                f"95 % t-interval ({splits - 1} degrees of freedom) over {splits} draws of the data split of the worst-of-attacks "
                f"damage on each split ({seeds} seed{'s' if seeds != 1 else ''} per split, {n_test} test points each), the "
                "between-split variance corrected for overlapping training sets (Nadeau & Bengio), which carries each split's "
                "test-point noise" + (f"; it does not cover {missing[0]}" if missing else "")
            )
            return {"splits": splits, "seeds": seeds, "test_points": n_test, "covers": covers, "not_covered": missing, "text": text}
        seeds = repeats
        covers = ["test points"] + (["seeds"] if seeds > 1 else [])
        why = (self.meta.get("splits") or {}).get("note") or "the run has one split; splits: k re-draws it"
        missing = [f"split-to-split variation ({why})"] + (["seed variation (its worst attack ran at one seed)"] if seeds <= 1 else [])
        text = (
            f"95 % normal interval over the {n_test} test points"
            + (f" and {seeds} seeds" if seeds > 1 else " at one seed")
            + f" of one data split; it does not cover {' or '.join(missing)}"
        )
        return {"splits": 1, "seeds": seeds, "test_points": n_test, "covers": covers, "not_covered": missing, "text": text}

    def recommended(self) -> CandidateSummary | None:
        """The recommended (candidate, defense) setting's summary."""
        want = pair_id(self.recommendation.key, self.recommendation.defense) if self.recommendation.key else None
        return next((s for s in self.pairs if s.pair == want), None)


def aggregate_run(run: StoredRun) -> Analysis:
    """Aggregate a run's stored rows into its :class:`Analysis` (the recommendation's reason says only why it was
    chosen; :func:`audit.report.analysis.analyse` adds the rest of its words)."""
    meta, config, cells, clean_rows, defended_rows = run.meta, run.config, run.cells, run.clean, run.clean_defended
    task = meta["dataset"]["task"]
    higher = task == "classification"
    metric = "accuracy (%)" if higher else "MSE"
    defense = "none" if "none" in config.defense_keys else config.defense_keys[0]
    planned, attack_budgets = confirmation_plan(meta, config)
    described = meta["dataset"]
    n_splits, share = stored_splits(meta), float(described.get("n_test") or 0) / max(float(described.get("n_train") or 1), 1.0)
    summaries = aggregate(
        cells,
        clean_rows,
        config.candidate_grid(),
        attack_keys(config),
        config.budgets,
        config.seeds,
        defense,
        higher_is_better=higher,
        planned=planned,
        attack_budgets=attack_budgets,
        splits=n_splits,
        test_share=share,
    )
    # every (candidate, defense) setting; a defended setting's clean metric is the defense run on clean data
    pairs: list[CandidateSummary] = []
    screened: list[CandidateSummary] = []
    for d in config.defense_keys:
        rows: list[Any] = (
            clean_rows
            if d == "none"
            else [
                CleanRow(r.candidate, r.seed, r.val, math.nan if r.test is None else r.test, 0.0, {}, r.split)
                for r in defended_rows
                if r.defense == d and r.val is not None
            ]
        )
        over = partial(aggregate, cells, rows, config.candidate_grid())  # the confirmed figures, then the screen's alone
        common = {"higher_is_better": higher, "planned": planned, "splits": n_splits, "test_share": share}
        pairs += over(attack_keys(config), config.budgets, config.seeds, d, attack_budgets=attack_budgets, **common)
        screened += over(grid_attack_keys(config), config.budgets, config.seeds, d, **common)
    rec = recommend(pairs, config.target_budget, config.recommendation.clean_tolerance, higher, metric_name="accuracy" if higher else "MSE")
    # the clean retrainings of split 0 (the configured split: the one a model handed over is compared on)
    records = {(r.candidate, r.seed): r.record or {} for r in clean_rows if r.split == 0}
    analysis = Analysis(
        config,
        meta,
        cells,
        summaries,
        rec,
        defense,
        metric,
        higher,
        run.targets,
        pairs,
        run.samples,
        run.policies,
        records,
        screened,
        {(r.candidate, r.seed): r.test for r in clean_rows if r.split == 0},
        run.corrupt,
        run.clean_defended_diagnostics,
        defended_rows,
    )
    return analysis


@dataclass(frozen=True)
class ConfirmedRow:
    """One confirmed (setting, budget): the screen's worst case beside the confirmed one (test damage, the attack
    that did it), and their ratio."""

    label: str
    budget: float
    screened: float | None
    screened_attack: str | None
    confirmed: float | None
    confirmed_attack: str | None
    recommended: bool

    @property
    def ratio(self) -> float | None:
        if self.screened is None or self.confirmed is None or self.screened <= 0:
            return None
        return self.confirmed / self.screened


def confirmed_rows(a: Analysis) -> list[ConfirmedRow]:
    """Every setting the confirmation stage confirmed, at each confirming budget (the recommended first)."""
    conf = a.confirmation
    screened = {s.pair: s for s in a.screened}
    rec = a.recommended()
    out = []
    for cand, d in conf.get("pairs", []):
        pid = pair_id(cand, d)
        full = next((p for p in a.pairs if p.pair == pid), None)
        if full is None:
            continue
        screen = screened.get(pid)
        for eps in conf.get("budgets", []):
            out.append(
                ConfirmedRow(
                    full.label,
                    eps,
                    screen.worst_damage_test.get(eps) if screen else None,
                    screen.worst_attack_test.get(eps) if screen else None,
                    full.worst_damage_test.get(eps),
                    full.worst_attack_test.get(eps),
                    rec is not None and rec.pair == pid,
                )
            )
    return sorted(out, key=lambda r: not r.recommended)


def threshold_table(a: Analysis) -> list[dict[str, Any]]:
    """Per candidate and ε_w (0 = the clean model): target metrics and τ, means over seeds."""
    rows = []
    for s in a.summaries:
        mine = [t for t in a.targets if t["candidate"] == s.key and t["eps_w"] >= 0]
        for eps_w in sorted({t["eps_w"] for t in mine}):
            group = [t for t in mine if t["eps_w"] == eps_w]
            th = [t["threshold"] for t in group]

            def mean(key: str) -> float | None:
                values = [x[key] for x in th if x.get(key) is not None]
                return float(np.mean(values)) if len(values) == len(th) and values else None

            rows.append(
                {
                    "key": s.key,
                    "label": s.label,
                    "eps_w": eps_w,
                    "val": float(np.mean([t["val_metric"] for t in group])),
                    "test": float(np.mean([t["test_metric"] for t in group])),
                    "tau_2": mean("tau_2"),
                    "tau_c": mean("tau_c"),
                    "tau_rho_2": mean("tau_rho_2"),
                    "tau_rho_c": mean("tau_rho_c"),
                    "unreachable": sum(bool(x.get("unreachable")) for x in th),
                    "seeds": len(group),
                    "condition": th[0].get("condition", ""),
                    "w_norm_sq": mean("w_norm_sq"),
                    "tau_same_predictions": min(
                        (x["tau_rho_2_same_predictions"] for x in th if x.get("tau_rho_2_same_predictions") is not None), default=None
                    ),
                    "scale": max((x.get("same_predictions_scale") or 1.0 for x in th), default=1.0),
                    "tau_box": mean("tau_box"),
                    "tau_box_same_predictions": mean("tau_box_same_predictions"),
                    "tau_box_exact": all(x.get("tau_box_exact") for x in th),
                    "has_box": any("kappa_box" in x for x in th),
                }
            )
    return rows


POLICY_LABELS = {"clean_cv": "λ_CLEAN (5-fold CV, clean)", "retuned": "λ re-tuned on D_val", "rmd": "λ_RMD (minimax)"}


def policy_series(a: Analysis) -> dict[str, Any] | None:
    """Means over seeds per policy and budget (ε = 0: clean): error, λ, ρ, ‖w‖², validation metric.

    The ``fixed`` policies are the grid's candidates under the minimax's back-gradient attack.
    Error is 100 − accuracy for classification (the paper's Fig. 2), MSE for regression.
    """
    if a.config.minimax is None or not a.policies:
        return None
    to_error = (lambda m: 100.0 - m) if a.higher_is_better else (lambda m: m)
    attack = a.config.minimax_attack()
    n = int(a.meta["dataset"]["n_train"])
    out: dict[str, dict[str, dict[float, float]]] = {k: {} for k in ("error", "error_std", "lam", "l2", "norm", "val")}
    for policy, label in POLICY_LABELS.items():
        for eps in [0.0, *a.config.budgets]:
            rows = [r for r in a.policies if r.policy == policy and r.budget == eps]
            if not rows:
                continue
            for key, values in (
                ("error", [to_error(r.test_metric) for r in rows]),
                ("lam", [r.lam for r in rows]),
                ("l2", [r.l2 for r in rows]),
                ("norm", [r.norm_w2 for r in rows]),
                ("val", [r.val_metric for r in rows]),
            ):
                out[key].setdefault(label, {})[eps] = float(np.mean(values))
            out["error_std"].setdefault(label, {})[eps] = float(np.std([to_error(r.test_metric) for r in rows]))
    for s in a.summaries:  # fixed λ: the grid's cells of the same attack
        if "l2" not in s.hparams or attack is None:
            continue
        label = f"fixed {s.label} (λ = {lambda_from_rho(s.hparams['l2'], n):.2f})" if s.hparams["l2"] > 0 else f"fixed {s.label}"
        series = {0.0: to_error(s.clean_test)}
        for eps in a.config.budgets:
            st = s.stats.get((attack.key, eps, "none"))
            if st is not None:
                series[eps] = to_error(st.poisoned_test)
        out["error"][label] = series
    return out


# ---------------------------------------------------------------------------- the adaptive stage
@dataclass(frozen=True)
class AdaptiveRow:
    """One filtering defense at one budget, for one candidate: the worst non-adaptive and the worst
    adaptive attack behind it, and the worst case with no defense at all (test damage; the verdict
    on validation damage, as the recommendation chooses).

    ``verdict`` (validation damage, 95 % intervals): ``broken`` — the adaptive attacker does at least
    the undefended worst case's damage behind the defense (it buys nothing against an attacker who
    knows it); ``not shown to help`` — less, but the intervals overlap, so it cannot be told from
    no defense; ``weakened`` — clearly better than no defense, but the adaptive damage is above
    the non-adaptive one beyond both intervals; ``holds`` — clearly better than no defense and
    no worse than against the non-adaptive attacks (against the attackers run).
    """

    defense: str
    budget: float
    plain: AttackStats | None
    plain_attack: str
    adaptive: AttackStats | None
    adaptive_attack: str
    undefended: AttackStats | None
    verdict: str


def adaptive_rows(a: Analysis, key: str | None = None) -> list[AdaptiveRow]:
    """The adaptive stage's rows for candidate ``key`` (default: the recommended one), defense × budget."""
    key = key if key is not None else a.recommendation.key
    axes = adaptive_axes(a.config)
    if key is None or not axes:
        return []
    hp = [json.loads(key)]
    plain_keys = [s.key for s in a.config.attacks]
    adaptive_keys = [k for k, _, _ in axes]
    planned = a.meta.get("cell_seeds")

    def worst(keys: list[str], defense: str, eps: float) -> tuple[AttackStats | None, str]:
        summary = aggregate(a.cells, [], hp, keys, a.config.budgets, a.config.seeds, defense, a.higher_is_better, planned)[0]
        found = {k: summary.stats[(k, eps, defense)] for k in keys if (k, eps, defense) in summary.stats}
        if not found:
            return None, ""
        name = max(found, key=lambda k: found[k].damage_val)
        return found[name], name

    rows = []
    for d in filtering_defenses(a.config):
        for eps in a.config.budgets:
            plain, plain_name = worst(plain_keys, d, eps)
            adaptive, adaptive_name = worst(adaptive_keys, d, eps)
            undefended, _ = worst(a.attack_keys, "none", eps) if "none" in a.config.defense_keys else (None, "")
            rows.append(AdaptiveRow(d, eps, plain, plain_name, adaptive, adaptive_name, undefended, _verdict(plain, adaptive, undefended)))
    return rows


def _verdict(plain: AttackStats | None, adaptive: AttackStats | None, undefended: AttackStats | None) -> str:
    if adaptive is None:
        return "not run"
    if undefended is not None:
        if adaptive.damage_val >= undefended.damage_val:
            return "broken"
        if adaptive.damage_val + Z95 * adaptive.damage_val_se >= undefended.damage_val - Z95 * undefended.damage_val_se:
            return "not shown to help"
    if plain is not None and adaptive.damage_val - Z95 * adaptive.damage_val_se > plain.damage_val + Z95 * plain.damage_val_se:
        return "weakened"
    return "holds"


def bracket_series(a: Analysis, key: str | None = None) -> dict[str, Any] | None:
    """For softmax regression and ridge: per defense with a min-max run (none: the box; a sanitiser: its region)
    and budget, the worst clean objective ``L_c + (1 + ε)(ρ/2)‖W‖²`` any attack of the run reached
    (means over seeds), the certified bound ``U*`` of the min-max run (mean over seeds) and the clean
    model's objective. None when the run has no min-max cells."""
    key = key if key is not None else a.recommendation.key
    if key is None:
        return None
    cells = [c for c in a.cells if c.status == "ok" and c.candidate == key]
    certified = {"none", *SANITISER_DEFENSES}  # where min-max runs its own region, so its bound certifies that defense
    runs = {adaptive_key(MINMAX), *(s.key for s in a.config.attacks if s.name == MINMAX)}  # the grid's min-max cells too
    minmax = [c for c in cells if c.attack in runs and a.config.defense_spec(c.defense).name in certified]
    if not minmax:
        return None
    clean = [float(r["clean_objective"]) for (cand, _), r in a.clean_records.items() if cand == key and r.get("clean_objective") is not None]
    out: dict[str, Any] = {"defenses": {}, "clean": float(np.mean(clean)) if clean else None}
    for d in sorted({c.defense for c in minmax}, key=a.config.defense_keys.index):
        found, bound, attack = {}, {}, {}
        for eps in a.config.budgets:
            by_attack: dict[str, list[float]] = {}
            for c in cells:
                value = _objective(c)
                if c.defense == d and c.budget == eps and value is not None:
                    by_attack.setdefault(c.attack, []).append(value)
            if by_attack:
                best = max(by_attack, key=lambda k: np.mean(by_attack[k]))
                found[eps], attack[eps] = float(np.mean(by_attack[best])), best
            want = a.config.defense_spec(d).name  # a bound certifies the defense whose region it was run in
            bounds = [
                diag.get("bound")
                for diag in (json.loads(c.diagnostics or "{}").get("attack", {}) for c in minmax if c.defense == d and c.budget == eps)
                if diag.get("defense") == want
            ]
            bounds = [b for b in bounds if b is not None and math.isfinite(b)]
            if bounds:
                bound[eps] = float(np.mean(bounds))
        out["defenses"][d] = {"found": found, "bound": bound, "attack": attack}
    return out


def _objective(cell: Any) -> float | None:
    value = json.loads(cell.diagnostics or "{}").get("clean_objective")
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------------- width under attack
@dataclass
class WidthPoint:
    """One width of the *width under attack* series (other candidate axes fixed): clean and poisoned test
    metric per (attack, budget) with a 95 % half-width over seeds, and the worst case at the target budget."""

    width: int
    label: str
    clean: float
    clean_ci: float
    poisoned: dict[tuple[str, float], tuple[float, float]]  # (attack, ε) → (mean, 95 % half-width over seeds)
    worst_test: float | None
    worst_damage: float | None
    worst_damage_se: float | None


def width_series(a: Analysis) -> list[WidthPoint] | None:
    """The candidates that differ only in ``width`` (the recommended one's other axes), ordered by width;
    None without a width axis of two or more values (Wang, Mianjy & Arora 2021: width under attack)."""
    widths = a.config.candidates.get("width") or []
    if len(widths) < 2:
        return None
    rec = a.recommended()
    base = {k: v for k, v in (rec.hparams if rec else a.summaries[0].hparams).items() if k != "width"}
    target = a.recommendation.target_budget
    points = []
    for s in a.summaries:
        if {k: v for k, v in s.hparams.items() if k != "width"} != base or not math.isfinite(s.clean_test):
            continue
        poisoned = {}
        for (attack, eps, d), st in s.stats.items():
            if d == a.defense:
                poisoned[(attack, eps)] = (st.poisoned_test, Z95 * st.poisoned_test_std / math.sqrt(max(st.n_seeds, 1)))
        worst_attack = s.worst_attack_test.get(target)
        worst = s.stats.get((worst_attack, target, a.defense)) if worst_attack else None
        points.append(
            WidthPoint(
                int(s.hparams["width"]),
                s.label,
                s.clean_test,
                Z95 * s.clean_test_se,
                poisoned,
                s.worst_test.get(target),
                s.worst_damage_test.get(target),
                worst.damage_test_se if worst else None,
            )
        )
    return sorted(points, key=lambda p: p.width) if len(points) >= 2 else None


def width_findings(a: Analysis, points: list[WidthPoint]) -> dict[str, Any]:
    """Where the worst-case test metric at the target budget peaks over width, and the wider widths whose
    damage grows again beyond the smallest damage by more than two standard errors (the inverted U)."""
    sign = 1.0 if a.higher_is_better else -1.0
    scored = [p for p in points if p.worst_test is not None and math.isfinite(p.worst_test)]
    if not scored:
        return {}
    best = max(scored, key=lambda p: sign * float(p.worst_test or 0.0))
    damaged = [p for p in scored if p.worst_damage is not None and math.isfinite(p.worst_damage)]
    calm = min(damaged, key=lambda p: float(p.worst_damage or 0.0)) if damaged else None
    grows = []
    if calm is not None:
        for p in damaged:
            noise = 2 * math.hypot(p.worst_damage_se or 0.0, calm.worst_damage_se or 0.0)
            if p.width > calm.width and float(p.worst_damage or 0.0) > float(calm.worst_damage or 0.0) + noise:
                grows.append(p)
    interior = best.width not in (points[0].width, points[-1].width)
    return {"best": best, "calm": calm, "grows": grows, "interior": interior}


@dataclass(frozen=True)
class CertifiedSeries:
    """What a certifying defense proves beside what the attacks found, for one candidate.

    ``curves``: per certificate (``dpa``, ``roe``, ``fa``) the certified accuracy (%) of the ensemble trained on the
    clean training set at radius ``r = 0, 1, …`` (list index; insertions or removals), the mean over repeats.
    ``empirical``: per budget ``(ε, changes m = round(ε·n) — twice that for an attack that modifies points —, the
    defended test accuracy under the worst attack found,
    that attack, the certified accuracy at m of the defense's own certificate)`` — the accuracy an attack of m points
    reached can be no lower than what is certified at m, so the gap between them is what is neither proven nor found.
    """

    candidate: str
    defense: str
    certificate: str
    curves: dict[str, list[float]]
    repeats: int
    empirical: list[tuple[float, int, float, str, float]]


def certified_series(a: Analysis) -> list[CertifiedSeries]:
    """One :class:`CertifiedSeries` per (candidate, certifying defense) that recorded its curves on clean data."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in a.clean_defended:
        if row.diagnostics.get("certified_curves"):
            grouped.setdefault((row.candidate, row.defense), []).append(row.diagnostics)
    n = int(a.meta["dataset"].get("n_train") or 0)
    out = []
    for (cand, defense), runs in grouped.items():
        names = list(runs[0]["certified_curves"])
        curves = {}
        for name in names:
            rows = [r["certified_curves"].get(name, []) for r in runs]
            length = max(len(r) for r in rows)
            curves[name] = [float(np.mean([r[i] if i < len(r) else 0.0 for r in rows])) for i in range(length)]
        summary = next((p for p in a.pairs if p.key == cand and p.defense == defense), None)
        own = runs[0].get("certificate") or names[0]
        empirical = []
        for eps in a.config.budgets:
            if summary is None or eps not in summary.worst_test or not math.isfinite(summary.worst_test[eps]):
                continue
            attack = summary.worst_attack_test.get(eps, "")
            spec = next((sp for sp in a.config.attacks if sp.key == attack.split(" (")[0].split("@")[0].split("~")[0]), None)
            # an inserted point is one change; a modified point is two (one removal, one insertion)
            m = int(round(eps * n)) * (2 if spec is not None and spec.attack.modifies else 1)
            certified = curves[own][m] if m < len(curves[own]) else 0.0
            empirical.append((eps, m, summary.worst_test[eps], attack, certified))
        out.append(CertifiedSeries(cand, defense, own, curves, len(runs), empirical))
    return out


@dataclass(frozen=True)
class FeasibleRow:
    """Under ``dataset.domain: relaxed``, one budget of the recommended setting with no defense: the worst (over attacks)
    mean test damage of the relaxed poisons, and of the same poisons mapped into the data's domain (each cell's
    ``feasible`` diagnostics), the attacks that did each, and how many poisons the mapping changed in all."""

    budget: float
    relaxed: float
    relaxed_attack: str
    feasible: float
    feasible_attack: str
    changed: int


def feasible_rows(a: Analysis) -> list[FeasibleRow]:
    """One :class:`FeasibleRow` per budget where the run recorded the feasible damage; [] for any other run."""
    key = a.recommendation.key
    if key is None or not a.meta["dataset"].get("domain_relaxed"):
        return []
    sign = 1.0 if a.higher_is_better else -1.0
    out = []
    for eps in a.config.budgets:
        by_attack: dict[str, list[tuple[float, float, int]]] = {}
        for c in a.cells:
            found = c.recorded("feasible") if c.status == "ok" and c.candidate == key and c.defense == "none" and c.budget == eps else {}
            if found and c.clean_test is not None and c.poisoned_test is not None:
                damage = (sign * (c.clean_test - c.poisoned_test), sign * (c.clean_test - float(found["test"])), int(found["changed"]))
                by_attack.setdefault(c.attack, []).append(damage)
        if not by_attack:
            continue
        mean = {k: (float(np.mean([d[0] for d in v])), float(np.mean([d[1] for d in v]))) for k, v in by_attack.items()}
        relaxed = max(mean, key=lambda k: mean[k][0])
        feasible = max(mean, key=lambda k: mean[k][1])
        changed = sum(d[2] for v in by_attack.values() for d in v)
        out.append(FeasibleRow(eps, mean[relaxed][0], relaxed, mean[feasible][1], feasible, changed))
    return out
