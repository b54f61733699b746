"""How much of the paper setting's damage each profile keeps, and at what cost (the README's profile table).

    OMP_NUM_THREADS=2 python examples/benchmarks/profile_strength.py                    # ρ ∈ {1e-3, 1e-2}, ε = 0.1
    OMP_NUM_THREADS=2 python examples/benchmarks/profile_strength.py --rho 1e-2 --eps 0.03 0.3 --attacks back_gradient

mnist5k logistic regression (the default audit's victim and data). For every attack of the
battery and every profile (``quick``, ``standard``, ``paper``: audit.catalog.PROFILES), one grid
cell (ρ, ε, seed 0) exactly as the audit runs it — the attack's parameters resolved by the
profile, the attack seeded as the grid seeds it, then the victim retrained from scratch with
its L-BFGS procedure — and the test-accuracy drop. Settings two profiles share run once.
One JSON line per run on stdout and in reports/benchmarks/profile_strength.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext
from audit.config import AuditConfig, DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.grid.runner import clean_train_seed
from audit.grid.store import candidate_key, derive_seed
from audit.models import build_victim


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rho", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1])
    parser.add_argument("--attacks", nargs="+", default=None, help="battery ids (default: all that apply)")
    parser.add_argument("--profiles", nargs="+", default=["quick", "standard", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset(DatasetSpec(name="mnist5k"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    batteries = {p: AuditConfig(profile=p).resolved(data.task, victim.kind) for p in args.profiles}
    ids = args.attacks or [s.key for s in batteries["paper" if "paper" in batteries else args.profiles[0]].attacks]
    print(f"mnist5k logreg, torch threads {torch.get_num_threads()}", flush=True)
    for rho in args.rho:
        hp = {"l2": rho}
        cand = candidate_key(hp)
        clean = victim.fit(data.x_train, data.y_train, hp, clean_train_seed(args.seed))
        base = clean.metric(data.x_test, data.y_test)
        for eps in args.eps:
            for key in ids:
                done: dict[str, dict] = {}
                for profile, cfg in batteries.items():
                    spec = next((s for s in cfg.attacks if s.key == key), None)
                    if spec is None:
                        row = {"rho": rho, "eps": eps, "attack": key, "profile": profile, "skipped": "not in this profile's battery"}
                    elif json.dumps(spec.params, sort_keys=True) in done:
                        row = {**done[json.dumps(spec.params, sort_keys=True)], "profile": profile}
                    else:
                        ctx = AttackContext(data, victim, clean, hp, eps, derive_seed(args.seed, cand, key, eps))
                        start = time.perf_counter()
                        x_p, y_p = spec.attack.for_cell(dict(spec.params), ctx).poison(data.x_train, data.y_train)
                        seconds = time.perf_counter() - start
                        poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp,
                                              clean_train_seed(args.seed))  # fmt: skip
                        row = {"rho": rho, "eps": eps, "attack": key, "profile": profile, "params": spec.params,
                               "attack_seconds": round(seconds, 2), "clean": base,
                               "drop": round(base - poisoned.metric(data.x_test, data.y_test), 2)}  # fmt: skip
                        done[json.dumps(spec.params, sort_keys=True)] = row
                    print(json.dumps(row), flush=True)
                    with open(out / "profile_strength.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
