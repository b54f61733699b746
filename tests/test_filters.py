import numpy as np
import pytest
import torch

from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.defenses import DEFENSES, InfluenceFilter, LossFilter, Sever
from audit.defenses.filters import sever_scores
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.models import Candidate, build_victim
from tests.conftest import stored_cells, tiny_config, tiny_n_train

CPU = torch.device("cpu")


def test_sever_score_is_the_squared_projection_on_the_top_singular_vector():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(30, 6))
    g[:3] += 8 * np.array([1.0, -1, 0, 0, 2, 0])  # three outliers along one direction
    scores = sever_scores(torch.tensor(g))
    centred = g - g.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    np.testing.assert_allclose(scores, (centred @ v) ** 2, rtol=1e-10)
    assert set(np.argsort(-scores)[:3]) == {0, 1, 2}


@pytest.fixture(scope="module")
def planted():
    """breast cancer with 10 % flipped-label copies of training points appended (the last rows).

    A linear model cannot fit them, unlike far-away outliers, which it can separate and then
    fit with low loss (measured: recall 0.44–0.56 for such points).
    """
    from audit.attacks import LabelFlip

    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=200), d, CPU)
    x_p, y_p = LabelFlip(budget=0.1, n_classes=2, seed=0).poison(d.x_train, d.y_train)
    x = np.concatenate([d.x_train, x_p])
    y = np.concatenate([d.y_train, y_p])
    return d, victim, x, y, len(d.y_train)


@pytest.mark.parametrize("cls", [LossFilter, InfluenceFilter, Sever])
def test_filters_remove_planted_poisons(planted, cls):
    d, victim, x, y, n = planted
    defense = cls.for_cell(0.1, 0, d)
    result = defense.apply(x, y, victim, Candidate.of(victim, {"l2": 1e-3}))
    removed = ~result.keep
    recall = removed[n:].mean()
    assert removed.sum() == round(len(y) - len(y) / 1.1)
    assert recall >= 0.75, (cls.name, recall, result.diagnostics)  # measured 0.85 / 0.82 / 0.94


def test_influence_filter_reports_its_cg_solve(planted):
    d, victim, x, y, _ = planted
    result = InfluenceFilter.for_cell(0.1, 0, d).apply(x, y, victim, Candidate.of(victim, {"l2": 1e-3}))
    assert result.diagnostics["cg_converged"] and result.diagnostics["cg_iterations"] > 0


def test_filters_need_a_torch_victim(planted):
    from sklearn.linear_model import LogisticRegression

    d, _, x, y, _ = planted
    sk = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU, model_obj=LogisticRegression(max_iter=500))
    with pytest.raises(AuditError, match="needs a torch victim"):
        Sever(0.1, 0).apply(x, y, sk, Candidate.of(sk, {"l2": 1e-3}))
    LossFilter(0.1, 0).apply(x, y, sk, Candidate.of(sk, {"l2": 1e-3}))  # the loss filter only needs predictions


def test_filters_in_the_grid(tmp_path):
    cfg = tiny_config(defenses=["none", "loss_filter", "influence_filter", "sever"], attacks=[{"name": "label_flip",
                      "params": {"variant": "adversarial"}}], candidates={"l2": [1e-3]}, budgets=[0.1])  # fmt: skip
    cells = stored_cells(run_audit(parse_config(cfg), output_dir=tmp_path, progress=False))
    assert {c.defense for c in cells} == {"none", "loss_filter", "influence_filter", "sever"}
    assert {c.status for c in cells} == {"ok"}, [c.error for c in cells]
    mixed = tiny_n_train() + round(0.1 * tiny_n_train())  # D_tr plus the poisons
    for c in cells:
        removed = c.poisons_removed + c.clean_removed
        assert removed == (0 if c.defense == "none" else round(mixed - mixed / 1.1))


def test_registry_names():
    assert {"loss_filter", "influence_filter", "sever"} <= set(DEFENSES)


def test_report_names_backdoor_detectors(tmp_path):
    from audit.report import write_report

    cfg = tiny_config(defenses=["none", "spectral_signature"], attacks=[{"name": "label_flip"}], candidates={"l2": [1e-3]},
                      budgets=[0.1])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(run)
    assert "designed for backdoor poisoning" in (run / "report.html").read_text()


def test_recommendation_weighs_defenses_with_their_clean_cost(tmp_path):
    import json

    from audit.grid.store import Store
    from audit.report import write_report

    cfg = tiny_config(defenses=["none", "loss_filter"], attacks=[{"name": "label_flip", "params": {"variant": "adversarial"}}],
                      candidates={"l2": [1e-3, 1e-2]}, budgets=[0.1, 0.3])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    store = Store.open_existing(run)
    rows = store.clean_defended_rows()
    store.close()
    assert {(r[2], r[1]) for r in rows} == {("loss_filter", 0)} and len(rows) == 2  # per candidate and seed
    n = tiny_n_train()
    assert all(r[3] is not None and r[5] == round(n - n / 1.1) for r in rows)  # assumed rate: the target budget
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    rec = summary["recommendation"]
    assert rec["defense"] in ("none", "loss_filter")
    assert {(json.dumps(s["hyperparameters"]), s["defense"]) for s in summary["settings"]} == {
        (json.dumps({"l2": 1e-3}), "none"), (json.dumps({"l2": 1e-2}), "none"),
        (json.dumps({"l2": 1e-3}), "loss_filter"), (json.dumps({"l2": 1e-2}), "loss_filter")}  # fmt: skip
    if rec["defense"] == "none":
        assert "No defense is recommended" in rec["reason"]
    else:
        assert "On clean data the defense loss_filter" in rec["reason"] and "clean training points" in rec["reason"]


def test_a_defense_that_fails_on_clean_data_leaves_a_valid_summary(tmp_path, monkeypatch):
    import json

    from audit.defenses.filters import LossFilter
    from audit.report import write_report

    def broken(self, x, y, victim, hparams):
        raise RuntimeError("filter exploded")

    monkeypatch.setattr(LossFilter, "apply", broken)
    cfg = tiny_config(defenses=["none", "loss_filter"], attacks=[{"name": "label_flip"}], candidates={"l2": [1e-3]},
                      budgets=[0.1])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recommendation"]["defense"] == "none"
    broken_setting = next(s for s in summary["settings"] if s["defense"] == "loss_filter")
    assert broken_setting["clean_val"] is None and not broken_setting["eligible"]
