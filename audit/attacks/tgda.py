"""TGDA: the total-gradient attack with a generator (lu-kamath-yu-2022, eq. 15–17, Algorithm 1).

The attacker (leader) is a generator ``L_θ`` that maps clean training points
``[x_i; onehot(y_i)]`` to poisons in the feature box, labels unchanged (clean-label). The
defender (follower) is the victim's model ``w`` trained on ``D_tr ∪ D_p`` with the audit's
objective ``f = mean loss + (ρ/2)‖w‖²``. Per mini-batch of ``D_tr`` (with its share of the
poisons) the game alternates

* ``m`` total-gradient *ascent* steps on θ, eq. (17): ``θ ← θ + α·D_θ ℓ`` with the
  total derivative ``D_θ ℓ = −∇²_{θw} f · (∇²_{ww} f)⁻¹ · ∇_w ℓ`` (ℓ: the follower's
  validation loss; it does not depend on θ directly). The inverse-Hessian product
  ``v = (∇²_{ww} f + δI)⁻¹ ∇_w ℓ`` comes from conjugate gradient on Hessian-vector
  products (from zero, as the reference code), then ``D_θ ℓ = −∇_θ⟨∇_w f, v⟩`` by one
  more double-backward pass through the poisons and the generator only;
* ``n`` gradient *descent* steps on w, eq. (16): ``w ← w − β∇_w f``.

Cost per epoch: the Hessian-vector products touch the clean mini-batches (independent of
ε); only the generator's forward/backward pass over the poisons grows with ε. Memory is
bounded by the batch size. Paper defaults: α = 0.01, m = 1, β = 0.1, n = 20, 200 epochs,
batch 1000 (α is rescaled to the paper's total ascent length when the data has fewer
batches, :func:`leader_step_size`); the follower starts from the clean model (partial warm start), the generator
from its reconstruction pretraining.

Ablations of the paper: ``formulation: zero_sum`` (ℓ = f, Table 5), ``order:
defender_first`` (the defender moves first in every round, Table 4), ``warm_start: cold``
(``w ← w_pre − β∇_w f``: the follower restarts from the clean model every round, Table 8),
``pretrain: false`` (Table 6).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from art.attacks.attack import PoisoningAttackTransformer
from pydantic import Field
from torch import nn

from audit.attacks.base import (
    AttackContext,
    AttackParams,
    PoisonInput,
    SourcedDiagnostics,
    ThreatModel,
    TorchAttack,
)
from audit.catalog import ProfileSetting
from audit.errors import AuditError
from audit.maths.autodiff import flat, objective_hvp
from audit.maths.implicit import GramCache, LinearERM
from audit.maths.linear_solve import CG, LinearSolver, Matvec, SolveResult, make_solver
from audit.models.generators import build_generator, pretrain_generator
from audit.models.structure import convex_linear_layer, is_convex_linear, layer_inputs
from audit.models.training import data_loss, loss_kind, objective
from audit.seeding import generators, seeded_init


class TGDAParams(AttackParams):
    epochs: int = Field(200, ge=1)
    leader_lr: float | None = Field(None, gt=0)  # α; None: the paper's total ascent length (see leader_step_size)
    leader_steps: int = Field(1, ge=0)  # m
    follower_lr: float = Field(0.1, gt=0)  # β
    follower_steps: int = Field(20, ge=0)  # n
    batch_size: int | None = Field(1000, ge=1)
    cg_max_iter: int = Field(64, ge=1)
    cg_tol: float = Field(1e-2, gt=0)
    damping: float = Field(0.0, ge=0)
    solver: Literal["auto", "cg", "normal", "exact"] = "auto"
    # a convex linear follower: precondition the CG of the total derivative by the Kronecker-factored curvature
    # (LinearERM.preconditioner): the same tolerance in 3x fewer products, but no faster on mnist5k once the products are
    # in closed form and a different stopping point at tol 1e-2 (examples/benchmarks/README.md, "TGDA on mnist5k")
    precondition: Literal["kfac", "none"] = "none"
    formulation: Literal["non_zero_sum", "zero_sum"] = "non_zero_sum"
    attacker_data: Literal["val", "train_val"] = "val"
    order: Literal["attacker_first", "defender_first"] = "attacker_first"
    warm_start: Literal["partial", "cold"] = "partial"
    generator: Literal["auto", "dense", "conv"] = "auto"
    generator_width: int | None = Field(None, ge=1)
    pretrain: bool = True
    pretrain_epochs: int = Field(20, ge=0)
    pretrain_lr: float = Field(2e-3, gt=0)
    pretrain_batch_size: int = Field(100, ge=1)
    pretrain_seed: int = 0
    log_every: int = Field(10, ge=1)
    n_examples: int = Field(8, ge=0)


# Pretrained generators, keyed by the training data and the pretraining settings: every grid
# cell of a dataset shares one pretraining (it does not depend on the candidate or budget).
_PRETRAINED: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
_PRETRAINED_MAX = 4


# The paper's leader on MNIST: α = 0.01 for 200 epochs × 60 batches of 1000 = 12 000 steps.
PAPER_ALPHA, PAPER_LEADER_STEPS, MAX_AUTO_ALPHA = 0.01, 12_000, 1.0


def smoothness(x: torch.Tensor, l2: float) -> float:
    """An upper bound on the smoothness L of a softmax-regression follower's objective on inputs like ``x`` (n, d):
    ``½·λ_max(X̃ᵀX̃/n) + ρ``, X̃ with a ones column (the softmax curvature is at most ½); gradient descent is stable
    for steps up to 1/L."""
    x1 = torch.cat([x.reshape(len(x), -1).double(), torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], dim=1)
    return float(0.5 * torch.linalg.eigvalsh(x1.T @ x1 / len(x1))[-1]) + l2


#: how many times the game is restarted at a quarter of the automatic leader step after diverging
BACKOFFS = 3


class _Diverged(Exception):
    """The generator's weights became non-finite at ``epoch`` with leader step ``alpha``."""

    def __init__(self, epoch: int, alpha: float) -> None:
        super().__init__(epoch, alpha)
        self.epoch, self.alpha = epoch, alpha


