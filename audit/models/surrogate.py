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

* ``LogisticRegression`` (lbfgs, newton-cg, newton-cholesky, sag or saga; liblinear for two classes, its
  penalised intercept the weight of a constant column as for ``LinearSVC`` below; no L1 part, no class weights).
  Multinomial: ``coef_`` (c, d′) is the softmax layer. Two classes: scikit-learn's one
  vector ``v`` and intercept ``b`` become the rows ``[−v/2, v/2]``, ``[−b/2, b/2]``, whose
  softmax is ``sigmoid(v·x + b)`` and whose penalty is the binary one at ρ/2 (C = 2/(ρn),
  :func:`audit.models.victim.sklearn_regularization`).
* ``SGDClassifier(loss="log_loss", penalty="l2")``, two classes only (more are fitted one-vs-rest):
  as the binary logistic regression, with ``alpha = ρ/2``.
* ``LinearSVC(loss="squared_hinge", penalty="l2")`` (one-vs-rest): the module declares ``loss = "squared_hinge"``
  (:func:`audit.models.training.loss_kind`) and outputs the decision values; liblinear penalises the intercept, so
  the input gets a constant column ``intercept_scaling`` (:class:`Constant`) and the intercept becomes its weight in
  ``nn.Linear(d′ + 1, c, bias=False)``. Two classes: scikit-learn's ``w`` becomes the rows ``[−w, w]``
  (C = 1/(ρn), :func:`audit.models.victim.sklearn_regularization`). ``loss="hinge"`` the same, declaring ``"hinge"``:
  piecewise linear, so back-gradient unrolls it (no implicit form) and the victim states a caveat.
* ``Ridge``: ``coef_`` (d′,), ``intercept_`` → ``nn.Linear(d′, 1)``, output squeezed to (n,).

A ``ColumnTransformer`` (scalers on numeric columns, ``OneHotEncoder`` on categorical ones, passthrough, drop) becomes
a :class:`ColumnMap` on the audit's flat encoding; one that selects a table's columns by name runs behind a
:class:`TableDecoder` step the audit puts first (:func:`with_table`), which writes the flat rows back as the table.

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
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from audit.data import TableColumns
from audit.errors import AuditError

#: transformers the surrogate differentiates through, and the linear estimators it reproduces exactly
SUPPORTED_STEPS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "PolynomialFeatures", "ColumnTransformer")
#: what a ColumnTransformer may apply to its columns (scalers, alone or in a Pipeline, to numeric columns; the
#: one-hot encoder to categorical ones; passthrough and drop)
COLUMN_STEPS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "OneHotEncoder", "passthrough", "drop")
_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler")
SURROGATE_ESTIMATORS = {"classification": ("LogisticRegression", "SGDClassifier", "LinearSVC"), "regression": ("Ridge",)}
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


class Constant(nn.Module):
    """``[x, value]``: a constant input column, whose weight is a penalised intercept (liblinear's ``intercept_scaling``)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.full((len(x), 1), self.value, dtype=x.dtype, device=x.device)], dim=1)


class ColumnMap(nn.Module):
    """A fitted ``ColumnTransformer``: each branch maps its columns of the input, the outputs side by side in the
    transformer's output order. ``branches``: ``(input columns, module)`` pairs; a one-hot encoder's branch is the
    identity on its group's flat columns (the audit encodes categorical columns one-hot already, :class:`TableColumns`)."""

    def __init__(self, branches: list[tuple[list[int], nn.Module]]) -> None:
        super().__init__()
        self.maps = nn.ModuleList([module for _, module in branches])
        for k, (columns, _) in enumerate(branches):
            self.register_buffer(f"columns{k}", torch.as_tensor(columns, dtype=torch.long))

    def inputs(self, x: torch.Tensor) -> Iterator[tuple[nn.Module, torch.Tensor]]:
        """Each branch's module and the columns of ``x`` (n, d) it reads."""
        for k, module in enumerate(self.maps):
            yield module, x[:, getattr(self, f"columns{k}")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(part) for module, part in self.inputs(x)], dim=1)


