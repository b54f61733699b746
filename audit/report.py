"""Results → a plain context dict → templates/ → report.html, summary.json and gate.xml.

Python builds data only; the HTML lives in ``templates/report.html.j2`` (autoescape on;
``|safe`` only for the SVG figures this module generated). Every file is written to a
temporary name and renamed, so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from audit import figures
from audit.config import AuditConfig
from audit.errors import AuditError
from audit.recommend import CandidateSummary, Recommendation, aggregate, candidate_label, recommend
from audit.store import Store

SUMMARY_SCHEMA_VERSION = 1

# Attacks the product implements or plans; the report names those this run did not cover.
KNOWN_ATTACKS = {  # name: (description, tasks it applies to)
    "label_flip": ("label flip (random / adversarial)", ("classification",)),
    "back_gradient": ("back-gradient (reverse-mode differentiation)", ("classification", "regression")),
    "tgda": ("TGDA (total gradient descent ascent)", ("classification",)),
    "gradient_canceling": ("Gradient Canceling", ("classification", "regression")),
    "statp": ("StatP (statistical attack)", ("classification", "regression")),
    "optp": ("optimization attack on (x, y)", ("regression",)),
}


def templates_dir() -> Path:
    """Templates shipped in the wheel (``audit/templates``) or, from a checkout, the repository's ``templates/``."""
    packaged = Path(__file__).parent / "templates"
    if (packaged / "report.html.j2").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Analysis:
    """Everything the report, summary and gate read from a run."""

    config: AuditConfig
    meta: dict[str, Any]
    cells: list
    summaries: list[CandidateSummary]
    recommendation: Recommendation
    defense: str
    metric: str
    higher_is_better: bool
    targets: list[dict[str, Any]]

    @property
    def unit(self) -> str:
        return "accuracy drop (points)" if self.higher_is_better else "MSE increase"

    def recommended(self) -> CandidateSummary | None:
        return next((s for s in self.summaries if s.key == self.recommendation.key), None)


def analyse(run_dir: str | Path) -> Analysis:
    """Read a run directory's store and aggregate it (no recomputation)."""
    store = Store.open_existing(run_dir)
    try:
        meta = store.all_meta()
        cells = store.cells()
        clean_rows = list(store.clean_rows())
        targets = store.target_rows()
    finally:
        store.close()
    config = AuditConfig.model_validate(meta["config"])
    task = meta["dataset"]["task"]
    higher = task == "classification"
    metric = "accuracy (%)" if higher else "MSE"
    defense = "none" if "none" in config.defenses else config.defenses[0]
    summaries = aggregate(
        cells, clean_rows, config.candidate_grid(), [a.key for a in config.attacks], config.budgets, config.seeds,
        defense, higher_is_better=higher,
    )  # fmt: skip
    rec = recommend(summaries, config.target_budget, config.recommendation.clean_tolerance, higher,
                    metric_name="accuracy" if higher else "MSE")  # fmt: skip
    analysis = Analysis(config, meta, cells, summaries, rec, defense, metric, higher, targets)
    moved = tau_sentence(analysis)
    if moved:
        rec.reason = f"{rec.reason} {moved}"
    return analysis


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


