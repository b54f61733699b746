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


class ReLU2(nn.Module):
    """The two-layer ReLU network of Wang, Mianjy & Arora (2021), §3, for binary tasks.

    ``f(x) = (1/√m) Σ_s a_s · ReLU(w_sᵀ x̂)`` with ``x̂ = x/‖x‖`` (inputs normalised to unit norm,
    the paper's assumption, done here as the model's first step), top weights ``a_s ∈ {±1}`` drawn
    uniformly and **fixed** (a buffer, never trained), bottom weights ``w_s ~ N(0, I_d)`` (no bias),
    trained by SGD on the logistic loss ``log(1 + e^{−y f})``. The output is the pair of logits
    ``(−f/2, f/2)``: softmax cross-entropy on it is exactly the logistic loss with ``y = +1`` for
    class 1, and argmax is ``sign f``.

    Shapes: ``x`` (n, d) or (n, *image) → logits (n, 2); :meth:`score` → f (n,).
    """

    def __init__(self, n_features: int, width: int = 1024) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, width, bias=False)
        nn.init.normal_(self.hidden.weight, mean=0.0, std=1.0)  # w_s,0 ~ N(0, I_d)
        signs = torch.randint(0, 2, (width,), dtype=torch.float32) * 2.0 - 1.0  # a_s ~ unif{±1}
        self.top: torch.Tensor
        self.register_buffer("top", signs)
        self.width = width

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), shape (n,)."""
        x = x.flatten(1)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.relu(self.hidden(x)) @ self.top.to(x.dtype) / math.sqrt(self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.score(x)
        return torch.stack([-0.5 * f, 0.5 * f], dim=1)


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
    # the paper's plain SGD, one sample a step, one pass, constant step 1.0 (Ji & Telgarsky 2019's regime). Theorem
    # 3.1's η = 1/((1+B)²√n) is a proof device: measured on mnist5k '0'–'4' vs '5'–'9' (n = 3000, one pass) it
    # reaches 59.5 % (width 64) / 57.8 % (4096) test accuracy, lr 1.0 85.9 % / 87.5 %; set training.lr to use it
    "relu2": {"optimizer": "sgd", "lr": 1.0, "momentum": 0.0, "epochs": 1, "batch_size": 1},
}

# Width defaults of the papers: MLP hidden size 784, CNN first conv layer 32 channels.
DEFAULT_WIDTH: dict[str, int] = {"mlp": 784, "cnn": 32, "relu2": 1024}
