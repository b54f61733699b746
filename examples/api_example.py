"""Use poison-audit as a library: your own torch module and your own data, no YAML.

    python examples/api_example.py

Audits a small MLP on scikit-learn's digits (handed over as a Dataset built from arrays),
then a scikit-learn LogisticRegression on the same data, writes both reports and applies
the CI gate in code.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from audit.config import parse_config
from audit.data import Dataset, split_pool
from audit.grid import run_audit
from audit.report import gate, write_report


def my_data() -> Dataset:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, y_tr, x_va, y_va, x_te, y_te = split_pool(x, digits.target, val=0.2, test=0.2, seed=0)
    d = x.shape[1]
    return Dataset(name="my-digits", task="classification", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va,
                   x_test=x_te, y_test=y_te, lo=np.zeros(d, np.float32), hi=np.ones(d, np.float32), n_classes=10,
                   image_shape=(1, 8, 8))  # fmt: skip


def main() -> None:
    data = my_data()
    config = parse_config(
        {
            "name": "api-digits-mlp",
            "training": {"epochs": 30, "batch_size": 64, "lr": 0.05},
            "candidates": {"l2": [0.0, 1e-3, 1e-2]},
            "budgets": [0.05, 0.2],
            "seeds": [0, 1],
            "device": "auto",
        }
    )
    module = nn.Sequential(nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 10))
    run_dir = run_audit(config, model=module, dataset=data, output_dir="reports")
    print("report:", write_report(run_dir))
    verdict = gate(run_dir, budget=0.05, max_drop=5.0)
    print("gate:", "PASS" if verdict.passed else "FAIL", "-", verdict.message)

    sk_config = config.model_copy(update={"name": "api-digits-sklearn"})
    run_dir = run_audit(sk_config, model=LogisticRegression(max_iter=2000), dataset=data, output_dir="reports")
    print("report:", write_report(run_dir))


if __name__ == "__main__":
    main()
