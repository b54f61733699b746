"""The back-gradient attack: the paper's synthetic example (appendix C.1), behaviour, and errors."""

import math

import numpy as np
import pytest
import torch

from audit.attacks import BackGradient
from audit.attacks.back_gradient import flipped_labels, learn_log_l2
from audit.errors import AuditError
from audit.models.training import TrainConfig, train
from audit.models.zoo import LogReg, Ridge


def two_gaussians(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Appendix C.1: N((∓3, 0), diag(2.5, 1.5)) per class."""
    cov = np.diag([2.5, 1.5])
    x = np.vstack([rng.multivariate_normal([-3.0, 0.0], cov, per_class), rng.multivariate_normal([3.0, 0.0], cov, per_class)])
    return x.astype(np.float32), np.r_[np.zeros(per_class), np.ones(per_class)].astype(np.int64)


def fit_lr(x: np.ndarray, y: np.ndarray, l2: float) -> LogReg:
    """The evaluation training of C.1: GD η_tr = 0.2, full batch, 100 epochs."""
    torch.manual_seed(0)
    model = LogReg(2, 2)
    cfg = TrainConfig(l2=l2, optimizer="sgd", lr=0.2, momentum=0.0, epochs=100)
    train(model, torch.tensor(x), torch.tensor(y), "classification", cfg, 0)
    return model


def val_error(model: LogReg, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return 100.0 * float((model(torch.tensor(x)).argmax(1).numpy() != y).mean())


def c1_error_increase(draw: int, lam: float | None, iterations: int = 50, step: float = 0.4) -> float:
    """One optimised poisoning point (α = 0.4, 50 iterations, box [−9.5, 9.5]², T = 500, η = 0.2): validation
    error of the retrained LR minus the clean one. ``lam`` is the paper's λ (ρ = e^λ / 33), None: unregularized."""
    rng = np.random.default_rng(draw)
    x, y = two_gaussians(rng, 16)
    xv, yv = two_gaussians(rng, 32)
    l2 = 0.0 if lam is None else math.exp(lam) / (len(y) + 1)
    clean = fit_lr(x, y, l2)
    box = np.full(2, 9.5, np.float32)
    attack = BackGradient(clean, x_val=xv, y_val=yv, budget=1 / 32, task="classification", n_classes=2, l2=l2, box=(-box, box), seed=0, step=step,
                          iterations=iterations, inner_lr=0.2, inner_steps=500, restarts=0, hypergradient="unrolled")  # fmt: skip
    x_p, y_p = attack.poison(x, y)
    assert x_p.shape == (1, 2)
    poisoned = fit_lr(np.vstack([x, x_p]), np.r_[y, y_p], l2)
    return val_error(poisoned, xv, yv) - val_error(clean, xv, yv)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synthetic_example_regularization_dampens_one_poison():
    """Fig. 1: one point raises the validation error of unregularized LR clearly more than with λ = log 20
    (the paper's 50 iterations of α = 0.4: 64 s on this 2-core machine, so marked slow)."""
    free = c1_error_increase(0, None)
    strong = c1_error_increase(0, math.log(20.0))
    assert free >= 8.0, f"unregularized: +{free:.1f} points"
    assert free >= strong + 5.0, f"unregularized +{free:.1f} vs λ = log 20 +{strong:.1f} points"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synthetic_example_in_fewer_longer_steps():
    """The same, reduced (14–26 s; `slow` since the default suite reached its 8-minute budget): 20 iterations of
    α = 1.0, the same total path length as the paper's 50 of 0.4 (measured: +9.4 points unregularized, +1.6 with
    λ = log 20)."""
    free = c1_error_increase(0, None, iterations=20, step=1.0)
    strong = c1_error_increase(0, math.log(20.0), iterations=20, step=1.0)
    assert free >= 8.0, f"unregularized: +{free:.1f} points"
    assert free >= strong + 5.0, f"unregularized +{free:.1f} vs λ = log 20 +{strong:.1f} points"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_synthetic_example_over_draws():
    """The same over five draws of the data: mean increase unregularized ≥ regularized + 3 points."""
    free = [c1_error_increase(d, None) for d in range(5)]
    strong = [c1_error_increase(d, math.log(20.0)) for d in range(5)]
    assert np.mean(free) >= np.mean(strong) + 3.0, (free, strong)


@pytest.fixture(scope="module")
def gaussian_setting():
    rng = np.random.default_rng(1)
    x, y = two_gaussians(rng, 20)
    xv, yv = two_gaussians(rng, 20)
    return x, y, xv, yv, fit_lr(x, y, 0.01)


def _attack(setting, **params):
    x, y, xv, yv, model = setting
    box = np.full(2, 9.5, np.float32)
    defaults = {"iterations": 8, "inner_steps": 60, "inner_lr": 0.2, "step": 0.4, "hypergradient": "unrolled"}  # the paper's RMD
    return BackGradient(
        model, x_val=xv, y_val=yv, budget=0.1, task="classification", n_classes=2, l2=0.01, box=(-box, box), seed=0, **{**defaults, **params}
    )


def test_poisons_are_flipped_validation_clones_moved_uphill(gaussian_setting):
    x, y, xv, yv, _ = gaussian_setting
    attack = _attack(gaussian_setting)
    x_p, y_p = attack.poison(x, y)
    d = attack.diagnostics
    assert x_p.shape == (4, 2) and np.all(np.abs(x_p) <= 9.5)
    assert d["objective_final"] > d["objective_initial"] * 1.05  # the validation loss it attacks went up
    assert d["objective_final"] == pytest.approx(max(d["objective"]))  # the best iterate is returned
    frozen = _attack(gaussian_setting, iterations=1, step=1e-9)  # one step of nothing: the starting points
    x0, y0 = frozen.poison(x, y)
    np.testing.assert_array_equal(y0, y_p)  # labels fixed during the ascent
    clones = [int(np.flatnonzero(np.isclose(xv, row, atol=1e-6).all(axis=1))[0]) for row in x0]  # validation points
    np.testing.assert_array_equal(y0, 1 - yv[clones])  # with flipped labels
    assert len(set(clones)) == len(clones)  # drawn without duplicates
    assert d["seconds_per_iteration"] > 0 and d["stored_states"] == 60


def test_stuck_runs_restart_from_other_points(gaussian_setting):
    x, y, *_ = gaussian_setting
    attack = _attack(gaussian_setting, iterations=6, patience=2, min_gain=100.0, restarts=2)
    attack.poison(x, y)
    assert attack.diagnostics["restarts"] == 2  # never gains 100×: restarted twice, then the best run is kept
    assert attack.diagnostics["iterations"] == 3


def test_batches_and_checkpointing(gaussian_setting):
    x, y, *_ = gaussian_setting
    whole = _attack(gaussian_setting, checkpoint_every=7)
    stored = _attack(gaussian_setting)
    np.testing.assert_allclose(whole.poison(x, y)[0], stored.poison(x, y)[0], rtol=1e-5, atol=1e-6)
    assert whole.diagnostics["stored_states"] < stored.diagnostics["stored_states"]
    batched = _attack(gaussian_setting, batch_size=3)
    x_b, _ = batched.poison(x, y)
    assert batched.diagnostics["batches"] == 2 and x_b.shape == (4, 2)


def test_minimax_moves_lambda_and_reports_it(gaussian_setting):
    x, y, *_ = gaussian_setting
    attack = _attack(gaussian_setting, learn_l2=True, l2_init=0.0, l2_lr=50.0, l2_range=(-2.0, 2.0))
    attack.poison(x, y)
    d = attack.diagnostics
    assert len(d["lambda_curve"]) == 8 and all(-2.0 <= v <= 2.0 for v in d["lambda_curve"])
    assert d["lambda_curve"][-1] != 0.0
    assert d["l2_rmd"] == pytest.approx(math.exp(d["lambda_rmd"]) / (len(y) + 4))


def test_regression_optimises_responses():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=40)).astype(np.float32)
    torch.manual_seed(0)
    model = Ridge(3)
    args = {"x_val": x[:20], "y_val": y[:20], "budget": 0.1, "task": "regression", "n_classes": None, "l2": 0.01,
            "box": (np.zeros(3, np.float32), np.ones(3, np.float32)), "y_range": (float(y.min()), float(y.max()))}  # fmt: skip
    attack = BackGradient(model, **args, seed=0, iterations=10, inner_steps=50, inner_lr=0.5, step=0.2)
    x_p, y_p = attack.poison(x[20:], y[20:])
    assert np.all((y_p >= y.min() - 1e-6) & (y_p <= y.max() + 1e-6))
    fixed = BackGradient(model, **args, seed=0, iterations=10, inner_steps=50, inner_lr=0.5, step=0.2, optimize_response=False)
    _, y_f = fixed.poison(x[20:], y[20:])
    assert np.all((y_f == y.min()) | (y_f == y.max()))  # boundary responses, kept
    # both ascend (the response hypergradient itself is checked against finite differences in test_hypergrad)
    for run in (attack, fixed):
        assert run.diagnostics["objective_final"] > run.diagnostics["objective_initial"] * 1.05


