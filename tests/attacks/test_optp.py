import numpy as np
import pytest
import torch

from audit.attacks import AttackContext, OptP, StatP
from audit.attacks.optp import inner_solution, ista_step
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.models import build_victim

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def diabetes():
    return load_dataset(DatasetSpec(name="diabetes"))


def test_inner_solution_is_the_victims_model(diabetes):
    d = diabetes
    for name, hp in (("ridge", {"l2": 1e-2}), ("lasso", {"l1": 1e-3})):
        fitted = build_victim(ModelSpec(name=name), TrainingSpec(), d, CPU).fit(d.x_train, d.y_train, hp, 0)
        theta = inner_solution(torch.tensor(d.x_train, dtype=torch.float64), torch.tensor(d.y_train, dtype=torch.float64),
                               hp.get("l2", 0.0), hp.get("l1", 0.0), torch.zeros(11, dtype=torch.float64), 3000)  # fmt: skip
        w = np.r_[fitted.module.linear.weight.detach().numpy().ravel(), fitted.module.linear.bias.detach().numpy()]
        if name == "ridge":
            # strongly convex: ‖w − θ*‖ ≤ ‖∇L(w)‖ / λ_min(H), H = [X 1]ᵀ[X 1]/n + ρ on the weights (float32
            # L-BFGS stops at ‖∇L‖ ≈ 1e-5 here and λ_min ≈ 0.01, so the weights agree to ~1e-3, not better)
            x1 = np.c_[d.x_train, np.ones(len(d.x_train))].astype(np.float64)
            hessian = x1.T @ x1 / len(x1) + np.diag([hp["l2"]] * d.x_train.shape[1] + [0.0])
            bound = fitted.train_result["grad_norm"] / np.linalg.eigvalsh(hessian)[0]
            assert np.linalg.norm(theta.numpy() - w) <= bound + 1e-5
        else:
            np.testing.assert_allclose(theta.numpy(), w, atol=2e-4)


@pytest.mark.parametrize("l2, l1", [(1e-2, 0.0), (1e-3, 1e-3)])
@pytest.mark.parametrize("which", ["train", "val"])
def test_gradient_wrt_x_and_y_matches_finite_differences(diabetes, l2, l1, which):
    d = diabetes
    attack = OptP(budget=0.1, x_val=d.x_val, y_val=d.y_val, l2=l2, l1=l1, box=(d.lo, d.hi), unroll_steps=200)
    x = torch.tensor(d.x_train, dtype=torch.float64)
    y = torch.tensor(d.y_train, dtype=torch.float64)
    theta0 = inner_solution(x, y, l2, l1, torch.zeros(11, dtype=torch.float64), 2000).detach()
    x_c = x[:5].clone().requires_grad_(True)
    y_c = (1 - y[:5]).clone().requires_grad_(True)
    step = 0.9 * ista_step(torch.cat([x, x_c]), l2)  # held fixed: the unrolled map is then one function
    gx, gy = torch.autograd.grad(attack.objective_value(x_c, y_c, x, y, which, theta0, step), [x_c, y_c])
    h = 1e-6
    # lasso is piecewise smooth: compare where the gradient is largest (away from soft-threshold kinks)
    for i in (0, 3):
        j = int(gx[i].abs().argmax())
        xp, xm = x_c.detach().clone(), x_c.detach().clone()
        xp[i, j] += h
        xm[i, j] -= h
        fd = (attack.objective_value(xp, y_c.detach(), x, y, which, theta0, step)
              - attack.objective_value(xm, y_c.detach(), x, y, which, theta0, step)) / (2 * h)  # fmt: skip
        assert float(gx[i, j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-12)
    yp, ym = y_c.detach().clone(), y_c.detach().clone()
    yp[2] += h
    ym[2] -= h
    fd = (attack.objective_value(x_c.detach(), yp, x, y, which, theta0, step)
          - attack.objective_value(x_c.detach(), ym, x, y, which, theta0, step)) / (2 * h)  # fmt: skip
    assert float(gy[2]) == pytest.approx(float(fd), rel=1e-6, abs=1e-12)


def test_poisons_stay_in_the_box_and_response_range(diabetes):
    d = diabetes
    x_p, y_p = OptP(budget=0.2, x_val=d.x_val, y_val=d.y_val, l2=1e-3, box=(d.lo, d.hi), y_range=(0.0, 1.0), iterations=20).poison(
        d.x_train, d.y_train
    )
    assert np.all(x_p >= 0) and np.all(x_p <= 1) and np.all(y_p >= 0) and np.all(y_p <= 1)


def test_optp_is_at_least_as_strong_as_statp_on_diabetes(diabetes):
    # measured (ridge ρ = 1e-3, ε = 0.2, seeds 0–2): OptP ×2.95–3.02 test MSE, StatP ×1.79–2.21
    d = diabetes
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU)
    ratios = {"statp": [], "optp": []}
    for seed in (0, 1, 2):
        clean = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed)
        for name, cls in (("statp", StatP), ("optp", OptP)):
            x_p, y_p = cls.for_cell({}, AttackContext.of(d, victim, clean, {"l2": 1e-3}, 0.2, seed)).poison(d.x_train, d.y_train)
            poisoned = victim.fit(np.concatenate([d.x_train, x_p]), np.concatenate([d.y_train, y_p]), {"l2": 1e-3}, seed)
            ratios[name].append(poisoned.metric(d.x_test, d.y_test) / clean.metric(d.x_test, d.y_test))
    assert np.mean(ratios["statp"]) >= 1.5
    assert np.mean(ratios["optp"]) >= np.mean(ratios["statp"]) + 0.3, ratios


def test_best_of_four_combinations_is_recorded(diabetes):
    d = diabetes
    attack = OptP(budget=0.1, x_val=d.x_val, y_val=d.y_val, l2=1e-3, box=(d.lo, d.hi), iterations=10)
    attack.poison(d.x_train, d.y_train)
    runs = attack.diagnostics["runs"]
    assert {(r["init"], r["objective"]) for r in runs} == {("inv_flip", "train"), ("inv_flip", "val"),
                                                          ("boundary_flip", "train"), ("boundary_flip", "val")}  # fmt: skip
    best = max(runs, key=lambda r: r["w_val"])
    assert attack.diagnostics["chosen"] == {"init": best["init"], "objective": best["objective"]}
