"""Nothing lost, no false pass (issue 14): an honest gate, failed runs that say so, run-directory safety."""

import json
import sqlite3
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml


@pytest.fixture
def runner():
    return CliRunner()


def _run(runner, tmp_path, cfg, *extra):
    path = write_yaml(tmp_path / "audit.yaml", cfg)
    return runner.invoke(cli, ["run", str(path), "--out", str(tmp_path / "reports"), "--quiet", *extra])


def test_gate_gives_no_verdict_on_an_incomplete_run(runner, tmp_path):
    """A run killed before its worst cells finished must not PASS: exit 3, a JUnit error, and only
    an explicit --allow-incomplete judges the finished cells, saying how many are missing."""
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    run_dir = tmp_path / "reports" / "tiny"
    full = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "1"])
    assert full.exit_code == 1 and full.output.startswith("FAIL: ")  # the complete run fails the gate
    with sqlite3.connect(run_dir / "results.sqlite") as db:  # as after a kill: the adversarial cells never ran
        removed = db.execute("DELETE FROM cells WHERE attack = 'lf_adv'").rowcount
    assert removed == 4
    refused = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "1"])
    assert refused.exit_code == 3, refused.output
    assert refused.output.startswith("NO VERDICT: the run is incomplete (4 of 8 cells finished, 0 failed, 4 not run)")
    suite = ET.parse(run_dir / "gate.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("failures") == "0" and suite.find("testcase/error") is not None
    allowed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "1", "--allow-incomplete"])
    assert allowed.exit_code in (0, 1) and "INCOMPLETE run judged on its finished cells only (4 of 8 cells finished" in allowed.output
    props = {p.get("name"): p.get("value") for p in ET.parse(run_dir / "gate.xml").getroot().iter("property")}
    assert props["cells_missing"] == "4"
    assert runner.invoke(cli, ["report", str(run_dir)]).exit_code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completeness"] == {"planned": 8, "finished": 4, "failed": 0, "missing": 4, "corrupt": [], "complete": False}
    assert "Provisional — incomplete run — Recommendation" in (run_dir / "report.html").read_text()


def test_a_run_whose_cells_all_failed_exits_non_zero_after_writing_the_report(runner, tmp_path, monkeypatch):
    (tmp_path / "onehead.py").write_text("from torch import nn\ndef make(n_features):\n    return nn.Linear(n_features, 1)\n")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(dataset={"name": "wine"}, model={"name": "user", "factory": "onehead:make"})
    result = _run(runner, tmp_path, cfg)
    assert result.exit_code == 4, result.output
    assert "error: all 8 cells failed (first error: " in result.output
    report = (tmp_path / "reports" / "tiny" / "report.html").read_text()
    assert "8 failed" in report
    gate = runner.invoke(cli, ["gate", str(tmp_path / "reports" / "tiny"), "--budget", "0.1", "--max-drop", "100"])
    assert gate.exit_code == 3  # no verdict on failed cells, however lax the threshold


@pytest.mark.parametrize("name", [".", "..", "a/b", ".hidden", "x" * 101])
def test_run_names_are_plain_directory_names(runner, tmp_path, name):
    result = _run(runner, tmp_path, tiny_config(name=name))
    assert result.exit_code == 2 and "audit.yaml: name: must be one plain directory name" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()  # nothing written


def test_restart_removes_only_what_the_tool_wrote(runner, tmp_path):
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    run_dir = tmp_path / "reports" / "tiny"
    (run_dir / "my_notes.txt").write_text("keep me")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "train.csv").write_text("a,b\n1,2\n")
    changed = tiny_config(budgets=[0.1])
    assert _run(runner, tmp_path, changed).exit_code == 2  # a different config needs --restart
    result = _run(runner, tmp_path, changed, "--restart")
    assert result.exit_code == 0, result.output
    assert (run_dir / "my_notes.txt").read_text() == "keep me" and (run_dir / "data" / "train.csv").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["completeness"]["planned"] == 4


