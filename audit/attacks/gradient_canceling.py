"""Gradient Canceling (lu-kamath-yu-2023, Algorithm 1, eq. 31–34).

Given a target model ``W``, find ``n_p = ε·n`` poisons so that retraining on the mixed set
lands on ``W``: minimise ``L = ½‖g(μ) + ε·g(ν̂) + (1 + ε)·ρ·W_reg‖²`` (eq. 33; the last term
is the audit's L2 extension (README: Poisonability thresholds), zero at ρ = 0) over the poison features, labels fixed.

The gradient for poison ``z_j`` is eq. (34): ``∂L/∂z_j = (1/n)·∇_z∇_W ℓ(z_j; W)·r`` with
``r = g(μ) + ε·g(ν̂) + (1 + ε)ρW``. All poisons are updated together: one double-backward
pass per (mini-)batch computes every ``∂L/∂z_j`` at once; mini-batches only bound memory
(one optimizer step per epoch, as full batch). The step uses ``n·∂L/∂z_j`` — the per-point
gradient without the ``1/n`` of eq. (34) — so the paper's learning rate (0.5) means the
same at every training-set size. SGD with momentum and a cosine schedule, projection onto
the feature box after every step (Algorithm 1, line 6).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from audit.attacks.base import (
    AttackContext,
    AttackDiagnostics,
    AttackParams,
    PoisonInput,
    ThreatModel,
    TorchAttack,
    torch_module,
)
from audit.attacks.feasible import Value, ValueAndGradient
from audit.catalog import ProfileSetting
from audit.errors import AuditError
from audit.maths.poisonability import SCALES, box_threshold, module_metric, scale_output_layer, scale_to_budget, thresholds
from audit.maths.poisonability import gradpc_target as target_by_gradpc
from audit.maths.reach import reach_poisons, reach_residual
from audit.maths.regions import SANITISERS, project_many, sanitiser_level, sanitiser_region
from audit.models.estimator import InputSpace, is_art_estimator
from audit.models.structure import convex_linear_layer, is_linear_model
from audit.models.surrogate import refits
from audit.models.training import MARGIN_LOSSES, data_loss, loss_kind


class GCParams(AttackParams):
    target: Literal["auto", "gradpc", "file", "label_flip", "search"] = "auto"
    # target: search — the auto target, the box-aware one (reach: box's, linear models in the box) and the label-flip
    # targets at min(1, k·ε) for k here are each attacked; the poisons whose retrained model scores lowest on the
    # attacker's own split are kept (classification)
    search_multiples: list[float] = Field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    target_eps: float = Field(1.0, gt=0, le=1)
    # target: label_flip at min(1, target_multiple·ε) instead of target_eps: a target just beyond the budget's reach
    # (examples/benchmarks/README.md, "Where in-box GC loses its strength")
    target_multiple: float | None = Field(None, gt=0)
    eps_w: float = Field(1.0, gt=0)
    eps_w_grid: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    target_file: str | None = None
    lr: float = Field(0.5, gt=0)
    epochs: int = Field(1000, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1)
    box: Literal["data", "none"] = "data"
    region: Literal["none", "sphere", "slab", "sphere_slab"] = "none"  # defense-aware: stay where that sanitiser accepts
    region_quantile: float | None = Field(None, gt=0, le=1)  # the sanitiser's quantile (None: 1/(1 + ε), its default)
    region_margin: float = Field(1e-4, ge=0, lt=1)
    gradpc_steps: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    # poison labels: "fixed" as sampled (Algorithm 1), or "choose": every relabel_every epochs each poison takes the label
    # that most reduces ‖g(χ)‖ given the others (exact on the last linear layer), until relabel_until of the epochs
    labels: Literal["fixed", "choose"] = "fixed"
    # target auto: which threshold decides whether a target is within reach — "unbounded": τ_ρ(2) (poisons anywhere, the
    # paper's; default: "box" measured no stronger, examples/benchmarks/README.md), "box": the box-aware τ (poisons in the
    # feature box; linear targets, with box: data)
    reach: Literal["box", "unbounded"] = "unbounded"
    relabel_every: int = Field(20, ge=1)
    relabel_until: float = Field(0.8, gt=0, le=1)
    # a scikit-learn pipeline's scalers (StandardScaler, MinMaxScaler, MaxAbsScaler) modelled as refit on D_tr ∪ D_p, as
    # every retraining refits them: the residual's clean part then moves with the poisons too (autograd through the
    # scalers' statistics, refit_residual); False (default): held at their clean fit, eq. 34 as written — measured as
    # damaging or more (the target is chosen in the clean fit's feature space; examples/benchmarks/README.md)
    refit_scalers: bool = False
    # where the poisons start: "sample" — clean points with their labels (Algorithm 1, line 1); "reach" — the poison
    # distribution of the box closest to cancelling the target's gradient (audit.maths.reach: exact for a two-class
    # softmax regression in the feature box, its atoms repeated in proportion to their weights), which the descent then
    # polishes — the least residual any in-box poison set can leave, where sampled starts stall above it
    start: Literal["sample", "reach"] = "sample"


def flat_norm(tensors: list[torch.Tensor]) -> float:
    return float(flat_norm_tensor(tensors))


def flat_norm_tensor(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, t₂, …)‖ as a float64 scalar tensor on the tensors' device (no host read)."""
    return torch.sqrt(sum(t.double().pow(2).sum() for t in tensors))  # type: ignore[arg-type]  # torch/numpy stubs


def mean_gradient(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int = 4096) -> list[torch.Tensor]:
    """``g(μ)``: the mean gradient of the loss over ``(x, y)`` at ``module``'s parameters."""
    params = list(module.parameters())
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(y), chunk):
        loss = data_loss(module(x[start : start + chunk]), y[start : start + chunk], task, reduction="sum", kind=loss_kind(module))
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g
    return [t / len(y) for t in total]


