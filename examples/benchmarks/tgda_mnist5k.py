"""TGDA on mnist5k: time per run, accuracy drop against label flip, and time against ε.

    python examples/benchmarks/tgda_mnist5k.py --models logreg                # ~15 min on 2 CPU cores
    python examples/benchmarks/tgda_mnist5k.py --models mlp cnn --epochs 10   # reduced (see README)
    python examples/benchmarks/tgda_mnist5k.py --models logreg --leader-lr 0.01  # the paper's α as is
    python examples/benchmarks/tgda_mnist5k.py --models logreg --budgets 0.1 --l2 0.01 --attacks tgda --precondition none
    python examples/benchmarks/tgda_mnist5k.py --models mlp --budgets 0.03 --attacks tgda gc gc_choose gc_search label_flip_adversarial

Runs unchanged on CUDA (device "auto"). For each model and budget ε ∈ {0.03, 0.1} (seeds
0, 1, 2 at ε = 0.03 for logreg, the issue's comparison; --seeds to change): TGDA with the
audit's defaults unless overridden, the paper's label flip (random points, y ← 9 − y) and the
adversarial label flip (and with ``--attacks gc gc_choose gc_search``: Gradient Canceling at its paper's
defaults in the feature box, with ``labels: choose``, and with ``target: search`` + ``labels: choose``),
each followed by retraining the victim with its own procedure
(logreg: L-BFGS; MLP/CNN: SGD). One JSON line per run on stdout and in
reports/benchmarks/tgda_mnist5k.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from audit.attacks import TGDA, AttackContext, GradientCanceling, LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.models import build_victim, resolve_device

GC_VARIANTS: dict[str, dict] = {"gc": {}, "gc_choose": {"labels": "choose"}, "gc_search": {"target": "search", "labels": "choose"}}


def run(model: str, eps: float, seed: int, attack: str, args: argparse.Namespace, data, device, cache: dict) -> dict:
    victim = build_victim(ModelSpec(name=model), TrainingSpec(), data, device)
    hp = {"l2": args.l2}
    if (model, seed) not in cache:
        cache[(model, seed)] = victim.fit(data.x_train, data.y_train, hp, seed)
    clean = cache[(model, seed)]
    clean_acc = clean.metric(data.x_test, data.y_test)
    start = time.perf_counter()
    extra: dict = {}
    if attack == "tgda":
        params = {k: v for k, v in {"epochs": args.epochs, "cg_max_iter": args.cg_max_iter, "leader_lr": args.leader_lr,
                                    "generator": args.generator, "precondition": args.precondition}.items() if v is not None}  # fmt: skip
        tgda = TGDA.for_cell(params, AttackContext.of(data, victim, clean, hp, eps, seed))
        x_p, y_p = tgda.poison(data.x_train, data.y_train)
        d = tgda.diagnostics
        if args.save_grid:
            import matplotlib.pyplot as plt

            from audit.report.figures import poison_grid_figure

            k = len(d["source_examples"])
            fig = poison_grid_figure(data.x_train[d["source_examples"]], x_p[:k], data.image_shape, 0.0, 1.0)
            fig.suptitle(f"TGDA against {model}, ε = {eps:g}, seed {seed}", fontsize=8)
            fig.savefig(Path(args.save_grid) / f"tgda_{model}_eps{eps:g}_seed{seed}.png", dpi=90, bbox_inches="tight")
            plt.close(fig)
        extra = {"params": params, "alpha": d["leader_lr"], "loop_seconds": round(d["loop_seconds"], 1),
                 "pretrain_seconds": round(d["pretrain"].get("seconds", 0.0), 1), "pretrain_cached": d["pretrain"].get("cached"),
                 "cg_mean_iterations": round(d["cg_mean_iterations"], 1), "cg_converged": d["cg_converged_fraction"], "cg_median_residual": d["cg_median_residual"],
                 "solver": d["solver"], "max_change": d["max_change"], "mean_change": d["mean_change"],
                 "follower_val_accuracy": [c["val_accuracy"] for c in d["curve"]]}  # fmt: skip
    elif attack in GC_VARIANTS:
        gc = GradientCanceling.for_cell(dict(GC_VARIANTS[attack]), AttackContext.of(data, victim, clean, hp, eps, seed))
        x_p, y_p = gc.poison(data.x_train, data.y_train)
        d = gc.diagnostics
        extra = {"params": GC_VARIANTS[attack], "residual": d.relative_residual, "target": d.origin(), "search_chosen": d.search_chosen}
    else:
        variant = {"label_flip_reverse": {"variant": "random", "mapping": "reverse"}, "label_flip_adversarial": {"variant": "adversarial"}}[attack]
        lf = LabelFlip(clean.to_art(), budget=eps, n_classes=data.n_classes, seed=seed, **variant)
        x_p, y_p = lf.poison(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    poisoned = victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), hp, seed)
    acc = poisoned.metric(data.x_test, data.y_test)
    return {"model": model, "attack": attack, "eps": eps, "seed": seed, "l2": args.l2, "clean": clean_acc, "poisoned": acc,
            "drop": round(clean_acc - acc, 2), "attack_seconds": round(seconds, 1), "device": str(device), **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["logreg", "mlp", "cnn"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.03, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 at ε = 0.03 for logreg, else 0")
    parser.add_argument("--attacks", nargs="+", default=["tgda", "label_flip_reverse", "label_flip_adversarial"])
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--cg-max-iter", type=int, default=None)
    parser.add_argument("--leader-lr", type=float, default=None)
    parser.add_argument("--generator", default=None)
    parser.add_argument("--precondition", choices=["kfac", "none"], default=None, help="TGDA's CG preconditioner (default: kfac)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-grid", default=None, help="folder for PNGs of clean points, poisons and |change|")
    args = parser.parse_args()

    data = load_dataset(DatasetSpec(name="mnist5k"))
    device = resolve_device(args.device)
    out = Path("reports/benchmarks/tgda_mnist5k.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    with out.open("a") as fh:
        for model in args.models:
            for eps in args.budgets:
                seeds = args.seeds or ([0, 1, 2] if model == "logreg" and eps == 0.03 else [0])
                for seed in seeds:
                    for attack in args.attacks:
                        row = run(model, eps, seed, attack, args, data, device, cache)
                        print(json.dumps(row), flush=True)
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()


if __name__ == "__main__":
    main()
