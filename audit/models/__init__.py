"""Model specs → victims. See :mod:`audit.models.victim` for the interface."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.catalog import MODELS
from audit.data import TableColumns
from audit.errors import AuditError
from audit.models.candidate import Candidate, candidate_key
from audit.models.estimator import InputSpace, differentiable_model, is_art_estimator, user_optimizer
from audit.models.surrogate import check_sklearn_model, check_table_pipeline, check_unseen_categories, with_table
from audit.models.victim import (
    Fitted,
    SklearnVictim,
    TorchVictim,
    UserTraining,
    Victim,
    reinitialise,
)
from audit.models.zoo import CNN, DEFAULT_WIDTH, MLP, TRAINING_DEFAULTS, LogReg, ReLU2, Ridge

__all__ = ["MODELS", "Candidate", "Fitted", "Victim", "build_victim", "candidate_key", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise AuditError("device: 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        # the same config gives the same numbers on the same device: deterministic cuBLAS/cuDNN kernels
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def import_factory(spec: str, field: str = "model.factory") -> Callable[..., Any]:
    """Import ``package.module:function``; the working directory is importable. Errors name ``field``."""
    module_name, _, attr = spec.partition(":")
    dotted = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
    if not re.fullmatch(dotted, module_name) or not re.fullmatch(r"[A-Za-z_]\w*", attr):
        raise AuditError(f"{field}: expected package.module:function with Python names (got {spec[:80]!r})")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise AuditError(f"{field}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AuditError(f"{field}: {module_name!r} has no callable {attr!r}")
    return fn


#: ``fit_kwargs`` (as a user passes them to ART's ``fit``) → the audit's training settings
FIT_KWARGS = {"nb_epochs": "epochs", "epochs": "epochs", "batch_size": "batch_size"}


def training_from_fit_kwargs(fit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The training settings of ``fit_kwargs`` (``nb_epochs``, ``batch_size``: what the user passed
    to ``estimator.fit``), checked: the audit retrains with them, so an unknown one is an error."""
    out: dict[str, Any] = {}
    for key, value in fit_kwargs.items():
        if key not in FIT_KWARGS:
            raise AuditError(
                f"fit_kwargs: {key!r} is not a setting the audit can retrain with; it takes "
                f"{', '.join(sorted(FIT_KWARGS))} (for anything else pass train_fn)"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AuditError(f"fit_kwargs: {key} must be a positive integer (got {value!r})")
        out[FIT_KWARGS[key]] = int(value)
    return out


def user_training(spec: str | None, train_fn: Callable[..., Any] | None) -> UserTraining | None:
    """The user's training function: ``train_fn`` (API) or ``training.factory`` (config); not both."""
    if spec is not None and train_fn is not None:
        raise AuditError("train_fn and training.factory both name a training function; give one")
    if train_fn is not None:
        if not callable(train_fn):
            raise AuditError(f"train_fn: expected a callable fn(model, x, y, *, seed) (got {type(train_fn).__name__})")
        name = f"{getattr(train_fn, '__module__', '?')}:{getattr(train_fn, '__qualname__', type(train_fn).__name__)}"
        return UserTraining(train_fn, name)
    if spec is not None:
        return UserTraining(import_factory(spec, "training.factory"), spec)
    return None


def _call_factory(fn: Callable[..., Any], context: dict[str, Any]) -> Any:
    """Call a user factory with the keyword arguments its signature names (input_shape, n_classes, width, ...)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn()
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in context.items() if takes_all or k in sig.parameters}
    try:
        return fn(**kwargs)
    except Exception as err:  # the user's code: one line, not a traceback
        raise AuditError(f"model.factory: {fn.__name__}({', '.join(kwargs)}) raised {type(err).__name__}: {err}") from None


def victim_from_object(
    obj: Any,
    task: str,
    n_classes: int | None,
    input_shape: tuple[int, ...],
    training: dict[str, Any],
    device: torch.device,
    rebuild: Callable[[dict[str, Any]], Any] | None = None,
    table: TableColumns | None = None,
) -> Victim:
    """Wrap what a user handed over — nn.Module, ART estimator or scikit-learn estimator — as a victim.

    ``rebuild(hparams)`` re-creates the object for a candidate (user factories with a width
    axis); without it, modules are re-initialised copies of ``obj``. ``table``: the columns of the table the data
    came from, for a scikit-learn pipeline that selects columns by name (:func:`audit.models.surrogate.with_table`).
    """
    from sklearn.base import BaseEstimator

    art_model = getattr(obj, "model", None)
    if is_art_estimator(obj) and isinstance(art_model, nn.Module):
        # an ART PyTorch estimator: audit its model as the estimator applies it (input shape and
        # preprocessing, audit.models.estimator.InputSpace), retrained from a fresh initialisation
        return TorchVictim(
            _InSpace(rebuild, art_model, differentiable_model(obj, "model")),
            task,
            n_classes,
            input_shape,
            training,
            device,
            f"ART {type(obj).__name__} around {type(art_model).__name__}",
        )
    if not isinstance(obj, (nn.Module, BaseEstimator)) and art_model is not None:
        obj = art_model  # an ART scikit-learn estimator: audit the estimator it wraps
        if rebuild is not None:
            rebuild = _Unwrapped(rebuild)
    if isinstance(obj, nn.Module):
        return TorchVictim(rebuild or _Reinitialised(obj), task, n_classes, input_shape, training, device, f"torch module {type(obj).__name__}")
    if isinstance(obj, BaseEstimator):
        obj = with_table(obj, table)
        description, surrogate = check_sklearn_model(obj, task, n_classes)
        return SklearnVictim(obj, task, n_classes, description, surrogate=surrogate)
    raise AuditError(f"model: expected an nn.Module, an ART estimator or a scikit-learn estimator (got {type(obj).__name__})")


# How a victim builds its model for a candidate's hyperparameters ``hp``: module-level classes, not closures, so a
# victim can be sent to a worker process (audit.grid.pool).
@dataclass(frozen=True)
class _Reinitialised:
    """A re-initialised copy of the user's module ``template`` (the same for every candidate)."""

    template: nn.Module

    def __call__(self, hp: dict[str, Any]) -> nn.Module:
        return reinitialise(self.template)


@dataclass(frozen=True)
class _Unwrapped:
    """The model inside what ``factory`` builds (an ART scikit-learn estimator's ``.model``)."""

    factory: Callable[[dict[str, Any]], Any]

    def __call__(self, hp: dict[str, Any]) -> Any:
        return self.factory(hp).model


@dataclass(frozen=True)
class _InSpace:
    """An ART PyTorch estimator's model — rebuilt by ``factory`` or re-initialised from ``template`` — as the
    estimator applies it (``space``: its input shape and preprocessing, :class:`audit.models.estimator.InputSpace`)."""

    factory: Callable[[dict[str, Any]], Any] | None
    template: nn.Module
    space: Any

    def __call__(self, hp: dict[str, Any]) -> nn.Module:
        model: nn.Module = self.factory(hp).model if self.factory is not None else reinitialise(self.template)
        return self.space.around(model) if isinstance(self.space, InputSpace) else model


def _with_user_optimizer(training: dict[str, Any], overrides: dict[str, Any], obj: Any) -> dict[str, Any]:
    """An ART estimator's own optimizer (class and hyperparameters) replaces the default one,
    unless the config names an optimizer itself; epochs, batch size and loss stay the config's."""
    found = user_optimizer(obj)
    if found is None or "optimizer" in overrides:
        return training
    cls, hyper = found
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items() if isinstance(v, (int, float, bool, tuple, str)) or v is None}
    out = {**training, "optimizer": f"torch.optim.{cls.__name__}", "optimizer_params": params}
    lr = params.get("lr")
    if isinstance(lr, (int, float)):
        out["lr"] = float(lr)
    return out


