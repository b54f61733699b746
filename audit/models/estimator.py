"""What an attack or a victim takes from the estimator a user hands over (ART, PyTorch, scikit-learn).

ART estimators carry facts the raw model does not: the preprocessing applied before the
model (``preprocessing=(mean, std)`` or preprocessing defences), the input shape (images
``(C, H, W)``), ``clip_values`` and the optimizer the user trained with. The audit attacks
the *deployed* model, so it differentiates through the preprocessing as ART's own white-box
attacks do (:class:`InputSpace`), takes the feature box from ``clip_values`` and retrains
with the user's optimizer class (:func:`user_optimizer`).

Attacks work on flat features ``(n, d)`` with ``d = prod(input_shape)``; :class:`InputSpace`
reshapes them back before the preprocessing and the model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.errors import AuditError


def is_art_estimator(obj: Any) -> bool:
    try:
        from art.estimators.estimator import BaseEstimator as ArtEstimator
    except ImportError:  # pragma: no cover - ART is a dependency
        return False
    return isinstance(obj, ArtEstimator)


def is_sklearn_estimator(obj: Any) -> bool:
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


class InputSpace(nn.Module):
    """The model as the estimator applies it, from flat inputs: reshape → preprocessing → model.

    ``forward(x)`` takes ``x`` of shape ``(n, d)`` (or already ``(n, *input_shape)``), views
    it as ``(n, *input_shape)``, applies the standardisation ``(x − mean) / std`` and then any
    other PyTorch preprocessing step of the ART estimator (each differentiable, as ART's
    ``PreprocessorPyTorch.forward``), and returns the model's output. The model is held as
    ``self.model``, so its parameters (and their names, prefixed ``model.``) are those of the
    user's module; the standardisation is a pair of buffers.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...] | None = None, mean: Any = None, std: Any = None, steps: tuple[Any, ...] = ()
    ) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(input_shape) if input_shape else None
        self.register_buffer("mean", None if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("std", None if std is None else torch.as_tensor(np.asarray(std), dtype=torch.float32))
        self.steps = steps

    def around(self, model: nn.Module) -> InputSpace:
        """Another model (e.g. a target with other weights) behind this same reshape and preprocessing."""
        return InputSpace(model, self.input_shape, self.mean, self.std, self.steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            x = x.reshape(len(x), *self.input_shape)
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # type: ignore[operator]  # buffers set in __init__
        for step in self.steps:
            x, _ = step.forward(x, None)
        return self.model(x)


def differentiable_model(estimator: Any, who: str) -> nn.Module:
    """The ``nn.Module`` to differentiate for ``estimator``, in the estimator's input space.

    An ``nn.Module`` is used as it is; an ART PyTorch estimator gives its model wrapped with
    its input shape and preprocessing (:class:`InputSpace`), or the bare model when it has
    neither. Anything else (a scikit-learn model, a TensorFlow estimator, a preprocessing
    step without a PyTorch implementation) is a one-line error naming what ``who`` needs.
    """
    if isinstance(estimator, nn.Module):
        return estimator
    module = getattr(estimator, "model", None)
    if not is_art_estimator(estimator) or not isinstance(module, nn.Module):
        kind = "a scikit-learn model" if is_sklearn_estimator(estimator) or is_sklearn_estimator(module) else f"a {type(estimator).__name__}"
        raise AuditError(f"{who} needs a PyTorch model (an ART PyTorch estimator or an nn.Module), not {kind}")
    mean, std, steps = _preprocessing(estimator, who)
    shape = tuple(getattr(estimator, "input_shape", ()) or ())
    reshape = shape if len(shape) > 1 else None
    if mean is None and not steps and reshape is None:
        return module
    return InputSpace(module, reshape, mean, std, tuple(steps))


def _preprocessing(estimator: Any, who: str) -> tuple[Any, Any, list[Any]]:
    """``(mean, std, other PyTorch steps)`` of an ART estimator's preprocessing; an identity standardisation is dropped."""
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch

    mean = std = None
    steps: list[Any] = []
    for op in getattr(estimator, "preprocessing_operations", None) or []:
        if isinstance(op, StandardisationMeanStdPyTorch) and not steps and mean is None:
            m, s = np.asarray(op.mean, dtype=np.float32), np.asarray(op.std, dtype=np.float32)
            if not (np.all(m == 0) and np.all(s == 1)):
                mean, std = m, s
        elif isinstance(op, PreprocessorPyTorch):
            if getattr(op, "apply_predict", True):
                steps.append(op)
        else:
            raise AuditError(
                f"{who}: the estimator's preprocessing {type(op).__name__} has no PyTorch implementation, "
                "so gradients cannot flow through it; use a PyTorch preprocessor or apply it to the data first"
            )
    return mean, std, steps


def clip_values(estimator: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The estimator's ``clip_values`` as a ``(lo, hi)`` pair of float32 arrays, or None."""
    clip = getattr(estimator, "clip_values", None)
    if clip is None:
        return None
    lo, hi = (np.asarray(v, dtype=np.float32) for v in clip)
    return lo, hi


def infer_task(estimator: Any) -> str | None:
    """``classification`` or ``regression`` from the estimator's type (None when it does not say)."""
    if estimator is None or isinstance(estimator, nn.Module):
        return None
    from sklearn.base import is_classifier, is_regressor

    if is_sklearn_estimator(estimator):
        return "classification" if is_classifier(estimator) else ("regression" if is_regressor(estimator) else None)
    try:
        from art.estimators.classification.classifier import ClassifierMixin
        from art.estimators.regression.regressor import RegressorMixin
    except ImportError:  # pragma: no cover
        return None
    if isinstance(estimator, ClassifierMixin):
        return "classification"
    if isinstance(estimator, RegressorMixin):
        return "regression"
    return None


def n_features(estimator: Any) -> int | None:
    """``prod(input_shape)`` of an ART estimator (None when it has none)."""
    shape = getattr(estimator, "input_shape", None)
    return int(math.prod(shape)) if shape else None


def user_optimizer(estimator: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]] | None:
    """The class and hyperparameters of the optimizer an ART PyTorch estimator was given (None without one).

    The audit retrains the victim many times; each retraining builds a fresh instance of this
    class with these hyperparameters on the new module's parameters.
    """
    opt = getattr(estimator, "optimizer", None) if is_art_estimator(estimator) else None
    if not isinstance(opt, torch.optim.Optimizer):
        return None
    group = opt.param_groups[0]
    hyper = {k: v for k, v in group.items() if k != "params" and k in opt.defaults}
    return type(opt), hyper


def deployed_metric(estimator: Any, x: np.ndarray, y: np.ndarray, task: str, class_names: tuple[str, ...] | None = None) -> float | None:
    """The test metric of the estimator exactly as the user handed it over (accuracy % or MSE).

    ART estimators are asked through ``predict`` (their preprocessing and input shape apply),
    scikit-learn estimators only when fitted, modules through ``forward``. None when it cannot
    predict yet (an unfitted scikit-learn model) or predicts something of the wrong shape. A model fitted on a
    table's text labels predicts names: ``class_names`` (the dataset's, index = class) maps them to classes.
    """
    try:
        if is_art_estimator(estimator):
            shape = tuple(getattr(estimator, "input_shape", ()) or ())
            pred = np.asarray(estimator.predict(x.reshape(len(x), *shape) if len(shape) > 1 else x))
        elif is_sklearn_estimator(estimator):
            from sklearn.exceptions import NotFittedError

            try:
                pred = np.asarray(estimator.predict(x))
            except NotFittedError:
                return None
        elif isinstance(estimator, nn.Module):
            ref = next(estimator.parameters(), None)
            was_training = estimator.training
            estimator.eval()
            try:
                with torch.no_grad():
                    xt = torch.as_tensor(x, dtype=torch.float32, device=ref.device if ref is not None else "cpu")
                    pred = estimator(xt).cpu().numpy()
            finally:
                estimator.train(was_training)
        else:
            return None
    except (RuntimeError, ValueError):
        return None
    if task == "classification":
        labels = pred.argmax(axis=1) if pred.ndim == 2 and pred.shape[1] > 1 else pred.reshape(-1)
        if class_names and not np.issubdtype(labels.dtype, np.number):
            index = {name: k for k, name in enumerate(class_names)}
            labels = np.array([index.get(str(v), -1) for v in labels])
        return float(100.0 * np.mean(labels == y)) if labels.shape == y.shape else None
    pred = pred.reshape(-1)
    return float(np.mean((pred - y) ** 2)) if pred.shape == y.shape else None


def trivial_metric(y_train: np.ndarray, y_test: np.ndarray, task: str) -> float:
    """The test metric of the trivial predictor: the majority class of the training labels
    (accuracy %), or their mean response (MSE). A model handed over that does no better than
    this is an untrained architecture, not a deployed model to compare the audit with."""
    if task == "classification":
        values, counts = np.unique(y_train, return_counts=True)
        return float(100.0 * np.mean(y_test == values[counts.argmax()]))
    return float(np.mean((y_test - float(np.mean(y_train))) ** 2))


def as_art_estimator(estimator: Any) -> Any:
    """A raw scikit-learn model wrapped as ART would (``SklearnClassifier`` / ``ScikitlearnRegressor``); anything else as it is."""
    if not is_sklearn_estimator(estimator):
        return estimator
    task = infer_task(estimator)
    if task == "classification":
        from art.estimators.classification.scikitlearn import SklearnClassifier

        return SklearnClassifier(model=estimator)
    if task == "regression":
        from art.estimators.regression.scikitlearn import ScikitlearnRegressor

        return ScikitlearnRegressor(model=estimator)
    raise AuditError(f"a scikit-learn {type(estimator).__name__} is neither a classifier nor a regressor; wrap it in an ART estimator")
