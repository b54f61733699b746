import subprocess
import sys

import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml


@pytest.fixture
def runner():
    return CliRunner()


def test_list_names_everything(runner):
    result = runner.invoke(cli, ["list"])
    assert result.exit_code == 0
    for name in (
        "mnist5k",
        "breast_cancer",
        "or2d",
        "npz",
        "logreg",
        "mlp",
        "cnn",
        "ridge",
        "label_flip",
        "gradient_canceling",
        "statp",
        "none",
        "trim",
        "huber",
        "ransac",
    ):
        assert f"  {name}" in result.output


def test_run_report_gate(runner, tmp_path):
    cfg = write_yaml(tmp_path / "audit.yaml", tiny_config())
    out = tmp_path / "reports"
    result = runner.invoke(cli, ["run", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = out / "tiny"
    for name in ("report.html", "summary.json", "results.sqlite"):
        assert (run_dir / name).is_file()
    (run_dir / "report.html").unlink()
    assert runner.invoke(cli, ["report", str(run_dir)]).exit_code == 0
    assert (run_dir / "report.html").is_file()

    passed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100"])
    assert passed.exit_code == 0 and passed.output.startswith("PASS: ")
    failed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "0"])
    assert failed.exit_code == 1 and failed.output.startswith("FAIL: ")
    assert (run_dir / "gate.xml").is_file()


@pytest.mark.parametrize(
    "args_for, message",
    [
        (lambda p: ["run", str(p / "missing.yaml")], "error: config file not found"),
        (lambda p: ["report", str(p)], "holds no results.sqlite: not a poison-audit run directory"),
        (lambda p: ["report", str(p / "nope")], "run directory not found"),
        (lambda p: ["gate", str(p / "nope"), "--budget", "0.1", "--max-drop", "5"], "run directory not found"),
        (lambda p: ["gate", str(p), "--budget", "0.1", "--max-drop", "-1"], "--max-drop must be ≥ 0"),
    ],
)
def test_user_errors_exit_2_with_one_line(runner, tmp_path, args_for, message):
    result = runner.invoke(cli, args_for(tmp_path))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ({"budgets": [1.5]}, "the poison budget ε must be in (0, 1] (got 1.5)"),
        ({"candidates": {"l2": [-0.1]}}, "ρ must be ≥ 0"),
        ({"dataset": {"name": "imagenet"}}, "unknown dataset 'imagenet'"),
        ({"model": {"name": "ridge"}}, "'ridge' is a regressor but dataset 'breast_cancer' is a classification task"),
    ],
)
def test_bad_configs_exit_2(runner, tmp_path, override, message):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(**override))
    result = runner.invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_gate_unknown_budget(runner, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(budgets=[0.1], candidates={"l2": [0.0]}, seeds=[0]))
    assert runner.invoke(cli, ["run", str(cfg), "--out", str(tmp_path), "--quiet"]).exit_code == 0
    result = runner.invoke(cli, ["gate", str(tmp_path / "tiny"), "--budget", "0.2", "--max-drop", "5"])
    assert result.exit_code == 2 and "--budget 0.2 was not run; budgets of this run: 0.1" in result.output


def test_cuda_without_gpu_is_a_user_error(runner, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = write_yaml(tmp_path / "c.yaml", tiny_config(device="cuda"))
    result = runner.invoke(cli, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'cuda' requested but torch sees no CUDA device" in result.output


def test_python_dash_m_and_yaml_error_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets: [0.1\n")
    proc = subprocess.run([sys.executable, "-m", "audit", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "YAML syntax error at line" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_threshold_text_json_and_saved_target(runner, tmp_path):
    import json

    saved = tmp_path / "target.pt"
    text = runner.invoke(cli, ["threshold", "--dataset", "wine", "--l2", "0.01", "--eps-w", "0.5", "--save-target", str(saved)])
    assert text.exit_code == 0, text.output
    for needle in ("τ(2) = a/κ₂", "τ(c) = a/κ_c", "τ_ρ(2)", "κ₂ = W(1/e) = 0.278465", "target saved"):
        assert needle in text.output
    assert saved.is_file()
    out = runner.invoke(cli, ["threshold", "--dataset", "wine", "--l2", "0.0", "--target", str(saved), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    t = report["threshold"]
    assert t["tau_rho_2"] == pytest.approx(t["tau_2"]) and t["n_classes"] == 3
    assert t["tau_2"] == pytest.approx(t["a"] / t["kappa_2"])
    assert report["target_test"] < report["clean_test"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["threshold"], "give exactly one target: --target FILE or --eps-w X"),
        (["threshold", "--eps-w", "0.1", "--target", "x.pt"], "give exactly one target"),
        (["threshold", "--eps-w", "-1"], "--eps-w must be > 0"),
        (["threshold", "--eps-w", "0.1", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["threshold", "--target", "missing.pt"], "--target: file not found"),
        (["threshold", "--eps-w", "0.1", "--l2", "-0.1"], "--l2 must be ≥ 0"),
    ],
)
def test_threshold_errors(runner, tmp_path, args, message):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_threshold_rejects_a_foreign_state_dict(runner, tmp_path):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), bad)
    result = runner.invoke(cli, ["threshold", "--dataset", "wine", "--target", str(bad)])
    assert result.exit_code == 2 and "cannot load" in result.output


def test_regression_gate_bounds_the_mse_increase(runner, tmp_path):
    cfg = write_yaml(tmp_path / "r.yaml", tiny_config(dataset={"name": "diabetes"}, model={"name": "ridge"},
                                                      attacks=[{"name": "statp"}], budgets=[0.2], candidates={"l2": [1e-3]}))  # fmt: skip
    assert runner.invoke(cli, ["run", str(cfg), "--out", str(tmp_path), "--quiet"]).exit_code == 0
    passed = runner.invoke(cli, ["gate", str(tmp_path / "tiny"), "--budget", "0.2", "--max-increase", "1.0"])
    assert passed.exit_code == 0 and "worst-case MSE increase at ε = 0.2" in passed.output
    failed = runner.invoke(cli, ["gate", str(tmp_path / "tiny"), "--budget", "0.2", "--max-increase", "0.0001"])
    assert failed.exit_code == 1 and failed.output.startswith("FAIL: ")
