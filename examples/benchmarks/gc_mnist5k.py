"""Gradient Canceling on mnist5k: time, accuracy drop, and the comparison with label flip.

    python examples/benchmarks/gc_mnist5k.py                # everything (~10 min on 2 CPU cores)
    python examples/benchmarks/gc_mnist5k.py --only timing  # the 60-second target alone

Runs unchanged on CUDA (device "auto"). For each model (logreg; an MLP of --mlp-width) and
budget ε ∈ {0.03, 0.1, 1}: GC with the audit's defaults (auto target, lr 0.5, 1000 epochs,
momentum 0.9, cosine) inside the feature box [0, 1] and without it (the paper's setting),
and the adversarial label flip, each followed by retraining with the victim's procedure.
Prints one JSON line per run and writes them to reports/benchmarks/gc_mnist5k.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from audit.attacks import AttackContext, GradientCanceling, LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.models import build_victim, resolve_device


def run(model: str, eps: float, attack: str, box: str, args: argparse.Namespace, data, device) -> dict:
    spec = ModelSpec(name=model, width=args.mlp_width if model == "mlp" else None)
    victim = build_victim(spec, TrainingSpec(), data, device)
    hp = {"l2": args.l2}
    clean = victim.fit(data.x_train, data.y_train, hp, args.seed)
    clean_acc = clean.metric(data.x_test, data.y_test)
    start = time.perf_counter()
    if attack == "gc":
        gc = GradientCanceling.for_cell({"epochs": args.epochs, "box": box}, AttackContext.of(data, victim, clean, hp, eps, args.seed))
        x_p, y_p = gc.poison(data.x_train, data.y_train)
        diag = gc.diagnostics
        extra = {"target_test": diag["target_test_metric"], "relative_residual": diag["relative_residual"],
                 "target": {k: diag.get(k) for k in ("eps_w", "scale")}}  # fmt: skip
    else:
        lf = LabelFlip(clean.to_art(), budget=eps, n_classes=data.n_classes, seed=args.seed, variant="adversarial")
        x_p, y_p = lf.poison(data.x_train, data.y_train)
        extra = {}
    seconds = time.perf_counter() - start
    poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, args.seed)
    acc = poisoned.metric(data.x_test, data.y_test)
    return {"model": model, "attack": attack, "box": box if attack == "gc" else "-", "eps": eps, "l2": args.l2,
            "clean": clean_acc, "poisoned": acc, "drop": clean_acc - acc, "attack_seconds": round(seconds, 2),
            "device": str(device), **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["timing", "table"], default=None)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--mlp-width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = resolve_device("auto")
    data = load_dataset(DatasetSpec(name="mnist5k"))
    out = Path("reports/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    plan = [("logreg", 0.1, "gc", "data")]
    if args.only != "timing":
        plan = []
        for model in ("logreg", "mlp"):
            for eps in (0.03, 0.1, 1.0):
                plan += [(model, eps, "gc", "data"), (model, eps, "gc", "none"), (model, eps, "label_flip", "-")]
    with open(out / "gc_mnist5k.jsonl", "a") as fh:
        for model, eps, attack, box in plan:
            row = run(model, eps, attack, box, args, data, device)
            print(json.dumps(row), flush=True)
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