def cancel_residual(
    module: nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor,
    task: str,
    g_mu: list[torch.Tensor],
    reg: list[torch.Tensor],
    n: int,
    batch_size: int | None,
) -> list[torch.Tensor]:
    """``r = g(μ) + ε·g(ν̂) + (1 + ε)ρW``, with ``ε·g(ν̂) = (1/n) Σ_j ∇_W ℓ(z_j; W)``."""
    params = list(module.parameters())
    r = [gm + rg for gm, rg in zip(g_mu, reg)]
    step = batch_size or len(labels)
    for start in range(0, len(labels), step):
        loss = data_loss(module(z[start : start + step]), labels[start : start + step], task, reduction="sum", kind=loss_kind(module))
        for acc, g in zip(r, torch.autograd.grad(loss, params)):
            acc += g / n
    return r


def cancel_gradient(
    module: nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor,
    task: str,
    r: list[torch.Tensor],
    n: int,
    batch_size: int | None,
) -> torch.Tensor:
    """eq. (34) for every poison at once: ``∂L/∂z_j = (1/n)∇_z∇_W ℓ(z_j; W)·r`` (r held fixed)."""
    params = list(module.parameters())
    out = torch.zeros_like(z)
    step = batch_size or len(labels)
    for start in range(0, len(labels), step):
        zb = z[start : start + step].detach().requires_grad_(True)
        loss = data_loss(module(zb), labels[start : start + step], task, reduction="sum", kind=loss_kind(module))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        inner = sum((g * ri.detach()).sum() for g, ri in zip(grads, r)) / n
        out[start : start + step] = torch.autograd.grad(inner, zb)[0]  # type: ignore[arg-type]  # torch/numpy stubs
    return out


#: the auto target of a linear SVM: the victim retrained on an adversarial label flip of this many times ε (1: a target
#: the budget reaches by construction; 2, 3 and 5 measured less steady: examples/benchmarks/README.md, "Linear SVMs")
SVM_TARGET_MULTIPLE = 1.0


def keep_margins_active(
    module: nn.Module, z: torch.Tensor, labels: torch.Tensor, lo: torch.Tensor | None, hi: torch.Tensor | None, slack: float = 0.1, rounds: int = 5
) -> torch.Tensor:
    """Each poison moved onto ``{f_y(z) ≤ 1 − slack}`` ∩ the box (alternating projections): the squared hinge of its own
    output stays active, so it keeps contributing to the residual (a held margin contributes nothing: a plateau of
    ‖g(χ)‖²). ``f_y`` is affine in z for a linear surrogate (scalers included), so the set is a half-space."""
    z = z.detach().clone()
    rows = torch.arange(len(z), device=z.device)
    for _ in range(rounds):
        zz = z.clone().requires_grad_(True)
        with torch.enable_grad():
            f = module(zz)[rows, labels]
            (a,) = torch.autograd.grad(f.sum(), zz)
        excess = (f.detach() - (1.0 - slack)).clamp_min(0)
        if not bool((excess > 0).any()):
            break
        z = z - (excess / a.pow(2).sum(1).clamp_min(1e-12))[:, None] * a
        if lo is not None and hi is not None:
            z = torch.maximum(torch.minimum(z, hi), lo)
    return z


def refit_residual(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, task: str, reg: list[torch.Tensor], n: int
) -> list[torch.Tensor]:
    """``r = g(μ) + ε·g(ν̂) + (1 + ε)ρW`` of a pipeline surrogate whose scalers are refit on ``x ∪ z`` (x (n, d) the clean
    training points, z (m, d) the poisons): every point's features move with the poisons' statistics
    (:func:`audit.models.surrogate.refitted`), so ``r`` is built with a graph and differentiated in ``z`` by autograd
    (``∂½‖r‖²/∂z``; with the scalers fixed only the poisons' own terms depend on z, eq. 34)."""
    from audit.models.surrogate import refitted

    params = list(module.parameters())
    kind = loss_kind(module)
    with refitted(module, torch.cat([x, z])):
        total = data_loss(module(x), y, task, reduction="sum", kind=kind) + data_loss(module(z), labels, task, reduction="sum", kind=kind)
        grads = torch.autograd.grad(total / n, params, create_graph=True)
    return [g + rg for g, rg in zip(grads, reg)]


@dataclass
class GradientCancelingDiagnostics(AttackDiagnostics):
    """Where the target came from, how good it is, its thresholds (Eq. 5–6) and how far the
    loop drove ‖g(χ)‖ (Algorithm 1): the curve ``[[epoch, ‖g‖], …]`` and the relative residual."""

    target: str | None = None  # file | gradpc | label_flip | auto
    path: str | None = None
    eps_w: float | None = None
    scale: float | None = None
    target_eps: float | None = None
    target_tau_rho_2: float | None = None
    gradpc_val_loss: list[float] | None = None
    note: str | None = None
    target_val_metric: float | None = None
    target_test_metric: float | None = None
    threshold: dict[str, Any] | None = None
    epochs: int | None = None
    g_chi_curve: list[list[float]] | None = None
    g_chi_final: float | None = None
    g_mu_norm: float | None = None
    relative_residual: float | None = None
    converged: bool | None = None
    loop_seconds: float | None = None
    reach: str | None = None  # target auto: "box" (judged by the box-aware τ) or why not (None: unbounded τ)
    target_tau_box: float | None = None  # the chosen target's box-aware τ (reach: box)
    target_reach_residual: float | None = None  # reach: box, two classes: the least in-box residual at ε (upper bound; ≤ 0.01)
    refit_scalers: bool | None = None  # True: a pipeline's scalers were modelled as refit on D_tr ∪ D_p
    relabelled: int | None = None  # labels: choose — poison labels changed over the run (None: labels fixed)
    best_epoch: int | None = None  # start: reach — the logged epoch whose poisons were kept (a lower residual than the last epoch's)
    # target: search — each target tried: its residual, the attacker-split metric, poisons the feature domain changed
    search: list[dict[str, Any]] | None = None
    search_chosen: int | None = None  # target: search — the index of the run kept
    reach_residual: list[float] | None = None  # start: reach — the least in-box relative residual at ε, bracketed [lower, upper]

    def origin(self) -> str:
        """One line saying which target the attack aimed at."""
        if self.target == "auto":
            return f"auto: GradPC ε_w={self.eps_w:g}, output layer ×{self.scale or 1:.3g}"
        if self.target == "gradpc":
            return f"GradPC ε_w={self.eps_w:g}"
        if self.target == "label_flip":
            return f"model retrained on an adversarial label flip at ε={self.target_eps:g}"
        return f"file {self.path or ''}"


