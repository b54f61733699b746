"""The min-max attack against sphere/slab sanitisers (Steinhardt, Koh & Liang 2017, Alg. 1; Koh et al. 2022).

For a convex victim — softmax regression, one ``nn.Linear`` — online learning adds, round by
round, the point of largest loss under the current model among those the defense accepts
(the sphere, the slab and the feature box, fitted as the oracle defense fits them: on the
clean training set, at the quantile ``1/(1 + ε)`` unless ``quantile`` says otherwise), and
steps the model on the clean loss plus ε times that point's loss
(:func:`audit.maths.certificate.online_minmax`). The ``m = round(ε·n)`` points chosen are the
poisons; every one lies inside the region, so the defense keeps them all. The same run gives
the certified bound ``U*`` on the regularised clean training loss any attacker in that region
can force on a model trained on all clean points plus the poisons (``diagnostics.bound``;
:mod:`audit.maths.certificate`, eq. 5; ``bound_rounds`` runs the descent longer to tighten it). ``defense: none``
optimises in the feature box alone (the bound then holds for every attack in the box).

Ridge (one ``nn.Linear`` with one output, regression): the same algorithm with the squared loss,
the poisons in the feature box × the training responses' range, and its exact inner maximum
(:func:`audit.maths.certificate.online_minmax_ridge`); no sanitiser applies, so ``defense`` is ``none``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from audit.attacks.base import (
    AttackContext,
    AttackDiagnostics,
    AttackParams,
    PoisonInput,
    ThreatModel,
    TorchAttack,
    torch_module,
)
from audit.errors import AuditError
from audit.maths.certificate import online_minmax, online_minmax_ridge, softmax_loss, squared_loss
from audit.maths.regions import SANITISERS, AcceptanceRegion, class_centroids, sanitiser_level, sanitiser_region
from audit.models.structure import convex_linear_layer
from audit.models.training import loss_kind


class MinMaxParams(AttackParams):
    defense: Literal["none", "sphere", "slab", "sphere_slab"] = "sphere_slab"
    quantile: float | None = Field(None, gt=0, le=1)  # None: 1/(1 + ε), the sanitisers' default
    margin: float = Field(1e-4, ge=0, lt=1)  # radii and widths × (1 − margin): boundary points survive rounding
    lr: float | None = Field(None, gt=0)  # η; None: 1/L (audit.maths.certificate)
    bound_rounds: int | None = Field(None, ge=1)  # rounds of the descent for the bound (default: one per poison)


@dataclass
class MinMaxDiagnostics(AttackDiagnostics):
    """The certified bound U* (regularised clean training loss), its round, the clean loss at the
    start, the largest duality gap of the inner maximisations and the region's settings."""

    bound: float | None = None
    bound_round: int | None = None
    clean_loss_initial: float | None = None
    max_gap: float | None = None
    defense: str | None = None
    quantile: float | None = None


