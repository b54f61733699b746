import numpy as np
import pytest
import torch

from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.defenses.dpa import DeepPartitionAggregation, certificate, partition_of
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.models import Candidate, build_victim
from tests.conftest import stored_cells, tiny_config

CPU = torch.device("cpu")


def test_certificate_against_a_hand_computed_vote_table():
    votes = np.array([
        [7, 2, 1],   # c = 0, runner-up 2 (+0: index 1 > 0) → gap 5 → r = 2
        [3, 3, 4],   # c = 2, rivals 3 + 1 and 3 + 1 (smaller indices win ties) → gap 0 → r = 0
        [5, 5, 0],   # tie → c = 0; rival class 1 has a larger index (+0) → gap 0 → r = 0
        [0, 9, 1],   # c = 1, rival class 0: 0 + 1, class 2: 1 + 0 → gap 8 → r = 4
        [2, 0, 8],   # c = 2, rival class 0: 2 + 1 = 3 → gap 5 → r = 2
    ])  # fmt: skip
    prediction, radius = certificate(votes)
    np.testing.assert_array_equal(prediction, [0, 2, 0, 1, 2])
    np.testing.assert_array_equal(radius, [2, 0, 0, 4, 2])


def test_partition_is_a_deterministic_function_of_the_point():
    row = np.array([0.1, 0.2, 1.0], dtype=np.float32)
    assert partition_of(row, 50) == partition_of(row.copy(), 50)
    rows = np.random.default_rng(0).random((2000, 3)).astype(np.float32)
    counts = np.bincount([partition_of(r, 10) for r in rows], minlength=10)
    assert counts.min() > 150  # roughly balanced


def test_dpa_trains_members_with_the_victims_procedure_and_certifies():
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU)
    result = DeepPartitionAggregation.for_cell(0.01, 0, d).apply(d.x_train, d.y_train, victim, Candidate.of(victim, {"l2": 1e-3}))
    diag = result.diagnostics
    assert diag["partitions"] == len(d.y_train) // 20 and sum(diag["partition_sizes"]) == len(d.y_train)
    raw, k = result.fitted.raw_scores(d.x_test), len(result.fitted.members)  # ART weighs each member's raw output by 1/k
    np.testing.assert_allclose(raw / k, result.fitted.art_ensemble.predict(d.x_test.astype(np.float32), raw=True), rtol=1e-5, atol=1e-6)
    votes = result.fitted.votes(d.x_test)
    assert (votes.sum(axis=1) == diag["partitions"]).all()
    _, radius = certificate(votes)
    correct = votes.argmax(1) == d.y_test
    budget = diag["certified_budget_points"]
    assert diag["certified_accuracy"] == pytest.approx(100 * np.mean(correct & (radius >= budget)))
    assert result.fitted.metric(d.x_test, d.y_test) > 85


def test_dpa_refuses_scikit_learn_victims():
    from sklearn.linear_model import LogisticRegression

    d = load_dataset(DatasetSpec(name="breast_cancer"))
    sk = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU, model_obj=LogisticRegression())
    with pytest.raises(AuditError, match="dpa needs a torch victim"):
        DeepPartitionAggregation(0.1, 0).apply(d.x_train, d.y_train, sk, Candidate.of(sk, {}))


def test_dpa_in_the_grid_and_report(tmp_path):
    from audit.report import write_report

    cfg = tiny_config(defenses=["none", "dpa"], attacks=[{"name": "label_flip"}], candidates={"l2": [1e-3]}, budgets=[0.01])
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = stored_cells(run)
    assert {c.status for c in cells} == {"ok"}, [c.error for c in cells]
    write_report(run)
    html = (run / "report.html").read_text()
    assert "certified accuracy" in html and "Levine &amp; Feizi" in html


def test_certified_curves_through_a_config_into_report_and_summary(tmp_path):
    """dpa (run-off) and fa (spread 1 and 2) through YAML and the CLI: every clean ensemble records its curves,
    fa at spread 1 has DPA's curve exactly (the same learners), and at each budget the defended accuracy under
    the attack is no lower than what the clean ensemble certifies at that many points (the learners are seeded
    by the cell's training seed, so the attacked ensemble differs from the certified one only by the poisons)."""
    import json as _json

    from click.testing import CliRunner

    from audit.cli import cli
    from tests.conftest import write_yaml

    defenses = ["none", {"name": "dpa", "id": "roe", "params": {"aggregation": "runoff", "partitions": 10}},
                {"name": "fa", "id": "fa1", "params": {"partitions": 10, "spread": 1}},
                {"name": "fa", "id": "fa2", "params": {"partitions": 5, "spread": 2, "aggregation": "runoff"}}]  # fmt: skip
    cfg = tiny_config(defenses=defenses, attacks=[{"name": "label_flip", "id": "lf", "params": {"variant": "adversarial"}}],
                      candidates={"l2": [1e-3]}, budgets=[0.01, 0.03], confirm=False)  # fmt: skip
    result = CliRunner().invoke(cli, ["run", str(write_yaml(tmp_path / "audit.yaml", cfg)), "--out", str(tmp_path / "out"), "--quiet"])
    out = tmp_path / "out" / "tiny"
    assert result.exit_code == 0, result.output
    assert {c.status for c in stored_cells(out)} == {"ok"}
    summary = _json.loads((out / "summary.json").read_text())
    entries = {e["defense"]: e for e in summary["certified"]}
    assert set(entries) == {"roe", "fa1", "fa2"}
    assert set(entries["roe"]["curves"]) == {"roe", "dpa"} and entries["roe"]["certificate"] == "roe"
    assert entries["fa1"]["curves"]["fa"] == entries["roe"]["curves"]["dpa"]
    assert entries["fa2"]["curves"]["fa"][0] > 50 and entries["fa2"]["certificate"] == "fa_roe"
    for e in entries.values():
        assert [b["budget"] for b in e["at_budgets"]] == [0.01, 0.03]
        for b in e["at_budgets"]:
            assert b["attacked_accuracy"] >= b["certified_accuracy"], (e["defense"], b)
        curve = e["curves"][e["certificate"]]
        assert all(x >= y for x, y in zip(curve, curve[1:])) and curve[-1] == 0.0
    html = (out / "report.html").read_text()
    assert "Certified accuracy" in html and "Finite Aggregation" in html and "run-off" in html
