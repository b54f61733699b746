"""The two ways back-gradient gets its hypergradients ``∇_h A`` (``hypergradient: unrolled | implicit``).

Both are *oracles* over the hyperparameters ``h = [x_p, log ρ(, y_p)]``: ``evaluate(h)`` trains the victim on
``D_tr ∪ D_p`` and returns the attacker's objective ``A`` there; ``gradient(h)`` also returns ``∇_h A``.

- :class:`Unrolled` — the paper's reverse-mode differentiation through ``T`` steps of gradient descent
  (carnerero-cano-2021, eq. 2; :func:`audit.maths.hypergrad.rmd`). Any torch victim.
- :class:`Implicit` — the implicit function theorem at the optimum of a convex victim's objective
  (Biggio et al. 2012; Koh & Liang 2017; :func:`audit.maths.implicit.implicit_hypergradient`):
  ``∇_h A = −∂_h⟨∇_w L, v⟩`` with ``H v = ∇_w A``. One ``nn.Linear`` with ρ > 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch

from audit.attacks.back_gradient.params import BackGradientParams
from audit.maths.hypergrad import Inner, Outer, rmd, unroll
from audit.maths.implicit import GramCache, LinearERM, SparseRows, gram_matrix, implicit_hypergradient, newton_cg
from audit.maths.linear_solve import CG, Matvec
from audit.models.structure import convex_linear_layer, layer_inputs
from audit.models.surrogate import refitted
from audit.models.training import loss_kind


@dataclass
class Point:
    """The attacker's objective at the model trained on some poisons (``w``: that model), and its
    hypergradients when asked for (one per hyperparameter, their shapes)."""

    value: float
    w: torch.Tensor
    inner: float
    stationarity: float | None = None
    grads: tuple[torch.Tensor, ...] = ()
    hvp: Matvec | None = None
    precondition: Matvec | None = None


class Unrolled:
    """``A(w_T)`` after ``T`` gradient steps from ``w_0`` and its hypergradients by reverse mode (RMD)."""

    def __init__(self, inner: Inner, outer: Outer, w0: torch.Tensor, steps: int, lr: float, checkpoint: int | None, explicit: Inner | None) -> None:
        self.inner, self.outer, self.w0, self.steps, self.lr = inner, outer, w0, steps, lr
        self.checkpoint, self.explicit = checkpoint, explicit
        self.stored_states: int | None = None
        self.evaluations = 0

    def evaluate(self, hypers: list[torch.Tensor]) -> Point:
        self.evaluations += 1
        w, _ = unroll(self.inner, self.w0, hypers, self.steps, self.lr, keep_every=self.steps)
        with torch.no_grad():
            value = self.outer(w) + (0.0 if self.explicit is None else self.explicit(w, *hypers))
            return Point(float(value), w, float(self.inner(w, *hypers)))

    def gradient(self, hypers: list[torch.Tensor], at: Point | None = None) -> Point:
        self.evaluations += 1
        r = rmd(self.inner, self.outer, self.w0, hypers, self.steps, self.lr, self.checkpoint, self.explicit)
        self.stored_states = r.stored_states
        return Point(r.outer, r.w_final, r.inner_final, None, r.grads)


class Implicit:
    """``A(w*)`` at the optimum of the convex training objective and its exact implicit hypergradients.

    The victim is one ``nn.Linear`` after parameter-free preprocessing, so training is the closed-form
    :class:`LinearERM` on the layer's inputs, minimised by truncated Newton warm-started from the last
    accepted model; ``H v = ∇A`` is solved by CG on its closed-form Hessian-vector products,
    warm-started from the last ``v``; the mixed partial ``−∇_h⟨∇_w L, v⟩`` is one autograd product.
    ``refit``: the clean training points (raw) a pipeline's scalers are refit on together with the poisons
    (:func:`.objectives.refit_objectives`); the layer's inputs are then computed under those statistics at every
    retraining.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        inner: Inner,
        outer: Outer,
        w0: torch.Tensor,
        explicit: Inner | None,
        x_clean: torch.Tensor,
        y_clean: torch.Tensor,
        y_poison: torch.Tensor | None,
        tol: float,
        solver: CG,
        refit: torch.Tensor | None = None,
        precondition: bool = False,
    ) -> None:

        layer = convex_linear_layer(module)
        assert layer is not None, "hypergradient_mode() admits implicit only for a convex linear victim"
        self.layer: torch.nn.Linear = layer
        self.module, self.inner, self.outer, self.w, self.explicit, self.tol, self.solver = module, inner, outer, w0, explicit, tol, solver
        self.phi_clean, self.y_clean, self.y_poison = self._features(x_clean), y_clean, y_poison
        self.v: torch.Tensor | None = None
        self.stored_states: int | None = None
        self.evaluations = 0
        self.refit = refit
        self.precondition = precondition
        # the preconditioner's Gram eigendecomposition, refreshed every few retrainings; the clean points' part kept
        # (a pipeline refit moves every point's inputs: then recomputed whole)
        clean = gram_matrix(self.phi_clean, self.layer.bias is not None) if precondition and refit is None else None
        self.gram = GramCache(clean=clean, n_clean=len(self.phi_clean)) if precondition else None
        # mostly-zero clean inputs (images) multiply as a sparse matrix; a refit moves them all, so they stay dense
        self.sparse = SparseRows.of(self.phi_clean) if refit is None else None

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The linear layer's inputs for ``x`` (any parameter-free preprocessing applied)."""
        return layer_inputs(self.module, self.layer, x)

    def _problem(self, hypers: list[torch.Tensor]) -> LinearERM:
        x_p, log_l2 = hypers[0], hypers[1]
        y_p = hypers[2] if len(hypers) > 2 else self.y_poison
        if self.refit is not None:  # the pipeline refit on D_tr ∪ D_p: every input moves with the scalers' statistics
            with refitted(self.module, torch.cat([self.refit, x_p.detach()])):
                phi = torch.cat([self._features(self.refit), self._features(x_p)])
        else:
            phi = torch.cat([self.phi_clean, self._features(x_p)])
        labels = torch.cat([self.y_clean, y_p])  # type: ignore[list-item]  # torch stubs
        bias = self.layer.bias is not None
        eigh = None if self.gram is None else self.gram(phi, bias)
        return LinearERM(phi, labels, float(torch.exp(log_l2)), self.layer.out_features, bias, eigh, self.sparse, loss_kind(self.module))

    def evaluate(self, hypers: list[torch.Tensor]) -> Point:
        self.evaluations += 1
        problem = self._problem(hypers)
        fit = newton_cg(problem, self.w, self.tol, precondition=problem.preconditioner if self.precondition else None)
        with torch.no_grad():
            value = self.outer(fit.w) + (0.0 if self.explicit is None else self.explicit(fit.w, *hypers))
        m_inv = problem.preconditioner(fit.w) if self.precondition else None
        return Point(float(value), fit.w, fit.value, fit.grad_norm, hvp=problem.hvp(fit.w), precondition=m_inv)

    def gradient(self, hypers: list[torch.Tensor], at: Point | None = None) -> Point:
        at = at or self.evaluate(hypers)
        self.w = at.w  # the next retraining starts here
        solver = self.solver if at.precondition is None else dataclasses.replace(self.solver, precondition=at.precondition)
        r = implicit_hypergradient(self.inner, self.outer, at.w, hypers, solver, self.explicit, self.v, at.hvp)
        self.v = r.solve.x
        return Point(r.outer, at.w, at.inner, r.stationarity, r.grads)


