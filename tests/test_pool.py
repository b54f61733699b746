"""The local worker pool (``executor.workers`` > 1; the command line's default): the in-process
executor's numbers at the same thread count, failures recorded, a dead worker stopping the run with
one line and the run resuming, the command line's defaults and errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from audit import attacks as attacks_module
from audit.cli import cli
from audit.config import parse_config
from audit.errors import AuditError
from audit.grid.adaptive import is_adaptive
from audit.grid.runner import plan_audit, resolve_workers, run_audit
from audit.grid.store import Store
from audit.threads import available_cpus
from tests import ray_helpers
from tests.conftest import cell_numbers, stored_cells, summary_numbers, tiny_config, write_yaml


def test_the_pool_gives_the_in_process_numbers(tmp_path, one_thread):
    # two seeds on two splits, a filter (the adaptive stage's units too): every unit kind and dependency
    cfg = tiny_config(defenses=["none", "loss_filter"], seeds=[0, 1], splits=2, candidates={"l2": [0.01]})
    here = run_audit(parse_config(cfg), output_dir=tmp_path / "here", progress=False)
    pool = run_audit(parse_config({**cfg, "executor": {"workers": 2}}), output_dir=tmp_path / "pool", progress=False)
    a, b = stored_cells(here), stored_cells(pool)
    assert {c.status for c in a} == {"ok"} and any(is_adaptive(c.attack) for c in a) and {c.split for c in a} == {0, 1}
    assert cell_numbers(a) == cell_numbers(b)
    assert summary_numbers(here) == summary_numbers(pool)
    assert sorted(p.name for p in (here / "poisons").iterdir()) == sorted(p.name for p in (pool / "poisons").iterdir())
    assert Store(pool).meta("threads") == 1


def test_an_attack_registered_at_run_time_reaches_the_workers_and_its_failures_are_cells(tmp_path, monkeypatch):
    monkeypatch.setitem(attacks_module.ATTACKS, "exploding", ray_helpers.Exploding)
    cfg = parse_config(tiny_config(attacks=[{"name": "exploding"}], executor={"workers": 2}, confirm=False))
    cells = stored_cells(run_audit(cfg, output_dir=tmp_path, progress=False))
    failed = [c for c in cells if c.status == "failed"]
    assert len(cells) == 4 and len(failed) == 2
    assert all(c.budget == 0.3 and c.error == "RuntimeError: solver diverged at large budget" for c in failed)
    assert {c.status for c in cells if c.budget == 0.1} == {"ok"}


def test_a_dead_worker_stops_the_run_with_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(attacks_module.ATTACKS, "crashing", ray_helpers.Crashing)  # its worker exits at ε = 0.3
    cfg = tiny_config(attacks=[{"name": "crashing"}], budgets=[0.1, 0.3], executor={"workers": 2}, confirm=False)
    with pytest.raises(AuditError, match=r"^executor.workers: a worker process died .*run the same command again to resume") as err:
        run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    assert "\n" not in str(err.value)
    run_dir = tmp_path / "tiny"
    before = {c.cell_key: c.finished_at for c in stored_cells(run_dir)}
    assert all(c.budget == 0.1 for c in stored_cells(run_dir))  # nothing of the crashed budget was stored

    monkeypatch.setitem(attacks_module.ATTACKS, "crashing", ray_helpers.Recovered)  # the cause gone (same name, same fingerprint)
    cells = stored_cells(run_audit(parse_config(cfg), output_dir=tmp_path, progress=False))
    assert len(cells) == 4 and {c.status for c in cells} == {"ok"}
    assert all({c.cell_key: c.finished_at for c in cells}[k] == t for k, t in before.items()), "a cell stored before the crash was recomputed"


class Net(torch.nn.Module):
    """A user's module: importable, so the workers can rebuild it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(30, 2)

    def forward(self, x):
        return self.linear(x)


def test_a_users_module_reaches_the_workers(tmp_path):
    cfg = parse_config(tiny_config(executor={"workers": 2}, candidates={"l2": [0.01]}, confirm=False))
    cells = stored_cells(run_audit(cfg, model=Net(), output_dir=tmp_path, progress=False))
    assert len(cells) == 4 and {c.status for c in cells} == {"ok"}


def test_a_run_that_cannot_reach_a_worker_is_refused_before_anything_is_written(tmp_path):
    class Local(torch.nn.Module):  # defined in a function: pickle cannot name it in another process
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(30, 2)

        def forward(self, x):
            return self.linear(x)

    cfg = parse_config(tiny_config(executor={"workers": 2}))
    with pytest.raises(AuditError, match=r"^executor.workers: the run cannot be sent to worker processes \(.*Local.*set executor.workers to 1"):
        plan_audit(cfg, model=Local(), output_dir=tmp_path)
    assert not (tmp_path / "tiny").exists()


def test_the_command_line_runs_cells_in_workers_by_default_at_one_thread_each(tmp_path, monkeypatch):
    monkeypatch.delenv("POISON_AUDIT_WORKERS")  # the suite's default (conftest): the command line's own default here
    path = write_yaml(tmp_path / "audit.yaml", tiny_config(confirm=False))
    out = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path), "--quiet"])
    assert out.exit_code == 0, out.output
    store = Store(tmp_path / "tiny")
    assert store.meta("threads") == 1  # auto: the CPUs over one thread per cell
    store.close()
    # in this process at one thread: the same numbers, so the run is finished, nothing recomputed
    before = {c.cell_key: c.finished_at for c in stored_cells(tmp_path / "tiny")}
    again = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path), "--quiet", "--workers", "1", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert {c.cell_key: c.finished_at for c in stored_cells(tmp_path / "tiny")} == before


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "0"], {}, "error: --workers: '0' is not 'auto' or a whole number from 1 to 1024 (also read from POISON_AUDIT_WORKERS)"),
        (
            [],
            {"POISON_AUDIT_WORKERS": "many"},
            "error: --workers: 'many' is not 'auto' or a whole number from 1 to 1024 (also read from POISON_AUDIT_WORKERS)",
        ),
    ],
)
def test_a_bad_worker_count_is_one_line_and_exit_2(tmp_path, monkeypatch, args, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = write_yaml(tmp_path / "audit.yaml", tiny_config())
    out = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path), "--quiet", *args])
    assert out.exit_code == 2 and out.output.strip() == message
    assert not (tmp_path / "tiny").exists()


def test_workers_resolve_from_the_cpus_and_the_threads_per_cell():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_workers(None, 1, cpu) == 1  # from Python: this process unless asked
    assert resolve_workers("auto", 1, cpu) == available_cpus()
    assert resolve_workers("auto", available_cpus(), cpu) == 1
    assert resolve_workers("auto", 1, gpu) == 1
    assert resolve_workers(3, 2, cpu) == 3
    with pytest.raises(AuditError, match="executor.workers: 0 is not between 1 and 1024"):
        parse_config(tiny_config(executor={"workers": 0}))
    with pytest.raises(AuditError, match="executor.workers is for kind 'local'"):
        parse_config(tiny_config(executor={"kind": "ray", "workers": 2}))
