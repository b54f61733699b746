"""Tables and feasible poisons (issue 31, part 3): a DataFrame with categorical columns and string
labels runs end to end, and every attack's poisons are points the table could hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.data import FeatureDomain, from_frame
from audit.errors import AuditError

pd = pytest.importorskip("pandas")
from examples.tables import churn_table  # noqa: E402  (the example's mixed-type table, 1000 rows by default)


def test_a_dataframe_becomes_a_dataset_with_its_domain_and_class_names():
    df = churn_table(500)
    data = from_frame(df, "churn", val=0.2, test=0.2, seed=0)
    assert data.class_names == ("churn", "stay") and data.n_classes == 2
    assert data.n_features == 3 + 3 + 4  # tenure, monthly, senior, contract one-hot (3), payment one-hot (4)
    d = data.domain
    assert d is not None
    assert d.names[:3] == ("tenure", "monthly", "senior") and d.kinds[:3] == ("integer", "continuous", "binary")
    assert [(name, cats) for name, cats, _ in d.groups] == [("contract", ("month", "two-year", "year")),
                                                              ("payment", ("card", "cash", "check", "transfer"))]  # fmt: skip
    for _, _, cols in d.groups:
        assert np.all(data.x_train[:, list(cols)].sum(axis=1) == 1)
    assert d.contains(data.x_train) and d.contains(data.x_test)
    # the labels are the names in sorted order; the split is the seeded shuffle
    order = np.random.default_rng(0).permutation(len(df))
    assert [data.class_names[i] for i in data.y_val[:5]] == df["churn"].to_numpy()[order[:5]].tolist()


def test_categories_come_from_the_training_split_only():
    df = churn_table(n=200)
    df.loc[df.index[:3], "payment"] = "crypto"  # rows 0-2: wherever they fall, "crypto" is a category only if it is in training
    data = from_frame(df, "churn", val=0.2, test=0.2, seed=0)
    order = np.random.default_rng(0).permutation(len(df))
    in_train = set(order[80:].tolist()) & {0, 1, 2}
    payment = next(cats for name, cats, _ in data.domain.groups if name == "payment")
    assert ("crypto" in payment) == bool(in_train)


def test_feature_domain_projection_is_exact():
    domain = FeatureDomain(("integer", "continuous", "binary", "onehot", "onehot", "onehot"), (("c", ("a", "b", "z"), (3, 4, 5)),))
    x = np.array([[2.4, 0.37, 0.6, 0.23, 0.85, 0.36], [2.6, -1.0, 0.2, 0.0, 0.0, 0.0]], np.float32)
    out, changed = domain.project(x)
    np.testing.assert_array_equal(out, np.array([[2, 0.37, 1, 0, 1, 0], [3, -1.0, 0, 1, 0, 0]], np.float32))  # all-zero group: its first category
    assert changed == 2 and domain.contains(out) and not domain.contains(x)
    assert domain.project(out)[1] == 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop(columns=["churn"]), "no label column 'churn'; columns: tenure"),
    (lambda df: df.assign(monthly=df.monthly.where(df.index > 3)), "missing values in monthly"),
])  # fmt: skip
def test_table_errors_are_one_line(change, message):
    with pytest.raises(AuditError, match=message):
        from_frame(change(churn_table(100)), "churn")


def test_every_attack_keeps_its_poisons_in_the_domain_and_the_report_names_the_classes(tmp_path):
    """The whole battery (TGDA too, at few epochs: feasibility, not strength) through ``run_audit(dataset=df,
    label=...)``: every cached poison set's one-hot groups have exactly one 1, its integer columns are
    whole, its binary columns 0/1; the report and summary.json show the class names and the domain."""
    import audit
    from audit.config import parse_config
    from audit.grid.store import Store
    from audit.report import write_report

    df = churn_table(500)
    cfg = parse_config({"name": "churn", "model": {"name": "logreg"}, "candidates": {"l2": [1e-2]}, "budgets": [0.05, 0.1],
                        "seeds": [0], "device": "cpu", "confirm": False,
                        "attacks": [{"name": "label_flip", "params": {"variant": "random"}, "id": "lf"}, {"name": "statp"},
                                    {"name": "gradient_canceling", "id": "gc", "params": {"epochs": 100}}, {"name": "back_gradient"},
                                    {"name": "tgda", "id": "tgda", "params": {"epochs": 10, "pretrain_epochs": 10}}]})  # fmt: skip
    with pytest.raises(AuditError, match="a DataFrame needs label="):
        audit.run_audit(cfg, dataset=df, output_dir=tmp_path, progress=False)
    result = audit.run_audit(cfg, dataset=df, label="churn", output_dir=tmp_path, progress=False)
    data = result.plan.dataset
    kinds = np.asarray(data.domain.kinds)
    store = Store.open_existing(result.run_dir)
    try:
        keys = [str(np.load(p, allow_pickle=False)["key"]) for p in sorted(store.poison_dir.glob("*.npz"))]
        attacks = set()
        for key in keys:
            x_p, _, diagnostics = store.load_poisons(key)
            attacks.add(json.loads(key)[1])
            for _, _, cols in data.domain.groups:
                block = x_p[:, list(cols)]
                assert np.all(block.sum(axis=1) == 1) and np.all((block == 0) | (block == 1)), key
            assert np.all(x_p[:, kinds == "integer"] == np.round(x_p[:, kinds == "integer"])), key
            assert np.all(np.isin(x_p[:, kinds == "binary"], (0.0, 1.0))), key
            assert diagnostics["domain_projected"] >= 0
        cells = [c for c in store.cells() if c.status == "ok"]
    finally:
        store.close()
    assert attacks == {"lf", "statp", "gc", "back_gradient", "tgda"} and len(cells) == 10
    html = write_report(result).read_text()
    assert "2 classes (0 = churn, 1 = stay)" in html and "categorical contract (3 categories, one-hot)" in html
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["dataset"]["class_names"] == ["churn", "stay"]
    assert summary["dataset"]["domain"]["integer"] == ["tenure"] and summary["dataset"]["domain"]["binary"] == ["senior"]


def test_a_csv_with_text_columns_through_a_yaml_config(tmp_path):
    """A CSV with text feature columns and text labels is a table (before: refused); ``dataset.domain:
    relaxed`` turns the mapping off and the report says the poisons may be impossible points."""
    from click.testing import CliRunner

    from audit.cli import cli
    from audit.grid.store import Store
    from tests.conftest import write_yaml

    churn_table(300).to_csv(tmp_path / "churn.csv", index=False)
    cfg = {"name": "csv", "dataset": {"name": "csv", "path": str(tmp_path / "churn.csv"), "label_column": "churn"},
           "model": {"name": "logreg"}, "candidates": {"l2": [1e-2]}, "budgets": [0.1], "seeds": [0], "device": "cpu",
           "confirm": False, "attacks": [{"name": "statp"}, {"name": "back_gradient", "params": {"iterations": 3}}]}  # fmt: skip
    runs = {}
    declared = {"columns": {"monthly": "levels:100"}}  # a declaration through YAML: the charge in cents
    for mode, domain in (("auto", "auto"), ("relaxed", "relaxed"), ("declared", declared)):
        path = write_yaml(tmp_path / f"{mode}.yaml", {**cfg, "name": mode, "dataset": {**cfg["dataset"], "domain": domain}})
        out = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
        assert out.exit_code == 0, out.output
        store = Store.open_existing(tmp_path / "out" / mode)
        try:
            runs[mode] = [store.load_poisons(str(np.load(p, allow_pickle=False)["key"]))[0] for p in sorted(store.poison_dir.glob("*.npz"))]
        finally:
            store.close()
    data = from_frame(churn_table(300), "churn")
    assert len(runs["auto"]) == 2 and all(data.domain.contains(x) for x in runs["auto"])
    assert not all(data.domain.contains(x) for x in runs["relaxed"])  # StatP's Gaussian samples are not one-hot rows
    auto = (tmp_path / "out" / "auto" / "report.html").read_text()
    relaxed = (tmp_path / "out" / "relaxed" / "report.html").read_text()
    assert "(0 = churn, 1 = stay)" in auto and "categorical payment (4 categories, one-hot)" in auto
    assert "relaxed (dataset.domain: relaxed)" in relaxed and "relaxed (dataset.domain: relaxed)" not in auto
    monthly = 1  # tenure, monthly, senior, then the one-hot groups
    assert all(np.allclose(x[:, monthly] * 100, np.round(x[:, monthly] * 100), atol=1e-3) for x in runs["declared"])
    assert "1 on levels k/100 (monthly)" in (tmp_path / "out" / "declared" / "report.html").read_text()


def test_an_inferred_domain_for_flat_data(tmp_path):
    """``dataset.domain: inferred`` reads the kinds off any flat data (an npz with an integer and a binary column)."""
    from audit.config import DatasetSpec
    from audit.data import load_dataset

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 9, 200), rng.integers(0, 2, 200), rng.normal(size=200)]).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=(x[:, 2] > 0).astype(np.int64))
    spec = {"name": "npz", "path": str(tmp_path / "d.npz")}
    assert load_dataset(DatasetSpec(**spec)).domain is None  # auto: flat arrays stay continuous
    assert load_dataset(DatasetSpec(**spec, domain="inferred")).domain.kinds == ("integer", "binary", "continuous")


def test_a_column_of_numbers_with_a_stray_word_is_an_error_not_categories():
    df = churn_table(100).astype({"monthly": object})
    df.loc[df.index[7], "monthly"] = "n/a"
    with pytest.raises(AuditError, match=r"column 'monthly' mixes numbers and text \(e.g. 'n/a'\)"):
        from_frame(df, "churn")
