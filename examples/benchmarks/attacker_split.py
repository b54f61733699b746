"""Damage where the attack optimised against damage on held-out data (issue 32, part 1).

mnist5k softmax regression, ρ ∈ {1e-3, 1e-2}, ε ∈ {3, 10, 30 %}, seed 0, the quick profile's
back-gradient and Gradient Canceling, under both threats:

- ``validation`` (the papers' setting): the attacks optimise the loss on D_val, the split the
  recommendation is chosen on (3000 training points);
- ``attacker_split`` (the default): they optimise on D_att, a quarter of the training portion
  (2250 training points, 750 attacker's), and D_val is held out.

Printed per cell: the accuracy drop on D_att (attacker_split only), on D_val and on D_test, and the
ratio validation / test — the bias of a selection made on validation damage.

    OMP_NUM_THREADS=2 python examples/benchmarks/attacker_split.py
"""

from __future__ import annotations

import json
import tempfile
import time

import numpy as np
import torch

from audit.api import run_audit
from audit.config import parse_config
from audit.grid.store import stored_cells


def run(threat: str, out: str) -> list[dict]:
    cfg = {
        "name": f"split-{threat}",
        "dataset": {"name": "mnist5k"},
        "model": {"name": "logreg"},
        "candidates": {"l2": [1e-3, 1e-2]},
        "attacks": [
            {"name": "back_gradient", "id": "bg", "params": {"iterations": 5, "step": 4.0, "inner_steps": 30, "inner_lr": 0.5,
                                                            "hypergradient": "unrolled"}},  # the quick profile's
            {"name": "gradient_canceling", "id": "gc", "params": {"epochs": 300}},
        ],
        "budgets": [0.03, 0.1, 0.3],
        "seeds": [0],
        "device": "cpu",
        "confirm": False,
        "adaptive": {"enabled": "off"},
        "poisonability": {"enabled": "off"},
        "threat": {"attacker_reads": threat},
    }  # fmt: skip
    t0 = time.perf_counter()
    result = run_audit(parse_config(cfg), output_dir=out, progress=False)
    cells = stored_cells(result.run_dir)
    rows = []
    for c in cells:
        att = json.loads(c.diagnostics or "{}").get("attacker_split")
        rows.append({"threat": threat, "l2": json.loads(c.candidate)["l2"], "attack": c.attack, "budget": c.budget,
                     "att": None if att is None else att["clean"] - att["poisoned"], "val": c.clean_val - c.poisoned_val,
                     "test": c.clean_test - c.poisoned_test})  # fmt: skip
    print(f"{threat}: {time.perf_counter() - t0:.0f} s, n_train {len(result.plan.dataset.y_train)}")
    return rows


def main() -> None:
    torch.set_num_threads(2)
    out = tempfile.mkdtemp()
    rows = run("validation", out) + run("attacker_split", out)
    print("| threat | ρ | attack | ε | drop on D_att | drop on D_val | drop on D_test | val / test |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        att = "—" if r["att"] is None else f"{r['att']:.1f}"
        ratio = r["val"] / r["test"] if r["test"] > 0.05 else float("nan")
        print(f"| {r['threat']} | {r['l2']:g} | {r['attack']} | {100 * r['budget']:g} % | {att} | {r['val']:.1f} | {r['test']:.1f} | {ratio:.2f} |")
    for threat in ("validation", "attacker_split"):
        mine = [r for r in rows if r["threat"] == threat and r["attack"] == "bg" and r["test"] > 0.05]
        print(f"{threat}: back-gradient val/test median {np.median([r['val'] / r['test'] for r in mine]):.2f}, "
              f"range {min(r['val'] / r['test'] for r in mine):.2f}–{max(r['val'] / r['test'] for r in mine):.2f}")


if __name__ == "__main__":
    main()
