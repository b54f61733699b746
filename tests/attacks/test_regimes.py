"""Wang, Mianjy & Arora (2021): the two-layer ReLU model and the three poisoning regimes (issue 18)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audit.attacks import ATTACKS, AttackContext
from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.models import build_victim
from audit.models.zoo import ReLU2
from audit.report import write_report
from tests.conftest import stored_cells, tiny_config, tiny_n_train


@pytest.fixture(scope="module")
def setting():
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="relu2", width=256), TrainingSpec(), d, torch.device("cpu"))
    fitted = victim.fit(d.x_train, d.y_train, {}, 0)
    return d, victim, fitted


def test_relu2_is_the_papers_formula_and_its_top_layer_stays_fixed(setting):
    torch.manual_seed(0)
    m = ReLU2(6, 5)
    x = torch.rand(4, 6) * 3
    unit = x / x.norm(dim=1, keepdim=True)
    f = sum(m.top[s] * torch.relu(unit @ m.hidden.weight[s]) for s in range(5)) / math.sqrt(5)
    torch.testing.assert_close(m.score(x), f)
    torch.testing.assert_close(m(x)[:, 1] - m(x)[:, 0], f)  # logits (−f/2, f/2): softmax CE is log(1 + e^{−y f})
    torch.testing.assert_close(torch.nn.functional.cross_entropy(m(x), torch.ones(4, dtype=torch.long)), torch.log1p(torch.exp(-f)).mean())
    torch.testing.assert_close(m.score(5 * x), m.score(x))  # inputs normalised to unit norm
    assert [n for n, _ in m.named_parameters()] == ["hidden.weight"] and set(m.top.tolist()) <= {-1.0, 1.0}
    big = ReLU2(50, 4000)
    w = big.hidden.weight.detach()
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1.0) < 0.01  # w_s ~ N(0, I)
    assert abs(float(big.top.mean())) < 0.05  # a_s ~ unif{±1}

    d, victim, fitted = setting
    assert victim.train_config({}).lr == 1.0  # a constant step (zoo.TRAINING_DEFAULTS says why not Theorem 3.1's)
    assert victim.train_config({}).batch_size == 1 and victim.train_config({}).epochs == 1 and victim.train_config({}).momentum == 0
    from audit.seeding import seeded_init

    with seeded_init(0):
        init = victim.build({})
    trained = fitted.module
    assert torch.equal(trained.top, init.top) and not torch.equal(trained.hidden.weight, init.hidden.weight)
    assert fitted.metric(d.x_test, d.y_test) > 85.0  # it learns: one pass of SGD on breast cancer


def test_relu2_refuses_more_than_two_classes():
    d = load_dataset(DatasetSpec(name="wine"))
    with pytest.raises(AuditError, match="'relu2' is a binary classifier but dataset 'wine' has 3 classes"):
        build_victim(ModelSpec(name="relu2"), TrainingSpec(), d, torch.device("cpu"))


def _poison(name, params, setting, budget):
    d, victim, fitted = setting
    attack = ATTACKS[name].for_cell(params, AttackContext.of(d, victim, fitted, {}, budget, seed=4))
    x, y = attack.poison(d.x_train, d.y_train)
    return attack, x, y


def test_regime_b_moves_every_point_within_its_radius_up_the_loss(setting):
    d = setting[0]
    for budget in (0.05, 0.3):
        attack, x, y = _poison("regime_b", {}, setting, budget)
        delta = np.linalg.norm(x.astype(np.float64) - d.x_train, axis=1)
        norms = np.linalg.norm(d.x_train.astype(np.float64), axis=1)
        assert np.all(delta <= budget * norms * (1 + 1e-5) + 1e-6)  # ‖δ_i‖ ≤ B‖x_i‖, B = ε
        assert np.mean(delta > 0.5 * budget * norms) > 0.9  # nearly every point uses its budget
        assert np.array_equal(y, d.y_train) and np.all(x >= d.lo) and np.all(x <= d.hi)  # clean label, in the box
        diag = attack.diagnostics
        assert diag.clean_loss_after > diag.clean_loss_before + 0.05, (diag.clean_loss_before, diag.clean_loss_after)
        assert diag.max_relative_delta <= budget * (1 + 1e-5) and diag.overall_delta == pytest.approx(delta.sum(), rel=1e-5)


def test_regime_a_moves_a_fraction_of_the_points_as_far_as_the_box_allows(setting):
    d = setting[0]
    attack, x, y = _poison("regime_a", {}, setting, 0.1)
    moved = np.any(x != d.x_train, axis=1)
    assert moved.sum() == attack.diagnostics.n_modified <= round(0.1 * len(d.y_train)) and moved.sum() >= 0.9 * round(0.1 * len(d.y_train))
    assert np.array_equal(y, d.y_train) and np.all(x >= d.lo) and np.all(x <= d.hi)
    delta = np.linalg.norm(x.astype(np.float64) - d.x_train, axis=1)
    assert attack.diagnostics.overall_delta == pytest.approx(delta.sum(), rel=1e-5)  # S = Σ‖δ_i‖, as realised
    b = _poison("regime_b", {}, setting, 0.1)[0]
    assert attack.diagnostics.max_delta > 3 * b.diagnostics.max_delta  # large per-sample perturbation (few points)
    assert attack.diagnostics.clean_loss_after > 2 * attack.diagnostics.clean_loss_before
    capped, xs, _ = _poison("regime_a", {"overall": 5.0}, setting, 0.1)
    mean_norm = np.linalg.norm(d.x_train.astype(np.float64), axis=1).mean()
    spent = np.linalg.norm(xs.astype(np.float64) - d.x_train, axis=1).sum()
    assert spent <= 5.0 * mean_norm * (1 + 1e-5) and spent >= 0.99 * 5.0 * mean_norm  # S = Σ‖δ_i‖ used up, never exceeded
    assert capped.diagnostics.overall_delta == pytest.approx(spent, rel=1e-4)
    bounded, xr, _ = _poison("regime_a", {"radius": 0.2}, setting, 0.1)
    rel = np.linalg.norm(xr.astype(np.float64) - d.x_train, axis=1) / np.linalg.norm(d.x_train.astype(np.float64), axis=1)
    assert rel.max() <= 0.2 * (1 + 1e-5)


def test_regime_c_flips_at_rate_beta(setting):
    d = setting[0]
    n = len(d.y_train)
    for beta in (0.1, 0.3):
        counts = []
        for seed in range(20):
            attack = ATTACKS["regime_c"](budget=beta, n_classes=2, seed=seed)
            x, y = attack.poison(d.x_train, d.y_train)
            assert np.array_equal(x, d.x_train)
            counts.append(int(np.sum(y != d.y_train)))
        sd = math.sqrt(n * beta * (1 - beta))
        assert all(abs(k - beta * n) <= 4 * sd for k in counts)  # binomial tolerance per draw
        assert abs(np.mean(counts) - beta * n) <= 4 * sd / math.sqrt(len(counts))  # and on average
    attack, x, y = _poison("regime_c", {"variant": "adversarial"}, setting, 0.2)
    flipped = y != d.y_train
    assert abs(flipped.sum() - 0.2 * n) <= 4 * math.sqrt(n * 0.2 * 0.8)
    with torch.no_grad():
        f = setting[2].module.score(torch.as_tensor(d.x_train)).numpy()
    margin = np.where(d.y_train == 1, f, -f)  # the flipped loss grows with the margin of the true label
    assert margin[flipped].min() >= margin[~flipped].max() - 1e-6  # the max-loss flips


def test_a_grid_of_widths_under_the_regimes_runs_and_counts_the_changed_points(tmp_path):
    cfg = tiny_config(
        model={"name": "relu2"}, training={}, candidates={"width": [16, 64]},
        attacks=[{"name": "regime_b", "id": "b", "params": {"steps": 3}}, {"name": "regime_c", "id": "c"}],
        defenses=["none", "loss_filter"], budgets=[0.3], seeds=[0], confirm=False,
    )  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = stored_cells(run)
    assert cells and all(c.status == "ok" for c in cells), [c.error for c in cells if c.status != "ok"]
    n = tiny_n_train()
    for c in cells:
        if c.attack == "b":
            assert c.n_poison >= 0.9 * n  # every point perturbed
        else:
            assert abs(c.n_poison - c.budget * n) <= 4 * math.sqrt(n * c.budget * (1 - c.budget))  # flips, not added points
        assert c.poisons_removed <= c.n_poison
        if c.defense == "none":
            assert c.poisons_removed == 0 and c.clean_removed == 0
    html = write_report(run).read_text()
    assert "Width under attack" in html and html.count("<svg") >= 3
    from audit.report.aggregation import width_series
    from audit.report.analysis import analyse

    a = analyse(run)
    points = width_series(a)
    assert [p.width for p in points] == [16, 64] and set(points[0].poisoned) == {("b", 0.3), ("c", 0.3)}
    assert "Width under attack: at ε = 0.3" in a.recommendation.reason


def test_width_findings_mark_the_peak_and_the_widths_where_damage_grows_again():
    from types import SimpleNamespace

    from audit.report.aggregation import WidthPoint, width_findings

    damage = {16: 9.0, 64: 4.0, 256: 1.0, 1024: 1.4, 4096: 6.0, 16384: 8.0}
    points = [WidthPoint(w, f"width={w}", 95.0, 0.5, {}, 95.0 - d, d, 0.5) for w, d in damage.items()]
    found = width_findings(SimpleNamespace(higher_is_better=True), points)
    assert found["best"].width == 256 and found["calm"].width == 256 and found["interior"]
    assert [p.width for p in found["grows"]] == [4096, 16384]  # 1024 is within noise (2·√2·0.5 ≈ 1.41 > 0.4)
    monotone = [WidthPoint(w, "", 95.0, 0.5, {}, 95.0 - 10 / (i + 1), 10 / (i + 1), 0.5) for i, w in enumerate(damage)]
    found = width_findings(SimpleNamespace(higher_is_better=True), monotone)
    assert found["best"].width == 16384 and not found["grows"] and not found["interior"]
