"""Theorem 2.2 of Wang, Mianjy & Arora (2021): SGD's excess risk under a poisoned oracle stays under its bound."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from audit.maths.sgd_guarantee import _risk_and_grad, constrained_minimum, sgd_guarantee


def _problem(seed=0, n=200, d=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * 0.6 + np.where(y[:, None] == 1, 0.5, -0.5)  # overlapping: a finite minimiser
    return x, y


def test_constrained_minimum_is_the_exact_one_when_the_ball_holds_it():
    x, y = _problem()
    xc = torch.as_tensor(np.hstack([x, np.ones((len(x), 1))]))
    yc = torch.as_tensor(y)

    def f(v):
        risk, grad = _risk_and_grad(torch.as_tensor(v.reshape(-1, 2)), xc, yc)
        return float(risk), grad.numpy().ravel()

    exact = minimize(f, np.zeros(xc.shape[1] * 2), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    w_star = exact.x
    assert constrained_minimum(xc, yc, 2, radius=2 * np.linalg.norm(w_star), tol=1e-10) == pytest.approx(exact.fun, abs=1e-9)
    small = constrained_minimum(xc, yc, 2, radius=0.25 * np.linalg.norm(w_star))
    assert small > exact.fun + 1e-3  # a ball that excludes w* costs risk


@pytest.mark.parametrize("kind", ["clean", "flip", "shift"])
def test_measured_excess_risk_never_exceeds_the_bound(kind):
    x, y = _problem()
    rng = np.random.default_rng(1)
    x_t, y_t = x.copy(), y.copy()
    if kind == "flip":  # regime C: labels flipped with probability 0.2
        flip = rng.random(len(y)) < 0.2
        y_t[flip] = 1 - y_t[flip]
    elif kind == "shift":  # regime B: every point moved against its class, ‖δ‖ = 0.3‖x‖
        direction = np.where(y[:, None] == 1, -1.0, 1.0) * np.ones_like(x) / math.sqrt(x.shape[1])
        x_t = x + 0.3 * np.linalg.norm(x, axis=1, keepdims=True) * direction
    measured, bounds = [], []
    for seed in range(5):
        g = sgd_guarantee(x, y, x_t, y_t, 2, radius=3.0, steps=400, seed=seed)
        assert 0 <= g.measured <= g.bound, g  # F(w̄) − F(w*) ≤ 5D(G + B)/√T + 2DΣ‖ζ_t‖/T
        measured.append(g.measured)
        bounds.append(g.bound)
        if kind == "clean":
            assert g.b == 0.0 and g.zeta_sum == 0.0  # an unpoisoned oracle
        else:
            assert g.zeta_sum > 0 and g.b > 0
    assert np.mean(measured) <= np.mean(bounds)
    if kind == "flip":
        clean = sgd_guarantee(x, y, x, y, 2, radius=3.0, steps=400, seed=0)
        assert np.mean(measured) > clean.measured  # poisoning costs risk, within the bound


def test_cells_of_a_convex_victim_under_a_modifying_attack_carry_the_guarantee(tmp_path):
    from audit.config import parse_config
    from audit.grid.runner import run_audit
    from audit.report import write_report
    from tests.conftest import stored_cells, tiny_config, tiny_n_train

    cfg = tiny_config(attacks=[{"name": "regime_c", "id": "flip", "params": {"variant": "random"}},
                               {"name": "label_flip", "id": "lf", "params": {"variant": "random"}}],
                      candidates={"l2": [0.01]}, budgets=[0.3], seeds=[0, 1])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = stored_cells(run)
    flips = [c for c in cells if c.attack == "flip"]
    assert len(flips) == 2
    for c in flips:
        g = json.loads(c.diagnostics)["sgd_guarantee"]
        assert 0 <= g["measured"] <= g["bound"] and g["zeta_sum"] > 0 and g["steps"] == tiny_n_train()
    assert all("sgd_guarantee" not in json.loads(c.diagnostics) for c in cells if c.attack == "lf")  # injection: no pairing
    html = write_report(run).read_text()
    assert "SGD&#39;s guarantee" in html or "SGD's guarantee" in html
    assert "within SGD" in html and "in 2 of 2 cells" in html
