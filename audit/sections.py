"""Report sections beyond the core: poisonability thresholds and Gradient Canceling, defenses, sample poisons.

Each function turns an :class:`audit.analysis.Analysis` into plain data (and SVG) for the template.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from audit import figures
from audit.analysis import Analysis, fmt as _fmt
from audit.data import load_dataset
from audit.recommend import aggregate, candidate_label


def threshold_table(a: Analysis) -> list[dict[str, Any]]:
    """Per candidate and ε_w (0 = the clean model): target metrics and τ, means over seeds."""
    rows = []
    for s in a.summaries:
        mine = [t for t in a.targets if t["candidate"] == s.key and t["eps_w"] >= 0]
        for eps_w in sorted({t["eps_w"] for t in mine}):
            group = [t for t in mine if t["eps_w"] == eps_w]
            th = [t["threshold"] for t in group]

            def mean(key: str) -> float | None:
                values = [x[key] for x in th if x.get(key) is not None]
                return float(np.mean(values)) if len(values) == len(th) and values else None

            rows.append({
                "key": s.key, "label": s.label, "eps_w": eps_w,
                "val": float(np.mean([t["val_metric"] for t in group])),
                "test": float(np.mean([t["test_metric"] for t in group])),
                "tau_2": mean("tau_2"), "tau_c": mean("tau_c"), "tau_rho_2": mean("tau_rho_2"),
                "tau_rho_c": mean("tau_rho_c"),
                "unreachable": sum(bool(x.get("unreachable")) for x in th), "seeds": len(group),
                "condition": th[0].get("condition", ""), "w_norm_sq": mean("w_norm_sq"),
            })  # fmt: skip
    return rows


def tau_sentence(a: Analysis) -> str:
    """How regularization moved τ, for the recommendation paragraph."""
    rows = [r for r in threshold_table(a) if r["eps_w"] > 0]
    if not rows or "l2" not in a.config.candidates or len(a.summaries) < 2:
        return ""
    eps_w = min(r["eps_w"] for r in rows)
    parts = []
    for r in rows:
        if r["eps_w"] != eps_w:
            continue
        tau = "unreachable at any budget" if r["tau_rho_2"] is None else f"τ_ρ(2) = {r['tau_rho_2']:.3g}"
        parts.append(f"{r['label']}: {tau}")
    return (f"Poisonability: the GradPC target at ε_w = {eps_w:g} (relative parameter change) needs "
            f"ε ≥ τ to be reached — {'; '.join(parts)}.")  # fmt: skip


def poisonability_context(a: Analysis) -> dict[str, Any] | None:
    table = threshold_table(a)
    errors = sorted({t["threshold"].get("error") for t in a.targets if t["eps_w"] < 0})
    gc_keys = [s.key for s in a.config.attacks if s.name == "gradient_canceling"]
    if not table and not gc_keys and not errors:
        return None

    def fmt_tau(v: float | None) -> str:
        return "unreachable" if v is None else ("any ε > 0" if v <= 0 else f"{v:.3g}")

    rows = [{**r, "eps_w": "clean model" if r["eps_w"] == 0 else f"{r['eps_w']:g}", "val": _fmt(r["val"]),
             "test": _fmt(r["test"]), "tau_2": fmt_tau(r["tau_2"]), "tau_c": fmt_tau(r["tau_c"]),
             "tau_rho_2": fmt_tau(r["tau_rho_2"]), "tau_rho_c": fmt_tau(r["tau_rho_c"])} for r in table]  # fmt: skip
    out: dict[str, Any] = {"thresholds": rows, "errors": errors, "gc": []}
    for key in gc_keys:
        series, used, curves = [], [], {}
        for s in a.summaries:
            taus = [(r["eps_w"], r["tau_rho_2"]) for r in table if r["key"] == s.key and r["eps_w"] > 0]
            damage = {e: s.stats[(key, e, a.defense)].damage_test for e in a.config.budgets if (key, e, a.defense) in s.stats}
            series.append({"label": s.label, "damage": damage, "taus": taus})
            for eps in a.config.budgets:
                cells = [c for c in a.cells if c.status == "ok" and c.candidate == s.key and c.attack == key
                         and c.budget == eps and c.defense == a.defense]  # fmt: skip
                if not cells:
                    continue
                diags = [json.loads(c.diagnostics)["attack"] for c in cells]
                th = [d.get("threshold", {}) for d in diags]
                used.append({
                    "label": s.label, "budget": f"{100 * eps:g}%",
                    "origin": ", ".join(sorted({_origin(d) for d in diags})),
                    "target_test": _fmt(float(np.mean([d["target_test_metric"] for d in diags]))),
                    "tau_rho_2": fmt_tau(None if any(t.get("tau_rho_2") is None for t in th) else float(np.mean([t["tau_rho_2"] for t in th]))),
                    "residual": _fmt(float(np.mean([d["relative_residual"] for d in diags])), 3),
                    "damage": _fmt(damage.get(eps)),
                })  # fmt: skip
                first = diags[0]
                g0 = first["g_chi_curve"][0][1] if first["g_chi_curve"] else 1.0
                curves.setdefault(eps, []).append((s.label, [(e, v / max(g0, 1e-30)) for e, v in first["g_chi_curve"]]))
        out["gc"].append({
            "key": key,
            "drop_svg": figures.gc_drop_vs_budget(series, a.config.budgets, a.unit),
            "curves_svg": figures.gc_learning_curves(curves) if curves else "",
            "used": used,
        })  # fmt: skip
    return out


def _origin(d: dict[str, Any]) -> str:
    if d.get("target") == "auto":
        return f"auto: GradPC ε_w={d.get('eps_w'):g}, output layer ×{d.get('scale', 1):.3g}"
    if d.get("target") == "gradpc":
        return f"GradPC ε_w={d.get('eps_w'):g}"
    if d.get("target") == "label_flip":
        return f"model retrained on an adversarial label flip at ε={d.get('target_eps'):g}"
    return f"file {d.get('path', '')}"


def defense_section(a: Analysis) -> dict[str, Any] | None:
    """Table and figure of what each defense buys and costs, for the recommended candidate."""
    rows = defense_rows(a)
    if not rows:
        return None
    rec = a.recommended()
    panels: dict[str, dict[str, dict[float, float]]] = {}
    hp = [json.loads(a.recommendation.key)]
    for d in a.config.defenses:
        summary = aggregate(a.cells, [], hp, [s.key for s in a.config.attacks], a.config.budgets, a.config.seeds, d,
                            a.higher_is_better)[0]  # fmt: skip
        for (attack, eps, _), st in summary.stats.items():
            panels.setdefault(attack, {}).setdefault(d, {})[eps] = st.poisoned_test
    backdoor = [d for d in a.config.defenses if d in ("activation_clustering", "spectral_signature", "roni")]
    return {"rows": rows, "svg": figures.defense_curves(panels, rec.clean_test, a.config.budgets, a.metric),
            "ratio": not a.higher_is_better, "backdoor": backdoor}  # fmt: skip


def defense_rows(a: Analysis) -> list[dict[str, Any]]:
    """What each defense buys and costs, for the recommended candidate (means over seeds)."""
    if len(a.config.defenses) < 2 or a.recommendation.key is None:
        return []
    clean = a.recommended().clean_test
    hp = [json.loads(a.recommendation.key)]
    attacks = [s.key for s in a.config.attacks]
    rows = []
    per_defense = {d: aggregate(a.cells, [], hp, attacks, a.config.budgets, a.config.seeds, d, a.higher_is_better)[0]
                   for d in a.config.defenses}  # fmt: skip
    for attack in attacks:
        for eps in a.config.budgets:
            for d, summary in per_defense.items():
                st = summary.stats.get((attack, eps, d))
                if st is None:
                    continue
                rows.append({
                    "attack": attack, "budget": f"{100 * eps:g}%", "defense": d,
                    "poisoned": _fmt(st.poisoned_test), "damage": _fmt(st.damage_test),
                    "ratio": f"×{st.poisoned_test / clean:.2f}" if clean else "n/a",
                    "poisons_removed": f"{100 * st.poisons_removed:.0f}%", "clean_removed": f"{st.clean_removed:.1f}",
                    "seconds": _fmt(st.seconds, 2),
                    "certified": _certified(a, hp[0], attack, eps, d),
                })  # fmt: skip
    return rows




def _certified(a: Analysis, hparams: dict[str, Any], attack: str, eps: float, defense: str) -> str:
    """Mean certified accuracy (DPA) of a (candidate, attack, ε) over seeds; empty for other defenses."""
    if defense != "dpa":
        return ""
    key = json.dumps(hparams, sort_keys=True)
    values = [json.loads(c.diagnostics or "{}").get("defense", {}).get("certified_accuracy") for c in a.cells
              if c.status == "ok" and c.candidate == key and c.attack == attack and c.budget == eps and c.defense == defense]  # fmt: skip
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.1f}" if values else "n/a"


def poison_samples_context(a: Analysis) -> dict[str, Any] | None:
    """Sample poisons next to their clean originals for image data (TGDA paper, Fig. 5).

    One grid per generator attack (largest budget; the recommended candidate when it was
    attacked, else the first; the first seed), plus the maximum and mean per-feature change
    of every poison set. Clean originals come from reloading the configured dataset.
    """
    image_shape = a.meta["dataset"].get("image_shape")
    if not a.samples:
        return None
    rows = []
    for c in a.cells:
        d = json.loads(c.diagnostics or "{}").get("attack", {})
        if c.status == "ok" and "source_examples" in d and c.defense == a.config.defenses[0]:
            rows.append({"attack": c.attack, "candidate": candidate_label(c.hparams), "budget": f"{100 * c.budget:g}%",
                         "seed": c.seed, "max_change": f"{d.get('max_change', math.nan):.3f}",
                         "mean_change": f"{d.get('mean_change', math.nan):.4f}",
                         "pretrain_mse": f"{d.get('pretrain', {}).get('mse_final', math.nan):.4f}",
                         "cg": f"{100 * d.get('cg_converged_fraction', math.nan):.0f}%",
                         "seconds": f"{d.get('seconds', math.nan):.0f}"})  # fmt: skip
    grids = []
    note = ""
    if image_shape:
        try:
            data = load_dataset(a.config.dataset)
        except Exception as err:  # the report still renders; it says why the pictures are missing
            data, note = None, f"the clean originals could not be reloaded ({err}); only the numbers are shown"
        if data is not None:
            for attack in sorted({s["attack"] for s in a.samples}):
                mine = [s for s in a.samples if s["attack"] == attack]
                top = max(s["budget"] for s in mine)
                mine = [s for s in mine if s["budget"] == top]
                rec = [s for s in mine if s["candidate"] == a.recommendation.key]
                pick = min(rec or mine, key=lambda s: (s["candidate"], s["seed"]))
                clean = data.x_train[np.asarray(pick["source"], dtype=int)]
                grids.append({
                    "attack": attack, "budget": f"{100 * top:g}%", "candidate": candidate_label(json.loads(pick["candidate"])),
                    "seed": pick["seed"], "max_change": f"{float(np.abs(pick['x'] - clean).max()):.3f}",
                    "svg": figures.poison_grid(clean, pick["x"], tuple(image_shape), float(data.lo.min()), float(data.hi.max())),
                })  # fmt: skip
    return {"rows": rows, "grids": grids, "note": note}


POLICY_LABELS = {"clean_cv": "λ_CLEAN (5-fold CV, clean)", "retuned": "λ re-tuned on D_val", "rmd": "λ_RMD (minimax)"}


def policy_series(a: Analysis) -> dict[str, Any] | None:
    """Means over seeds per policy and budget (ε = 0: clean): error, λ, ρ, ‖w‖², validation metric.

    The ``fixed`` policies are the grid's candidates under the minimax's back-gradient attack.
    Error is 100 − accuracy for classification (the paper's Fig. 2), MSE for regression.
    """
    if a.config.minimax is None or not a.policies:
        return None
    to_error = (lambda m: 100.0 - m) if a.higher_is_better else (lambda m: m)
    attack = a.config.minimax_attack()
    n = int(a.meta["dataset"]["n_train"])
    out: dict[str, dict[str, dict[float, float]]] = {k: {} for k in ("error", "error_std", "lam", "l2", "norm", "val")}
    for policy, label in POLICY_LABELS.items():
        for eps in [0.0, *a.config.budgets]:
            rows = [r for r in a.policies if r.policy == policy and r.budget == eps]
            if not rows:
                continue
            for key, values in (("error", [to_error(r.test_metric) for r in rows]), ("lam", [r.lam for r in rows]),
                                ("l2", [r.l2 for r in rows]), ("norm", [r.norm_w2 for r in rows]),
                                ("val", [r.val_metric for r in rows])):  # fmt: skip
                out[key].setdefault(label, {})[eps] = float(np.mean(values))
            out["error_std"].setdefault(label, {})[eps] = float(np.std([to_error(r.test_metric) for r in rows]))
    for s in a.summaries:  # fixed λ: the grid's cells of the same attack
        if "l2" not in s.hparams or attack is None:
            continue
        label = f"fixed {s.label} (λ = {math.log(s.hparams['l2'] * n):.2f})" if s.hparams["l2"] > 0 else f"fixed {s.label}"
        series = {0.0: to_error(s.clean_test)}
        for eps in a.config.budgets:
            st = s.stats.get((attack.key, eps, "none"))
            if st is not None:
                series[eps] = to_error(st.poisoned_test)
        out["error"][label] = series
    return out


def minimax_sentence(a: Analysis, series: dict[str, Any]) -> str:
    """How λ_RMD moves with the budget, and what the minimax says at the target budget (for the recommendation)."""
    rmd = series["lam"].get(POLICY_LABELS["rmd"], {})
    if len(rmd) < 2:
        return ""
    lo_eps, hi_eps = min(rmd), max(rmd)
    rho = series["l2"][POLICY_LABELS["rmd"]]
    trend = "grows" if rmd[hi_eps] > rmd[lo_eps] + 0.05 else ("falls" if rmd[hi_eps] < rmd[lo_eps] - 0.05 else "stays flat")
    text = (f"λ under attack (minimax): λ_RMD {trend} from {rmd[lo_eps]:.2f} at ε = {lo_eps:g} to {rmd[hi_eps]:.2f} at "
            f"ε = {hi_eps:g} (ρ {rho[lo_eps]:.3g} → {rho[hi_eps]:.3g})")  # fmt: skip
    if trend == "grows":
        text += ": raise the L2 strength as the expected poisoning grows, re-tuning it on trusted data"
    target = a.recommendation.target_budget
    rec, attack = a.recommended(), a.config.minimax_attack()
    rmd_val = series["val"].get(POLICY_LABELS["rmd"], {}).get(target)
    st = rec.stats.get((attack.key, target, "none")) if rec is not None and attack is not None else None
    if rmd_val is not None and st is not None and "l2" in rec.hparams:
        sign = 1.0 if a.higher_is_better else -1.0
        better = sign * (rmd_val - st.poisoned_val) > 0
        text += (f". Against {attack.key} at ε = {target:g}, learning λ under attack "
                 f"{'beats' if better else 'does not beat'} the recommended fixed {rec.label} on the validation split "
                 f"({_fmt(rmd_val)} vs {_fmt(st.poisoned_val)})")  # fmt: skip
        if better:
            text += f": deploy ρ re-tuned under attack (≈ {series['l2'][POLICY_LABELS['rmd']][target]:.3g} at this budget)"
    errors = {label: pts[target] for label, pts in series["error"].items() if target in pts}
    if POLICY_LABELS["rmd"] in errors and len(errors) > 1:
        unit = " %" if a.higher_is_better else ""
        name = "test error" if a.higher_is_better else "test MSE"
        others = ", ".join(f"{k} {_fmt(v)}{unit}" for k, v in errors.items() if k != POLICY_LABELS["rmd"])
        text += (f". At ε = {target:g} the defender that learns λ under attack has {name} "
                 f"{_fmt(errors[POLICY_LABELS['rmd']])}{unit} against {others} (test figures, not used to choose)")  # fmt: skip
    return text + "."


def minimax_context(a: Analysis) -> dict[str, Any] | None:
    """The *Hyperparameters under attack* section: Fig. 2 of carnerero-cano-2021 and its table."""
    series = policy_series(a)
    if series is None:
        return None
    budgets = [0.0, *a.config.budgets]
    rows = []
    for label in POLICY_LABELS.values():
        if label not in series["error"]:
            continue
        rows.append({"policy": label, "cells": [
            {"error": _fmt(series["error"][label].get(e)), "std": _fmt(series["error_std"][label].get(e)),
             "lam": _fmt(series["lam"][label].get(e)), "l2": f"{series['l2'][label][e]:.3g}" if e in series["l2"][label] else "n/a",
             "norm": _fmt(series["norm"][label].get(e))} for e in budgets]})  # fmt: skip
    fixed = [{"policy": label, "cells": [{"error": _fmt(pts.get(e))} for e in budgets]}
             for label, pts in series["error"].items() if label.startswith("fixed")]  # fmt: skip
    metric = "error (%)" if a.higher_is_better else "MSE"
    expected = 3 * (len(a.config.budgets) + 1) * len(a.config.seeds)
    return {
        "budgets": [f"{100 * e:g}%" for e in budgets],
        "rows": rows,
        "fixed": fixed,
        "svg": figures.policy_curves(series["error"], series["lam"], series["norm"], metric),
        "sentence": minimax_sentence(a, series),
        "errors": [f"{k}: {v}" for k, v in (a.meta.get("minimax_errors") or {}).items()],
        "missing": max(expected * max(len({r.base for r in a.policies}), 1) - len(a.policies), 0),
        "attack": a.config.minimax_attack().key,
        "range": [round(v, 3) for v in a.config.minimax.l2_range],
    }
