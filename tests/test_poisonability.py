import math

import numpy as np
import pytest
import torch
from torch import nn

from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.maths.poisonability import (
    eps_upper,
    gradpc,
    kappa,
    margin_term,
    scale_output_layer,
    scale_to_budget,
    tau_over_scalings,
    tau_rho,
    thresholds,
)  # fmt: skip
from audit.models import build_victim
from audit.models.zoo import MLP, LogReg

CPU = torch.device("cpu")


def test_kappa_values():
    assert kappa(2) == pytest.approx(0.2784645427610738, rel=1e-12)  # W(1/e)
    for c in (2, 3, 10, 100):
        k = kappa(c)
        assert k * math.exp(k) == pytest.approx((c - 1) / math.e, rel=1e-12)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_lambert_bound_is_approached_but_not_beaten(c):
    """eq. (18)/(A.8): ⟨h, p − y⟩ ≥ −W((c−1)/e) for every logit vector h and label y."""
    rng = np.random.default_rng(c)
    h = rng.normal(scale=rng.uniform(0.1, 10, size=(200_000, 1)), size=(200_000, c))
    y = rng.integers(0, c, size=200_000)
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    values = (h * p).sum(1) - h[np.arange(len(y)), y]
    assert values.min() >= -kappa(c) - 1e-12
    # the infimum: all other logits at the same offset t* below/above h_y (A.11)
    ts = np.linspace(-5, 5, 200_001)
    inner = ts * np.exp(ts) / (1 / (c - 1) + np.exp(ts))
    t_star = ts[inner.argmin()]
    h_star = np.full(c, t_star)
    h_star[0] = 0.0
    p_star = np.exp(h_star) / np.exp(h_star).sum()
    value = float(h_star @ p_star - h_star[0])
    assert value == pytest.approx(-kappa(c), abs=1e-8)


def test_margin_term_equals_inner_product_with_the_gradient():
    """a = E⟨h, p − y⟩ is ⟨θ, ∇θ mean loss⟩ for a linear model with bias (homogeneous coordinates)."""
    torch.manual_seed(0)
    model = LogReg(5, 4).double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 4, (50,))
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    inner = sum(float((p * g).sum()) for p, g in zip(model.parameters(), grads))
    assert margin_term(model, x, y) == pytest.approx(inner, rel=1e-10)


def test_hand_computable_tau():
    """One point x = (1, 0), label 0, target W = [[0, 0], [t, 0]] (no bias): h = (0, t)."""
    model = nn.Linear(2, 2, bias=False)
    t = 2.0
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [t, 0.0]]))
    x, y = np.array([[1.0, 0.0]], np.float32), np.array([0])
    p1 = math.exp(t) / (1 + math.exp(t))
    a = t * p1  # ⟨h, p − y⟩ = 0·(p0 − 1) + t·p1
    th = thresholds(model, x, y, "classification")
    assert th.a == pytest.approx(a, rel=1e-6)
    assert th.tau_2 == pytest.approx(a / 0.2784645427610738, rel=1e-6)
    assert th.tau_c == th.tau_2 and th.n_classes == 2 and th.condition.startswith("exact")


def test_tau_rho_equals_tau_at_rho_zero_and_reachability_cases():
    d = load_dataset(DatasetSpec(name="wine"))
    model = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=50), d, CPU).fit(d.x_train, d.y_train, {}, 0).module
    target = scale_output_layer(model, -0.5)
    th = thresholds(target, d.x_train, d.y_train, "classification", l2=0.0)
    assert th.tau_rho_2 == pytest.approx(th.tau_2) and th.tau_rho_c == pytest.approx(th.tau_c)
    assert th.tau_c < th.tau_2  # κ_3 > κ_2: the multiclass condition is the weaker one
    assert "necessary" in th.condition
    k = kappa(2)
    assert tau_rho(0.1, 0.05, k) == pytest.approx(0.15 / (k - 0.05))
    assert tau_rho(0.1, k, k) is None and tau_rho(0.1, 2 * k, k) is None  # a + r > 0, r ≥ κ: unreachable
    assert tau_rho(-0.5, 0.4, k) == 0.0 and eps_upper(-0.5, 0.4, k) == pytest.approx(0.1 / (0.4 - k))


def test_clean_minimiser_has_tau_rho_zero():
    """At the clean minimiser g(μ) + ρW = 0, so a + ρ‖W‖² = 0 and τ_ρ = 0 (reachable with no poison)."""
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    rho = 0.01
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=500), d, CPU).fit(d.x_train, d.y_train, {"l2": rho}, 0)
    th = thresholds(fitted.module, d.x_train, d.y_train, "classification", l2=rho)
    assert th.a + rho * th.w_norm_sq == pytest.approx(0.0, abs=1e-4)
    assert abs(th.tau_rho_2) < 1e-3


