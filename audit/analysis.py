"""Read a run directory's store and aggregate it: the one view the report, summary and gate share."""

from __future__ import annotations

import math

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.config import AuditConfig
from audit.recommend import CandidateSummary, Recommendation, aggregate, pair_id, recommend
from audit.store import Store


@dataclass
class Analysis:
    """Everything the report, summary and gate read from a run."""

    config: AuditConfig
    meta: dict[str, Any]
    cells: list
    summaries: list[CandidateSummary]
    recommendation: Recommendation
    defense: str
    metric: str
    higher_is_better: bool
    targets: list[dict[str, Any]]
    pairs: list[CandidateSummary]
    samples: list[dict[str, Any]] = field(default_factory=list)
    policies: list = field(default_factory=list)  # audit.minimax.PolicyRow of the λ-under-attack stage

    @property
    def unit(self) -> str:
        return "accuracy drop (points)" if self.higher_is_better else "MSE increase"

    def recommended(self) -> CandidateSummary | None:
        """The recommended (candidate, defense) setting's summary."""
        want = pair_id(self.recommendation.key, self.recommendation.defense) if self.recommendation.key else None
        return next((s for s in self.pairs if s.pair == want), None)


def analyse(run_dir: str | Path) -> Analysis:
    """Read a run directory's store and aggregate it (no recomputation)."""
    store = Store.open_existing(run_dir)
    try:
        meta = store.all_meta()
        cells = store.cells()
        clean_rows = list(store.clean_rows())
        defended_rows = store.clean_defended_rows()
        targets = store.target_rows()
        samples = [s for s in store.poison_samples() if s["fingerprint"] == meta.get("fingerprint")]
        policies = store.policy_rows()
    finally:
        store.close()
    config = AuditConfig.model_validate(meta["config"])
    task = meta["dataset"]["task"]
    higher = task == "classification"
    metric = "accuracy (%)" if higher else "MSE"
    defense = "none" if "none" in config.defenses else config.defenses[0]
    summaries = aggregate(
        cells, clean_rows, config.candidate_grid(), [a.key for a in config.attacks], config.budgets, config.seeds,
        defense, higher_is_better=higher,
    )  # fmt: skip
    # every (candidate, defense) setting; a defended setting's clean metric is the defense run on clean data
    pairs: list[CandidateSummary] = []
    for d in config.defenses:
        rows = clean_rows if d == "none" else [(c, s, v, t, 0.0, {}) for c, s, dd, v, t, _, err in defended_rows
                                               if dd == d and v is not None]  # fmt: skip
        pairs += aggregate(cells, rows, config.candidate_grid(), [a.key for a in config.attacks], config.budgets,
                           config.seeds, d, higher_is_better=higher)  # fmt: skip
    rec = recommend(pairs, config.target_budget, config.recommendation.clean_tolerance, higher,
                    metric_name="accuracy" if higher else "MSE")  # fmt: skip
    analysis = Analysis(config, meta, cells, summaries, rec, defense, metric, higher, targets, pairs, samples, policies)
    cost = defense_cost_sentence(analysis, defended_rows)
    if cost:
        rec.reason = f"{rec.reason} {cost}"
    from audit.sections import minimax_sentence, policy_series, tau_sentence

    moved = tau_sentence(analysis)
    if moved:
        rec.reason = f"{rec.reason} {moved}"
    series = policy_series(analysis)
    under_attack = minimax_sentence(analysis, series) if series else ""
    if under_attack:
        rec.reason = f"{rec.reason} {under_attack}"
    return analysis




def defense_cost_sentence(a: Analysis, defended_rows: list) -> str:
    """What the recommended defense costs on clean data (or that no defense was chosen, when some were run)."""
    rec = a.recommendation
    if rec.key is None or len(a.config.defenses) < 2:
        return ""
    if rec.defense == "none":
        return "No defense is recommended: none of those run improved the worst case enough within the clean tolerance."
    plain = next((s for s in a.pairs if s.key == rec.key and s.defense == "none"), None)
    chosen = a.recommended()
    removed = [r[5] for r in defended_rows if r[0] == rec.key and r[2] == rec.defense and r[5] is not None]
    if plain is None or chosen is None:
        return ""
    sign = 1.0 if a.higher_is_better else -1.0
    delta = sign * (chosen.clean_val - plain.clean_val)  # > 0: the defense helps on clean validation data
    if a.higher_is_better:
        effect = f"{'raises' if delta > 0 else 'lowers'} validation accuracy by {fmt(abs(delta))} points"
    else:
        effect = f"{'lowers' if delta > 0 else 'raises'} validation MSE by {fmt(abs(delta))}"
    text = (f"On clean data the defense {rec.defense} {effect} ({fmt(chosen.clean_val)} with it, "
            f"{fmt(plain.clean_val)} without; test {fmt(chosen.clean_test)} vs {fmt(plain.clean_test)}) and drops "
            f"{np.mean(removed):.0f} clean training points on average.")  # fmt: skip
    if rec.defense in VALIDATION_READERS:
        text += (f" {rec.defense} itself selects points with the validation split, so its validation figures are "
                 "optimistic: judge it by the test figures.")  # fmt: skip
    return text


# defenses that read D_val: their validation metrics are biased upwards when the recommendation compares them
VALIDATION_READERS = ("influence_filter", "roni")


def fmt(value: float | None, digits: int = 2) -> str:
    """Fixed decimals for accuracies; 4 significant digits for small values such as an MSE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"
