"""How much of the paper setting's damage each profile keeps, and at what cost (the README's profile table).

    OMP_NUM_THREADS=2 python examples/benchmarks/profile_strength.py                        # mnist5k, every profile
    OMP_NUM_THREADS=2 python examples/benchmarks/profile_strength.py --dataset breast_cancer
    OMP_NUM_THREADS=2 python examples/benchmarks/profile_strength.py --profiles quick \\
        --variant 'bg10={"hypergradient": "implicit", "iterations": 10}'                     # a back-gradient setting to try

Logistic regression, ρ ∈ {1e-3, 1e-2}, ε ∈ {3, 10, 30 %}, seed 0 (the issue's cells). Each profile
runs as one audit exactly as a user's run does it — ``run_audit`` with the profile's battery, the
attacker's own split D_att, the victim's L-BFGS retraining, each optimised attack warm-started from
its own poisons at the next smaller budget — with confirmation, the adaptive stage and τ off (they do
not change a screened cell). A ``--variant`` is one more audit that runs only back-gradient with the
given parameters (on top of its defaults, the paper's) at the same seed: how a candidate setting for
a reduced profile compares before it goes into ``audit/catalog.py``.

Printed: per cell, each run's test-accuracy drop of back-gradient and of the battery's worst attack,
the ratio to ``paper`` and the attack's seconds; one JSON line per cell in
reports/benchmarks/profile_strength.jsonl.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from audit.api import run_audit
from audit.config import parse_config
from audit.grid.store import stored_cells


def audit_cells(dataset: str, label: str, rhos: list[float], budgets: list[float], seed: int, profile: str,
                attacks: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """Run one audit; its ok cells as rows (attack, ρ, ε, test drop, seconds) and the run's wall time."""
    cfg: dict[str, Any] = {
        "name": f"strength-{dataset}-{label}",
        "dataset": {"name": dataset},
        "model": {"name": "logreg"},
        "candidates": {"l2": rhos},
        "profile": profile,
        "budgets": budgets,
        "seeds": [seed],
        "device": "cpu",
        "confirm": False,
        "adaptive": {"enabled": "off"},
        "poisonability": {"enabled": "off"},
    }
    if attacks is not None:
        cfg["attacks"] = attacks
    t0 = time.perf_counter()
    result = run_audit(parse_config(cfg), output_dir=tempfile.mkdtemp(), progress=False)
    wall = time.perf_counter() - t0
    cells = stored_cells(result.run_dir)
    rows = []
    for c in cells:
        if c.status != "ok" or c.clean_test is None or c.poisoned_test is None:
            continue
        attack_seconds = c.recorded("attack").get("seconds")
        rows.append({"dataset": dataset, "run": label, "rho": c.hparams["l2"], "eps": c.budget, "attack": c.attack,
                     "drop": round(c.clean_test - c.poisoned_test, 2), "seconds": round(attack_seconds or c.seconds or 0.0, 1),
                     "diagnostics": summary(c.recorded("attack"))})  # fmt: skip
    return rows, wall


def summary(diagnostics: dict[str, Any]) -> dict[str, Any]:
    """The attack's iterations, start and final objective (its diagnostics keep every iteration's)."""
    objective = diagnostics.get("objective")
    final = objective[-1] if isinstance(objective, list) and objective else objective
    return {"iterations": diagnostics.get("iterations"), "start": diagnostics.get("start"), "objective": final}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--rho", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--profiles", nargs="*", default=["quick", "standard", "paper"])
    parser.add_argument("--variant", action="append", default=[], help="name={json back-gradient params}: a setting to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, str, list[dict[str, Any]] | None]] = [(p, p, None) for p in args.profiles]
    for variant in args.variant:
        name, _, params = variant.partition("=")
        runs.append((name, "paper", [{"name": "back_gradient", "id": "back_gradient", "params": json.loads(params)}]))
    print(f"{args.dataset} logreg, seed {args.seed}, torch threads {torch.get_num_threads()}", flush=True)
    for label, profile, attacks in runs:
        rows, wall = audit_cells(args.dataset, label, args.rho, args.eps, args.seed, profile, attacks)
        with open(out / "profile_strength.jsonl", "a") as fh:
            for row in rows:
                fh.write(json.dumps({**row, "threads": args.threads, "date": time.strftime("%Y-%m-%d")}) + "\n")
        print(f"## {label} ({profile}): {wall:.0f} s", flush=True)
        for rho in args.rho:
            for eps in args.eps:
                mine = [r for r in rows if r["rho"] == rho and r["eps"] == eps]
                if not mine:
                    print(f"  ρ={rho:g} ε={eps:g}: no ok cells", flush=True)
                    continue
                worst = max(mine, key=lambda r: r["drop"])
                bg = next((r for r in mine if r["attack"] == "back_gradient"), None)
                bg_text = "—" if bg is None else f"{bg['drop']:.2f} ({bg['seconds']:.1f} s, {bg['diagnostics']})"
                print(f"  ρ={rho:g} ε={eps:g}: worst {worst['drop']:.2f} ({worst['attack']}); back-gradient {bg_text}", flush=True)


if __name__ == "__main__":
    main()