def test_clean_minimiser_stays_reachable_when_rho_w_exceeds_kappa():
    """ρ‖W‖² > κ₂ at the clean minimiser of wine with ρ = 0.05: still reachable (τ_ρ = 0), not 'unreachable'."""
    d = load_dataset(DatasetSpec(name="wine"))
    rho = 0.05
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=500), d, CPU).fit(d.x_train, d.y_train, {"l2": rho}, 0)
    th = thresholds(fitted.module, d.x_train, d.y_train, "classification", l2=rho)
    assert rho * th.w_norm_sq > kappa(2)
    assert th.tau_rho_2 == 0.0


def test_network_condition_uses_the_last_layer():
    torch.manual_seed(0)
    net = MLP(6, 3, width=8, depth=1)
    x, y = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32), np.arange(30) % 3
    th = thresholds(net, x, y, "classification")
    assert "Theorem 4" in th.condition
    assert th.w_norm_sq == pytest.approx(float(net.head.weight.pow(2).sum()), rel=1e-6)


def test_squared_loss_is_poisonable_at_any_budget():
    th = thresholds(nn.Linear(3, 1), np.zeros((5, 3), np.float32), np.zeros(5, np.float32), "regression")
    assert th.tau_2 == 0.0 and th.loss == "squared" and not th.unreachable


def test_gradpc_respects_the_relative_budget_and_raises_the_loss():
    d = load_dataset(DatasetSpec(name="digits"))
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU).fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)
    theta = torch.cat([p.detach().flatten() for p in fitted.module.parameters()])
    target, result = gradpc(fitted.module, d.x_val, d.y_val, "classification", eps_w=0.5, steps=50)
    delta = torch.cat([p.detach().flatten() for p in target.parameters()]) - theta
    assert float(delta.norm()) <= 0.5 * float(theta.norm()) * (1 + 1e-5)
    assert result.val_loss_target > 3 * result.val_loss_clean
    assert torch.equal(torch.cat([p.detach().flatten() for p in fitted.module.parameters()]), theta)  # not modified


def test_scaling_keeps_predictions_and_meets_the_budget():
    d = load_dataset(DatasetSpec(name="digits"))
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU).fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)
    target, _ = gradpc(fitted.module, d.x_val, d.y_val, "classification", eps_w=0.5, steps=50)
    s, th = scale_to_budget(target, d.x_train, d.y_train, 1e-3, 10, eps=0.1)
    assert 0 < s < 1 and th.tau_rho_2 <= 0.1 + 1e-9
    scaled = scale_output_layer(target, s)
    x = torch.tensor(d.x_test)
    assert torch.equal(scaled(x).argmax(1), target(x).argmax(1))


@pytest.mark.parametrize("rho", [1e-3, 1e-2])
def test_tau_over_same_prediction_targets_is_a_minimum_attained_at_its_scale(rho):
    """The smallest τ among targets with the same predictions is ≤ the target's own τ, is attained at the
    reported scale, and is no larger than τ at any scale of a finer brute-force grid over (0, 1]."""
    d = load_dataset(DatasetSpec(name="digits"))
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU).fit(d.x_train, d.y_train, {"l2": rho}, 0)
    target, _ = gradpc(fitted.module, d.x_val, d.y_val, "classification", eps_w=0.1, steps=50)
    own = thresholds(target, d.x_train, d.y_train, "classification", rho, 10)
    scale, best = tau_over_scalings(target, d.x_train, d.y_train, rho, 10)
    inf = math.inf
    assert best.tau_rho_2 is not None and best.tau_rho_2 <= (own.tau_rho_2 if own.tau_rho_2 is not None else inf)
    again = thresholds(scale_output_layer(target, scale), d.x_train, d.y_train, "classification", rho, 10)
    assert again.tau_rho_2 == pytest.approx(best.tau_rho_2)
    x = torch.tensor(d.x_test)
    assert torch.equal(scale_output_layer(target, scale)(x).argmax(1), target(x).argmax(1))  # the same predictions
    coarse = [thresholds(scale_output_layer(target, s), d.x_train, d.y_train, "classification", rho, 10).tau_rho_2 for s in np.logspace(-3, 0, 13)]
    assert best.tau_rho_2 <= min(t for t in coarse if t is not None) + 1e-9


def _binary_2d(seed=0, n=200):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.2 * rng.normal(size=n) > 0.75).astype(np.int64)
    return x, y


