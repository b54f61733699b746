"""The pieces back-gradient's objectives are built from, besides the attacker's loss on D_att:

- :class:`Feasible` — where poisons may lie: the feature box, intersected with a sanitiser's acceptance
  region when the attack runs against one (``region``; Koh, Steinhardt & Liang 2022, §4);
- :func:`loss_cut_penalty` — the evasion term against the loss filter (``evade: loss_filter``), added to
  the attacker's objective as an explicit term of the hyperparameters;
- :func:`refit_objectives` — the objectives of a scikit-learn pipeline whose scalers refit on the poisoned set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from audit.maths.hypergrad import FlatModel, Inner, Outer
from audit.maths.regions import AcceptanceRegion, project_many
from audit.models.surrogate import refitted
from audit.models.training import data_loss, loss_kind


@dataclass
class Feasible:
    """Π: the projection onto the feature box ``[lo, hi]`` (shape (d,) each) ∩ ``region`` (None: the box alone)."""

    lo: torch.Tensor
    hi: torch.Tensor
    region: AcceptanceRegion | None = None

    @classmethod
    def of(cls, lo: np.ndarray | None, hi: np.ndarray | None, like: torch.Tensor, region: AcceptanceRegion | None) -> Feasible:
        """The box of ``lo``/``hi`` (None: unbounded) for poisons like ``like`` (n, d): its dtype and device."""
        d = like.shape[1]
        low = torch.as_tensor(np.broadcast_to(lo, (d,)).copy() if lo is not None else np.full(d, -np.inf), dtype=like.dtype)
        high = torch.as_tensor(np.broadcast_to(hi, (d,)).copy() if hi is not None else np.full(d, np.inf), dtype=like.dtype)
        return cls(low.to(like.device), high.to(like.device), region)

    def enter(self, x_p: torch.Tensor, y_p: torch.Tensor) -> torch.Tensor:
        """Starting poisons moved inside the region (they are in the box already)."""
        return x_p if self.region is None else project_many(self.region, x_p, y_p, self.lo, self.hi, iterations=50)

    def __call__(self, x_p: torch.Tensor, y_p: torch.Tensor) -> torch.Tensor:
        """``Π(x_p)`` after a step: clipped to the box, then into the region of each poison's label ``y_p``."""
        x_new = torch.maximum(torch.minimum(x_p, self.hi), self.lo)
        return x_new if self.region is None else project_many(self.region, x_new, y_p, self.lo, self.hi, iterations=10)


def loss_cut_penalty(
    model: FlatModel, xt: torch.Tensor, yt: torch.Tensor, n_poison: int, y_fixed: torch.Tensor | None, task: str, rate: float, weight: float
) -> Callable[..., torch.Tensor]:
    """``E(w, x_p, λ[, y_p]) = −μ·mean_j max(0, ℓ(w; x_j, y_j) − c(w))``: the loss filter drops the
    ``k = round(N − N/(1 + r))`` highest training losses of the N = n + m points (r: its assumed
    rate), so a poison whose loss under the trained model stays below the k-th largest clean loss
    survives; ``c`` is the 2k-th largest (a margin for the retrained model differing from the
    unrolled ``w_T``), held fixed in the gradient. μ = ``weight``; ``xt``, ``yt``: the clean training set,
    shapes (n, d) and (n,); ``y_fixed``: the poisons' labels when they are not a hyperparameter."""
    total = len(yt) + n_poison
    k = min(len(yt), max(1, 2 * int(round(total - total / (1 + rate)))))

    def penalty(w: torch.Tensor, x_p: torch.Tensor, log_l2: torch.Tensor, y_p: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            clean = data_loss(model(w, xt), yt, task, reduction="none", kind=loss_kind(model))
            cut = torch.topk(clean, k).values[-1]
        labels = y_fixed if y_p is None else y_p
        own = data_loss(model(w, x_p), labels, task, reduction="none", kind=loss_kind(model))  # type: ignore[arg-type]  # torch stubs
        return -weight * torch.relu(own - cut).mean()

    return penalty


def refit_objectives(
    module: torch.nn.Module, x_train: torch.Tensor, inner: Inner, outer: Outer, explicit: Inner | None
) -> tuple[Inner, Outer, Inner]:
    """The training objective and the attacker's of a pipeline whose scalers are refit on ``x_train`` ∪ the poisons
    (:func:`audit.models.surrogate.refitted`), as its retraining refits them. The attacker's objective then reads
    the poisons directly (the statistics its inputs are scaled with move with them), so it becomes the explicit
    term of the implicit hypergradient (:func:`audit.maths.implicit.implicit_hypergradient`: ``∇_h E`` joins the
    result) and the plain outer term is 0."""

    def refit_inner(w: torch.Tensor, x_p: torch.Tensor, log_l2: torch.Tensor, y_p: torch.Tensor | None = None) -> torch.Tensor:
        with refitted(module, torch.cat([x_train, x_p])):
            return inner(w, x_p, log_l2, y_p)

    def refit_outer(w: torch.Tensor, x_p: torch.Tensor, log_l2: torch.Tensor, y_p: torch.Tensor | None = None) -> torch.Tensor:
        with refitted(module, torch.cat([x_train, x_p])):
            value = outer(w)
            return value if explicit is None else value + explicit(w, x_p, log_l2, y_p)

    return refit_inner, lambda w: (w * 0.0).sum(), refit_outer
