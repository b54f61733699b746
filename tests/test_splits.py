"""Repeated splits (``splits: k``): the partition re-drawn k times, cells per split, intervals over splits."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from audit.cli import cli
from audit.config import AuditConfig, parse_config
from audit.grid.runner import run_audit
from audit.report import write_report
from audit.report.analysis import analyse
from audit.report.gate import gate
from audit.report.recommend import quantile
from tests.conftest import stored_cells, tiny_config


@pytest.fixture(scope="module")
def three_splits(tmp_path_factory):
    """The tiny audit with ``splits: 3`` through a YAML config and the CLI (24 cells), and the same with one split."""
    root = tmp_path_factory.mktemp("splits")
    path = root / "three.yaml"
    path.write_text(yaml.safe_dump(tiny_config(name="three", splits=3)))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(root), "--quiet"])
    assert result.exit_code == 0, result.output
    one = run_audit(parse_config(tiny_config(name="one")), output_dir=root, progress=False)
    return root / "three", one


def test_each_split_is_a_new_draw_of_the_partition_and_split_0_is_the_configured_one(three_splits):
    run, one = three_splits
    cells, single = stored_cells(run), stored_cells(one)
    assert len(cells) == 3 * len(single) == 24 and {c.split for c in cells} == {0, 1, 2}
    meta = analyse(run).meta
    record = meta["splits"]
    assert record["requested"] == record["run"] == 3 and record["note"] is None
    assert record["seeds"][0] == 0 and len(set(record["seeds"])) == 3
    digests = [meta["data_sha256"], *record["data_sha256"]]
    assert len({d["train"] for d in digests}) == len({d["test"] for d in digests}) == 3  # three partitions
    # split 0 is the configured split: its cells have the keys and the numbers of a one-split run
    by_key = {c.cell_key: c for c in cells}
    for c in single:
        assert by_key[c.cell_key].poisoned_test == c.poisoned_test and by_key[c.cell_key].split == 0
    # the other splits give other clean models (other data), under keys of their own
    clean = {c.split: (c.clean_val, c.clean_test) for c in cells if c.candidate == json.dumps({"l2": 0.01})}
    assert len(set(clean.values())) == 3
    assert len({c.cell_key for c in cells}) == 24


def test_the_worst_case_is_the_mean_over_splits_of_each_splits_worst_attack(three_splits):
    """The worst-of-attacks statistic per split, then its mean over splits with a t-interval on k − 1 = 2 degrees of
    freedom; the gate's upper bound is that interval's; summary.json and the verdict say what it covers."""
    run, _ = three_splits
    a = analyse(run)
    rec = a.recommended()
    assert rec is not None
    eps = 0.1
    cells = [c for c in stored_cells(run) if c.candidate == rec.key and c.budget <= eps and c.status == "ok"]
    per_split = [max(c.clean_test - c.poisoned_test for c in cells if c.split == j) for j in range(3)]
    assert rec.worst_damage_test[eps] == pytest.approx(np.mean(per_split))
    est = rec.worst_damage_test_est[eps]
    share = a.meta["dataset"]["n_test"] / a.meta["dataset"]["n_train"]
    se = np.sqrt((1 / 3 + share) * np.var(per_split, ddof=1))
    assert est.df == 2 and est.se == pytest.approx(se)
    lo, hi = rec.worst_damage_test_ci[eps]
    assert hi == pytest.approx(np.mean(per_split) + quantile(0.95, 2) * se) and quantile(0.95, 2) == pytest.approx(4.3027, abs=1e-4)
    assert set(rec.worst_attack_splits[eps]) == {"0", "1", "2"}
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    scope = summary["recommendation"]["intervals_scope"]
    assert scope["splits"] == 3 and "splits" in scope["covers"] and "over 3 draws of the data split" in scope["text"]
    assert summary["recommendation"]["worst_case_drop_ci95"][str(eps)] == pytest.approx([lo, hi])
    by_split = summary["recommendation"]["worst_case_drop_by_split"][str(eps)]
    assert [r["drop"] for r in by_split] == pytest.approx(per_split) and {r["split"] for r in by_split} == {0, 1, 2}
    html = (run / "report.html").read_text()
    assert "over 3 draws of the data split" in html and "worst case at ε = 10% per split: " in html
    strict = gate(run, eps, max_drop=hi - 0.01, confidence=0.95)
    assert not strict.passed and strict.damage == pytest.approx(hi)
    assert gate(run, eps, max_drop=hi + 0.01, confidence=0.95).passed


def test_an_interrupted_run_of_several_splits_resumes_the_missing_split_with_the_same_numbers(three_splits, tmp_path):
    import shutil

    run, _ = three_splits
    copy = tmp_path / "three"
    shutil.copytree(run, copy)
    before = {c.cell_key: c.poisoned_test for c in stored_cells(copy)}
    with sqlite3.connect(copy / "results.sqlite") as db:
        db.execute("DELETE FROM cells WHERE split = 2")
        db.execute("DELETE FROM clean WHERE split = 2")
    assert len(stored_cells(copy)) == 16
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(tiny_config(name="three", splits=3)))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    after = {c.cell_key: c.poisoned_test for c in stored_cells(copy)}
    assert after == before


def test_data_whose_split_the_user_fixed_runs_one_split_and_says_so(tmp_path):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    np.savez(tmp_path / "fixed.npz", x_train=x[:300], y_train=y[:300], x_val=x[300:430], y_val=y[300:430], x_test=x[430:], y_test=y[430:])
    cfg = tiny_config(name="fixed", splits=3, dataset={"name": "npz", "path": str(tmp_path / "fixed.npz")}, candidates={"l2": [0.01]})
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    assert {c.split for c in stored_cells(run)} == {0}
    write_report(run)
    scope = json.loads((run / "summary.json").read_text())["recommendation"]["intervals_scope"]
    assert scope["splits"] == 1 and "splits: 3 asked for, 1 run — the split is the user's" in scope["text"]


def test_profiles_choose_the_number_of_splits_and_one_split_keeps_the_fingerprint():
    for profile, k in (("quick", 1), ("standard", 3), ("paper", 3)):
        assert AuditConfig(profile=profile).resolved("classification", "torch").splits == k
    assert AuditConfig(profile="paper", splits=2).resolved("classification", "torch").splits == 2
    base = parse_config(tiny_config())
    assert parse_config(tiny_config(splits=1)).fingerprint() == base.fingerprint()  # runs from before splits resume
    assert parse_config(tiny_config(splits=2)).fingerprint() != base.fingerprint()
    for bad in (0, 101, "two", 1.5):
        with pytest.raises(Exception, match="splits"):
            parse_config(tiny_config(splits=bad))


def test_a_store_written_before_repeated_splits_is_read_as_it_is_and_migrated_on_resume(tmp_path):
    """A schema-1 store (no split column): report and gate read it without changing a byte; a resumed run
    migrates it in one transaction and recomputes nothing."""
    run = run_audit(parse_config(tiny_config()), output_dir=tmp_path, progress=False)
    path = run / "results.sqlite"
    with sqlite3.connect(path) as db:  # back to schema 1
        for table, key in (("clean", "candidate, seed"), ("clean_defended", "candidate, seed, defense"), ("targets", "candidate, seed, eps_w")):
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] != "split"]
            db.execute(f"CREATE TABLE {table}_old AS SELECT {', '.join(columns)} FROM {table}")
            db.execute(f"DROP TABLE {table}")
            db.execute(f"ALTER TABLE {table}_old RENAME TO {table}")
        db.execute("ALTER TABLE cells DROP COLUMN split")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = {c.cell_key: c.poisoned_test for c in stored_cells(run)}
    raw = path.read_bytes()
    assert gate(run, 0.1, max_drop=100).passed
    assert path.read_bytes() == raw
    write_report(run)
    again = run_audit(parse_config(tiny_config()), output_dir=tmp_path, progress=False)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
        assert "split" in {r[1] for r in db.execute("PRAGMA table_info(clean)")}
    assert {c.cell_key: c.poisoned_test for c in stored_cells(again)} == before


def test_the_confirmation_runs_on_every_split(tmp_path):
    """A grid attack run at fewer seeds than the run's is confirmed at paper strength on each split and seed (the
    confirmation's cell keys carry the split: reading them back once crashed the stage on a second split)."""
    cfg = tiny_config(splits=2, seeds=[0, 1], candidates={"l2": [0.01]}, budgets=[0.1],
                      attacks=[{"name": "label_flip", "id": "label_flip_random", "params": {"variant": "random"}, "seeds": 1}],
                      confirm={"attacks": ["label_flip_random"]})  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    confirming = [c for c in stored_cells(run) if c.attack.endswith("@paper")]
    assert {(c.split, c.seed) for c in confirming} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    a = analyse(run)
    assert a.strength().confirmed and a.recommended().n_splits == 2


def test_a_dataframe_handed_to_the_api_is_split_again(tmp_path):
    """``run_audit(config, dataset=frame, label=...)`` with ``splits: 2``: the frame itself is split again (other
    training rows, the text column one-hot encoded again), not the first split's arrays reused."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    from audit import run_audit as api_run

    x, y = load_breast_cancer(return_X_y=True)
    frame = pd.DataFrame(x[:, :5], columns=[f"f{i}" for i in range(5)])
    frame["kind"] = np.where(x[:, 7] > np.median(x[:, 7]), "high", "low")
    frame["label"] = np.where(y == 1, "benign", "malignant")
    cfg = parse_config(tiny_config(name="frame", splits=2, candidates={"l2": [0.01]}, budgets=[0.1],
                                   attacks=[{"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}}]))  # fmt: skip
    result = api_run(cfg, dataset=frame, label="label", output_dir=tmp_path, progress=False)
    meta = analyse(result.run_dir).meta
    assert meta["splits"]["run"] == 2 and meta["splits"]["note"] is None
    assert meta["splits"]["data_sha256"][0]["train"] != meta["data_sha256"]["train"]
    assert {c.split for c in stored_cells(result.run_dir)} == {0, 1}
