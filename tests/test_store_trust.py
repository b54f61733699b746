"""A store is trusted only when it matches its plan (issue 33, defect 4 and 13): the gate matches finished rows
to the planned cell keys one-to-one and validates every metric it reads."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.config import parse_config
from audit.grid.runner import run_audit
from audit.report.analysis import analyse
from audit.report.reading import planned_cell_keys
from tests.conftest import stored_cells, tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust")
    run_dir = run_audit(parse_config(tiny_config(name="trust")), output_dir=out, progress=False)
    return run_dir


def _gate(run_dir, *extra):
    return CliRunner().invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100", *extra])


def _worst(run_dir):
    cells = [c for c in stored_cells(run_dir) if c.budget == 0.1]
    return max(cells, key=lambda c: c.clean_test - c.poisoned_test)


TAMPERS = {
    "attack renamed": "UPDATE cells SET attack = 'lf_other', cell_key = replace(cell_key, '\"lf_adv\"', '\"lf_other\"') WHERE cell_key = :key",
    "attack renamed, key kept": "UPDATE cells SET attack = 'lf_random' WHERE cell_key = :key",
    "budget changed": "UPDATE cells SET budget = 0.3 WHERE cell_key = :key",
    "defense changed": "UPDATE cells SET defense = 'loss_filter' WHERE cell_key = :key",
    "deleted, another duplicated under its key": (
        "DELETE FROM cells WHERE cell_key = :key; INSERT INTO cells SELECT :key, position, candidate, attack, budget, defense, seed, "
        "status, clean_val, clean_test, poisoned_val, poisoned_test, n_poison, poisons_removed, clean_removed, seconds, device, error, "
        "diagnostics, finished_at, split FROM cells WHERE cell_key != :key LIMIT 1"
    ),
    "NULL metric": "UPDATE cells SET poisoned_test = NULL WHERE cell_key = :key",
    "text metric": "UPDATE cells SET poisoned_test = 'oops' WHERE cell_key = :key",
    "accuracy out of range": "UPDATE cells SET poisoned_test = 150.0 WHERE cell_key = :key",
}


def test_the_planned_keys_are_the_grids_cells(finished):
    a = analyse(finished)
    assert planned_cell_keys(a.meta, a.config) == {c.cell_key for c in stored_cells(finished)}
    assert len(planned_cell_keys(a.meta, a.config)) == a.meta["total_cells"]
    assert _gate(finished).exit_code == 0 and a.completeness().complete


@pytest.mark.parametrize("how", list(TAMPERS))
def test_a_store_that_does_not_match_its_plan_gets_no_verdict(finished, tmp_path, how):
    """Each tampering that once passed the gate (the worst cell renamed, moved to another budget or defense, or
    deleted with another row copied under its key; a NULL, text or impossible metric): exit 3, naming the cell,
    even with --allow-incomplete; the report renders and says so."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    worst = _worst(run_dir)
    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        for statement in TAMPERS[how].split("; "):
            db.execute(statement, {"key": worst.cell_key})
    db.close()
    for extra in ((), ("--allow-incomplete",)):
        out = _gate(run_dir, *extra)
        assert out.exit_code == 3, (how, out.output)
        assert "CORRUPT STORE" in out.output and "does not match the run's plan" in out.output, out.output
    if how not in ("attack renamed", "text metric"):
        return  # the report of two cases is enough (a report takes a second)
    summary_out = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert summary_out.exit_code in (0, 4) and "Traceback" not in summary_out.output
    html = (run_dir / "report.html").read_text()
    assert "The result store does not match the run" in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completeness"]["complete"] is False and summary["completeness"]["corrupt"]