def build_victim(
    model_spec: Any,
    training_spec: Any,
    dataset: Any,
    device: torch.device,
    model_obj: Any = None,
    train_fn: Callable[..., Any] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
) -> Victim:
    """The victim a config describes on ``dataset``; ``model_obj`` overrides it (library API).

    ``fit_kwargs`` (``nb_epochs``, ``batch_size``, as passed to the user's ``estimator.fit``)
    override the config's training; ``train_fn`` or ``training.factory`` replaces the audit's
    training of a torch victim by the user's own (:class:`audit.models.victim.UserTraining`).
    """
    name = model_spec.name
    defaults = dict(TRAINING_DEFAULTS["user" if model_obj is not None else name])
    overrides = {k: v for k, v in training_spec.model_dump().items() if v is not None}
    own = user_training(overrides.pop("factory", None), train_fn)
    overrides.update(training_from_fit_kwargs(fit_kwargs or {}))
    training = {**defaults, **overrides}
    victim = _build_victim(model_spec, dataset, device, model_obj, training, overrides)
    if own is not None:
        if not isinstance(victim, TorchVictim):
            raise AuditError(f"train_fn / training.factory: only for a torch victim ({victim.description} trains with its own solver)")
        victim.user_training = own
    return victim


def _build_victim(model_spec: Any, dataset: Any, device: torch.device, model_obj: Any, training: dict[str, Any], overrides: dict[str, Any]) -> Victim:
    name = model_spec.name
    task, c, d = dataset.task, dataset.n_classes, dataset.n_features
    input_shape = dataset.input_shape
    base = {"width": model_spec.width, "depth": model_spec.depth}
    base = {k: v for k, v in base.items() if v is not None}

    table = TableColumns.of(getattr(dataset, "domain", None))
    if model_obj is not None or name == "user":
        rebuild: Callable[[dict[str, Any]], Any] | None = None
        if model_obj is None:
            rebuild = _FactoryModel(import_factory(model_spec.factory), {"input_shape": input_shape, "n_features": d, "n_classes": c, **base})
            model_obj = rebuild({})
        victim = victim_from_object(model_obj, task, c, input_shape, _with_user_optimizer(training, overrides, model_obj), device, rebuild, table)
        if isinstance(victim, SklearnVictim):
            check_table_pipeline(victim.estimator, table, dataset.x_train)
            check_unseen_categories(victim.estimator, table, np.concatenate([dataset.x_val, dataset.x_test]))
        return victim

    if name == "relu2" and (task != "classification" or c != 2):
        raise AuditError(f"model: 'relu2' is a binary classifier but dataset {dataset.name!r} has {c or 'no'} classes; keep two (dataset.classes)")
    if name in ("logreg", "mlp", "cnn") and task != "classification":
        raise AuditError(f"model: {name!r} is a classifier but dataset {dataset.name!r} is a regression task; use 'ridge'")
    if name in ("ridge", "lasso", "elastic_net") and task != "regression":
        raise AuditError(f"model: {name!r} is a regressor but dataset {dataset.name!r} is a classification task")
    if name == "cnn" and not dataset.image_shape:
        raise AuditError(f"model: 'cnn' needs image data but dataset {dataset.name!r} has flat features")

    build = _Architecture(name, d, int(c or 0), dataset.image_shape, model_spec.width or DEFAULT_WIDTH.get(name, 1), model_spec.depth)
    return TorchVictim(build, task, c, input_shape, training, device, MODELS[name].split(",")[0])


