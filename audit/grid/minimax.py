"""The defender's λ under attack (carnerero-cano-2021 §4, Fig. 2): four policies against back-gradient poisons.

For every budget ε (and ε = 0) and seed, the defender trains with

* ``fixed`` — each candidate ρ of the grid (its back-gradient cells, not computed here);
* ``clean_cv`` — λ_CLEAN: 5-fold cross-validation on the clean ``D_tr`` over ``cv_grid``
  (the paper: [−8, 1]); the attacker crafts poisons against it (as in Xiao et al. 2015);
* ``retuned`` — the same poisons, but the defender re-tunes λ on the trusted ``D_val``
  after poisoning (retrains on ``D_tr ∪ D_p`` for every λ of ``retune_grid``);
* ``rmd`` — λ_RMD: the minimax of eq. (1), poisons ascending while λ descends
  (:class:`audit.attacks.BackGradient` with ``learn_l2``), warm-started from the λ learned
  on clean data (T_λ iterations from log 5).

λ is the paper's log strength on a summed loss; the victim trains on N points with the
audit's ρ = e^λ / N (see :mod:`audit.attacks.back_gradient`). Every policy's model is the
victim retrained from scratch with its own procedure; rows record λ, ρ, ‖w‖² and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.attacks.back_gradient import BackGradient, BackGradientDiagnostics, learn_log_l2
from audit.grid.store import PolicyRow
from audit.models.training import l2_norm_sq, rho_from_lambda

POLICIES: dict[str, str] = {
    "fixed": "λ fixed in advance (each candidate ρ)",
    "clean_cv": "λ_CLEAN: 5-fold CV on clean data, attacked at that λ",
    "retuned": "λ re-tuned on D_val after poisoning",
    "rmd": "λ_RMD: minimax, λ learned under attack",
}


def weight_norm_sq(fitted: Any) -> float:
    """‖w‖² over the L2-regularized weights of a fitted torch victim."""
    return float(l2_norm_sq(fitted.module).detach())


def select(scores: list[float], grid: list[float], higher_is_better: bool) -> float:
    """The λ of the best score; ties go to the larger λ (the more stable model)."""
    sign = 1.0 if higher_is_better else -1.0
    best = max(range(len(grid)), key=lambda i: (sign * scores[i], grid[i]))
    return grid[best]


def cv_lambda(
    victim: Any, x: np.ndarray, y: np.ndarray, hp: dict[str, Any], grid: list[float], folds: int, seed: int, higher_is_better: bool
) -> tuple[float, list[float]]:
    """λ_CLEAN: mean validation metric of ``folds``-fold CV on clean data for every λ of ``grid``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed) if higher_is_better else KFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(x, y))
    scores = []
    for lam in grid:
        fold_scores = []
        for train_idx, held_idx in splits:
            fitted = victim.fit(x[train_idx], y[train_idx], {**hp, "l2": rho_from_lambda(lam, len(train_idx))}, seed)
            fold_scores.append(fitted.metric(x[held_idx], y[held_idx]))
        scores.append(float(np.mean(fold_scores)))
    return select(scores, grid, higher_is_better), scores


def retune_lambda(
    victim: Any,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    hp: dict[str, Any],
    grid: list[float],
    seed: int,
    higher_is_better: bool,
) -> tuple[float, list[float], Any]:
    """λ chosen on the trusted validation set after training on ``(x, y)`` at every λ of ``grid``; with its model."""
    fits = [victim.fit(x, y, {**hp, "l2": rho_from_lambda(lam, len(y))}, seed) for lam in grid]
    scores = [f.metric(x_val, y_val) for f in fits]
    lam = select(scores, grid, higher_is_better)
    return lam, scores, fits[grid.index(lam)]


@dataclass
class PolicySettings:
    """What the stage needs from the config's ``minimax`` block and its back-gradient attack."""

    attack_params: dict[str, Any]
    l2_range: tuple[float, float]
    l2_lr: float
    clean_iterations: int
    warm_start: float
    cv_folds: int
    cv_grid: list[float]
    retune_grid: list[float]