class TableDecoder(TransformerMixin, BaseEstimator):
    """The step the audit puts before a pipeline that reads a pandas table (a ``ColumnTransformer`` selecting columns by
    name): it writes the audit's flat rows back as that table (:meth:`audit.data.TableColumns.decode`), so every
    retraining fits — and every score asks — the user's own pipeline on table rows, poisons included."""

    def __init__(self, table: TableColumns | None = None) -> None:
        self.table = table

    def fit(self, x: Any, y: Any = None) -> TableDecoder:
        return self

    def transform(self, x: Any) -> Any:
        assert self.table is not None
        return self.table.decode(np.asarray(x))

    def __sklearn_is_fitted__(self) -> bool:
        return True


def reads_table(estimator: Any) -> bool:
    """Whether a scikit-learn estimator or pipeline holds a ``ColumnTransformer`` that selects columns by name (it then
    needs the table, :class:`TableDecoder`)."""
    transformers, _ = pipeline_steps(estimator)
    for _, step in transformers:
        if type(step).__name__ == "ColumnTransformer":
            specs = [columns for _, _, columns in step.transformers]
            if any(isinstance(c, str) or (isinstance(c, (list, tuple)) and c and isinstance(c[0], str)) or callable(c) for c in specs):
                return True
    return False


def with_table(estimator: Any, table: TableColumns | None) -> Any:
    """``estimator`` as the audit runs it: a pipeline that reads a table by column names gets a :class:`TableDecoder`
    first (a one-line error when the data is not a table); anything else as it is."""
    if not reads_table(estimator) or isinstance(pipeline_steps(estimator)[0][0][1], TableDecoder):
        return estimator
    if table is None:
        raise AuditError(
            "model: the pipeline's ColumnTransformer selects columns by name; hand the audit the table itself "
            "(run_audit(config, model=pipeline, dataset=frame, label=...)), with dataset.domain auto or inferred"
        )
    from sklearn.pipeline import Pipeline

    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("model", estimator)]
    return Pipeline([("table", TableDecoder(table)), *steps])


class SklearnSurrogate(nn.Module):
    """A fitted scikit-learn linear pipeline as a torch module: ``linear(features(x))``.

    ``forward(x)``: ``x`` (n, d) raw features → logits (n, c) (classification, softmax of which are
    the estimator's probabilities) or predictions (n,) (regression). Every parameter is in
    ``linear``, so the victim is convex and the implicit back-gradient applies
    (:func:`audit.models.structure.convex_linear_layer`).
    """

    def __init__(self, features: list[nn.Module], linear: nn.Linear, regression: bool, loss: str = "cross_entropy") -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.linear = linear
        self.regression = regression
        self.loss = loss  # the classification loss it is trained with (audit.models.training.loss_kind)

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
        if isinstance(features, nn.Module):
            _refit(features, x_train.flatten(1), saved)
        yield
    finally:
        for step, scale, shift in saved:
            step.scale, step.shift = scale, shift


def _refit(step: nn.Module, h: torch.Tensor, saved: list[tuple[Affine, torch.Tensor, torch.Tensor]]) -> None:
    """Refit every scaler in ``step`` on ``h`` (what reaches it), in pipeline order: a sequence step by step, a
    column map branch by branch on its columns; the previous statistics appended to ``saved``."""
    if isinstance(step, Affine) and step.refit is not None:
        scale, shift = step.statistics(h)
        saved.append((step, step.scale, step.shift))  # type: ignore[arg-type]  # buffers set in __init__
        step.scale, step.shift = scale, shift
    elif isinstance(step, nn.Sequential):
        for sub in step:
            _refit(sub, h, saved)
            h = sub(h)
    elif isinstance(step, ColumnMap):
        for sub, part in step.inputs(h):
            _refit(sub, part, saved)


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
    out: list[str] = []
    for _, step in transformers:
        kind = type(step).__name__
        if kind == "ColumnTransformer":
            out += [type(t).__name__ for _, branch, _ in step.transformers if not isinstance(branch, str) for t in _chain(branch)]
        elif kind in _SCALERS:
            out.append(kind)
    return [k for k in out if k in _SCALERS]