# --------------------------------------------------------------------------- implicit hypergradients and the line search (issue 21)
def _implicit(setting, **params):
    x, y, xv, yv, model = setting
    box = np.full(2, 9.5, np.float32)
    return BackGradient(model, x_val=xv, y_val=yv, budget=0.1, task="classification", n_classes=2, l2=0.01, box=(-box, box), seed=0,
                        **{"iterations": 15, "step": 0.4, **params})  # fmt: skip


def test_auto_takes_implicit_hypergradients_and_the_line_search_for_a_convex_victim(gaussian_setting):
    from audit.models.zoo import MLP

    x, y, xv, yv, model = gaussian_setting
    attack = _implicit(gaussian_setting)
    assert attack.hypergradient_mode() == "implicit" and attack.step_rule_and_starts() == ("line_search", ("validation", "training"))
    kw = {"x_val": xv, "y_val": yv, "budget": 0.1, "task": "classification", "n_classes": 2}
    assert BackGradient(model, **kw, l2=0.0).hypergradient_mode() == "unrolled"  # no strong convexity: no unique optimum
    assert BackGradient(model, **kw, l2=0.0, learn_l2=True).hypergradient_mode() == "implicit"
    net = MLP(2, 2, width=4, depth=1)
    assert BackGradient(net, **kw, l2=0.01).step_rule_and_starts() == ("paper", ("validation",))
    with pytest.raises(AuditError, match="hypergradient 'implicit' needs a convex victim"):
        BackGradient(net, **kw, l2=0.01, hypergradient="implicit").poison(x, y)


