"""λ under attack on MNIST '0' vs '8': the shape of carnerero-cano-2021 Fig. 2 (a, d).

    python examples/benchmarks/minimax_mnist08.py                 # examples/mnist08_minimax.yaml, ~35 min per seed
    python examples/benchmarks/minimax_mnist08.py --seeds 0 1 2   # more repetitions
    python examples/benchmarks/minimax_mnist08.py --time-only     # seconds per outer iteration only

Runs the audit of ``examples/mnist08_minimax.yaml`` (resumable: rerun to continue) into
``reports/mnist08_minimax/``, writes its HTML report, then ``fig2.png`` (test error, λ and
‖w‖² against the poisoning fraction per defender policy) and ``fig2.json`` / ``fig2.md`` (the
numbers) next to it. The timing measures one outer iteration of the back-gradient attack
(one RMD pass over all 85 poisons, T = 150) and of the minimax (two passes), after one
warm-up iteration, on this machine with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def time_iterations(repeats: int = 5) -> dict[str, float]:
    """Seconds per outer iteration at ε = 16.6 % (85 poisons on 512 points), T = 150."""
    import torch

    from audit.attacks import BackGradient
    from audit.config import load_config
    from audit.data import load_dataset
    from audit.models import build_victim

    cfg = load_config(REPO / "examples" / "mnist08_minimax.yaml")
    data = load_dataset(cfg.dataset)
    victim = build_victim(cfg.model, cfg.training, data, torch.device("cpu"))
    clean = victim.fit(data.x_train, data.y_train, {"l2": 1e-3}, 0)
    out = {"threads": torch.get_num_threads()}
    for name, extra in (("attack", {}), ("minimax", {"learn_l2": True})):
        times = []
        for iterations in (1, 1 + repeats):  # the difference removes set-up and the warm-up iteration
            attack = BackGradient(clean.module, x_val=data.x_val, y_val=data.y_val, budget=0.166, task="classification",
                                  n_classes=2, l2=1e-3, box=(data.lo, data.hi), seed=0, iterations=iterations, restarts=0, **extra)  # fmt: skip
            start = time.perf_counter()
            attack.poison(data.x_train, data.y_train)
            times.append(time.perf_counter() - start)
        out[f"{name}_seconds_per_iteration"] = (times[1] - times[0]) / repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", default=str(REPO / "reports"))
    parser.add_argument("--time-only", action="store_true")
    args = parser.parse_args()
    if args.time_only:
        print(json.dumps(time_iterations()))
        return

    from audit.report.analysis import analyse
    from audit.config import load_config
    from audit.report.figures import policy_figure
    from audit.report import write_report
    from audit.grid.runner import run_audit
    from audit.report.sections import policy_series

    cfg = load_config(REPO / "examples" / "mnist08_minimax.yaml")
    if args.seeds:
        cfg = cfg.model_copy(update={"seeds": args.seeds})
    start = time.perf_counter()
    run_dir = run_audit(cfg, output_dir=args.out, progress=True)
    write_report(run_dir)
    a = analyse(run_dir)
    series = policy_series(a)
    assert series is not None, "the minimax stage left no results"
    fig = policy_figure(series["error"], series["lam"], series["norm"], "error (%)")
    fig.suptitle("MNIST '0' vs '8', logistic regression: back-gradient poisoning against four λ policies "
                 f"({len(cfg.seeds)} seeds)", fontsize=9, y=1.03)  # fmt: skip
    fig.savefig(run_dir / "fig2.png", dpi=110, bbox_inches="tight")
    per_iteration = [json.loads(c.diagnostics)["attack"].get("seconds_per_iteration") for c in a.cells if c.status == "ok"]
    minimax_iter = [r.diagnostics.get("seconds_per_iteration") for r in a.policies if r.policy == "rmd" and r.budget > 0]
    numbers = {
        "seeds": cfg.seeds,
        "budgets": [0.0, *cfg.budgets],
        "error": series["error"],
        "error_std": series["error_std"],
        "lambda": series["lam"],
        "rho": series["l2"],
        "norm_w2": series["norm"],
        "attack_seconds_per_iteration_mean": float(np.mean([t for t in per_iteration if t])),
        "minimax_seconds_per_iteration_mean": float(np.mean([t for t in minimax_iter if t])) if minimax_iter else None,
        "wall_seconds_this_call": time.perf_counter() - start,
    }
    (run_dir / "fig2.json").write_text(json.dumps(numbers, indent=1, default=str))
    budgets = numbers["budgets"]
    lines = ["| policy | " + " | ".join(f"{100 * b:.1f} %" for b in budgets) + " |",
             "| --- |" + " --- |" * len(budgets)]  # fmt: skip
    for label, points in series["error"].items():
        lines.append(f"| {label} | " + " | ".join(f"{points[b]:.2f}" if b in points else "–" for b in budgets) + " |")
    for label, points in series["lam"].items():
        lines.append(f"| λ of {label} | " + " | ".join(f"{points[b]:.2f}" if b in points else "–" for b in budgets) + " |")
    for label, points in series["norm"].items():
        lines.append(f"| ‖w‖² of {label} | " + " | ".join(f"{points[b]:.3g}" if b in points else "–" for b in budgets) + " |")
    (run_dir / "fig2.md").write_text("Test error (%) over seeds " + str(cfg.seeds) + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({k: numbers[k] for k in ("attack_seconds_per_iteration_mean", "minimax_seconds_per_iteration_mean",
                                             "wall_seconds_this_call")}))  # fmt: skip


if __name__ == "__main__":
    main()
