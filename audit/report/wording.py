"""Wording: the sentences the report, summary, gate and record say about a run's figures.

Each function turns an :class:`~audit.report.aggregation.Analysis` (figures only) into one paragraph's
sentence, or "" when it has nothing to say; :func:`reason` joins them after the recommendation's own reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from audit.report.aggregation import (
    POLICY_LABELS,
    Analysis,
    adaptive_rows,
    confirmed_rows,
    feasible_rows,
    policy_series,
    threshold_table,
    width_findings,
    width_series,
)
from audit.report.recommend import pair_id


def fmt(value: float | None, digits: int = 2) -> str:
    """Fixed decimals for accuracies; 4 significant digits for small values such as an MSE."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def confirmation_sentence(a: Analysis) -> str:
    """The recommendation paragraph's last word on strength: confirmed (screened vs confirmed worst case,
    whether confirmation changed the pick), or the lower-bound label and why."""
    st = a.strength()
    eps = a.recommendation.target_budget
    if not st.confirmed:
        return f"LOWER BOUND — {st.text}: {st.why}. The true worst case may be larger."
    rows = [r for r in confirmed_rows(a) if r.recommended and r.budget == eps]
    if not rows:
        return f"Verdict {st.text}."
    r = rows[0]
    unit = " points" if a.higher_is_better else ""
    ratio = f", {r.ratio:.2f}× the screen's" if r.ratio is not None else ""
    text = (
        f"Verdict {st.text}: worst case at ε = {eps:g} {fmt(r.confirmed)}{unit} on test ({r.confirmed_attack}{ratio}; "
        f"the screen found {fmt(r.screened)} with {r.screened_attack})."
    )
    rounds = a.confirmation.get("rounds", [])
    first = rounds[0]["recommended"] if rounds else None
    if first is not None and a.recommendation.key is not None and first != [a.recommendation.key, a.recommendation.defense]:
        before = next((p.label for p in a.pairs if p.pair == pair_id(first[0], first[1])), str(first))
        text += f" Confirmation changed the recommendation: the screen chose {before}, whose confirmed worst case is worse."
    others = len(a.confirmation.get("pairs", [])) - 1
    unconfirmed = len(a.pairs) - len(a.confirmation.get("pairs", []))
    if others > 0:
        text += f" {others} tied setting{'s were' if others > 1 else ' was'} confirmed too."
    if unconfirmed > 0:
        text += f" The other {unconfirmed} settings were screened only: their worst cases are lower bounds."
    return text


def defense_cost_sentence(a: Analysis) -> str:
    """What the recommended defense costs on clean data (or that no defense was chosen, when some were run)."""
    rec = a.recommendation
    if rec.key is None or len(a.config.defenses) < 2:
        return ""
    if rec.defense == "none":
        return "No defense is recommended: none of those run improved the worst case enough within the clean tolerance."
    plain = next((s for s in a.pairs if s.key == rec.key and s.defense == "none"), None)
    chosen = a.recommended()
    removed = [r.removed for r in a.clean_defended_rows if r.candidate == rec.key and r.defense == rec.defense and r.removed is not None]
    if plain is None or chosen is None:
        return ""
    sign = 1.0 if a.higher_is_better else -1.0
    delta = sign * (chosen.clean_val - plain.clean_val)  # > 0: the defense helps on clean validation data
    if a.higher_is_better:
        effect = f"{'raises' if delta > 0 else 'lowers'} validation accuracy by {fmt(abs(delta))} points"
    else:
        effect = f"{'lowers' if delta > 0 else 'raises'} validation MSE by {fmt(abs(delta))}"
    text = (
        f"On clean data the defense {rec.defense} {effect} ({fmt(chosen.clean_val)} with it, "
        f"{fmt(plain.clean_val)} without; test {fmt(chosen.clean_test)} vs {fmt(plain.clean_test)}) and drops "
        f"{np.mean(removed):.0f} clean training points on average."
    )
    if a.config.defense_spec(rec.defense).defense.reads_validation:
        if a.meta["dataset"].get("n_val_defense"):
            text += (
                f" {rec.defense} reads its own {a.meta['dataset']['n_val_defense']} validation points; the "
                f"{a.meta['dataset']['n_val']} used to choose it are separate."
            )
        else:
            text += (
                f" {rec.defense} itself selects points with the validation split, so its validation figures are "
                "optimistic: judge it by the test figures."
            )
    return text


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
        same = r.get("tau_same_predictions")
        if same is not None and (r["tau_rho_2"] is None or same < r["tau_rho_2"]):
            tau += f", but {_tau_words(same)} for the same predictions (output layer × {r['scale']:.2g})"
        parts.append(f"{r['label']}: {tau}")
    return (
        f"Poisonability: the GradPC target at ε_w = {eps_w:g} (relative parameter change) needs "
        f"ε ≥ τ to be reached as a parameter vector — {'; '.join(parts)}. A threshold speaks about one "
        "parameter vector with poisons anywhere in feature space; it does not bound the damage to predictions."
    )


