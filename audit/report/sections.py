"""Report sections beyond the core: poisonability thresholds and Gradient Canceling, defenses, sample poisons, minimax.

Each section is a :class:`Section`: the template variable it fills and a function that turns an
:class:`audit.report.analysis.Analysis` into plain data (and SVG) for it, or None when the run
has nothing to show there. A section reads attack and defense results through their typed
``Diagnostics`` and selects what it shows by declared class facts (the diagnostics type, or
``certifies``), never by registry name. To add one: write the function, append a
``Section`` to :data:`SECTIONS`, and add the block for its variable to ``templates/report.html.j2``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.attacks.base import SourcedDiagnostics
from audit.attacks.gradient_canceling import GradientCancelingDiagnostics
from audit.attacks.tgda import TGDADiagnostics
from audit.data import load_dataset
from audit.defenses.base import CertificateDiagnostics
from audit.grid.adaptive import adaptive_axes
from audit.report import figures
from audit.report.aggregation import (
    POLICY_LABELS,
    Analysis,
    adaptive_rows,
    bracket_series,
    certified_series,
    policy_series,
    threshold_table,
    width_findings,
    width_series,
)
from audit.report.recommend import aggregate, candidate_label
from audit.report.wording import fmt as _fmt
from audit.report.wording import minimax_sentence, width_sentence


def poisonability_context(a: Analysis) -> dict[str, Any] | None:
    table = threshold_table(a)
    errors = sorted({t["threshold"].get("error") for t in a.targets if t["eps_w"] < 0})
    gc_keys = [s.key for s in a.config.attacks if issubclass(s.attack.Diagnostics, GradientCancelingDiagnostics)]
    if not table and not gc_keys and not errors:
        return None

    def fmt_tau(v: float | None) -> str:
        return "unreachable" if v is None else ("any ε > 0" if v <= 0 else f"{v:.3g}")

    rows = [
        {
            **r,
            "eps_w": "clean model" if r["eps_w"] == 0 else f"{r['eps_w']:g}",
            "val": _fmt(r["val"]),
            "test": _fmt(r["test"]),
            "tau_2": fmt_tau(r["tau_2"]),
            "tau_c": fmt_tau(r["tau_c"]),
            "tau_rho_2": fmt_tau(r["tau_rho_2"]),
            "tau_rho_c": fmt_tau(r["tau_rho_c"]),
            "tau_same": "" if r["eps_w"] == 0 else f"{fmt_tau(r.get('tau_same_predictions'))} (× {r.get('scale', 1.0):.2g})",
            "tau_box": ""
            if r["eps_w"] == 0 or not r.get("has_box")
            else f"{fmt_tau(r['tau_box'])}; same predictions {fmt_tau(r['tau_box_same_predictions'])}{'' if r['tau_box_exact'] else ' (bound)'}",
        }
        for r in table
    ]
    out: dict[str, Any] = {"thresholds": rows, "errors": errors, "gc": []}
    for key in gc_keys:
        series: list[dict[str, Any]] = []
        used: list[dict[str, Any]] = []
        curves: dict[float, list[Any]] = {}
        for s in a.summaries:
            taus = [(r["eps_w"], r["tau_rho_2"]) for r in table if r["key"] == s.key and r["eps_w"] > 0]
            damage = {e: s.stats[(key, e, a.defense)].damage_test for e in a.config.budgets if (key, e, a.defense) in s.stats}
            series.append({"label": s.label, "damage": damage, "taus": taus})
            for eps in a.config.budgets:
                cells = [
                    c for c in a.cells if c.status == "ok" and c.candidate == s.key and c.attack == key and c.budget == eps and c.defense == a.defense
                ]
                if not cells:
                    continue
                diags = [c.attack_diagnostics(GradientCancelingDiagnostics) for c in cells]
                th = [d.threshold or {} for d in diags]
                used.append(
                    {
                        "label": s.label,
                        "budget": f"{100 * eps:g}%",
                        "origin": ", ".join(sorted({d.origin() for d in diags})),
                        "target_test": _fmt(_mean([d.target_test_metric for d in diags])),
                        "tau_rho_2": fmt_tau(None if any(t.get("tau_rho_2") is None for t in th) else float(np.mean([t["tau_rho_2"] for t in th]))),
                        "residual": _fmt(_mean([d.relative_residual for d in diags]), 3),
                        "damage": _fmt(damage.get(eps)),
                    }
                )
                curve = diags[0].g_chi_curve or []
                g0 = curve[0][1] if curve else 1.0
                curves.setdefault(eps, []).append((s.label, [(e, v / max(g0, 1e-30)) for e, v in curve]))
        out["gc"].append(
            {
                "key": key,
                "drop_svg": figures.gc_drop_vs_budget(series, a.config.budgets, a.unit),
                "curves_svg": figures.gc_learning_curves(curves) if curves else "",
                "used": used,
            }
        )
    return out


def _mean(values: list[float | None]) -> float:
    """Mean of the recorded values (NaN when none was recorded)."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else math.nan