def test_box_threshold_is_exact_against_brute_force_on_a_2d_binary_problem():
    """m and M of ⟨h(x), p(x) − e_y⟩ over the box equal a fine grid's; the box-aware τ is ≥ the unbounded one."""
    from audit.maths.poisonability import box_threshold

    x, y = _binary_2d()
    module = LogReg(2, 2).double().float()
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([[-3.0, -1.0], [3.0, 1.0]]))
        module.linear.bias.copy_(torch.tensor([1.2, -1.2]))
    lo, hi = np.zeros(2), np.ones(2)
    bt = box_threshold(module, x, y, 1e-3, lo, hi)
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 801), np.linspace(0, 1, 801)), -1).reshape(-1, 2).astype(np.float32)
    with torch.no_grad():
        h = module(torch.tensor(grid)).double()
        p = torch.softmax(h, 1)
    values = [((p - torch.nn.functional.one_hot(torch.full((len(grid),), label), 2).double()) * h).sum(1) for label in (0, 1)]
    brute = torch.cat(values)
    assert bt.exact and bt.m == pytest.approx(float(brute.min()), abs=1e-4) and bt.M == pytest.approx(float(brute.max()), abs=1e-4)
    free = thresholds(module, x, y, "classification", 1e-3, 2)
    assert bt.kappa_box <= free.kappa_2 + 1e-12
    assert free.tau_rho_2 is not None and (bt.tau is None or bt.tau >= free.tau_rho_2 - 1e-9)
    wide = box_threshold(module, x, y, 1e-3, np.full(2, -50.0), np.full(2, 50.0))  # a box that holds t*: the unbounded κ
    assert wide.m == pytest.approx(-kappa(2)) and wide.tau == pytest.approx(free.tau_rho_2, rel=1e-6)


def test_box_threshold_bounds_a_multiclass_target_from_outside():
    """Multiclass: the interval bound contains every value a poison in the box can give (necessary condition)."""
    from audit.maths.poisonability import box_threshold

    d = load_dataset(DatasetSpec(name="wine"))
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU).fit(d.x_train, d.y_train, {"l2": 1e-2}, 0)
    target, _ = gradpc(fitted.module, d.x_val, d.y_val, "classification", eps_w=0.5, steps=50)
    bt = box_threshold(target, d.x_train, d.y_train, 1e-2, d.lo, d.hi, d.n_classes)
    rng = np.random.default_rng(0)
    xs = torch.tensor(rng.uniform(d.lo, d.hi, size=(20000, d.n_features)), dtype=torch.float32)
    corners = torch.tensor(np.where(rng.random((20000, d.n_features)) < 0.5, d.lo, d.hi), dtype=torch.float32)
    with torch.no_grad():
        h = target(torch.cat([xs, corners])).double()
        p = torch.softmax(h, 1)
    for label in range(d.n_classes):
        q = ((p - torch.nn.functional.one_hot(torch.full((len(h),), label), d.n_classes).double()) * h).sum(1)
        assert float(q.min()) >= bt.m - 1e-6 and float(q.max()) <= bt.M * (1 + 1e-6) + 1e-6  # float32 model, float64 bound
    assert not bt.exact and bt.kappa_box <= kappa(d.n_classes) + 1e-12


def test_in_box_gradient_canceling_below_the_box_threshold_leaves_a_residual():
    """or2d, ρ = 0.01: a GradPC target (ε_w = 0.3) with its output layer × 0.1 is reachable at any ε by the
    unbounded condition (τ_ρ(2) < 0) but needs ε ≥ 0.222 inside the feature box. At ε = 0.1 in-box Gradient
    Canceling keeps most of the gradient (measured 0.93 of ‖g(μ)‖); the same attack without the box halves it
    (0.49): the box, not the attack's tuning, is what stops it."""
    from audit.attacks import GradientCanceling
    from audit.maths.poisonability import box_threshold

    d = load_dataset(DatasetSpec(name="or2d"))
    rho = 1e-2
    fitted = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU).fit(d.x_train, d.y_train, {"l2": rho}, 0)
    target = scale_output_layer(gradpc(fitted.module, d.x_val, d.y_val, "classification", 0.3)[0], 0.1)
    free = thresholds(target, d.x_train, d.y_train, "classification", rho, 2)
    box = box_threshold(target, d.x_train, d.y_train, rho, d.lo, d.hi, 2)
    assert free.tau_rho_2 is not None and free.tau_rho_2 <= 0 and box.tau is not None and box.tau > 0.15
    residual = {}
    for name, bounds in (("box", (d.lo, d.hi)), ("free", None)):
        gc = GradientCanceling(fitted.module, target_model=target, budget=0.1, l2=rho, box=bounds, seed=0, n_classes=2, epochs=1000)
        gc.poison(d.x_train, d.y_train)
        residual[name] = gc.diagnostics.relative_residual
    assert 0.1 < box.tau and residual["box"] > 0.8 and residual["free"] < residual["box"] - 0.2, residual
