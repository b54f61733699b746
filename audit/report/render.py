"""Results → a plain context dict → templates/ → report.html and summary.json.

Python builds data only; the HTML lives in ``templates/report.html.j2`` (autoescape on;
``|safe`` only for the SVG figures this module generated). Every file is written to a
temporary name and renamed, so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from audit.attacks import ATTACKS, profile_settings, spec_setting
from audit.catalog import BATTERY
from audit.config import CONFIRM_SUFFIX
from audit.data import attacker_sentence, domain_sentence
from audit.errors import AuditError
from audit.grid.adaptive import adaptive_axes
from audit.grid.lock import RunLock
from audit.grid.store import Store
from audit.jsonio import atomic_write, finite
from audit.report import figures
from audit.report.aggregation import Analysis, adaptive_rows, bracket_series, certified_series, confirmed_rows, feasible_rows, threshold_table
from audit.report.analysis import analyse
from audit.report.recommend import Z95, candidate_label
from audit.report.sections import SECTIONS
from audit.report.templating import html_environment
from audit.report.wording import fmt as _fmt
from audit.report.wording import relaxed_sentence

SUMMARY_SCHEMA_VERSION = 1


def _why_not_run(a: Analysis, name: str, cls: Any) -> str:
    """Why the registry's attack ``name`` is not in this run: the victim, the profile or the config."""
    kind = a.meta.get("victim_kind")
    kinds = a.meta.get("victim_attack_kinds") or ([kind] if kind else [])
    if kinds and not set(kinds) & set(cls.victims):
        return "needs a PyTorch victim or a scikit-learn LogisticRegression / Ridge (bare or in a supported Pipeline)"
    setting = profile_settings(a.config.profile).get(name)
    if setting is not None and setting.skip:
        return f"left out by the {a.config.profile} profile: {setting.skip}"
    if name not in {e.attack for e in BATTERY}:
        return "not part of the default battery (list it under attacks:)"
    return "not in this config"


def _by_split(rec: Any) -> dict[str, list[dict[str, Any]]]:
    """Per budget, over k ≥ 2 splits, each split's worst-of-attacks test damage and its attack (the worst case is their mean)."""
    if rec is None:
        return {}
    return {
        str(e): [{"split": int(j), "drop": v, "attack": rec.worst_attack_splits[e][j]} for j, v in per.items()]
        for e, per in rec.worst_damage_test_splits.items()
    }


def _per_split_sentence(a: Analysis) -> str:
    """ "; the recommended setting at ε = 10 %: 19.30 (back_gradient), …" over k ≥ 2 splits, else ""."""
    rec, eps = a.recommended(), a.recommendation.target_budget
    rows = _by_split(rec).get(str(eps)) or []
    if not rows:
        return ""
    return f"; the recommended setting's worst case at ε = {100 * eps:g}% per split: " + ", ".join(f"{_fmt(r['drop'])} ({r['attack']})" for r in rows)


def splits_sentence(meta: dict[str, Any]) -> str:
    """How many draws of the train/attacker/validation/test partition the run ran on, in words (README: Repeated splits)."""
    record = meta.get("splits") or {}
    k = int(record.get("run", 1))
    if k > 1:
        return (
            f"{k} draws of the partition (data seeds {', '.join(map(str, record.get('seeds') or []))}; the first is dataset.split.seed): "
            "every cell ran on each, and the worst case is the mean over splits of each split's worst attack"
        )
    return record.get("note") or "one (dataset.split.seed): intervals cannot cover split-to-split variation (splits: k re-draws it)"


def _seeds_run(a: Analysis, spec: Any) -> str:
    """At which seeds an attack's cells ran: all, the first k (profile or config), or once (no seed can change them)."""
    planned: dict[str, list[int]] = a.meta.get("cell_seeds") or {}
    counts = {len(seeds) for key, seeds in planned.items() if json.loads(key)[1] == spec.key}
    wanted = a.config.attack_seeds(spec)
    if counts == {1} and len(wanted) > 1:
        return "once: no seed can change its cells (deterministic attack and training)"
    if len(wanted) < len(a.config.seeds):
        return f"seed{'s' if len(wanted) > 1 else ''} {', '.join(map(str, wanted))} of {len(a.config.seeds)}"
    return "every seed"


