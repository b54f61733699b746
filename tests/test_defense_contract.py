"""Every registered defense keeps the one contract, on every task and victim kind it claims."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from audit.attacks import LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.defenses import DEFENSES
from audit.defenses.base import CertificateDiagnostics
from audit.errors import AuditError
from audit.grid.cells import apply_defense
from audit.models import Candidate, build_victim

SETTINGS = {"classification": ("wine", "logreg", LogisticRegression(max_iter=500)), "regression": ("diabetes", "ridge", Ridge())}
_CACHE: dict = {}


def _setting(task, kind):
    if (task, kind) not in _CACHE:
        name, model, estimator = SETTINGS[task]
        d = load_dataset(DatasetSpec(name=name))
        victim = build_victim(
            ModelSpec(name=model), TrainingSpec(epochs=100), d, torch.device("cpu"), model_obj=estimator if kind == "sklearn" else None
        )
        n_p = 10
        rng = np.random.default_rng(0)
        idx = rng.choice(len(d.y_train), n_p, replace=False)
        if task == "classification":
            y_p = LabelFlip(budget=n_p / len(d.y_train), n_classes=d.n_classes, seed=0).poison(d.x_train, d.y_train)[1]
        else:
            y_p = np.where(d.y_train[idx] > np.median(d.y_train), d.y_train.min(), d.y_train.max()).astype(np.float32)
        x = np.concatenate([d.x_train, d.x_train[idx]])
        y = np.concatenate([d.y_train, y_p[:n_p]])
        _CACHE[(task, kind)] = (d, victim, x, y)
    return _CACHE[(task, kind)]


def _cases():
    for name, cls in sorted(DEFENSES.items()):
        for task in cls.tasks:
            for kind in cls.victims:
                # RONI refits once per point, twice here (27 s); tests/test_art_detectors.py runs it in the default suite
                marks = [pytest.mark.slow] if name == "roni" else []
                yield pytest.param(name, task, kind, id=f"{name}-{task}-{kind}", marks=marks)


@pytest.mark.parametrize("name, task, kind", list(_cases()))
def test_defense_contract(name, task, kind):
    d, victim, x, y = _setting(task, kind)
    assert victim.kind == kind
    x_in, y_in = x.copy(), y.copy()
    cls = DEFENSES[name]
    hp = {"l2": 0.01}
    fitted, keep, diag = apply_defense(cls.for_cell(0.1, 5, d), x, y, victim, Candidate.of(victim, hp), 0)
    assert keep.dtype == bool and keep.shape == (len(y),)
    np.testing.assert_array_equal(x, x_in)  # the mixed set is not modified
    np.testing.assert_array_equal(y, y_in)
    assert isinstance(diag, cls.Diagnostics)  # typed, as the class declares
    assert type(diag).from_json(json.loads(json.dumps(diag.to_json()))) == diag  # stored as JSON and read back
    if cls.certifies:
        assert issubclass(cls.Diagnostics, CertificateDiagnostics)
    metric = fitted.metric(d.x_test, d.y_test)
    assert np.isfinite(metric)
    again, keep2, _ = apply_defense(cls.for_cell(0.1, 5, d), x, y, victim, Candidate.of(victim, hp), 0)
    np.testing.assert_array_equal(keep, keep2)  # same seed, same decision
    assert again.metric(d.x_test, d.y_test) == pytest.approx(metric)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_params_are_checked(name):
    """Unknown parameters are a one-line error naming the defense, in the API and in a config."""
    d, _, _, _ = _setting(DEFENSES[name].tasks[0], DEFENSES[name].victims[0])
    with pytest.raises(AuditError, match=rf"defense '{name}' parameter 'no_such_knob'"):
        DEFENSES[name].for_cell(0.1, 0, d, {"no_such_knob": 1})
    with pytest.raises(AuditError, match=rf"defenses.{name}.params: no_such_knob"):
        parse_config({"defenses": [{"name": name, "params": {"no_such_knob": 1}}]})


def test_defense_params_reach_the_defense():
    cfg = parse_config(
        {"defenses": ["none", {"name": "sever", "id": "sever3", "params": {"rounds": 3}}, {"name": "dpa", "params": {"partitions": 4}}]}
    )
    assert cfg.defense_keys == ["none", "sever3", "dpa[partitions=4]"]
    d, _, _, _ = _setting("classification", "torch")
    sever = cfg.defense_spec("sever3")
    assert sever.defense.for_cell(0.1, 0, d, sever.params).rounds == 3
    with pytest.raises(AuditError, match=r"partitions.*greater than or equal to 2"):
        parse_config({"defenses": [{"name": "dpa", "params": {"partitions": 1}}]})
    # a bare name stays a bare name in the stored config (old run directories keep their fingerprint)
    assert parse_config({"defenses": ["none", "loss_filter"]}).model_dump(mode="json")["defenses"] == ["none", "loss_filter"]


def test_defense_facts_are_declared():
    assert {n for n, c in DEFENSES.items() if c.reads_validation} == {"influence_filter", "roni"}
    assert {n for n, c in DEFENSES.items() if c.designed_for_backdoors} == {"activation_clustering", "spectral_signature", "roni"}
    assert {n for n, c in DEFENSES.items() if c.certifies} == {"dpa", "fa"}