def test_line_search_never_lowers_the_objective_and_it_is_the_retrained_models_validation_loss(gaussian_setting):
    x, y, xv, yv, _ = gaussian_setting
    attack = _implicit(gaussian_setting, starts=("validation",))
    x_p, y_p = attack.poison(x, y)
    d = attack.diagnostics
    curve = np.array(d["objective"])
    assert np.all(np.diff(curve) >= 0) and curve[-1] > 1.2 * curve[0], curve  # every accepted step gains
    assert np.all(np.abs(x_p) <= 9.5) and d["hypergradient"] == "implicit" and d["stationarity"] < 1e-6
    # the objective is the validation loss of the victim retrained to its optimum (its own L-BFGS) on D_tr ∪ D_p
    # (in float64: float32 L-BFGS wanders ~1e-4 around the optimum, which is not the attack's error)
    model = LogReg(2, 2).double()
    cfg = TrainConfig(l2=0.01, optimizer="lbfgs", epochs=200)
    f64 = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    train(model, f64(np.vstack([x, x_p])), torch.tensor(np.r_[y, y_p]), "classification", cfg, 0)
    with torch.no_grad():
        val = float(torch.nn.functional.cross_entropy(model(f64(xv)), torch.tensor(yv)))
    assert val == pytest.approx(d["objective_final"], rel=1e-6)