class GradientCanceling(TorchAttack):
    """Gradient Canceling as an ART white-box poisoning attack.

    Parameters
    ----------
    estimator : ART PyTorchClassifier / PyTorchRegressor, or nn.Module
        The victim; its module gives the architecture (the attack works on the module).
    target_model : nn.Module or state dict
        The target model W (same architecture).
    budget : float
        ε in (0, 1].
    task : str
        ``classification`` or ``regression``.
    l2 : float
        The victim's L2 strength ρ (cancels the regularized gradient).
    lo, hi : ndarray or None
        Feature box; None for an unbounded domain.
    seed : int
        Seeds the choice of the initial clean subsample.
    **params
        :class:`GCParams`: lr (0.5), epochs (1000), momentum (0.9), batch_size, log_every.
    """

    name: ClassVar[str] = "gradient_canceling"
    title: ClassVar[str] = "Gradient Canceling"
    description: ClassVar[str] = "Gradient Canceling towards a GradPC (or given) target model, white-box"
    threat = ThreatModel(white_box=True, capability="injects points with optimised features in the feature box and chosen labels (data injection)")
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {
        "quick": ProfileSetting(
            {"epochs": 300}, seeds=1, strength="GC at 300 epochs: 92–109 % of the 1000-epoch damage, 2.2 s against 3.1 s (mnist5k LR, ε = 3–30 %)"
        )
    }
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = (
        {"epochs": 20, "eps_w_grid": [0.1, 0.5]},
        {"epochs": 5, "target": "gradpc", "eps_w": 0.5, "batch_size": 7},
        {"epochs": 5, "target": "label_flip", "target_eps": 0.5},
    )
    adaptive: ClassVar[bool] = True  # the adaptive stage re-crafts it against a filter by default
    Params = GCParams
    params: GCParams
    _start: tuple[np.ndarray, np.ndarray] | None = None  # target: search — poisons a run starts from (a label-flip target's)
    Diagnostics = GradientCancelingDiagnostics
    diagnostics: GradientCancelingDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

    def __init__(self, estimator: Any, *, target_model: Any, **kwargs: Any) -> None:
        super().__init__(estimator, **kwargs)
        module = self.module
        raw = module.model if isinstance(module, InputSpace) else module
        target = target_model
        if isinstance(target, dict):
            state = target
            target = copy.deepcopy(raw)
            try:
                target.load_state_dict(state)
            except RuntimeError as err:
                raise AuditError(f"GradientCanceling: the target state dict does not fit the model ({str(err).splitlines()[0]})") from None
        elif is_art_estimator(target):
            target = torch_module(target, "GradientCanceling's target")
        if not isinstance(target, nn.Module):
            raise AuditError(
                f"GradientCanceling: target must be an nn.Module, an ART PyTorch estimator or a state dict (got {type(target).__name__})"
            )
        target = copy.deepcopy(target)  # the caller's module is never switched to eval or given gradients
        if isinstance(module, InputSpace) and not isinstance(target, InputSpace):
            target = module.around(target)  # the target in the victim's input space (its preprocessing)
        self.target = target.eval()
        self._check_params()

    @classmethod
    def against(cls, defense: str, defense_params: dict[str, Any], rate: float) -> dict[str, Any] | None:
        """A sphere/slab sanitiser: optimise inside its acceptance region (``region``)."""
        if defense in SANITISERS:
            return {"region": defense, "region_quantile": sanitiser_level(rate, defense_params.get("quantile"))}
        return None

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> GradientCanceling:
        fitted = ctx.fitted
        module = fitted.require_module("gradient_canceling")
        p = GCParams.model_validate(params)
        data = ctx.dataset
        l2 = ctx.candidate.rho
        if p.target == "search":
            if data.task != "classification":
                raise AuditError(
                    "gradient_canceling: target: search needs a classification task (it keeps the poisons of lowest attacker-split accuracy)"
                )
            candidates = search_targets(ctx, p)
            target: Any = candidates[0][0]
            origin: dict[str, Any] = candidates[0][1]
        elif p.target == "file":
            if not p.target_file or not Path(p.target_file).is_file():
                raise AuditError(f"gradient_canceling.target_file not found: {p.target_file}")
            target = torch.load(p.target_file, map_location=next(module.parameters()).device, weights_only=True)
            origin = {"target": "file", "path": p.target_file}
        elif p.target == "gradpc":
            target, result = target_by_gradpc(fitted, data, p.eps_w, p.gradpc_steps)
            origin = {"target": "gradpc", "eps_w": p.eps_w, "gradpc_val_loss": [result.val_loss_clean, result.val_loss_target]}
        elif p.target == "label_flip":
            target_eps = p.target_eps if p.target_multiple is None else min(1.0, p.target_multiple * ctx.budget)
            target, origin = target_by_label_flip(ctx, target_eps)
        elif data.task == "classification" and loss_kind(module) in MARGIN_LOSSES:
            # a linear SVM: τ is the cross-entropy's, and the GradPC targets measured out of reach (residual ≈ 1, no
            # damage); the model retrained on an adversarial flip of ε is reachable by construction (its own poisons reach it)
            target_eps = min(1.0, SVM_TARGET_MULTIPLE * ctx.budget)
            target, origin = target_by_label_flip(ctx, target_eps)
            origin = {**origin, "note": f"auto for a linear SVM: the label-flip target at {SVM_TARGET_MULTIPLE:g}·ε"}
        else:
            in_box = p.reach == "box" and p.box == "data" and ctx.box is not None
            target, origin = auto_target(fitted, data, ctx.budget, l2, p.eps_w_grid, p.gradpc_steps, ctx.box if in_box else None)
        box = ctx.box if p.box == "data" else None
        own = {k: v for k, v in params.items() if k != "box"}  # ``box`` names the setting ("data" | "none"); the array is passed
        attack = cls(module, target_model=target, budget=ctx.budget, task=data.task, l2=l2, box=box, seed=ctx.seed, n_classes=data.n_classes, **own)
        attack.params = attack.params.model_copy(update={"box": p.box})  # the setting the cell ran under, as configured
        attack.diagnostics.update(origin)
        attack.describe_target(data)
        if p.target == "search":
            retrain = lambda x, y: ctx.victim.fit(x, y, ctx.hparams, int(ctx.seed) + 1)  # noqa: E731
            attack.search = Search(candidates, data, retrain, label_flip_poisons(ctx, ctx.budget))
        return attack

    def describe_target(self, data: Any) -> None:
        """The target's validation and test metric and its thresholds, in the diagnostics."""
        self.diagnostics.target_val_metric = module_metric(self.target, data.x_val, data.y_val, data.task)
        self.diagnostics.target_test_metric = module_metric(self.target, data.x_test, data.y_test, data.task)
        self.diagnostics.threshold = thresholds(self.target, data.x_train, data.y_train, data.task, self.l2, data.n_classes).as_dict()

    @property
    def is_classification(self) -> bool:
        return self.task == "classification"

    def device(self) -> tuple[torch.device, torch.dtype]:
        return next(self.target.parameters()).device, torch.float32

    def _check_params(self) -> None:
        if self.params.target_multiple is not None and self.params.target != "label_flip":
            raise AuditError("gradient_canceling: target_multiple sets the label-flip target's fraction; it needs target: label_flip")
        if self.params.start == "reach" and (why := self._reach_refused()) is not None:
            raise AuditError(f"gradient_canceling: start: reach needs {why}")

    def _reach_refused(self) -> str | None:
        """Why ``start: reach`` cannot run here (None: it can): it needs a two-class softmax regression on the features as
        given, the feature box and no sanitiser region."""
        layer = convex_linear_layer(self.target)
        plain = layer is not None and not isinstance(self.target, InputSpace) and layer.out_features == 2
        if not (plain and self.task == "classification" and loss_kind(self.target) == "cross_entropy"):
            return "a two-class softmax regression on the features as given (no preprocessing, no margin loss)"
        if self.lo is None or self.hi is None or self.params.region != "none":
            return "the feature box (box: data) and no sanitiser region"
        return None

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        search = getattr(self, "search", None)
        if search is None:
            return self._cancel(task)
        x_att, y_att = search.data.attacker_target()
        own_start = "start" in self.params.model_fields_set
        if not own_start and self._reach_refused() is None:
            # a search starts each run at the closest in-box distribution where that is exact (two classes): from sampled
            # starts it reached the label-flip targets far less often (examples/benchmarks/README.md, "Where the box
            # lets Gradient Canceling reach a target")
            self.params = self.params.model_copy(update={"start": "reach"})
        # elsewhere a label-flip target's run starts at the flip's own poisons at ε, which reach the target at ε up to its
        # training tolerance (the victim retrained on them is that target), and those poisons as they are are one more run:
        # from sampled starts the ten-class search fell below the flip itself at ρ = 0 and at ε = 30 %, and the descent
        # from the flip's poisons lowers the residual without always doing more damage (examples/benchmarks/README.md)
        witness = search.witness if not own_start and self.params.start == "sample" else None
        runs: list[tuple[nn.Module, dict, tuple[np.ndarray, np.ndarray] | None, str]] = [
            (t, o, witness, "label-flip poisons") if witness is not None and o.get("target") == "label_flip" else (t, o, None, self.params.start)
            for t, o in search.candidates
        ]
        at_eps = [(t, o) for t, o in search.candidates if o.get("target") == "label_flip" and o.get("target_eps") == min(1.0, self.budget)]
        if witness is not None and at_eps:
            runs.append((*at_eps[0], witness, "label-flip poisons, not moved"))
        tried: list[tuple[float, float, int, tuple[np.ndarray, np.ndarray], nn.Module, Any, dict]] = []
        table = []
        epochs = self.params.epochs
        for i, (target, origin, start, begun) in enumerate(runs):
            self.target = copy.deepcopy(target).eval()
            self.diagnostics.update(**{k: None for k in ("eps_w", "scale", "target_eps", "reach", "target_tau_box", "target_reach_residual", "note")})
            self.diagnostics.update(origin)
            self._start = start
            self.params = self.params.model_copy(update={"epochs": 0 if begun.endswith("not moved") else epochs})
            try:
                x_p, y_p = self._cancel(task)
            finally:
                self._start, self.params = None, self.params.model_copy(update={"epochs": epochs})
            shape = search.data.x_train.shape[1:]
            # scored as it will be kept: a table's poisons mapped into the feature domain (the refinement comes after)
            x_eval, mapped = self.domain.project(x_p) if self.domain is not None and self.domain.discrete else (x_p, None)
            retrained = search.retrain(np.concatenate([task.x, x_eval]).reshape(-1, *shape), np.concatenate([task.y, y_p]))
            score = float(retrained.metric(x_att, y_att))
            residual = float(self.diagnostics.relative_residual or 0.0)
            row = {"target": self.diagnostics.origin(), "start": begun, "relative_residual": residual, "attacker_metric": score}
            table.append({**row, "mapped": mapped})
            snapshot = {k: getattr(self.diagnostics, k) for k in SEARCH_FIELDS}
            tried.append((score, residual, i, (x_p, y_p), self.target, getattr(self, "_residual_terms", None), snapshot))
        score, _, i, (x_p, y_p), target, terms, snapshot = min(tried, key=lambda t: t[:3])
        self.target, self._residual_terms = target, terms
        self.diagnostics.update(**snapshot)
        self.describe_target(search.data)
        self.diagnostics.update(search=table, search_chosen=i)
        return x_p, y_p

    def _cancel(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 1 towards ``self.target``."""
        p = self.params
        device = task.device
        n, n_poison = len(task.x), task.n_poison
        eps = n_poison / n
        idx = task.rng.choice(n, size=n_poison, replace=n_poison > n)  # Algorithm 1, line 1
        xt = task.x_t
        yt = task.y_t
        labels = yt[torch.as_tensor(idx, device=device)]
        z = xt[torch.as_tensor(idx, device=device)].clone()
        given = getattr(self, "_start", None)  # target: search — poisons known to reach a label-flip target
        if given is not None:
            k = min(n_poison, len(given[1]))  # the rest (rounding) keep their sampled start
            z[:k] = task.tensor(given[0][:k].reshape(k, -1), torch.float32)
            labels[:k] = task.tensor(given[1][:k], labels.dtype)
        if self.task == "classification" and loss_kind(self.target) in MARGIN_LOSSES:
            # a hinge is flat where the margin holds: a sampled point that the target classifies with margin has zero
            # gradient in both W and z, so Algorithm 1 could never move it; each poison starts with the label of
            # largest loss under the target instead (its margin violated, its gradient live)
            with torch.no_grad():
                out = self.target(z)
                t = 2.0 * torch.eye(out.shape[1], dtype=out.dtype, device=device)[:, None, :] - 1.0  # (label, 1, output)
                labels = (1.0 - t * out[None]).clamp_min(0).pow(2).sum(2).argmax(0)
        if p.start == "reach":  # the closest in-box poison distribution (audit.maths.reach), then the descent below
            x_r, y_r, bounds = reach_poisons(self.target, task.x.reshape(n, -1), task.y, self.l2, self.lo, self.hi, n_poison)
            z, labels = task.tensor(x_r, torch.float32), task.tensor(y_r, torch.long)
            self.diagnostics.update(reach_residual=[bounds.lower, bounds.upper])
        lo = None if self.lo is None else task.tensor(self.lo, torch.float32)
        hi = None if self.hi is None else task.tensor(self.hi, torch.float32)
        for q in self.target.parameters():
            q.requires_grad_(True)
        g_mu = mean_gradient(self.target, xt, yt, self.task)
        reg = [(1 + eps) * self.l2 * q.detach() if q.ndim > 1 else torch.zeros_like(q) for q in self.target.parameters()]

        region = None
        if p.region != "none":  # the oracle sanitiser's region, fitted on the clean training set as the defense fits it
            c = int(self.n_classes or int(task.y.max()) + 1)
            region = sanitiser_region(p.region, task.x.reshape(n, -1), task.y, c, self.budget, p.region_quantile).shrunk(p.region_margin)
            with torch.no_grad():
                z.copy_(project_many(region, z, labels, lo, hi, iterations=50))
        z.requires_grad_(True)
        opt = torch.optim.SGD([z], lr=p.lr, momentum=p.momentum)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
        curve: list[tuple[int, float]] = []
        start = time.perf_counter()
        g_norm = math.nan
        relabelled = 0
        choose = p.labels == "choose" and self.task == "classification"
        keep_best = p.start == "reach" or given is not None  # a start at (or near) the optimum is kept unless bettered
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None  # the lowest ‖g(χ)‖ logged, its poisons
        # the squared hinge is flat where a poison's margin holds (a plateau of ‖g(χ)‖² where it contributes nothing):
        # its poisons are kept on active margins, start to end
        hinge_active = self.task == "classification" and loss_kind(self.target) in MARGIN_LOSSES
        if hinge_active:
            with torch.no_grad():
                z.copy_(keep_margins_active(self.target, z, labels, lo, hi))
        refit = p.refit_scalers and refits(self.target)  # a pipeline's scalers, refit on D_tr ∪ D_p by every retraining
        for epoch in self.progress(range(p.epochs + 1), "epochs"):
            if refit:
                live = z.detach().requires_grad_(True)
                r_graph = refit_residual(self.target, xt, yt, live, labels, self.task, reg, n)
                r = [t.detach() for t in r_graph]
            else:
                r = cancel_residual(self.target, z.detach(), labels, self.task, g_mu, reg, n, p.batch_size)
            if choose and epoch and epoch % p.relabel_every == 0 and epoch <= p.relabel_until * p.epochs:
                labels, changed = choose_labels(self.target, z.detach(), labels, r, n, int(self.n_classes or int(task.y.max()) + 1))
                if changed:
                    relabelled += changed
                    if refit:
                        r_graph = refit_residual(self.target, xt, yt, live, labels, self.task, reg, n)
                        r = [t.detach() for t in r_graph]
                    else:
                        r = cancel_residual(self.target, z.detach(), labels, self.task, g_mu, reg, n, p.batch_size)
            if epoch % p.log_every == 0 or epoch == p.epochs:  # the host reads ‖g(χ)‖ only here: no per-step device sync
                g_norm = float(flat_norm_tensor(r)) / (1 + eps)  # ‖g(χ)‖, χ the mixed distribution
                curve.append((epoch, g_norm))
                if not math.isfinite(g_norm):
                    raise RuntimeError(
                        f"Gradient Canceling diverged by epoch {epoch} (‖g(χ)‖ = {g_norm}); lower lr (now {p.lr}) or keep the feature box (box: data)"
                    )
                if keep_best and (best is None or g_norm < best[0]):
                    best = (g_norm, z.detach().clone(), labels.clone())
            if epoch == p.epochs:
                break
            if refit:  # ∂½‖r‖²/∂z through the poisons' terms and the scalers' statistics: (1/n)·∂/∂z per point, as eq. 34's
                half = 0.5 * sum((t * t).sum() for t in r_graph)
                grad = torch.autograd.grad(half, live)[0] / n  # type: ignore[arg-type]  # torch stubs
            else:
                grad = cancel_gradient(self.target, z.detach(), labels, self.task, r, n, p.batch_size)
            opt.zero_grad(set_to_none=True)
            z.grad = grad * n  # per-point gradient: eq. (34) without its 1/n (see the module docstring)
            opt.step()
            schedule.step()
            if region is not None:
                with torch.no_grad():
                    z.copy_(project_many(region, z, labels, lo, hi, iterations=10))  # Algorithm 1, line 6: onto the accepted region
            elif lo is not None and hi is not None:
                with torch.no_grad():
                    z.copy_(torch.maximum(torch.minimum(z, hi), lo))  # Algorithm 1, line 6
            if hinge_active:
                with torch.no_grad():
                    z.copy_(keep_margins_active(self.target, z, labels, lo, hi))
        if best is not None and best[0] < g_norm:
            g_norm, z, labels = best
            self.diagnostics.update(best_epoch=min(e for e, g in curve if g == g_norm))
        g0 = flat_norm([gm + rg for gm, rg in zip(g_mu, reg)])
        self._residual_terms = None if refit else (g_mu, reg, n, device)  # for domain_objective: the poisons' residual
        self.diagnostics.update(
            epochs=p.epochs,
            g_chi_curve=curve,
            g_chi_final=g_norm,
            g_mu_norm=g0,
            relative_residual=g_norm * (1 + eps) / max(g0, 1e-30),
            converged=bool(math.isfinite(g_norm) and g_norm * (1 + eps) <= 1e-3 * max(g0, 1e-30)),
            loop_seconds=time.perf_counter() - start,
            relabelled=relabelled if choose else None,
            refit_scalers=refit or None,
        )
        return z.detach().cpu().numpy(), labels.cpu().numpy()

    def domain_objective(self, x: np.ndarray, y: np.ndarray, y_p: np.ndarray) -> tuple[ValueAndGradient, Value] | None:
        """Algorithm 1's own objective for refining rounded poisons: ``−½‖r‖²``, ``r = g(μ) + ε·g(ν̂) + (1 + ε)ρW`` the
        residual at the poisons ``x_p`` (m, d) with labels ``y_p`` (:func:`cancel_residual`), its gradient eq. (34) with
        the sign turned; None where a pipeline's scalers refit (the residual then moves every clean point too)."""
        terms = getattr(self, "_residual_terms", None)
        if terms is None:
            return None
        g_mu, reg, n, device = terms
        labels = torch.as_tensor(y_p, device=device)
        labels = labels.long() if self.task == "classification" else labels.float()
        batch = self.params.batch_size

        def residual(x_p: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
            z = torch.as_tensor(x_p, dtype=torch.float32, device=device)
            return z, cancel_residual(self.target, z, labels, self.task, g_mu, reg, n, batch)

        def value_and_gradient(x_p: np.ndarray) -> tuple[float, np.ndarray]:
            z, r = residual(x_p)
            grad = cancel_gradient(self.target, z, labels, self.task, r, n, batch)
            return -0.5 * flat_norm(r) ** 2, -grad.detach().cpu().numpy()

        return value_and_gradient, lambda x_p: -0.5 * flat_norm(residual(x_p)[1]) ** 2


def choose_labels(
    module: nn.Module, z: torch.Tensor, labels: torch.Tensor, r: list[torch.Tensor], n: int, n_classes: int
) -> tuple[torch.Tensor, int]:
    """Each poison's label re-chosen to make the residual ``r`` (:func:`cancel_residual`) smallest, given the others.

    On the module's last ``nn.Linear`` (the whole model for softmax regression; for a network its output layer,
    on its input features) a poison's contribution to ``r`` is ``c_j(y) = (p_j − e_y) φ̃_jᵀ / n`` — ``p_j`` the
    softmax output (for the squared hinge ``p_j − e_y`` is its slope ``−2t_y ⊙ max(0, 1 − t_y ⊙ f_j)``),
    ``φ̃_j = [φ_j, 1]`` the layer's input (with the bias) — so the squared norm of the layer's
    part of ``r`` with poison j relabelled ``y`` is, in closed form, ``‖R₋ⱼ‖² + (2/n)(p_j − e_y)ᵀR₋ⱼφ̃_j +
    ‖p_j − e_y‖²‖φ̃_j‖²/n²`` with ``R₋ⱼ = R − c_j(y_j)``. One Gauss–Seidel pass: poisons in order, each taking its
    best label and ``R`` updated at once. Returns the new labels (m,) and how many changed. The other layers'
    part of ``r`` (a network's) is not in the score; it is recomputed by the caller after the pass.
    """
    layer = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            out = module(z).double()
    finally:
        handle.remove()
    eye = torch.eye(n_classes, dtype=out.dtype, device=out.device)
    if loss_kind(module) == "squared_hinge":  # ∂ℓ/∂f for label y: −2 t_y ⊙ max(0, 1 − t_y ⊙ f), t_y = 2e_y − 1
        t = 2.0 * eye[:, None, :] - 1.0  # (label, 1, c)
        slopes = (-2.0 * t * (1.0 - t * out[None]).clamp_min(0)).transpose(0, 1)  # (m, label, c)
    elif loss_kind(module) == "hinge":  # its subgradient: −t_y ⊙ 1[1 − t_y ⊙ f > 0]
        t = 2.0 * eye[:, None, :] - 1.0
        slopes = (-t * (1.0 - t * out[None] > 0).to(out.dtype)).transpose(0, 1)
    else:  # the softmax's p − e_y
        slopes = torch.softmax(out, dim=1)[:, None, :] - eye[None]
    phi = seen[0].reshape(len(z), -1).double()
    names = {id(q): i for i, q in enumerate(module.parameters())}
    big = r[names[id(layer.weight)]].detach().double()
    if layer.bias is not None:
        phi = torch.cat([phi, torch.ones(len(z), 1, dtype=phi.dtype, device=phi.device)], dim=1)
        big = torch.cat([big, r[names[id(layer.bias)]].detach().double().reshape(-1, 1)], dim=1)
    new = labels.clone()
    for j in range(len(z)):
        diff = slopes[j]  # (c, c): row y is ∂ℓ/∂f of poison j labelled y (p_j − e_y for the softmax)
        without = big - torch.outer(diff[new[j]], phi[j]) / n
        score = 2.0 / n * (diff @ (without @ phi[j])) + diff.pow(2).sum(1) * phi[j].pow(2).sum() / n**2
        best = int(torch.argmin(score))
        new[j] = best
        big = without + torch.outer(diff[best], phi[j]) / n
    return new, int((new != labels).sum())


def auto_target(
    fitted: Any, data: Any, eps: float, l2: float, eps_w_grid: list[float], steps: int, box: tuple[Any, Any] | None = None
) -> tuple[nn.Module, dict]:
    """The most damaging target the necessary condition does not rule out at budget ``eps``.

    For every ε_w of the grid a GradPC target is built (cached per fitted victim), its output
    layer scaled to the largest ``s ≤ 1`` with ``τ_ρ(2) ≤ ε`` (same predictions, smaller τ),
    and the one with the lowest accuracy on the attacker's split wins (ties: the larger scale). The
    attacker knows D_tr, so it can compute τ (README: threat model).

    ``box`` (lo, hi) and a linear target: reach is judged by the **box-aware** threshold instead
    (:func:`audit.maths.poisonability.box_threshold`, necessary for poisons inside the box): each target's scale is
    the largest of :data:`~audit.maths.poisonability.SCALES` whose box τ ≤ ε, and a target with no such scale is not
    chosen — an unbounded τ ≤ ε says nothing when the poisons must stay in the box. Where no target of the grid is
    within the box's reach, the unbounded choice is taken and the origin says so (``reach: unreachable``).
    """
    if data.task == "classification" and loss_kind(fitted.require_module("gradient_canceling")) in MARGIN_LOSSES:
        # τ (eq. 20, 29) is the cross-entropy's; the squared hinge's loss gradient is unbounded in x, as the squared
        # loss's is, so τ = 0 without a box and the most damaging GradPC target is taken unscaled
        target, result = target_by_gradpc(fitted, data, max(eps_w_grid), steps)
        return target, {"target": "gradpc", "eps_w": max(eps_w_grid), "note": "squared hinge (linear SVM): τ = 0 unbounded, no scaling"}
    if box is not None and data.task == "classification" and is_linear_model(fitted.require_module("gradient_canceling")):
        found = _box_target(fitted, data, eps, l2, eps_w_grid, steps, box)
        if found is not None:
            return found
        target, origin = auto_target(fitted, data, eps, l2, eps_w_grid, steps)
        return target, {**origin, "reach": "unreachable: no target of the grid has a box-aware τ ≤ ε; the unbounded choice"}
    if data.task != "classification":
        target, result = target_by_gradpc(fitted, data, max(eps_w_grid), steps)
        return target, {"target": "gradpc", "eps_w": max(eps_w_grid), "note": "squared loss: τ = 0, no scaling needed"}
    best: tuple[float, float, nn.Module, dict] | None = None
    for eps_w in eps_w_grid:
        base, _ = target_by_gradpc(fitted, data, eps_w, steps)
        s, th = scale_to_budget(base, data.x_train, data.y_train, l2, data.n_classes, eps)
        x_att, y_att = data.attacker_target()  # the attacker's own split (D_val only in the papers' setting)
        acc = module_metric(base, x_att, y_att, "classification")
        key = (acc, -s)
        if best is None or key < (best[0], best[1]):
            best = (acc, -s, base, {"target": "auto", "eps_w": eps_w, "scale": s, "target_tau_rho_2": th.tau_rho_2})
    assert best is not None
    return scale_output_layer(best[2], -best[1]), best[3]


def _box_target(
    fitted: Any, data: Any, eps: float, l2: float, eps_w_grid: list[float], steps: int, box: tuple[Any, Any], reach_delta: float = 0.01
) -> tuple[nn.Module, dict] | None:
    """:func:`auto_target` judged by the box-aware threshold; None when no target of the grid is within the box's reach.
    A two-class softmax regression must also pass the full stationarity condition: some in-box poison distribution
    of weight ε leaves a relative residual ≤ ``reach_delta`` (:func:`audit.maths.reach.reach_residual`, its upper bound:
    a target so chosen is reachable, not only not ruled out)."""
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (data.n_features,)) for b in box)
    x_att, y_att = data.attacker_target()
    module = fitted.require_module("gradient_canceling")
    layer = convex_linear_layer(module)
    full = layer is not None and layer.out_features == 2 and not isinstance(module, InputSpace)
    best: tuple[float, float, nn.Module, dict] | None = None
    for eps_w in eps_w_grid:
        base, _ = target_by_gradpc(fitted, data, eps_w, steps)
        acc = module_metric(base, x_att, y_att, "classification")
        if best is not None and acc > best[0]:
            continue  # cannot win: the scale keeps the predictions
        for s in (1.0, *sorted(SCALES, reverse=True)):  # the largest reachable scale
            target = scale_output_layer(base, s)
            th = box_threshold(target, data.x_train, data.y_train, l2, lo, hi, data.n_classes)
            if th.tau is None or th.tau > eps:
                continue
            origin = {"target": "auto", "eps_w": eps_w, "scale": s, "reach": "box", "target_tau_box": th.tau}
            if full:  # τ_box is necessary only: a two-class target must also pass the full condition (audit.maths.reach)
                bounds = reach_residual(target, data.x_train, data.y_train, l2, lo, hi, eps, stop=reach_delta)
                if bounds.upper > reach_delta:
                    continue
                origin = {**origin, "reach": "box, full condition", "target_reach_residual": bounds.upper}
            if best is None or (acc, -s) < (best[0], best[1]):
                best = (acc, -s, base, origin)
            break
    if best is None:
        return None
    return scale_output_layer(best[2], -best[1]), best[3]


