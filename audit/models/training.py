"""The one seeded training procedure: pretraining, attacks' inner loops and retraining use it.

Objective (DESIGN.md): mean loss over the training set + (ρ/2)·‖w‖², where ‖w‖² runs over
weights only (parameters with more than one dimension); biases are unregularized.
Classification uses softmax cross-entropy, regression ½(y − f(x))².
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainConfig:
    """Resolved training hyperparameters (model defaults ← config ← candidate axes)."""

    l2: float = 0.0
    optimizer: str = "sgd"
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


def regularized_weights(module: nn.Module) -> list[torch.Tensor]:
    """The parameters the L2 term covers: every parameter with more than one dimension."""
    return [p for p in module.parameters() if p.ndim > 1]


def l2_norm_sq(module: nn.Module) -> torch.Tensor:
    """‖w‖² over the regularized weights."""
    weights = regularized_weights(module)
    start = torch.zeros((), device=weights[0].device if weights else None)
    return sum((p.pow(2).sum() for p in weights), start)


def data_loss(output: torch.Tensor, y: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for classification, ½(y − f)² for regression."""
    if task == "classification":
        return F.cross_entropy(output, y, reduction=reduction)
    per_sample = 0.5 * (output.reshape(-1) - y.reshape(-1)).pow(2)
    return {"mean": per_sample.mean, "sum": per_sample.sum}.get(reduction, lambda: per_sample)()


def objective(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, l2: float) -> torch.Tensor:
    """Mean loss + (ρ/2)·‖w‖² (DESIGN.md)."""
    value = data_loss(module(x), y, task)
    if l2:
        value = value + 0.5 * l2 * l2_norm_sq(module).to(value.device)
    return value


def train(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig, seed: int
) -> TrainResult:
    """Train ``module`` in place on ``(x, y)`` (tensors on the module's device).

    ``lbfgs``: full-batch L-BFGS with a strong-Wolfe line search, at most ``epochs``
    iterations (the default for the convex models: plain GD with momentum oscillates on
    poisoned MNIST at small ρ and stops far from the minimiser). ``sgd``/``adam``: full-batch
    gradient descent when ``batch_size`` is None (one step per epoch), otherwise mini-batches
    with a seeded shuffle each epoch.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    if config.optimizer == "lbfgs":
        steps = _train_lbfgs(module, params, x, y, task, config)
    else:
        steps = _train_first_order(module, params, x, y, task, config, seed)
    module.eval()
    final, grad_norm = full_objective_and_grad_norm(module, x, y, task, config.l2)
    finite = bool(torch.isfinite(torch.tensor(final)))
    return TrainResult(steps, final, grad_norm, finite and grad_norm <= config.grad_tol)


def full_objective_and_grad_norm(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, l2: float, chunk: int = 8192
) -> tuple[float, float]:
    """Regularized objective over all of ``(x, y)`` and the norm of its gradient (chunked over rows)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    n = len(y)
    for start in range(0, n, chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        part = data_loss(module(xb), yb, task, reduction="sum") / n
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


def _train_lbfgs(
    module: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig
) -> int:
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
    module: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, task: str, config: TrainConfig,
    seed: int,
) -> int:
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr)
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
