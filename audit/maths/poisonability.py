"""Poisonability thresholds τ and GradPC target models (lu-kamath-yu-2023).

Notation of the paper: ``g(μ)`` is the mean gradient of the loss over the clean training
set at a target model ``W``; ``a = ⟨W, g(μ)⟩``; ``κ_c = W₀((c−1)/e)`` (Lambert W,
principal branch).

* binary / margin losses: ``τ = a/κ₂`` — eq. (20), necessary and sufficient;
* multiclass cross-entropy: ``τ(c) = a/κ_c`` — eq. (29), necessary; the paper reports the
  more indicative ``τ(2) = a/κ₂`` (Table 2) — both are given, labelled;
* networks: the same on the last layer with penultimate features ``φ(x)`` in place of
  ``x`` — Theorem 4, eq. (A.16)/(A.17) with A = I — a necessary condition;
* squared loss: ``τ = 0`` (Example 1, poisonable at any ε);
* L2 strength ρ (README: How the audit works, the objective): ``τ_ρ = (a + ρ‖W‖²)/(κ − ρ‖W‖²)`` for ``ρ‖W‖² < κ``; when
  ``ρ‖W‖² ≥ κ`` no budget reaches a target with ``a + ρ‖W‖² > 0`` (a first reading said "any
  target"; those with ``a + ρ‖W‖² ≤ 0``, such as the clean model itself, stay reachable at
  small ε); ``‖W‖²`` over the regularized weights of the layer the condition uses.

With the bias absorbed into ``x`` (homogeneous coordinates), ``⟨W, g(μ)⟩`` equals
``E_μ ⟨h, p − y⟩`` where ``h`` are the logits and ``p = softmax(h)``: one pass over the data.

**Prediction-equivalent targets.** ``W`` and ``sW`` (output layer × s, s > 0) make the same
predictions; :func:`tau_over_scalings` reports the smallest τ over that ray. Unboxed, it tends
to 0 as s → 0 (``a = O(s)``, ``ρ‖sW‖² = O(s²)``, κ fixed).

**Box-aware threshold** (:func:`box_threshold`). Write ``q(x, y) = ⟨h(x), p(x) − e_y⟩`` for a
poison ``(x, y)``, ``r = ρ‖W‖²`` and ``λ = ε/(1+ε)``. The target minimises the poisoned
regularized objective iff ``(1−λ)a + λ E_ν q + r = 0`` for some poison distribution ν. With
poisons confined to the feature box, ``E_ν q`` ranges over ``[m, M]``, the range of q over
box × labels, so a solution exists iff ``(1−λ)a + λm ≤ −r ≤ (1−λ)a + λM``; multiplying by
``1 + ε``:

* (B1) ``a + r ≤ ε(κ_box − r)``, ``κ_box = −m`` — the unbounded condition with κ → κ_box;
* (B2) ``a + r + ε(M + r) ≥ 0`` — vacuous unboxed (M = +∞), binding when ``a + r < 0``.

(B3) Two logits: ``q = φ(t) = −t·σ(−t)`` of the margin ``t = h_y − h_other``, affine in x,
so t ranges over an interval over the box (per label). φ decreases to its minimum
``−W(1/e) = −κ₂`` at ``t* = 1 + W(1/e)``, then rises to 0⁻; as ``t → −∞`` it grows without
bound. Hence ``m = −κ₂`` if t* lies in the interval, else φ at the nearer end, and ``M`` is φ
at an end — exact. (B1)–(B2) are then exactly the stationarity condition *projected on W*; they are
still only necessary: the full condition ``g(μ) + ε·E_ν∇ℓ + (1 + ε)ρW_reg = 0`` has a component per
parameter, and in the box the poisons' gradients ``(p − e_y) ⊗ [x; 1]`` may not reach the other
directions at that budget (unboxed, x's freedom does: eq. 20's sufficiency). Measured on ``or2d``
(ρ = 0.01, GradPC ε_w = 0.3, output × 0.1): box-aware τ = 0.222, while a brute-force LP over a
300 × 300 grid of the box × both labels finds the full condition feasible only from ε ≈ 0.35
(examples/benchmarks/README.md, "Gradient Canceling choosing its poisons' labels").

(B4) c ≥ 3 logits: ``q = Σ_k p_k d_k`` with ``d_k = h_k − h_y`` (``d_y = 0``) is a convex
combination of the ``d_k``, and unboxed ``q ≥ −κ_c``; with the box bounds ``[l_k, u_k]`` of
each affine ``d_k``: ``max(−κ_c, min(0, min_k l_k)) ≤ q ≤ max(0, max_k u_k)``. An outer
bound on [m, M], so the threshold stays necessary (it is marked "bound" in the report).
Because ``κ_box ≤ κ``, the box-aware τ is never below the unbounded one with the same κ (κ₂ for two
classes; κ_c, i.e. τ_ρ(c), for more — it can sit below the indicative τ_ρ(2)).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.special import lambertw
from torch import nn
from torch.nn import functional as F

from audit.models.structure import is_linear_model, last_linear
from audit.models.training import data_loss, loss_kind


def kappa(c: int) -> float:
    """κ_c = W₀((c − 1)/e); κ₂ = W(1/e) ≈ 0.2785 (eq. 18 and A.8–A.12)."""
    return float(lambertw((c - 1) / math.e, 0).real)


@torch.no_grad()
def margin_term(module: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> float:
    """``a = E_μ ⟨h, p − y⟩`` = ⟨W, g(μ)⟩ of the output layer (bias included), eq. (27)–(28)."""
    total = 0.0
    for start in range(0, len(y), chunk):
        h = module(x[start : start + chunk]).double()
        p = torch.softmax(h, dim=1)
        onehot = F.one_hot(y[start : start + chunk], h.shape[1]).double()
        total += float(((p - onehot) * h).sum())
    return total / len(y)


@dataclass
class Threshold:
    """The poisonability thresholds of one target model (see the module docstring).

    ``tau_2`` is ``a/κ₂``; ``tau_c`` is ``a/κ_c`` (necessary, multiclass); the ``_rho``
    variants include the L2 term and are None when the target is unreachable at any budget.
    A τ ≤ 0 means "reachable at any ε > 0".
    """

    loss: str
    condition: str
    n_classes: int | None
    a: float
    l2: float
    w_norm_sq: float
    kappa_2: float | None
    kappa_c: float | None
    tau_2: float
    tau_c: float
    tau_rho_2: float | None
    tau_rho_c: float | None
    unreachable: bool
    eps_upper_2: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tau(self) -> float | None:
        """The figure the audit plots: τ_ρ(2) (the paper's indicative τ, with L2); None when unreachable."""
        return self.tau_rho_2


def tau_rho(a: float, r: float, k: float) -> float | None:
    """Smallest budget that can reach the target under L2: ``(a + r)/(κ − r)`` with ``r = ρ‖W‖²``.

    From ``(1 − λ)a + λ⟨W, g(ν)⟩ + r = 0`` and ``⟨W, g(ν)⟩ ≥ −κ`` the condition is
    ``a + r ≤ ε(κ − r)``. For ``r < κ`` that is ``ε ≥ τ_ρ``. For ``r ≥ κ`` it holds only
    when ``a + r ≤ 0`` (and then for small ε only, see :func:`eps_upper`): None when no
    budget reaches the target, 0.0 when small budgets do.
    """
    if r < k:
        return (a + r) / (k - r)
    return 0.0 if _nonpositive(a + r, abs(a) + r) else None


def _nonpositive(value: float, scale: float) -> bool:
    """``value ≤ 0`` up to the solver's precision: at a minimiser a + ρ‖W‖² is 0 only to ~1e-5."""
    return value <= 1e-3 * scale


def eps_upper(a: float, r: float, k: float) -> float | None:
    """For ``r > κ`` and ``a + r ≤ 0`` the target is reachable only for ``ε ≤ (a + r)/(κ − r)``; else None."""
    if r > k and _nonpositive(a + r, abs(a) + r):
        return min(a + r, 0.0) / (k - r)
    return None


def thresholds(module: nn.Module, x: np.ndarray, y: np.ndarray, task: str, l2: float = 0.0, n_classes: int | None = None) -> Threshold:
    """τ of target ``module`` against the clean training set ``(x, y)`` (one pass, no training).

    Parameters
    ----------
    module : nn.Module
        The target model W (logits for classification).
    x, y : ndarray, shapes (n, d) and (n,)
        The clean training set μ.
    l2 : float
        ρ of the victim's objective; 0 gives the paper's τ.
    """
    if task == "regression":  # Example 1: l'(t, y) = t − y spans ℝ, so a = −∞, b = ∞
        return Threshold(
            "squared", "exact (Example 1): squared loss is poisonable at any ε", None, 0.0, l2, 0.0, None, None, 0.0, 0.0, 0.0, 0.0, False
        )
    device = next(module.parameters()).device
    module.eval()
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    c = int(n_classes or module(xt[:1]).shape[1])
    a = margin_term(module, xt, yt)
    w_sq = float(last_linear(module).weight.detach().double().pow(2).sum())
    k2, kc = kappa(2), kappa(c)
    r = l2 * w_sq
    linear = is_linear_model(module)
    if linear and c == 2:
        condition = "exact (eq. 20): binary logistic regression"
    elif linear:
        condition = "τ(c) necessary (eq. 29), τ(2) the paper's indicative figure (Table 2)"
    else:
        condition = "necessary only: last layer on penultimate features (Theorem 4, eq. A.16)"
    return Threshold(
        loss="cross_entropy",
        condition=condition,
        n_classes=c,
        a=a,
        l2=l2,
        w_norm_sq=w_sq,
        kappa_2=k2,
        kappa_c=kc,
        tau_2=a / k2,
        tau_c=a / kc,
        tau_rho_2=tau_rho(a, r, k2),
        tau_rho_c=tau_rho(a, r, kc),
        unreachable=tau_rho(a, r, kc) is None,
        eps_upper_2=eps_upper(a, r, k2),
    )


@torch.no_grad()
def module_metric(module: nn.Module, x: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy in percent (classification) or MSE (regression) of a bare module."""
    device = next(module.parameters()).device
    out = module(torch.as_tensor(x, dtype=torch.float32, device=device)).cpu().numpy()
    if task == "classification":
        return float(100.0 * np.mean(out.argmax(1) == y))
    return float(np.mean((out.reshape(-1) - y) ** 2))


# --------------------------------------------------------------------------- GradPC
@dataclass
class GradPCResult:
    """How the GradPC ascent ended."""

    eps_w: float
    steps: int
    val_loss_clean: float
    val_loss_target: float
    relative_change: float
    best_step: int


def gradpc(
    module: nn.Module,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task: str,
    eps_w: float,
    steps: int = 100,
    step_scale: float = 2.5,
) -> tuple[nn.Module, GradPCResult]:
    """Gradient parameter corruption (Sun et al. 2020): a target model by projected gradient ascent.

    Maximises the validation loss over ``θ' = θ + Δ`` with ``‖Δ‖₂ ≤ ε_w·‖θ‖₂`` (all
    parameters, one global norm). Normalised-gradient steps of size
    ``step_scale·ε_w·‖θ‖/steps`` with projection onto the ball; the iterate with the
    highest validation loss is returned. Deterministic (full batch on ``D_val``).

    Returns
    -------
    target : nn.Module
        A corrupted copy of ``module`` (``module`` is not modified).
    result : GradPCResult
    """
    if not eps_w > 0:
        raise ValueError(f"eps_w must be > 0 (got {eps_w})")
    target = copy.deepcopy(module).eval()
    params = [p for p in target.parameters()]
    theta0 = [p.detach().clone() for p in params]
    radius = eps_w * float(torch.sqrt(sum(p.pow(2).sum() for p in theta0)))  # type: ignore[arg-type]  # torch/numpy stubs
    step = step_scale * radius / steps
    device = params[0].device
    xv = torch.as_tensor(x_val, dtype=torch.float32, device=device)
    yv = torch.as_tensor(y_val, dtype=torch.long if task == "classification" else torch.float32, device=device)

    def val_loss() -> torch.Tensor:
        return data_loss(target(xv), yv, task, kind=loss_kind(target))

    with torch.no_grad():
        clean_loss = float(val_loss())
    best, best_loss, best_step = [p.clone() for p in theta0], clean_loss, 0
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(val_loss(), params)
        gnorm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))  # type: ignore[arg-type]  # torch/numpy stubs
        if gnorm == 0:
            break
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=step / gnorm)
            delta_norm = float(torch.sqrt(sum((p - p0).pow(2).sum() for p, p0 in zip(params, theta0))))  # type: ignore[arg-type]  # torch/numpy stubs
            if delta_norm > radius:  # project Δ onto the ball ‖Δ‖ ≤ ε_w‖θ‖
                for p, p0 in zip(params, theta0):
                    p.copy_(p0 + (p - p0) * (radius / delta_norm))
            loss = float(val_loss())
            if loss > best_loss:
                best, best_loss, best_step = [p.clone() for p in params], loss, t
    with torch.no_grad():
        for p, b in zip(params, best):
            p.copy_(b)
        change = float(torch.sqrt(sum((p - p0).pow(2).sum() for p, p0 in zip(params, theta0)))) / max(radius / eps_w, 1e-30)  # type: ignore[arg-type]  # torch/numpy stubs
    return target, GradPCResult(eps_w, steps, clean_loss, best_loss, change, best_step)


# --------------------------------------------------------------------------- target selection
def scale_output_layer(module: nn.Module, s: float) -> nn.Module:
    """A copy with the output layer (weights and bias) multiplied by ``s > 0``.

    Predictions (argmax) are unchanged, while ``a = E⟨h, p − y⟩`` shrinks with ``s``: a
    target with the same accuracy and a smaller τ.
    """
    out = copy.deepcopy(module)
    with torch.no_grad():
        for p in last_linear(out).parameters():
            p.mul_(s)
    return out


def scale_to_budget(
    module: nn.Module, x: np.ndarray, y: np.ndarray, l2: float, n_classes: int | None, eps: float, iters: int = 30
) -> tuple[float, Threshold]:
    """Largest output-layer scale ``s ∈ (0, 1]`` with ``τ_ρ(2)(s) ≤ eps`` (bisection on log s)."""

    def th(s: float) -> Threshold:
        return thresholds(scale_output_layer(module, s), x, y, "classification", l2, n_classes)

    def ok(t: Threshold) -> bool:
        return t.tau_rho_2 is not None and t.tau_rho_2 <= eps

    full = th(1.0)
    if ok(full):
        return 1.0, full
    lo, hi = -12.0, 0.0  # log10 s
    best = (10**lo, th(10**lo))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        t = th(10**mid)
        if ok(t):
            lo, best = mid, (10**mid, t)
        else:
            hi = mid
    return best


@dataclass
class BoxThreshold:
    """The budget a target needs when every poison must lie in the feature box ``[lo, hi]``.

    ``m``/``M``: the smallest/largest value of ``⟨h(x), p(x) − e_y⟩`` over poisons ``(x, y)``
    in the box (exact for binary logistic regression, a valid outer bound otherwise);
    ``kappa_box = −m`` replaces the unbounded ``κ``. ``tau`` is the smallest budget meeting
    both conditions of :func:`box_threshold` (None: unreachable at any budget), ``eps_upper``
    the largest (None: no upper limit). ``exact`` says whether m and M are exact; ``tau`` is a necessary
    budget either way (the projected condition, module docstring (B3)), never a sufficient one.
    """

    m: float
    M: float
    kappa_box: float
    tau: float | None
    eps_upper: float | None
    exact: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _phi(t: np.ndarray) -> np.ndarray:
    """``⟨h, p − e_y⟩`` of a two-logit model as a function of the margin ``t = h_y − h_other``: ``−t·σ(−t)``."""
    return -t * (1.0 / (1.0 + np.exp(np.clip(t, -700, 700))))


T_STAR = 1.0 + float(lambertw(1 / math.e, 0).real)  # argmin of −t·σ(−t); the minimum is −W(1/e) = −κ₂


def logit_differences(module: nn.Module, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For a linear model, bounds of ``d_k(x) = h_k(x) − h_y(x)`` over the box, shape (c, c, 2): ``[y, k] → (min, max)``.

    ``d_k`` is affine in x, ``(W_k − W_y)·x + (b_k − b_y)``, so its range over a box is the sum over
    features of the smaller/larger of the coefficient times ``lo_j`` and ``hi_j``.
    """
    layer = last_linear(module)
    w = layer.weight.detach().double().cpu().numpy()
    b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(w.shape[0])
    diff = w[None, :, :] - w[:, None, :]  # [y, k, j] = W_k − W_y
    db = b[None, :] - b[:, None]
    lo_, hi_ = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    low = db + np.minimum(diff * lo_, diff * hi_).sum(axis=2)
    high = db + np.maximum(diff * lo_, diff * hi_).sum(axis=2)
    return np.stack([low, high], axis=2)


def _feasible(s: float, k: float, q: float) -> tuple[float, float]:
    """The ε ≥ 0 with ``s ≤ ε·k`` (B1) and ``s + ε·q ≥ 0`` (B2), as ``[lower, upper]`` (empty when lower > upper)."""
    lower, upper = 0.0, math.inf
    for coef, rhs in ((k, s), (q, -s)):  # both read  coef·ε ≥ rhs
        if coef > 0:
            lower = max(lower, rhs / coef)
        elif coef < 0:
            upper = min(upper, rhs / coef)
        elif rhs > 0:
            return math.inf, -math.inf
    return lower, upper


def box_threshold(
    module: nn.Module, x: np.ndarray, y: np.ndarray, l2: float, lo: np.ndarray, hi: np.ndarray, n_classes: int | None = None
) -> BoxThreshold:
    """The box-aware poisonability threshold of a linear target (derivation in the module docstring, eq. B1–B4).

    With ``a = ⟨W, g(μ)⟩``, ``r = ρ‖W‖²``, ``λ = ε/(1+ε)`` and the poisons' values of
    ``q(x, y) = ⟨h(x), p(x) − e_y⟩`` confined to ``[m, M]`` by the box, the regularized
    stationarity condition ``(1−λ)a + λ⟨W, g(ν)⟩ + r = 0`` has a solution iff
    ``(1−λ)a + λm ≤ −r ≤ (1−λ)a + λM``, i.e.

    * (B1) ``a + r ≤ ε(κ_box − r)`` with ``κ_box = −m``, and
    * (B2) ``a + r + ε(M + r) ≥ 0``.

    Without a box ``m = −κ`` and ``M = +∞`` and (B1) is the unbounded threshold. Binary
    (two logits): ``q = φ(t) = −t·σ(−t)`` of the margin ``t = h_y − h_other``, which ranges over
    an interval over the box; φ has one minimum (−κ₂ at ``t* = 1 + W(1/e)``) and tends to +∞ as
    ``t → −∞``, so m is φ at ``t*`` if inside the interval, else at the nearer end, and M is φ at
    an end (eq. B3): exact. Multiclass: q is a convex combination of the ``d_k = h_k − h_y``
    (with ``d_y = 0``), so ``max(−κ_c, min(0, min_k d_k)) ≤ q ≤ max(0, max_k d_k)`` with the
    box bounds of each ``d_k`` (eq. B4): a valid, outer bound — the threshold stays necessary.
    """
    device = next(module.parameters()).device
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    a = margin_term(module, xt, yt)
    r = l2 * float(last_linear(module).weight.detach().double().pow(2).sum())
    bounds = logit_differences(module, lo, hi)
    c = bounds.shape[0]
    if c == 2:
        ms, Ms = [], []
        for label in (0, 1):
            other = 1 - label
            t_lo, t_hi = -bounds[label, other, 1], -bounds[label, other, 0]  # t = −d_other
            ends = _phi(np.array([t_lo, t_hi]))
            ms.append(float(-kappa(2)) if t_lo <= T_STAR <= t_hi else float(ends.min()))
            Ms.append(float(ends.max()))
        m, M, exact = min(ms), max(Ms), True
    else:
        kc = kappa(int(n_classes or c))
        low = np.where(np.eye(c, dtype=bool), 0.0, bounds[:, :, 0]).min(axis=1)  # per label y: min over k of min d_k
        high = np.where(np.eye(c, dtype=bool), 0.0, bounds[:, :, 1]).max(axis=1)
        m, M, exact = max(-kc, float(np.minimum(0.0, low).min())), float(np.maximum(0.0, high).max()), False
    k_box = -m
    lower, upper = _feasible(a + r, k_box - r, M + r)
    if upper < lower or upper <= 0:
        return BoxThreshold(m, M, k_box, None, None, exact)
    return BoxThreshold(m, M, k_box, lower, None if math.isinf(upper) else upper, exact)


#: output-layer scales searched for the prediction-equivalent threshold: 10^-3 … 1, 61 points
SCALES = tuple(float(s) for s in np.logspace(-3.0, 0.0, 61))


T = TypeVar("T")


def _min_over_scalings(
    module: nn.Module, scales: tuple[float, ...], threshold: Callable[[nn.Module], T], tau: Callable[[T], float | None]
) -> tuple[float, T]:
    """The scale s ∈ {1} ∪ ``scales`` whose output-layer-scaled target has the smallest τ (None counts as +∞)."""

    def key(t: T) -> float:
        value = tau(t)
        return math.inf if value is None else value

    best_s, best = 1.0, threshold(module)
    for s in scales:
        t = threshold(scale_output_layer(module, s))
        if key(t) < key(best):
            best_s, best = s, t
    return best_s, best


def tau_over_scalings(
    module: nn.Module, x: np.ndarray, y: np.ndarray, l2: float, n_classes: int | None, scales: tuple[float, ...] = SCALES
) -> tuple[float, Threshold]:
    """The smallest τ_ρ(2) among targets with the *same predictions*: the output layer (weights and
    bias) scaled by ``s ∈ (0, 1]`` keeps every argmax, while ``a = E⟨h, p − y⟩`` and ``ρ‖W‖²`` change.

    A threshold speaks about one parameter vector; the damage (the predictions) is shared by
    the whole ray ``sW``. Returns the scale attaining the minimum over ``scales`` and its
    :class:`Threshold` (an unreachable scale counts as +∞). As ``s → 0`` both terms vanish, so
    the minimum tends to 0: *some* model with the target's predictions is reachable by a
    tiny budget when poisons may lie anywhere — the unbounded threshold alone cannot certify
    that a prediction-level damage is out of reach (the box-aware bound is what can).
    """

    return _min_over_scalings(module, scales, lambda m: thresholds(m, x, y, "classification", l2, n_classes), lambda t: t.tau_rho_2)


def min_box_threshold(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    lo: np.ndarray,
    hi: np.ndarray,
    n_classes: int | None,
    scales: tuple[float, ...] = SCALES[::3],
) -> tuple[float, BoxThreshold]:
    """The box-aware threshold minimised over the prediction-equivalent targets (output layer × s), as
    :func:`tau_over_scalings` does for the unbounded one; unlike that one it need not vanish as ``s → 0``
    (``a`` and ``κ_box`` shrink together)."""

    return _min_over_scalings(module, scales, lambda m: box_threshold(m, x, y, l2, lo, hi, n_classes), lambda t: t.tau)


def gradpc_target(fitted: Any, data: Any, eps_w: float, steps: int) -> tuple[nn.Module, GradPCResult]:
    """The GradPC target of a fitted torch victim, cached in ``fitted.cache`` (budgets and attacks share it).

    Parameters
    ----------
    fitted : audit.models.Fitted
        A trained torch victim.
    data : audit.data.Dataset
        Its dataset; GradPC ascends the loss on the attacker's target set (``data.attacker_target()``: D_att,
        or D_val in the papers' setting).
    eps_w, steps : float, int
        Relative parameter budget ‖Δ‖ ≤ ε_w‖θ‖ and the number of ascent steps.
    """
    key = ("gradpc", eps_w, steps)
    if key not in fitted.cache:
        module = fitted.require_module("GradPC")
        x_att, y_att = data.attacker_target()
        fitted.cache[key] = gradpc(module, x_att, y_att, data.task, eps_w, steps=steps)
    return fitted.cache[key]


def target_thresholds(
    target: nn.Module, x: np.ndarray, y: np.ndarray, task: str, l2: float, n_classes: int | None, lo: np.ndarray, hi: np.ndarray
) -> dict[str, Any]:
    """Every threshold of one target model, as stored (:attr:`Threshold.as_dict` plus): for a classifier the smallest
    τ_ρ(2) over the target's prediction-equivalent scalings sW (:func:`tau_over_scalings`), and for a linear one the
    box-aware (necessary) threshold for poisons inside ``[lo, hi]`` (:func:`box_threshold`, eq. B3) and its minimum
    over the scalings (:func:`min_box_threshold`).

    ``x`` (n, d), ``y`` (n,): the clean training set; ``l2``: ρ the victim trains with."""
    th = thresholds(target, x, y, task, l2, n_classes).as_dict()
    if task != "classification":
        return th
    scale, scaled = tau_over_scalings(target, x, y, l2, n_classes)
    th.update(tau_rho_2_same_predictions=scaled.tau_rho_2, same_predictions_scale=scale)
    if is_linear_model(target):
        box = box_threshold(target, x, y, l2, lo, hi, n_classes)
        same = min_box_threshold(target, x, y, l2, lo, hi, n_classes)
        th.update(
            tau_box=box.tau,
            tau_box_exact=box.exact,
            kappa_box=box.kappa_box,
            tau_box_same_predictions=same[1].tau,
            box_same_predictions_scale=same[0],
        )
    return th
