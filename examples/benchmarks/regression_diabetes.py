"""StatP vs OptP and the regression defenses on diabetes (jagielski-2018's qualitative claims).

    python examples/benchmarks/regression_diabetes.py     # ~2 min on 2 CPU cores

For ridge (ρ = 1e-3) and lasso (λ₁ = 1e-3) at ε ∈ {0.05, 0.1, 0.2} and seeds 0–4: test MSE
clean and after each attack, undefended and with TRIM, Huber and RANSAC, plus the attack's
seconds. Prints a markdown table of mean MSE ratios (poisoned / clean) and writes the raw
rows to reports/benchmarks/regression_diabetes.jsonl.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext, OptP, StatP
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.defenses import DEFENSES
from audit.models import Candidate, build_victim


def main() -> None:
    torch.set_num_threads(2)
    data = load_dataset(DatasetSpec(name="diabetes"))
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, hp in (("ridge", {"l2": 1e-3}), ("lasso", {"l1": 1e-3})):
        victim = build_victim(ModelSpec(name=model), TrainingSpec(), data, torch.device("cpu"))
        for seed in range(5):
            clean = victim.fit(data.x_train, data.y_train, hp, seed)
            clean_mse = clean.metric(data.x_test, data.y_test)
            for eps in (0.05, 0.1, 0.2):
                for name, cls in (("statp", StatP), ("optp", OptP)):
                    start = time.perf_counter()
                    x_p, y_p = cls.for_cell({}, AttackContext.of(data, victim, clean, hp, eps, seed)).poison(data.x_train, data.y_train)
                    seconds = time.perf_counter() - start
                    x_mix, y_mix = np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])
                    for defense in ("none", "trim", "huber", "ransac"):
                        t0 = time.perf_counter()
                        result = DEFENSES[defense](rate=eps, seed=seed).apply(x_mix, y_mix, victim, Candidate.of(victim, hp))
                        fitted = result.fitted or victim.fit(x_mix[result.keep], y_mix[result.keep], hp, seed)
                        row = {"model": model, "seed": seed, "eps": eps, "attack": name, "defense": defense,
                               "clean_mse": clean_mse, "mse": fitted.metric(data.x_test, data.y_test),
                               "attack_seconds": seconds, "defense_seconds": time.perf_counter() - t0}  # fmt: skip
                        rows.append(row)
    with open(out / "regression_diabetes.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    table = defaultdict(list)
    seconds = defaultdict(list)
    for r in rows:
        table[(r["model"], r["eps"], r["attack"], r["defense"])].append(r["mse"] / r["clean_mse"])
        seconds[(r["model"], r["attack"])].append(r["attack_seconds"])
    print("| model | ε | attack | none | TRIM | Huber | RANSAC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in ("ridge", "lasso"):
        for eps in (0.05, 0.1, 0.2):
            for attack in ("statp", "optp"):
                cells = [f"{np.mean(table[(model, eps, attack, d)]):.2f}" for d in ("none", "trim", "huber", "ransac")]
                print(f"| {model} | {eps:g} | {attack} | " + " | ".join(cells) + " |")
    for key, values in sorted(seconds.items()):
        print(f"attack seconds {key}: mean {np.mean(values):.2f}")


if __name__ == "__main__":
    main()
