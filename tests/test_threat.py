"""The attacker's own split (issue 32, part 1): no attack reads D_val, selection never reads D_test."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from audit.api import run_audit
from audit.config import parse_config
from audit.data import Dataset, DatasetSpec, attacker_sentence, load_dataset
from audit.errors import AuditError
from audit.grid.runner import plan_audit
from audit.grid.work import clean_unit, craft_unit
from audit.report import write_report
from tests.conftest import stored_cells, tiny_config

# every optimising attack at a few steps (the poisons' dependence on the data, not their strength, is tested)
ATTACKS = [
    {"name": "back_gradient", "id": "bg", "params": {"iterations": 2, "inner_steps": 10, "hypergradient": "unrolled"}},
    {"name": "gradient_canceling", "id": "gc", "params": {"epochs": 20}},
    {"name": "tgda", "id": "tgda", "params": {"epochs": 2}},
    {"name": "statp", "id": "statp"},
    {"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}},
]


def _corrupted(data: Dataset, which: str, seed: int = 7) -> Dataset:
    """``data`` with one split's features replaced by noise and its labels shuffled."""
    rng = np.random.default_rng(seed)
    x, y = getattr(data, f"x_{which}"), getattr(data, f"y_{which}")
    return dataclasses.replace(data, **{f"x_{which}": rng.uniform(data.lo, data.hi, x.shape).astype(np.float32), f"y_{which}": rng.permutation(y)})


