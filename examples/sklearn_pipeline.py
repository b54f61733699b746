"""Audit a scikit-learn pipeline as you ship it: StandardScaler → LogisticRegression on raw features.

    python examples/sklearn_pipeline.py [--out reports] [--threads 2]

The pipeline is fitted by you (C = 1) on breast_cancer's raw features (scales from 0.001 to
4254). The audit turns it into its exact torch surrogate, so back-gradient, Gradient Canceling
and TGDA attack it beside the label flips and StatP; every retraining refits your whole
pipeline with scikit-learn on the poisoned raw data (the scaler too). Your own C is one of the
candidates (``rho_of``), so the deployed model is among those audited.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit import run_audit
from audit.config import parse_config
from audit.data import Dataset, split_pool
from audit.models.surrogate import rho_of
from audit.report import gate, write_report
from audit.threads import configure_threads


def raw_breast_cancer() -> Dataset:
    x, y = load_breast_cancer(return_X_y=True)
    x_tr, y_tr, x_va, y_va, x_te, y_te = split_pool(x.astype(np.float32), y, val=0.2, test=0.2, seed=0)
    # the feature box: what a point of this data can be (here: the training range of every raw feature)
    return Dataset(name="breast-cancer-raw", task="classification", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va,
                   x_test=x_te, y_test=y_te, lo=x_tr.min(0), hi=x_tr.max(0), n_classes=2)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_threads(args.threads)
    data = raw_breast_cancer()
    shipped = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(data.x_train, data.y_train)
    mine = rho_of(shipped, len(data.y_train))  # C = 1 on 341 points → ρ = 2/341
    config = parse_config({"name": "sklearn-pipeline", "candidates": {"l2": [mine, 0.03, 0.1]}, "budgets": [0.03, 0.1],
                           "seeds": [0, 1, 2], "device": "cpu"})  # fmt: skip
    start = time.perf_counter()
    result = run_audit(config, model=shipped, dataset=data, output_dir=args.out, progress=False)
    print(f"audit: {time.perf_counter() - start:.0f} s")
    print("report:", write_report(result))
    print("recommendation:", result.recommendation["label"], "-", result.recommendation["reason"])
    verdict = gate(result, budget=0.1, max_drop=10.0)
    print("gate:", "PASS" if verdict.passed else "FAIL", "-", verdict.message)


if __name__ == "__main__":
    main()