def _tau_words(tau: float) -> str:
    return "reachable at any ε > 0" if tau <= 0 else f"τ_ρ(2) = {tau:.3g}"


def minimax_sentence(a: Analysis, series: dict[str, Any]) -> str:
    """How λ_RMD moves with the budget, and what the minimax says at the target budget (for the recommendation)."""
    rmd = series["lam"].get(POLICY_LABELS["rmd"], {})
    if len(rmd) < 2:
        return ""
    lo_eps, hi_eps = min(rmd), max(rmd)
    rho = series["l2"][POLICY_LABELS["rmd"]]
    trend = "grows" if rmd[hi_eps] > rmd[lo_eps] + 0.05 else ("falls" if rmd[hi_eps] < rmd[lo_eps] - 0.05 else "stays flat")
    text = (
        f"λ under attack (minimax): λ_RMD {trend} from {rmd[lo_eps]:.2f} at ε = {lo_eps:g} to {rmd[hi_eps]:.2f} at "
        f"ε = {hi_eps:g} (ρ {rho[lo_eps]:.3g} → {rho[hi_eps]:.3g})"
    )
    if trend == "grows":
        text += ": raise the L2 strength as the expected poisoning grows, re-tuning it on trusted data"
    target = a.recommendation.target_budget
    rec, attack = a.recommended(), a.config.minimax_attack()
    rmd_val = series["val"].get(POLICY_LABELS["rmd"], {}).get(target)
    st = rec.stats.get((attack.key, target, "none")) if rec is not None and attack is not None else None
    if rec is not None and attack is not None and rmd_val is not None and st is not None and "l2" in rec.hparams:
        sign = 1.0 if a.higher_is_better else -1.0
        better = sign * (rmd_val - st.poisoned_val) > 0
        text += (
            f". Against {attack.key} at ε = {target:g}, learning λ under attack "
            f"{'beats' if better else 'does not beat'} the recommended fixed {rec.label} on the validation split "
            f"({fmt(rmd_val)} vs {fmt(st.poisoned_val)})"
        )
        if better:
            text += f": deploy ρ re-tuned under attack (≈ {series['l2'][POLICY_LABELS['rmd']][target]:.3g} at this budget)"
    errors = {label: pts[target] for label, pts in series["error"].items() if target in pts}
    if POLICY_LABELS["rmd"] in errors and len(errors) > 1:
        unit = " %" if a.higher_is_better else ""
        name = "test error" if a.higher_is_better else "test MSE"
        others = ", ".join(f"{k} {fmt(v)}{unit}" for k, v in errors.items() if k != POLICY_LABELS["rmd"])
        text += (
            f". At ε = {target:g} the defender that learns λ under attack has {name} "
            f"{fmt(errors[POLICY_LABELS['rmd']])}{unit} against {others} (test figures, not used to choose)"
        )
    return text + "."


