import numpy as np
import pytest
import torch
from art.attacks.attack import PoisoningAttackBlackBox

from audit.attacks import AttackContext, StatP
from audit.attacks.statp import round_to_corners
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_victim

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def diabetes():
    d = load_dataset(DatasetSpec(name="diabetes"))
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU)
    return d, victim, victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)


def test_points_on_box_corners_with_boundary_responses(diabetes):
    d, victim, fitted = diabetes
    attack = StatP.for_cell({}, AttackContext.of(d, victim, fitted, {"l2": 1e-3}, 0.2, seed=1))
    assert isinstance(attack, PoisoningAttackBlackBox)
    x_p, y_p = attack.poison(d.x_train, d.y_train)
    assert x_p.shape == (round(0.2 * len(d.y_train)), d.n_features)
    assert np.all((x_p == d.lo) | (x_p == d.hi))  # every feature at a corner of the box
    y_lo, y_hi = d.y_train.min(), d.y_train.max()
    assert np.all((y_p == y_lo) | (y_p == y_hi))
    pred = fitted.predict(x_p)
    farther = np.where(np.abs(pred - y_lo) >= np.abs(pred - y_hi), y_lo, y_hi)
    np.testing.assert_array_equal(y_p, farther)  # the boundary that maximises the squared loss


def test_corners_follow_the_gaussian_draw():
    z = np.array([[0.2, 0.7, 0.5], [0.9, 0.1, 0.49]])
    np.testing.assert_array_equal(round_to_corners(z, np.zeros(3), np.ones(3)), [[0, 1, 1], [1, 0, 0]])


def test_classification_variant_labels_maximise_the_loss():
    d = load_dataset(DatasetSpec(name="wine"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU)
    fitted = victim.fit(d.x_train, d.y_train, {}, 0)
    x_p, y_p = StatP.for_cell({}, AttackContext.of(d, victim, fitted, {}, 0.3, seed=0)).poison(d.x_train, d.y_train)
    assert np.all((x_p == 0) | (x_p == 1))
    np.testing.assert_array_equal(y_p, fitted.class_losses(x_p).argmax(1))


def test_statp_raises_test_mse_on_diabetes():
    # measured (ρ = 1e-3, ε = 0.2, seeds 0–2): clean 0.0299, poisoned 0.0642 on average
    d = load_dataset(DatasetSpec(name="diabetes"))
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU)
    ratios = []
    for seed in (0, 1, 2):
        clean = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, seed)
        x_p, y_p = StatP.for_cell({}, AttackContext.of(d, victim, clean, {"l2": 1e-3}, 0.2, seed)).poison(d.x_train, d.y_train)
        poisoned = victim.fit(np.concatenate([d.x_train, x_p]), np.concatenate([d.y_train, y_p]), {"l2": 1e-3}, seed)
        ratios.append(poisoned.metric(d.x_test, d.y_test) / clean.metric(d.x_test, d.y_test))
    assert np.mean(ratios) >= 1.5, ratios


def test_needs_a_queryable_estimator():
    with pytest.raises(AuditError, match="needs an estimator with predict"):
        StatP(None, budget=0.1, box=(np.zeros(2), np.ones(2)))