def test_implicit_line_search_beats_the_papers_fixed_steps_on_the_same_budget(gaussian_setting):
    x, y, *_ = gaussian_setting
    searched = _implicit(gaussian_setting, starts=("validation",))
    fixed = _implicit(gaussian_setting, starts=("validation",), step_rule="paper")
    searched.poison(x, y)
    fixed.poison(x, y)
    assert searched.diagnostics["objective_final"] > fixed.diagnostics["objective_final"] + 0.02
    both = _implicit(gaussian_setting)
    both.poison(x, y)
    starts = both.diagnostics["starts"]
    assert set(starts) == {"validation", "training"} and both.diagnostics["start"] in starts
    assert both.diagnostics["objective_final"] >= max(v[0] for v in starts.values()) - 1e-12


def test_implicit_minimax_and_clean_lambda_learning_move_lambda(gaussian_setting):
    x, y, xv, yv, model = gaussian_setting
    attack = _implicit(gaussian_setting, learn_l2=True, l2_init=0.0, l2_lr=50.0, l2_range=(-2.0, 2.0), iterations=6)
    attack.poison(x, y)
    d = attack.diagnostics
    assert d["hypergradient"] == "implicit" and all(-2.0 <= v <= 2.0 for v in d["lambda_curve"]) and d["lambda_curve"][-1] != 0.0
    learned, curve = learn_log_l2(model, x, y, xv, yv, "classification", iterations=20, init=4.0, l2_range=(-8.0, 5.0))
    assert len(curve) == 20 and learned < 4.0

    def val_loss(lam: float) -> float:  # the validation loss of the victim trained to its optimum at λ (ρ = e^λ / n)
        fitted = LogReg(2, 2)
        train(fitted, torch.tensor(x), torch.tensor(y), "classification", TrainConfig(l2=math.exp(lam) / len(y), optimizer="lbfgs", epochs=200), 0)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(fitted(torch.tensor(xv)), torch.tensor(yv)))

    assert val_loss(learned) < val_loss(4.0) - 1e-2  # descending the exact λ-gradient lowered the validation loss


def test_multiclass_flip_takes_the_largest_loss():
    losses = np.array([[0.1, 3.0, 2.0], [5.0, 0.2, 1.0]])
    np.testing.assert_array_equal(flipped_labels(np.array([0, 1]), 3, losses), [1, 0])
    np.testing.assert_array_equal(flipped_labels(np.array([0, 1]), 2, None), [1, 0])


def test_errors(gaussian_setting):
    from sklearn.linear_model import LogisticRegression

    x, y, xv, yv, model = gaussian_setting
    with pytest.raises(AuditError, match="BackGradient needs a PyTorch model"):
        BackGradient(LogisticRegression(), x_val=xv, y_val=yv, budget=0.1)
    with pytest.raises(AuditError, match=r"'n_classes' parameter of BackGradient must be an int ≥ 2. Got 1"):
        BackGradient(model, x_val=xv, y_val=yv, budget=0.1, task="classification", n_classes=1)
    with pytest.raises(AuditError, match=r"'l2' parameter of BackGradient must be ≥ 0"):
        BackGradient(model, x_val=xv, y_val=yv, budget=0.1, l2=-1.0)
    with pytest.raises(AuditError, match="l2_range must be"):
        BackGradient(model, x_val=xv, y_val=yv, budget=0.1, l2_range=(1.0, -1.0))
    with pytest.raises(AuditError, match="needs a validation set"):
        BackGradient(model, x_val=xv[:0], y_val=yv[:0], budget=0.1)
    with pytest.raises(AuditError, match="parameter 'iterations'"):
        BackGradient(model, x_val=xv, y_val=yv, budget=0.1, iterations=0)