class Oracle(Protocol):
    """What the ascent asks of a hypergradient form (:class:`Unrolled`, :class:`Implicit`)."""

    stored_states: int | None  # RMD's stored training states (None: implicit)
    evaluations: int  # retrainings so far

    def evaluate(self, hypers: list[torch.Tensor]) -> Point: ...

    def gradient(self, hypers: list[torch.Tensor], at: Point | None = None) -> Point: ...


def oracle(
    mode: str,
    params: BackGradientParams,
    module: torch.nn.Module,
    w0: torch.Tensor,
    inner: Inner,
    outer: Outer,
    explicit: Inner | None,
    x_clean: torch.Tensor,
    y_clean: torch.Tensor,
    y_poison: torch.Tensor | None,
    refit: torch.Tensor | None = None,
) -> Unrolled | Implicit:
    """The oracle of ``mode`` (``implicit`` or ``unrolled``) with ``params``' settings: the implicit one retrains
    ``module`` (the victim, in the run's dtype) to ``inner_tol`` and solves by CG (``cg_tol``, ``cg_max_iter``,
    K-FAC preconditioned with ``precondition: kfac``); the unrolled one runs ``inner_steps`` steps of ``inner_lr``
    from ``w0``. ``explicit``: a term of ``A`` that reads the hyperparameters directly (an evasion penalty)."""
    p = params
    if mode == "implicit":
        return Implicit(
            module, inner, outer, w0, explicit, x_clean, y_clean, y_poison, p.inner_tol, CG(p.cg_tol, p.cg_max_iter), refit, p.precondition == "kfac"
        )
    return Unrolled(inner, outer, w0, p.inner_steps, p.inner_lr, p.checkpoint_every, explicit)