@dataclass(frozen=True)
class _Architecture:
    """A built-in architecture, built for a candidate's hyperparameters ``hp`` (``width``, ``depth``
    override the model spec's). A module-level class, not a closure, so the victim can be sent to a
    worker process (:mod:`audit.grid.pool`)."""

    name: str
    n_features: int
    n_classes: int
    image_shape: tuple[int, ...] | None
    width: int
    depth: Any

    def __call__(self, hp: dict[str, Any]) -> nn.Module:
        width = int(hp.get("width", self.width))
        depth = int(hp.get("depth", self.depth))
        d, c = self.n_features, self.n_classes
        if self.name == "logreg":
            return LogReg(d, c)
        if self.name in ("ridge", "lasso", "elastic_net"):
            return Ridge(d)
        if self.name == "mlp":
            return MLP(d, c, width=width, depth=depth)
        if self.name == "relu2":
            return ReLU2(d, width=width)
        assert self.image_shape is not None
        return CNN(self.image_shape, c, width=width)


@dataclass(frozen=True)
class _FactoryModel:
    """The user's model factory called with the data's shapes, the model spec's ``width``/``depth`` and a
    candidate's hyperparameters ``hp`` (picklable, as :class:`_Architecture`)."""

    factory: Callable[..., Any]
    context: dict[str, Any]

    def __call__(self, hp: dict[str, Any]) -> Any:
        return _call_factory(self.factory, {**self.context, **hp})
