"""Issue 31, part 4: input through the Python API is checked like config input — one-line AuditError, no traceback."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import audit
from audit.attacks import BackGradient, GradientCanceling, LabelFlip, StatP
from audit.config import DatasetSpec, parse_config
from audit.data import load_dataset
from audit.errors import AuditError
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def data():
    return load_dataset(DatasetSpec(name="breast_cancer"))


def _run(dataset, tmp_path):
    return audit.run_audit(parse_config(tiny_config(budgets=[0.1])), dataset=dataset, output_dir=tmp_path, progress=False)


def test_run_audit_refuses_bad_datasets_with_one_line(data, tmp_path):
    pd = pytest.importorskip("pandas")
    with pytest.raises(AuditError, match=r"dataset: a DataFrame needs label='<the label column>'"):  # README: Tables
        _run(pd.DataFrame(data.x_train), tmp_path)
    from audit.grid import run_audit as grid_run_audit  # the grid's entry point takes a Dataset only, and says how to pass a table

    with pytest.raises(AuditError, match=r"dataset: expected an audit.data.Dataset \(got DataFrame\) \(a table: pass it to audit.run_audit"):
        grid_run_audit(parse_config(tiny_config(budgets=[0.1])), dataset=pd.DataFrame(data.x_train), output_dir=tmp_path, progress=False)
    x_val = data.x_val.copy()
    x_val[3, 2] = np.nan
    with pytest.raises(AuditError, match=r"dataset x_val/y_val: features contain NaN or inf \(1 values\)"):
        _run(dataclasses.replace(data, x_val=x_val), tmp_path)
    with pytest.raises(AuditError, match=r"dataset x_test/y_test: x has 29 features, the training split has 30"):
        _run(dataclasses.replace(data, x_test=data.x_test[:, 1:]), tmp_path)
    with pytest.raises(AuditError, match=r"dataset x_train/y_train: x has \d+ rows but y has 5"):
        _run(dataclasses.replace(data, y_train=data.y_train[:5]), tmp_path)
    with pytest.raises(AuditError, match="y_train: need at least two classes"):
        _run(dataclasses.replace(data, y_train=np.zeros_like(data.y_train)), tmp_path)
    with pytest.raises(AuditError, match=r"y_test: labels must lie in 0..1 \(got 7\)"):
        _run(dataclasses.replace(data, y_test=np.where(data.y_test == 1, 7, 0)), tmp_path)
    with pytest.raises(AuditError, match=r"dataset: y_val must be numeric \(got dtype <U"):
        _run(dataclasses.replace(data, y_val=np.array(["churn"] * len(data.y_val))), tmp_path)
    with pytest.raises(AuditError, match=r"dataset: lo and hi must have one value per feature \(30\)"):
        _run(dataclasses.replace(data, lo=np.zeros(3)), tmp_path)
    assert not (tmp_path / "tiny").exists(), "nothing is written before the input is checked"


def _clf():
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 2))
    return m, PyTorchClassifier(m, nn.CrossEntropyLoss(), input_shape=(4,), nb_classes=2, clip_values=(0.0, 1.0),
                                optimizer=torch.optim.Adam(m.parameters()))  # fmt: skip


@pytest.mark.parametrize("name", ["label_flip", "statp", "back_gradient", "gradient_canceling"])
def test_every_attacks_poison_refuses_bad_input_with_one_line(name):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(int)
    module, clf = _clf()
    make = {
        "label_flip": lambda: LabelFlip(clf, budget=0.1, variant="adversarial", seed=0),
        "statp": lambda: StatP(clf, budget=0.1, seed=0),
        "back_gradient": lambda: BackGradient(clf, x_val=x, y_val=y, budget=0.1, l2=1e-3, seed=0, iterations=2),
        "gradient_canceling": lambda: GradientCanceling(clf, target_model=module, budget=0.1, l2=1e-3, seed=0, epochs=2),
    }[name]
    with pytest.raises(AuditError, match=r"\.poison: x must be numeric features"):
        make().poison(np.array([["a"] * 4] * 40), y)
    with pytest.raises(AuditError, match=r"\.poison: x has 3 features per point but the estimator's input_shape \(4,\) has 4"):
        make().poison(x[:, :3], y)
    with pytest.raises(AuditError, match=r"\.poison: y has a single class \(0\)"):
        make().poison(x, np.zeros(40, int))
    with pytest.raises(AuditError, match=r"\.poison: y must be numeric"):
        make().poison(x, np.array(["churn", "stay"] * 20))
    x_nan = x.copy()
    x_nan[0, 0] = np.inf
    with pytest.raises(AuditError, match=r"\.poison: x contains NaN or inf"):
        make().poison(x_nan, y)
    x_p, y_p = make().poison(x, y)  # and good input still works
    assert len(x_p) == len(y_p) == 4
