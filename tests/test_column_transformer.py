"""scikit-learn pipelines that read a table (issue 31): a ``ColumnTransformer`` scaling numeric columns and one-hot
encoding categorical ones by name, then a linear model — the usual way a tabular model is shipped.

The audit writes its flat rows back as the table (``audit.data.TableColumns``) in front of the user's pipeline, so every
retraining refits the whole pipeline on table rows, and the surrogate maps the flat encoding through the same columns
(``audit.models.surrogate.ColumnMap``) so the white-box attacks run against it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, OneHotEncoder, StandardScaler

from audit.config import parse_config
from audit.data import TableColumns, from_frame
from audit.errors import AuditError
from audit.models.surrogate import refitted, torch_surrogate, with_table
from tests.conftest import cells_with_poisons, stored_cells


def churn_table(n: int = 500, seed: int = 0, classes: int = 2) -> pd.DataFrame:
    """A customer table: two numeric columns, two categorical ones, a text label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n).astype(float),
            "plan": rng.choice(["basic", "plus", "pro"], n),
            "spend": rng.gamma(2.0, 30.0, n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    score = 0.04 * (df.age - 45) + 0.02 * (df.spend - 60) + df.plan.map({"basic": -1.0, "plus": 0.2, "pro": 1.0}) + rng.normal(0, 0.5, n)
    if classes == 2:
        df["churn"] = np.where(score > 0, "churn", "stay")
    else:
        df["churn"] = np.select([score < -0.5, score < 0.5], ["leave", "maybe"], "stay")
    return df


def with_unseen_category(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with one test-split row (from_frame's default split) in a region the training split lacks."""
    from audit.data import split_indices

    test = split_indices(len(df), 0.2, 0.2, 0)[2]
    df = df.copy()
    df.loc[df.index[test[0]], "region"] = "central"
    return df


def _probabilities(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(module(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()


PIPELINES = {
    "scale+onehot": lambda: make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["age", "spend"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"])]),
        LogisticRegression(max_iter=5000),
    ),
    "drop-first+remainder": lambda: make_pipeline(
        ColumnTransformer([("cat", OneHotEncoder(drop="first", handle_unknown="ignore"), ["region", "plan"])], remainder="passthrough"),
        StandardScaler(),
        LogisticRegression(C=0.3, max_iter=5000),
    ),
    "chained-scalers+minmax": lambda: make_pipeline(
        ColumnTransformer(
            [
                ("a", make_pipeline(StandardScaler(), MaxAbsScaler()), ["spend"]),
                ("b", MinMaxScaler(), ["age"]),
                ("c", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ]
        ),
        LogisticRegression(max_iter=5000),
    ),
}


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_surrogate_of_a_table_pipeline_gives_its_probabilities(name, classes):
    """The pipeline fitted on the table's rows (written back from the flat encoding) and its surrogate on the flat rows:
    probabilities within 1e-3 (float32), on test rows too — one of them with a category the training split lacks."""
    data = from_frame(with_unseen_category(churn_table(classes=classes)), "churn")
    table = TableColumns.of(data.domain)
    pipeline = with_table(PIPELINES[name](), table).fit(data.x_train, data.y_train)
    module = torch_surrogate(pipeline, data.n_classes)
    for x in (data.x_train, data.x_val, data.x_test):
        assert np.abs(_probabilities(module, x) - pipeline.predict_proba(x)).max() < 1e-3


def test_the_scalers_inside_a_column_transformer_are_refit_as_scikit_learn_refits_them():
    """``refitted`` reaches the scalers in the ColumnTransformer's branches: the surrogate's features of any rows, under
    the statistics of another training set, equal the column transformer refit on that set (to float32 rounding)."""
    data = from_frame(churn_table(), "churn")
    table = TableColumns.of(data.domain)
    pipeline = with_table(PIPELINES["chained-scalers+minmax"](), table).fit(data.x_train, data.y_train)
    module = torch_surrogate(pipeline, 2).double()
    other = data.x_train[:150] * np.float32(1.3)
    refit = clone(pipeline).fit(other, data.y_train[:150])
    with refitted(module, torch.as_tensor(other, dtype=torch.float64)):
        ours = module.features(torch.as_tensor(data.x_test, dtype=torch.float64)).numpy()
    theirs = refit[:-1].transform(data.x_test)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-5)
    before = module.features(torch.as_tensor(data.x_test, dtype=torch.float64)).numpy()
    assert np.abs(before - ours).max() > 1e-2  # restored afterwards, and the refit did move the statistics


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """The quick battery (flips, StatP, GC, back-gradient) against a ColumnTransformer → LogisticRegression pipeline the
    user fitted on the training rows of a table with text labels (≈ 10 s)."""
    from audit.api import run_audit

    df = churn_table()
    data = from_frame(df, "churn")
    table = TableColumns.of(data.domain)
    rho = 1e-2
    pipeline = PIPELINES["scale+onehot"]()
    pipeline.set_params(logisticregression__C=2 / (rho * len(data.y_train)))
    names = np.asarray(data.class_names, dtype=object)
    pipeline.fit(table.decode(data.x_train), names[data.y_train])  # the user's own fit: table rows, text labels
    cfg = parse_config(
        {"name": "table-pipeline", "candidates": {"l2": [1e-3, rho]}, "budgets": [0.1], "seeds": [0], "device": "cpu", "confirm": False}
    )
    out = tmp_path_factory.mktemp("table")
    return run_audit(cfg, model=pipeline, dataset=df, label="churn", output_dir=out, progress=False), pipeline


def test_a_table_pipeline_faces_the_white_box_attacks_and_matches_the_users_model(table_run):
    result, _ = table_run
    cells = [c for c in stored_cells(result.run_dir) if c.status == "ok"]
    assert {"back_gradient", "gradient_canceling"} <= {c.attack for c in cells}
    assert len(cells) == 10  # 2 candidates × 5 attacks, none failed
    summary = result.summary
    assert "ColumnTransformer[StandardScaler, OneHotEncoder] → LogisticRegression" in json.dumps(summary, ensure_ascii=False)
    deployed = summary["deployed"]  # the user's fit (table rows, text labels) scored and matched by the audit's retraining
    assert not summary.get("no_verdict") and deployed["trained"] and deployed["matches"], deployed
    assert deployed["test_metric"] > deployed["trivial_test_metric"] + 10, deployed
    art = result.recommended_estimator()  # the user's pipeline refit at the recommended ρ, reading flat rows as the table
    data = result.plan.dataset
    assert type(art.model.steps[0][1]).__name__ == "TableDecoder"
    assert np.array_equal(art.predict(data.x_test).argmax(1), art.model.predict(data.x_test))


def test_a_table_pipelines_poisons_are_table_rows_and_its_numbers_are_the_pipeline_refit_by_hand(table_run):
    """Every cached poison is a row the table can hold (each one-hot group exactly one category), and every cell's
    clean and poisoned test accuracy is the user's pipeline refit by hand on the table rows (C = 2/(ρ(n + m)))."""
    result, pipeline = table_run
    data = result.plan.dataset
    table = TableColumns.of(data.domain)
    n = len(data.y_train)
    checked = 0
    for cell, x_p, y_p in cells_with_poisons(result.run_dir):
        for _, cols, categories in table.columns:
            if categories:
                block = x_p[:, list(cols)]
                assert np.all(block.sum(axis=1) == 1) and np.all((block == 0) | (block == 1)), cell.attack
        rho = json.loads(cell.candidate)["l2"]
        by_hand = clone(pipeline).set_params(logisticregression__C=2 / (rho * (n + len(y_p))))
        rows = pd.concat([table.decode(data.x_train), table.decode(x_p)], ignore_index=True)
        by_hand.fit(rows, np.concatenate([data.y_train, y_p]))
        assert cell.poisoned_test == pytest.approx(100 * by_hand.score(table.decode(data.x_test), data.y_test)), cell.attack
        checked += 1
    assert checked == 10


@pytest.mark.parametrize(
    "transformer, message",
    [
        (ColumnTransformer([("cat", OneHotEncoder(), ["age"])]), "one-hot encodes the numeric column 'age'; make it text"),
        (
            ColumnTransformer([("num", StandardScaler(), ["plan"])]),
            "gets the categorical column 'plan' (StandardScaler); encode it with OneHotEncoder",
        ),
        (ColumnTransformer([("cat", OneHotEncoder(min_frequency=5), ["plan"])]), "OneHotEncoder must take the data's categories"),
        (
            ColumnTransformer([("num", StandardScaler(), ["age"])], remainder=StandardScaler()),
            "branch 'remainder' gets the categorical column 'plan'",
        ),
        (
            ColumnTransformer([("cat", OneHotEncoder(), ["plan"])], remainder="passthrough"),
            "branch 'remainder' gets the categorical column 'region' (passthrough)",
        ),
        (ColumnTransformer([("num", StandardScaler(), ["agee"])]), "selects 'agee', not a column of the table"),
    ],
)
def test_unsupported_column_transformers_are_one_line_errors(transformer, message):
    from audit.models import build_victim

    data = from_frame(churn_table(), "churn")
    pipeline = make_pipeline(transformer, LogisticRegression())
    cfg = parse_config({"name": "x"})
    with pytest.raises(AuditError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_victim(cfg.model, cfg.training, data, torch.device("cpu"), model_obj=pipeline)  # before any cell runs


def test_a_pipeline_that_reads_columns_by_name_needs_the_table_and_known_categories():
    from audit.data import load_dataset
    from audit.models import build_victim

    cfg = parse_config({"name": "x"})
    pipeline = make_pipeline(ColumnTransformer([("num", StandardScaler(), ["age"])]), LogisticRegression())
    arrays = load_dataset(cfg.dataset)
    with pytest.raises(AuditError, match="selects columns by name; hand the audit the table itself"):
        build_victim(cfg.model, cfg.training, arrays, torch.device("cpu"), model_obj=pipeline)
    data = from_frame(with_unseen_category(churn_table()), "churn")
    assert TableColumns.of(data.domain).has_unseen(data.x_test) == ["region"]
    strict = make_pipeline(ColumnTransformer([("cat", OneHotEncoder(), ["region"])]), LogisticRegression())
    with pytest.raises(AuditError, match="one-hot encodes 'region' with handle_unknown='error'"):
        build_victim(cfg.model, cfg.training, data, torch.device("cpu"), model_obj=strict)