def build_context(a: Analysis) -> dict[str, Any]:
    """The plain dict the template renders."""
    cfg = a.config
    settings = profile_settings(cfg.profile)
    budgets = cfg.budgets
    # the attacks with cells behind the defense shown: the grid's, and adaptive ones that ran there (min-max against none)
    attacks = [k for k in a.attack_keys if any((k, e, a.defense) in s.stats for s in a.summaries for e in budgets)] or [s.key for s in cfg.attacks]
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
            by_candidate.append({"label": s.label, "bad": len(bad), "total": len(mine), "max_grad": f"{max(r['grad_norm'] for r in bad):.1e}"})
    unregularized = any(s.hparams.get("l2", None) == 0 for s in a.summaries) and a.higher_is_better
    rows = []
    for s in a.summaries:
        rows.append(
            {
                "label": s.label,
                "recommended": s.key == a.recommendation.key,
                "eligible": s.pair in a.recommendation.eligible,
                "clean_val": _fmt(s.clean_val),
                "clean_test": _fmt(s.clean_test),
                "budgets": [
                    {
                        "worst_val": _fmt(s.worst_val.get(e)),
                        "damage": _fmt(s.worst_damage_test.get(e)),
                        "ci": _fmt_ci(s.worst_damage_test_ci.get(e)),
                        "attack": s.worst_attack_test.get(e, "n/a"),
                    }
                    for e in budgets
                ],
            }
        )
    detail = []
    for s in a.summaries:
        for attack in attacks:
            for eps in budgets:
                st = s.stats.get((attack, eps, a.defense))
                detail.append(
                    {
                        "candidate": s.label,
                        "attack": attack,
                        "budget": f"{100 * eps:g}%",
                        "poisoned": _fmt(st.poisoned_test) if st else "n/a",
                        "std": _fmt(st.poisoned_test_std) if st else "n/a",
                        "damage": _fmt(st.damage_test) if st else "n/a",
                        "damage_att": _fmt(st.damage_att) if st and st.damage_att is not None else "n/a",
                        "ci": _fmt_ci(st.damage_test_ci()) if st else "",
                        "seeds": st.n_seeds if st else 0,
                        "seconds": _fmt(st.seconds, 1) if st else "n/a",
                    }
                )
    verdict_damage = rec.worst_damage_test.get(target) if rec else None
    task = a.meta["dataset"]["task"]
    confirmed_keys = {c.attack for c in a.cells}
    ran = (
        {s.name for s in cfg.attacks}
        | {spec.name for _, spec, _ in adaptive_axes(cfg)}
        | {spec.name for spec in cfg.confirmation_attacks() if spec.key in confirmed_keys}  # ran in the confirmation stage only
    )
    not_run = [cls.title for name, cls in ATTACKS.items() if name not in ran and task in cls.tasks]  # the registry's attacks this run left out
    not_run_why = [f"{cls.title} — {_why_not_run(a, name, cls)}" for name, cls in ATTACKS.items() if name not in ran and task in cls.tasks]
    # battery entries of an attack that did run (e.g. Gradient Canceling's target search beside its paper's form)
    keys = {s.key for s in cfg.attacks} | {spec.key.removesuffix(CONFIRM_SUFFIX) for spec in cfg.confirmation_attacks() if spec.key in confirmed_keys}
    kinds = a.meta.get("victim_attack_kinds") or ([a.meta["victim_kind"]] if a.meta.get("victim_kind") else [])
    for entry in BATTERY:
        if entry.attack in ran and entry.id not in keys and entry.applies(ATTACKS[entry.attack], task, set(kinds or ATTACKS[entry.attack].victims)):
            setting = entry.setting(cfg.profile, settings)
            why = f"left out by the {cfg.profile} profile: {setting.skip}" if setting is not None and setting.skip else "not in this config"
            not_run_why.append(f"{ATTACKS[entry.attack].title}, battery entry {entry.id} — {why}")
    return {
        "title": f"Poisoning audit — {cfg.name}",
        "name": cfg.name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "dataset": a.meta["dataset"],
        "domain_sentence": domain_sentence(a.meta["dataset"]["domain"]) if a.meta["dataset"].get("domain") else None,
        "relaxed_sentence": relaxed_sentence(a),
        "attacker_sentence": attacker_sentence(a.meta["dataset"]),
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
            "ci": _fmt_ci(rec.worst_damage_test_ci.get(target)) if rec else "",
        },
        "severity": _severity(verdict_damage, a.higher_is_better),
        "strength": vars(a.strength()),
        "falls": [
            f"{p.label}: {k} at ε = {100 * e1:g}% ({_fmt(p.stats[(k, e1, p.defense)].damage_test)}) below ε = {100 * e0:g}% "
            f"({_fmt(p.stats[(k, e0, p.defense)].damage_test)})"
            for p in a.pairs
            for k, e0, e1 in sorted(p.falls)
        ],
        "confirmation": _confirmation_context(a),
        "budgets": [f"{100 * b:g}%" for b in budgets],
        "attacks": [{"key": s.key, "name": s.name, "params": json.dumps(s.params, sort_keys=True), "seeds": _seeds_run(a, s)} for s in cfg.attacks],
        "one_seed": [s.key for s in cfg.attacks if len(cfg.attack_seeds(s)) == 1 and len(cfg.seeds) > 1],
        "profile": {
            "name": cfg.profile,
            "reduced": [f"{s.key}: {ps.strength}" for s in cfg.attacks if (ps := spec_setting(cfg.profile, s.name, s.key)) and ps.strength],
        },
        "defenses": cfg.defense_keys,
        "defense_shown": a.defense,
        "tradeoff": rows,
        "detail": detail,
        "curves_svg": figures.budget_curves(a.summaries, attacks, budgets, a.defense, a.metric, a.recommendation.key),
        "heatmap_svg": figures.worst_case_heatmap(a.summaries, budgets, a.unit),
        "failed": [
            {
                "candidate": candidate_label(c.hparams),
                "attack": c.attack,
                "budget": f"{100 * c.budget:g}%",
                "defense": c.defense,
                "seed": c.seed,
                "error": c.error,
            }
            for c in failed
        ],
        "progress": {"done": done, "total": total, "missing": max(total - done - len(failed), 0)},
        "not_converged": not_converged,
        "not_converged_by_candidate": by_candidate,
        "diverged": [
            {"candidate": candidate_label(c.hparams), "attack": c.attack, "budget": f"{100 * c.budget:g}%", "seed": c.seed} for c in diverged
        ],
        "unregularized": unregularized,
        "n_retrains": len(retrains),
        "not_run": not_run,
        "not_run_why": not_run_why,
        "victim_caveats": a.meta.get("victim_caveats") or [],
        # dataset.domain: relaxed — per budget, the relaxed poisons' worst case and that of the same poisons mapped into the domain
        "feasible_damage": [vars(r) for r in feasible_rows(a)],
        "max_budget": f"{100 * max(budgets):g}%",
        "seeds": cfg.seeds,
        "splits": {"text": splits_sentence(a.meta) + _per_split_sentence(a)},
        "fingerprint": a.meta.get("fingerprint", ""),
        "versions": a.meta.get("versions", {}),
        "config_yaml": yaml.safe_dump(a.meta["config"], sort_keys=False),
        "task": task,
        "complete": a.completeness().complete,
        "corrupt": a.corrupt,
        "interval_scope": a.interval_scope()["text"],
        "deployed": _deployed(a),
        **{section.name: section.build(a) for section in SECTIONS},
    }