def leader_step_size(alpha: float | None, total_steps: int) -> float:
    """α given, or the paper's total ascent length α·T = 0.01 × 12 000 spread over this run's steps.

    On full MNIST (60 000 points, batch 1000, 200 epochs) that is the paper's α = 0.01; on
    mnist5k (3 batches per epoch) it is 0.2. With the paper's α there, 600 steps barely move
    the generator (0.0 points test drop, measured). Capped at 1.0, the largest step measured
    stable on mnist5k.
    """
    if alpha is not None:
        return alpha
    return min(MAX_AUTO_ALPHA, PAPER_ALPHA * max(1.0, PAPER_LEADER_STEPS / max(total_steps, 1)))


def total_derivative(
    follower: nn.Module,
    gen: nn.Module,
    x_clean: torch.Tensor,
    y_clean: torch.Tensor,
    x_src: torch.Tensor,
    y_src: torch.Tensor,
    x_l: torch.Tensor,
    y_l: torch.Tensor,
    l2: float,
    formulation: str = "non_zero_sum",
    solve: LinearSolver | None = None,
    damping: float = 0.0,
    linear: LinearCurvature | None = None,
) -> tuple[list[torch.Tensor], SolveResult]:
    """``D_θ ℓ`` at the follower's current weights (eq. 15–17), one tensor per generator parameter.

    f is the mean loss over ``(x_clean, y_clean) ∪ (L_θ(x_src, y_src), y_src)`` plus
    ``(ρ/2)‖w‖²``; ℓ is the mean loss over ``(x_l, y_l)`` (``non_zero_sum``) or f itself
    (``zero_sum``). ``D_θ ℓ = ∇_θ ℓ − ∇²_{θw} f · (∇²_{ww} f + δI)⁻¹ ∇_w ℓ``, with
    ``∇_θ ℓ = 0`` in the non-zero-sum game. ``solve`` inverts the damped Hessian (CG for a convex
    follower, CG on the normal equations for a network; default CG with tol 1e-2, 64 iterations). ``linear``: the
    convex linear follower's Hessian in closed form (and a preconditioner for a CG ``solve``) instead of double
    backward. Returns the gradients and how the solve ended.
    """
    w_params = list(follower.parameters())
    theta = list(gen.parameters())
    with torch.no_grad():
        xp_fixed = gen(x_src, y_src)
    x_mix, y_mix = torch.cat([x_clean, xp_fixed]), torch.cat([y_clean, y_src])
    n_mix = len(y_mix)
    if formulation == "zero_sum":  # ℓ = f (Table 5)
        rhs = flat(torch.autograd.grad(objective(follower, x_mix, y_mix, "classification", l2), w_params))
    else:
        rhs = flat(torch.autograd.grad(data_loss(follower(x_l), y_l, "classification", kind=loss_kind(follower)), w_params))
    solve = solve or CG(1e-2, 64)
    if linear is None:
        hvp = objective_hvp(follower, x_mix, y_mix, "classification", l2, damping=damping)
    else:
        hvp, m_inv = linear(x_mix, y_mix, l2, damping)
        if m_inv is not None and isinstance(solve, CG):
            solve = dataclasses.replace(solve, precondition=m_inv)
    cg = solve(hvp, rhs.detach())
    v = cg.x.detach()
    # −∇_θ ⟨∇_w f, v⟩: only the poisons' part of f depends on θ
    loss_p = data_loss(follower(gen(x_src, y_src)), y_src, "classification", reduction="sum", kind=loss_kind(follower)) / n_mix
    g_w = torch.autograd.grad(loss_p, w_params, create_graph=True)
    implicit = torch.autograd.grad(flat(g_w) @ v, theta, allow_unused=True)
    grads = [torch.zeros_like(q) if g is None else -g for q, g in zip(theta, implicit)]
    if formulation == "zero_sum":  # ℓ = f also depends on θ directly
        loss_p = data_loss(follower(gen(x_src, y_src)), y_src, "classification", reduction="sum", kind=loss_kind(follower)) / n_mix
        direct = torch.autograd.grad(loss_p, theta, allow_unused=True)
        grads = [g if d is None else g + d for g, d in zip(grads, direct)]
    return [g.detach() for g in grads], cg


