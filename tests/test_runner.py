import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from audit import attacks as attacks_module
from audit import defenses as defenses_module
from audit.attacks import LabelFlip
from audit.config import parse_config
from audit.defenses import Defense, DefenseResult
from audit.errors import AuditError
from audit.grid.runner import run_audit
from tests.conftest import count_ok, tiny_config, tiny_n_train, write_yaml
from tests.conftest import stored_cells as _cells
from tests.ray_helpers import Exploding


def test_tiny_grid_fills_every_cell_once(tmp_path, tiny):
    run_dir = run_audit(parse_config(tiny), output_dir=tmp_path, progress=False)
    cells = _cells(run_dir)
    assert len(cells) == 8 and {c.status for c in cells} == {"ok"}
    assert len({c.cell_key for c in cells}) == 8
    assert [c.position for c in cells] == list(range(8))
    n = tiny_n_train()
    for c in cells:
        assert c.n_poison == round(c.budget * n) and c.poisons_removed == 0 and c.clean_removed == 0
        assert c.device == "cpu" and c.seconds > 0


def test_same_config_same_numbers(tmp_path, tiny):
    a = _cells(run_audit(parse_config(tiny), output_dir=tmp_path / "a", progress=False))
    b = _cells(run_audit(parse_config(tiny), output_dir=tmp_path / "b", progress=False))
    assert [(c.poisoned_test, c.poisoned_val, c.clean_test) for c in a] == [(c.poisoned_test, c.poisoned_val, c.clean_test) for c in b]


def test_rerun_reads_finished_cells_instead_of_recomputing(tmp_path, tiny, monkeypatch):
    run_dir = run_audit(parse_config(tiny), output_dir=tmp_path, progress=False)
    before = {c.cell_key: c.finished_at for c in _cells(run_dir)}

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(LabelFlip, "_run", boom)
    monkeypatch.setattr("audit.models.victim.TorchVictim.fit", boom)
    run_audit(parse_config(tiny), output_dir=tmp_path, progress=False)
    assert {c.cell_key: c.finished_at for c in _cells(run_dir)} == before


_Exploding = Exploding  # raises at ε > 0.2 (tests/ray_helpers.py: the Ray tests register it in workers)


def test_failing_cell_is_recorded_and_the_audit_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(attacks_module.ATTACKS, "exploding", _Exploding)
    cfg = parse_config(tiny_config(attacks=[{"name": "exploding"}], confirm=False))
    cells = _cells(run_audit(cfg, output_dir=tmp_path, progress=False))
    failed = [c for c in cells if c.status == "failed"]
    assert len(cells) == 4 and len(failed) == 2
    assert all(c.budget == 0.3 and c.error == "RuntimeError: solver diverged at large budget" for c in failed)
    assert {c.status for c in cells if c.budget == 0.1} == {"ok"}


class _DropFlagged(Defense):
    """Removes the last ε·n points of the mixed set, i.e. exactly the poisons (a perfect filter)."""

    name = "oracle_filter"
    description = "test-only"

    def apply(self, x, y, victim, hparams):
        keep = np.ones(len(y), bool)
        keep[len(y) - round(self.rate * tiny_n_train()) :] = False
        return DefenseResult(keep=keep, diagnostics={"removed": int((~keep).sum())})


def test_poisons_are_crafted_once_and_reused_by_every_defense(tmp_path, monkeypatch):
    monkeypatch.setitem(defenses_module.DEFENSES, "oracle_filter", _DropFlagged)
    calls = []
    original = LabelFlip._run
    monkeypatch.setattr(LabelFlip, "_run", lambda self, *a: calls.append(1) or original(self, *a))
    cfg = parse_config(tiny_config(defenses=["none", "oracle_filter"], attacks=[{"name": "label_flip"}], confirm=False))
    cells = _cells(run_audit(cfg, output_dir=tmp_path, progress=False))
    assert len(cells) == 8 and len(calls) == 4  # 2 candidates × 2 budgets, not × 2 defenses
    for c in cells:
        if c.defense == "oracle_filter":
            assert c.poisons_removed == c.n_poison and c.clean_removed == 0
            assert c.poisoned_test == pytest.approx(c.clean_test)  # all poison removed → the clean model again


def test_different_config_in_same_run_dir_needs_restart(tmp_path, tiny):
    run_audit(parse_config(tiny), output_dir=tmp_path, progress=False)
    changed = parse_config(tiny_config(budgets=[0.2]))
    with pytest.raises(AuditError, match="holds a run of a different config or training procedure .* pass --restart"):
        run_audit(changed, output_dir=tmp_path, progress=False)
    cells = _cells(run_audit(changed, output_dir=tmp_path, restart=True, progress=False))
    assert {c.budget for c in cells} == {0.2}


