"""How much the verdict moves from one draw of the data split to the next (issue 32, repeated splits).

breast_cancer softmax regression, ρ ∈ {1e-3, 1e-2}, ε ∈ {3, 10 %}, the quick profile's battery (screen
only: ``confirm: false``), seed 0, ``splits: 6`` — six draws of the train/attacker/validation/test
partition in one run. Printed: per split, the recommended setting's worst-of-attacks test damage at
ε = 10 % and the within-split standard error of that worst attack; then the spread over splits against
the within-split SE, the one-split interval of split 0 against the interval over the six splits (the
corrected t-interval the report gives), and the same interval from the first three splits only.

    OMP_NUM_THREADS=2 python examples/benchmarks/split_variation.py [--splits 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from audit.api import run_audit
from audit.config import parse_config
from audit.report.analysis import analyse
from audit.report.recommend import across_splits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {"name": "split-variation", "dataset": {"name": "breast_cancer"}, "model": {"name": "logreg"},
           "candidates": {"l2": [1e-3, 1e-2]}, "budgets": [0.03, 0.1], "seeds": [0], "splits": args.splits, "confirm": False,
           "device": "cpu"}  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run = run_audit(parse_config(cfg), output_dir=out, progress=False).run_dir
        seconds = time.perf_counter() - t0
        a = analyse(run)
    rec = a.recommended()
    assert rec is not None
    eps = 0.1
    cells = [c for c in a.cells if c.candidate == rec.key and c.budget <= eps and c.status == "ok" and c.defense == "none"]
    rows = []
    for j in range(args.splits):
        mine = [c for c in cells if c.split == j]
        worst = max(mine, key=lambda c: c.clean_test - c.poisoned_test)
        rows.append({"split": j, "attack": worst.attack, "damage": worst.clean_test - worst.poisoned_test,
                     "se": worst.recorded("se").get("test_drop")})  # fmt: skip
    damages = np.array([r["damage"] for r in rows])
    share = a.meta["dataset"]["n_test"] / a.meta["dataset"]["n_train"]
    first = rows[0]
    three = across_splits({r["split"]: (r["damage"], r["se"]) for r in rows[:3]}, share)
    every = across_splits({r["split"]: (r["damage"], r["se"]) for r in rows}, share)
    print(json.dumps({"recommended": rec.label, "seconds": round(seconds, 1), "per_split": rows,
                      "sd_over_splits": float(np.std(damages, ddof=1)), "mean_within_se": float(np.mean([r["se"] for r in rows])),
                      "split0_interval": [first["damage"] - 1.96 * first["se"], first["damage"] + 1.96 * first["se"]],
                      "three_splits": {"mean": three.mean, "interval": three.interval()},
                      "all_splits": {"mean": every.mean, "interval": every.interval()},
                      "report_interval": rec.worst_damage_test_ci[eps]}, indent=1, default=float))  # fmt: skip


if __name__ == "__main__":
    main()
