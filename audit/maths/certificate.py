"""The online-learning min-max attack and certified upper bound (Steinhardt, Koh & Liang 2017, Alg. 1).

Victim: softmax regression ``z = Wx + b`` (c classes; c = 2 is logistic regression) trained on
``D_c ∪ D_p`` (n clean points, m = εn poisons) by minimising the audit's objective, the mean
loss + (ρ/2)‖W‖². Times (n + m)/n it is

    F(θ; D_p) = L_c(θ) + ε·L_p(θ) + (1 + ε)(ρ/2)‖W‖²,   L_c, L_p: mean cross-entropy on D_c, D_p.

For poisons anywhere in the acceptance region F_y of their label (sphere, slab and feature
box: :mod:`audit.maths.regions`), every θ gives

    min_θ' F(θ'; D_p)  ≤  U(θ) = L_c(θ) + (1 + ε)(ρ/2)‖W‖² + ε · max_y max_{x ∈ F_y} ℓ(θ; x, y)      (eq. 5)

so the model θ̂ the defender learns from D_c ∪ D_p for *any* such D_p has ``L_c(θ̂) +
(1 + ε)(ρ/2)‖Ŵ‖² ≤ U* = min_t U(θ_t)`` (ℓ ≥ 0): the certified bound on the clean training loss
(regularised) an attacker within the threat model can force — with every clean point kept,
as Steinhardt et al.'s oracle defense keeps them; a real filter that also discards clean
points is outside this model (measured: examples/benchmarks/README.md). Online gradient descent on U (Algorithm 1)
picks at each round the feasible point of largest loss under the current θ — those points are
the min-max attack — and steps ``θ ← θ − η ∇[L_c + (1 + ε)(ρ/2)‖W‖² + ε ℓ(θ; x_t, y_t)]``.

The inner maximum: ``ℓ(θ; x, y) = log(1 + Σ_{k≠y} exp(z_k − z_y))`` increases in every margin
``z_k − z_y = ⟨W_k − W_y, x⟩ + b_k − b_y``, which is linear in x: each is maximised exactly over
F_y (:func:`audit.maths.regions.max_linear`). For c = 2 that gives the maximum loss; for
c > 2 the attack takes the best of the c − 1 maximisers and the bound uses
``log(1 + Σ_k exp(max_x (z_k − z_y)))`` ≥ the maximum, so U stays an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn

from audit.maths.regions import AcceptanceRegion, max_linear
from audit.models.structure import convex_linear_layer, is_convex_linear, layer_inputs
from audit.models.training import loss_kind


@dataclass
class MinMaxResult:
    """The poisons ``x`` (m, d), ``y`` (m,), the certified bound ``bound`` = U* and its round,
    U(θ_t) and L_c(θ_t) per round, and the largest duality gap of the inner maximisations."""

    x: np.ndarray
    y: np.ndarray
    bound: float
    bound_round: int
    bounds: list[float] = field(default_factory=list)
    clean_losses: list[float] = field(default_factory=list)
    max_gap: float = 0.0


def softmax_loss(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point cross-entropy (n,) of ``z = x Wᵀ + b`` (W (c, d), b (c,))."""
    z = x @ w.T + b
    return logsumexp(z, axis=1) - z[np.arange(len(y)), y]


def regularised_clean_loss(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float, eps: float) -> float:
    """``L_c(θ) + (1 + ε)(ρ/2)‖W‖²`` on the clean points ``(x, y)``: what the bound ``U*`` bounds (eq. 5).

    Shapes: ``w`` (c, d), ``b`` (c,), ``x`` (n, d), ``y`` (n,).
    """
    return float(softmax_loss(w, b, x, y).mean() + (1.0 + eps) * 0.5 * l2 * float(np.sum(w**2)))


