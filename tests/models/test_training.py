import numpy as np
import pytest
import torch

from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.models import build_victim
from audit.models.training import TrainConfig, l2_norm_sq, objective, train
from audit.models.zoo import CNN, MLP, LogReg

CPU = torch.device("cpu")


def test_l2_term_covers_weights_not_biases():
    torch.manual_seed(0)
    model = MLP(4, 3, width=5, depth=2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    weights = 4 * 5 + 5 * 5 + 5 * 3  # biases (5 + 5 + 3) excluded
    assert l2_norm_sq(model).item() == pytest.approx(0.25 * weights)
    gap = objective(model, x, y, "classification", 0.2) - objective(model, x, y, "classification", 0.0)
    assert gap.item() == pytest.approx(0.5 * 0.2 * 0.25 * weights, rel=1e-6)


def test_softmax_logreg_matches_sklearn_with_c_equal_one_over_rho_n():
    """Exact oracle: the regularized objective's minimiser, found by GD, equals scikit-learn's."""
    from sklearn.linear_model import LogisticRegression

    d = load_dataset(DatasetSpec(name="wine"))
    rho, n = 0.01, len(d.y_train)
    x = torch.tensor(d.x_train, dtype=torch.float64)
    y = torch.tensor(d.y_train)
    torch.manual_seed(0)
    model = LogReg(d.n_features, 3).double()
    result = train(model, x, y, "classification", TrainConfig(l2=rho, lr=0.5, momentum=0.9, epochs=3000, grad_tol=1e-8), 0)
    assert result.converged, result
    sk = LogisticRegression(C=1.0 / (rho * n), tol=1e-12, max_iter=10_000).fit(d.x_train.astype(np.float64), d.y_train)
    w = model.linear.weight.detach().numpy()
    b = model.linear.bias.detach().numpy()
    np.testing.assert_allclose(w, sk.coef_, rtol=0, atol=2e-4 * np.abs(sk.coef_).max())
    # softmax is invariant to a shared bias shift: compare centred biases
    np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-3)


def test_ridge_matches_closed_form():
    d = load_dataset(DatasetSpec(name="diabetes"))
    rho = 0.05
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(epochs=4000), d, CPU)
    fitted = victim.fit(d.x_train, d.y_train, {"l2": rho}, seed=0)
    # mean ½(y − Xw − b)² + (ρ/2)‖w‖², bias free: normal equations on centred data
    x = d.x_train.astype(np.float64)
    y = d.y_train.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    w = np.linalg.solve(xc.T @ xc / len(y) + rho * np.eye(x.shape[1]), xc.T @ yc / len(y))
    w_torch = fitted.module.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w_torch, w, atol=2e-3)


def test_training_is_deterministic_per_seed():
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="mlp", width=16), TrainingSpec(epochs=3, batch_size=32), d, CPU)
    a = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed=7)
    b = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed=7)
    c = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed=8)
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(a.module.parameters(), c.module.parameters()))


def test_candidate_axes_reach_model_and_training():
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="mlp"), TrainingSpec(), d, CPU)
    fitted = victim.fit(d.x_train, d.y_train, {"width": 6, "depth": 1, "epochs": 2, "batch_size": 100, "lr": 0.01}, 0)
    assert fitted.module.head.in_features == 6 and len(fitted.module.body) == 2
    assert fitted.train_result["steps"] == 2 * 4  # 341 points / batch 100 → 4 batches per epoch


def test_cnn_on_images_and_errors_on_flat_data():
    from audit.errors import AuditError

    d = load_dataset(DatasetSpec(name="digits", n_samples=200))
    victim = build_victim(ModelSpec(name="cnn", width=4), TrainingSpec(epochs=1), d, CPU)
    fitted = victim.fit(d.x_train, d.y_train, {}, 0)
    assert isinstance(fitted.module, CNN) and fitted.scores(d.x_test).shape == (len(d.y_test), 10)
    flat = load_dataset(DatasetSpec(name="wine"))
    with pytest.raises(AuditError, match="'cnn' needs image data"):
        build_victim(ModelSpec(name="cnn"), TrainingSpec(), flat, CPU)
    with pytest.raises(AuditError, match="regression task; use 'ridge'"):
        build_victim(ModelSpec(name="logreg"), TrainingSpec(), load_dataset(DatasetSpec(name="diabetes")), CPU)


@pytest.mark.parametrize("name, hp", [("lasso", {"l1": 1e-3}), ("elastic_net", {"l1": 1e-3, "l2": 1e-2})])
def test_lasso_and_elastic_net_match_sklearn(name, hp):
    """Exact oracle: FISTA on mean ½(y − f)² + (ρ/2)‖w‖² + λ₁‖w‖₁ equals scikit-learn's coordinate descent."""
    from sklearn.linear_model import ElasticNet, Lasso

    d = load_dataset(DatasetSpec(name="diabetes"))
    fitted = build_victim(ModelSpec(name=name), TrainingSpec(), d, CPU).fit(d.x_train, d.y_train, hp, 0)
    x, y = d.x_train.astype(np.float64), d.y_train.astype(np.float64)
    if name == "lasso":
        sk = Lasso(alpha=hp["l1"], tol=1e-14, max_iter=10**6).fit(x, y)
    else:
        alpha = hp["l1"] + hp["l2"]
        sk = ElasticNet(alpha=alpha, l1_ratio=hp["l1"] / alpha, tol=1e-14, max_iter=10**6).fit(x, y)
    w = fitted.module.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, sk.coef_, atol=1e-4)
    np.testing.assert_array_equal(w == 0, sk.coef_ == 0)  # the same sparsity pattern
    assert fitted.train_result["converged"]


def test_sklearn_lasso_and_elastic_net_mapping():
    from sklearn.linear_model import ElasticNet, Lasso

    d = load_dataset(DatasetSpec(name="diabetes"))
    lasso = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU, model_obj=Lasso()).fit(d.x_train, d.y_train, {"l1": 0.01}, 0)
    assert lasso.estimator.alpha == pytest.approx(0.01)
    enet = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU, model_obj=ElasticNet()).fit(
        d.x_train, d.y_train, {"l1": 0.01, "l2": 0.03}, 0
    )
    assert enet.estimator.alpha == pytest.approx(0.04) and enet.estimator.l1_ratio == pytest.approx(0.25)