@pytest.mark.timeout(300)
def test_minimax_lambda_grows_with_budget_on_mnist_0_vs_8():
    """The paper's setting (512 train / 171 validation '0' and '8' digits): λ_RMD learned under a 16.6 % attack
    ends above λ learned on clean data (both from the same start, 20 iterations each)."""
    from audit.config import DatasetSpec, SplitSpec
    from audit.data import load_dataset

    data = load_dataset(DatasetSpec(name="mnist5k", classes=[0, 8], split=SplitSpec(val=171, test=317)))
    torch.manual_seed(0)
    module = LogReg(784, 2)
    lam_clean, _ = learn_log_l2(module, data.x_train, data.y_train, data.x_val, data.y_val, "classification", iterations=20)
    attack = BackGradient(module, x_val=data.x_val, y_val=data.y_val, budget=0.166, task="classification", n_classes=2, l2=0.0,
                          box=(data.lo, data.hi), seed=0,
                          learn_l2=True, l2_init=math.log(5.0), iterations=20, starts=("validation",))  # fmt: skip
    attack.poison(data.x_train, data.y_train)
    lam_attacked = attack.diagnostics["lambda_rmd"]
    assert lam_attacked >= lam_clean + 0.15, f"λ clean {lam_clean:.3f}, under attack {lam_attacked:.3f}"
    assert attack.diagnostics["objective_final"] > attack.diagnostics["objective_initial"]


# --------------------------------------------------------------------------- monotone in the budget: warm starts
@pytest.mark.parametrize("draw", [0, 1, 2])
def test_a_warm_start_from_the_smaller_budget_never_ends_below_its_objective(draw):
    """Seeded problems: the attack at ε = 20 % started from its own ε = 10 % poisons ends at a validation loss at least
    the 10 % run's, and at least the cold 20 % run's whenever the warm start wins the screen (it is one more start)."""
    rng = np.random.default_rng(100 + draw)
    x, y = two_gaussians(rng, 20)
    xv, yv = two_gaussians(rng, 20)
    model = fit_lr(x, y, 0.01)
    box = np.full(2, 9.5, np.float32)
    kw = {"x_val": xv, "y_val": yv, "task": "classification", "n_classes": 2, "l2": 0.01, "box": (-box, box), "seed": draw,
          "iterations": 15, "step": 0.4}  # fmt: skip
    small = BackGradient(model, budget=0.1, **kw)
    x_s, y_s = small.poison(x, y)
    warm = BackGradient(model, budget=0.2, init_poisons=(x_s, y_s), **kw)
    x_w, y_w = warm.poison(x, y)
    cold = BackGradient(model, budget=0.2, **kw)
    cold.poison(x, y)
    d = warm.diagnostics
    assert d["warm_start"] == len(y_s) == 4 and len(y_w) == 8
    assert d["objective_final"] >= small.diagnostics["objective_final"] - 1e-9, (d["objective_final"], small.diagnostics["objective_final"])
    assert d["objective_final"] >= max(v[0] for v in d["starts"].values()) - 1e-12  # the best start continued
    assert set(d["starts"]) == {"warm", "validation", "training"}
    if d["start"] == "warm":
        assert np.all(y_w[:4] == y_s)  # the smaller budget's labels kept
    assert "warm_start" not in cold.diagnostics


def test_init_poisons_are_checked(gaussian_setting):
    from audit.attacks.label_flip import LabelFlip

    x, y, *_ = gaussian_setting
    with pytest.raises(AuditError, match="LabelFlip does not start from given poisons"):
        LabelFlip(budget=0.1, n_classes=2, init_poisons=(x[:2], y[:2]))
    with pytest.raises(AuditError, match="init_poisons have 3 features, the training set 2"):
        _implicit(gaussian_setting, init_poisons=(np.zeros((2, 3), np.float32), y[:2])).poison(x, y)


def test_a_stalled_run_stops_early_and_says_so(gaussian_setting):
    x, y, *_ = gaussian_setting
    full = _implicit(gaussian_setting, starts=("validation",), iterations=40)
    full.poison(x, y)
    stalled = _implicit(gaussian_setting, starts=("validation",), iterations=40, stall_gain=0.5, stall_window=3)
    stalled.poison(x, y)
    # a 50 % gain over every 3 iterations cannot last: the run stops long before its 40 iterations, never above the full run
    assert stalled.diagnostics["iterations"] < full.diagnostics["iterations"]
    assert stalled.diagnostics["objective_final"] <= full.diagnostics["objective_final"] + 1e-12


