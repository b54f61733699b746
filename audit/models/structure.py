"""What a torch module's structure says about the victim: its output layer, whether it is linear."""

from __future__ import annotations

import torch
from torch import nn


def last_linear(module: nn.Module) -> nn.Linear:
    """The output layer: ``linear`` (LogReg, Ridge), ``head`` (MLP, CNN) or the last ``nn.Linear``."""
    for name in ("linear", "head"):
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no nn.Linear output layer for the last-layer condition")
    return layers[-1]


def is_linear_model(module: nn.Module) -> bool:
    """True when the module's only parameters are its output layer (τ is then exact, not only necessary)."""
    layer = last_linear(module)
    return sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in layer.parameters())


def convex_linear_layer(module: nn.Module) -> nn.Linear | None:
    """The one ``nn.Linear`` that owns every parameter (logistic / linear regression), else None."""
    owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return owners[0] if len(owners) == 1 and isinstance(owners[0], nn.Linear) else None


def is_convex_linear(module: nn.Module) -> bool:
    """True when every parameter belongs to one ``nn.Linear`` (logistic / linear regression)."""
    return convex_linear_layer(module) is not None


def layer_inputs(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``module`` runs on ``x`` (any preprocessing before it applied), shape (n, in_features),
    without gradients (a forward hook)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
    width = getattr(layer, "in_features", None)
    return seen[0].reshape(len(x), -1 if width is None else width)