#: the diagnostics of one run of a search that describe its target and its loop (restored for the run kept)
SEARCH_FIELDS = (
    "target", "eps_w", "scale", "target_eps", "target_tau_rho_2", "reach", "target_tau_box", "target_reach_residual", "note",
    "epochs", "g_chi_curve", "g_chi_final", "g_mu_norm", "relative_residual", "converged", "loop_seconds", "relabelled",
    "refit_scalers", "best_epoch", "reach_residual",
)  # fmt: skip


@dataclass
class Search:
    """``target: search``: the targets to attack, the dataset (its attacker split scores each run) and the attacker's
    retraining of the victim on ``D_tr ∪ D_p`` (its own seed, not the defender's)."""

    candidates: list[tuple[nn.Module, dict]]
    data: Any
    retrain: Callable[[np.ndarray, np.ndarray], Any]
    # the adversarial label flip's own poisons at the budget (features (n_p, ...), labels): a poison set that reaches the
    # label-flip target at ε exactly, so the label-flip targets' runs start there where no exact start exists
    witness: tuple[np.ndarray, np.ndarray] | None = None


def search_targets(ctx: AttackContext, p: GCParams) -> list[tuple[nn.Module, dict]]:
    """The targets ``target: search`` attacks: the auto target (by τ_ρ(2), the paper's), the box-aware one (where the
    model is linear and the poisons stay in the box) and the label-flip targets at min(1, k·ε), k in
    ``search_multiples`` (each budget once)."""
    fitted, data, l2, eps = ctx.fitted, ctx.dataset, ctx.candidate.rho, ctx.budget
    out = [auto_target(fitted, data, eps, l2, p.eps_w_grid, p.gradpc_steps)]
    if p.box == "data" and ctx.box is not None and is_linear_model(fitted.require_module("gradient_canceling")):
        found = _box_target(fitted, data, eps, l2, p.eps_w_grid, p.gradpc_steps, ctx.box)
        if found is not None:
            out.append(found)
    for k in sorted({min(1.0, k * eps) for k in p.search_multiples}):
        out.append(target_by_label_flip(ctx, k))
    return out