def test_bad_input_writes_nothing(tmp_path):
    cfg = parse_config(tiny_config(dataset={"name": "npz", "path": str(tmp_path / "missing.npz")}))
    with pytest.raises(AuditError, match="file not found"):
        run_audit(cfg, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(AuditError, match="exists and is a file"):
        run_audit(parse_config(tiny_config()), output_dir=blocker, progress=False)


@pytest.mark.slow
def test_kill_9_mid_grid_then_resume(tmp_path):
    """A subprocess killed with SIGKILL mid-grid; the re-run completes it with every cell exactly once (`slow`: 21 s;
    tests/test_run_safety.py's mid-grid kill checks the same — once, not recomputed, the same summary — in 13 s)."""
    cfg = tiny_config(candidates={"l2": [0.0, 1e-3, 1e-2, 1e-1]}, seeds=[0, 1], training={"epochs": 400})
    path = write_yaml(tmp_path / "audit.yaml", cfg)
    run_dir = tmp_path / "out" / "tiny"
    db = run_dir / "results.sqlite"
    cmd = [sys.executable, "-m", "audit", "run", str(path), "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while count_ok(db) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make the grid larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {c.cell_key: c.finished_at for c in _cells(run_dir) if c.status == "ok"}
    assert 5 <= len(done_before) < 24  # 4 candidates × 2 budgets × (2 seeds of lf_random + 1 of lf_adv: no seed changes it)
    assert not (run_dir / "report.html").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    cells = _cells(run_dir)
    assert len(cells) == 24 and len({c.cell_key for c in cells}) == 24
    assert {c.status for c in cells} == {"ok"}
    after = {c.cell_key: c.finished_at for c in cells}
    assert all(after[k] == t for k, t in done_before.items()), "a cell finished before the kill was recomputed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["cells"]) == 24


# the command line's default (worker processes) by default; the run in one process (--workers 1) with the slow tests
@pytest.mark.parametrize("workers", ["2", pytest.param("1", marks=pytest.mark.slow)])
def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path, workers):
    cfg = tiny_config(candidates={"l2": [0.0, 1e-2]}, seeds=[0, 1], training={"epochs": 400})  # 12 cells
    path = write_yaml(tmp_path / "audit.yaml", cfg)
    db = tmp_path / "out" / "tiny" / "results.sqlite"
    cmd = [sys.executable, "-m", "audit", "run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--workers", workers]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while count_ok(db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: finished cells are stored; run the same command again to resume" in err
    assert "Traceback" not in err
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert len(_cells(tmp_path / "out" / "tiny")) == 12


@pytest.mark.parametrize("axis, entry, kind, message", [
    ("attacks", {"name": "gradient_canceling"}, "lasso",
     r"attacks: 'gradient_canceling' needs a PyTorch model as the victim; this run's victim is a scikit-learn estimator"),
    ("attacks", {"name": "back_gradient"}, "lasso", r"attacks: 'back_gradient' needs a PyTorch model"),
    ("defenses", "influence_filter", "sklearn", r"defenses: 'influence_filter' needs a PyTorch model as the victim"),
    ("defenses", "roni", "torch", r"defenses: 'roni' needs a scikit-learn estimator as the victim; this run's victim is a PyTorch model"),
])  # fmt: skip
def test_victim_kind_is_checked_at_plan_time(tmp_path, axis, entry, kind, message):
    """An attack or defense that cannot work on the victim's kind is refused before anything is written
    (a Lasso has no torch surrogate; a LogisticRegression has one, so the white-box attacks take it)."""
    from sklearn.linear_model import Lasso, LogisticRegression

    from audit.grid import plan_audit

    cfg = tiny_config(output_dir=str(tmp_path), **({"attacks": [entry]} if axis == "attacks" else {"defenses": ["none", entry]}))
    if kind == "lasso":
        cfg.update(dataset={"name": "diabetes"}, model={"name": "ridge"})
    model = {"sklearn": LogisticRegression(max_iter=300), "lasso": Lasso()}.get(kind)
    with pytest.raises(AuditError, match=message):
        plan_audit(parse_config(cfg), model=model)
    assert not any(tmp_path.iterdir())  # nothing written
    if axis == "attacks":  # the surrogate of a LogisticRegression takes every white-box attack
        plan_audit(parse_config(tiny_config(output_dir=str(tmp_path), attacks=[entry, {"name": "tgda"}])), model=LogisticRegression())


def test_an_optimised_attack_warm_starts_from_its_poisons_at_the_smaller_budget(tmp_path):
    cfg = parse_config(tiny_config(candidates={"l2": [0.01]}, attacks=[{"name": "back_gradient", "id": "bg", "params": {"iterations": 4}}],
                                   confirm=False))  # fmt: skip
    cells = {c.budget: c for c in _cells(run_audit(cfg, output_dir=tmp_path, progress=False))}
    small, large = (cells[b].recorded("attack") for b in (0.1, 0.3))
    assert "warm_start" not in small and large["warm_start"] == cells[0.1].n_poison  # the whole smaller set, then new starts
    assert large["objective_final"] >= small["objective_final"]