def _deployed(a: Analysis) -> dict[str, Any] | None:
    """The user's estimator as handed over against the audit's clean retraining closest to it
    (:meth:`Analysis.deployed`): the header's no-verdict block, the accepted-mismatch line, the audited-row."""
    check = a.deployed()
    if check is None:
        return None
    return {
        "value": _fmt(check.value) if a.higher_is_better else f"{check.value:.4g}",
        "audited": _fmt(check.audited) if a.higher_is_better else f"{check.audited:.4g}",
        "label": check.label,
        "differs": not check.matches,
        "withheld": check.withheld,
        "accepted": check.accepted and not check.matches,
        "trained": check.trained,
        "gap": check.gap_text,
        "sentence": check.sentence(a.metric),
    }


def deployed_json(a: Analysis) -> dict[str, Any] | None:
    """summary.json's ``deployed``: the comparison that decides whether the run gives a verdict."""
    check = a.deployed()
    if check is None:
        return None
    return {
        "test_metric": check.value,
        "audited_test_metric": check.audited,
        "audited_setting": check.label,
        "gap": check.gap,
        "tolerance": check.limit,
        "gap_unit": "points" if a.higher_is_better else "fraction of the MSE",
        "trained": check.trained,
        "trivial_test_metric": check.trivial,
        "matches": check.matches,
        "mismatch_accepted": check.accepted and not check.matches,
        "verdict_withheld": check.withheld,
        "training": check.training or "the audit's procedure",
        "statement": check.sentence(a.metric),
    }


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    """A 95 % interval as text, e.g. ``2.1–6.5`` (empty when there is none)."""
    if ci is None or not all(math.isfinite(v) for v in ci):
        return ""
    return f"{_fmt(ci[0])}–{_fmt(ci[1])}"


