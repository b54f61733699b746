"""Hessian-vector products and per-sample gradients (shared by defenses and attacks).

The linear solvers that invert these products live in :mod:`audit.maths.linear_solve`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from audit.models.training import data_loss, loss_kind, regularized_weights


def flat(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def objective_hvp(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, l2: float, damping: float = 0.0, chunk: int = 4096
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ (∇²f + damping·I) v`` for f = mean loss + (ρ/2)‖w‖² over ``(x, y)``, by double backward (chunked)."""
    params = [p for p in module.parameters() if p.requires_grad]
    weight_ids = {id(p) for p in regularized_weights(module)}
    n = len(y)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for start in range(0, n, chunk):
            loss = data_loss(module(x[start : start + chunk]), y[start : start + chunk], task, reduction="sum", kind=loss_kind(module)) / n
            grads = torch.autograd.grad(loss, params, create_graph=True)
            inner = flat(grads) @ v
            if inner.requires_grad:  # a piecewise-linear loss (the hinge) has no curvature: its gradient does not depend on w
                second = torch.autograd.grad(inner, params, allow_unused=True)
                out += flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, second)])
        offset = 0
        for p in params:  # ρ·v on the regularized weights, damping everywhere
            size = p.numel()
            if id(p) in weight_ids:
                out[offset : offset + size] += l2 * v[offset : offset + size]
            offset += size
        return out + damping * v

    return matvec


def mean_gradient(module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int = 4096) -> torch.Tensor:
    """Flat gradient of the mean loss over ``(x, y)`` (no regularization)."""
    params = [p for p in module.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), device=x.device, dtype=next(module.parameters()).dtype)
    for start in range(0, len(y), chunk):
        loss = data_loss(module(x[start : start + chunk]), y[start : start + chunk], task, reduction="sum", kind=loss_kind(module))
        total += flat(torch.autograd.grad(loss, params))
    return total / len(y)


def per_sample_gradients(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, last_layer_only: bool = False, chunk: int = 1024
) -> torch.Tensor:
    """Per-sample loss gradients, shape (n, p), vectorised with ``torch.func`` (vmap of grad).

    ``last_layer_only`` restricts them to the output layer (``linear`` / ``head`` / last
    ``nn.Linear``), which keeps (n, p) in memory for wide networks.
    """
    from torch.func import functional_call, grad, vmap

    from audit.models.structure import last_linear

    names = dict(module.named_parameters())
    if last_layer_only:
        layer = last_linear(module)
        chosen = {k for k, v in names.items() if any(v is q for q in layer.parameters())}
    else:
        chosen = set(names)
    free = {k: v.detach() for k, v in names.items() if k in chosen}
    fixed = {k: v.detach() for k, v in names.items() if k not in chosen}
    buffers = dict(module.named_buffers())

    kind = loss_kind(module)

    def loss_one(params: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, {**params, **fixed, **buffers}, (xi.unsqueeze(0),))
        return data_loss(out, yi.unsqueeze(0), task, kind=kind)

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, len(y), chunk):
        g = per_example(free, x[start : start + chunk], y[start : start + chunk])
        rows.append(torch.cat([g[k].reshape(len(g[k]), -1) for k in free], dim=1))
    return torch.cat(rows)
