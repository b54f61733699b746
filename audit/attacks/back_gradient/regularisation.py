"""λ learned by hypergradient descent on clean data (carnerero-cano-2021, §3: the defender's side of the minimax)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from audit.attacks.back_gradient.attack import BackGradient
from audit.attacks.back_gradient.hypergradients import oracle as hypergradient_oracle
from audit.catalog import PAPER_CLEAN_WARM_START, PAPER_L2_LR, PAPER_L2_RANGE
from audit.maths.hypergrad import FlatModel, functional_objective, validation_loss
from audit.models.training import lambda_shift


def learn_log_l2(
    module: Any,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task: str,
    iterations: int = 50,
    inner_steps: int = 150,
    inner_lr: float = 0.1,
    lr: float = PAPER_L2_LR,
    l2_range: tuple[float, float] = PAPER_L2_RANGE,
    init: float = PAPER_CLEAN_WARM_START,
    init_weights: str = "auto",
    seed: int = 0,
    hypergradient: str = "auto",
) -> tuple[float, list[float]]:
    """λ learned by hypergradient descent on clean data (the paper's T_λ iterations from log 5).

    λ, ``init`` and ``l2_range`` are the paper's λ = log(ρ·n). ``hypergradient``: ``∂A/∂λ`` by
    the implicit function theorem at the trained optimum (``auto`` for a convex victim) or by RMD
    through ``inner_steps`` GD steps. Returns the final λ and its curve.
    """
    n_classes = None if task == "regression" else int(np.max(y) + 1)
    attack = BackGradient(
        module,
        x_val=x_val,
        y_val=y_val,
        budget=1.0,
        task=task,
        n_classes=n_classes,
        seed=seed,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        init_weights=init_weights,
        learn_l2=True,
        hypergradient=hypergradient,
    )
    dtype = attack._resolve()
    xt, yt = attack._tensors(np.asarray(x, np.float32), y, dtype)
    xv, yv = attack._tensors(attack.x_val, attack.y_val, dtype)
    model = FlatModel.of(copy.deepcopy(attack.module).to(xt.dtype))
    inner = functional_objective(model, xt, yt, task, yt[:0])
    outer = validation_loss(model, xv, yv, task)
    oracle = hypergradient_oracle(attack._mode, attack.params, model.module, attack.initial_weights(model), inner, outer, None, xt, yt, yt[:0])
    shift = lambda_shift(len(yt))
    lam, curve = min(max(init, l2_range[0]), l2_range[1]), []
    no_poison = xt[:0]
    for _ in range(iterations):
        log_l2 = torch.tensor(lam - shift, dtype=xt.dtype, device=xt.device)
        result = oracle.gradient([no_poison, log_l2])
        lam = min(max(lam - lr * float(result.grads[1]), l2_range[0]), l2_range[1])
        curve.append(lam)
    return lam, curve
