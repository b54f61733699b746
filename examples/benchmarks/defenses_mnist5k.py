"""Filters against label flip and Gradient Canceling on mnist5k logistic regression.

    python examples/benchmarks/defenses_mnist5k.py     # ~3 min on 2 CPU cores

ρ = 1e-3, ε ∈ {0.03, 0.1}, seeds 0–1: test accuracy drop without a defense and with the
loss filter, the influence filter, Sever, ART's activation clustering and spectral
signatures, and DPA (certified accuracy in its diagnostics), plus the share of poisons each
removed and the clean points it threw away. Writes reports/benchmarks/defenses_mnist5k.jsonl.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext, GradientCanceling, LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.defenses import DEFENSES
from audit.models import Candidate, build_victim


def main() -> None:
    torch.set_num_threads(2)
    data = load_dataset(DatasetSpec(name="mnist5k"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    hp = {"l2": 1e-3}
    rows = []
    for seed in (0, 1):
        clean = victim.fit(data.x_train, data.y_train, hp, seed)
        clean_acc = clean.metric(data.x_test, data.y_test)
        for eps in (0.03, 0.1):
            attacks = {
                "label_flip_adversarial": LabelFlip(clean.to_art(), budget=eps, n_classes=10, seed=seed, variant="adversarial"),
                "gradient_canceling": GradientCanceling.for_cell({}, AttackContext.of(data, victim, clean, hp, eps, seed)),
            }
            for name, attack in attacks.items():
                x_p, y_p = attack.poison(data.x_train, data.y_train)
                x_mix, y_mix = np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])
                n = len(data.y_train)
                for defense in ("none", "loss_filter", "influence_filter", "sever", "activation_clustering", "spectral_signature", "dpa"):
                    start = time.perf_counter()
                    result = DEFENSES[defense].for_cell(eps, seed, data).apply(x_mix, y_mix, victim, Candidate.of(victim, hp))
                    if result.fitted is not None:
                        poisoned = result.fitted
                        keep = result.keep if result.keep is not None else np.ones(len(y_mix), bool)
                    else:
                        keep = result.keep
                        poisoned = victim.fit(x_mix[keep], y_mix[keep], hp, seed)
                    rows.append({"seed": seed, "eps": eps, "attack": name, "defense": defense,
                                 "drop": clean_acc - poisoned.metric(data.x_test, data.y_test),
                                 "poisons_removed": float((~keep[n:]).mean()),
                                 "clean_removed": int((~keep[:n]).sum()),
                                 "certified": result.diagnostics.get("certified_accuracy"),
                                 "seconds": time.perf_counter() - start})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "defenses_mnist5k.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    table = defaultdict(list)
    for r in rows:
        table[(r["attack"], r["eps"], r["defense"])].append(r)
    print("| attack | ε | defense | drop (points) | poisons removed | clean removed | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (attack, eps, defense), rs in table.items():
        print(f"| {attack} | {eps:g} | {defense} | {np.mean([r['drop'] for r in rs]):.2f} | "
              f"{100 * np.mean([r['poisons_removed'] for r in rs]):.0f}% | {np.mean([r['clean_removed'] for r in rs]):.0f} | "
              f"{np.mean([r['seconds'] for r in rs]):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
