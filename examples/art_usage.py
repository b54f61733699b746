"""poison-audit from ART: every attack on your own ART estimators, then ART's own detector on the poisons.

    python examples/art_usage.py            # ~1 min on 2 CPU cores

The calls are those of the README's "Using it from ART" section: a PyTorchClassifier MLP
with preprocessing and clip_values, a CNN on N×C×H×W images with one-hot labels, a
scikit-learn LogisticRegression through ART, a PyTorchRegressor; then ART's
ActivationDefence on the label-flip poisons, and audit.run_audit for the whole audit.
"""

from __future__ import annotations

import numpy as np
import torch
from art.defences.detector.poison import ActivationDefence
from art.estimators.classification import PyTorchClassifier
from art.estimators.classification.scikitlearn import ScikitlearnLogisticRegression
from art.estimators.regression import PyTorchRegressor
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

import audit
from audit.attacks import TGDA, BackGradient, GradientCanceling, LabelFlip, OptP, StatP
from audit.config import parse_config
from audit.data import Dataset, split_pool
from audit.attacks.base import torch_module
from audit.maths.poisonability import gradpc
from audit.report import write_report


def digits() -> Dataset:
    raw = load_digits()
    x = (raw.data / 16.0).astype(np.float32)
    x_tr, y_tr, x_va, y_va, x_te, y_te = split_pool(x, raw.target, val=0.2, test=0.2, seed=0)
    return Dataset(name="digits", task="classification", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te,
                   y_test=y_te, lo=np.zeros(64, np.float32), hi=np.ones(64, np.float32), n_classes=10, image_shape=(1, 8, 8))  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    d = digits()
    x, y, x_val, y_val = d.x_train, d.y_train, d.x_val, d.y_val

    # 1. an MLP with preprocessing and clip_values: attacks differentiate through the preprocessing
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    clf = PyTorchClassifier(mlp, nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=10, clip_values=(0.0, 1.0),
                            preprocessing=(0.5, 0.25), optimizer=torch.optim.Adam(mlp.parameters(), lr=3e-3))  # fmt: skip
    clf.fit(x, y, nb_epochs=30, batch_size=64, verbose=False)

    x_lf, y_lf = LabelFlip(clf, budget=0.1, variant="adversarial", seed=0).poison(x, y)  # n_classes from nb_classes
    bg = BackGradient(clf, x_val=x_val, y_val=y_val, budget=0.02, l2=1e-3, seed=0, iterations=20)
    x_bg, y_bg = bg.poison(x, y)  # inside clip_values (the default box)
    print(f"back-gradient: {len(x_bg)} poisons in [{x_bg.min():.2f}, {x_bg.max():.2f}], objective "
          f"{bg.diagnostics.objective_initial:.3f} → {bg.diagnostics.objective_final:.3f}")  # fmt: skip

    # Gradient Canceling towards a GradPC target of the deployed model (Lu, Kamath & Yu 2023);
    # the target is the model with corrupted weights (GC puts it behind the estimator's preprocessing)
    target, _ = gradpc(torch_module(clf, "GradPC"), x_val, y_val, "classification", eps_w=0.5)
    gc = GradientCanceling(clf, target_model=target, budget=0.1, l2=1e-3, seed=0, epochs=100)
    x_gc, y_gc = gc.poison(x, y)
    # a residual near 1 says the target is out of reach at this ε (its threshold τ exceeds ε; the audit's
    # gradient_canceling with target: auto picks a reachable one)
    print(f"gradient canceling: {len(x_gc)} poisons, relative residual ‖g(χ)‖/‖g(μ)‖ = {gc.diagnostics.relative_residual:.3f}")

    # 2. a CNN on N×C×H×W images with one-hot labels: poisons come back in the same formats
    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 4 * 4, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(nn.functional.max_pool2d(torch.relu(self.conv(t)), 2), 1))

    cnn_model = CNN()
    cnn = PyTorchClassifier(cnn_model, nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0),
                            optimizer=torch.optim.Adam(cnn_model.parameters(), lr=3e-3))  # fmt: skip
    x_img, y_hot = x.reshape(-1, 1, 8, 8), np.eye(10, dtype=np.float32)[y]
    cnn.fit(x_img, y_hot, nb_epochs=10, batch_size=64, verbose=False)
    tgda = TGDA(cnn, x_val=x_val.reshape(-1, 1, 8, 8), y_val=np.eye(10, dtype=np.float32)[y_val], budget=0.03, l2=1e-3, seed=0,
                epochs=5, pretrain_epochs=5)  # fmt: skip
    x_tg, y_tg = tgda.poison(x_img, y_hot)
    print(f"TGDA on the CNN: poisons {x_tg.shape}, labels {y_tg.shape} (one-hot), max change {tgda.diagnostics.max_change:.3f}")
    poisoned_cnn = tgda.poison_estimator(x_img, y_hot, nb_epochs=5, batch_size=64)  # ART's PoisoningAttackTransformer
    print(
        f"  the CNN retrained on the poisoned set: {100 * np.mean(poisoned_cnn.predict(d.x_test.reshape(-1, 1, 8, 8)).argmax(1) == d.y_test):.1f} %"
    )

    # 3. scikit-learn through ART: black-box attacks only (they query predict)
    sk = ScikitlearnLogisticRegression(LogisticRegression(max_iter=500).fit(x, y), clip_values=(0.0, 1.0))
    x_st, y_st = StatP(sk, budget=0.05, seed=0).poison(x, y)  # task, classes and box from the estimator

    # 4. regression: a PyTorchRegressor, and OptP's own linear model
    rx, ry = load_diabetes(return_X_y=True)
    rx = ((rx - rx.min(0)) / (rx.max(0) - rx.min(0))).astype(np.float32)
    ry = ((ry - ry.min()) / (ry.max() - ry.min())).astype(np.float32)
    lin = nn.Linear(10, 1)
    reg = PyTorchRegressor(lin, nn.MSELoss(), input_shape=(10,), clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(lin.parameters(), lr=0.1))
    reg.fit(rx[:300], ry[:300], nb_epochs=50, batch_size=32, verbose=False)
    x_op, y_op = OptP(reg, budget=0.05, x_val=rx[300:], y_val=ry[300:], l2=1e-3, seed=0, iterations=20).poison(rx[:300], ry[:300])
    x_sp, y_sp = StatP(reg, budget=0.05, y_range=(0.0, 1.0), seed=0).poison(rx[:300], ry[:300])
    print(f"regression: OptP {x_op.shape}, StatP {x_sp.shape}")

    # 5. ART's own detector on the audit's poisons (designed for backdoors: expect a weak score here)
    x_mix, y_mix = np.concatenate([x, x_lf]), np.concatenate([y, y_lf])
    detector = ActivationDefence(clf, x_mix, np.eye(10, dtype=np.float32)[y_mix])
    _, is_clean = detector.detect_poison(nb_clusters=2, reduce="PCA", nb_dims=10)
    flagged = 1 - np.asarray(is_clean)
    print(f"ActivationDefence flagged {100 * flagged[len(x):].mean():.0f} % of the label-flip poisons and "
          f"{100 * flagged[: len(x)].mean():.0f} % of the clean points")  # fmt: skip

    # 6. the whole audit of the ART estimator, as a result object
    config = parse_config({"name": "art-digits", "training": {"epochs": 30, "batch_size": 64}, "candidates": {"l2": [0.0, 1e-3]},
                           "budgets": [0.05], "attacks": [{"name": "label_flip", "id": "lf", "params": {"variant": "adversarial"}}]})  # fmt: skip
    result = audit.run_audit(config, model=clf, dataset=d, output_dir="reports", progress=False)
    write_report(result)
    print(f"recommended: {result.recommendation['label']} — worst-case drop {result.recommendation['worst_case_drop']}")
    print(f"your model as handed over: {result.summary['deployed_test_metric']:.1f} % test accuracy")
    x_cell, y_cell = result.poisons("lf", 0.05)
    print(f"poisons of the recommended candidate's label-flip cell: {x_cell.shape}; report: {result / 'report.html'}")


if __name__ == "__main__":
    main()
