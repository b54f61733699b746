"""What a torch module's structure says about the victim: its output layer, whether it is linear."""

from __future__ import annotations

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
