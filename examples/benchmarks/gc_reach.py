"""In-box Gradient Canceling on two-class problems: the paper's defaults against a target chosen by the full reach
condition and poisons started at the closest in-box distribution, against the adversarial label flip.

    python examples/benchmarks/gc_reach.py --threads 2        # breast_cancer and MNIST '3' vs '5', ≈ 5 min on 2 cores

For each problem, ρ ∈ --l2 and ε ∈ --budgets (one seed): test-accuracy drop (points) of the victim retrained on the
poisons of

* ``gc``: the battery's Gradient Canceling (target auto by the unbounded τ_ρ(2), sampled start, fixed labels);
* ``gc_box``: ``reach: box`` — the target must pass the box-aware τ and, for two classes, the full condition at
  ε (``audit.maths.reach``: some in-box poison set leaves a relative residual ≤ 0.01);
* ``gc_reach``: ``reach: box`` and ``start: reach`` (the poisons start at the closest in-box distribution);
* ``gc_search`` / ``gc_search_reach`` / ``gc_search_sampled``: ``target: search`` (the auto, box-aware and label-flip
  k·ε targets each attacked, the poisons of lowest attacker-split accuracy kept) as it runs by default (since
  session 12: ``start: reach`` where exact), with ``start: reach`` given, with ``start: sample`` given, and with
  ``labels: choose`` (``gc_search_choose``: the battery's entry ``gradient_canceling_search``);
* ``flip``: the adversarial label flip (ART's, with the victim's losses).

One JSON line per cell, also written to reports/benchmarks/gc_reach.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext, GradientCanceling, LabelFlip
from audit.config import ModelSpec, TrainingSpec
from audit.models import build_victim

sys.path.insert(0, str(Path(__file__).parent))
from gc_transition import problem  # noqa: E402

VARIANTS = {
    "gc": {},
    "gc_box": {"reach": "box"},
    "gc_reach": {"reach": "box", "start": "reach"},
    "gc_search": {"target": "search"},
    "gc_search_reach": {"target": "search", "start": "reach"},
    "gc_search_sampled": {"target": "search", "start": "sample"},
    "gc_search_choose": {"target": "search", "labels": "choose"},  # the battery's gradient_canceling_search entry
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["breast_cancer", "mnist_3_5"])
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.03, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path("reports/benchmarks/gc_reach.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.problems:
        data = problem(name)
        victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
        for l2 in args.l2:
            hp = {"l2": l2}
            clean = victim.fit(data.x_train, data.y_train, hp, args.seed)
            clean_acc = clean.metric(data.x_test, data.y_test)
            for eps in args.budgets:
                row: dict = {"problem": name, "l2": l2, "eps": eps, "clean": clean_acc}
                for variant in args.variants:
                    params = VARIANTS[variant]
                    start = time.perf_counter()
                    attack = GradientCanceling.for_cell(params, AttackContext.of(data, victim, clean, hp, eps, args.seed))
                    x_p, y_p = attack.poison(data.x_train, data.y_train)
                    seconds = time.perf_counter() - start
                    poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, args.seed)
                    diag = attack.diagnostics
                    row[variant] = {"drop": round(clean_acc - poisoned.metric(data.x_test, data.y_test), 2),
                                    "residual": round(diag.relative_residual, 4), "target": diag.origin(), "reach": diag.reach,
                                    "target_test": round(diag.target_test_metric, 2), "seconds": round(seconds, 1)}  # fmt: skip
                flip = LabelFlip(clean.to_art(), budget=eps, n_classes=data.n_classes, seed=args.seed, variant="adversarial")
                x_p, y_p = flip.poison(data.x_train, data.y_train)
                poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, args.seed)
                row["flip"] = {"drop": round(clean_acc - poisoned.metric(data.x_test, data.y_test), 2)}
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
