"""Exact torch surrogates of scikit-learn linear models and pipelines (README: "Using it from scikit-learn").

A fitted ``Pipeline`` of fixed feature maps (scalers, polynomial features) ending in a linear
estimator is a function of the raw features that torch can differentiate: each transformer
becomes a parameter-free module holding its fitted statistics as buffers, the estimator one
``nn.Linear`` named ``linear``. The white-box attacks (back-gradient, Gradient Canceling, TGDA)
then work on this module in raw feature space; the audit still retrains the user's whole
pipeline with scikit-learn on the poisoned raw data, so the scaler is refit on poisoned data as
it would be in deployment. The attacker models the learner with the feature maps fixed at their
clean fit (the module handed to it is the surrogate of the clean fit).

The estimator's objective is the audit's (docs: mean loss + (ρ/2)‖W‖², biases free):

* ``LogisticRegression`` (lbfgs, newton-cg, newton-cholesky, sag or saga; no L1 part, no class
  weights). Multinomial: ``coef_`` (c, d′) is the softmax layer. Two classes: scikit-learn's one
  vector ``v`` and intercept ``b`` become the rows ``[−v/2, v/2]``, ``[−b/2, b/2]``, whose
  softmax is ``sigmoid(v·x + b)`` and whose penalty is the binary one at ρ/2 (C = 2/(ρn),
  :func:`audit.models.victim.sklearn_regularization`).
* ``SGDClassifier(loss="log_loss", penalty="l2")``, two classes only (more are fitted one-vs-rest):
  as the binary logistic regression, with ``alpha = ρ/2``.
* ``Ridge``: ``coef_`` (d′,), ``intercept_`` → ``nn.Linear(d′, 1)``, output squeezed to (n,).

Anything else (another transformer, an estimator whose objective is not the audit's) is refused
with the step's name and the supported list: a surrogate that is not exact would attack another
model than the one the user ships.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.errors import AuditError

#: transformers the surrogate differentiates through, and the linear estimators it reproduces exactly
SUPPORTED_STEPS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "PolynomialFeatures")
SURROGATE_ESTIMATORS = {"classification": ("LogisticRegression", "SGDClassifier"), "regression": ("Ridge",)}
#: estimators the audit retrains with their own solver (ρ maps onto them) but attacks only black-box
SOLVER_ONLY = {"classification": (), "regression": ("Lasso", "ElasticNet")}
_LOGREG_SOLVERS = ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga")


class Affine(nn.Module):
    """``x · scale + shift`` per feature (a fitted scaler), optionally clamped to ``clip``; no parameters.

    ``refit`` says how the scaler is fitted, so :meth:`statistics` can fit it again in torch on other data
    (the poisoned training set, differentiably in the poisons: :func:`refitted`): ``{"kind": "standard",
    "with_mean", "with_std"}``, ``{"kind": "minmax", "range": (a, b)}`` or ``{"kind": "maxabs"}``.
    """

    def __init__(self, scale: np.ndarray, shift: np.ndarray, clip: tuple[float, float] | None = None, refit: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float64), dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift, np.float64), dtype=torch.float32))
        self.clip = clip
        self.refit = refit

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` of this scaler fitted on ``x`` (n, d) as scikit-learn fits it (a constant feature's
        scale is 1, as ``sklearn.preprocessing._data._handle_zeros_in_scale`` makes it); differentiable in ``x``."""
        assert self.refit is not None, "a scaler without its fitting rule"
        kind = self.refit["kind"]
        tiny = 10 * torch.finfo(x.dtype).eps

        def nonzero(v: torch.Tensor) -> torch.Tensor:
            return torch.where(v < tiny, torch.ones_like(v), v)

        if kind == "standard":
            mean = x.mean(0) if self.refit["with_mean"] else torch.zeros_like(x[0])
            std = nonzero(x.var(0, unbiased=False).sqrt()) if self.refit["with_std"] else torch.ones_like(x[0])
            return 1.0 / std, -mean / std
        if kind == "minmax":
            a, b = self.refit["range"]
            low = x.amin(0)
            scale = (b - a) / nonzero(x.amax(0) - low)
            return scale, a - low * scale
        if kind == "maxabs":
            return 1.0 / nonzero(x.abs().amax(0)), torch.zeros_like(x[0])
        raise ValueError(f"unknown scaler kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)  # type: ignore[operator]  # buffers set in __init__
        return out if self.clip is None else out.clamp(*self.clip)


class Polynomial(nn.Module):
    """``PolynomialFeatures``: output ``k`` is ``Π_j x_j^{P[k, j]}`` (``P = powers_``), as products of gathered columns.

    ``index`` (d_out, degree) lists, per output, each feature as often as its power, padded with
    a column of ones (index d), so the product is differentiable everywhere (``x**0`` at 0 is not).
    """

    def __init__(self, powers: np.ndarray) -> None:
        super().__init__()
        powers = np.asarray(powers, dtype=np.int64)
        n_out, d = powers.shape
        degree = max(1, int(powers.sum(axis=1).max()))
        index = np.full((n_out, degree), d, dtype=np.int64)
        for k, row in enumerate(powers):
            cols = np.repeat(np.arange(d), row)
            index[k, : len(cols)] = cols
        self.register_buffer("index", torch.as_tensor(index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        return padded[:, self.index].prod(dim=-1)  # type: ignore[index]  # buffer set in __init__


class SklearnSurrogate(nn.Module):
    """A fitted scikit-learn linear pipeline as a torch module: ``linear(features(x))``.

    ``forward(x)``: ``x`` (n, d) raw features → logits (n, c) (classification, softmax of which are
    the estimator's probabilities) or predictions (n,) (regression). Every parameter is in
    ``linear``, so the victim is convex and the implicit back-gradient applies
    (:func:`audit.models.structure.convex_linear_layer`).
    """

    def __init__(self, features: list[nn.Module], linear: nn.Linear, regression: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.linear = linear
        self.regression = regression

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.features(x.flatten(1)))
        return out.squeeze(-1) if self.regression else out


def refits(module: nn.Module) -> bool:
    """Whether ``module`` holds a scaler fitted on the training data (a pipeline surrogate's; :func:`refitted` refits it)."""
    return any(isinstance(m, Affine) and m.refit is not None for m in module.modules())


@contextmanager
def refitted(module: nn.Module, x_train: torch.Tensor) -> Iterator[None]:
    """Within the block, every fitted scaler of ``module`` (a :class:`SklearnSurrogate`) holds the statistics a refit on
    ``x_train`` (n, d) gives — each fitted on what reaches it, in pipeline order — as tensors that depend on
    ``x_train``: a model trained and scored inside the block is the pipeline refit on those points, and autograd
    differentiates it through the scalers' statistics (the poisons move the mean and the spread). Restored after."""
    saved: list[tuple[Affine, torch.Tensor, torch.Tensor]] = []
    features = getattr(module, "features", None)
    try:
        if isinstance(features, nn.Sequential):
            h = x_train.flatten(1)
            for step in features:
                if isinstance(step, Affine) and step.refit is not None:
                    scale, shift = step.statistics(h)
                    saved.append((step, step.scale, step.shift))  # type: ignore[arg-type]  # buffers set in __init__
                    step.scale, step.shift = scale, shift
                h = step(h)
        yield
    finally:
        for step, scale, shift in saved:
            step.scale, step.shift = scale, shift


def pipeline_steps(estimator: Any) -> tuple[list[tuple[str, Any]], tuple[str | None, Any]]:
    """``(transformer steps, (final step's name or None, final estimator))`` of a Pipeline or a bare estimator."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return [], (None, estimator)
    steps = [(name, step) for name, step in estimator.steps if step is not None and step != "passthrough"]
    if not steps:
        raise AuditError("model: the pipeline has no steps")
    *transformers, (last_name, last) = steps
    flat: list[tuple[str, Any]] = []
    for name, step in transformers:
        if isinstance(step, Pipeline):  # a nested pipeline of transformers
            inner, (inner_last_name, inner_last) = pipeline_steps(step)
            flat += [(f"{name}__{n}", s) for n, s in inner] + [(f"{name}__{inner_last_name}", inner_last)]
        else:
            flat.append((name, step))
    return flat, (last_name, last)


def fitted_steps(estimator: Any) -> list[str]:
    """The transformers of a pipeline whose statistics are fitted on the training data (scalers; not
    ``PolynomialFeatures``): the retraining refits them on poisoned data, the surrogate holds them fixed."""
    transformers, _ = pipeline_steps(estimator)
    return [type(step).__name__ for _, step in transformers if type(step).__name__ != "PolynomialFeatures"]


def check_sklearn_model(estimator: Any, task: str, n_classes: int | None) -> tuple[str, bool]:
    """Check a scikit-learn estimator or pipeline the audit is handed; return ``(description, has_surrogate)``.

    Refuses, in one line naming the step and what is supported: a transformer outside
    :data:`SUPPORTED_STEPS`, a final estimator whose regularization does not map onto ρ, and a
    logistic regression whose objective is not the audit's (L1 part, class weights, liblinear's
    penalised intercept).
    """
    transformers, (last_name, last) = pipeline_steps(estimator)
    for name, step in transformers:
        kind = type(step).__name__
        if kind not in SUPPORTED_STEPS:
            raise AuditError(
                f"model: pipeline step {name!r} ({kind}) is not supported; supported steps: {', '.join(SUPPORTED_STEPS)}, then {_final_list(task)}"
            )
    kind = type(last).__name__
    where = f"pipeline step {last_name!r} ({kind})" if last_name else f"scikit-learn {kind}"
    if kind not in SURROGATE_ESTIMATORS[task] + SOLVER_ONLY[task]:
        raise AuditError(
            f"model: {where} is not supported for {task}; use {_final_list(task)} (the L2 strength ρ must map onto its regularization parameter)"
        )
    if last.get_params().get("class_weight") is not None:
        raise AuditError(f"model: {where} has class_weight; the audit's objective weighs every point alike — leave class_weight=None")
    if kind == "LogisticRegression":
        params = last.get_params()
        if float(params.get("l1_ratio") or 0.0) > 0 or params.get("penalty") in ("l1", "elasticnet"):
            raise AuditError(f"model: {where} has an L1 part (l1_ratio / penalty); the audit's objective is L2 only — use l1_ratio=0")
        if params.get("solver") not in _LOGREG_SOLVERS:
            raise AuditError(
                f"model: {where} uses solver {params.get('solver')!r}, which penalises the intercept "
                f"(liblinear) or fits one-vs-rest; use one of {', '.join(_LOGREG_SOLVERS)}"
            )
    if kind == "SGDClassifier":
        params = last.get_params()
        if params.get("loss") != "log_loss" or params.get("penalty") != "l2":
            raise AuditError(
                f"model: {where} must use loss='log_loss' and penalty='l2' (got {params.get('loss')!r}, "
                f"{params.get('penalty')!r}): the audit's objective is the L2-regularised logistic loss"
            )
        if n_classes is not None and n_classes > 2:
            raise AuditError(
                f"model: {where} fits {n_classes} classes one-vs-rest, not the softmax objective; use LogisticRegression for more than two classes"
            )
    names = [type(s).__name__ for _, s in transformers] + [kind]
    description = f"scikit-learn Pipeline({' → '.join(names)})" if last_name else f"scikit-learn {kind}"
    return description, kind in SURROGATE_ESTIMATORS[task]


def _final_list(task: str) -> str:
    return " or ".join(SURROGATE_ESTIMATORS[task] + SOLVER_ONLY[task])


def final_step(estimator: Any) -> tuple[str, Any]:
    """``(parameter prefix, final estimator)``: ``"name__"`` for a pipeline's last step, ``""`` for a bare estimator."""
    _, (name, last) = pipeline_steps(estimator)
    return (f"{name}__" if name else ""), last


def torch_surrogate(fitted: Any, n_classes: int | None) -> SklearnSurrogate:
    """The torch module computing a *fitted* estimator or pipeline (checked by :func:`check_sklearn_model`).

    Classification: ``softmax(module(x))`` equals ``predict_proba(x)`` with the columns in class
    order 0..c−1 (a class missing from the fit gets logit −30). Regression: ``module(x)`` equals
    ``predict(x)``. Float32 buffers and weights, as the audit's other victims.
    """
    transformers, (_, last) = pipeline_steps(fitted)
    features = [_feature_map(step) for _, step in transformers]
    coef = np.atleast_2d(np.asarray(last.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(getattr(last, "intercept_", 0.0), dtype=np.float64))
    fit_intercept = bool(last.get_params().get("fit_intercept", True))
    d = coef.shape[1]
    if type(last).__name__ == "Ridge":
        linear = nn.Linear(d, 1, bias=fit_intercept)
        weight, bias = coef.reshape(1, d), intercept.reshape(1)
    else:
        c = int(n_classes or 2)
        classes = np.asarray(last.classes_).astype(int)
        if len(classes) == 2:  # scikit-learn's binary vector v → the softmax rows [−v/2, v/2]
            rows = np.concatenate([-coef / 2, coef / 2])
            offsets = np.concatenate([-intercept / 2, intercept / 2]) if fit_intercept else np.zeros(2)
        else:
            rows, offsets = coef, (intercept if fit_intercept else np.zeros(len(classes)))
        weight = np.zeros((c, d))
        bias = np.full(c, -30.0)
        weight[classes], bias[classes] = rows, offsets
        linear = nn.Linear(d, c, bias=True)  # a class missing from the fit needs its −30 even without an intercept
        if not fit_intercept:
            bias[classes] = 0.0
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if linear.bias is not None:
            linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return SklearnSurrogate(features, linear, regression=type(last).__name__ == "Ridge").eval()


def _feature_map(step: Any) -> nn.Module:
    """One fitted transformer as a parameter-free module (its fitted statistics as buffers)."""
    kind = type(step).__name__
    if kind == "StandardScaler":
        d = int(step.n_features_in_)
        scale = step.scale_ if step.scale_ is not None else np.ones(d)
        mean = step.mean_ if step.mean_ is not None and step.with_mean else np.zeros(d)
        refit = {"kind": "standard", "with_mean": bool(step.with_mean), "with_std": bool(step.with_std)}
        return Affine(1.0 / np.asarray(scale), -np.asarray(mean) / np.asarray(scale), refit=refit)
    if kind == "MinMaxScaler":
        feature_range = tuple(float(v) for v in step.feature_range)
        return Affine(step.scale_, step.min_, feature_range if step.clip else None, {"kind": "minmax", "range": feature_range})  # type: ignore[arg-type]  # a (lo, hi) pair
    if kind == "MaxAbsScaler":
        return Affine(1.0 / np.asarray(step.scale_), np.zeros(len(step.scale_)), refit={"kind": "maxabs"})
    if kind == "PolynomialFeatures":
        return Polynomial(step.powers_)
    raise AuditError(f"model: pipeline step {kind} is not supported; supported steps: {', '.join(SUPPORTED_STEPS)}")


def rho_of(estimator: Any, n_train: int, n_classes: int | None = None) -> float:
    """The audit's ρ of a scikit-learn model's own regularization on ``n_train`` points: the inverse of
    :func:`audit.models.victim.sklearn_regularization` (``LogisticRegression``: ``ρ = 1/(C·n)``, two
    classes ``2/(C·n)``; ``SGDClassifier``: ``ρ = 2·alpha``; ``Ridge``: ``ρ = alpha/n``). Put it among the candidates to audit the
    setting you ship (``C = inf`` → 0)."""
    _, last = final_step(estimator)
    kind = type(last).__name__
    if kind == "LogisticRegression":
        c = float(last.get_params()["C"])
        classes = n_classes if n_classes is not None else len(getattr(last, "classes_", [0, 1]))
        return 0.0 if np.isinf(c) else (2.0 if classes == 2 else 1.0) / (c * n_train)
    if kind == "Ridge":
        return float(last.get_params()["alpha"]) / n_train
    if kind == "SGDClassifier":
        return 2.0 * float(last.get_params()["alpha"])
    raise AuditError(f"rho_of: {kind} has no L2 strength that maps onto ρ (LogisticRegression, SGDClassifier or Ridge)")
