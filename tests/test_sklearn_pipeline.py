"""scikit-learn pipelines and linear models under the whole battery (issue 31, part 2).

A fitted ``Pipeline`` of scalers / polynomial features ending in ``LogisticRegression`` or
``Ridge`` becomes an exact torch surrogate (:mod:`audit.models.surrogate`): the white-box attacks
run against it, and every retraining refits the user's whole pipeline with scikit-learn.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.decomposition import PCA
from sklearn.linear_model import Lasso, LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, PolynomialFeatures, StandardScaler
from sklearn.svm import LinearSVC

from audit.cli import cli
from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_victim
from audit.models.surrogate import check_sklearn_model, torch_surrogate
from tests.conftest import cells_with_poisons, stored_cells, write_yaml

CPU = torch.device("cpu")


def _probabilities(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(module(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()


@pytest.mark.parametrize(
    "pipeline",
    [
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        lambda: make_pipeline(MinMaxScaler(), PolynomialFeatures(2), LogisticRegression(max_iter=5000)),
        lambda: make_pipeline(MaxAbsScaler(), LogisticRegression(fit_intercept=False, max_iter=5000)),
        lambda: make_pipeline(StandardScaler(with_mean=False), MinMaxScaler(clip=True), LogisticRegression(C=0.1)),
        lambda: Pipeline([("scale", make_pipeline(StandardScaler(), MaxAbsScaler())), ("skip", "passthrough"), ("lr", LogisticRegression())]),
        lambda: LogisticRegression(max_iter=5000),
        lambda: make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0)),
    ],
)
def test_surrogate_probabilities_equal_the_pipelines(pipeline):
    """Binary: softmax of the surrogate's two logits is predict_proba, on raw features, within 1e-3
    (measured ~1e-6: float32), and its labels are predict's."""
    x, y = load_breast_cancer(return_X_y=True)
    fitted = pipeline().fit(x, y)
    module = torch_surrogate(fitted, 2)
    p = _probabilities(module, x)
    assert np.abs(p - fitted.predict_proba(x)).max() < 1e-3
    assert np.mean(p.argmax(1) == fitted.predict(x)) > 0.995  # a tie at p = 0.5 in float32 may differ


def test_surrogate_is_exact_for_multiclass_and_ridge():
    x, y = load_wine(return_X_y=True)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
    assert np.abs(_probabilities(torch_surrogate(fitted, 3), x) - fitted.predict_proba(x)).max() < 1e-3
    # a class the fit never saw: probability ~0 in its column, the others unchanged
    keep = y < 2
    two = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x[keep], y[keep])
    p = _probabilities(torch_surrogate(two, 3), x)
    assert p[:, 2].max() < 1e-9 and np.abs(p[:, :2] - two.predict_proba(x)).max() < 1e-3
    xr, yr = load_diabetes(return_X_y=True)
    ridge = make_pipeline(StandardScaler(), PolynomialFeatures(2), Ridge(alpha=3.0)).fit(xr, yr)
    with torch.no_grad():
        pred = torch_surrogate(ridge, None)(torch.as_tensor(xr, dtype=torch.float32)).numpy()
    assert pred.shape == (len(yr),)
    assert np.abs(pred - ridge.predict(xr)).max() < 1e-4 * np.abs(yr).max()