def adaptive_sentence(a: Analysis) -> str:
    """For the recommendation paragraph: which filtering defenses an attacker who knows them breaks at the target budget."""
    target = a.recommendation.target_budget
    rows = [r for r in adaptive_rows(a) if r.budget == target and r.adaptive is not None]
    if not rows:
        return ""
    unit = " points" if a.higher_is_better else ""
    broken = [r for r in rows if r.verdict == "broken"]
    unproven = [r for r in rows if r.verdict == "not shown to help"]
    weakened = [r for r in rows if r.verdict == "weakened"]
    parts = []
    if broken:
        what = "; ".join(
            f"behind {r.defense} {r.adaptive_attack} does {fmt(r.adaptive.damage_val)}{unit} of validation damage against "
            f"{fmt(r.undefended.damage_val) if r.undefended else 'n/a'} with no defense"
            + (
                " (the non-adaptive attacks already matched no defense)"
                if r.plain and r.undefended and r.plain.damage_val >= r.undefended.damage_val
                else ""
            )
            for r in broken
            if r.adaptive
        )
        parts.append(
            f"Against an attacker who knows it, the defense{'s' if len(broken) > 1 else ''} {', '.join(r.defense for r in broken)} "
            f"{'are' if len(broken) > 1 else 'is'} broken at ε = {target:g}: {what}."
        )
    if unproven:
        parts.append(
            f"Behind {', '.join(r.defense for r in unproven)} the adaptive attackers' damage cannot be told from no defense's "
            "(95 % intervals overlap): no protection is shown against an attacker who knows the defense."
        )
    if weakened:
        parts.append(
            f"{', '.join(r.defense for r in weakened)} lose{'s' if len(weakened) == 1 else ''} ground against the adaptive "
            "attacker (damage above the non-adaptive attacks' beyond the 95 % intervals) but still beat no defense."
        )
    held = [r.defense for r in rows if r.verdict == "holds"]
    if held:
        parts.append(f"{', '.join(held)} held against the adaptive attackers run (it proves no more than that).")
    if a.recommendation.defense in {r.defense for r in broken + unproven}:
        parts.append(
            f"The recommended defense {a.recommendation.defense} is among them: its worst case (over the adaptive attackers "
            "too) is still the best within the intervals, but do not count on the filter itself."
        )
    return " ".join(parts)


def width_sentence(a: Analysis) -> str:
    """The width under attack, for the recommendation paragraph."""
    points = width_series(a)
    if points is None:
        return ""
    found = width_findings(a, points)
    if not found:
        return ""
    target, best = a.recommendation.target_budget, found["best"]
    unit = " %" if a.higher_is_better else ""
    text = (
        f"Width under attack: at ε = {target:g} the worst-case test {'accuracy' if a.higher_is_better else 'MSE'} is best at width "
        f"{best.width} ({fmt(best.worst_test)}{unit}, clean {fmt(best.clean)}{unit})"
    )
    if found["grows"]:
        calm, grows = found["calm"], found["grows"]
        text += (
            f"; wider networks are damaged more again (width {', '.join(str(p.width) for p in grows)}: damage "
            f"{', '.join(fmt(p.worst_damage) for p in grows)} vs {fmt(calm.worst_damage)} at width {calm.width})"
        )
        if found["interior"]:
            text += " — the inverted U of Wang, Mianjy & Arora (2021)"
    rec = a.recommended()
    if rec is not None and "width" in rec.hparams:
        text += f". The recommended width {rec.hparams['width']} was chosen, like every hyperparameter, on the validation split"
    return text + "."


def reason(a: Analysis) -> str:
    """The recommendation's reason as every output prints it: why it was chosen (``a.recommendation.reason``), then
    whether its verdict is confirmed, what its defense costs, which defenses an adaptive attacker breaks, how
    regularization moved τ, λ under attack and width under attack — each where the run has something to say."""
    series = policy_series(a)
    parts = [
        a.recommendation.reason,
        confirmation_sentence(a),
        defense_cost_sentence(a),
        adaptive_sentence(a),
        tau_sentence(a),
        minimax_sentence(a, series) if series else "",
        width_sentence(a),
    ]
    return " ".join(part for part in parts if part)


def relaxed_sentence(a: Analysis) -> str:
    """Under ``dataset.domain: relaxed``: the relaxed poisons' worst case beside that of the same poisons mapped into the
    data's domain, per budget ("" when the run recorded none)."""
    rows = feasible_rows(a)
    if not rows:
        return ""
    unit = " points" if a.higher_is_better else ""
    parts = [
        f"ε = {100 * r.budget:g} %: {fmt(r.relaxed)}{unit} relaxed ({r.relaxed_attack}), {fmt(r.feasible)}{unit} mapped into the domain "
        f"({r.feasible_attack})"
        for r in rows
    ]
    return (
        "The same poisons mapped into the data's domain (rows it could hold), retrained, no defense, the recommended setting — "
        + "; ".join(parts)
        + ". The verdict above is the relaxed poisons'."
    )
