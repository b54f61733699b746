"""Shared fixtures: tiny seeded configs and data that train in well under a second."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
# the command line runs cells in worker processes by default (executor.workers auto); the suite's CLI runs use this
# process (they monkeypatch it, and a worker pool per tiny run would cost more than it saves); tests/test_pool.py runs the pool
os.environ.setdefault("POISON_AUDIT_WORKERS", "1")


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """breast_cancer logreg, 2 candidates × 2 attacks × 2 budgets × 1 seed = 8 cells (~2 s)."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"name": "breast_cancer"},
        "model": {"name": "logreg"},
        "training": {"epochs": 100},
        "candidates": {"l2": [0.0, 0.01]},
        "attacks": [
            {"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}},
            {"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}},
        ],
        "budgets": [0.1, 0.3],
        "seeds": [0],
        "device": "cpu",
        # the grid's label flips already run at their paper's settings, so the verdict is confirmed without new cells
        "confirm": {"attacks": ["label_flip_random", "label_flip_adversarial"]},
    }
    cfg.update(overrides)
    return cfg


def tiny_n_train() -> int:
    """breast_cancer's training split as the audit trains on it: 341 points less the attacker's split D_att
    (a quarter, carved under the default threat)."""
    from audit.data import DatasetSpec, load_dataset

    return len(load_dataset(DatasetSpec(name="breast_cancer")).with_attacker_split("attacker_split", None, 0).y_train)


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_config()


@pytest.fixture
def one_thread():
    """This process at one torch thread, as a pool worker or a Ray task with ``cpus_per_cell: 1`` runs a cell."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def stored_cells(run_dir: Path) -> list:
    """The cells of a run directory's store, in grid order."""
    from audit.grid.store import stored_cells as read

    return read(run_dir)


def cells_with_poisons(run_dir: Path) -> list:
    """``(cell, x_p, y_p)`` for every poison set a run directory cached, with the undefended cell it was crafted for
    (the cache key is ``audit.grid.work.poison_cache_key``'s: candidate, attack, params, ε, seed, fingerprint)."""
    import json

    import numpy as np

    from audit.grid.store import Store

    store = Store.open_existing(run_dir)
    try:
        cells = {(c.candidate, c.attack, c.budget, c.seed): c for c in store.cells() if c.defense == "none"}
        out = []
        for path in sorted(store.poison_dir.glob("*.npz")):
            with np.load(path, allow_pickle=False) as npz:
                key = str(npz["key"])
            candidate, attack, _, budget, seed, _ = json.loads(key)
            x_p, y_p, _ = store.load_poisons(key)
            out.append((cells[(candidate, attack, budget, seed)], x_p, y_p))
        return out
    finally:
        store.close()


def count_ok(db: Path) -> int:
    """Cells stored ``ok`` so far in a store another process is writing; 0 before it exists.

    Opened read-only: a watcher that opened it read-write would create an empty file the
    writer then refuses as not a store (a race seen in CI).
    """
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM cells WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def cell_numbers(cells: list) -> list:
    """What two runs of the same config must agree on, cell by cell (not times or dates)."""
    return [(c.cell_key, c.status, c.clean_val, c.clean_test, c.poisoned_val, c.poisoned_test, c.n_poison) for c in cells]


def summary_numbers(run_dir: Path) -> dict:
    """summary.json without what may differ between two runs of the same config: times, dates, paths, the executor."""
    import json

    from audit.report import write_report

    write_report(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not any(t in k for t in ("seconds", "time", "created", "finished", "executor", "wall"))}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(summary)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, with a reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
