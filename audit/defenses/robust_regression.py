"""Regression defenses: TRIM (jagielski-2018, Algorithm 2) and scikit-learn's Huber and RANSAC.

TRIM alternates fitting on the ``n`` lowest-residual points and re-selecting them until the
trimmed loss stops changing. Its final estimator is the victim's own procedure on the
kept subset, so it is expressed as a filter (keep-mask) and the grid's normal retraining
reproduces it exactly. ``n`` is ``round(N/(1 + α))`` for an assumed poison rate α
(default: the cell's ε), or the known clean size.

Huber and RANSAC are robust *trainers* (they replace the victim's solver); the L2 strength
maps as for ridge, ``alpha = ρ·n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from audit.defenses.base import Defense, DefenseParams, DefenseResult
from audit.errors import AuditError
from audit.jsonio import Diagnostics
from audit.models.candidate import Candidate
from audit.models.victim import FittedSklearn


class TrimParams(DefenseParams):
    n_keep: int | None = Field(None, ge=1)
    max_iter: int = Field(100, ge=1)
    rtol: float = Field(1e-6, gt=0)
    restarts: int = Field(1, ge=1)


@dataclass
class TrimDiagnostics(Diagnostics):
    """The trimmed loss per iteration of the best start (Algorithm 2), whether it settled, every start's final loss."""

    iterations: int | None = None
    converged: bool | None = None
    loss_curve: list[float] | None = None
    n_keep: int | None = None
    restarts: int | None = None
    start_losses: list[float] | None = None


@dataclass
class InlierDiagnostics(Diagnostics):
    """How many points the robust estimator treated as inliers."""

    inliers: int | None = None


class Trim(Defense):
    """TRIM: trimmed-loss alternating minimisation (Algorithm 2)."""

    name: ClassVar[str] = "trim"
    Params = TrimParams
    Diagnostics = TrimDiagnostics
    description: ClassVar[str] = "TRIM (Jagielski et al. 2018): fit on the n lowest-residual points, re-select, repeat"
    tasks: ClassVar[tuple[str, ...]] = ("regression",)

    def __init__(self, rate: float, seed: int, n_keep: int | None = None, max_iter: int = 100, rtol: float = 1e-6, restarts: int = 1) -> None:
        super().__init__(rate, seed)
        if restarts < 1:
            raise AuditError(f"TRIM restarts must be ≥ 1 (got {restarts})")
        self.n_keep = n_keep
        self.max_iter = max_iter
        self.rtol = rtol
        self.restarts = restarts

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        n_total = len(y)
        n = self.n_keep if self.n_keep is not None else int(round(n_total / (1 + self.rate)))
        if not 0 < n <= n_total:
            raise AuditError(f"TRIM: the number of points to keep must be in 1..{n_total} (got {n})")
        rng = np.random.default_rng(self.seed)
        runs = [self._one_start(x, y, n, victim, candidate, rng) for _ in range(self.restarts)]
        subset, losses, converged = min(runs, key=lambda r: r[1][-1])  # lowest trimmed loss over the starts
        keep = np.zeros(n_total, dtype=bool)
        keep[subset] = True
        return DefenseResult(keep=keep, diagnostics=TrimDiagnostics(len(losses), converged, losses, n, self.restarts, [r[1][-1] for r in runs]))

    def _one_start(
        self, x: np.ndarray, y: np.ndarray, n: int, victim: Any, candidate: Candidate, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[float], bool]:
        subset = np.sort(rng.choice(len(y), size=n, replace=False))  # line 3: random initial subset
        fitted = victim.fit(x[subset], y[subset], candidate.hparams, self.seed)
        previous = np.inf
        losses: list[float] = []
        converged = False
        for iteration in range(1, self.max_iter + 1):
            residual = (fitted.predict(x).reshape(-1) - y) ** 2
            subset = np.sort(np.argsort(residual, kind="stable")[:n])  # line 8: n lowest residuals
            fitted = victim.fit(x[subset], y[subset], candidate.hparams, self.seed)  # line 9
            loss = float(np.mean((fitted.predict(x[subset]).reshape(-1) - y[subset]) ** 2))  # line 10
            losses.append(loss)
            if iteration > 1 and abs(loss - previous) <= self.rtol * max(abs(previous), 1e-30):  # line 11
                converged = True
                break
            previous = loss
        return subset, losses, converged


class _SklearnRobust(Defense):
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    Diagnostics = InlierDiagnostics

    def _estimator(self, rho: float, n: int, d: int) -> Any:
        raise NotImplementedError

    def apply(self, x: np.ndarray, y: np.ndarray, victim: Any, candidate: Candidate) -> DefenseResult:
        rho = candidate.rho
        import warnings

        with warnings.catch_warnings():
            # RANSAC fits d + 1-point minimal subsets: near-singular by design, scipy warns on each
            warnings.simplefilter("ignore", category=Warning)
            est = self._estimator(rho, len(y), x.shape[1]).fit(x, y)
        inlier = getattr(est, "inlier_mask_", None)
        if inlier is None and hasattr(est, "outliers_"):
            inlier = ~est.outliers_
        keep = np.ones(len(y), bool) if inlier is None else np.asarray(inlier, bool)
        fitted = FittedSklearn(task="regression", n_classes=None, estimator=est)
        # the robust trainer is the model; keep marks what it treated as inliers (for the removal counts)
        return DefenseResult(keep=keep, fitted=fitted, diagnostics=InlierDiagnostics(inliers=int(keep.sum())))


class Huber(_SklearnRobust):
    """scikit-learn ``HuberRegressor`` (outlier-robust loss), ``alpha = ρ·n``."""

    name: ClassVar[str] = "huber"
    draws_randomness: ClassVar[bool] = False
    description: ClassVar[str] = "scikit-learn HuberRegressor (robust loss) as the trainer, regression baseline"

    def _estimator(self, rho: float, n: int, d: int) -> Any:
        from sklearn.linear_model import HuberRegressor

        return HuberRegressor(alpha=rho * n, max_iter=1000)


class Ransac(_SklearnRobust):
    """scikit-learn ``RANSACRegressor`` around ``Ridge(alpha = ρ·n)``, seeded."""

    name: ClassVar[str] = "ransac"
    description: ClassVar[str] = "scikit-learn RANSACRegressor around ridge, regression baseline"

    def _estimator(self, rho: float, n: int, d: int) -> Any:
        from sklearn.linear_model import RANSACRegressor, Ridge

        # min_samples d + 1, what RANSAC uses for LinearRegression
        return RANSACRegressor(estimator=Ridge(alpha=max(rho * n, 0.0)), min_samples=d + 1, random_state=self.seed % 2**31)
