import numpy as np
import pytest
import torch
from torch import nn

from audit.config import DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_victim
from audit.models.victim import SklearnVictim

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cancer():
    return load_dataset(DatasetSpec(name="breast_cancer"))


def test_every_torch_victim_exports_an_art_classifier(cancer):
    from art.estimators.classification import PyTorchClassifier

    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=50), cancer, CPU)
    fitted = victim.fit(cancer.x_train, cancer.y_train, {"l2": 0.01}, 0)
    art = fitted.to_art(clip_values=(0.0, 1.0))
    assert isinstance(art, PyTorchClassifier)
    np.testing.assert_allclose(art.predict(cancer.x_test), fitted.scores(cancer.x_test), atol=1e-5)


def test_sklearn_logreg_maps_rho_to_c(cancer):
    from sklearn.linear_model import LogisticRegression

    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), cancer, CPU, model_obj=LogisticRegression(max_iter=500))
    assert isinstance(victim, SklearnVictim)
    n = len(cancer.y_train)
    fitted = victim.fit(cancer.x_train, cancer.y_train, {"l2": 0.01}, 0)
    assert fitted.estimator.C == pytest.approx(2 / (0.01 * n))  # two classes: binary logistic regression at ρ/2
    assert victim.fit(cancer.x_train, cancer.y_train, {"l2": 0.0}, 0).estimator.C == np.inf
    assert fitted.metric(cancer.x_test, cancer.y_test) > 90
    art = fitted.to_art()
    np.testing.assert_allclose(art.predict(cancer.x_test), fitted.scores(cancer.x_test))


@pytest.mark.parametrize("dataset", ["breast_cancer", "wine"])
@pytest.mark.parametrize("rho", [1e-3, 1e-2, 1e-1])
def test_sklearn_and_torch_victims_reach_the_same_decision_function(dataset, rho):
    """The same ρ is the same objective for both victim kinds, binary and multiclass: their
    class probabilities on the test split agree (both solved to high precision)."""
    from sklearn.linear_model import LogisticRegression

    d = load_dataset(DatasetSpec(name=dataset))
    torch_victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=500), d, CPU)
    sk_victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), d, CPU, model_obj=LogisticRegression(max_iter=5000, tol=1e-10))
    p_torch = torch.softmax(torch.as_tensor(torch_victim.fit(d.x_train, d.y_train, {"l2": rho}, 0).scores(d.x_test)), 1).numpy()
    p_sk = sk_victim.fit(d.x_train, d.y_train, {"l2": rho}, 0).estimator.predict_proba(d.x_test)
    assert np.abs(p_torch - p_sk).max() < 2e-3


def test_sklearn_ridge_maps_rho_to_alpha():
    from sklearn.linear_model import Ridge

    d = load_dataset(DatasetSpec(name="diabetes"))
    victim = build_victim(ModelSpec(name="ridge"), TrainingSpec(), d, CPU, model_obj=Ridge())
    fitted = victim.fit(d.x_train, d.y_train, {"l2": 0.05}, 0)
    assert fitted.estimator.alpha == pytest.approx(0.05 * len(d.y_train))


def test_art_pytorch_classifier_is_reinitialised_and_retrained(cancer):
    from art.estimators.classification import PyTorchClassifier

    module = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()  # an untrainable starting point unless the audit re-initialises it
    art = PyTorchClassifier(module, nn.CrossEntropyLoss(), input_shape=(30,), nb_classes=2)
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=30, batch_size=64, lr=0.1), cancer, CPU, model_obj=art)
    fitted = victim.fit(cancer.x_train, cancer.y_train, {}, 0)
    assert fitted.metric(cancer.x_test, cancer.y_test) > 85
    assert all(float(p.detach().abs().sum()) == 0 for p in module.parameters()), "the user's module must not be modified"


def test_user_factory_gets_the_width_axis(tmp_path, monkeypatch, cancer):
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n"
        "def make(n_features, n_classes, width=4):\n"
        "    return nn.Sequential(nn.Linear(n_features, width), nn.Tanh(), nn.Linear(width, n_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    victim = build_victim(ModelSpec(name="user", factory="mymodels:make"), TrainingSpec(epochs=1), cancer, CPU)
    fitted = victim.fit(cancer.x_train, cancer.y_train, {"width": 9}, 0)
    assert fitted.module[0].out_features == 9


def test_bad_user_models(cancer, tmp_path, monkeypatch):
    from sklearn.svm import SVC

    (tmp_path / "broken.py").write_text("def make(n_classes):\n    raise RuntimeError('no weights file')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AuditError, match=r"model.factory: make\(n_classes\) raised RuntimeError: no weights file"):
        build_victim(ModelSpec(name="user", factory="broken:make"), TrainingSpec(), cancer, CPU)

    with pytest.raises(AuditError, match="cannot import module 'no_such_module'"):
        build_victim(ModelSpec(name="user", factory="no_such_module:f"), TrainingSpec(), cancer, CPU)
    with pytest.raises(AuditError, match="scikit-learn SVC is not supported for classification; use LogisticRegression"):
        build_victim(ModelSpec(name="logreg"), TrainingSpec(), cancer, CPU, model_obj=SVC(probability=False))
    with pytest.raises(AuditError, match="expected an nn.Module, an ART estimator or a scikit-learn estimator"):
        build_victim(ModelSpec(name="logreg"), TrainingSpec(), cancer, CPU, model_obj="a string")