class LinearCurvature:
    """A convex linear follower's damped Hessian ``∇²_{ww} f + δI`` in closed form (:class:`LinearERM`, two matrix
    products per product instead of a double-backward pass) and, with ``precondition``, the K-FAC preconditioner
    ``(S̄ ⊗ G + (ρ + δ)I)⁻¹`` (:meth:`LinearERM.preconditioner`); ``G``'s eigendecomposition is shared by ``every``
    consecutive leader steps (their mini-batches and the slowly moving poisons have nearly the same input statistics).
    """

    def __init__(self, module: nn.Module, precondition: bool, every: int = 20) -> None:
        layer = convex_linear_layer(module)
        assert layer is not None, "LinearCurvature needs a convex linear follower"
        self.module, self.layer = module, layer
        self.gram = GramCache(every=every) if precondition else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, l2: float, damping: float) -> tuple[Matvec, Matvec | None]:
        """``(u ↦ (H + δI)u, u ↦ M⁻¹u or None)`` for f over ``(x, y)`` (N, d), (N,) at the follower's weights."""
        phi = layer_inputs(self.module, self.layer, x)
        bias = self.layer.bias is not None
        w = flat([q.detach() for q in self.module.parameters()])
        eigh = None if self.gram is None else self.gram(phi, bias)
        problem = LinearERM(phi, y, l2, self.layer.out_features, bias, eigh, loss=loss_kind(self.module))
        h = problem.hvp(w)
        hvp = h if damping == 0 else (lambda u: h(u) + damping * u)
        m_inv = None if self.gram is None else dataclasses.replace(problem, rho=l2 + damping).preconditioner(w)
        return hvp, m_inv

    @torch.no_grad()
    def descend(self, x: torch.Tensor, y: torch.Tensor, l2: float, lr: float, steps: int) -> None:
        """``steps`` of ``w ← w − lr·∇_w f`` on ``(x, y)`` (eq. 16) with f's closed-form gradient, in place."""
        problem = LinearERM(
            layer_inputs(self.module, self.layer, x), y, l2, self.layer.out_features, self.layer.bias is not None, loss=loss_kind(self.module)
        )
        params = list(self.module.parameters())
        w = flat([q.detach() for q in params])
        for _ in range(steps):
            w = w - lr * problem.grad(w)
        offset = 0
        for q in params:
            q.copy_(w[offset : offset + q.numel()].reshape(q.shape))
            offset += q.numel()