def test_implicit_overrides_apply_only_where_the_hypergradient_is_implicit(gaussian_setting):
    """A profile's ``implicit`` block (the quick profile's reduction for convex victims) replaces the parameters of an
    implicit run and leaves an unrolled one (a network, ρ = 0) as it is; the same run with the values given directly
    gives the same poisons."""
    from audit.models.zoo import MLP

    x, y, xv, yv, model = gaussian_setting
    overridden = _implicit(gaussian_setting, iterations=3, implicit={"iterations": 6, "starts": ["training"]})
    direct = _implicit(gaussian_setting, iterations=6, starts=("training",))
    x_o, _ = overridden.poison(x, y)
    x_d, _ = direct.poison(x, y)
    assert np.array_equal(x_o, x_d) and overridden.diagnostics["start"] == "training"
    assert overridden.diagnostics["iterations"] == direct.diagnostics["iterations"] > 3
    box = np.full(2, 9.5, np.float32)
    net = BackGradient(MLP(2, 2, width=4, depth=1), x_val=xv, y_val=yv, budget=0.1, task="classification", n_classes=2, l2=0.01,
                       box=(-box, box), seed=0, iterations=3, inner_steps=5, implicit={"iterations": 6})  # fmt: skip
    net.poison(x, y)
    assert net.hypergradient_mode() == "unrolled" and net.diagnostics["iterations"] <= 3
    with pytest.raises(ValueError, match="implicit: may not set 'implicit' or 'hypergradient'"):
        _implicit(gaussian_setting, implicit={"hypergradient": "unrolled"})


# --------------------------------------------------------------------------- the K-FAC preconditioned solves (issue 30)
@pytest.mark.parametrize("draw", [0, 1, 2])
def test_the_preconditioned_implicit_attack_reaches_todays_objective_with_fewer_products(draw, monkeypatch):
    """Seeded three-class problems with correlated, badly scaled features at a small ρ: the attack with its
    K-FAC preconditioned Newton and hypergradient solves (``precondition: kfac``, the default) ends within 2 % of
    the unpreconditioned attack's objective and computes fewer Hessian-vector products."""
    from audit.maths.implicit import LinearERM

    rng = np.random.default_rng(200 + draw)
    mix = rng.normal(size=(6, 6)) * np.logspace(0, -1.5, 6)[None, :]
    centres = rng.normal(size=(3, 6)) * 2

    def draw_set(n):
        labels = rng.integers(0, 3, n)
        return ((rng.normal(size=(n, 6)) + centres[labels]) @ mix.T).astype(np.float32), labels.astype(np.int64)

    (x, y), (xv, yv) = draw_set(150), draw_set(100)
    model = LogReg(6, 3)
    train(model, torch.tensor(x), torch.tensor(y), "classification", TrainConfig(l2=1e-3, optimizer="lbfgs", epochs=100), 0)
    counted = {"products": 0}
    original = LinearERM.hvp

    def counting(self, w):
        matvec = original(self, w)

        def product(u):
            counted["products"] += 1
            return matvec(u)

        return product

    monkeypatch.setattr(LinearERM, "hvp", counting)
    results = {}
    for precondition in ("kfac", "none"):
        counted["products"] = 0
        attack = BackGradient(model, x_val=xv, y_val=yv, budget=0.1, task="classification", n_classes=3, l2=1e-3, seed=draw,
                              iterations=15, precondition=precondition)  # fmt: skip
        attack.poison(x, y)
        results[precondition] = (attack.diagnostics["objective_final"], counted["products"])
    (fast, fast_products), (plain, plain_products) = results["kfac"], results["none"]
    assert fast == pytest.approx(plain, rel=0.02), results
    assert fast_products < 0.8 * plain_products, results
