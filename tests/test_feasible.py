"""Feasible poisons (issue 31, part 3): declared feature domains and pixel levels, and rounded poisons refined on the
attacker's objective — against brute force over every neighbour on small problems, and through a config into real cells."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from audit.attacks import AttackContext
from audit.attacks.back_gradient import BackGradient
from audit.attacks.feasible import Moves, refine
from audit.config import ModelSpec, TrainingSpec, parse_config
from audit.data import DatasetSpec, DomainSpec, FeatureDomain, from_frame, load_dataset, with_domain
from audit.errors import AuditError
from audit.models import build_victim

pd = pytest.importorskip("pandas")
from examples.tables import churn_table  # noqa: E402


DOMAIN = FeatureDomain(("integer", "levels:4", "binary", "onehot", "onehot", "onehot", "continuous"), (("c", ("a", "b", "z"), (3, 4, 5)),))
LO, HI = np.array([0, 0, 0, 0, 0, 0, -1.0]), np.array([5, 1, 1, 1, 1, 1, 1.0])


def _neighbours(relaxed: np.ndarray, rounded: np.ndarray) -> list[np.ndarray]:
    """Every point one may reach from ``rounded`` by taking the other side of any set of its features (brute force)."""
    moves = Moves.of(DOMAIN, relaxed, rounded, LO, HI)
    singles = [(-1, r, c) for r, c in zip(*np.nonzero(moves.scalar))]
    singles += [(g, r, int(alt[r])) for g, (_, alt) in enumerate(moves.groups) for r in np.flatnonzero(alt >= 0)]
    out = []
    for k in range(len(singles) + 1):
        for chosen in itertools.combinations(singles, k):
            out.append(moves.apply(rounded, [(1.0, *m) for m in chosen]))
    return out


def test_levels_round_to_k_over_l_and_every_neighbour_is_a_point_of_the_domain():
    relaxed = np.array([[2.4, 0.3, 0.7, 0.2, 0.5, 0.45, 0.3]], np.float32)
    rounded, changed = DOMAIN.project(relaxed)
    np.testing.assert_allclose(rounded, [[2, 0.25, 1, 0, 1, 0, 0.3]], rtol=0, atol=1e-7)
    assert changed == 1
    neighbours = _neighbours(relaxed, rounded)
    assert len(neighbours) == 2**4  # integer 2↔3, level 0.25↔0.5, bit 1↔0, category b↔z; the continuous one stays
    assert all(DOMAIN.contains(n) and np.all(n >= LO - 1e-6) and np.all(n <= HI + 1e-6) for n in neighbours)


def test_refine_finds_the_best_neighbour_of_a_linear_objective_as_brute_force_does():
    rng = np.random.default_rng(3)
    relaxed = rng.uniform(LO, HI, size=(4, 7)).astype(np.float32)
    relaxed[:, 1] = rng.uniform(0, 1, 4)
    rounded, _ = DOMAIN.project(relaxed)
    w = rng.normal(size=(4, 7))
    f = lambda x: float((w * x).sum())  # noqa: E731  (linear: the linearised gains are exact)
    refined, info = refine(DOMAIN, relaxed, rounded, LO, HI, lambda x: (f(x), w), f, evaluations=64)
    best = max(f(n) for n in _neighbours(relaxed, rounded))
    assert f(refined) == pytest.approx(best) and best > f(rounded) + 0.1
    assert info["refined"] == pytest.approx(best) and info["rounded"] == pytest.approx(f(rounded)) and info["moves"] > 0
    assert DOMAIN.contains(refined)


def test_refine_keeps_the_rounded_point_when_no_neighbour_is_better():
    relaxed = np.array([[2.4, 0.3, 0.7, 0.2, 0.5, 0.45, 0.3]], np.float32)
    rounded, _ = DOMAIN.project(relaxed)
    f = lambda x: -float(((x - rounded) ** 2).sum())  # noqa: E731  (peaked at the rounded point)
    refined, info = refine(DOMAIN, relaxed, rounded, LO, HI, lambda x: (f(x), -2 * (x - rounded)), f)
    np.testing.assert_array_equal(refined, rounded)
    assert info["moves"] == 0 and info["refined"] == info["rounded"]


def test_back_gradient_refines_its_rounded_poisons_on_its_own_objective():
    data = from_frame(churn_table(400), "churn", val=0.2, test=0.2, seed=0).with_attacker_split("attacker_split", None, 0)
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    clean = victim.fit(data.x_train, data.y_train, {"l2": 0.01}, 0)
    ctx = AttackContext.of(data, victim, clean, {"l2": 0.01}, 0.1, seed=1)
    attack = BackGradient.for_context({"iterations": 10}, ctx)
    x_p, y_p = attack.poison(data.x_train, data.y_train)
    assert data.domain is not None and data.domain.contains(x_p)
    info = attack.diagnostics.domain_refined
    assert info is not None and info["refined"] >= info["rounded"] and info["evaluations"] >= 2
    # the objective it reports is the attack's own at those poisons: the validation loss at the retrained model
    value = attack.domain_objective(data.x_train, data.y_train, y_p)
    assert value is not None and value[1](x_p) == pytest.approx(info["refined"], rel=1e-6)
    # TGDA optimises the same kind of loss on D_att: its rounded generator outputs are refined on back-gradient's objective
    from audit.attacks.tgda import TGDA

    tgda = TGDA.for_context({"epochs": 5}, ctx)
    x_t, _ = tgda.poison(data.x_train, data.y_train)
    info = tgda.diagnostics.domain_refined
    assert data.domain.contains(x_t) and info is not None and info["refined"] >= info["rounded"]


def test_statp_samples_categories_with_their_frequencies_inside_the_domain():
    # corner rounding leaves a 3- or 4-category group all zero (each column's mean < ½), which the domain's argmax
    # then maps to its first category: every poison would have had contract=month and payment=card
    data = from_frame(churn_table(600), "churn", val=0.2, test=0.2, seed=0)
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=50), data, torch.device("cpu"))
    clean = victim.fit(data.x_train, data.y_train, {"l2": 0.01}, 0)
    from audit.attacks import StatP

    attack = StatP.for_context({}, AttackContext.of(data, victim, clean, {"l2": 0.01}, 1.0, seed=2))
    x_p, y_p = attack.poison(data.x_train, data.y_train)
    assert data.domain is not None and data.domain.contains(x_p) and attack.diagnostics.domain_projected == 0
    np.testing.assert_array_equal(y_p, clean.class_losses(x_p).argmax(1))  # labels chosen for the points as they are
    for _, categories, cols in data.domain.groups:
        share, train_share = x_p[:, list(cols)].mean(axis=0), data.x_train[:, list(cols)].mean(axis=0)
        assert np.all(share > 0.1), (categories, share)
        np.testing.assert_allclose(share, train_share, atol=0.08)  # n_p = n: the frequencies within a few standard errors


def test_a_declared_domain_runs_through_a_config_and_bad_declarations_are_one_line(tmp_path):
    df = churn_table(300)
    data = from_frame(df, "churn", val=0.2, test=0.2, seed=0)
    declared = with_domain(data, DomainSpec(columns={"monthly": "levels:100", "tenure": "continuous"}))
    assert declared.domain is not None and not declared.domain.inferred
    assert declared.domain.kinds[:3] == ("continuous", "levels:100", "binary")  # senior: inferred, kept
    assert declared.domain.describe()["levels"] == {"100": ["monthly"]} and "declared" in declared.domain.sentence()
    for columns, message in (
        ({"age": "integer"}, "dataset.domain.columns.age: no such column; the columns are tenure, monthly"),
        ({"monthly": "integer"}, "dataset.domain.columns.monthly: declared integer but the training data holds"),
        ({"contract=month": "binary"}, "one-hot group"),
    ):
        with pytest.raises(AuditError, match=message):
            with_domain(data, DomainSpec(columns=columns))
    with pytest.raises(AuditError, match="unknown feature kind 'ordinal'"):
        parse_config({"dataset": {"name": "csv", "path": "x.csv", "label_column": "y", "domain": {"columns": {"a": "ordinal"}}}})
    # through a YAML-equivalent config into real cells: every cached poison set in the declared domain
    import audit

    cfg = parse_config({
        "name": "declared", "candidates": {"l2": [0.01]}, "budgets": [0.1], "seeds": [0], "device": "cpu", "confirm": False,
        "splits": 1, "poisonability": {"enabled": "off"}, "attacks": [{"name": "back_gradient", "id": "bg", "params": {"iterations": 3}},
                                 {"name": "gradient_canceling", "id": "gc", "params": {"epochs": 20}}],
    })  # fmt: skip
    spec = cfg.dataset.model_copy(update={"domain": DomainSpec(columns={"monthly": "levels:100"})})
    result = audit.run_audit(cfg.model_copy(update={"dataset": spec}), dataset=df, label="churn", output_dir=tmp_path, progress=False)
    assert result.summary["dataset"]["domain"]["levels"] == {"100": ["monthly"]}
    from audit.grid.store import Store

    store = Store.open_existing(result.run_dir, read_only=True)
    try:
        keys = [str(np.load(p, allow_pickle=False)["key"]) for p in sorted(store.poison_dir.glob("*.npz"))]
        sets = [store.load_poisons(k) for k in keys]
    finally:
        store.close()
    assert len(sets) == 2
    monthly = 1
    for found in sets:
        assert found is not None
        x_p, _, diagnostics = found
        assert np.allclose(x_p[:, monthly] * 100, np.round(x_p[:, monthly] * 100), atol=1e-3)
        assert diagnostics["domain_refined"]["refined"] >= diagnostics["domain_refined"]["rounded"]


def test_pixels_put_every_poison_on_the_levels_k_over_255():
    data = with_domain(load_dataset(DatasetSpec(name="breast_cancer")), "pixels")
    assert data.domain is not None and set(data.domain.kinds) == {"levels:255"}
    rounded, _ = data.domain.project(np.full((2, data.n_features), 0.5004, np.float32))
    np.testing.assert_allclose(rounded, np.full_like(rounded, 128 / 255), rtol=0, atol=1e-7)
    with pytest.raises(AuditError, match="'pixels' needs features in \\[0, 1\\]"):
        with_domain(dataclasses.replace(data, domain=None, x_train=data.x_train * 3), "pixels")


def test_a_relaxed_run_reports_its_poisons_damage_mapped_into_the_domain_beside_their_own(tmp_path):
    import audit
    from audit.report import write_report

    cfg = parse_config({
        "name": "relaxed", "candidates": {"l2": [0.01]}, "budgets": [0.1], "seeds": [0], "device": "cpu", "confirm": False,
        "splits": 1, "poisonability": {"enabled": "off"}, "dataset": {"name": "breast_cancer", "domain": "relaxed"},
        "attacks": [{"name": "gradient_canceling", "id": "gc", "params": {"epochs": 20}}],
    })  # fmt: skip
    df = churn_table(300)
    result = audit.run_audit(cfg, dataset=df, label="churn", output_dir=tmp_path, progress=False)
    from audit.grid.store import stored_cells

    cells = [c for c in stored_cells(result.run_dir) if c.status == "ok"]
    assert cells and all(c.recorded("feasible")["changed"] > 0 for c in cells)  # GC's relaxed poisons are not rows of the table
    row = result.summary["feasible_damage"][0]
    c = cells[0]
    assert row["relaxed"] == pytest.approx(c.clean_test - c.poisoned_test)
    assert row["feasible"] == pytest.approx(c.clean_test - c.recorded("feasible")["test"]) and row["feasible_attack"] == "gc"
    # the feasible figure is the model retrained on the poisons mapped into the domain, recomputed here by hand
    from audit.grid.store import Store

    store = Store.open_existing(result.run_dir, read_only=True)
    try:
        (key,) = [str(np.load(p, allow_pickle=False)["key"]) for p in store.poison_dir.glob("*.npz")]
        x_p, y_p, _ = store.load_poisons(key)
    finally:
        store.close()
    data, victim = result.plan.dataset, result.plan.victim
    assert data.domain is None and data.relaxed_domain is not None
    x_f, _ = data.relaxed_domain.project(x_p)
    from audit.grid.work import clean_train_seed

    refit = victim.fit(np.concatenate([data.x_train, x_f]), np.concatenate([data.y_train, y_p]), {"l2": 0.01}, clean_train_seed(0))
    assert refit.metric(data.x_test, data.y_test) == pytest.approx(c.recorded("feasible")["test"])
    html = write_report(result).read_text()
    assert "mapped into the data&#39;s domain" in html or "mapped into the data's domain" in html
