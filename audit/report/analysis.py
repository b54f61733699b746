"""A run's analysis, the one view the report, summary, gate and record share: its store read
(:mod:`audit.report.reading`), aggregated (:mod:`audit.report.aggregation`) and worded (:mod:`audit.report.wording`)."""

from __future__ import annotations

import json
from pathlib import Path

from audit.report.aggregation import Analysis, aggregate_run
from audit.report.reading import read_run
from audit.report.wording import reason

__all__ = ["Analysis", "analyse", "confirmation_targets"]


def analyse(run_dir: str | Path) -> Analysis:
    """Read a run directory's store and aggregate it (no recomputation); the recommendation's reason in full words."""
    analysis = aggregate_run(read_run(run_dir))
    analysis.recommendation.reason = reason(analysis)
    return analysis


def confirmation_targets(run_dir: str | Path) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """The settings a verdict rests on, from the results stored so far: the recommended ``(candidate key,
    defense)`` and it with every setting tied with it (what :func:`audit.grid.runner.run_confirmation` confirms)."""
    rec = analyse(run_dir).recommendation
    if rec.key is None:
        return None, []
    pairs = []
    for pid in rec.tied:
        hp, defense = json.loads(pid)
        pairs.append((json.dumps(hp, sort_keys=True), defense))
    return pairs[0], pairs
