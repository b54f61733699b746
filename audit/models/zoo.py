"""The model zoo: logistic regression, MLP, CNN (TGDA / poisonability papers) and ridge.

Architectures follow the papers' appendices: the MLP is three fully connected layers
(two hidden, width 784 by default) with leaky ReLU (slope 0.2); the CNN has two 3×3
convolutions, max-pooling and two fully connected layers (hidden 128). ``LogReg`` keeps
its parameters in one ``nn.Linear`` named ``linear`` so state dicts are portable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LogReg(nn.Module):
    """Softmax (multinomial) logistic regression; used with cross-entropy also for c = 2."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Ridge(nn.Module):
    """Linear regression ``f(x) = ⟨w, x⟩ + b``; with the L2 term of the objective it is ridge."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).squeeze(-1)


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with leaky ReLU (negative slope 0.2)."""

    def __init__(self, n_features: int, n_out: int, width: int = 784, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = n_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.LeakyReLU(0.2)]
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features φ(x), shape (n, width)."""
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN(nn.Module):
    """Two 3×3 conv layers (``width`` and ``2·width`` channels), max-pool, FC(128), FC(out)."""

    def __init__(self, image_shape: tuple[int, ...], n_out: int, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        channels, height, wide = image_shape
        self.image_shape = tuple(image_shape)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * math.floor(height / 2) * math.floor(wide / 2)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x.reshape(len(x), *self.image_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Training defaults per model; a config's `training:` block and candidate axes override them.
# logreg/ridge: full-batch L-BFGS (strong Wolfe), ≤ 300 iterations. Measured on mnist5k with a
# 30 % adversarial label flip at ρ = 1e-4: GD (lr 0.5, momentum 0.9, 300 steps) ends at
# ‖∇‖ ≈ 2 with 48 % test accuracy; L-BFGS reaches ‖∇‖ ≈ 3e-3 and 68 %, as 3000 GD steps do.
TRAINING_DEFAULTS: dict[str, dict[str, object]] = {
    "logreg": {"optimizer": "lbfgs", "lr": 1.0, "momentum": 0.0, "epochs": 300, "batch_size": None},
    "ridge": {"optimizer": "lbfgs", "lr": 1.0, "momentum": 0.0, "epochs": 300, "batch_size": None},
    # lasso / elastic net: full-batch FISTA with backtracking (initial step 1.0), ≤ 2000 iterations
    "lasso": {"optimizer": "fista", "lr": 1.0, "momentum": 0.0, "epochs": 2000, "batch_size": None},
    "elastic_net": {"optimizer": "fista", "lr": 1.0, "momentum": 0.0, "epochs": 2000, "batch_size": None},
    "mlp": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 20, "batch_size": 128},
    "cnn": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 10, "batch_size": 128},
    "user": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 20, "batch_size": 128},
}

# Width defaults of the papers: MLP hidden size 784, CNN first conv layer 32 channels.
DEFAULT_WIDTH: dict[str, int] = {"mlp": 784, "cnn": 32}