def _describe_training(training: dict[str, Any] | None) -> str:
    if not training:
        return "the model's own solver (scikit-learn)"
    batch = "full batch" if training.get("batch_size") is None else f"batch {training['batch_size']}"
    if str(training.get("optimizer", "")).startswith("torch.optim."):
        params = ", ".join(
            f"{k}={v}" for k, v in sorted((training.get("optimizer_params") or {}).items()) if k in ("lr", "betas", "momentum", "weight_decay", "eps")
        )
        how = f"the estimator's own optimizer {training['optimizer']}({params}), {training.get('epochs')} epochs, {batch}"
    elif training.get("optimizer") == "lbfgs":
        how = f"L-BFGS (strong Wolfe), at most {training.get('epochs')} iterations, {batch}"
    else:
        how = f"{training.get('optimizer')} lr {training.get('lr')}, momentum {training.get('momentum')}, {training.get('epochs')} epochs, {batch}"
    return how + "; objective: mean loss + ρ/2·‖w‖² over weights (biases unregularized); candidate axes override"


def _severity(damage: float | None, higher_is_better: bool) -> str:
    if damage is None or not math.isfinite(damage):
        return "unknown"
    if not higher_is_better:
        return "info"
    return "ok" if damage <= 2 else ("warn" if damage <= 5 else "bad")


def render_html(context: dict[str, Any]) -> str:
    return html_environment().get_template("report.html.j2").render(**context)


def _confirmation_context(a: Analysis) -> dict[str, Any]:
    """The report's "Screened and confirmed" table: per confirmed setting and budget, the two worst cases and their ratio."""
    conf = a.confirmation
    rows = [
        {
            "label": r.label,
            "budget": f"{100 * r.budget:g}%",
            "screened": _fmt(r.screened),
            "screened_attack": r.screened_attack or "n/a",
            "confirmed": _fmt(r.confirmed),
            "confirmed_attack": r.confirmed_attack or "n/a",
            "ratio": f"{r.ratio:.2f}×" if r.ratio is not None else "n/a",
            "recommended": r.recommended,
        }
        for r in confirmed_rows(a)
    ]
    return {
        "enabled": bool(conf.get("enabled", False)),
        "attacks": conf.get("attacks", []),
        "left_out": conf.get("left_out", []),
        "budgets": [f"{100 * b:g}%" for b in conf.get("budgets", [])],
        "rows": rows,
        "full_grid": not a.config.confirmation_attacks(),
    }


