import numpy as np
import pytest
import torch
from torch import nn

from audit.attacks import AttackContext, StatP
from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.defenses import DEFENSES, Huber, NoDefense, Ransac, Trim
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.models import Candidate, build_victim
from audit.models.victim import TorchVictim
from tests.conftest import stored_cells, tiny_config

CPU = torch.device("cpu")
LINEAR = {"optimizer": "lbfgs", "lr": 1.0, "momentum": 0.0, "epochs": 300, "batch_size": None}


def _planted(seed=0, n=200, p=40):
    rng = np.random.default_rng(seed)
    w = np.array([1.5, -2.0, 0.5])
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ w + 0.05 * rng.normal(size=n)).astype(np.float32)
    x_p = rng.normal(size=(p, 3)).astype(np.float32)
    y_p = (x_p @ -w + 3.0).astype(np.float32)  # far off the true line
    return np.concatenate([x, x_p]), np.concatenate([y, y_p]), w, n


def test_trim_recovers_the_clean_coefficients():
    x, y, w, n = _planted()
    victim = TorchVictim(lambda hp: nn.Linear(3, 1), "regression", None, (3,), LINEAR, CPU, "linear")
    naive = victim.fit(x, y, {}, 0).module.weight.detach().numpy().ravel()
    assert np.abs(naive - w).max() > 0.2  # the planted poison moves plain least squares (measured 0.26)
    result = Trim(rate=0.2, seed=0).apply(x, y, victim, Candidate.of(victim, {}))
    kept = victim.fit(x[result.keep], y[result.keep], {}, 0).module.weight.detach().numpy().ravel()
    np.testing.assert_allclose(kept, w, atol=0.05)
    assert result.keep[:n].sum() == n and result.keep[n:].sum() == 0  # every poison out, every clean point kept
    assert result.diagnostics["converged"] and result.diagnostics["iterations"] >= 2
    assert result.diagnostics["loss_curve"][-1] <= result.diagnostics["loss_curve"][0]


def test_trim_with_known_n_and_errors():
    x, y, _, n = _planted()
    victim = TorchVictim(lambda hp: nn.Linear(3, 1), "regression", None, (3,), LINEAR, CPU, "linear")
    assert Trim(rate=0.5, seed=1, n_keep=n).apply(x, y, victim, Candidate.of(victim, {})).keep.sum() == n
    with pytest.raises(AuditError, match="number of points to keep must be in 1..240"):
        Trim(rate=0.2, seed=0, n_keep=500).apply(x, y, victim, Candidate.of(victim, {}))


@pytest.mark.parametrize("cls", [Huber, Ransac])
def test_robust_baselines_beat_least_squares_on_planted_outliers(cls):
    x, y, w, _ = _planted()
    victim = TorchVictim(lambda hp: nn.Linear(3, 1), "regression", None, (3,), LINEAR, CPU, "linear")
    naive_err = np.abs(victim.fit(x, y, {}, 0).module.weight.detach().numpy().ravel() - w).max()
    result = cls(rate=0.2, seed=0).apply(x, y, victim, Candidate.of(victim, {"l2": 0.0}))
    est = result.fitted.estimator
    coef = est.estimator_.coef_ if hasattr(est, "estimator_") else est.coef_
    robust_err = np.abs(coef - w).max()
    assert robust_err < naive_err / 2
    assert result.keep is not None and (~result.keep[200:]).mean() > 0.5  # most planted points flagged as outliers


def test_trim_brings_diabetes_mse_back_below_undefended():
    # measured (ρ = 1e-3, ε = 0.2, seeds 0–2): undefended 0.0642, TRIM 0.0371, clean 0.0299
    d = load_dataset(DatasetSpec(name="diabetes"))
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU)
    undefended, trimmed = [], []
    for seed in (0, 1, 2):
        clean = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed)
        x_p, y_p = StatP.for_cell({}, AttackContext.of(d, victim, clean, {"l2": 1e-3}, 0.2, seed)).poison(d.x_train, d.y_train)
        x_mix, y_mix = np.concatenate([d.x_train, x_p]), np.concatenate([d.y_train, y_p])
        undefended.append(victim.fit(x_mix, y_mix, {"l2": 1e-3}, seed).metric(d.x_test, d.y_test))
        keep = Trim(rate=0.2, seed=seed).apply(x_mix, y_mix, victim, Candidate.of(victim, {"l2": 1e-3})).keep
        trimmed.append(victim.fit(x_mix[keep], y_mix[keep], {"l2": 1e-3}, seed).metric(d.x_test, d.y_test))
    assert np.mean(trimmed) <= 0.75 * np.mean(undefended), (trimmed, undefended)


def test_regression_audit_end_to_end_with_defenses(tmp_path):
    cfg = tiny_config(dataset={"name": "diabetes"}, model={"name": "ridge"}, attacks=[{"name": "statp"}],
                      defenses=["none", "trim", "huber", "ransac"], budgets=[0.2], candidates={"l2": [1e-3]},
                      recommendation={"clean_tolerance": 0.01})  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = {c.defense: c for c in stored_cells(run)}
    assert {c.status for c in cells.values()} == {"ok"}, [c.error for c in cells.values()]
    assert cells["none"].poisoned_test > cells["none"].clean_test
    assert cells["trim"].poisoned_test < cells["none"].poisoned_test
    assert cells["trim"].poisons_removed > 0 and cells["none"].poisons_removed == 0
    from audit.report import write_report

    write_report(run)
    html = (run / "report.html").read_text()
    assert "test MSE" in html and "MSE increase" in html


def test_classification_audit_rejects_regression_defenses():
    with pytest.raises(AuditError, match="'trim' does not apply to classification"):
        run_audit(parse_config(tiny_config(defenses=["none", "trim"])), output_dir="/nonexistent", progress=False)


def test_registry():
    assert {"none", "trim", "huber", "ransac"} <= set(DEFENSES) and DEFENSES["none"] is NoDefense