def _gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the *mean* cross-entropy over ``(x, y)`` with respect to (W, b)."""
    z = x @ w.T + b
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(axis=0)


def online_minmax(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    region: AcceptanceRegion,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    l2: float,
    n_poison: int,
    w0: np.ndarray,
    b0: np.ndarray,
    lr: float | None = None,
    rounds: int | None = None,
) -> MinMaxResult:
    """Algorithm 1 from ``(w0, b0)`` (usually the clean model): the poisons are the points of the
    first ``n_poison`` rounds; ``rounds`` (≥ n_poison; default n_poison) continues the descent on U
    to tighten the bound U* = min_t U(θ_t) (every θ_t gives a valid bound).

    Parameters
    ----------
    x, y : ndarray, shapes (n, d) and (n,)
        The clean training set D_c.
    region : AcceptanceRegion
        Where a poison of each label must lie to survive (with the box ``lo``, ``hi``).
    l2 : float
        ρ of the victim's objective.
    lr : float or None
        η; None: ``1 / L`` with ``L = ½(λ_max(E[(x,1)(x,1)ᵀ]) + ε·R²) + (1 + ε)ρ``, a smoothness bound
        of F (R bounds a poison's norm: the box's farthest corner or the sphere's far side).
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.int64)
    n, d = x.shape
    eps = n_poison / n
    w, b = np.array(w0, dtype=np.float64).reshape(n_classes, d), np.array(b0, dtype=np.float64).reshape(n_classes)
    if lr is None:  # 1/L: L bounds the Hessian of L_c (½λ_max of the second moment of (x, 1)) plus the poison term's
        ones = np.c_[x, np.ones(n)]
        second = float(np.linalg.eigvalsh(ones.T @ ones / n)[-1])
        reach = [float(np.sum(np.maximum(np.abs(lo), np.abs(hi)) ** 2))] if lo is not None and hi is not None else []
        if region.radii is not None:
            reach.append(float(np.max((np.linalg.norm(region.centroids, axis=1) + region.radii) ** 2)))
        poison = min(reach) + 1.0 if reach else second
        lr = 1.0 / (0.5 * (second + eps * poison) + (1.0 + eps) * l2)
    result = MinMaxResult(x=np.zeros((n_poison, d)), y=np.zeros(n_poison, dtype=np.int64), bound=np.inf, bound_round=-1)
    total = max(n_poison, rounds or 0)
    for t in range(total):
        best: tuple[float, np.ndarray, int] | None = None
        worst_upper = 0.0
        for label in range(n_classes):
            margins = []
            for k in range(n_classes):
                if k == label:
                    continue
                lm = max_linear(w[k] - w[label], region, label, lo, hi)
                result.max_gap = max(result.max_gap, lm.bound - lm.value)
                margins.append(lm.bound + b[k] - b[label])
                loss = float(softmax_loss(w, b, lm.x[None], np.array([label]))[0])
                if best is None or loss > best[0]:
                    best = (loss, lm.x, label)
            worst_upper = max(worst_upper, float(np.logaddexp(0.0, logsumexp(margins))))
        assert best is not None
        clean = float(softmax_loss(w, b, x, y).mean())
        upper = clean + (1.0 + eps) * 0.5 * l2 * float(np.sum(w**2)) + eps * worst_upper
        result.bounds.append(upper)
        result.clean_losses.append(clean)
        if upper < result.bound:
            result.bound, result.bound_round = upper, t
        _, xt, yt = best
        if t < n_poison:
            result.x[t], result.y[t] = xt, yt
        gw, gb = _gradient(w, b, x, y)
        pw, pb = _gradient(w, b, xt[None], np.array([yt]))
        w = w - lr * (gw + eps * pw + (1.0 + eps) * l2 * w)
        b = b - lr * (gb + eps * pb)
    return result


# ---------------------------------------------------------------------------- ridge (squared loss)
def squared_loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point ``½(y − ⟨w, x⟩ − b)²`` (n,): the audit's regression loss (``w`` (d,), ``x`` (n, d))."""
    return 0.5 * (y - x @ w - b) ** 2


def regularised_clean_squared_loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, l2: float, eps: float) -> float:
    """``L_c(θ) + (1 + ε)(ρ/2)‖w‖²`` for ridge: what :func:`online_minmax_ridge`'s ``U*`` bounds."""
    return float(squared_loss(w, b, x, y).mean() + (1.0 + eps) * 0.5 * l2 * float(w @ w))


def worst_box_point(w: np.ndarray, b: float, lo: np.ndarray, hi: np.ndarray, y_lo: float, y_hi: float) -> tuple[np.ndarray, float, float]:
    """``max ½(y − ⟨w, x⟩ − b)²`` over ``x ∈ [lo, hi]`` and ``y ∈ [y_lo, y_hi]``, exactly: the residual is
    linear, so its largest magnitude is at ``x`` maximising ⟨w, x⟩ with ``y = y_lo`` or minimising it
    with ``y = y_hi``. Returns the maximiser ``(x, y)`` and the maximum."""
    top, bottom = np.where(w > 0, hi, lo), np.where(w > 0, lo, hi)
    up, down = float(top @ w) + b - y_lo, y_hi - float(bottom @ w) - b
    return (top, y_lo, 0.5 * up**2) if up >= down else (bottom, y_hi, 0.5 * down**2)