class MinMax(TorchAttack):
    """The online-learning min-max attack as an ART white-box poisoning attack.

    Parameters
    ----------
    estimator : ART PyTorch classifier or nn.Module
        Softmax regression or ridge: every parameter in one ``nn.Linear`` (the clean model; its weights start the run).
    budget : float
        ε in (0, 1]: ``round(ε·n)`` poisons.
    n_classes : int or None
    l2 : float
        The victim's ρ (mean loss + ρ/2·‖W‖²).
    box : (ndarray, ndarray) or None
        The feature box; default the estimator's ``clip_values``.
    seed : int
        Unused (the attack draws nothing); kept for the common interface.
    **params
        :class:`MinMaxParams`.
    """

    name: ClassVar[str] = "minmax"
    title: ClassVar[str] = "min-max (online learning, Steinhardt et al. 2017)"
    description: ClassVar[str] = "min-max: the feasible point of largest loss each round, inside the sphere/slab region (convex victims), white-box"
    threat = ThreatModel(white_box=True, capability="injects the feasible points of largest loss inside the defense's region (data injection)")
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = (
        {"defense": "sphere_slab"},
        {"defense": "slab", "quantile": 0.9},
        {"defense": "none", "bound_rounds": 50},
    )
    Params = MinMaxParams
    params: MinMaxParams
    Diagnostics = MinMaxDiagnostics
    diagnostics: MinMaxDiagnostics
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")
    estimator_needs = "softmax regression or ridge: a PyTorch model whose parameters all belong to one nn.Linear"

    def __init__(self, estimator: Any, *, task: str | None = None, y_range: tuple[float, float] | None = None, **kwargs: Any) -> None:
        module = torch_module(estimator, "MinMax")
        linear = convex_linear_layer(module)
        if linear is None:
            raise AuditError("MinMax needs softmax regression or ridge (every parameter in one nn.Linear); this model has other layers")
        if loss_kind(module) != "cross_entropy":
            raise AuditError("MinMax needs softmax regression or ridge; this model trains with another loss (a linear SVM's squared hinge)")
        task = task or ("regression" if linear.out_features == 1 else "classification")
        if task == "regression":
            kwargs.setdefault("defense", "none")  # no sanitiser for regression: the box
        super().__init__(estimator, task=task, **kwargs)
        if self.task == "regression" and self.params.defense != "none":
            raise AuditError(f"MinMax: defense {self.params.defense!r} is a classifier's sanitiser; for ridge use defense 'none' (the box)")
        if self.task == "regression" and y_range is None:
            raise AuditError("MinMax: ridge needs the response range y_range = (low, high) the poisons' responses lie in")
        self.linear = linear
        self.y_range = y_range

    @classmethod
    def seed_free(cls, params: dict[str, Any]) -> bool:
        return True  # deterministic: the region and the rounds are functions of the data and the clean model

    @classmethod
    def against(cls, defense: str, defense_params: dict[str, Any], rate: float) -> dict[str, Any] | None:
        """A sphere/slab sanitiser: its region (at its quantile); no defense: the box alone (the bound
        then holds for every attack in the box); any other filter: no mode of its own."""
        if defense in SANITISERS:
            return {"defense": defense, "quantile": sanitiser_level(rate, defense_params.get("quantile"))}
        if defense == "none":
            return {"defense": "none"}
        return None

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> MinMax:
        module = ctx.fitted.require_module("minmax")
        data = ctx.dataset
        y_range = data.response_range
        return cls(
            module,
            budget=ctx.budget,
            n_classes=data.n_classes,
            l2=ctx.candidate.rho,
            box=ctx.box,
            task=data.task,
            y_range=y_range,
            seed=ctx.seed,
            **params,
        )

    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "regression":
            return self._run_ridge(task)
        p = self.params
        x = task.x.reshape(len(task.x), -1).astype(np.float64)
        y = task.y.astype(np.int64)
        c = int(self.n_classes or int(y.max()) + 1)
        w = self.linear.weight.detach().double().cpu().numpy()
        b = self.linear.bias.detach().double().cpu().numpy() if self.linear.bias is not None else np.zeros(len(w))
        if w.shape != (c, x.shape[1]):
            raise AuditError(f"MinMax: the linear layer's weight has shape {tuple(w.shape)}, expected ({c}, {x.shape[1]}) for this data")
        probe = torch.as_tensor(x[:4], dtype=self.linear.weight.dtype, device=self.linear.weight.device)
        with torch.no_grad():
            same = torch.allclose(self.module(probe.reshape((len(probe), *task.x.shape[1:]))).reshape(len(probe), -1), self.linear(probe), atol=1e-4)
        if not same:
            raise AuditError("MinMax needs the linear layer to act on the raw features; this estimator preprocesses its inputs")
        level = sanitiser_level(self.budget, p.quantile)
        region = sanitiser_region(p.defense, x, y, c, self.budget, p.quantile) if p.defense != "none" else AcceptanceRegion(class_centroids(x, y, c))
        lo = None if self.lo is None else np.broadcast_to(self.lo, (x.shape[1],)).astype(np.float64)
        hi = None if self.hi is None else np.broadcast_to(self.hi, (x.shape[1],)).astype(np.float64)
        result = online_minmax(x, y, c, region.shrunk(p.margin), lo, hi, self.l2, task.n_poison, w, b, p.lr, p.bound_rounds)
        self.diagnostics.update(
            bound=result.bound,
            bound_round=result.bound_round,
            max_gap=result.max_gap,
            defense=p.defense,
            quantile=level,
            clean_loss_initial=float(softmax_loss(w, b, x, y).mean()),
        )
        return result.x.reshape((task.n_poison, *task.x.shape[1:])), result.y

    def _run_ridge(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        """Ridge: poisons and bound in the feature box × response range (:func:`online_minmax_ridge`)."""
        p = self.params
        x = task.x.reshape(len(task.x), -1).astype(np.float64)
        if self.lo is None or self.hi is None:
            raise AuditError("MinMax: ridge needs a finite feature box (the squared loss is unbounded outside one)")
        lo = np.broadcast_to(self.lo, (x.shape[1],)).astype(np.float64)
        hi = np.broadcast_to(self.hi, (x.shape[1],)).astype(np.float64)
        w = self.linear.weight.detach().double().cpu().numpy().reshape(-1)
        b = float(self.linear.bias.detach().double().cpu().numpy().reshape(-1)[0]) if self.linear.bias is not None else 0.0
        assert self.y_range is not None
        result = online_minmax_ridge(x, task.y.astype(np.float64), lo, hi, self.y_range, self.l2, task.n_poison, w, b, p.lr, p.bound_rounds)
        self.diagnostics.update(
            bound=result.bound,
            bound_round=result.bound_round,
            max_gap=0.0,
            defense="none",
            clean_loss_initial=float(squared_loss(w, b, x, task.y.astype(np.float64)).mean()),
        )
        return result.x.reshape((task.n_poison, *task.x.shape[1:])).astype(np.float32), result.y.astype(np.float32)