def test_the_attacks_view_of_validation_accuracy_is_the_pipelines_score():
    """The victim's fit carries the surrogate of *that* fit: its accuracy on the validation split
    (what an attack computes from ``ctx.fitted.module``) is ``pipeline.score``; ρ reaches the last step."""
    from audit.maths.poisonability import module_metric

    data = load_dataset(DatasetSpec(name="breast_cancer"))
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, CPU, model_obj=pipeline)
    assert victim.attack_kinds == ("sklearn", "torch") and "Pipeline(StandardScaler → LogisticRegression)" in victim.description
    fitted = victim.fit(data.x_train, data.y_train, {"l2": 0.01}, 0)
    assert fitted.estimator[-1].C == pytest.approx(2 / (0.01 * len(data.y_train)))
    score = 100 * fitted.estimator.score(data.x_val, data.y_val)
    assert module_metric(fitted.module, data.x_val, data.y_val, "classification") == pytest.approx(score)
    assert fitted.metric(data.x_val, data.y_val) == pytest.approx(score)
    assert pipeline[-1].C == 1.0 and not hasattr(pipeline[-1], "coef_")  # the user's object is never fitted or changed


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (make_pipeline(PCA(5), LogisticRegression()), "pipeline step 'pca' (PCA) is not supported; supported steps: StandardScaler, MinMaxScaler"),
        (make_pipeline(StandardScaler(), RidgeClassifier()),
         "pipeline step 'ridgeclassifier' (RidgeClassifier) is not supported for classification; use LogisticRegression"),
        (make_pipeline(StandardScaler(), LinearSVC(penalty="l1", dual=False)), "must use loss='squared_hinge' or 'hinge', penalty='l2'"),
        (LogisticRegression(class_weight="balanced"), "has class_weight"),
        (LogisticRegression(l1_ratio=0.5, solver="saga"), "has an L1 part"),
        (SGDClassifier(), "must use loss='log_loss' and penalty='l2' (got 'hinge', 'l2')"),
        (SGDClassifier(loss="log_loss", class_weight="balanced"), "has class_weight"),
    ],
)
def test_unsupported_steps_are_one_line_errors(model, message):
    with pytest.raises(AuditError, match="^model: ") as err:
        check_sklearn_model(model, "classification", 2)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lasso_pipeline_is_retrained_but_attacked_black_box_only():
    description, surrogate = check_sklearn_model(make_pipeline(StandardScaler(), Lasso()), "regression", None)
    assert description == "scikit-learn Pipeline(StandardScaler → Lasso)" and not surrogate


def _pipeline_config(name: str, **extra):
    return parse_config({"name": name, "profile": "paper", "dataset": {"name": "breast_cancer"}, "model": {"name": "logreg"},
                         "candidates": {"l2": [1e-3, 1e-2]}, "budgets": [0.1], "seeds": [0], "splits": 1, "device": "cpu", "confirm": False,
                         "attacks": [{"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}},
                                     {"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}},
                                     {"name": "back_gradient"}, {"name": "gradient_canceling"}], **extra})  # fmt: skip


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """StandardScaler + LogisticRegression on breast_cancer, flips + back-gradient + GC at paper settings (~6 s)."""
    from audit.api import run_audit

    out = tmp_path_factory.mktemp("pipeline")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    result = run_audit(_pipeline_config("pipe"), model=pipeline, output_dir=out, progress=False)
    return result, pipeline


def test_a_pipeline_faces_back_gradient_and_gradient_canceling(pipeline_run):
    """The white-box attacks run on the surrogate (back-gradient with its exact implicit
    hypergradient), and at each ρ their worst test damage is at least the label flips' (measured with the
    attacker's own split D_att: back-gradient 11.4 / 12.3 points, GC 3.5, against the flips' 1.8–7.9 at ε = 10 %)."""
    result, _ = pipeline_run
    cells = [c for c in stored_cells(result.run_dir) if c.status == "ok"]
    assert len(cells) == 8
    for rho in ("0.001", "0.01"):
        drops = {c.attack: c.clean_test - c.poisoned_test for c in cells if json.loads(c.candidate)["l2"] == float(rho)}
        assert max(drops["back_gradient"], drops["gradient_canceling"]) >= max(drops["lf_adv"], drops["lf_random"]), drops
        assert max(drops["back_gradient"], drops["gradient_canceling"]) >= 5.0, drops
    bg = next(json.loads(c.diagnostics)["attack"] for c in cells if c.attack == "back_gradient")
    assert bg["hypergradient"] == "implicit"


def test_a_pipeline_runs_numbers_equal_the_pipeline_refit_by_hand(pipeline_run):
    """Every cell's clean and poisoned test accuracy is what the user's pipeline gives when refit by
    hand with C = 2/(ρn) on the clean data and C = 2/(ρ(n + m)) on the data plus the cell's m
    cached poisons (the scaler refit on poisoned data, as in deployment)."""
    from sklearn.base import clone

    result, pipeline = pipeline_run
    data = result.plan.dataset
    n = len(data.y_train)
    checked = 0
    for cell, x_p, y_p in cells_with_poisons(result.run_dir):
        rho = json.loads(cell.candidate)["l2"]
        by_hand = clone(pipeline).set_params(logisticregression__C=2 / (rho * n))
        clean = 100 * by_hand.fit(data.x_train, data.y_train).score(data.x_test, data.y_test)
        # the objective is a mean over every training point: C = 2/(ρ(n + m)) on the poisoned set
        by_hand = clone(pipeline).set_params(logisticregression__C=2 / (rho * (n + len(y_p))))
        poisoned = 100 * by_hand.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p])).score(data.x_test, data.y_test)
        assert cell.clean_test == pytest.approx(clean) and cell.poisoned_test == pytest.approx(poisoned)
        checked += 1
    assert checked >= 4


