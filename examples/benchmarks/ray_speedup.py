"""Wall time of one grid under the local executor and under Ray on this machine (issue 20).

    python examples/benchmarks/ray_speedup.py            # 16 cells: mnist5k LR, 4 ρ × GC + back-gradient (quick) × 2 ε

The local executor runs the cells one after another with torch at every CPU's thread (the
default, ``--threads`` unset); Ray runs them as tasks of one CPU each, as many at once as
there are CPUs (``cpus_per_cell: 1``), on a private cluster it starts (its start-up is in the
time). Both in fresh run directories; the figures go to reports/benchmarks/ray_speedup.json.
The numbers of the two runs differ in the last digits (two thread counts); a third run, local
at one thread, has Ray's numbers exactly and its time too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

GRID = {
    "name": "ray-speedup",
    "dataset": {"name": "mnist5k"},
    "model": {"name": "logreg"},
    "candidates": {"l2": [1e-4, 1e-3, 1e-2, 1e-1]},
    "attacks": [{"name": "gradient_canceling"}, {"name": "back_gradient"}],
    "budgets": [0.03, 0.1],
    "seeds": [0],
    "profile": "quick",
    "device": "cpu",
}


def timed_run(config: dict, out: Path, *extra: str) -> float:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "audit", "run", str(path), "--out", str(out), "--quiet", *extra], check=True)
    return time.perf_counter() - t0


def cells(run_dir: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return db.execute("SELECT cell_key, status, poisoned_test FROM cells ORDER BY cell_key").fetchall()


def main() -> None:
    root = Path("reports/benchmarks/ray_speedup")
    root.mkdir(parents=True, exist_ok=True)
    local = timed_run(GRID, root / "local")
    ray = timed_run({**GRID, "executor": {"kind": "ray", "cpus_per_cell": 1}}, root / "ray")
    local_1 = timed_run(GRID, root / "local1", "--threads", "1")
    a, b, c = (cells(root / name / "ray-speedup") for name in ("local", "ray", "local1"))
    result = {
        "cells": len(a),
        "all_ok": all(r[1] == "ok" for r in a + b + c),
        "local_seconds": round(local, 1),
        "ray_seconds": round(ray, 1),
        "local_1_thread_seconds": round(local_1, 1),
        "speedup_over_local": round(local / ray, 2),
        "speedup_over_local_1_thread": round(local_1 / ray, 2),
        "ray_equals_local_1_thread": b == c,
        "machine": f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs",
    }
    print(json.dumps(result, indent=1))
    (root.parent / "ray_speedup.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