def _fmt(value: float | None, digits: int = 2) -> str:
    """Fixed decimals for accuracies; 4 significant digits for small values such as an MSE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def build_context(a: Analysis) -> dict[str, Any]:
    """The plain dict the template renders."""
    cfg = a.config
    budgets = cfg.budgets
    attacks = [s.key for s in cfg.attacks]
    rec = a.recommended()
    target = a.recommendation.target_budget
    failed = [c for c in a.cells if c.status == "failed"]
    total = a.meta.get("total_cells", len(a.cells))
    done = sum(c.status == "ok" for c in a.cells)
    retrains = [(c, json.loads(c.diagnostics or "{}").get("retrain", {})) for c in a.cells if c.status == "ok"]
    not_converged = sum(1 for _, r in retrains if r and not r.get("converged", True))
    diverged = [c for c, r in retrains if r and not math.isfinite(r.get("objective", 0.0) or 0.0)]
    by_candidate = []
    for s in a.summaries:
        mine = [r for c, r in retrains if c.candidate == s.key and r]
        bad = [r for r in mine if not r.get("converged", True)]
        if bad:
            by_candidate.append({"label": s.label, "bad": len(bad), "total": len(mine),
                                 "max_grad": f"{max(r['grad_norm'] for r in bad):.1e}"})  # fmt: skip
    unregularized = any(s.hparams.get("l2", None) == 0 for s in a.summaries) and a.higher_is_better
    rows = []
    for s in a.summaries:
        rows.append({
            "label": s.label,
            "recommended": s.key == a.recommendation.key,
            "eligible": s.key in a.recommendation.eligible,
            "clean_val": _fmt(s.clean_val),
            "clean_test": _fmt(s.clean_test),
            "budgets": [{"worst_val": _fmt(s.worst_val.get(e)), "damage": _fmt(s.worst_damage_test.get(e)),
                         "attack": s.worst_attack.get(e, "n/a")} for e in budgets],
        })  # fmt: skip
    detail = []
    for s in a.summaries:
        for attack in attacks:
            for eps in budgets:
                st = s.stats.get((attack, eps, a.defense))
                detail.append({
                    "candidate": s.label, "attack": attack, "budget": f"{100 * eps:g}%",
                    "poisoned": _fmt(st.poisoned_test) if st else "n/a",
                    "std": _fmt(st.poisoned_test_std) if st else "n/a",
                    "damage": _fmt(st.damage_test) if st else "n/a",
                    "seeds": st.n_seeds if st else 0, "seconds": _fmt(st.seconds, 1) if st else "n/a",
                })  # fmt: skip
    verdict_damage = rec.worst_damage_test.get(target) if rec else None
    task = a.meta["dataset"]["task"]
    not_run = [desc for name, (desc, tasks) in KNOWN_ATTACKS.items() if name not in {s.name for s in cfg.attacks} and task in tasks]
    return {
        "title": f"Poisoning audit — {cfg.name}",
        "name": cfg.name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "dataset": a.meta["dataset"],
        "victim": a.meta.get("victim", ""),
        "training": _describe_training(a.meta.get("training")),
        "device": a.meta.get("device", ""),
        "device_name": a.meta.get("device_name", ""),
        "metric": a.metric,
        "unit": a.unit,
        "target_budget": f"{100 * target:g}%",
        "recommendation": {
            "label": a.recommendation.label,
            "reason": a.recommendation.reason,
            "clean_test": _fmt(rec.clean_test) if rec else "n/a",
            "worst_test": _fmt(rec.worst_test.get(target)) if rec else "n/a",
            "damage": _fmt(verdict_damage),
        },
        "severity": _severity(verdict_damage, a.higher_is_better),
        "budgets": [f"{100 * b:g}%" for b in budgets],
        "attacks": [{"key": s.key, "name": s.name, "params": json.dumps(s.params, sort_keys=True)} for s in cfg.attacks],
        "defenses": cfg.defenses,
        "defense_shown": a.defense,
        "tradeoff": rows,
        "detail": detail,
        "curves_svg": figures.budget_curves(a.summaries, attacks, budgets, a.defense, a.metric, a.recommendation.key),
        "heatmap_svg": figures.worst_case_heatmap(a.summaries, budgets, a.unit),
        "failed": [{"candidate": candidate_label(c.hparams), "attack": c.attack, "budget": f"{100 * c.budget:g}%",
                    "defense": c.defense, "seed": c.seed, "error": c.error} for c in failed],  # fmt: skip
        "progress": {"done": done, "total": total, "missing": max(total - done - len(failed), 0)},
        "not_converged": not_converged,
        "not_converged_by_candidate": by_candidate,
        "diverged": [{"candidate": candidate_label(c.hparams), "attack": c.attack, "budget": f"{100 * c.budget:g}%",
                      "seed": c.seed} for c in diverged],  # fmt: skip
        "unregularized": unregularized,
        "n_retrains": len(retrains),
        "not_run": not_run,
        "max_budget": f"{100 * max(budgets):g}%",
        "seeds": cfg.seeds,
        "fingerprint": a.meta.get("fingerprint", ""),
        "versions": a.meta.get("versions", {}),
        "config_yaml": yaml.safe_dump(a.meta["config"], sort_keys=False),
        "poisonability": poisonability_context(a),
        "task": task,
        "defenses_section": defense_section(a),
    }


def _describe_training(training: dict[str, Any] | None) -> str:
    if not training:
        return "the model's own solver (scikit-learn)"
    batch = "full batch" if training.get("batch_size") is None else f"batch {training['batch_size']}"
    if training.get("optimizer") == "lbfgs":
        how = f"L-BFGS (strong Wolfe), at most {training.get('epochs')} iterations, {batch}"
    else:
        how = (f"{training.get('optimizer')} lr {training.get('lr')}, momentum {training.get('momentum')}, "
               f"{training.get('epochs')} epochs, {batch}")  # fmt: skip
    return how + "; objective: mean loss + ρ/2·‖w‖² over weights (biases unregularized); candidate axes override"


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
    return {"rows": rows, "svg": figures.defense_curves(panels, rec.clean_test, a.config.budgets, a.metric),
            "ratio": not a.higher_is_better}  # fmt: skip


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
                })  # fmt: skip
    return rows


def _severity(damage: float | None, higher_is_better: bool) -> str:
    if damage is None or not math.isfinite(damage):
        return "unknown"
    if not higher_is_better:
        return "info"
    return "ok" if damage <= 2 else ("warn" if damage <= 5 else "bad")


def render_html(context: dict[str, Any]) -> str:
    env = Environment(loader=FileSystemLoader(templates_dir()), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(**context)


def build_summary(a: Analysis) -> dict[str, Any]:
    """``summary.json``: versioned, for machines."""
    rec = a.recommended()
    sign = 1.0 if a.higher_is_better else -1.0
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "name": a.config.name,
        "fingerprint": a.meta.get("fingerprint"),
        "dataset": a.meta["dataset"],
        "victim": a.meta.get("victim"),
        "device": a.meta.get("device"),
        "metric": {"name": a.metric, "higher_is_better": a.higher_is_better, "damage": a.unit},
        "target_budget": a.recommendation.target_budget,
        "recommendation": {
            "hyperparameters": rec.hparams if rec else None,
            "label": a.recommendation.label,
            "clean_accuracy": rec.clean_val if rec else None,
            "clean_test_accuracy": rec.clean_test if rec else None,
            "worst_case_drop": {str(e): v for e, v in rec.worst_damage_test.items()} if rec else {},
            "worst_case_drop_val": {str(e): v for e, v in rec.worst_damage_val.items()} if rec else {},
            "reason": a.recommendation.reason,
        },
        "candidates": [
            {"hyperparameters": s.hparams, "clean_val": s.clean_val, "clean_test": s.clean_test,
             "worst_case_val": {str(e): v for e, v in s.worst_val.items()},
             "worst_case_drop": {str(e): v for e, v in s.worst_damage_test.items()},
             "eligible": s.key in a.recommendation.eligible}
            for s in a.summaries
        ],  # fmt: skip
        "cells": [
            {
                "hyperparameters": c.hparams,
                "attack": c.attack,
                "budget": c.budget,
                "defense": c.defense,
                "seed": c.seed,
                "clean_metric": c.clean_test,
                "poisoned_metric": c.poisoned_test,
                "clean_val_metric": c.clean_val,
                "poisoned_val_metric": c.poisoned_val,
                "drop": None if c.status != "ok" else sign * (c.clean_test - c.poisoned_test),
                "n_poison": c.n_poison,
                "poisons_removed": c.poisons_removed,
                "clean_removed": c.clean_removed,
                "seconds": c.seconds,
                "device": c.device,
                "status": c.status,
                "error": c.error,
            }
            for c in a.cells
        ],
        "versions": a.meta.get("versions", {}),
        "poisonability": [
            {k: r[k] for k in ("label", "eps_w", "val", "test", "tau_2", "tau_c", "tau_rho_2", "tau_rho_c", "unreachable",
                               "seeds", "condition")} | {"hyperparameters": json.loads(r["key"])}
            for r in threshold_table(a)
        ],  # fmt: skip
    }


def write_report(run_dir: str | Path) -> Path:
    """Render ``report.html`` and ``summary.json`` from the store; returns the HTML path."""
    run_dir = Path(run_dir)
    analysis = analyse(run_dir)
    html = render_html(build_context(analysis))
    _atomic_write(run_dir / "summary.json", json.dumps(build_summary(analysis), indent=2, allow_nan=False,
                                                       default=_json_default))  # fmt: skip
    _atomic_write(run_dir / "report.html", html)
    return run_dir / "report.html"


def _json_default(value: Any) -> Any:
    return str(value)


@dataclass
class GateResult:
    passed: bool
    message: str
    damage: float | None


def gate(run_dir: str | Path, budget: float, max_drop: float) -> GateResult:
    """Pass when the recommended setting's worst-case test damage at ``budget`` is at most ``max_drop``; writes gate.xml."""
    run_dir = Path(run_dir)
    a = analyse(run_dir)
    if budget not in a.config.budgets:
        raise AuditError(f"--budget {budget:g} was not run; budgets of this run: {', '.join(f'{b:g}' for b in a.config.budgets)}")
    rec = a.recommended()
    damage = rec.worst_damage_test.get(budget) if rec else None
    what = "accuracy drop" if a.higher_is_better else "MSE increase"
    unit = " points" if a.higher_is_better else ""
    if damage is None or not math.isfinite(damage):
        result = GateResult(False, f"no finished cells for the recommended setting at ε = {budget:g}", None)
    else:
        passed = damage <= max_drop
        shown = f"{damage:.2f}" if a.higher_is_better else f"{damage:.4g}"
        result = GateResult(
            passed,
            f"{a.recommendation.label}: worst-case {what} at ε = {budget:g} is {shown}{unit} "
            f"({'≤' if passed else '>'} {max_drop:g}{unit} allowed; worst attack {rec.worst_attack.get(budget)})",
            damage,
        )
    _atomic_write(run_dir / "gate.xml", junit_xml(a.config.name, budget, result))
    return result


def junit_xml(name: str, budget: float, result: GateResult) -> str:
    case = quoteattr(f"worst-case damage at eps={budget:g}")
    body = "" if result.passed else f'<failure message={quoteattr(result.message)}>{escape(result.message)}</failure>'
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name={quoteattr("poison-audit " + name)} tests="1" '
        f'failures="{0 if result.passed else 1}" errors="0">'
        f'<testcase classname="poison-audit.gate" name={case}>{body}'
        f"<system-out>{escape(result.message)}</system-out></testcase></testsuite></testsuites>\n"
    )
