"""The λ-under-attack stage: policies in the store, resume, report section, config errors."""

import json
import math
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.config import parse_config
from audit.errors import AuditError
from audit.grid.minimax import select
from audit.models.training import lambda_from_rho, rho_from_lambda
from audit.grid.runner import plan_audit, run_audit
from audit.grid.store import Store
from tests.conftest import tiny_n_train


def minimax_config(tmp_path, **overrides):
    cfg = {
        "name": "mm",
        "dataset": {"name": "breast_cancer"},
        "model": {"name": "logreg"},
        "training": {"optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "epochs": 30},
        "candidates": {"l2": [1e-6, 0.05]},
        "attacks": [{"name": "back_gradient", "id": "bg", "params": {"iterations": 3, "inner_steps": 15, "inner_lr": 0.5}}],
        "budgets": [0.05, 0.15],
        "seeds": [0],
        "device": "cpu",
        "poisonability": {"enabled": "off"},
        "minimax": {"clean_iterations": 3, "cv_grid": [-4.0, 2.0], "retune_grid": [-4.0, 0.0, 4.0], "cv_folds": 2,
                    "l2_lr": 20.0},
        "output_dir": str(tmp_path),
    }  # fmt: skip
    cfg.update(overrides)
    return parse_config(cfg)


def _rows(run_dir):
    store = Store.open_existing(run_dir)
    try:
        return store.policy_rows()
    finally:
        store.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mm")
    cfg = minimax_config(tmp)
    return cfg, run_audit(cfg, progress=False)


def test_every_policy_budget_and_seed_is_stored(finished):
    cfg, run_dir = finished
    rows = _rows(run_dir)
    assert sorted((r.policy, r.budget) for r in rows) == sorted((p, e) for p in ("clean_cv", "retuned", "rmd") for e in (0.0, 0.05, 0.15))
    n = tiny_n_train()
    for r in rows:
        n_total = n + round(r.budget * n)
        assert r.l2 == pytest.approx(math.exp(r.lam) / n_total)  # ρ = e^λ / N
        assert r.norm_w2 > 0 and 0 <= r.test_metric <= 100
        low, high = cfg.minimax.l2_range
        assert low <= r.lam <= high
    by = {(r.policy, r.budget): r for r in rows}
    assert by[("clean_cv", 0.0)].lam in (-4.0, 2.0)  # from the CV grid
    assert all(by[("clean_cv", e)].lam == by[("clean_cv", 0.0)].lam for e in (0.05, 0.15))  # fixed after CV
    assert all(by[("retuned", e)].lam in (-4.0, 0.0, 4.0) for e in (0.0, 0.05, 0.15))
    assert len(by[("rmd", 0.15)].diagnostics["lambda_curve"]) == 3
    assert by[("rmd", 0.15)].diagnostics["lambda_curve"][0] != pytest.approx(by[("rmd", 0.0)].lam)  # it moved


def test_resume_recomputes_only_missing_rows(finished, tmp_path):
    cfg, run_dir = finished
    before = {(r.policy, r.budget): r for r in _rows(run_dir)}
    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        db.execute("DELETE FROM policies WHERE policy = 'rmd' AND budget = 0.15")
    db.close()
    run_audit(cfg, progress=False)
    after = {(r.policy, r.budget): r for r in _rows(run_dir)}
    assert set(after) == set(before)
    for key, row in before.items():
        assert after[key].seconds == row.seconds if key != ("rmd", 0.15) else True  # the rest untouched
    redone = after[("rmd", 0.15)]
    assert redone.lam == pytest.approx(before[("rmd", 0.15)].lam, abs=1e-9)  # same seed, same numbers
    assert redone.test_metric == pytest.approx(before[("rmd", 0.15)].test_metric)


def test_report_section_summary_and_recommendation(finished):
    cfg, run_dir = finished
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    html = (run_dir / "report.html").read_text()
    assert "Hyperparameters under attack" in html and "λ_RMD (minimax)" in html and "<svg" in html
    assert "fixed ρ=1e-06" in html  # the grid's fixed-λ candidates under the same attack
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {r["policy"] for r in summary["minimax"]} == {"clean_cv", "retuned", "rmd"}
    assert "λ under attack (minimax): λ_RMD" in summary["recommendation"]["reason"]


def test_helpers():
    assert rho_from_lambda(lambda_from_rho(0.01, 500), 500) == pytest.approx(0.01)
    assert lambda_from_rho(0.0, 10) == -math.inf
    assert select([90.0, 95.0, 95.0], [-1.0, 0.0, 1.0], True) == 1.0  # ties → the larger λ
    assert select([0.3, 0.1, 0.2], [-1.0, 0.0, 1.0], False) == 0.0  # lower MSE is better


@pytest.mark.parametrize("overrides, message", [
    ({"attacks": [{"name": "label_flip"}]}, "minimax: needs a back_gradient attack in attacks"),
    ({"minimax": {"attack": "nope"}}, "minimax.attack: 'nope' is not the id of a back_gradient attack"),
    ({"minimax": {"l2_range": [2.0, -1.0]}}, r"minimax.l2_range: expected \(low, high\) with low < high"),
    ({"minimax": {"warm_start": 9.0}}, r"minimax.warm_start: 9.0 is outside l2_range"),
    ({"minimax": {"cv_folds": 1}}, r"minimax.cv_folds: Input should be greater than or equal to 2"),
])  # fmt: skip
def test_config_errors(tmp_path, overrides, message):
    with pytest.raises(AuditError, match=message):
        minimax_config(tmp_path, **overrides)


def test_needs_a_torch_victim(tmp_path):
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(AuditError, match="minimax: λ under attack needs a PyTorch victim"):
        plan_audit(minimax_config(tmp_path), model=LogisticRegression())
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_bad_minimax_config_exits_2(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"minimax": {}, "attacks": [{"name": "label_flip"}]}))  # no back_gradient to run it with
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert "minimax: needs a back_gradient attack in attacks" in result.output
    assert np.all([not p.is_dir() for p in tmp_path.iterdir()])


def test_a_failing_policy_stage_is_reported_and_the_grid_stands(tmp_path, monkeypatch):
    import audit.grid.minimax

    def broken(*args, **kwargs):
        raise RuntimeError("hypergradient exploded")

    monkeypatch.setattr(audit.grid.minimax, "learn_log_l2", broken)
    cfg = minimax_config(tmp_path, budgets=[0.05])
    run_dir = run_audit(cfg, progress=False)
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    html = (run_dir / "report.html").read_text()
    assert "The minimax stage failed for default, seed 0: RuntimeError: hypergradient exploded" in html
    assert {r.policy for r in _rows(run_dir)} == {"clean_cv", "retuned"}  # what finished before is kept
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(c["status"] == "ok" for c in summary["cells"])