def defense_section(a: Analysis) -> dict[str, Any] | None:
    """Table and figure of what each defense buys and costs, for the recommended candidate."""
    rows = defense_rows(a)
    rec = a.recommended()
    if not rows or rec is None or a.recommendation.key is None:
        return None
    panels: dict[str, dict[str, dict[float, float]]] = {}
    hp = [json.loads(a.recommendation.key)]
    for d in a.config.defense_keys:
        summary = aggregate(a.cells, [], hp, [s.key for s in a.config.attacks], a.config.budgets, a.config.seeds, d, a.higher_is_better)[0]
        for (attack, eps, _), st in summary.stats.items():
            panels.setdefault(attack, {}).setdefault(d, {})[eps] = st.poisoned_test
    backdoor = [d.key for d in a.config.defenses if d.defense.designed_for_backdoors]
    return {
        "rows": rows,
        "svg": figures.defense_curves(panels, rec.clean_test, a.config.budgets, a.metric),
        "ratio": not a.higher_is_better,
        "backdoor": backdoor,
        "certifies": [d.key for d in a.config.defenses if d.defense.certifies],
    }


def defense_rows(a: Analysis) -> list[dict[str, Any]]:
    """What each defense buys and costs, for the recommended candidate (means over seeds)."""
    rec = a.recommended()
    if len(a.config.defenses) < 2 or a.recommendation.key is None or rec is None:
        return []
    clean = rec.clean_test
    hp = [json.loads(a.recommendation.key)]
    attacks = a.attack_keys  # the adaptive attackers' rows too
    rows = []
    per_defense = {
        d: aggregate(a.cells, [], hp, attacks, a.config.budgets, a.config.seeds, d, a.higher_is_better, a.meta.get("cell_seeds"))[0]
        for d in a.config.defense_keys
    }
    for attack in attacks:
        for eps in a.config.budgets:
            for d, summary in per_defense.items():
                st = summary.stats.get((attack, eps, d))
                if st is None:
                    continue
                rows.append(
                    {
                        "attack": attack,
                        "budget": f"{100 * eps:g}%",
                        "defense": d,
                        "poisoned": _fmt(st.poisoned_test),
                        "damage": _fmt(st.damage_test),
                        "ratio": f"×{st.poisoned_test / clean:.2f}" if clean else "n/a",
                        "poisons_removed": f"{100 * st.poisons_removed:.0f}%",
                        "clean_removed": f"{st.clean_removed:.1f}",
                        "seconds": _fmt(st.seconds, 2),
                        "certified": _certified(a, hp[0], attack, eps, d),
                    }
                )
    return rows


def _certified(a: Analysis, hparams: dict[str, Any], attack: str, eps: float, defense: str) -> str:
    """Mean certified accuracy (DPA) of a (candidate, attack, ε) over seeds; empty for other defenses."""
    if not a.config.defense_spec(defense).defense.certifies:
        return ""
    key = json.dumps(hparams, sort_keys=True)
    values = [
        c.defense_diagnostics(CertificateDiagnostics).certified_accuracy
        for c in a.cells
        if c.status == "ok" and c.candidate == key and c.attack == attack and c.budget == eps and c.defense == defense
    ]
    mean = _mean(values)
    return "n/a" if math.isnan(mean) else f"{mean:.1f}"


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
    sourced = {s.key: s.attack.Diagnostics for s in a.config.attacks if issubclass(s.attack.Diagnostics, SourcedDiagnostics)}
    for c in a.cells:
        if c.status != "ok" or c.attack not in sourced or c.defense != a.config.defense_keys[0]:
            continue
        d = c.attack_diagnostics(sourced[c.attack])
        if not isinstance(d, SourcedDiagnostics) or not d.source_examples:
            continue
        tgda = d if isinstance(d, TGDADiagnostics) else TGDADiagnostics()  # the leader's solves, when the attack has them
        rows.append(
            {
                "attack": c.attack,
                "candidate": candidate_label(c.hparams),
                "budget": f"{100 * c.budget:g}%",
                "seed": c.seed,
                "max_change": f"{_nan(d.max_change):.3f}",
                "mean_change": f"{_nan(d.mean_change):.4f}",
                "pretrain_mse": f"{_nan((tgda.pretrain or {}).get('mse_final')):.4f}",
                "cg": f"{100 * _nan(tgda.cg_converged_fraction):.0f}%",
                "seconds": f"{_nan(d.seconds):.0f}",
            }
        )
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
                grids.append(
                    {
                        "attack": attack,
                        "budget": f"{100 * top:g}%",
                        "candidate": candidate_label(json.loads(pick["candidate"])),
                        "seed": pick["seed"],
                        "max_change": f"{float(np.abs(pick['x'] - clean).max()):.3f}",
                        "svg": figures.poison_grid(clean, pick["x"], tuple(image_shape), float(data.lo.min()), float(data.hi.max())),
                    }
                )
    return {"rows": rows, "grids": grids, "note": note}


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def minimax_context(a: Analysis) -> dict[str, Any] | None:
    """The *Hyperparameters under attack* section: Fig. 2 of carnerero-cano-2021 and its table."""
    series = policy_series(a)
    spec, attack = a.config.minimax, a.config.minimax_attack()
    if series is None or spec is None or attack is None:
        return None
    budgets = [0.0, *a.config.budgets]
    rows = []
    for label in POLICY_LABELS.values():
        if label not in series["error"]:
            continue
        rows.append(
            {
                "policy": label,
                "cells": [
                    {
                        "error": _fmt(series["error"][label].get(e)),
                        "std": _fmt(series["error_std"][label].get(e)),
                        "lam": _fmt(series["lam"][label].get(e)),
                        "l2": f"{series['l2'][label][e]:.3g}" if e in series["l2"][label] else "n/a",
                        "norm": _fmt(series["norm"][label].get(e)),
                    }
                    for e in budgets
                ],
            }
        )
    fixed = [
        {"policy": label, "cells": [{"error": _fmt(pts.get(e))} for e in budgets]}
        for label, pts in series["error"].items()
        if label.startswith("fixed")
    ]
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
        "attack": attack.key,
        "range": [round(v, 3) for v in spec.l2_range],
    }