def test_a_directory_that_is_not_a_run_is_refused_and_left_alone(runner, tmp_path):
    victim = tmp_path / "reports" / "tiny"
    victim.mkdir(parents=True)
    (victim / "train.csv").write_text("precious")
    for extra in ((), ("--restart",)):
        result = _run(runner, tmp_path, tiny_config(), *extra)
        assert result.exit_code == 2 and "is not a poison-audit run directory" in result.output
    assert sorted(p.name for p in victim.iterdir()) == ["train.csv"]
    assert runner.invoke(cli, ["report", str(victim)]).exit_code == 2
    assert sorted(p.name for p in victim.iterdir()) == ["train.csv"]


def test_a_locked_run_directory_is_refused_and_a_dead_holder_does_not_block(runner, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    run_dir = tmp_path / "reports" / "tiny"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom audit.grid.lock import RunLock\n"
        f"with RunLock({str(run_dir)!r}, 'run'):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["run", str(write_yaml(tmp_path / "audit.yaml", tiny_config())), "--out", str(tmp_path / "reports"), "--quiet"],
                     ["run", str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "reports"), "--quiet", "--restart"],
                     ["report", str(run_dir)]):  # fmt: skip
            result = runner.invoke(cli, args)
            assert result.exit_code == 2, result.output
            assert f"is in use by poison-audit run (pid {holder.pid} on " in result.output
        assert (run_dir / "results.sqlite").is_file()  # --restart deleted nothing under the running holder
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert runner.invoke(cli, ["report", str(run_dir)]).exit_code == 0  # the kernel dropped the dead holder's lock


def _arrays(n, classes, d=3, seed=0):
    import numpy as np

    from audit.data import Dataset

    rng = np.random.default_rng(seed)
    split = [rng.random((n, d), dtype=np.float32) for _ in range(3)]
    labels = [np.arange(n) % classes for _ in range(3)]
    return Dataset(name="tiny-data", task="classification", x_train=split[0], y_train=labels[0], x_val=split[1], y_val=labels[1],
                   x_test=split[2], y_test=labels[2], lo=np.zeros(d, np.float32), hi=np.ones(d, np.float32), n_classes=max(classes, 2))  # fmt: skip