def verdict_json(a: Analysis) -> dict[str, Any]:
    """summary.json's ``verdict``: whether each budget's verdict is confirmed, and the confirmation stage's figures."""
    st = a.strength()
    conf = a.confirmation
    return {
        "confirmed": st.confirmed,
        "strength": st.text,
        "why": st.why,
        "per_budget": {str(e): {"confirmed": (b := a.strength(e)).confirmed, "strength": b.text, "why": b.why} for e in a.config.budgets},
        "intervals": a.interval_scope()["text"],
        "confirmation": {
            "enabled": bool(conf.get("enabled", False)),
            "budgets": conf.get("budgets", []),
            "battery": conf.get("battery", []),
            "left_out": conf.get("left_out", []),
            "attacks": conf.get("attacks", []),
            "settings": [candidate_label(json.loads(c)) + ("" if d == "none" else f" + {d}") for c, d in conf.get("pairs", [])],
            "rounds": conf.get("rounds", []),
            "cells_planned": len(conf.get("cells", [])),
            "screened_vs_confirmed": [vars(r) | {"ratio": r.ratio} for r in confirmed_rows(a)],
        },
    }


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
        "victim_caveats": a.meta.get("victim_caveats") or [],
        # dataset.domain: relaxed — per budget, the relaxed poisons' worst case and that of the same poisons mapped into the domain
        "feasible_damage": [vars(r) for r in feasible_rows(a)],  # e.g. a pipeline surrogate's fixed scaler: possibly a lower bound
        "deployed_test_metric": a.meta.get("deployed_test_metric"),  # the user's estimator as handed over (API runs)
        "completeness": {**vars(done := a.completeness()), "complete": done.complete},  # no verdict unless complete
        "device": a.meta.get("device"),
        "profile": a.config.profile,
        "attacks": [{"key": s.key, "name": s.name, "params": s.params, "seeds": _seeds_run(a, s)} for s in a.config.attacks],
        "metric": {"name": a.metric, "higher_is_better": a.higher_is_better, "damage": a.unit},
        "target_budget": a.recommendation.target_budget,
        # no verdict when the audited model is not the user's (README: "Train as you train"); "no_verdict" says why
        "verdict": None if (check := a.deployed()) is not None and check.withheld else verdict_json(a),
        "no_verdict": check.sentence(a.metric) if check is not None and check.withheld else None,
        "deployed": deployed_json(a),
        "recommendation": {
            "strength": a.strength().text,
            "hyperparameters": rec.hparams if rec else None,
            "defense": a.recommendation.defense,
            "label": a.recommendation.label,
            "clean_accuracy": rec.clean_val if rec else None,
            "clean_test_accuracy": rec.clean_test if rec else None,
            "worst_case_drop": {str(e): v for e, v in rec.worst_damage_test.items()} if rec else {},
            "worst_case_drop_val": {str(e): v for e, v in rec.worst_damage_val.items()} if rec else {},
            "worst_case_drop_ci95": {str(e): list(v) for e, v in rec.worst_damage_test_ci.items()} if rec else {},
            # over k ≥ 2 splits: each split's worst-of-attacks figure and its attack (the worst case is their mean)
            "worst_case_drop_by_split": _by_split(rec),
            "worst_attack": {str(e): v for e, v in rec.worst_attack_test.items()} if rec else {},  # the attack whose test drop is shown
            "intervals": (scope := a.interval_scope())["text"],  # what the interval covers, for this run (audit.report.recommend)
            "intervals_scope": scope,
            "reason": a.recommendation.reason,
        },
        "candidates": [_setting(a, s) for s in a.summaries],  # without a defense
        "settings": [_setting(a, p) | {"defense": p.defense} for p in a.pairs],  # every (candidate, defense)
        "cells": [
            {
                "hyperparameters": c.hparams,
                "attack": c.attack,
                "budget": c.budget,
                "defense": c.defense,
                "seed": c.seed,
                "split": c.split,
                "clean_metric": c.clean_test,
                "poisoned_metric": c.poisoned_test,
                "clean_val_metric": c.clean_val,
                "poisoned_val_metric": c.poisoned_val,
                # D_att, the split the attack optimised: {"clean", "poisoned"} (null: the attack read D_val)
                "attacker_split_metric": c.recorded("attacker_split") or None,
                "drop": None if c.status != "ok" or c.clean_test is None or c.poisoned_test is None else sign * (c.clean_test - c.poisoned_test),
                "drop_se": c.recorded("se").get("test_drop") if c.status == "ok" else None,
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
            {k: r[k] for k in ("label", "eps_w", "val", "test", "tau_2", "tau_c", "tau_rho_2", "tau_rho_c", "unreachable", "seeds", "condition")}
            | {"hyperparameters": json.loads(r["key"])}
            for r in threshold_table(a)
        ],
        "minimax": [r.as_dict() for r in a.policies],
        "adaptive": _adaptive_summary(a),
        # per (candidate, certifying defense): certified accuracy (%) at radius r = list index (insertions or removals) on
        # the clean training set, per certificate, and at each budget the worst attack's defended accuracy beside it
        "certified": [
            {
                "hyperparameters": json.loads(s.candidate),
                "defense": s.defense,
                "certificate": s.certificate,
                "repeats": s.repeats,
                "curves": s.curves,
                "at_budgets": [
                    {"budget": eps, "changes": m, "attacked_accuracy": acc, "worst_attack": attack, "certified_accuracy": cert}
                    for eps, m, acc, attack, cert in s.empirical
                ],
            }
            for s in certified_series(a)
        ],
    }


