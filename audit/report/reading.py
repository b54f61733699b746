"""Reading a run directory's store: its rows, typed and checked against the run's plan (no aggregation here).

:func:`read_run` reads everything the analysis uses in one transaction; :func:`check_cells` keeps the rows
that match the plan one-to-one and names the others (a row that matches no planned cell is never a figure).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.attacks.base import SourcedDiagnostics
from audit.config import AuditConfig
from audit.grid.adaptive import grid_axes
from audit.grid.confirm import all_axes, confirm_attack_keys
from audit.grid.store import (
    Cell,
    CleanRow,
    DefendedDiagnostics,
    DefendedRow,
    PolicyRow,
    Store,
    cell_key,
    grid_plan,
    plan_digest,
    stored_plan,
    stored_splits,
)


@dataclass
class StoredRun:
    """What a run directory's store holds, as typed rows.

    ``cells``: the rows that match the run's plan (:func:`check_cells`); ``corrupt``: one line per row that does not;
    ``clean``: the clean retrainings; ``clean_defended`` / ``clean_defended_diagnostics``: each defense run on clean
    data, its figures and its diagnostics; ``targets``: the poisonability targets and thresholds; ``samples``: stored
    poison samples of this run's fingerprint; ``policies``: the λ-under-attack stage's rows."""

    meta: dict[str, Any]
    config: AuditConfig
    cells: list[Cell]
    corrupt: list[str]
    clean: list[CleanRow]
    clean_defended: list[DefendedRow]
    clean_defended_diagnostics: list[DefendedDiagnostics]
    targets: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    policies: list[PolicyRow] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str(self.meta["dataset"]["task"])


def read_run(run_dir: str | Path) -> StoredRun:
    """Read a run directory's store (read-only) into a :class:`StoredRun`, its cells checked against the plan."""
    store = Store.open_existing(run_dir, read_only=True)
    try:
        meta = store.all_meta()
        cells = store.cells()
        clean_rows = list(store.clean_rows())
        defended_rows = store.clean_defended_rows()
        defended_diagnostics = store.clean_defended_diagnostics()
        targets = store.target_rows()
        config = AuditConfig.model_validate(meta["config"])
        sourced = [s.key for s in config.attacks if issubclass(s.attack.Diagnostics, SourcedDiagnostics)]
        samples = [s for s in store.poison_samples(sourced) if s["fingerprint"] == meta.get("fingerprint")]
        policies = store.policy_rows()
    finally:
        store.close()
    cells, corrupt = check_cells(cells, meta, config)
    return StoredRun(meta, config, cells, corrupt, clean_rows, defended_rows, defended_diagnostics, targets, samples, policies)


def planned_cell_keys(meta: dict[str, Any], config: AuditConfig) -> set[str] | None:
    """Every cell key the run planned: the grid's (its stored ``cell_seeds`` × the budgets) and the confirmation
    cells the stage planned; None for a run whose store predates ``cell_seeds``."""
    return stored_plan(meta, config.budgets)


def _cell_problem(cell: Any, planned: set[str] | None, task: str) -> str | None:
    """Why a stored row cannot be trusted, or None: its identity fields must give its key, the key must be
    planned, and a finished cell's four metrics must be finite numbers in range (accuracy in [0, 100], MSE ≥ 0)."""
    try:
        key = cell_key(cell.candidate, cell.attack, float(cell.budget), cell.defense, int(cell.seed), int(cell.split))
    except (TypeError, ValueError):
        return "its candidate, attack, budget, defense, seed or split cannot be read"
    if key != cell.cell_key:
        return (
            f"its fields (attack {cell.attack!r}, ε = {cell.budget}, defense {cell.defense!r}, seed {cell.seed}, split {cell.split}) "
            "do not match its key"
        )
    if planned is not None and cell.cell_key not in planned:
        return "the run never planned it"
    if cell.status not in ("ok", "failed"):
        return f"unknown status {cell.status!r}"
    if cell.status == "ok":
        for name in ("clean_val", "clean_test", "poisoned_val", "poisoned_test"):
            value = getattr(cell, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{name} is {value!r}, not a finite number"
            if value < 0 or (task == "classification" and value > 100):
                return f"{name} is {value!r}, outside {'[0, 100]' if task == 'classification' else '[0, ∞)'}"
    return None


def check_cells(cells: list[Any], meta: dict[str, Any], config: AuditConfig) -> tuple[list[Any], list[str]]:
    """The stored rows that match the run's plan one-to-one, and one line per row that does not (named by its key
    and why): the gate gives no verdict on a store with such rows and no figure uses them."""
    planned = planned_cell_keys(meta, config)
    task = meta.get("dataset", {}).get("task", "classification")
    valid, corrupt = [], []
    recorded = meta.get("plan_digest")  # the grid's plan as the run started (stores before it have none)
    seeds = meta.get("cell_seeds")
    if recorded is not None and seeds is not None and plan_digest(grid_plan(seeds, config.budgets, stored_splits(meta))) != recorded:
        corrupt.append("the stored plan: its cells do not match the digest recorded when the run started")
    for c in cells:
        problem = _cell_problem(c, planned, task)
        if problem is None:
            valid.append(c)
        else:
            corrupt.append(f"cell {str(c.cell_key)[:160]}: {problem}")
    return valid, corrupt


def attack_keys(config: AuditConfig) -> list[str]:
    """The attack keys of a stored (resolved) config's cells: grid attacks, adaptive attackers, then the confirmation stage's."""
    return [key for key, _, _ in all_axes(config)]


def grid_attack_keys(config: AuditConfig) -> list[str]:
    """The grid's attack keys: its attacks, then its adaptive attackers (what the screen's worst case is over)."""
    return [key for key, _, _ in grid_axes(config)]


def confirmation_plan(meta: dict[str, Any], config: AuditConfig) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """The run's ``cell_seeds`` completed with the confirmation cells the stage planned (a confirmation attack is
    planned at no seed for a setting it did not confirm), and the budgets each confirmation attack runs at."""
    planned = dict(meta.get("cell_seeds") or {})
    keys = confirm_attack_keys(config)
    for hp in config.candidate_grid():
        for key in keys:
            for d in config.defense_keys:
                planned[json.dumps([json.dumps(hp, sort_keys=True), key, d])] = []
    for cell in (meta.get("confirmation") or {}).get("cells", []):
        hp, key, _, d, seed = json.loads(cell)[:5]  # a split index follows from the second split on
        seeds = planned.setdefault(json.dumps([json.dumps(hp, sort_keys=True), key, d]), [])
        if seed not in seeds:
            seeds.append(seed)
    budgets = list((meta.get("confirmation") or {}).get("budgets") or config.confirm_budgets)
    return planned, {key: budgets for key in keys}
