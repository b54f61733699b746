"""SGD's guarantee under a poisoned first-order oracle (Wang, Mianjy & Arora 2021, Theorem 2.2).

For a convex ``F`` on ``W = {‖w‖ ≤ D}`` and SGD with step ``η = D / (√T (G + B))`` whose oracle returns
``g_t = ĝ_t + ζ_t`` (``E ĝ_t ∈ ∂F(w_t)``, ``E‖ĝ_t‖² ≤ G²``, ``‖ζ_t‖ ≤ B``), the average iterate obeys

    E[F(w̄)] − F(w*) ≤ 5D(G + B)/√T + 2D·Σ_t ‖ζ_t‖ / T.                       (Theorem 2.2)

Here ``F`` is the clean empirical risk of softmax regression (mean cross-entropy over D_tr, no
regularizer), ``w = (W, b)``, and the oracle is the poisoned training set of a *modifying* attack:
at step t SGD draws an index i uniformly, ĝ_t is the gradient at the clean point (x_i, y_i) (unbiased
for ∇F) and g_t the gradient at its poisoned version (x̃_i, ỹ_i), so ``ζ_t = g_t − ĝ_t`` as the attack
realised it. ``G = √2·max_i ‖(x_i, 1)‖`` bounds every clean gradient (‖p − e_y‖ ≤ √2), ``B`` every
perturbation (:func:`sgd_guarantee`), and ``Σ‖ζ_t‖`` is what the run realised. ``F(w*)`` is the
constrained minimum, by projected gradient descent to a tolerance.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

_F_STAR: dict[tuple[str, int, float], float] = {}  # (clean data digest, c, D) → F(w*), this process's solves


@dataclass(frozen=True)
class Guarantee:
    """One run of Theorem 2.2's SGD: the bound ``U`` and its parts, and the measured excess risk."""

    bound: float  # U = 5D(G + B)/√T + 2D·Σ‖ζ_t‖/T
    measured: float  # F(w̄) − F(w*)
    radius: float  # D
    g: float  # G
    b: float  # B, the largest realised ‖ζ_t‖
    zeta_sum: float  # Σ_t ‖ζ_t‖
    steps: int  # T
    f_star: float  # F(w*)

    def as_dict(self) -> dict[str, float | int]:
        return {k: float(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _risk_and_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of softmax regression ``w`` (d + 1, c) on ``x`` (n, d + 1) (a column of ones last), and its gradient."""
    logits = x @ w
    p = torch.softmax(logits, dim=1)
    risk = torch.nn.functional.cross_entropy(logits, y)
    p[torch.arange(len(y)), y] -= 1.0
    return risk, x.T @ p / len(y)


def _project(w: torch.Tensor, radius: float) -> torch.Tensor:
    norm = float(w.norm())
    return w * (radius / norm) if norm > radius else w


def constrained_minimum(x: torch.Tensor, y: torch.Tensor, n_classes: int, radius: float, tol: float = 1e-7, max_iter: int = 50000) -> float:
    """``min_{‖w‖ ≤ D} F(w)`` by accelerated projected gradient (FISTA with adaptive restart) at step 1/L,
    ``L = λ_max(XᵀX)/n`` (a bound on the softmax cross-entropy's curvature); stops when the gradient
    mapping ``L·‖w − Π(w − ∇F/L)‖`` is below ``tol`` (a first-order optimality certificate)."""
    lipschitz = float(torch.linalg.matrix_norm(x, ord=2) ** 2) / len(y)
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype)
    v, t = w.clone(), 1.0
    for _ in range(max_iter):
        _, grad = _risk_and_grad(v, x, y)
        new = _project(v - grad / lipschitz, radius)
        if lipschitz * float((new - v).norm()) < tol:
            w = new
            break
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        restart = float(((v - new) * (new - w)).sum()) > 0  # O'Donoghue & Candès: restart when momentum points uphill
        v = new if restart else new + ((t - 1) / t_next) * (new - w)
        t = 1.0 if restart else t_next
        w = new
    return float(_risk_and_grad(w, x, y)[0])


def sgd_guarantee(
    x: np.ndarray, y: np.ndarray, x_tilde: np.ndarray, y_tilde: np.ndarray, n_classes: int, radius: float, steps: int, seed: int
) -> Guarantee:
    """Run Theorem 2.2's projected SGD on the poisoned oracle and evaluate the bound and the excess risk.

    ``x``, ``x_tilde``: (n, d) clean and poisoned training features (the same points, in order),
    ``y``, ``y_tilde``: (n,) labels; ``radius`` D; ``steps`` T (indices drawn uniformly with ``seed``).
    ``B`` is known before the run: ‖ζ_i(w)‖ ≤ ‖g̃_i‖ + ‖ĝ_i‖ ≤ √2(‖(x̃_i, 1)‖ + ‖(x_i, 1)‖) over the
    points the attack changed (0 when none changed), so ``η = D/(√T(G + B))`` is the theorem's step;
    the bound's last term uses the ‖ζ_t‖ that occurred.
    """
    dt = torch.float64
    ones = np.ones((len(x), 1))
    xc = torch.as_tensor(np.hstack([x.reshape(len(x), -1), ones]), dtype=dt)
    xp = torch.as_tensor(np.hstack([x_tilde.reshape(len(x), -1), ones]), dtype=dt)
    yc, yp = torch.as_tensor(y, dtype=torch.long), torch.as_tensor(y_tilde, dtype=torch.long)
    changed = torch.any(xc != xp, dim=1) | (yc != yp)
    g_bound = math.sqrt(2.0) * float(xc.norm(dim=1).max())
    b = math.sqrt(2.0) * float((xp.norm(dim=1) + xc.norm(dim=1))[changed].max()) if bool(changed.any()) else 0.0
    eta = radius / (math.sqrt(steps) * (g_bound + b))
    idx = np.random.default_rng(seed).integers(0, len(y), size=steps)
    w = torch.zeros(xc.shape[1], n_classes, dtype=dt)
    total = torch.zeros_like(w)
    zeta_sum = 0.0
    for i in idx.tolist():
        _, poisoned = _risk_and_grad(w, xp[i : i + 1], yp[i : i + 1])
        if bool(changed[i]):
            _, clean = _risk_and_grad(w, xc[i : i + 1], yc[i : i + 1])
            zeta_sum += float((poisoned - clean).norm())
        w = _project(w - eta * poisoned, radius)  # w_{t+1} = Π_W(w_t − η g_t)
        total += w
    w_bar = total / steps
    bound = 5 * radius * (g_bound + b) / math.sqrt(steps) + 2 * radius * zeta_sum / steps
    key = (hashlib.sha256(xc.numpy().tobytes() + yc.numpy().tobytes()).hexdigest(), n_classes, round(radius, 12))
    if key not in _F_STAR:  # F(w*) depends on the clean data and D only: one solve per clean model
        _F_STAR[key] = constrained_minimum(xc, yc, n_classes, radius)
    f_star = _F_STAR[key]
    measured = float(_risk_and_grad(w_bar, xc, yc)[0]) - f_star
    return Guarantee(bound, measured, radius, g_bound, b, zeta_sum, steps, f_star)


def sgd_certificate(
    module: torch.nn.Module, x: np.ndarray, y: np.ndarray, x_tilde: np.ndarray, y_tilde: np.ndarray, n_classes: int, seed: int
) -> Guarantee:
    """Theorem 2.2 for a trained softmax-regression model and a poisoned copy ``(x_tilde, y_tilde)`` of its training set:
    ``W`` the ball of twice ``module``'s norm (weights and bias, at least 1e-3), T one pass (n steps); see :func:`sgd_guarantee`."""
    radius = 2.0 * float(torch.cat([p.detach().flatten() for p in module.parameters()]).norm().cpu())
    return sgd_guarantee(x, y, x_tilde, y_tilde, n_classes, max(radius, 1e-3), len(y), seed)
