"""The Ray executor (issue 20) on a two-worker local cluster: the local executor's numbers, resume
after the coordinator is killed, failures recorded and the audit going on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit import attacks as attacks_module
from audit.config import parse_config
from audit.errors import AuditError
from audit.grid.adaptive import is_adaptive
from audit.grid.runner import run_audit
from tests import ray_helpers
from tests.conftest import cell_numbers, count_ok, stored_cells, summary_numbers, tiny_config, write_yaml

ray = pytest.importorskip("ray", reason='the Ray extra is not installed (pip install -e ".[ray]")')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """Two CPUs on the loopback address; workers register the test attacks when they start."""
    assert not ray.is_initialized()
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.ray_helpers.register"})  # fmt: skip
    ray_helpers.register()  # the coordinator validates the config against its registry
    yield
    ray.shutdown()
    for name in ("exploding", "crashing"):  # the registry as the other test modules expect it
        attacks_module.ATTACKS.pop(name, None)


@pytest.mark.slow  # 12 s: the worker pool's test (tests/test_pool.py) runs the same units and dependencies by default
def test_ray_gives_the_local_executors_numbers(tmp_path, cluster, one_thread):
    # two seeds on two splits (one candidate: as many cells as two candidates on one split): every unit kind, per split
    cfg = tiny_config(defenses=["none", "loss_filter"], seeds=[0, 1], splits=2, candidates={"l2": [0.01]})
    local = run_audit(parse_config(cfg), output_dir=tmp_path / "local", progress=False)
    distributed = run_audit(parse_config({**cfg, "executor": {"kind": "ray"}}), output_dir=tmp_path / "ray", progress=False)
    a, b = stored_cells(local), stored_cells(distributed)
    assert {c.status for c in a} == {"ok"} and any(is_adaptive(c.attack) for c in a)  # the adaptive stage's units too
    assert {c.split for c in a} == {0, 1}
    assert cell_numbers(a) == cell_numbers(b)
    assert summary_numbers(local) == summary_numbers(distributed)
    assert sorted(p.name for p in (local / "poisons").iterdir()) == sorted(p.name for p in (distributed / "poisons").iterdir())


def test_a_raising_unit_marks_its_cells_failed_and_the_audit_goes_on(tmp_path, cluster):
    cfg = parse_config(tiny_config(attacks=[{"name": "exploding"}], executor={"kind": "ray"}, confirm=False))
    cells = stored_cells(run_audit(cfg, output_dir=tmp_path, progress=False))
    failed = [c for c in cells if c.status == "failed"]
    assert len(cells) == 4 and len(failed) == 2
    assert all(c.budget == 0.3 and c.error == "RuntimeError: solver diverged at large budget" for c in failed)
    assert {c.status for c in cells if c.budget == 0.1} == {"ok"}


@pytest.mark.slow  # 12 s: the default suite is at its time budget
def test_a_dead_worker_is_retried_then_its_cells_are_recorded_failed(tmp_path, cluster):
    cfg = parse_config(
        tiny_config(
            attacks=[{"name": "crashing"}],
            defenses=["none", "loss_filter"],
            adaptive={"enabled": "off"},
            executor={"kind": "ray", "retries": 1},
            confirm=False,
        )
    )
    cells = stored_cells(run_audit(cfg, output_dir=tmp_path, progress=False))
    failed = [c for c in cells if c.status == "failed"]
    assert len(cells) == 8 and len(failed) == 4  # 2 candidates × 2 defenses at ε = 0.3: the craft task's worker dies
    assert all(c.budget == 0.3 and c.error.startswith("WorkerCrashedError") for c in failed), [c.error for c in failed]
    assert {c.status for c in cells if c.budget == 0.1} == {"ok"}


@pytest.mark.slow  # 22 s: the default suite is at its time budget; resume is tested by default in test_run_safety and test_pool
def test_killed_coordinator_resumes_without_losing_or_repeating_a_cell(tmp_path, cluster):
    """A coordinator (the CLI, joined to this test's cluster) killed with SIGKILL mid-grid; a new
    coordinator of the same config stores each remaining cell once and recomputes none that was stored."""
    cfg = tiny_config(candidates={"l2": [0.0, 1e-3, 1e-2, 1e-1]}, seeds=[0, 1], training={"epochs": 400}, executor={"kind": "ray"})
    path = write_yaml(tmp_path / "audit.yaml", cfg)
    run_dir = tmp_path / "out" / "tiny"
    db = run_dir / "results.sqlite"
    cmd = [sys.executable, "-m", "audit", "run", str(path), "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    err = open(tmp_path / "coordinator.err", "w")  # what the coordinator said, for the assertion's message
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env, cwd=ROOT)
    deadline = time.time() + 120
    while count_ok(db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    try:
        said = (tmp_path / "coordinator.err").read_text()[-1500:]
        assert proc.poll() is None, f"the coordinator ended (exit {proc.poll()}) before it could be killed: {said}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the killed coordinator started
        except ProcessLookupError:
            pass
    err.close()
    done_before = {c.cell_key: c.finished_at for c in stored_cells(run_dir) if c.status == "ok"}
    assert 3 <= len(done_before) < 24

    run_audit(parse_config(cfg), output_dir=tmp_path / "out", progress=False)  # the fingerprint holds the cells' thread count, 1
    cells = stored_cells(run_dir)
    assert len(cells) == 24 and len({c.cell_key for c in cells}) == 24 and {c.status for c in cells} == {"ok"}
    after = {c.cell_key: c.finished_at for c in cells}
    assert all(after[k] == t for k, t in done_before.items()), "a cell finished before the kill was recomputed"


def test_gpus_per_cell_on_a_cpu_run_is_refused(tmp_path):
    cfg = parse_config(tiny_config(executor={"kind": "ray", "gpus_per_cell": 0.5}))
    with pytest.raises(AuditError, match=r"executor.gpus_per_cell is 0.5 but the run's device is the CPU"):
        run_audit(cfg, output_dir=tmp_path, progress=False)
    assert not tmp_path.joinpath("tiny").exists()