def test_the_summary_names_the_pipeline_and_the_recommended_estimator_is_one(pipeline_run):
    """summary.json names the audited pipeline; ``recommended_estimator()`` is the user's pipeline
    refit at the recommended ρ, wrapped as ART does (its predictions are the pipeline's)."""
    from audit.report import write_report

    result, _ = pipeline_run
    write_report(result.run_dir)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "Pipeline(StandardScaler → LogisticRegression)" in json.dumps(summary, ensure_ascii=False)
    html = (result.run_dir / "report.html").read_text()
    assert "Pipeline(StandardScaler → LogisticRegression)" in html
    # GC (by default) and TGDA fix the scaler the retraining refits: every output says their damage may be a lower bound
    assert summary["victim_caveats"] and "model the pipeline's StandardScaler at its clean fit" in summary["victim_caveats"][0]
    assert "back-gradient models the refit exactly" in summary["victim_caveats"][0]
    assert "Possibly a lower bound: Gradient Canceling and TGDA" in html
    from audit.report import gate

    assert "possibly a lower bound: Gradient Canceling and TGDA" in gate(result.run_dir, budget=0.1, max_drop=50, allow_lower_bound=True).message
    record = [p for p in result.export(formats=("md",)) if str(p).endswith(".md")]
    assert record and "Possibly a lower bound: Gradient Canceling and TGDA" in record[0].read_text()
    art = result.recommended_estimator()
    data = result.plan.dataset
    assert isinstance(art.model, Pipeline)
    np.testing.assert_allclose(art.predict(data.x_test), art.model.predict_proba(data.x_test))


def test_a_pipeline_from_a_yaml_factory_runs_the_default_battery(tmp_path, monkeypatch):
    """``model: {name: user, factory: …}`` returning a Pipeline, through the CLI: the quick battery
    against it includes back-gradient and Gradient Canceling (before: label flips and StatP only)."""
    (tmp_path / "my_model.py").write_text(
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "def build():\n"
        "    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = {"name": "yaml_pipe", "dataset": {"name": "breast_cancer"}, "model": {"name": "user", "factory": "my_model:build"},
           "candidates": {"l2": [0.01]}, "budgets": [0.1], "seeds": [0], "device": "cpu", "confirm": False}  # fmt: skip
    out = CliRunner().invoke(cli, ["run", str(write_yaml(tmp_path / "a.yaml", cfg)), "--out", str(tmp_path / "out"), "--quiet"])
    assert out.exit_code == 0, out.output
    attacks = {c.attack for c in stored_cells(tmp_path / "out" / "yaml_pipe") if c.status == "ok"}
    assert {"back_gradient", "gradient_canceling", "label_flip_adversarial", "statp"} <= attacks
    bad = {**cfg, "name": "bad"}
    (tmp_path / "bad_model.py").write_text(
        "from sklearn.pipeline import make_pipeline\nfrom sklearn.decomposition import PCA\n"
        "from sklearn.linear_model import LogisticRegression\ndef build():\n    return make_pipeline(PCA(3), LogisticRegression())\n"
    )
    bad["model"] = {"name": "user", "factory": "bad_model:build"}
    out = CliRunner().invoke(cli, ["run", str(write_yaml(tmp_path / "b.yaml", bad)), "--out", str(tmp_path / "out"), "--quiet"])
    assert out.exit_code == 2 and "pipeline step 'pca' (PCA) is not supported" in out.output
    assert not (tmp_path / "out" / "bad").exists()