def _poisons(plan, budget: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    clean = clean_unit(plan, plan.candidate(json.dumps({"l2": 0.01})), 0)
    assert clean.failure is None
    out = {}
    for spec in plan.config.attacks:
        p = craft_unit(plan, clean, spec.key, budget)
        assert p.failure is None, p.failure
        out[spec.key] = (p.x, p.y)
    return out


def test_no_attack_reads_the_defenders_validation_split(tmp_path):
    """Under the default threat every attack's poisons are the same whatever D_val holds; in the papers'
    setting (``attacker_reads: validation``) the optimising attacks' poisons follow D_val."""
    config = parse_config(tiny_config(attacks=ATTACKS, candidates={"l2": [0.01]}, confirm=False))
    plan = plan_audit(config, output_dir=tmp_path)
    assert plan.dataset.x_att is not None and len(plan.dataset.y_att) == round(0.25 * (len(plan.dataset.y_att) + len(plan.dataset.y_train)))
    before = _poisons(plan)
    plan.dataset = _corrupted(plan.dataset, "val")
    after = _poisons(plan)
    for key, (x, y) in before.items():
        np.testing.assert_array_equal(after[key][0], x, err_msg=key)
        np.testing.assert_array_equal(after[key][1], y, err_msg=key)

    threat = {"attacker_reads": "validation"}
    papers = plan_audit(parse_config(tiny_config(attacks=ATTACKS[:3], candidates={"l2": [0.01]}, confirm=False, threat=threat)), output_dir=tmp_path)
    assert papers.dataset.x_att is None and len(papers.dataset.y_train) > len(plan.dataset.y_train)  # nothing carved
    before = _poisons(papers)
    papers.dataset = _corrupted(papers.dataset, "val")
    after = _poisons(papers)
    for key in ("bg", "gc", "tgda"):
        assert not np.array_equal(after[key][0], before[key][0]), key


def test_selection_never_reads_the_test_split(tmp_path):
    """The recommendation, its ties and every validation figure are the same whatever D_test holds."""
    config = parse_config(tiny_config(candidates={"l2": [0.0, 0.1]}, confirm=False))
    data = load_dataset(DatasetSpec(name="breast_cancer"))
    first = run_audit(config, dataset=data, output_dir=tmp_path / "a", progress=False)
    second = run_audit(config, dataset=_corrupted(data, "test"), output_dir=tmp_path / "b", progress=False)
    r1, r2 = first.summary["recommendation"], second.summary["recommendation"]
    assert r1["hyperparameters"] == r2["hyperparameters"] and r1["worst_case_drop_val"] == r2["worst_case_drop_val"]
    c1, c2 = stored_cells(first.run_dir), stored_cells(second.run_dir)
    assert [(c.attack, c.poisoned_val) for c in c1] == [(c.attack, c.poisoned_val) for c in c2]
    assert [c.poisoned_test for c in c1] != [c.poisoned_test for c in c2]
    # every output names the split the attacks read and what they reached there
    html = write_report(first.run_dir).read_text()
    # a Dataset handed over keeps its training split whole: D_att comes out of D_val
    assert "The attacker reads" in html and f"carved from validation ({first.plan.dataset.describe()['n_att']} points)" in html
    assert len(first.plan.dataset.y_train) == len(data.y_train) and len(first.plan.dataset.y_att) == round(0.5 * len(data.y_val))
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["dataset"]["attacker_reads"] == "attacker_split"
    assert all(set(c["attacker_split_metric"]) == {"clean", "poisoned"} for c in summary["cells"])


def test_attacker_split_sources_and_labels(tmp_path):
    """Carved from training when the audit splits the data, from D_val when the user fixed the training split,
    the data's own when given; every source is named in the dataset's description and digests."""
    data = load_dataset(DatasetSpec(name="breast_cancer"))
    n_train = len(data.y_train)
    carved = data.with_attacker_split("attacker_split", None, 0)
    assert len(carved.y_att) == round(0.25 * n_train) and len(carved.y_train) == n_train - len(carved.y_att)
    assert np.array_equal(carved.x_val, data.x_val) and np.array_equal(carved.x_test, data.x_test)
    shares = [np.mean(carved.y_att), np.mean(carved.y_train)]  # stratified: the class shares agree
    assert abs(shares[0] - shares[1]) < 0.02
    rows = {r.tobytes() for r in data.x_train}
    assert {r.tobytes() for r in carved.x_att} | {r.tobytes() for r in carved.x_train} == rows  # a partition of D_tr
    assert carved.describe()["attacker_split"] == f"carved from training ({len(carved.y_att)} points)"
    assert "attacker" in carved.digests()

    user = dataclasses.replace(data, notes={})  # a Dataset handed to run_audit: the user's training split is kept whole
    mine = user.with_attacker_split("attacker_split", None, 0)
    assert np.array_equal(mine.x_train, data.x_train) and len(mine.y_att) == round(0.5 * len(data.y_val))
    assert len(mine.y_val) == len(data.y_val) - len(mine.y_att)

    given = dataclasses.replace(user, x_att=data.x_test[:10], y_att=data.y_test[:10])
    assert given.with_attacker_split("attacker_split", 0.3, 0).x_att is given.x_att

    papers = data.with_attacker_split("validation", None, 0)
    assert papers.x_att is None and papers.attacker_target()[0] is data.x_val
    assert papers.describe()["attacker_reads"] == "validation"
    assert "the papers' setting (threat.attacker_reads: validation)" in attacker_sentence(papers.describe())
    assert attacker_sentence(carved.describe()).startswith(f"D_att, {len(carved.y_att)} points")

    with pytest.raises(AuditError, match="threat.attacker_split: 500 of the"):
        data.with_attacker_split("attacker_split", 500, 0)


def test_npz_gives_its_own_attacker_split(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=(n, 3)).astype(np.float32) for k, n in (("x_train", 60), ("x_att", 15))}
    arrays |= {"y_train": rng.integers(0, 2, 60), "y_att": rng.integers(0, 2, 15)}
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "d.npz")))
    assert np.array_equal(data.x_att, arrays["x_att"]) and data.y_att.dtype == np.int64
    np.savez(tmp_path / "half.npz", x_train=arrays["x_train"], y_train=arrays["y_train"], x_att=arrays["x_att"])
    with pytest.raises(AuditError, match="'x_att' and 'y_att' must be given together"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "half.npz")))
    with pytest.raises(AuditError, match="threat.attacker_reads"):
        parse_config(tiny_config(threat={"attacker_reads": "test"}))