def online_minmax_ridge(
    x: np.ndarray,
    y: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    y_range: tuple[float, float],
    l2: float,
    n_poison: int,
    w0: np.ndarray,
    b0: float,
    lr: float | None = None,
    rounds: int | None = None,
) -> MinMaxResult:
    """Algorithm 1 for ridge regression with poisons in the feature box × response range (no sanitiser).

    The same certificate as for softmax regression (module docstring, eq. 5) with the squared
    loss: ``U(θ) = L_c(θ) + (1 + ε)(ρ/2)‖w‖² + ε·max_{x, y} ½(y − ⟨w, x⟩ − b)²``, the inner maximum
    exact (:func:`worst_box_point`); ``U* = min_t U(θ_t)`` bounds the regularised clean training
    loss of the ridge model any ``m = εn`` poisons in the box can produce. ``lr`` default ``1/L``,
    ``L = λ_max(X̃ᵀX̃/n) + ε(‖max(|lo|, |hi|)‖² + 1) + (1 + ε)ρ`` with X̃ = [X, 1].

    Shapes: ``x`` (n, d), ``y`` (n,), ``lo``/``hi`` (d,); ``w0`` (d,). The poisons' responses are in ``result.y``.
    """
    n, d = x.shape
    eps = n_poison / n
    y_lo, y_hi = y_range
    if lr is None:
        xt = np.hstack([x, np.ones((n, 1))])
        second = float(np.linalg.eigvalsh(xt.T @ xt / n)[-1])
        lr = 1.0 / (second + eps * (float(np.sum(np.maximum(lo**2, hi**2))) + 1.0) + (1.0 + eps) * l2)
    w, b = np.asarray(w0, np.float64).copy(), float(b0)
    result = MinMaxResult(x=np.zeros((n_poison, d)), y=np.zeros(n_poison), bound=np.inf, bound_round=-1)
    for t in range(max(n_poison, rounds or 0)):
        xp, yp, worst = worst_box_point(w, b, lo, hi, y_lo, y_hi)
        residual = x @ w + b - y
        clean = float(0.5 * np.mean(residual**2))
        upper = clean + (1.0 + eps) * 0.5 * l2 * float(w @ w) + eps * worst
        result.bounds.append(upper)
        result.clean_losses.append(clean)
        if upper < result.bound:
            result.bound, result.bound_round = upper, t
        if t < n_poison:
            result.x[t], result.y[t] = xp, yp
        rp = float(xp @ w) + b - yp
        w = w - lr * (x.T @ residual / n + eps * rp * xp + (1.0 + eps) * l2 * w)
        b = b - lr * (float(residual.mean()) + eps * rp)
    return result


def certified_objective(module: nn.Module | None, x: np.ndarray, y: np.ndarray, task: str, l2: float, eps: float) -> float | None:
    """``L_c(θ̂) + (1 + ε)(ρ/2)‖Ŵ‖²`` of a trained softmax regression or ridge model — the quantity the
    min-max certificate bounds (eq. 5) — on its clean training set; None for any other model (a linear SVM's
    squared hinge has no bound here).

    Parameters
    ----------
    module : torch.nn.Module or None
        The trained model; its one linear layer's inputs are computed by the model's own fixed layers
        (a pipeline's scalers, an ART estimator's preprocessing), never taken as the raw features.
    x : ndarray, shape (n, ...)
        The clean training features ``D_c``.
    y : ndarray, shape (n,)
        Class indices (classification) or responses (regression: the squared loss, as ridge trains).
    task : str
        ``classification`` or ``regression``.
    l2, eps : float
        ρ and ε.
    """
    if module is None or not is_convex_linear(module) or (task == "classification" and loss_kind(module) != "cross_entropy"):
        return None
    layer = convex_linear_layer(module)
    assert layer is not None
    w = layer.weight.detach().double().cpu().numpy()
    b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(len(w))
    ref = next(module.parameters())
    flat = torch.as_tensor(x.reshape(len(x), -1), dtype=ref.dtype, device=ref.device)
    inputs = layer_inputs(module, layer, flat).double().cpu().numpy()
    if task == "regression":
        return regularised_clean_squared_loss(w.reshape(-1), float(b[0]), inputs, y.astype(np.float64), l2, eps)
    return regularised_clean_loss(w, b, inputs, y, l2, eps)