def adaptive_context(a: Analysis) -> dict[str, Any] | None:
    """Defenses under an adaptive attacker: per filtering defense and budget, for the
    recommended candidate, the worst non-adaptive and adaptive damage side by side, the poisons that
    survived and the clean points removed; the bracket for convex victims."""
    rows = adaptive_rows(a)
    series = bracket_series(a)
    if not rows and series is None:
        return None

    def damage(st: Any) -> str:
        return f"{_fmt(st.damage_test)} ({'–'.join(_fmt(v) for v in st.damage_test_ci())})" if st else "n/a"

    table = [
        {
            "defense": r.defense,
            "budget": f"{100 * r.budget:g}%",
            "plain": damage(r.plain),
            "plain_attack": r.plain_attack or "n/a",
            "plain_survived": f"{100 * (1 - r.plain.poisons_removed):.0f}%" if r.plain else "n/a",
            "adaptive": damage(r.adaptive),
            "adaptive_attack": r.adaptive_attack or "n/a",
            "adaptive_survived": f"{100 * (1 - r.adaptive.poisons_removed):.0f}%" if r.adaptive else "n/a",
            "clean_removed": f"{r.adaptive.clean_removed:.1f}" if r.adaptive else "n/a",
            "undefended": damage(r.undefended),
            "verdict": r.verdict,
        }
        for r in rows
    ]
    bars = [
        {
            "defense": r.defense,
            "budget": f"{100 * r.budget:g}%",
            "plain": _nan(r.plain.damage_test if r.plain else None),
            "adaptive": _nan(r.adaptive.damage_test if r.adaptive else None),
            "undefended": _nan(r.undefended.damage_test if r.undefended else None),
        }
        for r in rows
    ]
    bracket_rows = []
    if series is not None:
        for d, s in series["defenses"].items():
            for eps in a.config.budgets:
                if eps in s["found"] or eps in s["bound"]:
                    bracket_rows.append(
                        {
                            "defense": d,
                            "budget": f"{100 * eps:g}%",
                            "found": _fmt(s["found"].get(eps), 4),
                            "attack": s["attack"].get(eps, "n/a"),
                            "bound": _fmt(s["bound"].get(eps), 4),
                        }
                    )
    return {
        "rows": table,
        "svg": figures.adaptive_bars(bars, a.unit) if bars else "",
        "attackers": [k for k, _, _ in adaptive_axes(a.config)],
        "rounds": a.config.adaptive.rounds,
        "bracket_svg": figures.bracket(series, a.config.budgets) if series is not None else "",
        "bracket_rows": bracket_rows,
        "clean_objective": _fmt(series["clean"], 4) if series is not None else "",
    }


