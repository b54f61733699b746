import numpy as np
import pytest
import torch
from art.attacks.attack import PoisoningAttackBlackBox

from audit.attacks import LabelFlip
from audit.attacks.label_flip import losses_from_predictions
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_victim

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    d = load_dataset(DatasetSpec(name="digits"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=150), d, CPU)
    return d, victim, victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)


def _rows_of(x_p, x):
    lookup = {row.tobytes(): i for i, row in enumerate(x)}
    return np.array([lookup[row.tobytes()] for row in x_p])


def test_is_an_art_black_box_attack():
    assert isinstance(LabelFlip(budget=0.1, n_classes=3), PoisoningAttackBlackBox)


def test_random_flip_copies_points_and_changes_every_label(digits):
    d, _, _ = digits
    x_p, y_p = LabelFlip(budget=0.2, n_classes=10, seed=1).poison(d.x_train, d.y_train)
    src = _rows_of(x_p, d.x_train)
    assert np.all(y_p != d.y_train[src])
    assert len(np.unique(src)) == len(src)  # distinct points when ε·n ≤ n
    # uniform over the other classes: every class appears among the new labels
    assert set(np.unique(y_p)) == set(range(10))


def test_reverse_mapping_is_c_minus_one_minus_y(digits):
    d, _, _ = digits
    x_p, y_p = LabelFlip(budget=0.1, n_classes=10, seed=1, mapping="reverse").poison(d.x_train, d.y_train)
    np.testing.assert_array_equal(y_p, 9 - d.y_train[_rows_of(x_p, d.x_train)])


def test_adversarial_flip_takes_the_max_loss_class_of_the_max_loss_points(digits):
    d, _, fitted = digits
    attack = LabelFlip(fitted.to_art(), budget=0.1, n_classes=10, seed=0, variant="adversarial")
    x_p, y_p = attack.poison(d.x_train, d.y_train)
    src = _rows_of(x_p, d.x_train)
    losses = fitted.class_losses(d.x_train)
    losses[np.arange(len(losses)), d.y_train] = -np.inf
    np.testing.assert_array_equal(y_p, losses.argmax(1)[src])
    flipped = losses.max(1)
    assert flipped[src].min() >= np.sort(flipped)[-len(src)] - 1e-6  # the top-ε·n points
    assert attack.diagnostics["mean_flipped_loss"] > attack.diagnostics["mean_flipped_loss_all"]


def test_adversarial_flip_scores_large_sets_in_chunks_with_the_same_result(digits):
    """More points than one prediction chunk (4096): the same flips as the one-shot scores."""
    d, _, fitted = digits
    x = np.tile(d.x_train, (5, 1))[:5000]
    y = np.tile(d.y_train, 5)[:5000]
    attack = LabelFlip(fitted.to_art(), budget=0.05, n_classes=10, seed=0, variant="adversarial")
    x_p, y_p = attack.poison(x, y)
    losses = fitted.class_losses(x)
    losses[np.arange(len(losses)), y] = -np.inf
    idx = np.argsort(-losses.max(1), kind="stable")[: len(y_p)]
    np.testing.assert_array_equal(x_p, x[idx])
    np.testing.assert_array_equal(y_p, losses.argmax(1)[idx])


def test_binary_adversarial_flip_is_the_flip():
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU)
    fitted = victim.fit(d.x_train, d.y_train, {}, 0)
    x_p, y_p = LabelFlip(fitted.to_art(), budget=0.3, n_classes=2, variant="adversarial").poison(d.x_train, d.y_train)
    np.testing.assert_array_equal(y_p, 1 - d.y_train[_rows_of(x_p, d.x_train)])


def test_losses_from_probabilities_and_logits_agree():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(losses_from_predictions(logits), losses_from_predictions(proba), atol=1e-9)


def test_parameter_errors():
    with pytest.raises(AuditError, match="needs an estimator"):
        LabelFlip(budget=0.1, n_classes=3, variant="adversarial")
    with pytest.raises(AuditError, match="parameter 'variant'"):
        LabelFlip(budget=0.1, n_classes=3, variant="sideways")
    with pytest.raises(AuditError, match="n_classes' parameter of LabelFlip must be an int ≥ 2"):
        LabelFlip(budget=0.1, n_classes=1)


def _drop(d, victim, rho, params, seed):
    clean = victim.fit(d.x_train, d.y_train, {"l2": rho}, seed)
    attack = LabelFlip(clean.to_art(), budget=0.3, n_classes=d.n_classes, seed=seed, **params)
    x_p, y_p = attack.poison(d.x_train, d.y_train)
    poisoned = victim.fit(np.concatenate([d.x_train, x_p]), np.concatenate([d.y_train, y_p]), {"l2": rho}, seed)
    return clean.metric(d.x_test, d.y_test) - poisoned.metric(d.x_test, d.y_test)


def test_adversarial_flip_lowers_accuracy_on_breast_cancer():
    # measured over seeds 0–3 (L-BFGS training): 21.9 points at ε = 0.3, ρ = 0
    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU)
    drops = [_drop(d, victim, 0.0, {"variant": "adversarial"}, s) for s in (0, 1)]
    assert np.mean(drops) >= 10.0, drops


def test_random_flip_lowers_mnist5k_accuracy():
    # measured over seeds 0–3 (L-BFGS training): 27.3–34.7 points at ε = 0.3, ρ = 0
    d = load_dataset(DatasetSpec(name="mnist5k"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU)
    drop = _drop(d, victim, 0.0, {"variant": "random"}, 0)
    assert drop >= 10.0, drop
