"""Back-gradient or Gradient Canceling against a scikit-learn pipeline whose scaler is refit on the poisoned data (issue 31).

StandardScaler → LogisticRegression on breast_cancer's **raw** features (examples/sklearn_pipeline.py's
split), ρ = 0.03, ε = 10 %, back-gradient (``--attack``, default; implicit hypergradient, line search) or
Gradient Canceling at its paper settings, seeds 0–2, no defense. Three attackers, same split, same seeds:

- ``refit``: the default — the attack models the scaler refit on D_tr ∪ D_p (``refit_scalers: true``);
- ``fixed``: the scaler held at its clean fit (``refit_scalers: false``, the attack before);
- ``standardised``: the same model on data standardised once (no scaler in the pipeline) — what an
  attacker does when the victim's features do not move with the poisons.

Every retraining is the user's pipeline refit by scikit-learn. Printed: test accuracy drop per seed.

    OMP_NUM_THREADS=2 python examples/benchmarks/pipeline_refit.py [--mode refit fixed standardised] [--scaler standard|minmax]
        [--attack back_gradient|gradient_canceling]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from audit import run_audit
from audit.config import parse_config
from audit.data import Dataset
from audit.grid.store import stored_cells
from audit.threads import configure_threads
from examples.sklearn_pipeline import raw_breast_cancer

SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler}


def standardised(data: Dataset) -> Dataset:
    """``data`` scaled once with its training split's mean and spread (the box scaled with it)."""
    mean, std = data.x_train.mean(0), data.x_train.std(0)
    std[std == 0] = 1
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return Dataset(name="breast-cancer-standardised", task="classification", x_train=scale(data.x_train), y_train=data.y_train,
                   x_val=scale(data.x_val), y_val=data.y_val, x_test=scale(data.x_test), y_test=data.y_test,
                   lo=scale(data.lo), hi=scale(data.hi), n_classes=2)  # fmt: skip


def run(mode: str, scaler: str, out: str, attack: str = "back_gradient") -> dict:
    data = raw_breast_cancer()
    steps = [] if mode == "standardised" else [SCALERS[scaler]()]
    model = make_pipeline(*steps, LogisticRegression(max_iter=5000))
    if mode == "standardised":
        data = standardised(data)
    config = parse_config({"name": f"refit-{mode}", "candidates": {"l2": [0.03]}, "budgets": [0.1], "seeds": [0, 1, 2], "device": "cpu",
                           "profile": "paper", "splits": 1, "confirm": False,
                           "attacks": [{"name": attack, "id": "a", "params": {"refit_scalers": mode == "refit"}}]})  # fmt: skip
    start = time.perf_counter()
    result = run_audit(config, model=model, dataset=data, output_dir=out, progress=False)
    seconds = time.perf_counter() - start
    cells = sorted(stored_cells(result.run_dir), key=lambda c: c.seed)
    drops = [round(c.clean_test - c.poisoned_test, 2) for c in cells if c.status == "ok"]
    return {"attack": attack, "mode": mode, "scaler": scaler, "drops": drops, "mean": round(float(np.mean(drops)), 2), "seconds": round(seconds, 1),
            "clean": round(float(cells[0].clean_test), 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", nargs="+", default=["refit", "fixed", "standardised"])
    parser.add_argument("--scaler", default="standard", choices=list(SCALERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attack", default="back_gradient", choices=["back_gradient", "gradient_canceling"])
    args = parser.parse_args()
    configure_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        for mode in args.mode:
            print(json.dumps(run(mode, args.scaler, out, args.attack)), flush=True)


if __name__ == "__main__":
    main()
