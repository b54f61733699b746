"""SHA-256 of a model's definition and weights, for the compliance record.

What "the model" is depends on how the audit got it: a zoo model is defined by its
architecture (the module's ``repr``); a user factory by its source file too; an object handed to
the library API (nn.Module, ART estimator, fitted scikit-learn estimator) also by its weights as
handed over. The audit retrains from scratch, so the weights are identification, not input.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.data import array_digest
from audit.seeding import seeded_init


def tensors_digest(named: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over named arrays in the given order (:func:`audit.data.array_digest` with names)."""
    return array_digest(*(v for _, v in named), names=[k for k, _ in named])


def module_weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (parameters and buffers, sorted by name), on the host in its own dtype."""
    state = module.state_dict()
    return tensors_digest([(k, v.detach().to("cpu").contiguous().numpy()) for k, v in sorted(state.items()) if torch.is_tensor(v)])


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_digests(victim: Any, hparams: dict[str, Any], model_spec: Any = None, model_obj: Any = None) -> dict[str, str]:
    """``definition`` (architecture or estimator parameters), ``factory_source`` (a user factory's file),
    ``initial_weights`` (a torch victim's seeded initialisation at seed 0 for the first candidate) and
    ``handed_over_weights`` (the object given to the API, when it carries weights)."""
    out: dict[str, str] = {}
    if victim.builds_modules:
        with seeded_init(0):
            module = victim.build(hparams)
        out["definition"] = text_digest(repr(module))
        out["initial_weights"] = module_weights_digest(module)
    else:
        estimator = getattr(victim, "estimator", None)
        params = estimator.get_params(deep=False) if estimator is not None and hasattr(estimator, "get_params") else {}
        kind = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
        out["definition"] = text_digest(json.dumps([kind, params], sort_keys=True, default=str))
    factory = getattr(model_spec, "factory", None) if model_spec is not None and getattr(model_spec, "name", "") == "user" else None
    if factory:
        source = _factory_file(factory)
        if source is not None:
            out["factory_source"] = hashlib.sha256(source.read_bytes()).hexdigest()
    if model_obj is not None:
        weights = handed_over_weights(model_obj)
        if weights is not None:
            out["handed_over_weights"] = weights
    return out


def handed_over_weights(model_obj: Any) -> str | None:
    """The weights of an object given to the library API: an nn.Module, an ART estimator's ``model``,
    or a fitted scikit-learn estimator's ``coef_``/``intercept_``; None when it carries none."""
    module = model_obj if isinstance(model_obj, nn.Module) else getattr(model_obj, "model", None)
    if isinstance(module, nn.Module):
        return module_weights_digest(module)
    from sklearn.pipeline import Pipeline

    if isinstance(model_obj, Pipeline):  # every fitted step's statistics, named by step (a ColumnTransformer's by branch)
        steps: list[tuple[str, Any]] = []
        for name, step in model_obj.steps:
            steps.append((name, step))
            for branch, inner in getattr(step, "named_transformers_", {}).items():
                chain = inner.steps if isinstance(inner, Pipeline) else [("", inner)]
                steps += [(f"{name}.{branch}.{sub}".rstrip("."), t) for sub, t in chain]
        fitted = [
            (f"{name}.{k}", _statistic(getattr(step, k)) if k == "categories_" else np.asarray(getattr(step, k)))
            for name, step in steps
            for k in ("coef_", "intercept_", "mean_", "scale_", "min_", "categories_")
            if getattr(step, k, None) is not None
        ]
    else:
        fitted = [(k, np.asarray(getattr(model_obj, k))) for k in ("coef_", "intercept_") if hasattr(model_obj, k)]
    return tensors_digest(fitted) if fitted else None


def _statistic(categories: Any) -> np.ndarray:
    """A one-hot encoder's categories (a list of object arrays) as one text array: its bytes, not pointers, are hashed."""
    return np.array(["\x1f".join(map(str, column)) for column in categories], dtype=str)


def _factory_file(factory: str) -> Path | None:
    """The source file of a ``module:function`` or ``path.py:function`` factory (None when not found)."""
    where = factory.rsplit(":", 1)[0]
    path = Path(where)
    if path.suffix == ".py" and path.is_file():
        return path
    try:
        import importlib

        found = inspect.getsourcefile(importlib.import_module(where))
    except (ImportError, TypeError, ValueError):
        return None
    return Path(found) if found else None