def test_sgd_classifier_maps_rho_and_faces_the_white_box_attacks(tmp_path):
    """``SGDClassifier(log_loss)``: α = ρ/2 (``rho_of`` inverts it), more than two classes refused (one-vs-rest),
    and a pipeline ending in it runs back-gradient and Gradient Canceling against its surrogate."""
    from audit.api import run_audit
    from audit.models.surrogate import rho_of

    with pytest.raises(AuditError, match="fits 3 classes one-vs-rest"):
        check_sklearn_model(SGDClassifier(loss="log_loss"), "classification", 3)
    data = load_dataset(DatasetSpec(name="breast_cancer"))
    pipeline = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, CPU, model_obj=pipeline)
    fitted = victim.fit(data.x_train, data.y_train, {"l2": 0.02}, 3)
    assert fitted.estimator[-1].alpha == pytest.approx(0.01) and fitted.estimator[-1].random_state == 3
    assert rho_of(fitted.estimator, len(data.y_train)) == pytest.approx(0.02)
    assert np.abs(_probabilities(fitted.module, data.x_test) - fitted.estimator.predict_proba(data.x_test)).max() < 1e-3
    result = run_audit(_pipeline_config("sgd", candidates={"l2": [0.02]}), model=pipeline, output_dir=tmp_path, progress=False)
    cells = [c for c in stored_cells(result.run_dir) if c.status == "ok"]
    assert {c.attack for c in cells} == {"lf_adv", "lf_random", "back_gradient", "gradient_canceling"}


@pytest.mark.parametrize("scaler", [StandardScaler, MaxAbsScaler])
def test_back_gradient_differentiates_the_scaler_refit_on_the_poisoned_data(scaler):
    """refit_scalers (issue 31): the implicit back-gradient's objective is the attacker's loss of the pipeline *refit*
    by scikit-learn on D_tr ∪ D_p (the scaler too), and its hypergradient matches central finite differences of that
    objective — through the scaler's statistics, which move with the poisons. With the scaler held at its clean fit the
    objective differs from the refit pipeline's (the model the attack used to describe)."""
    from sklearn.metrics import log_loss

    from audit.attacks.back_gradient.hypergradients import Implicit as _Implicit
    from audit.attacks.back_gradient.objectives import refit_objectives as _refit_objectives
    from audit.maths.hypergrad import FlatModel, functional_objective, validation_loss
    from audit.maths.linear_solve import CG

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, att = idx[:300], idx[300:450]
    rho, m = 0.01, 15
    pipe = make_pipeline(scaler(), LogisticRegression(C=2 / (rho * 300), max_iter=5000)).fit(x[tr], y[tr])
    module = torch_surrogate(pipe, 2).double()
    model = FlatModel.of(module)
    xt, yt, xa, ya = (torch.tensor(v) for v in (x[tr], y[tr], x[att], y[att]))
    x_p = xt[:m] * torch.tensor(rng.uniform(1.1, 1.5, (m, 1)))  # distinct values: no tie at a maximum
    y_p = 1 - yt[:m]
    inner = functional_objective(model, xt, yt, "classification", y_p)
    outer = validation_loss(model, xa, ya, "classification")
    refit_inner, zero, refit_outer = _refit_objectives(module, xt, inner, outer, None)
    oracle = _Implicit(module, refit_inner, zero, model.flat(), refit_outer, xt, yt, y_p, 1e-11, CG(1e-12, 2000), xt)
    log_rho = torch.tensor(np.log(rho))
    value = oracle.evaluate([x_p, log_rho]).value
    refit = make_pipeline(scaler(), LogisticRegression(C=2 / (rho * (300 + m)), max_iter=20000, tol=1e-10))
    refit.fit(np.r_[x[tr], x_p.numpy()], np.r_[y[tr], y_p.numpy()])
    assert value == pytest.approx(log_loss(y[att], refit.predict_proba(x[att])), rel=1e-5)
    grad = oracle.gradient([x_p, log_rho]).grads[0]
    direction = torch.tensor(rng.standard_normal((m, x.shape[1]))) * xt.abs().mean(0)
    h = 1e-5
    fd = (oracle.evaluate([x_p + h * direction, log_rho]).value - oracle.evaluate([x_p - h * direction, log_rho]).value) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-4)
    fixed = _Implicit(module, inner, outer, model.flat(), None, xt, yt, y_p, 1e-11, CG(1e-12, 2000))
    assert abs(fixed.evaluate([x_p, log_rho]).value - value) > 1e-3  # the fixed scaler describes another model


