"""The confirmation stage: the verdict rests on full-strength attacks, or every output says it is a lower bound."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

import audit.grid.runner as runner_module
from audit.cli import cli
from audit.config import parse_config
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.grid.store import Store
from audit.report import write_report
from audit.report.aggregation import LOWER_BOUND
from audit.report.analysis import analyse
from audit.report.gate import gate, step_summary
from tests.conftest import stored_cells, tiny_config, write_yaml


def reduced_config(**overrides):
    """Two seeds; the grid's random label flip runs at the first only (a reduced setting), so the confirming
    battery (the random label flip at every seed: ``label_flip_random@paper``) needs cells of its own."""
    cfg = tiny_config(
        seeds=[0, 1],
        attacks=[{"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}, "seeds": 1}],
        confirm={"attacks": ["label_flip_random"]},
        recommendation={"clean_tolerance": 100.0},  # both candidates eligible: the choice is the worst case's
    )
    cfg.update(overrides)
    return cfg


def test_confirm_config_forms_and_errors():
    assert parse_config(tiny_config(confirm=False)).confirm.enabled is False
    assert parse_config(tiny_config(confirm={"budgets": [0.3]})).confirm_budgets == [0.1, 0.3]  # the target budget always
    with pytest.raises(AuditError, match=r"confirm.budgets: 0.2 is not one of the budgets \[0.1, 0.3\]"):
        parse_config(tiny_config(confirm={"budgets": [0.2]}))
    with pytest.raises(AuditError, match="confirm.attacks: 'nope' is not an attack of the battery; valid: label_flip_random"):
        parse_config(tiny_config(confirm={"attacks": ["nope"]}))
    # the stage adds cells of its own keys: turning it off or on never invalidates a run's screening cells
    assert parse_config(tiny_config(confirm=False)).fingerprint() == parse_config(tiny_config()).fingerprint()


def test_an_attack_the_grid_runs_at_paper_strength_needs_no_confirmation_cells():
    cfg = parse_config(tiny_config()).resolved("classification", "torch")
    assert cfg.confirmation_attacks() == []  # the grid's label flips are the battery's, at every seed
    reduced = parse_config(reduced_config()).resolved("classification", "torch")
    assert [a.key for a in reduced.confirmation_attacks()] == ["label_flip_random@paper"]
    battery = {k: v for k, v in tiny_config().items() if k not in ("attacks", "confirm")}  # the quick profile's battery
    keys = [a.key for a in parse_config(battery).resolved("classification", "torch").confirmation_attacks()]
    assert "back_gradient@paper" in keys and "tgda@paper" in keys  # quick reduces back-gradient and leaves TGDA out


def _confirmation_cells(run_dir):
    from audit.grid.confirm import is_confirmation

    return [c for c in stored_cells(run_dir) if is_confirmation(c.attack)]


def test_confirmation_cells_cover_the_recommended_and_tied_settings_only(tmp_path):
    run_dir = run_audit(parse_config(reduced_config(candidates={"l2": [0.0, 1.0, 30.0]})), output_dir=tmp_path, progress=False)
    a = analyse(run_dir)
    conf = a.meta["confirmation"]
    tied = [tuple(json.loads(p)) for p in a.recommendation.tied]
    confirmed = {(c, d) for c, d in conf["pairs"]}
    assert conf["status"] == "done" and conf["budgets"] == [0.1]
    cells = _confirmation_cells(run_dir)
    assert cells and all(c.status == "ok" and c.budget == 0.1 and (c.candidate, c.defense) in confirmed for c in cells)
    assert {c.seed for c in cells} == {0, 1}  # every seed
    assert {json.dumps(hp, sort_keys=True) for hp, _ in tied} <= {c for c, _ in confirmed}
    assert len(confirmed) < 3, "ρ = 30 underfits: it is neither recommended nor tied, so it is screened only"
    assert a.strength().confirmed and a.completeness().complete
    assert "Verdict confirmed" in a.recommendation.reason


def test_a_confirmation_that_makes_the_pick_worse_confirms_the_runner_up_and_decides_again(tmp_path):
    cfg = parse_config(reduced_config())
    run_dir = run_audit(cfg, output_dir=tmp_path, progress=False)
    first = analyse(run_dir)
    pick = [first.recommendation.key, first.recommendation.defense]
    # fabricate: the pick's confirmation cells found far more damage; the runner-up is not confirmed yet
    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        db.execute("UPDATE cells SET poisoned_val = 0.0, poisoned_test = 0.0, diagnostics = json_remove(diagnostics, '$.val_points') "
                   "WHERE attack LIKE '%@paper' AND candidate = ?", (pick[0],))  # fmt: skip
        db.execute("DELETE FROM cells WHERE attack LIKE '%@paper' AND candidate != ?", (pick[0],))
        state = json.loads(db.execute("SELECT value FROM meta WHERE key = 'confirmation'").fetchone()[0])
        state.update(pairs=[pick], rounds=[{"recommended": pick, "confirmed": [pick]}], status="running",
                     cells=[k for k in state["cells"] if json.loads(k)[0] == json.loads(pick[0])])
        db.execute("UPDATE meta SET value = ? WHERE key = 'confirmation'", (json.dumps(state),))
    db.close()
    run_audit(cfg, output_dir=tmp_path, progress=False)  # resumes: decides again from what is stored
    a = analyse(run_dir)
    assert a.recommendation.key != pick[0]
    assert [a.recommendation.key, a.recommendation.defense] in a.meta["confirmation"]["pairs"]
    assert len(a.meta["confirmation"]["rounds"]) == 2
    assert a.strength().confirmed
    assert "Confirmation changed the recommendation" in a.recommendation.reason


def test_an_interrupted_confirmation_resumes_with_only_its_missing_cells(tmp_path, monkeypatch):
    cfg = parse_config(reduced_config())
    run_dir = run_audit(cfg, output_dir=tmp_path, progress=False)
    before = {c.cell_key: (c.poisoned_val, c.poisoned_test) for c in _confirmation_cells(run_dir)}
    pick = analyse(run_dir).recommendation.key
    gone = [c.cell_key for c in _confirmation_cells(run_dir) if c.candidate == pick][:1]
    db = sqlite3.connect(run_dir / "results.sqlite")
    with db:
        db.execute(f"DELETE FROM cells WHERE cell_key IN ({','.join('?' * len(gone))})", gone)
    db.close()
    pending = analyse(run_dir)
    assert not pending.strength().confirmed and "confirmation incomplete" in pending.strength().why
    assert not pending.completeness().complete
    calls = []
    real = runner_module.defense_unit
    monkeypatch.setattr(runner_module, "defense_unit", lambda plan, clean, c, poisons: calls.append(c.key) or real(plan, clean, c, poisons))
    run_audit(cfg, output_dir=tmp_path, progress=False)
    assert calls == gone
    after = {c.cell_key: (c.poisoned_val, c.poisoned_test) for c in _confirmation_cells(run_dir)}
    assert after == before  # the same numbers, from the cached poisons
    assert analyse(run_dir).strength().confirmed


def test_no_confirm_says_lower_bound_everywhere_and_the_gate_gives_no_pass(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", reduced_config(output_dir=str(tmp_path / "out")))
    runner = CliRunner()
    assert runner.invoke(cli, ["run", str(cfg), "--quiet", "--no-confirm"]).exit_code == 0
    run_dir = tmp_path / "out" / "tiny"
    assert not _confirmation_cells(run_dir)
    assert LOWER_BOUND in (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"]["confirmed"] is False and summary["recommendation"]["strength"] == LOWER_BOUND
    assert "--no-confirm" in summary["verdict"]["why"] and "LOWER BOUND" in summary["recommendation"]["reason"]

    refused = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100"])
    assert refused.exit_code == 3 and "no verdict" in refused.output and LOWER_BOUND in refused.output
    allowed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100", "--allow-lower-bound"])
    assert allowed.exit_code == 0 and allowed.output.startswith("PASS: LOWER BOUND")
    props = {p.get("name"): p.get("value") for p in ET.parse(run_dir / "gate.xml").getroot().iter("property")}
    assert props["confirmed"] == "false" and props["strength"] == LOWER_BOUND
    result = gate(run_dir, 0.1, 100.0, allow_lower_bound=True)
    assert LOWER_BOUND in step_summary(result, run_dir, "tiny")

    assert runner.invoke(cli, ["export", str(run_dir), "--format", "md", "--format", "json"]).exit_code == 0
    record = (run_dir / "compliance" / "record.md").read_text()
    assert "LOWER BOUND" in record and LOWER_BOUND.upper() in record
    assert json.loads((run_dir / "compliance" / "record.json").read_text())["facts"]["verdict_confirmed"] is False

    # the same run directory, confirmed now: the screening cells are reused, the verdict confirmed
    assert runner.invoke(cli, ["run", str(cfg), "--quiet"]).exit_code == 0
    assert _confirmation_cells(run_dir)
    confirmed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100"])
    assert confirmed.exit_code == 0 and "LOWER BOUND" not in confirmed.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["verdict"]["confirmed"] is True
    assert summary["verdict"]["per_budget"]["0.3"]["confirmed"] is False  # screened only at 0.3
    other = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "100"])
    assert other.exit_code == 3 and "ε = 0.3 was screened only" in other.output


def test_the_report_shows_screened_beside_confirmed(tmp_path):
    run_dir = run_audit(parse_config(reduced_config()), output_dir=tmp_path, progress=False)
    html = write_report(run_dir).read_text()
    assert "Screened and confirmed" in html and "label_flip_random@paper" in html
    store = Store.open_existing(run_dir)
    try:
        assert store.meta("config")["confirm"]["enabled"] is True
    finally:
        store.close()


def test_a_recommended_filter_is_confirmed_against_the_paper_attack_adapted_to_it(tmp_path):
    """A setting whose defense filters meets the confirming gradient attack in its adaptive form too."""
    from audit.grid.confirm import confirm_axes

    cfg = parse_config(tiny_config(candidates={"l2": [0.01]}, budgets=[0.1], defenses=["loss_filter"],
                                   attacks=[{"name": "back_gradient", "id": "bg", "params": {"iterations": 2}}],
                                   confirm={"attacks": ["back_gradient"]}, adaptive={"rounds": 1}))  # fmt: skip
    resolved = cfg.resolved("classification", "torch")
    assert [(k, d) for k, _, d in confirm_axes(resolved)] == [("back_gradient@paper", ["loss_filter"]),
                                                              ("back_gradient@paper~adaptive", ["loss_filter"])]  # fmt: skip
    run_dir = run_audit(cfg, output_dir=tmp_path, progress=False)
    cells = {c.attack: c for c in _confirmation_cells(run_dir)}
    assert set(cells) == {"back_gradient@paper", "back_gradient@paper~adaptive"}
    assert all(c.status == "ok" and c.defense == "loss_filter" for c in cells.values()), [c.error for c in cells.values()]
    a = analyse(run_dir)
    assert a.strength().confirmed and a.recommendation.defense == "loss_filter"
    rec = a.recommended()
    assert rec.worst_damage_test[0.1] >= max(rec.stats[(k, 0.1, "loss_filter")].damage_test for k in cells)


def test_an_attack_that_ran_only_in_the_confirmation_is_not_called_not_run(tmp_path):
    """StatP is not in the grid but confirms the verdict: the header's 'Not run' list must not name it."""
    cfg = reduced_config(confirm={"attacks": ["label_flip_random", "statp"]})
    run_dir = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    assert any(c.attack == "statp@paper" for c in _confirmation_cells(run_dir))
    html = write_report(run_dir).read_text()
    header = html[: html.index("</header>")]
    assert "StatP" not in header.split("Not run in this audit")[-1].split("</p>")[0]
    assert "statp@paper" in html  # in the screened-and-confirmed section


def test_a_confirming_back_gradient_starts_from_the_screens_poisons_and_never_ends_below_them(tmp_path):
    """The paper-strength back-gradient of the confirmation takes the screen's poisons of the same cell as one more
    start (the paper's own starts still run): its attacker's objective never ends below the screen's."""
    screen = {"name": "back_gradient", "id": "back_gradient", "params": {"hypergradient": "implicit", "iterations": 3}}
    cfg = tiny_config(attacks=[screen], candidates={"l2": [0.01]}, budgets=[0.1], confirm={"attacks": ["back_gradient"]})
    run_dir = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = {c.attack: c for c in stored_cells(run_dir)}
    grid, paper = cells["back_gradient"].recorded("attack"), cells["back_gradient@paper"].recorded("attack")
    assert paper["warm_start"] == paper["n_poison"] == grid["n_poison"]
    assert paper["objective_final"] >= grid["objective_final"] - 1e-9
    assert paper["starts"]["warm"][0] >= grid["objective_final"] - 1e-9  # the warm start begins where the screen ended