def policy_rows(
    data: Any,
    victim: Any,
    hp: dict[str, Any],
    budgets: list[float],
    seed: int,
    base: str,
    settings: PolicySettings,
    train_seed: int,
    attack_seed: Callable[[str, float], int],
    done: dict[tuple[str, float], PolicyRow],
) -> Iterator[PolicyRow]:
    """Yield the ``clean_cv``, ``retuned`` and ``rmd`` rows of one (base candidate, seed), skipping ``done`` ones.

    ``done`` maps (policy, budget) to rows already stored (resume): λ_CLEAN and the clean λ_RMD
    are read from them rather than recomputed.
    """
    higher = data.task == "classification"
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
    n = len(y)

    def row(policy: str, eps: float, lam: float, fitted: Any, start: float, diag: dict[str, Any]) -> PolicyRow:
        n_total = n + int(round(eps * n))
        return PolicyRow(
            base,
            policy,
            eps,
            seed,
            lam,
            rho_from_lambda(lam, n_total),
            weight_norm_sq(fitted),
            fitted.metric(xv, yv),
            fitted.metric(data.x_test, data.y_test),
            time.perf_counter() - start,
            diag,
        )

    # ε = 0: λ_CLEAN by CV, λ re-tuned on D_val, λ_RMD learned on clean data
    if ("clean_cv", 0.0) not in done:
        start = time.perf_counter()
        lam, scores = cv_lambda(victim, x, y, hp, settings.cv_grid, settings.cv_folds, train_seed, higher)
        fitted = victim.fit(x, y, {**hp, "l2": rho_from_lambda(lam, n)}, train_seed)
        done[("clean_cv", 0.0)] = r = row("clean_cv", 0.0, lam, fitted, start, {"grid": settings.cv_grid, "cv": scores})
        yield r
    if ("retuned", 0.0) not in done:
        start = time.perf_counter()
        lam, scores, fitted = retune_lambda(victim, x, y, xv, yv, hp, settings.retune_grid, train_seed, higher)
        done[("retuned", 0.0)] = r = row("retuned", 0.0, lam, fitted, start, {"grid": settings.retune_grid, "val": scores})
        yield r
    if ("rmd", 0.0) not in done:
        start = time.perf_counter()
        template = victim.fit(x, y, {**hp, "l2": rho_from_lambda(settings.warm_start, n)}, train_seed)
        p = settings.attack_params
        lam, curve = learn_log_l2(
            template.module,
            x,
            y,
            xv,
            yv,
            data.task,
            settings.clean_iterations,
            p.get("inner_steps", 150),
            p.get("inner_lr", 0.1),
            settings.l2_lr,
            settings.l2_range,
            settings.warm_start,
            p.get("init_weights", "auto"),
            train_seed,
            p.get("hypergradient", "auto"),
        )
        fitted = victim.fit(x, y, {**hp, "l2": rho_from_lambda(lam, n)}, train_seed)
        done[("rmd", 0.0)] = r = row("rmd", 0.0, lam, fitted, start, {"lambda_curve": curve})
        yield r
    lam_clean, lam_rmd0 = done[("clean_cv", 0.0)].lam, done[("rmd", 0.0)].lam
    clean_model = None
    for eps in budgets:
        if ("clean_cv", eps) not in done or ("retuned", eps) not in done:
            start = time.perf_counter()
            clean_model = clean_model or victim.fit(x, y, {**hp, "l2": rho_from_lambda(lam_clean, n)}, train_seed)
            n_total = n + int(round(eps * n))
            attack = _back_gradient(data, clean_model, eps, rho_from_lambda(lam_clean, n_total), attack_seed("clean_cv", eps), settings.attack_params)
            x_p, y_p = attack.poison(x, y)
            x_mix, y_mix = np.concatenate([x, x_p]), np.concatenate([y, y_p])
            crafted = time.perf_counter() - start
            diag = _attack_summary(attack.diagnostics)
            fitted = victim.fit(x_mix, y_mix, {**hp, "l2": rho_from_lambda(lam_clean, n_total)}, train_seed)
            yield row("clean_cv", eps, lam_clean, fitted, start, diag)
            start = time.perf_counter() - crafted  # the re-tuned defender faces the same poisons
            lam, scores, fitted = retune_lambda(victim, x_mix, y_mix, xv, yv, hp, settings.retune_grid, train_seed, higher)
            yield row("retuned", eps, lam, fitted, start, {**diag, "grid": settings.retune_grid, "val": scores})
        if ("rmd", eps) not in done:
            start = time.perf_counter()
            template = victim.fit(x, y, {**hp, "l2": rho_from_lambda(lam_rmd0, n)}, train_seed)
            params = {**settings.attack_params, "learn_l2": True, "l2_init": lam_rmd0, "l2_range": settings.l2_range, "l2_lr": settings.l2_lr}
            attack = _back_gradient(data, template, eps, 0.0, attack_seed("rmd", eps), params)
            x_p, y_p = attack.poison(x, y)
            if attack.diagnostics.lambda_rmd is None:
                raise RuntimeError("back-gradient with learn_l2 reported no λ (lambda_rmd)")
            lam = float(attack.diagnostics.lambda_rmd)
            x_mix, y_mix = np.concatenate([x, x_p]), np.concatenate([y, y_p])
            fitted = victim.fit(x_mix, y_mix, {**hp, "l2": rho_from_lambda(lam, len(y_mix))}, train_seed)
            yield row("rmd", eps, lam, fitted, start, {**_attack_summary(attack.diagnostics), "lambda_curve": attack.diagnostics.lambda_curve})


def _attack_summary(diag: BackGradientDiagnostics) -> dict[str, Any]:
    keys = ("objective_initial", "objective_final", "iterations", "restarts", "seconds_per_iteration", "n_poison")
    return {k: v for k, v in diag.to_json().items() if k in keys}


def _back_gradient(data: Any, fitted: Any, eps: float, l2: float, seed: int, params: dict[str, Any]) -> BackGradient:
    """The stage's back-gradient attack against ``fitted`` at budget ``eps``, with the victim's ρ ``l2``."""
    x_att, y_att = data.attacker_target()  # D_att (D_val only in the papers' setting)
    return BackGradient(
        fitted.require_module("minimax"),
        x_val=x_att,
        y_val=y_att,
        budget=eps,
        task=data.task,
        n_classes=data.n_classes,
        l2=l2,
        box=(data.lo, data.hi),
        y_range=data.response_range,
        seed=seed,
        **params,
    )
