"""What each attack costs and does at one grid cell of the default audit (groundwork for profiles).

    OMP_NUM_THREADS=2 python examples/benchmarks/profile_costs.py [--eps 0.1] [--rho 1e-3]

mnist5k logistic regression (the default audit's victim), one (ρ, ε, seed 0) cell: each attack's
wall time and the test-accuracy drop after retraining on the poisoned set. Back-gradient is run
at several iteration counts to see how much of its damage a reduced profile keeps.
"""

from __future__ import annotations

import argparse
import time

import torch

from audit.attacks import ATTACKS, AttackContext
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.models import build_victim

SETTINGS = [
    ("label_flip", {"variant": "adversarial"}),
    ("statp", {}),
    ("gradient_canceling", {}),
    ("back_gradient", {"iterations": 5}),
    ("back_gradient", {"iterations": 20}),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rho", type=float, default=1e-3)
    args = parser.parse_args()
    data = load_dataset(DatasetSpec(name="mnist5k"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    hp = {"l2": args.rho}
    clean = victim.fit(data.x_train, data.y_train, hp, 0)
    base = clean.metric(data.x_test, data.y_test)
    print(f"mnist5k logreg ρ={args.rho:g} ε={args.eps:g}: clean test {base:.2f} % (torch threads {torch.get_num_threads()})")
    import numpy as np

    for name, params in SETTINGS:
        ctx = AttackContext.of(data, victim, clean, hp, args.eps, seed=1)
        start = time.perf_counter()
        x_p, y_p = ATTACKS[name].for_cell(dict(params), ctx).poison(data.x_train, data.y_train)
        seconds = time.perf_counter() - start
        poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, 0)
        print(f"{name:20s} {str(params):24s} {seconds:7.1f} s   drop {base - poisoned.metric(data.x_test, data.y_test):6.2f} points")


if __name__ == "__main__":
    main()