def test_every_output_names_the_attack_whose_number_it_prints(tmp_path):
    """A store where the validation and the test argmax differ in every row: lf_random does the most damage on
    validation, lf_adv on test. Wherever a test drop is printed (report trade-off table, summary.json, gate,
    JUnit, step summary, compliance record) the attack named beside it is lf_adv; the verdict's validation
    sentence names lf_random beside the validation figure."""
    from audit.grid.runner import _prepare_store
    from audit.grid.store import Cell
    from audit.report.export import export
    from audit.report.gate import gate, junit_xml, step_summary
    from audit.report.templating import md_escape

    cfg = parse_config(tiny_config(name="labels", adaptive={"enabled": "off"}, confirm=False))
    plan = plan_audit(cfg, output_dir=tmp_path)
    store = _prepare_store(plan, restart=False)
    # (poisoned_val, poisoned_test): validation worst is lf_random, test worst is lf_adv, for every setting and budget
    figures = {"lf_random": (70.0, 88.0), "lf_adv": (85.0, 75.0)}
    try:
        for cand in {c.candidate.key for c in plan.cells()}:
            store.put_clean(cand, 0, 95.0, 95.0, 0.1, {})
        for c in plan.cells():
            pv, pt = figures[c.attack]
            store.put_cell(Cell(c.key, c.position, c.candidate.key, c.attack, c.budget, c.defense, c.seed, "ok",
                                95.0, 95.0, pv - 10 * c.budget, pt - 10 * c.budget, 10, 0, 0, 0.01, "cpu"))  # fmt: skip
    finally:
        store.close()
    write_report(plan.run_dir)
    summary = json.loads((plan.run_dir / "summary.json").read_text())
    for setting in summary["settings"] + summary["candidates"] + [summary["recommendation"]]:
        assert set(setting["worst_attack"].values()) == {"lf_adv"}, setting
        assert setting["worst_case_drop"]["0.1"] == pytest.approx(95.0 - 75.0 + 1.0)
    assert "worst attack lf_random" in summary["recommendation"]["reason"]  # beside the validation figure 69.00
    html = (plan.run_dir / "report.html").read_text()
    start = html.index("<h2>Trade-off table")
    table = html[start : html.index("</table>", start)]
    assert "lf_adv" in table and "lf_random" not in table
    result = gate(plan.run_dir, 0.1, max_drop=50.0, allow_lower_bound=True)
    assert {c.worst_attack for c in result.cases} == {"lf_adv"} and "worst attack lf_adv" in result.message
    assert 'value="lf_adv"' in junit_xml("labels", 0.1, result) and "lf_random" not in junit_xml("labels", 0.1, result)
    text = step_summary(result, plan.run_dir, "labels")
    assert md_escape("worst attack lf_adv") in text and md_escape("lf_random") not in text
    export(plan.run_dir, formats=["json"])
    record = (plan.run_dir / "compliance" / "record.json").read_text()
    assert "lf_adv" in record and "[" in record
    assert not re.search(r"\d+\.\d+ \[[^\]]*\] lf_random", record)  # no test drop is named after the validation argmax


def test_the_adaptive_attacker_judges_its_rounds_on_its_own_split(tmp_path):
    """The filter-in-the-loop attacker keeps the round whose defended model does worst on D_att — it never scores on
    D_val (the recommendation's split): with D_val replaced by noise, or by points of another width that no model can
    score, its poisons and rounds are the same."""
    from audit.attacks import AttackContext
    from audit.config import AttackSpec, DefenseSpec
    from audit.grid.adaptive import craft_adaptive

    config = parse_config(tiny_config(candidates={"l2": [0.01]}, confirm=False, defenses=["loss_filter"]))
    plan = plan_audit(config, output_dir=tmp_path)
    data, victim, hp = plan.dataset, plan.victim, {"l2": 0.01}
    clean = victim.fit(data.x_train, data.y_train, hp, 0)
    spec = AttackSpec(name="label_flip", id="lf_adv", params={"variant": "adversarial"})

    def adaptive(d: Dataset):
        ctx = AttackContext.of(d, victim, clean, hp, 0.1, 5)
        return craft_adaptive(spec, DefenseSpec(name="loss_filter"), ctx, 2, 11, 0, None)[:3]

    x0, y0, diag0 = adaptive(data)
    wide = dataclasses.replace(data, x_val=np.zeros((len(data.y_val), data.x_val.shape[1] + 3), np.float32))
    for other in (_corrupted(data, "val"), wide):
        x1, y1, diag1 = adaptive(other)
        np.testing.assert_array_equal(x1, x0)
        np.testing.assert_array_equal(y1, y0)
        assert diag1["adaptive"] == diag0["adaptive"]
    assert diag0["adaptive"]["rounds"][0]["att_metric"] >= 0