def width_context(a: Analysis) -> dict[str, Any] | None:
    """The *Width under attack* section (Wang, Mianjy & Arora 2021): clean and poisoned test metric
    against width, the best worst case and the widths where damage grows again."""
    points = width_series(a)
    if points is None:
        return None
    found = width_findings(a, points)
    order = {k: i for i, k in enumerate(a.attack_keys)}
    keys = sorted({key for p in points for key in p.poisoned}, key=lambda k: (order.get(k[0], len(order)), k[1]))
    series = {}
    for attack, eps in keys:
        values = [p.poisoned.get((attack, eps), (math.nan, 0.0)) for p in points]
        series[f"{attack} @ ε = {100 * eps:g}%"] = ([v[0] for v in values], [v[1] for v in values])
    best, rec = found.get("best"), a.recommended()
    rows = [
        {
            "width": p.width,
            "clean": f"{_fmt(p.clean)} ± {_fmt(p.clean_ci)}",
            "cells": [f"{_fmt(p.poisoned[k][0])} ± {_fmt(p.poisoned[k][1])}" if k in p.poisoned else "n/a" for k in keys],
            "worst": _fmt(p.worst_test),
            "damage": _fmt(p.worst_damage),
            "best": best is not None and p.width == best.width,
            "grows": any(g.width == p.width for g in found.get("grows", [])),
        }
        for p in points
    ]
    return {
        "svg": figures.width_curves(
            [p.width for p in points], [p.clean for p in points], [p.clean_ci for p in points], series, a.metric, best.width if best else None
        ),
        "columns": [f"{attack} @ {100 * eps:g}%" for attack, eps in keys],
        "rows": rows,
        "sentence": width_sentence(a),
        "target": f"{100 * a.recommendation.target_budget:g}%",
        "fixed": candidate_label({k: v for k, v in (rec.hparams if rec is not None else {}).items() if k != "width"}),
    }


def sgd_guarantee_context(a: Analysis) -> dict[str, Any] | None:
    """*SGD's guarantee* (Wang et al. 2021, Theorem 2.2): per candidate, attack and budget (no defense),
    the bound on projected SGD's excess clean risk on the poisoned oracle beside the excess risk measured."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for c in a.cells:
        g = c.recorded("sgd_guarantee") if c.status == "ok" else {}
        if g and "bound" in g:
            groups.setdefault((c.candidate, c.attack, c.budget), []).append(g)
    if not groups:
        return None
    rows, held = [], 0
    for (cand, attack, eps), gs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        ok = sum(g["measured"] <= g["bound"] for g in gs)
        held += ok
        rows.append(
            {
                "candidate": candidate_label(json.loads(cand)),
                "attack": attack,
                "budget": f"{100 * eps:g}%",
                "bound": f"{np.mean([g['bound'] for g in gs]):.3g}",
                "measured": f"{np.mean([g['measured'] for g in gs]):.3g}",
                "zeta": f"{np.mean([g['zeta_sum'] / g['steps'] for g in gs]):.3g}",
                "d": f"{gs[0]['radius']:.3g}",
                "g": f"{gs[0]['g']:.3g}",
                "b": f"{np.mean([g['b'] for g in gs]):.3g}",
                "steps": gs[0]["steps"],
                "held": f"{ok} of {len(gs)}",
            }
        )
    total = sum(len(gs) for gs in groups.values())
    return {"rows": rows, "sentence": f"The measured excess risk is within SGD's guarantee in {held} of {total} cells."}


def certified_context(a: Analysis) -> dict[str, Any] | None:
    """*Certified accuracy*: per candidate and certifying defense, each certificate's certified accuracy against the
    radius on the clean training set, beside the defended accuracy under the worst attack found at each budget."""
    series = certified_series(a)
    if not series:
        return None
    panels, rows, violated = [], [], 0
    for s in series:
        title = f"{candidate_label(json.loads(s.candidate))} · {s.defense}"
        panels.append({"title": title, "curves": s.curves, "empirical": [(m, acc) for _, m, acc, _, _ in s.empirical]})
        for eps, m, acc, attack, certified in s.empirical:
            at = {name: (curve[m] if m < len(curve) else 0.0) for name, curve in s.curves.items()}
            violated += acc < certified - 1e-9
            rows.append(
                {
                    "setting": title,
                    "budget": f"{100 * eps:g}% ({m} points)",
                    "found": f"{_fmt(acc)} ({attack})",
                    "certified": " · ".join(f"{figures.CERTIFICATE_LABELS.get(k, k).split(' (')[0]} {_fmt(v)}" for k, v in at.items()),
                    "gap": _fmt(acc - certified),
                }
            )
    repeats = sorted({s.repeats for s in series})
    return {"svg": figures.certified_curves(panels), "rows": rows, "violated": violated, "repeats": " or ".join(str(r) for r in repeats)}


@dataclass(frozen=True)
class Section:
    """One optional part of the report: the template variable ``name`` and the function that fills it."""

    name: str
    build: Callable[[Analysis], dict[str, Any] | None]


SECTIONS: tuple[Section, ...] = (
    Section("poisonability", poisonability_context),
    Section("defenses_section", defense_section),
    Section("adaptive", adaptive_context),
    Section("samples", poison_samples_context),
    Section("minimax", minimax_context),
    Section("width", width_context),
    Section("sgd_guarantee", sgd_guarantee_context),
    Section("certified", certified_context),
)
