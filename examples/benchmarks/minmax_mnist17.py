"""The min-max attack and the certified bound on MNIST '1' vs '7' (Steinhardt et al. 2017's task).

    OMP_NUM_THREADS=2 python examples/benchmarks/minmax_mnist17.py [--classes 1 7] [--eps 0.03 0.1] [--rho 1e-3] [--bound-rounds 300]

Logistic regression (L-BFGS), one seed. For each budget: the adversarial label flip (the
strongest non-adaptive flip) and the min-max attack against the oracle sphere + slab region,
each retrained with no defense and behind the oracle ``sphere_slab`` defense; the test drop,
the share of poisons the defense removed, the regularised clean training loss L_c(θ̂) +
(1 + ε)(ρ/2)‖Ŵ‖² after retraining, and the min-max run's certified bound U* (descent run for
``--bound-rounds``). U* bounds that loss for poisons inside the region *with every clean point
kept* — the rows without a defense for min-max; the sanitiser also drops clean points, which
the bound does not cover. One JSON line
per row on stdout and in reports/benchmarks/minmax_mnist17.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext, LabelFlip, MinMax
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.defenses import DEFENSES
from audit.maths.certificate import softmax_loss
from audit.models import Candidate, build_victim


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="*", default=[1, 7], help="class subset of mnist5k (none: all ten)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.1])
    parser.add_argument("--rho", type=float, default=1e-3)
    parser.add_argument("--bound-rounds", type=int, default=300, help="rounds of the descent for the certified bound")
    args = parser.parse_args()
    data = load_dataset(DatasetSpec(name="mnist5k", classes=args.classes or None))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    hp = {"l2": args.rho}
    clean = victim.fit(data.x_train, data.y_train, hp, 0)
    base = clean.metric(data.x_test, data.y_test)
    n = len(data.y_train)
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    print(f"mnist5k classes {args.classes or 'all'}: {n} training points, clean test {base:.2f} %, torch threads {torch.get_num_threads()}")
    for eps in args.eps:
        ctx = AttackContext.of(data, victim, clean, hp, eps, 0)
        attacks = {
            "label_flip_adversarial": LabelFlip.for_cell({"variant": "adversarial"}, ctx),
            "minmax": MinMax.for_cell({"bound_rounds": args.bound_rounds}, ctx),
        }
        for name, attack in attacks.items():
            start = time.perf_counter()
            x_p, y_p = attack.poison(data.x_train, data.y_train)
            seconds = time.perf_counter() - start
            x_mix, y_mix = np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])
            for defense in ("none", "sphere_slab"):
                keep = DEFENSES[defense].for_cell(eps, 0, data, {}).apply(x_mix, y_mix, victim, Candidate.of(victim, hp)).keep
                poisoned = victim.fit(x_mix[keep], y_mix[keep], hp, 0)
                w = poisoned.module.linear.weight.detach().double().numpy()
                b = poisoned.module.linear.bias.detach().double().numpy()
                clean_loss = softmax_loss(w, b, data.x_train.astype(np.float64), data.y_train).mean()
                row = {"eps": eps, "attack": name, "defense": defense, "attack_seconds": round(seconds, 2),
                       "drop": round(base - poisoned.metric(data.x_test, data.y_test), 2),
                       "poisons_removed": round(float((~keep[n:]).mean()), 3), "clean_removed": int((~keep[:n]).sum()),
                       "clean_loss_after": round(float(clean_loss + (1 + len(y_p) / n) * 0.5 * args.rho * np.sum(w**2)), 4)}  # fmt: skip
                if name == "minmax":
                    row["certified_bound"] = round(float(attack.diagnostics.bound), 4)
                print(json.dumps(row), flush=True)
                with open(out / "minmax_mnist17.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