@dataclass
class TGDADiagnostics(SourcedDiagnostics):
    """The leader's schedule and how its inverse-Hessian solves ended (Alg. 1), the generator's pretraining."""

    epochs: int | None = None
    leader_lr: float | None = None
    leader_lr_backoff: list[list[float]] | None = None  # [epoch, α] of each try that diverged (the game then restarted at α/4)
    solver: str | None = None
    generator: str | None = None
    leader_steps_total: int | None = None
    cg_mean_iterations: float | None = None
    cg_converged_fraction: float | None = None
    cg_median_residual: float | None = None
    cg_max_residual: float | None = None
    cg_steps: list[list[float]] | None = None
    curve: list[dict[str, float]] | None = None
    pretrain: dict[str, Any] | None = None
    loop_seconds: float | None = None


class TGDA(TorchAttack, PoisoningAttackTransformer):
    """The TGDA attack as an ART white-box poisoning attack.

    Parameters
    ----------
    estimator : ART PyTorchClassifier or nn.Module
        The defender's model, trained on the clean data (its weights are ``w_pre``).
    x_val, y_val : ndarray
        The attacker's validation set ``D_v`` (ℓ is the follower's loss on it).
    budget : float
        ε in (0, 1]: ``round(ε·n)`` poisons.
    n_classes : int
    l2 : float
        The defender's L2 strength ρ (in f).
    box : (ndarray, ndarray) or None
        Feature box ``(lo, hi)``, each of shape (d,).
    image_shape : tuple or None
        ``(C, H, W)`` for image data (chooses the conv generator under ``generator: auto``).
    seed : int
        Seeds the choice of points to poison and the mini-batch order.
    linear_solver : audit.maths.linear_solve.LinearSolver or None
        Inverts the follower's damped Hessian in the total derivative (Eq. 17). None: the one
        ``solver``/``cg_tol``/``cg_max_iter`` name (CG for a convex follower, else CG on the
        normal equations).
    **params
        :class:`TGDAParams` (see the module docstring).

    Notes
    -----
    ``poison(x, y)`` runs the game with ``(x, y)`` as ``D_tr`` and returns ``L_θ([x_i; y_i])``
    for the first ``round(ε·n)`` points of a seeded shuffle of ``(x, y)`` (the paper's
    ``D_tr[0:εN]``), with their labels. Afterwards :meth:`transform` applies ``L_θ`` to any
    other points.
    """

    name: ClassVar[str] = "tgda"
    title: ClassVar[str] = "TGDA (total gradient descent ascent)"
    description: ClassVar[str] = "TGDA: generator trained by total gradient ascent against the retrained model, white-box, clean-label"
    threat = ThreatModel(white_box=True, capability="injects generated points whose labels follow the clean data (clean-label data injection)")
    profiles: ClassVar[Mapping[str, ProfileSetting]] = {
        "standard": ProfileSetting(
            {"epochs": 100},
            seeds=1,
            strength="TGDA, 100 of 200 epochs at seed 0: 67–80 % of the paper setting's damage, 42–68 s against 91–124 s (mnist5k LR, ε = 10 %)",
        ),
        "quick": ProfileSetting(
            skip="its generator game takes 1.5–2 min per cell on a 2-core CPU (mnist5k LR, 200 epochs); --profile standard or paper runs it"
        ),
    }
    smoke_params: ClassVar[tuple[Mapping[str, Any], ...]] = (
        {"epochs": 2, "pretrain_epochs": 2, "cg_max_iter": 5, "follower_steps": 2, "batch_size": 40},
    )
    Params = TGDAParams
    params: TGDAParams
    Diagnostics = TGDADiagnostics
    diagnostics: TGDADiagnostics
    uses_validation: ClassVar[bool] = True

    def __init__(
        self, estimator: Any, *, image_shape: tuple[int, ...] | None = None, linear_solver: LinearSolver | None = None, **kwargs: Any
    ) -> None:
        super().__init__(estimator, **kwargs)
        if linear_solver is not None and not callable(linear_solver):
            raise AuditError(f"The 'linear_solver' parameter of TGDA must be a solver of audit.maths.linear_solve. Got {linear_solver!r} instead.")
        self.linear_solver = linear_solver
        if image_shape is None and len(getattr(estimator, "input_shape", ()) or ()) == 3:
            image_shape = tuple(estimator.input_shape)  # an ART CNN: the conv generator under generator: auto
        self.image_shape = tuple(image_shape) if image_shape else None
        self.generator: nn.Module | None = None
        self._check_params()

    def _check_params(self) -> None:
        if self.params.generator == "conv" and (self.image_shape is None or len(self.image_shape) != 3):
            raise AuditError("TGDA generator 'conv' needs image data (a dataset with image_shape (C, H, W))")

    @classmethod
    def for_cell(cls, params: dict[str, Any], ctx: AttackContext) -> TGDA:
        module = ctx.fitted.require_module("tgda")
        data = ctx.dataset
        if data.task != "classification":
            raise AuditError("tgda is a classification attack; use optp or statp for regression")
        return cls(module, **ctx.optimiser_arguments(), n_classes=data.n_classes, image_shape=data.image_shape, **params)

    # ------------------------------------------------------------------ the generator
    def _generator(self, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        """A fresh generator, pretrained to reconstruct ``(x, y)`` (cached per data and settings)."""
        p = self.params
        device, dtype = x.device, x.dtype
        lo = torch.as_tensor(self.lo if self.lo is not None else x.min(0).values.cpu(), dtype=dtype)
        hi = torch.as_tensor(self.hi if self.hi is not None else x.max(0).values.cpu(), dtype=dtype)
        with seeded_init(p.pretrain_seed):
            gen = build_generator(p.generator, x.shape[1], int(self.n_classes or 2), lo, hi, self.image_shape, p.generator_width).to(
                device=device, dtype=dtype
            )
        if not p.pretrain or p.pretrain_epochs == 0:
            self.diagnostics.pretrain = {"epochs": 0}
            return gen
        digest = hashlib.sha256()
        for t in (x, y, lo, hi):
            digest.update(t.detach().cpu().numpy().tobytes())
        key = "|".join(
            [
                digest.hexdigest(),
                type(gen).__name__,
                str(p.generator_width),
                str(p.pretrain_epochs),
                str(p.pretrain_lr),
                str(p.pretrain_batch_size),
                str(p.pretrain_seed),
                str(device),
                str(dtype),
            ]
        )
        cached = key in _PRETRAINED
        if not cached:
            start = time.perf_counter()
            result = pretrain_generator(gen, x, y, p.pretrain_epochs, p.pretrain_lr, p.pretrain_batch_size, p.pretrain_seed)
            info = {"epochs": result.epochs, "mse_initial": result.mse_initial, "mse_final": result.mse_final, "seconds": time.perf_counter() - start}
            while len(_PRETRAINED) >= _PRETRAINED_MAX:
                _PRETRAINED.pop(next(iter(_PRETRAINED)))
            _PRETRAINED[key] = ({k: v.detach().clone() for k, v in gen.state_dict().items()}, info)
        state, info = _PRETRAINED[key]
        gen.load_state_dict(state)
        self.diagnostics.pretrain = {**info, "cached": cached}
        return gen

    def poison_estimator(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
        """ART's ``PoisoningAttackTransformer``: a copy of the ART estimator trained on ``(x, y)`` plus the poisons.

        Runs :meth:`poison` on ``(x, y)`` and fits a deep copy of the estimator with
        ART's ``fit`` on the union; ``kwargs`` (``nb_epochs``, ``batch_size``) go to ``fit``.
        The estimator the attack was built with is not changed.
        """
        if not hasattr(self.estimator, "fit") or isinstance(self.estimator, nn.Module):
            raise AuditError("TGDA.poison_estimator needs an ART estimator to copy and refit (the attack was built on a bare nn.Module)")
        x_p, y_p = self.poison(x, y)
        poisoned = copy.deepcopy(self.estimator)
        poisoned.fit(np.concatenate([np.asarray(x, np.float32), x_p]), np.concatenate([np.asarray(y), y_p.astype(np.asarray(y).dtype)]), **kwargs)
        return poisoned

    @torch.no_grad()
    def transform(self, x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """``L_θ([x_i; y_i])`` for any points, after :meth:`poison` has trained the generator."""
        if self.generator is None:
            raise AuditError("TGDA.transform needs a trained generator: call poison(x_train, y_train) first")
        ref = next(self.generator.parameters())
        out = []
        for start in range(0, len(x), chunk):
            xb = torch.as_tensor(np.asarray(x[start : start + chunk]), dtype=ref.dtype, device=ref.device)
            yb = torch.as_tensor(np.asarray(y[start : start + chunk]), dtype=torch.long, device=ref.device)
            out.append(self.generator(xb, yb).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, np.shape(x)[1]), np.float32)

    # ------------------------------------------------------------------ the game
    def _run(self, task: PoisonInput) -> tuple[np.ndarray, np.ndarray]:
        """The game at the leader's step α; where the automatic α (``leader_lr`` unset) makes the generator's weights
        non-finite, the game is played again from the start with α/4 and the follower's step under 1/L (:func:`smoothness`), up to
        :data:`BACKOFFS` times (the paper's total
        ascent length is MNIST's; on a table in raw units it can overshoot). Each retry starts from the same seeded
        state, so the cell stays reproducible; ``diagnostics.leader_lr_backoff`` lists each ``[epoch, α]`` that diverged."""
        alpha: float | None = None
        diverged: list[list[float]] = []
        for _ in range(BACKOFFS + 1):
            try:
                out = self._game(task, alpha)
            except _Diverged as err:
                if self.params.leader_lr is not None:  # the user's own α: theirs to lower
                    raise RuntimeError(
                        f"TGDA diverged at epoch {err.epoch} (non-finite generator weights); lower leader_lr (now {err.alpha:g})"
                    ) from None
                diverged.append([err.epoch, err.alpha])
                alpha = err.alpha / 4
                task.rng, task.torch_rng = generators(self.seed, task.device)  # the same start as the first try
                continue
            self.diagnostics.update(leader_lr_backoff=diverged or None)
            return out
        steps = f"leader_lr from {diverged[0][1]:g} down to {diverged[-1][1]:g}"
        raise RuntimeError(f"TGDA diverged {len(diverged)} times (non-finite generator weights; {steps}); set leader_lr lower")

    def _game(self, task: PoisonInput, alpha_override: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 1: the leader (generator) and the follower (the victim) alternate; α = ``alpha_override`` or the automatic step."""
        p = self.params
        n_poison, rng = task.n_poison, task.rng
        follower = copy.deepcopy(self.module)
        ref = next(follower.parameters())
        device = ref.device
        w_params = [q for q in follower.parameters()]
        for q in w_params:
            q.requires_grad_(True)
        w_pre = [q.detach().clone() for q in w_params]
        solve = self.linear_solver
        if solve is None:
            solve = make_solver(p.solver if p.solver != "auto" else ("cg" if is_convex_linear(follower) else "normal"), p.cg_tol, p.cg_max_iter)
        solver = solve.name
        # the closed-form curvature of a convex linear follower (the hinge has none: autograd's, ρI, then)
        linear = LinearCurvature(follower, p.precondition == "kfac") if is_convex_linear(follower) and loss_kind(follower) != "hinge" else None

        xt, yt = task.x_t, task.y_t
        xv, yv = task.tensor(self.x_val), task.tensor(self.y_val, torch.long)
        # ℓ's data: D_v, or D_v ∪ D_tr (the attacker knows both; more points, less overfitting to D_v)
        xl, yl = (torch.cat([xv, xt]), torch.cat([yv, yt])) if p.attacker_data == "train_val" else (xv, yv)
        n, n_val = len(yt), len(yl)
        source = rng.permutation(n)[:n_poison]  # D_p⁰ = D_tr[0:εN] of a seeded shuffle
        src = torch.as_tensor(source, device=device)
        x_src, y_src = xt[src], yt[src]

        gen = self._generator(xt, yt)
        self.generator = gen
        theta = [q for q in gen.parameters()]
        for q in theta:
            q.requires_grad_(True)

        batch = min(p.batch_size or n, n)
        n_batches = math.ceil(n / batch)
        alpha = alpha_override if alpha_override is not None else leader_step_size(p.leader_lr, p.epochs * n_batches * p.leader_steps)
        beta = p.follower_lr
        if alpha_override is not None:  # a retry after diverging: the follower's step is also kept under 1/L (L: f's smoothness)
            beta = min(beta, 1.0 / smoothness(xt, self.l2))
        val_batch = min(batch, n_val)
        cg_iters: list[int] = []
        cg_residuals: list[float] = []
        cg_converged = 0
        curve: list[dict[str, float]] = []
        start = time.perf_counter()

        def follower_steps(clean_idx: torch.Tensor, p_idx: torch.Tensor) -> None:
            with torch.no_grad():
                x_mix = torch.cat([xt[clean_idx], gen(x_src[p_idx], y_src[p_idx])])
            y_mix = torch.cat([yt[clean_idx], y_src[p_idx]])
            if p.warm_start == "cold":  # w ← w_pre − β∇f (Table 8)
                with torch.no_grad():
                    for q, q0 in zip(w_params, w_pre):
                        q.copy_(q0)
            if linear is not None:  # the same steps with f's closed-form gradient
                linear.descend(x_mix, y_mix, self.l2, beta, p.follower_steps)
                return
            for _ in range(p.follower_steps):  # eq. (16)
                grads = torch.autograd.grad(objective(follower, x_mix, y_mix, "classification", self.l2), w_params)
                with torch.no_grad():
                    for q, g in zip(w_params, grads):
                        q -= beta * g  # type: ignore[misc]  # torch/numpy stubs

        def leader_step(clean_idx: torch.Tensor, p_idx: torch.Tensor, val_idx: torch.Tensor) -> None:
            nonlocal cg_converged
            grads, cg = total_derivative(
                follower,
                gen,
                xt[clean_idx],
                yt[clean_idx],
                x_src[p_idx],
                y_src[p_idx],
                xl[val_idx],
                yl[val_idx],
                self.l2,
                p.formulation,
                solve,
                p.damping,
                linear,
            )
            cg_iters.append(cg.n_iter)
            cg_residuals.append(cg.residual)
            cg_converged += int(cg.converged)
            with torch.no_grad():
                for q, g in zip(theta, grads):
                    q += alpha * g  # type: ignore[misc]  # torch/numpy stubs — eq. (17): ascent on ℓ

        for epoch in self.progress(range(p.epochs), "epochs"):
            clean_order = torch.as_tensor(rng.permutation(n), device=device).split(batch)
            poison_order = [torch.as_tensor(c, device=device) for c in np.array_split(rng.permutation(n_poison), n_batches)]
            val_order = torch.as_tensor(rng.permutation(n_val), device=device)
            for b in range(n_batches):
                clean_idx, p_idx = clean_order[b], poison_order[b]
                val_idx = val_order[(b * val_batch) % n_val :][:val_batch]
                if len(val_idx) < val_batch:
                    val_idx = torch.cat([val_idx, val_order[: val_batch - len(val_idx)]])
                if p.order == "defender_first":
                    follower_steps(clean_idx, p_idx)
                if len(p_idx):
                    for _ in range(p.leader_steps):
                        leader_step(clean_idx, p_idx, val_idx)
                if p.order == "attacker_first":
                    follower_steps(clean_idx, p_idx)
            if epoch % p.log_every == 0 or epoch == p.epochs - 1:
                curve.append(self._log(epoch, follower, xv, yv, cg_iters, cg_residuals, start))
            if not all(torch.isfinite(q).all() for q in theta):
                raise _Diverged(epoch, alpha)

        with torch.no_grad():
            x_p = torch.cat([gen(x_src[i : i + 1024], y_src[i : i + 1024]) for i in range(0, n_poison, 1024)])
        change = (x_p - x_src).abs()
        n_steps = len(cg_iters)
        self.diagnostics.update(
            epochs=p.epochs,
            leader_lr=alpha,
            solver=solver,
            generator=type(gen).__name__,
            leader_steps_total=n_steps,
            cg_mean_iterations=float(np.mean(cg_iters)) if n_steps else 0.0,
            cg_converged_fraction=cg_converged / n_steps if n_steps else 1.0,
            cg_median_residual=float(np.median(cg_residuals)) if n_steps else 0.0,
            cg_max_residual=float(np.max(cg_residuals)) if n_steps else 0.0,
            cg_steps=[[int(i), float(f"{r:.3g}")] for i, r in zip(cg_iters, cg_residuals)],  # per leader step
            curve=curve,
            max_change=float(change.max()) if n_poison else 0.0,
            mean_change=float(change.mean()) if n_poison else 0.0,
            source_examples=[int(i) for i in source[: p.n_examples]],
            loop_seconds=time.perf_counter() - start,
        )
        return x_p.float().cpu().numpy(), y_src.cpu().numpy()

    @torch.no_grad()
    def _log(
        self, epoch: int, follower: nn.Module, xv: torch.Tensor, yv: torch.Tensor, iters: list[int], residuals: list[float], start: float
    ) -> dict[str, float]:
        out = torch.cat([follower(xv[i : i + 4096]) for i in range(0, len(yv), 4096)])
        recent = slice(-max(1, min(len(iters), 50)), None)
        return {
            "epoch": epoch,
            "val_loss": float(data_loss(out, yv, "classification", kind=loss_kind(self.module))),
            "val_accuracy": float(100.0 * (out.argmax(1) == yv).double().mean()),
            "cg_iterations": float(np.mean(iters[recent])) if iters else 0.0,
            "cg_residual": float(np.median(residuals[recent])) if residuals else 0.0,
            "seconds": time.perf_counter() - start,
        }