@pytest.mark.parametrize("n, classes, message", [
    (1, 1, r"y_train: need at least two classes \(labels found: \[0\]\)"),  # audit.data.check_dataset, as a loaded file's
    (40, 1, r"y_train: need at least two classes"),
    (3, 2, r"budgets: ε = 0.1 of 3 training points is less than one poison; use ε > 0.167"),
])  # fmt: skip
def test_degenerate_data_is_refused_before_anything_runs(tmp_path, n, classes, message):
    from audit.config import parse_config
    from audit.errors import AuditError
    from audit.grid import plan_audit

    with pytest.raises(AuditError, match=message):
        plan_audit(parse_config(tiny_config(budgets=[0.1, 0.3])), dataset=_arrays(n, classes), output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_scientific_notation_is_a_number_in_every_numeric_field(tmp_path):
    from audit.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: sci\ncandidates: {l2: [0, 1e-4, 1E-3]}\nbudgets: [3e-2]\ntraining: {lr: 5e-2, epochs: 10}\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.candidates["l2"] == [0.0, 1e-4, 1e-3] and cfg.budgets == [0.03] and cfg.training.lr == 0.05
    from audit.config import parse_config

    assert parse_config({"candidates": {"l2": ["1e-4", 0]}}).candidates["l2"] == [1e-4, 0.0]  # numeric strings from JSON too


def test_boolean_seeds_are_refused(runner, tmp_path):
    result = _run(runner, tmp_path, tiny_config(seeds=[True, False]))
    assert result.exit_code == 2 and "seeds: expected integers ≥ 0, not true/false" in result.output


def test_names_with_mathtext_render(tmp_path):
    """An attack id with $...$ is shown as written: matplotlib never parses labels as mathtext."""
    from audit.config import parse_config
    from audit.grid import run_audit
    from audit.report import write_report

    cfg = tiny_config(attacks=[{"name": "label_flip", "id": "$\\\\alpha$_flip", "params": {"variant": "random"}}])
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    html = write_report(run).read_text()
    assert "$\\\\alpha$_flip" in html


def test_user_files_get_one_line_errors(runner, tmp_path, monkeypatch):
    """A text file as .npz, a csv with a byte-order mark, a relative dataset path from another directory."""
    import numpy as np

    (tmp_path / "fake.npz").write_text("x_train,y_train\n1,2\n")
    cfg = tiny_config(dataset={"name": "npz", "path": "fake.npz"})
    result = _run(runner, tmp_path, cfg)
    assert result.exit_code == 2 and "fake.npz: not an .npz archive" in result.output and "pickle" not in result.output

    rng = np.random.default_rng(0)
    rows = ["\ufefflabel,a,b"] + [f"{i % 2},{rng.random():.3f},{rng.random():.3f}" for i in range(60)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bom.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = write_yaml(tmp_path / "data" / "audit.yaml", tiny_config(dataset={"name": "csv", "path": "bom.csv", "label_column": "label"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # dataset.path is relative to the config file, not the working directory
    result = runner.invoke(cli, ["run", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_mismatched_target_state_dict_names_the_keys(runner, tmp_path):
    import torch
    from torch import nn

    torch.save(nn.Linear(5, 2).state_dict(), tmp_path / "t.pt")
    result = runner.invoke(cli, ["threshold", "--dataset", "breast_cancer", "--target", str(tmp_path / "t.pt")])
    assert result.exit_code == 2
    assert "as a state dict of logreg: missing keys ['linear.bias', 'linear.weight'], unexpected keys ['bias', 'weight']" in result.output


def test_ctrl_c_during_startup_exits_130(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, audit.threads\ndef boom(*a, **k):\n    raise KeyboardInterrupt\n"
        "audit.threads.configure_threads = boom  # as if Ctrl-C hit while torch is being imported\n"
        "sys.argv = ['poison-audit', 'run']\nimport audit.cli\naudit.cli.main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 130 and "interrupted" in result.stderr


def _cells_stored(run_dir):
    path = run_dir / "results.sqlite"
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


def _comparable(summary):
    drop = {"seconds", "device"}
    return [{k: v for k, v in c.items() if k not in drop} for c in summary["cells"]], summary["recommendation"]


def _command(cfg):
    import sys

    return [sys.executable, "-m", "audit", "run", str(cfg), "--quiet", "--threads", "1", "--out"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run of the 12-cell config, in a subprocess like the killed ones."""
    import os
    import subprocess

    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_yaml(tmp / "audit.yaml", tiny_config(seeds=[0, 1]))
    done = subprocess.run([*_command(cfg), str(tmp / "ref")], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads((tmp / "ref" / "tiny" / "summary.json").read_text())


# mid-grid by default; the other two moments (≈ 25 s together) with the slow tests: the default suite is at its time budget
@pytest.mark.parametrize(
    "moment", [pytest.param("loading", marks=pytest.mark.slow), "mid_grid", pytest.param("after_last_cell", marks=pytest.mark.slow)]
)
def test_kill_9_loses_nothing_and_resumes_to_the_same_summary(tmp_path, moment, uninterrupted):
    import os
    import signal
    import subprocess
    import time

    cfg = write_yaml(tmp_path / "audit.yaml", tiny_config(seeds=[0, 1]))  # 12 cells: lf_adv runs at one seed (no seed changes it)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = _command(cfg)
    run_dir = tmp_path / "killed" / "tiny"
    victim = subprocess.Popen([*command, str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    if moment == "loading":
        time.sleep(0.5)
    else:
        want = 4 if moment == "mid_grid" else 12
        while _cells_stored(run_dir) < want and time.time() < deadline and victim.poll() is None:
            time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    stored = _cells_stored(run_dir)
    finished: dict[str, float] = {}
    if moment == "mid_grid":
        assert 4 <= stored < 12, stored  # killed inside the grid
        assert not (run_dir / "report.html").exists()
        with sqlite3.connect(run_dir / "results.sqlite") as db:
            finished = dict(db.execute("SELECT cell_key, finished_at FROM cells WHERE status = 'ok'"))
    resumed = subprocess.run([*command, str(tmp_path / "killed")], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        keys = [k for (k,) in db.execute("SELECT cell_key FROM cells")]
        after = dict(db.execute("SELECT cell_key, finished_at FROM cells"))
    assert len(keys) == len(set(keys)) == 12  # every cell exactly once
    assert all(after[k] == t for k, t in finished.items()), "a cell finished before the kill was recomputed"
    got = json.loads((run_dir / "summary.json").read_text())
    assert _comparable(got) == _comparable(uninterrupted)


def test_threads_follow_the_cpus_available_and_are_part_of_the_fingerprint(tmp_path):
    import os

    import torch

    from audit.config import parse_config
    from audit.errors import AuditError
    from audit.grid import plan_audit, run_audit
    from audit.threads import available_cpus, configure_threads

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        config = parse_config(tiny_config(budgets=[0.1]))
        one = plan_audit(config, output_dir=tmp_path).fingerprint()
        run_audit(config, output_dir=tmp_path, progress=False)
        configure_threads(2)
        assert plan_audit(config, output_dir=tmp_path).fingerprint() != one
        with pytest.raises(AuditError, match=r"was run with torch at 1 thread\(s\) per cell and this run would use 2 .* --restart"):
            run_audit(config, output_dir=tmp_path, progress=False)  # never mixes cells computed under two thread counts
        with pytest.raises(ValueError, match="--threads must be ≥ 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_defenses_that_read_validation_get_their_own_half_of_it(tmp_path):
    """Issue 16: selection must not reuse the points a defense filtered with."""
    import numpy as np

    from audit.config import parse_config
    from audit.data import load_dataset
    from audit.grid import plan_audit

    cfg = parse_config(tiny_config(defenses=["none", "influence_filter"]))
    plan = plan_audit(cfg, output_dir=tmp_path)
    full = load_dataset(cfg.dataset)
    x_def, y_def = plan.dataset.defense_validation()
    assert len(y_def) + len(plan.dataset.y_val) == len(full.y_val) and len(y_def) == len(full.y_val) // 2
    rows = {r.tobytes() for r in full.x_val}
    mine, theirs = {r.tobytes() for r in plan.dataset.x_val}, {r.tobytes() for r in x_def}
    assert mine | theirs == rows and not (mine & theirs)  # a partition of D_val
    assert np.array_equal(plan_audit(cfg, output_dir=tmp_path).dataset.x_val, plan.dataset.x_val)  # seeded
    defense = cfg.defense_spec("influence_filter").defense.for_cell(0.1, 0, plan.dataset)
    assert {r.tobytes() for r in defense.validation[0]} == theirs
    plain = plan_audit(parse_config(tiny_config()), output_dir=tmp_path)
    assert plain.dataset.defense_val is None and len(plain.dataset.y_val) == len(full.y_val)  # no reader: D_val whole


def test_threshold_on_the_users_own_data(runner, tmp_path):
    """Issue 16: `threshold --dataset my.npz`, a .csv with --label-column, or --config; the same one-line errors."""
    import numpy as np
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=300, n_features=5, random_state=0)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y)
    rows = ["label," + ",".join(f"f{i}" for i in range(5))] + [f"{t}," + ",".join(f"{v:.5f}" for v in r) for r, t in zip(x, y)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    taus = []
    for args in (["--dataset", str(tmp_path / "mine.npz")], ["--dataset", str(tmp_path / "mine.csv"), "--label-column", "label"]):
        result = runner.invoke(cli, ["threshold", *args, "--eps-w", "0.2", "--l2", "1e-3", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["threshold"]["n_classes"] == 2 and report["threshold"]["condition"].startswith("exact")
        taus.append(report["threshold"]["tau_rho_2"])
    assert taus[0] == pytest.approx(taus[1], rel=1e-3, abs=1e-3)  # the same data either way (csv rounds to 5 decimals)
    config = write_yaml(tmp_path / "audit.yaml", tiny_config(dataset={"name": "npz", "path": "mine.npz"}))
    result = runner.invoke(cli, ["threshold", "--config", str(config), "--eps-w", "0.2", "--l2", "1e-3", "--json"])
    assert result.exit_code == 0, result.output
    no_column = runner.invoke(cli, ["threshold", "--dataset", str(tmp_path / "mine.csv"), "--eps-w", "0.2"])
    assert no_column.exit_code == 2 and no_column.output.strip() == "error: --dataset: a .csv needs --label-column (the column holding the labels)"
    bad = runner.invoke(cli, ["threshold", "--dataset", str(tmp_path / "nope.txt"), "--eps-w", "0.2"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output and "or a .npz, a .csv or an image folder" in bad.output


@pytest.mark.parametrize("text, message", [
    ("budgets: [2]\n", "the poison budget ε must be in (0, 1]"),
    ("seeds: [true]\n", "seeds: expected integers ≥ 0, not true/false"),
    ("name: ..\n", "name: must be one plain directory name"),
])  # fmt: skip
def test_config_mistakes_are_reported_before_torch_and_art_load(tmp_path, text, message):
    """Issue 14: validate first, import heavy modules after (0.4 s instead of ≈ 4 s for these)."""
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = ("import sys\nsys.argv = ['poison-audit', 'run', sys.argv[1]]\nimport audit.cli\ntry:\n    audit.cli.main()\n"
            "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules, 'art' in sys.modules)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "exit 2 False False", result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("never", ["zero_bytes", "no_tables"])
def test_a_store_killed_right_after_its_creation_is_replaced_on_resume(runner, tmp_path, never):
    """Issue 33, defect 10: a 0-byte store (or an SQLite file with no tables) once made resume and --restart both
    refuse the directory; it held nothing, so a resume replaces it. A store with content is still refused."""
    run_dir = tmp_path / "reports" / "tiny"
    run_dir.mkdir(parents=True)
    if never == "zero_bytes":
        (run_dir / "results.sqlite").write_bytes(b"")
    else:
        sqlite3.connect(run_dir / "results.sqlite").close()
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    assert json.loads((run_dir / "summary.json").read_text())["completeness"]["complete"]
    foreign = tmp_path / "foreign" / "tiny"
    foreign.mkdir(parents=True)
    (foreign / "results.sqlite").write_text("someone's data")
    out = runner.invoke(cli, ["run", str(write_yaml(tmp_path / "f.yaml", tiny_config())), "--out", str(tmp_path / "foreign"), "--quiet"])
    assert out.exit_code == 2 and (foreign / "results.sqlite").read_text() == "someone's data"


def test_a_resume_removes_the_half_written_poisons_a_kill_left(runner, tmp_path):
    """Issue 33, defect 15: poisons/*.tmp of a killed save stayed forever; a resume removes them, keeps every
    finished poison file, and leaves a link named *.tmp alone."""
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    poisons = tmp_path / "reports" / "tiny" / "poisons"
    finished = sorted(p.name for p in poisons.glob("*.npz"))
    (poisons / "tmpa1b2c3.tmp").write_bytes(b"half a poison")
    outside = tmp_path / "outside.tmp"
    outside.write_text("keep")
    (poisons / "link.tmp").symlink_to(outside)
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    assert not (poisons / "tmpa1b2c3.tmp").exists() and sorted(p.name for p in poisons.glob("*.npz")) == finished
    assert outside.read_text() == "keep"


@pytest.mark.parametrize("error", ["sqlite", "oserror"])
def test_a_full_disk_is_one_line_and_the_run_resumes(runner, tmp_path, monkeypatch, error):
    """Issue 33, defect 11: a full disk during `run` was a traceback (sqlite3.OperationalError), exit 1. Now one
    line naming the cause, exit 2; the cells stored before are kept and the same command finishes the run."""
    import errno

    from audit.grid.store import Store

    put = Store.put_cell
    calls = []

    def full_after_three(self, cell):
        calls.append(cell)
        if len(calls) > 3:
            if error == "sqlite":
                raise sqlite3.OperationalError("database or disk is full")
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        put(self, cell)

    monkeypatch.setattr(Store, "put_cell", full_after_three)
    out = _run(runner, tmp_path, tiny_config())
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on "), out.output
    monkeypatch.setattr(Store, "put_cell", put)
    assert _run(runner, tmp_path, tiny_config()).exit_code == 0
    summary = json.loads((tmp_path / "reports" / "tiny" / "summary.json").read_text())
    assert summary["completeness"]["finished"] == 8
