"""Width under attack (Wang, Mianjy & Arora 2021, §3 and §5): test accuracy of the two-layer ReLU
network (``relu2``) against its width, clean and after poisoned training, in the three regimes.

    python examples/benchmarks/width_mnist5k.py                  # 8 widths 16…16384, 3 seeds, 2 workers (~25 min, 2 cores)
    python examples/benchmarks/width_mnist5k.py --workers 1 --seeds 0
    python examples/benchmarks/width_mnist5k.py --device cuda    # on a GPU
    python examples/benchmarks/width_mnist5k.py --smoke          # 2 widths, 1 seed (a test runs this)

Task: mnist5k relabelled '0'–'4' (class 0) vs '5'–'9' (class 1), the audit's split (3000 / 1000 /
1000). Model: ``relu2`` with the zoo's training (plain SGD, one sample a step, one pass, lr 1.0).
Per seed and width: train the clean model; for each regime and budget craft the poisoned training
set against it (white-box, :mod:`audit.attacks.regimes`) and retrain from scratch with the same
seed; score both on the test split. Regimes and budgets: A — a fraction ε ∈ {5 %, 20 %} of the points
moved anywhere in the box (PGD, 20 steps); B — every point moved by ‖δ‖ ≤ ε‖x‖, ε ∈ {0.1, 0.3} (PGD,
10 steps); C — each label flipped with probability β ∈ {0.1, 0.3} (random). Writes
``width_mnist5k.json`` (every number, the machine, the seconds) and ``width_mnist5k.png`` (accuracy
vs width, log scale, mean ± 1 standard error over seeds) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONDITIONS = [("regime_a", 0.05), ("regime_a", 0.2), ("regime_b", 0.1), ("regime_b", 0.3), ("regime_c", 0.1), ("regime_c", 0.3)]
PARAMS = {"regime_a": {"steps": 20}, "regime_b": {"steps": 10}, "regime_c": {"variant": "random"}}


def binary_mnist() -> object:
    """mnist5k with labels 0 for '0'–'4' and 1 for '5'–'9' (the audit's split of mnist5k)."""
    from audit.data import DatasetSpec, load_dataset

    d = load_dataset(DatasetSpec(name="mnist5k"))
    relabel = {f"y_{s}": (getattr(d, f"y_{s}") >= 5).astype(np.int64) for s in ("train", "val", "test")}
    return dataclasses.replace(d, name="mnist5k 0-4 vs 5-9", n_classes=2, **relabel)


def one_width(job: tuple[int, int, str, list]) -> list[dict]:
    """Every condition at one (seed, width): clean and poisoned test accuracy, seconds."""
    seed, width, device_name, conditions = job
    import torch

    torch.set_num_threads(int(os.environ.get("WIDTH_THREADS", "1")))
    from audit.attacks import ATTACKS, AttackContext
    from audit.config import ModelSpec, TrainingSpec
    from audit.grid.store import derive_seed
    from audit.models import build_victim

    data = binary_mnist()
    device = torch.device(device_name)
    victim = build_victim(ModelSpec(name="relu2", width=width), TrainingSpec(), data, device)
    t0 = time.perf_counter()
    clean = victim.fit(data.x_train, data.y_train, {}, seed)
    rows = [{"seed": seed, "width": width, "attack": "clean", "budget": 0.0, "test": clean.metric(data.x_test, data.y_test),
             "val": clean.metric(data.x_val, data.y_val), "seconds": time.perf_counter() - t0}]  # fmt: skip
    for name, budget in conditions:
        t0 = time.perf_counter()
        ctx = AttackContext.of(data, victim, clean, {}, budget, derive_seed(seed, str(width), name, budget))
        attack = ATTACKS[name].for_cell(dict(PARAMS[name]), ctx)
        x_p, y_p = attack.poison(data.x_train, data.y_train)
        poisoned = victim.fit(x_p, y_p, {}, seed)
        rows.append({"seed": seed, "width": width, "attack": name, "budget": budget, "test": poisoned.metric(data.x_test, data.y_test),
                     "val": poisoned.metric(data.x_val, data.y_val), "seconds": time.perf_counter() - t0,
                     "n_modified": attack.diagnostics.n_modified, "overall_delta": attack.diagnostics.overall_delta})  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, standard error and seeds per (attack, budget, width)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["budget"], r["width"]), []).append(r["test"])
    out = []
    for (attack, budget, width), values in sorted(groups.items()):
        se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        out.append({"attack": attack, "budget": budget, "width": width, "test_mean": float(np.mean(values)), "test_se": se, "seeds": len(values)})
    return out


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    clean = [s for s in summary if s["attack"] == "clean"]
    for ax, regime, title in zip(axes, ("regime_a", "regime_b", "regime_c"),
                                 ("A: few points, unbounded (ε = share moved)", "B: every point, ‖δ‖ ≤ ε‖x‖", "C: labels flipped, β = ε")):  # fmt: skip
        series = [("clean", 0.0, "-", "o")] + [(regime, b, ls, m) for (a, b), ls, m in zip([c for c in CONDITIONS if c[0] == regime], ("--", ":"), ("s", "^"))]
        for attack, budget, ls, marker in series:
            pts = clean if attack == "clean" else [s for s in summary if s["attack"] == attack and s["budget"] == budget]
            if not pts:
                continue
            w = [p["width"] for p in pts]
            m = np.array([p["test_mean"] for p in pts])
            e = np.array([p["test_se"] for p in pts])
            label = "clean" if attack == "clean" else f"ε = {budget:g}"
            ax.plot(w, m, ls=ls, marker=marker, ms=4, color="black", label=label)
            ax.fill_between(w, m - e, m + e, color="0.8", alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("width m")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    axes[0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="default: 8 log-spaced widths 16…16384")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="processes (each at WIDTH_THREADS torch threads, default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="widths 16 and 32, seed 0, one budget per regime")
    parser.add_argument("--out", default=str(REPO / "examples" / "benchmarks"))
    args = parser.parse_args()
    widths = args.widths or [int(round(w)) for w in np.geomspace(16, 16384, 8)]
    conditions = CONDITIONS
    if args.smoke:
        widths, args.seeds, conditions = [16, 32], [0], [c for c in CONDITIONS if c[1] in (0.05, 0.1)]
    # the widest first, across seeds: the 16384-wide jobs are ~80 % of the compute, so they must not queue behind each other last
    jobs = [(seed, width, args.device, conditions) for width in sorted(widths, reverse=True) for seed in args.seeds]
    start = time.perf_counter()
    rows: list[dict] = []
    if args.workers > 1 and args.device == "cpu":
        import multiprocessing

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(one_width, jobs):
                rows += part
    else:
        for job in jobs:
            rows += one_width(job)
    wall = time.perf_counter() - start
    summary = summarise(rows)
    import torch

    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "width_mnist5k_smoke" if args.smoke else "width_mnist5k"
    record = {"machine": machine, "device": args.device, "workers": args.workers, "threads_per_worker": int(os.environ.get("WIDTH_THREADS", "1")),
              "wall_seconds": wall, "widths": widths, "seeds": args.seeds, "conditions": conditions, "params": PARAMS,
              "summary": summary, "rows": rows}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    figure(summary, out / f"{name}.png")
    print(f"{len(rows)} trainings in {wall:.0f} s on {machine}; {out / (name + '.json')}")
    for s in summary:
        print(f"{s['attack']:9s} ε={s['budget']:<5g} m={s['width']:<6d} test {s['test_mean']:.2f} ± {s['test_se']:.2f}")


if __name__ == "__main__":
    main()