def _adaptive_summary(a: Analysis) -> dict[str, Any]:
    """The adaptive stage for machines: the attackers, and per filtering defense and budget (recommended
    candidate) the worst non-adaptive and adaptive test damage, survival and verdict; the bracket."""

    def stats(st: Any) -> dict[str, Any] | None:
        if st is None:
            return None
        return {
            "damage": st.damage_test,
            "damage_ci95": list(st.damage_test_ci()),
            "damage_val": st.damage_val,
            "poisons_survived": 1.0 - st.poisons_removed,
            "clean_removed": st.clean_removed,
        }

    series = bracket_series(a)
    return {
        "attackers": [key for key, _, _ in adaptive_axes(a.config)],
        "rounds": a.config.adaptive.rounds,
        "defenses": [
            {
                "defense": r.defense,
                "budget": r.budget,
                "verdict": r.verdict,
                "non_adaptive": stats(r.plain),
                "non_adaptive_attack": r.plain_attack or None,
                "adaptive": stats(r.adaptive),
                "adaptive_attack": r.adaptive_attack or None,
                "undefended": stats(r.undefended),
            }
            for r in adaptive_rows(a)
        ],
        "bracket": None
        if series is None
        else {
            "quantity": "clean training loss L_c + (1 + ε)(ρ/2)‖W‖² of the learned model (every clean point kept)",
            "clean": series["clean"],
            "defenses": {
                d: {
                    "worst_found": {str(e): v for e, v in s["found"].items()},
                    "bound": {str(e): v for e, v in s["bound"].items()},
                    "attack": {str(e): v for e, v in s["attack"].items()},
                }
                for d, s in series["defenses"].items()
            },
        },
    }


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` and ``summary.json`` from the store into ``out`` (default: the run directory, under its
    lock; elsewhere the run directory is only read, so a read-only one can be reported); returns the HTML path."""
    run_dir = Path(run_dir)
    Store.open_existing(run_dir, read_only=True).close()  # a one-line error, and no lock file, where there is no run
    target = run_dir if out is None else Path(out)
    if out is not None and not target.is_dir():
        raise AuditError(f"--out: no such directory: {target}")
    inside = target.resolve() == run_dir.resolve()
    with RunLock(run_dir, "report") if inside else contextlib.nullcontext():
        analysis = analyse(run_dir)
        html = render_html(build_context(analysis))
        atomic_write(target / "summary.json", json.dumps(finite(build_summary(analysis)), indent=2, allow_nan=False, default=_json_default))
        atomic_write(target / "report.html", html)
    return target / "report.html"


def _setting(a: Analysis, s: Any) -> dict[str, Any]:
    """One setting of summary.json: clean metrics, worst case per budget, eligibility."""
    return {
        "hyperparameters": s.hparams,
        "clean_val": s.clean_val,
        "clean_test": s.clean_test,
        "clean_test_ci95": [s.clean_test - Z95 * s.clean_test_se, s.clean_test + Z95 * s.clean_test_se],
        "worst_case_val": {str(e): v for e, v in s.worst_val.items()},
        "worst_case_val_ci95": {str(e): list(v) for e, v in s.worst_val_ci.items()},
        "worst_case_drop": {str(e): v for e, v in s.worst_damage_test.items()},
        "worst_case_drop_ci95": {str(e): list(v) for e, v in s.worst_damage_test_ci.items()},
        "worst_attack": {str(e): v for e, v in s.worst_attack_test.items()},
        "damage_falls": [{"attack": k, "from_budget": e0, "budget": e1} for k, e0, e1 in sorted(s.falls)],
        "eligible": s.pair in a.recommendation.eligible,
    }


def _json_default(value: Any) -> Any:
    return str(value)