def check_sklearn_model(estimator: Any, task: str, n_classes: int | None) -> tuple[str, bool]:
    """Check a scikit-learn estimator or pipeline the audit is handed; return ``(description, has_surrogate)``.

    Refuses, in one line naming the step and what is supported: a transformer outside
    :data:`SUPPORTED_STEPS`, a final estimator whose regularization does not map onto ρ, and a
    logistic regression whose objective is not the audit's (L1 part, class weights, liblinear's
    penalised intercept).
    """
    transformers, (last_name, last) = pipeline_steps(estimator)
    for position, (name, step) in enumerate(transformers):
        kind = type(step).__name__
        if isinstance(step, TableDecoder) and position == 0:
            continue
        if kind not in SUPPORTED_STEPS:
            raise AuditError(
                f"model: pipeline step {name!r} ({kind}) is not supported; supported steps: {', '.join(SUPPORTED_STEPS)}, then {_final_list(task)}"
            )
        if kind == "ColumnTransformer":
            _check_column_transformer(name, step)
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
        if params.get("solver") == "liblinear" and n_classes is not None and n_classes > 2:
            raise AuditError(
                f"model: {where} uses solver 'liblinear', which fits {n_classes} classes one-vs-rest, not the softmax objective; "
                f"use one of {', '.join(_LOGREG_SOLVERS)}"
            )
        if params.get("solver") not in (*_LOGREG_SOLVERS, "liblinear"):
            solvers = ", ".join(_LOGREG_SOLVERS)
            raise AuditError(f"model: {where} uses solver {params.get('solver')!r}; use one of {solvers} or liblinear (two classes)")
    if kind == "LinearSVC":
        params = last.get_params()
        if params.get("loss") not in ("squared_hinge", "hinge") or params.get("penalty") != "l2" or params.get("multi_class", "ovr") != "ovr":
            raise AuditError(
                f"model: {where} must use loss='squared_hinge' or 'hinge', penalty='l2' and one-vs-rest (got {params.get('loss')!r}, "
                f"{params.get('penalty')!r}, {params.get('multi_class', 'ovr')!r}): the attacks model the L2-regularised one-vs-rest "
                "(squared) hinge"
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
    names = [_step_name(s) for _, s in transformers if not isinstance(s, TableDecoder)] + [kind]
    description = f"scikit-learn Pipeline({' → '.join(names)})" if last_name else f"scikit-learn {kind}"
    return description, kind in SURROGATE_ESTIMATORS[task]


def _step_name(step: Any) -> str:
    """A transformer's name for the description: a ColumnTransformer with its branches' (``ColumnTransformer[StandardScaler,
    OneHotEncoder]``)."""
    kind = type(step).__name__
    if kind != "ColumnTransformer":
        return kind
    inner = [t if isinstance(t, str) else " → ".join(type(u).__name__ for u in _chain(t)) for _, t, _ in step.transformers]
    return f"{kind}[{', '.join(inner)}]"


def _chain(step: Any) -> list[Any]:
    """A transformer, or the steps of a Pipeline of transformers (a ColumnTransformer branch)."""
    from sklearn.pipeline import Pipeline

    return [t for _, t in step.steps if t is not None and t != "passthrough"] if isinstance(step, Pipeline) else [step]


def _check_column_transformer(name: str, step: Any) -> None:
    """A ColumnTransformer's branches and remainder: scalers (alone or in a Pipeline), OneHotEncoder, passthrough or
    drop; a one-hot encoder with the categories of the data (``categories='auto'``) and no infrequent-category
    grouping. Which columns each branch reads is checked when the surrogate is built (:func:`torch_surrogate`)."""
    supported = ", ".join(COLUMN_STEPS)
    branches = [(branch, t) for branch, t, _ in step.transformers] + [("remainder", step.remainder)]
    for branch, transformer in branches:
        if isinstance(transformer, str):
            if transformer not in ("passthrough", "drop"):
                raise AuditError(f"model: ColumnTransformer {name!r} branch {branch!r} is {transformer!r}; use passthrough or drop")
            continue
        chain = _chain(transformer)
        kinds = [type(t).__name__ for t in chain]
        if any(k not in COLUMN_STEPS for k in kinds) or ("OneHotEncoder" in kinds and len(kinds) > 1):
            raise AuditError(
                f"model: ColumnTransformer {name!r} branch {branch!r} ({' → '.join(kinds)}) is not supported; "
                f"supported: {supported} (scalers may be chained in a Pipeline, the encoder alone)"
            )
        if kinds == ["OneHotEncoder"]:
            params = chain[0].get_params()
            if params.get("categories") != "auto" or params.get("min_frequency") is not None or params.get("max_categories") is not None:
                raise AuditError(
                    f"model: ColumnTransformer {name!r} branch {branch!r}: OneHotEncoder must take the data's categories "
                    "(categories='auto', no min_frequency / max_categories): the audit encodes the same categories one-hot"
                )


def _column_map(step: Any, table: TableColumns | None) -> ColumnMap:
    """A fitted ColumnTransformer as a :class:`ColumnMap` on the audit's flat encoding (of a table when ``table``:
    columns selected by name; else by position in the flat features)."""
    names = getattr(step, "feature_names_in_", None)
    order = sorted(((sl.start, branch) for branch, sl in step.output_indices_.items() if sl.stop > sl.start))
    fitted = {branch: transformer for branch, transformer, _ in step.transformers_}
    out: list[tuple[list[int], nn.Module]] = []
    for _, branch in order:
        transformer = fitted[branch]
        positions = list(step._transformer_to_input_indices[branch])  # noqa: SLF001  # the only record of a branch's input columns
        columns = [str(names[i]) for i in positions] if names is not None else [str(i) for i in positions]
        identity = isinstance(transformer, str) or (type(transformer).__name__ == "FunctionTransformer" and transformer.func is None)
        chain = [] if identity else _chain(transformer)  # passthrough: scikit-learn fits it as an identity FunctionTransformer
        kinds = [type(t).__name__ for t in chain]
        if kinds == ["OneHotEncoder"]:
            out.append((_one_hot_columns(branch, chain[0], columns, table), nn.Identity()))
            continue
        flat: list[int] = []
        for column in columns:
            if table is None:
                flat.append(int(column))
                continue
            cols, categories = table.flat(column)
            if categories:
                raise AuditError(
                    f"model: ColumnTransformer branch {branch!r} gets the categorical column {column!r} "
                    f"({' → '.join(kinds) or 'passthrough'}); encode it with OneHotEncoder"
                )
            flat.append(cols[0])
        if any(k not in _SCALERS for k in kinds):
            raise AuditError(f"model: ColumnTransformer branch {branch!r} ({' → '.join(kinds)}) is not supported on these columns")
        out.append((flat, nn.Sequential(*[_feature_map(t) for t in chain]) if chain else nn.Identity()))
    return ColumnMap(out)


def _one_hot_columns(branch: str, encoder: Any, columns: list[str], table: TableColumns | None) -> list[int]:
    """The flat columns a fitted OneHotEncoder's output is, in its order: per encoded column, its group's columns in the
    encoder's category order, less the category it drops."""
    if table is None:
        raise AuditError(f"model: ColumnTransformer branch {branch!r} one-hot encodes numeric columns; the audit needs them as text (a table)")
    flat: list[int] = []
    drop = getattr(encoder, "drop_idx_", None)
    for k, column in enumerate(columns):
        cols, categories = table.flat(column)
        if not categories:
            raise AuditError(
                f"model: ColumnTransformer branch {branch!r} one-hot encodes the numeric column {column!r}; make it text (categorical) in the table"
            )
        where = {category: j for j, category in enumerate(categories)}
        dropped = None if drop is None or drop[k] is None else int(drop[k])
        for j, category in enumerate(encoder.categories_[k]):
            if j == dropped:
                continue
            if str(category) not in where:
                raise AuditError(f"model: OneHotEncoder of {column!r} has a category {category!r} the training split lacks")
            flat.append(cols[where[str(category)]])
    return flat


def check_table_pipeline(estimator: Any, table: TableColumns | None, x_train: np.ndarray) -> None:
    """Before any cell runs: each ColumnTransformer of ``estimator`` fitted alone on the training rows ``x_train`` (n, d)
    written back as the table, and mapped onto the flat encoding (:func:`_column_map`), so that a branch given columns
    it cannot take is a one-line error naming it, not a failed cell. Columns named in the spec are checked first (a
    scaler on a categorical column would otherwise fail inside scikit-learn)."""
    from sklearn.base import clone

    if table is None:
        return
    rows = table.decode(x_train)
    for name, step in pipeline_steps(estimator)[0]:
        if type(step).__name__ != "ColumnTransformer":
            continue
        specs = [(branch, transformer, [columns] if isinstance(columns, str) else columns) for branch, transformer, columns in step.transformers]
        taken = {c for _, _, columns in specs if isinstance(columns, (list, tuple)) for c in columns}
        specs.append(("remainder", step.remainder, [c for c in table.names if c not in taken]))  # what no branch names
        for branch, transformer, columns in specs:
            named = list(columns) if isinstance(columns, (list, tuple)) else []
            kinds = [] if isinstance(transformer, str) else [type(t).__name__ for t in _chain(transformer)]
            for column in (c for c in named if isinstance(c, str)):
                if column not in table.names:
                    raise AuditError(
                        f"model: ColumnTransformer branch {branch!r} selects {column!r}, not a column of the table ({', '.join(table.names)})"
                    )
                categorical = bool(table.flat(column)[1])
                if categorical and kinds != ["OneHotEncoder"] and transformer != "drop":
                    raise AuditError(
                        f"model: ColumnTransformer branch {branch!r} gets the categorical column {column!r} "
                        f"({' → '.join(kinds) or transformer}); encode it with OneHotEncoder"
                    )
        try:
            fitted = clone(step).fit(rows)
        except ValueError as err:
            raise AuditError(f"model: ColumnTransformer {name!r} cannot be fitted on the table ({str(err).splitlines()[0]})") from None
        _column_map(fitted, table)


def check_unseen_categories(estimator: Any, table: TableColumns | None, x: np.ndarray) -> None:
    """A one-line error when rows ``x`` (n, d) hold a category the training split lacks (validation, attacker's or test
    points) in a column the pipeline one-hot encodes with ``handle_unknown='error'``: scikit-learn would refuse to
    score them (the audit encodes such a category as all zeros, as ``handle_unknown='ignore'`` does)."""
    if table is None:
        return
    unseen = set(table.has_unseen(x))
    for _, step in pipeline_steps(estimator)[0]:
        if type(step).__name__ != "ColumnTransformer":
            continue
        for branch, transformer, columns in step.transformers:
            if type(transformer).__name__ != "OneHotEncoder" or transformer.get_params().get("handle_unknown") != "error":
                continue
            named = [columns] if isinstance(columns, str) else list(columns) if isinstance(columns, (list, tuple)) else []
            hit = sorted(unseen & {str(c) for c in named})
            if hit:
                raise AuditError(
                    f"model: ColumnTransformer branch {branch!r} one-hot encodes {', '.join(map(repr, hit))} with handle_unknown='error', but "
                    "validation or test rows hold categories the training split lacks; use OneHotEncoder(handle_unknown='ignore')"
                )


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
    table: TableColumns | None = None
    features: list[nn.Module] = []
    for _, step in transformers:
        if isinstance(step, TableDecoder):
            table = step.table
        elif type(step).__name__ == "ColumnTransformer":
            features.append(_column_map(step, table))
        else:
            features.append(_feature_map(step))
    coef = np.atleast_2d(np.asarray(last.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(getattr(last, "intercept_", 0.0), dtype=np.float64))
    fit_intercept = bool(last.get_params().get("fit_intercept", True))
    d = coef.shape[1]
    if type(last).__name__ == "LinearSVC":
        return _svm_surrogate(features, last, coef, intercept, fit_intercept, int(n_classes or 2))
    if type(last).__name__ == "LogisticRegression" and last.get_params().get("solver") == "liblinear" and fit_intercept:
        return _liblinear_logistic_surrogate(features, last, coef, intercept, int(n_classes or 2))
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


def _svm_surrogate(features: list[nn.Module], last: Any, coef: np.ndarray, intercept: np.ndarray, fit_intercept: bool, c: int) -> SklearnSurrogate:
    """A fitted ``LinearSVC`` behind ``features``: decision values from ``nn.Linear(d′ [+ 1], c, bias=False)`` on the
    features with a constant column ``intercept_scaling`` appended (the penalised intercept is its weight); two classes
    as the rows ``[−w, w]``; a class missing from the fit gets the decision value −30 (no fit: never predicted)."""
    scaling = float(last.get_params().get("intercept_scaling", 1.0))
    rows = np.concatenate([coef, (intercept / scaling)[:, None]], axis=1) if fit_intercept else coef
    classes = np.asarray(last.classes_).astype(int)
    if len(classes) == 2:
        rows = np.concatenate([-rows, rows])
    width = rows.shape[1]
    weight = np.zeros((c, width))
    weight[classes] = rows
    missing = np.setdiff1d(np.arange(c), classes)
    if len(missing):
        if not fit_intercept:
            raise AuditError("model: LinearSVC without an intercept, fitted on fewer classes than the data has: no exact surrogate")
        weight[missing, -1] = -30.0 / scaling
    linear = nn.Linear(width, c, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    extra = [Constant(scaling)] if fit_intercept else []
    loss = "hinge" if last.get_params().get("loss") == "hinge" else "squared_hinge"
    return SklearnSurrogate([*features, *extra], linear, regression=False, loss=loss).eval()


def _liblinear_logistic_surrogate(features: list[nn.Module], last: Any, coef: np.ndarray, intercept: np.ndarray, c: int) -> SklearnSurrogate:
    """A binary ``LogisticRegression(solver="liblinear")``: liblinear penalises the intercept, so, as for ``LinearSVC``,
    a constant column ``intercept_scaling`` is appended and the intercept is its weight; the rows ``[−v̄/2, v̄/2]`` of
    ``v̄ = [coef, intercept / intercept_scaling]`` in ``nn.Linear(d′ + 1, 2, bias=False)`` (C = 2/(ρn), as the other solvers)."""
    scaling = float(last.get_params().get("intercept_scaling", 1.0))
    full = np.concatenate([coef, (intercept / scaling)[:, None]], axis=1)
    classes = np.asarray(last.classes_).astype(int)
    if len(classes) != 2 or c != 2:
        raise AuditError("model: LogisticRegression(solver='liblinear') is supported for two classes (more are fitted one-vs-rest)")
    linear = nn.Linear(full.shape[1], 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(np.concatenate([-full / 2, full / 2]), dtype=torch.float32))
    return SklearnSurrogate([*features, Constant(scaling)], linear, regression=False).eval()


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
    classes ``2/(C·n)``; ``SGDClassifier``: ``ρ = 2·alpha``; ``LinearSVC``: ``ρ = 1/(C·n)``; ``Ridge``: ``ρ = alpha/n``).
    Put it among the candidates to audit the
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
    if kind == "LinearSVC":
        return 1.0 / (float(last.get_params()["C"]) * n_train)
    raise AuditError(f"rho_of: {kind} has no L2 strength that maps onto ρ (LogisticRegression, SGDClassifier, LinearSVC or Ridge)")
