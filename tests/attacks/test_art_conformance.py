"""The attacks behave as an ART user expects: attack registry × estimator kinds × label formats.

Estimator kinds: an ART ``PyTorchClassifier`` MLP with ``preprocessing`` and ``clip_values``,
an ART ``PyTorchClassifier`` CNN on 4-D images, ART's ``ScikitlearnLogisticRegression``, an
ART ``PyTorchRegressor`` and a bare ``nn.Module``. For every combination an attack claims,
``poison`` returns the input's shape and label format, stays inside ``clip_values``, leaves
the caller's arrays, modules and global RNG untouched and is deterministic; ``set_params``
checks as the constructor does. Every combination it does not claim fails with one line.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from audit.attacks import ATTACKS
from audit.attacks.base import torch_module
from audit.config import DatasetSpec
from audit.data import load_dataset
from audit.errors import AuditError

N_TRAIN = 120  # a slice of digits / diabetes keeps each case under a second or two
FAST = {
    "label_flip": {"variant": "adversarial"},
    "statp": {},
    "optp": {"iterations": 3},
    "gradient_canceling": {"epochs": 3},
    "tgda": {"epochs": 1, "pretrain_epochs": 1, "cg_max_iter": 3, "follower_steps": 1, "batch_size": 60},
    "back_gradient": {"iterations": 2, "inner_steps": 5},
    "minmax": {"defense": "none"},  # the box alone: closed form, fast (the region is tested in test_certificate)
    "regime_a": {"steps": 2},
    "regime_b": {"steps": 2},
    "regime_c": {"variant": "adversarial"},
}
KINDS = ("art_mlp", "art_cnn", "art_sklearn", "art_regressor", "module")
TORCH_KINDS = ("art_mlp", "art_cnn", "art_regressor", "module")


class SmallCNN(nn.Module):
    def __init__(self, c: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2), 1))


_DATA: dict = {}


def _data(task: str):
    if task not in _DATA:
        d = load_dataset(DatasetSpec(name="digits" if task == "classification" else "diabetes"))
        _DATA[task] = d
    return _DATA[task]


def _estimator(kind: str):
    """(estimator, x_train, y_train as indices or responses, x_val, y_val) for one kind, trained briefly."""
    from art.estimators.classification import PyTorchClassifier
    from art.estimators.classification.scikitlearn import ScikitlearnLogisticRegression
    from art.estimators.regression import PyTorchRegressor
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    task = "regression" if kind == "art_regressor" else "classification"
    d = _data(task)
    x, y, xv, yv = d.x_train[:N_TRAIN], d.y_train[:N_TRAIN], d.x_val[:60], d.y_val[:60]
    if kind == "art_mlp":
        model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        est = PyTorchClassifier(model, nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=10, clip_values=(0.0, 1.0),
                                preprocessing=(0.5, 0.25), optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))  # fmt: skip
        est.fit(x, y, nb_epochs=5, batch_size=60, verbose=False)
    elif kind == "art_cnn":
        model = SmallCNN()
        est = PyTorchClassifier(model, nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0),
                                optimizer=torch.optim.Adam(model.parameters(), lr=1e-2))  # fmt: skip
        x, xv = x.reshape(-1, 1, 8, 8), xv.reshape(-1, 1, 8, 8)
        est.fit(x, y, nb_epochs=5, batch_size=60, verbose=False)
    elif kind == "art_sklearn":
        est = ScikitlearnLogisticRegression(LogisticRegression(max_iter=300).fit(x, y), clip_values=(0.0, 1.0))
    elif kind == "art_regressor":
        model = nn.Linear(x.shape[1], 1)
        est = PyTorchRegressor(model, nn.MSELoss(), input_shape=(x.shape[1],), clip_values=(float(d.lo.min()), float(d.hi.max())),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1))  # fmt: skip
        est.fit(x, y, nb_epochs=5, batch_size=60, verbose=False)
    else:
        est = nn.Linear(64, 10)
    return est, x, y, xv, yv


def _build(name: str, est, x, y, xv, yv, **extra):
    cls = ATTACKS[name]
    params = {**FAST[name], **extra}
    common = {"budget": 0.1, "seed": 3}
    if name in ("label_flip", "regime_c"):
        return cls(est, n_classes=10, **common, **params)
    if name in ("regime_a", "regime_b"):
        return cls(est, n_classes=10, **common, **params)
    if name == "statp":
        return cls(est, **common, **params)
    if name == "optp":
        return cls(est, x_val=xv.reshape(len(xv), -1), y_val=yv, **common, **params)  # the box: the estimator's clip_values
    if name == "gradient_canceling":
        return cls(est, target_model=copy.deepcopy(torch_module(est, "test")), **common, **params)
    if name == "minmax":
        return cls(est, box=(0.0, 1.0), **common, **params)
    return cls(est, x_val=xv, y_val=yv, **common, **params)


def _claims(name: str, kind: str) -> bool:
    cls = ATTACKS[name]
    task = "regression" if kind == "art_regressor" else "classification"
    if task not in cls.tasks:
        return False
    if "sklearn" not in cls.victims and kind not in TORCH_KINDS:
        return False
    if name in ("label_flip", "statp", "regime_c") and kind == "module":
        return False  # black-box: they query an ART estimator's predict
    if name == "regime_a" and kind == "module":
        return False  # moved anywhere in the box: a bare module has no clip_values to bound it
    if name == "minmax" and kind != "module":
        return False  # softmax regression only: the ART kinds here are networks (or preprocess their inputs)
    return not (name == "tgda" and kind == "art_regressor")


def _cases(claimed: bool):
    for name in sorted(ATTACKS):
        for kind in KINDS:
            if name == "optp" and kind == "module":
                continue  # OptP fits its own linear model; a bare module says nothing it could check
            if _claims(name, kind) != claimed:
                continue
            labels = ("int", "one_hot") if kind != "art_regressor" and claimed else ("int",)
            for fmt in labels:
                yield pytest.param(name, kind, fmt, id=f"{name}-{kind}-{fmt}")


def _state(est):
    module = est if isinstance(est, nn.Module) else getattr(est, "model", None)
    if not isinstance(module, nn.Module):
        return None
    return ({k: v.clone() for k, v in module.state_dict().items()}, module.training, [p.requires_grad for p in module.parameters()])


@pytest.mark.parametrize("name, kind, fmt", list(_cases(True)))
def test_claimed_combination_behaves_as_an_art_attack(name, kind, fmt):
    est, x, y, xv, yv = _estimator(kind)
    y_in = np.eye(10, dtype=np.float32)[y] if fmt == "one_hot" else y
    yv_in = np.eye(10, dtype=np.float32)[yv] if fmt == "one_hot" else yv
    attack = _build(name, est, x, y_in, xv, yv_in)
    x_copy, y_copy, before = x.copy(), y_in.copy(), _state(est)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    x_p, y_p = attack.poison(x, y_in)
    n_p = len(x) if ATTACKS[name].modifies else round(0.1 * len(x))
    assert x_p.shape == (n_p, *x.shape[1:])  # the input's shape (images stay N×C×H×W)
    assert y_p.shape == (n_p, *y_in.shape[1:])  # the input's label format (one-hot stays one-hot)
    if fmt == "one_hot":
        assert set(np.unique(y_p)) <= {0.0, 1.0} and np.all(y_p.sum(axis=1) == 1)
    clip = getattr(est, "clip_values", None)
    if clip is not None:
        assert x_p.min() >= float(np.min(clip[0])) - 1e-6 and x_p.max() <= float(np.max(clip[1])) + 1e-6
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y_in, y_copy)
    after = _state(est)
    if before is not None:
        for k in before[0]:
            assert torch.equal(before[0][k], after[0][k]), f"{name} changed the caller's parameter {k}"
        assert before[1:] == after[1:], f"{name} changed the caller's module mode or requires_grad"
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], numpy_state[1])
    x_q, y_q = _build(name, est, x, y_in, xv, yv_in).poison(x, y_in)
    np.testing.assert_array_equal(x_p, x_q)
    np.testing.assert_array_equal(y_p, y_q)
    with pytest.raises(AuditError, match=r"The 'budget' parameter of \w+ must be a float in \(0, 1\]. Got 5.0 instead"):
        attack.set_params(budget=5.0)
    assert attack.budget == 0.1  # a refused change leaves the attack as it was


@pytest.mark.parametrize("name, kind, fmt", list(_cases(False)))
def test_unclaimed_combination_fails_with_one_line(name, kind, fmt):
    est, x, y, xv, yv = _estimator(kind)
    with pytest.raises((AuditError, TypeError)) as info:
        _build(name, est, x, y, xv, yv).poison(x, y)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    assert any(word in message for word in ("needs", "regression", "classification", "task")), message


def test_the_attacked_model_is_the_deployed_one():
    """With a non-trivial preprocessing, the attacks' view of the model scores what ART's predict scores."""
    est, x, y, xv, yv = _estimator("art_mlp")
    module = torch_module(est, "test")
    with torch.no_grad():
        ours = module(torch.as_tensor(xv)).argmax(1).numpy()
    np.testing.assert_array_equal(ours, est.predict(xv).argmax(1))
    raw = est.model(torch.as_tensor(xv)).argmax(1).numpy()
    assert (raw != ours).any(), "the preprocessing must matter for this test to mean anything"
    tgda = _build("tgda", est, x, y, xv, yv, epochs=1, leader_steps=0, follower_steps=0, log_every=1)
    tgda.poison(x, y)
    first = tgda.diagnostics["curve"][0]
    assert first["val_accuracy"] == pytest.approx(100 * np.mean(est.predict(xv).argmax(1) == yv), abs=1e-6)


def test_clip_values_are_the_default_box_and_bound_an_explicit_one():
    est, x, y, xv, yv = _estimator("art_mlp")
    attack = _build("back_gradient", est, x, y, xv, yv)
    assert attack.box is not None and float(attack.box[0]) == 0.0 and float(attack.box[1]) == 1.0
    with pytest.raises(AuditError, match=r"box' of BackGradient reaches outside the estimator's clip_values \[0, 1\]"):
        _build("back_gradient", est, x, y, xv, yv, box=(np.full(64, -1.0), np.full(64, 2.0)))


def test_art_conventions_for_arguments():
    """numpy scalars are numbers; set_params takes effect and refuses what the constructor refuses;
    the estimator is kept; labels outside n_classes are an error; verbose is accepted."""
    est, x, y, xv, yv = _estimator("art_mlp")
    flip = ATTACKS["label_flip"](est, budget=np.float32(0.1), n_classes=y.max() + 1, variant="random", verbose=True)
    assert flip.estimator is est and flip.budget == pytest.approx(0.1)
    flip.set_params(variant="adversarial", budget=0.2)
    assert flip.params.variant == "adversarial" and flip.budget == 0.2
    x_p, _ = flip.poison(x, y)
    assert len(x_p) == round(0.2 * len(x)) and flip.diagnostics["variant"] == "adversarial"
    with pytest.raises(AuditError, match=r"LabelFlip parameter 'variant'"):
        flip.set_params(variant="sideways")
    with pytest.raises(AuditError, match=r"LabelFlip.set_params: 'no_such' cannot be set; valid: budget, seed, box, verbose, variant"):
        flip.set_params(no_such=1)
    five = ATTACKS["label_flip"](budget=0.1, n_classes=5, variant="random")
    with pytest.raises(AuditError, match=r"labels must be class indices 0..4 \(n_classes=5\); got values in \[0, 9\]"):
        five.poison(x, y)


def test_tgda_is_an_art_transformer_attack():
    from art.attacks.attack import PoisoningAttackTransformer

    est, x, y, xv, yv = _estimator("art_mlp")
    attack = _build("tgda", est, x, y, xv, yv)
    assert isinstance(attack, PoisoningAttackTransformer)
    before = _state(est)
    poisoned = attack.poison_estimator(x, y, nb_epochs=2, batch_size=60)
    assert poisoned is not est and poisoned.predict(xv).shape == (len(xv), 10)
    assert all(torch.equal(v, _state(est)[0][k]) for k, v in before[0].items())  # the user's estimator is untouched


def test_a_raw_scikit_learn_model_is_wrapped_and_its_task_read():
    from sklearn.linear_model import LogisticRegression

    d = _data("classification")
    x, y = d.x_train[:N_TRAIN], d.y_train[:N_TRAIN]
    model = LogisticRegression(max_iter=300).fit(x, y)
    flip = ATTACKS["label_flip"](model, budget=0.1, n_classes=10, variant="adversarial")
    x_p, y_p = flip.poison(x, y)  # was: AxisError, axis 1 is out of bounds
    assert len(y_p) == 12 and np.all(y_p != y[[np.flatnonzero((x == row).all(1))[0] for row in x_p]])
    statp = ATTACKS["statp"](model, budget=0.1, box=(d.lo, d.hi))  # task and classes read from the classifier
    assert statp.task == "classification" and statp.n_classes == 10
    assert statp.poison(x, y)[1].max() < 10