def target_by_label_flip(ctx: AttackContext, target_eps: float) -> tuple[nn.Module, dict]:
    """The model another attack produced: the victim retrained on an adversarial label flip at ``target_eps``.

    The KKT/i-Min-max attacks take their target this way (TGDA paper, appendix A); cached
    per fitted victim and ``target_eps``.
    """
    from audit.attacks.label_flip import LabelFlip

    data, fitted = ctx.dataset, ctx.fitted
    if data.task != "classification":
        raise AuditError("gradient_canceling target 'label_flip' needs a classification task")
    key = ("label_flip", target_eps)
    if key not in fitted.cache:
        flip = LabelFlip(fitted.query_art(), budget=target_eps, n_classes=data.n_classes, seed=ctx.seed, variant="adversarial")
        x_p, y_p = flip.poison(data.x_train, data.y_train)
        seed = int(ctx.seed) % (2**31)
        poisoned = ctx.victim.fit(np.concatenate([data.x_train, x_p]), np.concatenate([data.y_train, y_p]), ctx.hparams, seed)
        fitted.cache[key] = poisoned.require_module("gradient_canceling")
        fitted.cache[("label_flip_poisons", target_eps)] = (x_p, y_p)
    return copy.deepcopy(fitted.cache[key]).eval(), {"target": "label_flip", "target_eps": target_eps}


def label_flip_poisons(ctx: AttackContext, target_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The adversarial label flip's poisons at ``target_eps`` behind :func:`target_by_label_flip`'s target (features as
    the training set's, labels): the victim retrained on ``D_tr`` and these is that target, so they reach it."""
    target_by_label_flip(ctx, target_eps)  # fills the cache
    return ctx.fitted.cache[("label_flip_poisons", target_eps)]