def test_the_interval_says_what_it_covers(finished, tmp_path):
    """Issue 32: summary.json's ``intervals`` once always said seed variation was included; now it states the
    scope of this run — one seed here, so test points only — and the verdict and the report repeat it."""
    from audit.report import write_report

    write_report(finished)
    summary = json.loads((finished / "summary.json").read_text())
    scope = summary["recommendation"]["intervals_scope"]
    assert scope["seeds"] == 1 and scope["splits"] == 1 and scope["covers"] == ["test points"]
    assert summary["recommendation"]["intervals"] == summary["verdict"]["intervals"] == scope["text"]
    assert "at one seed of one data split; it does not cover split-to-split variation" in scope["text"]
    assert "seed variation (its worst attack ran at one seed)" in scope["text"]
    assert scope["text"] in (finished / "report.html").read_text()
    seeded = [{"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}}]  # the max-loss flip is seed-free: one seed
    cfg = tiny_config(name="two", seeds=[0, 1], budgets=[0.1], attacks=seeded, confirm={"attacks": ["label_flip_random"]})
    two = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(two)
    scope = json.loads((two / "summary.json").read_text())["recommendation"]["intervals_scope"]
    assert scope["seeds"] == 2 and scope["covers"] == ["test points", "seeds"] and "and 2 seeds of one data split" in scope["text"]


def test_a_documented_gradient_canceling_box_setting_runs_through_a_config(tmp_path):
    """Issue 34, item 2: ``box: data | none`` (README's attack table) failed every GC cell with "got multiple values
    for keyword argument 'box'". Through a YAML config and the CLI: both run; ``data`` keeps every poison in the
    feature box, ``none`` (the paper's unbounded setting) leaves some outside it."""

    from audit.config import AuditConfig
    from audit.grid.store import Store
    from audit.grid.work import poison_cache_key
    from tests.conftest import write_yaml

    attacks = [{"name": "gradient_canceling", "id": f"gc_{b}", "params": {"box": b, "epochs": 30}} for b in ("data", "none")]
    cfg = tiny_config(name="box", attacks=attacks, candidates={"l2": [0.01]}, budgets=[0.1], confirm=False)
    out = CliRunner().invoke(cli, ["run", str(write_yaml(tmp_path / "box.yaml", cfg)), "--out", str(tmp_path), "--quiet"])
    assert out.exit_code == 0, out.output
    run_dir = tmp_path / "box"
    assert {c.status for c in stored_cells(run_dir)} == {"ok"}
    store = Store.open_existing(run_dir)
    try:
        config, fingerprint = AuditConfig.model_validate(store.meta("config")), store.meta("fingerprint")
        poisons = {c.attack: store.load_poisons(poison_cache_key(c.candidate, c.attack, dict(config.attack_spec(c.attack).params),
                                                                 c.budget, c.seed, fingerprint))
                   for c in stored_cells(run_dir)}  # fmt: skip
    finally:
        store.close()
    assert all(p is not None for p in poisons.values()), "poisons cached under the cell's key"
    data = analyse(run_dir).meta["dataset"]
    lo, hi = data["feature_box"]
    x_data, x_none = poisons["gc_data"][0], poisons["gc_none"][0]
    assert x_data.min() >= lo - 1e-6 and x_data.max() <= hi + 1e-6
    assert x_none.min() < lo - 1e-3 or x_none.max() > hi + 1e-3


def _snapshot(run_dir):
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_read_only_run_directory_is_gated_and_reported_with_the_outputs_elsewhere(finished, tmp_path, monkeypatch):
    """Issue 33, defect 12: a run directory this process cannot write (a read-only mount, another user's) can still be
    gated with --junit elsewhere and reported with --out. Root ignores permissions, so the mount is simulated where the
    tool meets it: ``os.access`` says the directory is not writable and SQLite refuses to open the store for writing
    (it cannot create its ``-shm`` file there), as it does on a read-only file system; nothing in the directory changes."""
    run_dir = tmp_path / "ro"
    shutil.copytree(finished, run_dir)
    before = _snapshot(run_dir)
    real_access, real_connect = os.access, sqlite3.connect

    def access(path, mode, *args, **kwargs):
        inside = Path(path).resolve() == run_dir.resolve() or run_dir.resolve() in Path(path).resolve().parents
        return False if inside and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    def connect(database, *args, **kwargs):
        text = str(database)
        if str(run_dir.resolve()) in text or str(run_dir) in text:
            if not (kwargs.get("uri") and ("immutable=1" in text or "mode=ro" in text)):
                raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(sqlite3, "connect", connect)
    out = tmp_path / "outputs"
    out.mkdir()
    gated = _gate(run_dir, "--junit", str(out / "gate.xml"))
    assert gated.exit_code == 0 and gated.output.startswith("PASS"), gated.output
    assert "<testsuite" in (out / "gate.xml").read_text()
    reported = CliRunner().invoke(cli, ["report", str(run_dir), "--out", str(out)])
    assert reported.exit_code == 0, reported.output
    assert json.loads((out / "summary.json").read_text())["name"] == "trust" and (out / "report.html").stat().st_size > 10_000
    assert _snapshot(run_dir) == before
    refused = CliRunner().invoke(cli, ["report", str(run_dir), "--out", str(tmp_path / "missing")])
    assert refused.exit_code == 2 and "no such directory" in refused.output


def test_a_plan_edited_after_the_start_gets_no_verdict_and_fails_verify(finished, tmp_path):
    """Issue 33: the grid's plan is digested when the run starts (``plan_digest``) and every reader checks it; the
    manifest records the whole plan's digest and ``verify`` checks the store against it. A tamperer who drops a
    planned cell together with its row — which once left a consistent, smaller store — gets no verdict (exit 3)
    and, even after rewriting the store's hash in an unsigned manifest, a failed verify."""
    from audit.report.integrity import sha256_file

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    assert CliRunner().invoke(cli, ["export", str(run_dir), "--format", "md"]).exit_code == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["plan_digest"]) == 64
    assert CliRunner().invoke(cli, ["verify", str(run_dir)]).exit_code == 0
    worst = _worst(run_dir)
    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        seeds = json.loads(db.execute("SELECT value FROM meta WHERE key = 'cell_seeds'").fetchone()[0])
        triple = json.dumps([worst.candidate, worst.attack, worst.defense])
        seeds[triple] = [s for s in seeds[triple] if s != worst.seed]
        db.execute("UPDATE meta SET value = ? WHERE key = 'cell_seeds'", (json.dumps(seeds),))
        db.execute("DELETE FROM cells WHERE attack = ? AND candidate = ? AND defense = ? AND seed = ?",
                   (worst.attack, worst.candidate, worst.defense, worst.seed))  # fmt: skip
        db.execute("UPDATE meta SET value = ? WHERE key = 'total_cells'", (json.dumps(len(stored_cells(finished)) - 2),))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    out = _gate(run_dir, "--allow-incomplete")
    assert out.exit_code == 3 and "the stored plan" in out.output, out.output
    for entry in manifest["files"]:
        if entry["path"] == "results.sqlite":
            entry["sha256"], entry["bytes"] = sha256_file(run_dir / "results.sqlite"), (run_dir / "results.sqlite").stat().st_size
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    verified = CliRunner().invoke(cli, ["verify", str(run_dir)])
    assert verified.exit_code == 1 and "not the plan the manifest records" in verified.output, verified.output