def test_gradient_canceling_models_the_scaler_refit_on_the_poisoned_data():
    """refit_scalers for GC (issue 31): the residual ``r`` of a StandardScaler → LogisticRegression surrogate, with the
    scaler refit on D_tr ∪ D_p, is the gradient of the training objective at the target's weights on features scaled by
    scikit-learn's own refit; ``∂½‖r‖²/∂z`` matches central differences; with the scaler fixed ``r`` differs."""
    from audit.attacks.gradient_canceling import cancel_residual, mean_gradient, refit_residual

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(y))[:200]
    rho, m, n = 0.01, 12, 200
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=2 / (rho * n), max_iter=5000)).fit(x[idx], y[idx])
    module = torch_surrogate(pipe, 2).double()
    xt, yt = torch.tensor(x[idx]), torch.tensor(y[idx])
    z = (xt[:m] * torch.tensor(rng.uniform(1.2, 1.6, (m, 1)))).requires_grad_(True)
    labels = 1 - yt[:m]
    reg = [(1 + m / n) * rho * p.detach() if p.ndim > 1 else torch.zeros_like(p) for p in module.parameters()]
    r = refit_residual(module, xt, yt, z, labels, "classification", reg, n)
    # by hand: the scaler refit by scikit-learn on x ∪ z, the target's layer on those features, autograd of its loss
    scaler = StandardScaler().fit(np.r_[x[idx], z.detach().numpy()])
    layer = torch.nn.Linear(30, 2).double()
    layer.load_state_dict(module.linear.state_dict())
    feats = torch.tensor(scaler.transform(np.r_[x[idx], z.detach().numpy()]))
    loss = torch.nn.functional.cross_entropy(layer(feats), torch.cat([yt, labels]), reduction="sum") / n
    by_hand = torch.autograd.grad(loss, list(layer.parameters()))
    for ours, theirs, extra in zip(r, by_hand, reg):
        torch.testing.assert_close(ours.detach(), theirs + extra, rtol=1e-7, atol=1e-10)
    half = 0.5 * sum((t * t).sum() for t in r)
    grad = torch.autograd.grad(half, z)[0]
    direction = torch.tensor(rng.standard_normal((m, 30))) * xt.abs().mean(0)
    h = 1e-6

    def value(point):
        rr = refit_residual(module, xt, yt, point, labels, "classification", reg, n)
        return float(0.5 * sum((t.detach() * t.detach()).sum() for t in rr))

    fd = (value(z.detach() + h * direction) - value(z.detach() - h * direction)) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-4)
    g_mu = mean_gradient(module, xt, yt, "classification")
    fixed = cancel_residual(module, z.detach(), labels, "classification", g_mu, reg, n, None)
    assert max(float((a.detach() - b).abs().max()) for a, b in zip(r, fixed)) > 1e-3


def test_liblinear_logistic_regression_has_an_exact_surrogate_for_two_classes():
    """``solver="liblinear"`` penalises the intercept: the surrogate appends a constant column whose weight is the
    intercept (as for LinearSVC). Probabilities equal ``predict_proba``; minimising the audit's objective at ρ from zero
    lands on liblinear's weights at C = 2/(ρn); more than two classes (one-vs-rest) are refused in one line."""
    from audit.maths.implicit import LinearERM, newton_cg
    from audit.models.structure import convex_linear_layer, layer_inputs

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    rho, n = 0.01, len(y)
    fitted = LogisticRegression(solver="liblinear", C=2 / (rho * n), intercept_scaling=2.0, tol=1e-12, max_iter=10000).fit(x, y)
    assert np.abs(_probabilities(torch_surrogate(fitted, 2), x) - fitted.predict_proba(x)).max() < 1e-5
    module = torch_surrogate(fitted, 2).double()
    layer = convex_linear_layer(module)
    phi = layer_inputs(module, layer, torch.as_tensor(x))
    found = newton_cg(LinearERM(phi, torch.as_tensor(y), rho, 2, bias=False), torch.zeros(layer.weight.numel(), dtype=torch.float64), tol=1e-10)
    theirs = layer.weight.detach().reshape(-1)
    assert float((found.w - theirs).norm() / theirs.norm()) < 1e-4
    check_sklearn_model(make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear")), "classification", 2)
    with pytest.raises(AuditError, match="uses solver 'liblinear', which fits 3 classes one-vs-rest"):
        check_sklearn_model(make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear")), "classification", 3)
