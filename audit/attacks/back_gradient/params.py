"""Back-gradient's parameters: the paper's defaults (carnerero-cano-2021, Table 2) and the implicit attack's knobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from audit.attacks.base import AttackParams
from audit.catalog import PAPER_L2_LR, PAPER_L2_RANGE
from audit.spec import first_error


class BackGradientParams(AttackParams):
    inner_steps: int = Field(150, ge=1)  # T
    inner_lr: float = Field(0.1, gt=0)  # η
    step: float = Field(0.99, gt=0)  # α
    iterations: int = Field(100, ge=1)  # T_Dp (T_mul with learn_l2)
    batch_size: int | None = Field(None, ge=1)  # poisons optimised together; None: all at once
    restarts: int = Field(2, ge=0)
    patience: int = Field(10, ge=1)
    min_gain: float = Field(0.01, ge=0)
    checkpoint_every: int | None = Field(None, ge=1)
    init_weights: Literal["auto", "zeros", "random"] = "auto"
    optimize_response: bool = True
    learn_l2: bool = False  # the minimax of eq. (1): λ descends while the poisons ascend
    l2_lr: float = Field(PAPER_L2_LR, gt=0)  # β
    l2_range: tuple[float, float] = PAPER_L2_RANGE  # Φ(λ), the paper's λ = log(ρ·N)
    l2_init: float | None = None  # λ to start the minimax from; None: the victim's ρ (λ = log 5 if ρ = 0)
    region: Literal["none", "sphere", "slab", "sphere_slab"] = "none"  # defense-aware: stay where that sanitiser accepts
    region_quantile: float | None = Field(None, gt=0, le=1)  # the sanitiser's quantile (None: 1/(1 + ε), its default)
    region_margin: float = Field(1e-4, ge=0, lt=1)
    evade: Literal["none", "loss_filter"] = "none"  # defense-aware: keep the poisons' training loss under the loss filter's cut
    evade_rate: float | None = Field(None, gt=0, le=1)  # the filter's assumed poison rate (None: ε)
    # μ of the penalty; None: 0.01 for the unrolled attack, 1.0 for the implicit one (measured: examples/benchmarks/README.md)
    evade_weight: float | None = Field(None, gt=0)
    evade_scale: float = Field(1.0, gt=0)  # multiplies the default μ (when evade_weight is None): the adaptive stage's sweep
    hypergradient: Literal["auto", "implicit", "unrolled"] = "auto"  # auto: implicit for a convex linear victim with ρ > 0
    step_rule: Literal["auto", "line_search", "paper"] = "auto"  # paper: x ← Π(x + α·u) unconditionally; auto: line search when implicit
    starts: tuple[Literal["validation", "training"], ...] | None = None  # flipped clones of these, best kept; None: both when implicit
    inner_tol: float = Field(1e-6, gt=0)  # implicit: truncated Newton stops at ‖∇L‖₂ ≤ inner_tol (float64)
    cg_tol: float = Field(1e-6, gt=0)  # implicit: relative residual of H v = ∇A
    cg_max_iter: int = Field(500, ge=1)
    # implicit: precondition the retraining's and the hypergradient's CG by the Kronecker-factored curvature
    # (LinearERM.preconditioner); the same tolerances, fewer Hessian-vector products
    precondition: Literal["kfac", "none"] = "kfac"
    ls_shrink: float = Field(0.5, gt=0, lt=1)  # line search: α ← α·shrink on a step that does not gain
    ls_grow: float = Field(2.0, ge=1)  # … and the next trial starts at α·grow after a gain
    ls_tries: int = Field(8, ge=1)  # trials per iteration before the iteration counts as converged
    start_screen: int = Field(10, ge=1)  # iterations each start runs before the best one continues
    # stop a run once the objective gained less than stall_gain (relative) over its last stall_window iterations (0: never)
    stall_gain: float = Field(0.0, ge=0)
    stall_window: int = Field(10, ge=1)
    # a scikit-learn pipeline's scalers (StandardScaler, MinMaxScaler, MaxAbsScaler) modelled as refit on the poisoned training
    # set, as every retraining refits them (implicit hypergradient); False: held at their clean fit
    refit_scalers: bool = True
    # parameters that replace these where the hypergradient resolves to implicit (a convex victim with ρ > 0): a
    # profile's reduction differs between the implicit attack and the unrolled one it keeps for networks and ρ = 0
    implicit: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _range(self) -> BackGradientParams:
        if not self.l2_range[0] < self.l2_range[1]:
            raise ValueError(f"l2_range must be (low, high) with low < high (got {self.l2_range})")
        if self.implicit is not None:
            if {"implicit", "hypergradient"} & set(self.implicit):
                raise ValueError("implicit: may not set 'implicit' or 'hypergradient' (it applies once the hypergradient is implicit)")
            self.for_implicit()  # its values are back-gradient parameters too
        if self.starts is not None and (not self.starts or len(set(self.starts)) != len(self.starts)):
            raise ValueError(f"starts: one or both of 'validation', 'training', without repeats (got {list(self.starts)})")
        return self

    def for_implicit(self) -> BackGradientParams:
        """These parameters where the hypergradient is implicit: ``implicit``'s values in place of their own."""
        if not self.implicit:
            return self
        try:
            return BackGradientParams.model_validate({**self.model_dump(exclude={"implicit"}), **self.implicit})
        except ValidationError as err:
            raise ValueError(f"implicit: {first_error(err)}") from None
