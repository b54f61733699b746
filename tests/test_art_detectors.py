"""ART's detectors behind the defense contract: they run with the estimators they need and refuse the others."""

import numpy as np
import pytest
import torch

from audit.attacks import LabelFlip
from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.defenses import ActivationClustering, Roni, SpectralSignature
from audit.errors import AuditError
from audit.models import Candidate, build_victim

CPU = torch.device("cpu")


def _mixed(n_samples=None):
    d = load_dataset(DatasetSpec(name="breast_cancer", n_samples=n_samples))
    x_p, y_p = LabelFlip(budget=0.1, n_classes=2, seed=0).poison(d.x_train, d.y_train)
    return d, np.concatenate([d.x_train, x_p]), np.concatenate([d.y_train, y_p]), len(d.y_train)


def test_activation_clustering_on_the_mlp_penultimate_layer_finds_flipped_copies():
    d, x, y, n = _mixed()
    victim = build_victim(ModelSpec(name="mlp", width=16), TrainingSpec(epochs=20, batch_size=64), d, CPU)
    result = ActivationClustering(0.1, 0).apply(x, y, victim, Candidate.of(victim, {"l2": 1e-3}))
    assert result.keep.shape == (len(y),)
    assert (~result.keep[n:]).mean() >= 0.7  # measured 0.91 (24 clean points flagged)
    again = ActivationClustering(0.1, 0).apply(x, y, victim, Candidate.of(victim, {"l2": 1e-3}))
    np.testing.assert_array_equal(result.keep, again.keep)  # seeded


def test_spectral_signature_flags_the_expected_share():
    d, x, y, n = _mixed()
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, CPU)
    result = SpectralSignature(0.1, 0).apply(x, y, victim, Candidate.of(victim, {"l2": 1e-3}))
    flagged = int((~result.keep).sum())
    # per class ⌊1.5 · share · n_class⌋ points: about 1.5 × the expected poison count in all
    assert 0.8 * 1.5 * (len(y) - n) <= flagged <= 1.5 * (len(y) - n) + 2


def test_neural_detectors_refuse_scikit_learn_victims():
    from sklearn.linear_model import LogisticRegression

    d, x, y, _ = _mixed()
    sk = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU, model_obj=LogisticRegression(max_iter=500))
    for cls in (ActivationClustering, SpectralSignature):
        with pytest.raises(AuditError, match="need a torch victim .* use 'roni' for scikit-learn models"):
            cls(0.1, 0).apply(x, y, sk, Candidate.of(sk, {"l2": 1e-3}))


def test_roni_runs_for_scikit_learn_and_refuses_torch():
    from sklearn.linear_model import LogisticRegression

    d, x, y, _ = _mixed(n_samples=120)
    sk = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU, model_obj=LogisticRegression(max_iter=500))
    result = Roni.for_cell(0.1, 0, d).apply(x, y, sk, Candidate.of(sk, {"l2": 1e-3}))
    assert result.keep.shape == (len(y),) and result.keep.dtype == bool
    torch_victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=50), d, CPU)
    with pytest.raises(AuditError, match="roni needs a scikit-learn victim"):
        Roni.for_cell(0.1, 0, d).apply(x, y, torch_victim, Candidate.of(torch_victim, {}))
