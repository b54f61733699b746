"""Read a run directory's store and aggregate it: the one view the report, summary and gate share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.config import AuditConfig
from audit.recommend import CandidateSummary, Recommendation, aggregate, recommend
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

    @property
    def unit(self) -> str:
        return "accuracy drop (points)" if self.higher_is_better else "MSE increase"

    def recommended(self) -> CandidateSummary | None:
        return next((s for s in self.summaries if s.key == self.recommendation.key), None)


def analyse(run_dir: str | Path) -> Analysis:
    """Read a run directory's store and aggregate it (no recomputation)."""
    store = Store.open_existing(run_dir)
    try:
        meta = store.all_meta()
        cells = store.cells()
        clean_rows = list(store.clean_rows())
        targets = store.target_rows()
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
    rec = recommend(summaries, config.target_budget, config.recommendation.clean_tolerance, higher,
                    metric_name="accuracy" if higher else "MSE")  # fmt: skip
    analysis = Analysis(config, meta, cells, summaries, rec, defense, metric, higher, targets)
    from audit.sections import tau_sentence

    moved = tau_sentence(analysis)
    if moved:
        rec.reason = f"{rec.reason} {moved}"
    return analysis




def fmt(value: float | None, digits: int = 2) -> str:
    """Fixed decimals for accuracies; 4 significant digits for small values such as an MSE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"
