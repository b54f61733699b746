"""The one seeded training procedure: pretraining, attacks' inner loops and retraining use it.

Objective (README: How the audit works, the objective): mean loss over the training set + (ρ/2)·‖w‖², where ‖w‖² runs over
weights only (parameters with more than one dimension); biases are unregularized.
Classification uses softmax cross-entropy, regression ½(y − f(x))²; a linear SVM's surrogate (scikit-learn's
``LinearSVC``) declares the one-vs-rest squared hinge instead (:func:`loss_kind`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainConfig:
    """Resolved training hyperparameters (model defaults ← config ← candidate axes)."""

    l2: float = 0.0
    l1: float = 0.0
    optimizer: str = "sgd"  # lbfgs | fista | sgd | adam | a torch.optim class path (a user estimator's own, e.g. torch.optim.Adam)
    optimizer_params: dict[str, Any] | None = None  # that class's hyperparameters (lr included), as the user built it
    lr: float = 0.5
    momentum: float = 0.9
    epochs: int = 300
    batch_size: int | None = None
    grad_tol: float = 1e-3


@dataclass(frozen=True)
class TrainResult:
    """How training ended. ``converged`` compares the final full-objective gradient norm with ``grad_tol``."""

    steps: int
    objective: float
    grad_norm: float
    converged: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def rho_from_lambda(lam: float, n: int) -> float:
    """The audit's ρ of the paper's λ on ``n`` training points: ρ = e^λ / N (README: How the audit works, the objective; λ's units).

    carnerero-cano-2021 puts (e^λ/2)‖w‖² on a *summed* loss; the audit's objective is the
    mean loss + (ρ/2)‖w‖², so dividing by N gives ρ = e^λ / N.
    """
    return math.exp(lam) / n


def lambda_from_rho(rho: float, n: int) -> float:
    """The paper's λ = log(ρ·N) of the audit's ρ on ``n`` training points (−inf at ρ = 0)."""
    return math.log(rho * n) if rho > 0 else -math.inf


def lambda_shift(n: int) -> float:
    """λ − log ρ = log N: the offset between the paper's λ and the log of the audit's ρ."""
    return math.log(n)


def regularized_weights(module: nn.Module) -> list[torch.Tensor]:
    """The parameters the L2 term covers: every parameter with more than one dimension."""
    return [p for p in module.parameters() if p.ndim > 1]


def l2_norm_sq(module: nn.Module) -> torch.Tensor:
    """‖w‖² over the regularized weights."""
    weights = regularized_weights(module)
    start = torch.zeros((), device=weights[0].device if weights else None)
    return sum((p.pow(2).sum() for p in weights), start)


#: the classification losses a module can be trained with (:func:`loss_kind`)
CLASSIFICATION_LOSSES = ("cross_entropy", "squared_hinge", "hinge")
#: the margin losses of a linear SVM's surrogate (one-vs-rest): flat where a point's margins hold
MARGIN_LOSSES = ("squared_hinge", "hinge")


def loss_kind(module: Any) -> str:
    """The classification loss ``module`` (an ``nn.Module`` or a :class:`audit.maths.hypergrad.FlatModel` of one) is
    trained with: its ``loss`` attribute where it declares one (``squared_hinge``: the surrogate of a ``LinearSVC``),
    else ``cross_entropy``."""
    return str(getattr(getattr(module, "module", module), "loss", "cross_entropy"))


def hinge(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-vs-rest hinge per point, shape (n,): ``Σ_k max(0, 1 − t_k f_k)``, ``t_k`` as in :func:`squared_hinge`
    (scikit-learn's ``LinearSVC(loss="hinge")``). Piecewise linear: autograd gives its subgradient (0 on the kink)."""
    t = 2.0 * F.one_hot(y, output.shape[1]).to(output.dtype) - 1.0
    return (1.0 - t * output).clamp_min(0).sum(dim=1)


def squared_hinge(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-vs-rest squared hinge per point, shape (n,): ``Σ_k max(0, 1 − t_k f_k)²`` with ``t_k = +1`` for the point's
    class and −1 for the others (scikit-learn's ``LinearSVC``, ``loss="squared_hinge"``, one binary problem per output)."""
    t = 2.0 * F.one_hot(y, output.shape[1]).to(output.dtype) - 1.0
    return (1.0 - t * output).clamp_min(0).pow(2).sum(1)


def data_loss(output: torch.Tensor, y: torch.Tensor, task: str, reduction: str = "mean", kind: str = "cross_entropy") -> torch.Tensor:
    """Cross-entropy (``kind``: or the one-vs-rest squared hinge or hinge) for classification, ½(y − f)² for regression."""
    if task == "classification" and kind == "cross_entropy":
        return F.cross_entropy(output, y, reduction=reduction)
    if task == "classification":
        per_sample = hinge(output, y) if kind == "hinge" else squared_hinge(output, y)
    else:
        per_sample = 0.5 * (output.reshape(-1) - y.reshape(-1)).pow(2)
    return {"mean": per_sample.mean, "sum": per_sample.sum}.get(reduction, lambda: per_sample)()


def objective(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, l2: float, l1: float = 0.0) -> torch.Tensor:
    """Mean loss + (ρ/2)·‖w‖² (README: How the audit works) [+ λ₁‖w‖₁ for lasso / elastic net]."""
    value = data_loss(module(x), y, task, kind=loss_kind(module))
    if l2:
        value = value + 0.5 * l2 * l2_norm_sq(module).to(value.device)
    if l1:
        value = value + l1 * sum(p.abs().sum() for p in regularized_weights(module))
    return value


def train(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig, seed: int) -> TrainResult:
    """Train ``module`` in place on ``(x, y)`` (tensors on the module's device).

    ``lbfgs``: full-batch L-BFGS with a strong-Wolfe line search, at most ``epochs``
    iterations (the default for the convex models: plain GD with momentum oscillates on
    poisoned MNIST at small ρ and stops far from the minimiser). ``sgd``/``adam``: full-batch
    gradient descent when ``batch_size`` is None (one step per epoch), otherwise mini-batches
    with a seeded shuffle each epoch.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    if config.l1 and config.optimizer != "fista":
        raise ValueError("an L1 term needs the proximal optimizer: training.optimizer 'fista'")
    if config.optimizer == "fista":
        # float64 inside: in float32 the backtracking test and the momentum stall 0.08 away from the
        # minimiser on diabetes (measured); the module returns to float32 afterwards
        module.double()
        y64 = y.double() if y.is_floating_point() else y
        steps = _train_fista(module, params, x.double(), y64, task, config)  # type: ignore[arg-type]  # torch/numpy stubs
        module.float()
    elif config.optimizer == "lbfgs":
        steps = _train_lbfgs(module, params, x, y, task, config)  # type: ignore[arg-type]  # torch/numpy stubs
    else:
        steps = _train_first_order(module, params, x, y, task, config, seed)  # type: ignore[arg-type]  # torch/numpy stubs
    module.eval()
    final, grad_norm = full_objective_and_grad_norm(module, x, y, task, config.l2)
    if config.l1:  # non-smooth: stationarity is measured by the proximal-gradient mapping
        final += config.l1 * float(sum(p.detach().abs().sum() for p in regularized_weights(module)))
        grad_norm = prox_gradient_norm(module, x, y, task, config)
    finite = bool(torch.isfinite(torch.tensor(final)))
    return TrainResult(steps, final, grad_norm, finite and grad_norm <= config.grad_tol)


def user_optimizer_class(path: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class a path such as ``torch.optim.Adam`` names (only torch's own optimizers)."""
    cls = getattr(torch.optim, path.removeprefix("torch.optim."), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"training.optimizer {path!r} is not an optimizer of torch.optim")
    return cls


def full_objective_and_grad_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, l2: float, chunk: int = 8192) -> tuple[float, float]:
    """Regularized objective over all of ``(x, y)`` and the norm of its gradient (chunked over rows)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    n = len(y)
    for start in range(0, n, chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        part = data_loss(module(xb), yb, task, reduction="sum", kind=loss_kind(module)) / n
        for g, d in zip(grads, torch.autograd.grad(part, params, allow_unused=True)):
            if d is not None:
                g += d
        total += float(part.detach())
    if l2:
        penalty = 0.5 * l2 * l2_norm_sq(module)
        total += float(penalty.detach())
        for g, d in zip(grads, torch.autograd.grad(penalty, params, allow_unused=True)):
            if d is not None:
                g += d
    module.zero_grad(set_to_none=True)
    norm = float(torch.sqrt(sum((g.pow(2).sum() for g in grads), torch.zeros((), device=x.device))))
    return total, norm


def _train_lbfgs(module: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig) -> int:
    opt = torch.optim.LBFGS(
        params,
        lr=config.lr,
        max_iter=config.epochs,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        value = objective(module, x, y, task, config.l2)
        value.backward()
        return value

    opt.step(closure)
    return int(opt.state[params[0]].get("n_iter", 0))


def _train_first_order(
    module: nn.Module,
    params: list[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    config: TrainConfig,
    seed: int,
) -> int:
    if config.optimizer.startswith("torch.optim."):  # the user's optimizer class: a fresh instance per retraining
        opt: torch.optim.Optimizer = user_optimizer_class(config.optimizer)(params, **{**(config.optimizer_params or {}), "lr": config.lr})
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=config.lr)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = 0
    for _ in range(config.epochs):
        if config.batch_size is None or config.batch_size >= n:
            batches = [None]
        else:
            order = torch.randperm(n, generator=gen).to(x.device)
            batches = list(order.split(config.batch_size))
        for idx in batches:
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            objective(module, xb, yb, task, config.l2).backward()
            opt.step()
            steps += 1
    return steps


def _soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def _prox(params: list[torch.Tensor], weights: set[int], step: float, l1: float) -> None:
    """Proximal step of λ₁‖w‖₁ on the regularized weights (biases stay free)."""
    if not l1:
        return
    for p in params:
        if id(p) in weights:
            p.copy_(_soft_threshold(p, step * l1))


def _train_fista(module: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig) -> int:
    """Full-batch FISTA (Beck & Teboulle 2009) with backtracking on the smooth part.

    Smooth part: mean loss + (ρ/2)‖w‖²; proximal part: λ₁‖w‖₁ over the regularized
    weights. ``lr`` is the initial step; ``epochs`` caps the iterations.
    """
    weights = {id(p) for p in regularized_weights(module)}

    def smooth() -> torch.Tensor:
        return objective(module, x, y, task, config.l2)

    step = config.lr
    y_pt = [p.detach().clone() for p in params]
    x_prev = [p.detach().clone() for p in params]
    t = 1.0
    steps = 0
    for _ in range(config.epochs):
        with torch.no_grad():
            for p, v in zip(params, y_pt):
                p.copy_(v)
        f_y = smooth()
        grads = torch.autograd.grad(f_y, params)
        while True:  # backtracking: the quadratic upper bound must hold at the proximal point
            with torch.no_grad():
                for p, v, g in zip(params, y_pt, grads):
                    p.copy_(v - step * g)
                _prox(params, weights, step, config.l1)
                diff = [p - v for p, v in zip(params, y_pt)]
                bound = float(f_y) + sum(float((g * d).sum()) for g, d in zip(grads, diff)) + sum(float(d.pow(2).sum()) for d in diff) / (2 * step)
                if float(smooth()) <= bound + 1e-12 or step < 1e-12:
                    break
                step *= 0.5
        steps += 1
        with torch.no_grad():
            x_new = [p.detach().clone() for p in params]
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y_pt = [xn + ((t - 1) / t_new) * (xn - xp) for xn, xp in zip(x_new, x_prev)]
            change = sum(float((xn - xp).pow(2).sum()) for xn, xp in zip(x_new, x_prev)) ** 0.5
            x_prev, t = x_new, t_new
        if change <= 1e-10:
            break
    with torch.no_grad():
        for p, v in zip(params, x_prev):
            p.copy_(v)
    return steps


def prox_gradient_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig) -> float:
    """‖(θ − prox(θ − ∇f(θ)))‖ with unit step: zero exactly at a minimiser of the L1 objective."""
    params = [p for p in module.parameters() if p.requires_grad]
    weights = {id(p) for p in regularized_weights(module)}
    grads = torch.autograd.grad(objective(module, x, y, task, config.l2), params)
    total = 0.0
    with torch.no_grad():
        for p, g in zip(params, grads):
            moved = p - g
            if id(p) in weights and config.l1:
                moved = _soft_threshold(moved, config.l1)
            total += float((p - moved).pow(2).sum())
    return total**0.5
