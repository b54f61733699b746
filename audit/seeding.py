"""Seeds and local generators: every stochastic path takes a seed and never touches a global RNG.

``derive_seed`` turns any JSON-able parts (seed, candidate, attack, budget, …) into a
stable 31-bit seed, the same on every machine. ``generators`` gives the numpy and torch
generators an attack or defense draws from. ``seeded_init`` is for the one place torch
offers no generator argument, module initialisation (``reset_parameters``): it seeds a
forked copy of the global state and restores it afterwards, so callers see it untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any JSON-able parts (same parts, same seed, on every machine)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def generators(seed: int, device: torch.device | str = "cpu") -> tuple[np.random.Generator, torch.Generator]:
    """A numpy generator and a torch generator on ``device``, both from ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return np.random.default_rng(int(seed)), gen


@contextmanager
def preserved_global_rng(device: torch.device | None = None) -> Iterator[None]:
    """Leave torch's and numpy's global RNG states as they were on entry, whatever runs inside.

    Library code draws from them behind our back (a torch ``DataLoader`` takes its base seed
    from the global generator even without shuffling, e.g. inside ART's ``predict``; ART's
    detectors call numpy's legacy functions): the audit's own draws use local generators,
    and this guard keeps the caller's state untouched by everything else.
    """
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        np.random.set_state(state)


@contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's legacy global generator inside the block only (for libraries that read it, e.g. ART's
    detectors); the caller's state is restored afterwards."""
    state = np.random.get_state()
    np.random.seed(int(seed) % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def seeded_init(seed: int, devices: list[int] | None = None) -> Iterator[None]:
    """Seed torch's default generator for module initialisation inside the block only.

    ``torch.random.fork_rng`` saves the global CPU (and given CUDA) state on entry and
    restores it on exit, so the caller's RNG state is unchanged by what happens inside.
    """
    cuda = [] if devices is None else devices
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield
