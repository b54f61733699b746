"""The TGDA attacker's generator L_θ (lu-kamath-yu-2022, §5.1 "Attacker models").

Both take a clean point and its one-hot label and return a point inside the feature box
``[lo, hi]`` by construction (``lo + (hi − lo)·σ(z)``), so the projection onto the box
never cuts a gradient:

* :class:`DenseGenerator` — flat inputs: three fully connected layers with leaky ReLU
  (slope 0.2), hidden width ``d`` by default (the paper's MNIST leader, 785 → 784 → 784 → 784).
* :class:`ConvGenerator` — images ``(C, H, W)``: a convolutional autoencoder with three
  stride-2 convolutions and three transposed convolutions (the paper's CIFAR-10 leader);
  the label enters as ``c`` constant planes. Inputs are zero-padded to a multiple of 8 and
  the output cropped back.

:func:`pretrain_generator` trains either to reconstruct ``D_tr`` (the paper's pretraining;
its Table 6 shows the attack is weak without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class BoxOutput(nn.Module):
    """``lo + (hi − lo)·σ(z)``: the generator's last map, into the feature box."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("lo", lo.reshape(-1).clone())
        self.register_buffer("span", (hi - lo).reshape(-1).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lo + self.span * torch.sigmoid(z)  # type: ignore[operator]  # torch/numpy stubs

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` mapped to [0, 1] (the σ-space of the box); constant features map to 0."""
        return ((x - self.lo) / torch.where(self.span > 0, self.span, torch.ones_like(self.span))).clamp(0, 1)  # type: ignore[arg-type, operator]  # torch/numpy stubs


class DenseGenerator(nn.Module):
    """Three fully connected layers with leaky ReLU; input ``[x; onehot(y)]``, output in the box.

    Parameters
    ----------
    n_features, n_classes : int
    lo, hi : Tensor, shape (d,)
        The feature box.
    width : int or None
        Hidden width (default ``max(d, 64)``).
    """

    def __init__(self, n_features: int, n_classes: int, lo: torch.Tensor, hi: torch.Tensor, width: int | None = None) -> None:
        super().__init__()
        width = width or max(n_features, 64)
        self.n_classes = n_classes
        self.net = nn.Sequential(
            nn.Linear(n_features + n_classes, width),
            nn.LeakyReLU(0.2),
            nn.Linear(width, width),
            nn.LeakyReLU(0.2),
            nn.Linear(width, n_features),
        )
        self.box = BoxOutput(lo, hi)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, self.n_classes).to(x.dtype)
        return self.net(torch.cat([x, onehot], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` (n, d) and integer labels ``y`` (n,) → poisons (n, d) inside the box."""
        return self.box(self.logits(x, y))


class ConvGenerator(nn.Module):
    """Convolutional autoencoder (3 conv + 3 transposed conv) for flattened images ``(C, H, W)``.

    Parameters
    ----------
    image_shape : tuple (C, H, W)
    n_classes : int
    lo, hi : Tensor, shape (C·H·W,)
    width : int or None
        Channels of the first convolution (default 16; then 2× and 4×).
    """

    def __init__(self, image_shape: tuple[int, ...], n_classes: int, lo: torch.Tensor, hi: torch.Tensor, width: int | None = None) -> None:
        super().__init__()
        channels, height, wide = image_shape
        k = width or 16
        self.image_shape = (channels, height, wide)
        self.padded = (8 * math.ceil(height / 8), 8 * math.ceil(wide / 8))
        self.n_classes = n_classes
        self.encoder = nn.Sequential(
            nn.Conv2d(channels + n_classes, k, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(k, 2 * k, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * k, 4 * k, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * k, 2 * k, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * k, k, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(k, channels, 4, stride=2, padding=1),
        )
        self.box = BoxOutput(lo, hi)

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        channels, height, wide = self.image_shape
        img = x.reshape(len(x), channels, height, wide)
        planes = F.one_hot(y, self.n_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, height, wide)
        ph, pw = self.padded[0] - height, self.padded[1] - wide
        z = F.pad(torch.cat([img, planes], dim=1), (0, pw, 0, ph))
        out = self.decoder(self.encoder(z))[:, :, :height, :wide]
        return out.reshape(len(x), -1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` (n, C·H·W) and integer labels ``y`` (n,) → poisons (n, C·H·W) inside the box."""
        return self.box(self.logits(x, y))


def build_generator(
    kind: str, n_features: int, n_classes: int, lo: torch.Tensor, hi: torch.Tensor, image_shape: tuple[int, ...] | None, width: int | None = None
) -> nn.Module:
    """``kind``: ``dense``, ``conv`` or ``auto`` (conv for images of at least 8×8, dense otherwise)."""
    if kind == "auto":
        kind = "conv" if image_shape is not None and len(image_shape) == 3 and min(image_shape[1:]) >= 8 else "dense"
    if kind == "conv":
        if image_shape is None or len(image_shape) != 3:
            raise ValueError("the conv generator needs image data (a dataset with image_shape (C, H, W))")
        return ConvGenerator(image_shape, n_classes, lo, hi, width)
    return DenseGenerator(n_features, n_classes, lo, hi, width)


@dataclass(frozen=True)
class PretrainResult:
    """Mean squared reconstruction error on ``D_tr`` before and after pretraining."""

    epochs: int
    mse_initial: float
    mse_final: float


@torch.no_grad()
def reconstruction_mse(gen: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    total = 0.0
    for start in range(0, len(y), chunk):
        xb = x[start : start + chunk]
        total += float((gen(xb, y[start : start + chunk]) - xb).pow(2).sum())
    return total / max(x.numel(), 1)


def pretrain_generator(gen: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int, seed: int) -> PretrainResult:
    """Train ``gen`` in place to reconstruct ``x`` from ``[x; y]`` (Adam, seeded mini-batches).

    The loss is the cross-entropy between σ(logits) and ``x`` scaled to [0, 1] (the usual
    image autoencoder loss): with MSE through the sigmoid the conv autoencoder saturates at
    the all-background image within 40 steps on MNIST (measured) and never recovers. The
    paper pretrains with plain gradient descent (lr 0.1, 100 epochs); Adam reaches a good
    reconstruction in far fewer steps, which is what pretraining is for.
    """
    mse0 = reconstruction_mse(gen, x, y)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(y)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=order_gen).to(x.device).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(gen.logits(x[idx], y[idx]), gen.box.target(x[idx])).backward()  # type: ignore[operator, union-attr]  # torch/numpy stubs
            opt.step()
    return PretrainResult(epochs, mse0, reconstruction_mse(gen, x, y))
