"""The compliance record of a run: one document, built once from the store, that the
markdown, JSON and PDF exports render (:mod:`audit.report.export`).

A document is a list of sections; a section a list of blocks — ``p`` (paragraph), ``list``,
``kv`` (label/value pairs), ``table`` (columns and rows of text) and ``figure`` (an SVG this
package drew, with its caption). Blocks hold plain text; every renderer escapes it for its own
language, so a name from the config never becomes markup.

Sections: identification; scope and threat model (NIST AI 100-2 E2025 terms, MITRE ATLAS);
methods; results; the declared accuracy and robustness statement (EU AI Act Art. 15(3));
mitigations and residual risk; limitations; the regulation mapping; the dated test log; integrity
and signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from audit.attacks import ATTACKS
from audit.data import attacker_sentence
from audit.report.aggregation import Analysis
from audit.report.integrity import Signing
from audit.report.recommend import Z95, candidate_label
from audit.report.render import build_context
from audit.report.wording import fmt

DOCUMENT_SCHEMA_VERSION = 1

#: the instruments and provisions the record answers, and the sections that answer them
REGULATION_MAP = [
    ("EU AI Act (Reg. 2024/1689)", "Art. 15(3)", "declare accuracy levels and the relevant metrics", "5, 4"),
    ("EU AI Act (Reg. 2024/1689)", "Art. 15(5)", "resilience against attempts to manipulate the training data set (data poisoning)", "2, 4, 6"),
    (
        "EU AI Act (Reg. 2024/1689)",
        "Annex IV 2(g)",
        "validation and testing procedures, metrics, test logs and test reports dated and signed",
        "3, 9, 10",
    ),
    ("EU AI Act (Reg. 2024/1689)", "Annex IV 2(h)", "cybersecurity measures put in place", "6"),
    ("NIST AI RMF 1.0", "MEASURE 2.7", "AI system security and resilience are evaluated and documented", "4, 6, 7"),
    ("NIST AI 100-2 E2025", "taxonomy", "attack class, attacker goal, knowledge and capability", "2"),
    ("ISO/IEC 42001:2023", "clause 9", "performance evaluation: monitoring, measurement, analysis and evaluation", "4, 7, 9"),
    ("MITRE ATLAS", "AML.T0020 / AML.M0007", "technique Poison Training Data; mitigation Sanitize Training Data", "2, 6"),
]


def _p(text: str) -> dict[str, Any]:
    return {"kind": "p", "text": text}


def _list(items: list[str]) -> dict[str, Any]:
    return {"kind": "list", "items": items}


def _kv(items: list[tuple[str, str]]) -> dict[str, Any]:
    return {"kind": "kv", "items": [[k, v] for k, v in items]}


def _table(columns: list[str], rows: list[list[str]], caption: str = "", dense: bool = False) -> dict[str, Any]:
    """A table of text; ``dense``: printed small (a long log)."""
    return {"kind": "table", "columns": columns, "rows": [[str(v) for v in r] for r in rows], "caption": caption, "dense": dense}


def _figure(svg: str, caption: str, width: int = 100) -> dict[str, Any] | None:
    """A figure block: the package's own SVG, its caption, and its width in % of the text column (print)."""
    return {"kind": "figure", "svg": svg, "caption": caption, "width": width} if svg else None


def _section(sid: str, title: str, blocks: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"id": sid, "title": title, "blocks": [b for b in blocks if b is not None]}


def iso(ts: float | None) -> str:
    """A UNIX time as UTC ISO 8601 (``n/a`` when unknown)."""
    return "n/a" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of the stored (resolved) config as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _knowledge(attack_key: str, a: Analysis) -> tuple[str, str]:
    """(NIST knowledge, capability) of a cell's attack key from its class's :class:`audit.attacks.base.ThreatModel`
    (``x~adaptive``: the attacker also knows the defense)."""
    base = attack_key.split("~", 1)[0]
    spec = next((s for s in a.config.attacks if s.key == base), None)
    cls = ATTACKS.get(spec.name if spec is not None else base)
    if cls is None:  # a stored run's attack that is no longer registered: say only what the key says
        return "unknown (the attack is not registered in this version)", "unknown"
    knowledge = cls.threat.knowledge
    if attack_key.endswith("~adaptive"):
        knowledge += "; adaptive: also the defense and its parameters (filter in the loop)"
    return knowledge, cls.threat.capability


def _pct(eps: float) -> str:
    return f"{100 * eps:g} %"


def build_document(a: Analysis, signing: Signing | None, key_fingerprint: str | None, exported_at: str) -> dict[str, Any]:
    """The whole record as plain data (sections of blocks); ``signing``: who signs the manifest, or None (unsigned)."""
    ctx = build_context(a)
    cfg, meta = a.config, a.meta
    system = cfg.system
    rec = a.recommended()
    target = a.recommendation.target_budget
    done = a.completeness()
    drop = "accuracy drop (points)" if a.higher_is_better else "MSE increase"
    sections = [
        _identification(a, ctx, signing, key_fingerprint),
        _scope(a),
        _methods(a, ctx),
        _results(a, ctx),
        _statement(a, ctx),
        _mitigations(a, ctx),
        _limitations(a, ctx),
        _section(
            "mapping",
            "8. Regulation mapping",
            [
                _p("Which section of this record answers which provision. The record documents a test; it is not by itself a conformity assessment."),
                _table(["Instrument", "Provision", "What it asks", "Sections"], [list(r) for r in REGULATION_MAP]),
            ],
        ),
        _test_log(a, exported_at, signing),
        _integrity(signing, key_fingerprint),
    ]
    verdict_damage = rec.worst_damage_test.get(target) if rec else None
    verdict_ci = rec.worst_damage_test_ci.get(target) if rec else None
    strength = a.strength()
    glance = [
        ("Setting recommended", f"{a.recommendation.label} (defense: {a.recommendation.defense})"),
        (f"Clean test {a.metric}", fmt(rec.clean_test) if rec else "n/a"),
        (f"Worst-case {drop} at ε = {_pct(target)}", f"{fmt(verdict_damage)} (95 % interval {_ci(verdict_ci)})"),
        ("Strength of the verdict", strength.text if strength.confirmed else f"{strength.text.upper()} — {strength.why}"),
        ("Audited model", _deployed_words(a)),
        ("Attacks / defenses / budgets", f"{len(a.attack_keys)} / {len(cfg.defenses)} / {', '.join(_pct(b) for b in cfg.budgets)}"),
        ("Run", "complete" if done.complete else f"INCOMPLETE — {done.describe()}"),
        ("Signature", f"signed by {signing.signer} at {signing.signed_at}" if signing else "UNSIGNED"),
    ]
    return {
        "schema_version": DOCUMENT_SCHEMA_VERSION,
        "kind": "poison-audit compliance record",
        "title": f"Data-poisoning robustness record — {system.name or cfg.name}",
        "run": cfg.name,
        "exported_at": exported_at,
        "signed": signing is not None,
        "glance": [[k, v] for k, v in glance],
        "facts": {
            "system": system.model_dump(),
            "fingerprint": meta.get("fingerprint"),
            "config_sha256": config_digest(meta["config"]),
            "data_sha256": meta.get("data_sha256"),
            "model_sha256": meta.get("model_sha256"),
            "versions": meta.get("versions", {}),
            "device": meta.get("device"),
            "device_name": meta.get("device_name"),
            "complete": done.complete,
            "cells": vars(done),
            "metric": a.metric,
            "damage": drop,
            "target_budget": target,
            "recommended": {
                "label": a.recommendation.label,
                "hyperparameters": rec.hparams if rec else None,
                "defense": a.recommendation.defense,
                "clean_test": rec.clean_test if rec else None,
                "worst_case_damage": {str(e): v for e, v in rec.worst_damage_test.items()} if rec else {},
                "worst_case_damage_ci95": {str(e): list(v) for e, v in rec.worst_damage_test_ci.items()} if rec else {},
            },
            "verdict_damage": verdict_damage,
            "verdict_confirmed": strength.confirmed,
            "verdict_strength": strength.text,
            "verdict_withheld": bool((check := a.deployed()) is not None and check.withheld),
            "deployed_model": check.sentence(a.metric) if check is not None else None,
            "synthetic_data": bool(meta["dataset"].get("synthetic")),
            "signer": signing.signer if signing else None,
            "signed_at": signing.signed_at if signing else None,
            "key_fingerprint": key_fingerprint,
        },
        "sections": sections,
    }


def _identification(a: Analysis, ctx: dict[str, Any], signing: Signing | None, key_fingerprint: str | None) -> dict[str, Any]:
    system, meta = a.config.system, a.meta
    ds = meta["dataset"]
    undeclared = "not declared (config: system)"
    items = [
        ("System", system.name or undeclared),
        ("System version", system.version or undeclared),
        ("Model version", system.model_version or undeclared),
        ("Provider", system.provider or undeclared),
        ("Responsible for the tests", system.responsible or undeclared),
        ("Intended purpose", system.intended_purpose or undeclared),
        ("Contact", system.contact or undeclared),
        ("Audit run", f"{a.config.name} (fingerprint {meta.get('fingerprint')})"),
        ("Model audited", f"{meta.get('victim', '')} ({meta.get('victim_kind', '')})"),
        ("Training procedure", ctx["training"]),
        (
            "Dataset",
            f"{ds['name']}: {ds['n_train']} training, {ds['n_val']} validation, {ds['n_test']} test points, "
            f"{ds['n_features']} features" + (", SYNTHETIC" if ds.get("synthetic") else ""),
        ),
        ("The attacker reads", f"the training data and {attacker_sentence(ds)}"),
        ("Device", f"{meta.get('device')} ({meta.get('device_name', '')})"),
        ("Tool and packages", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())),
        ("Signature", f"signed by {signing.signer} at {signing.signed_at} (Ed25519, key {key_fingerprint})" if signing else "unsigned"),
    ]
    digests = [["configuration (stored, resolved)", config_digest(meta["config"])]]
    data = meta.get("data_sha256")
    if data:
        digests += [[f"data: {k} split as loaded", v] for k, v in data.items()]
    else:
        digests.append(["data", "not recorded (the run was started by a version before the compliance pack)"])
    model = meta.get("model_sha256")
    names = {
        "definition": "model definition (architecture / estimator parameters)",
        "initial_weights": "model initial weights (seed 0)",
        "factory_source": "model factory source file",
        "handed_over_weights": "model weights as handed over",
    }
    if model:
        digests += [[names.get(k, k), v] for k, v in model.items()]
    elif model is None:
        digests.append(["model", "not recorded (the run was started by a version before the compliance pack)"])
    return _section(
        "identification",
        "1. Identification",
        [
            _kv(items),
            _table(["What", "SHA-256"], digests, "Digests identify exactly what was tested; the manifest (section 10) covers the run's files."),
        ],
    )


def _scope(a: Analysis) -> dict[str, Any]:
    cfg = a.config
    rows = []
    for key in a.attack_keys:
        knowledge, capability = _knowledge(key, a)
        rows.append([key, knowledge, capability])
    budgets = ", ".join(_pct(b) for b in cfg.budgets)
    return _section(
        "scope",
        "2. Scope and threat model",
        [
            _p(
                "Attack class (NIST AI 100-2 E2025): availability poisoning — indiscriminate degradation of the model's performance on "
                "all inputs — by data injection during training (MITRE ATLAS AML.T0020, Poison Training Data). The attacker adds "
                f"n_p = round(ε·n_train) points to the clean training set at each budget ε ∈ {{{budgets}}} of the training set, "
                "then the model is trained from scratch on the union with the audited procedure. The test set is never seen by an attacker; "
                "the defender selects hyperparameters and defenses on a trusted validation set."
            ),
            _p(
                "Out of scope: targeted and backdoor poisoning, attacks at inference time (evasion), privacy attacks, and modification or "
                "deletion of existing training points."
            ),
            _table(["Attack", "Attacker knowledge", "Attacker capability"], rows, "Per attack, in NIST AI 100-2 terms."),
        ],
    )


def _methods(a: Analysis, ctx: dict[str, Any]) -> dict[str, Any]:
    cfg = a.config
    attacks = [
        [s.key, s.name, json.dumps(s.params, sort_keys=True), next((x["seeds"] for x in ctx["attacks"] if x["key"] == s.key), "")]
        for s in cfg.attacks
    ]
    defenses = [[d.key, d.name, json.dumps(d.params, sort_keys=True), d.defense.description] for d in cfg.defenses]
    grid = [[axis, ", ".join(str(v) for v in values)] for axis, values in cfg.candidates.items()]
    seconds = sum(c.seconds or 0.0 for c in a.cells)
    reduced = ctx["profile"]["reduced"]
    profile = cfg.profile + (f" (reduced: {'; '.join(reduced)})" if reduced else " (the papers' full settings)" if cfg.profile == "paper" else "")
    adaptive = [k for k in a.attack_keys if k.endswith("~adaptive")]
    return _section(
        "methods",
        "3. Methods",
        [
            _p(
                "Protocol per cell (hyperparameters h, attack a, budget ε, defense d, seed s): train with h on the clean training set; craft "
                "the poisons against that model; apply the defense to the union; retrain from scratch with the same procedure; score the "
                "clean and the poisoned model on the held-out test set. Damage is the "
                + ("test-accuracy drop in points." if a.higher_is_better else "increase of the test MSE.")
            ),
            _kv(
                [
                    ("Profile", profile),
                    ("Seeds", ", ".join(map(str, cfg.seeds))),
                    ("Budgets", ", ".join(_pct(b) for b in cfg.budgets)),
                    ("Adaptive attackers", ", ".join(adaptive) + f" ({cfg.adaptive.rounds} filter-in-the-loop rounds)" if adaptive else "none"),
                    ("Cells", f"{len(a.cells)} recorded of {a.meta.get('total_cells', len(a.cells))} planned"),
                    (
                        "Compute time",
                        f"{seconds:.0f} s in finished and failed cells on {a.meta.get('device')} "
                        f"({a.meta.get('threads', 'n/a')} torch thread(s) per cell)",
                    ),
                    ("Run fingerprint", str(a.meta.get("fingerprint"))),
                ]
            ),
            _table(["Hyperparameter", "Candidate values"], grid, "The hyperparameter grid the defender chooses from."),
            _table(["Attack", "Algorithm", "Parameters", "Seeds run"], attacks),
            _table(["Defense", "Name", "Parameters", "What it does"], defenses),
        ],
    )


def _ci(ci: tuple[float, float] | None) -> str:
    if ci is None or not all(math.isfinite(v) for v in ci):
        return "n/a"
    return f"{fmt(ci[0])} to {fmt(ci[1])}"


def _results(a: Analysis, ctx: dict[str, Any]) -> dict[str, Any]:
    budgets = a.config.budgets
    rows = []
    for p in a.pairs:
        row = [p.label, fmt(p.clean_test)]
        for eps in budgets:
            dmg = p.worst_damage_test.get(eps)
            row.append(
                f"{fmt(dmg)} [{_ci(p.worst_damage_test_ci.get(eps))}] {p.worst_attack_test.get(eps, '')}".strip() if dmg is not None else "n/a"
            )
        rows.append(row)
    blocks: list[dict[str, Any] | None] = [
        _p(
            f"Worst case over the attacks of the test {ctx['unit']} per setting (hyperparameters × defense) and budget, mean over "
            f"seeds, with its 95 % interval and the attack that achieved it. What the interval covers: {a.interval_scope()['text']}. "
            "The worst case is a lower bound on what an attacker could do: stronger attacks may exist."
        ),
        _table(["Setting (hyperparameters + defense)", f"Clean test {a.metric}"] + [f"ε = {_pct(e)}" for e in budgets], rows),
        _figure(ctx["curves_svg"], f"Test {a.metric} against the poison budget, per attack (no defense); the recommended setting drawn thicker."),
        _figure(ctx["heatmap_svg"], f"Worst-case {ctx['unit']} per candidate and budget (no defense).", width=min(90, 30 + 12 * len(budgets))),
    ]
    section = ctx.get("defenses_section")
    if section:
        blocks.append(
            _p(
                "What each defense buys and costs, for the recommended hyperparameters: poisoned test metric and damage, the "
                "share of poisons removed, and the clean points it removed (its cost on clean data is in the table above)."
            )
        )
        blocks.append(
            _table(
                ["Attack", "ε", "Defense", f"Poisoned {a.metric}", "Damage", "Poisons removed", "Clean removed", "Certified"],
                [
                    [
                        r["attack"],
                        r["budget"],
                        r["defense"],
                        r["poisoned"],
                        r["damage"],
                        r["poisons_removed"],
                        r["clean_removed"],
                        r["certified"] or "—",
                    ]
                    for r in section["rows"]
                ],
            )
        )
        blocks.append(_figure(section.get("svg", ""), "Poisoned test metric per defense, recommended hyperparameters."))
    certified = ctx.get("certified")
    if certified:
        blocks.append(
            _p(
                "Certified accuracy of the partition ensembles (DPA, Levine & Feizi 2021; its run-off, Rezaei et al. 2023; Finite "
                "Aggregation, Wang et al. 2022): on the clean training set, the share of test points predicted correctly whose "
                "prediction provably no such number of inserted or removed training points can change — a floor under any "
                "attack of that size — beside the defended accuracy under the worst attack found."
            )
        )
        blocks.append(
            _table(
                ["Setting", "Budget", "Accuracy under the worst attack found (%)", "Certified accuracy (%)", "Found − certified"],
                [[r["setting"], r["budget"], r["found"], r["certified"], r["gap"]] for r in certified["rows"]],
            )
        )
        blocks.append(_figure(certified["svg"], "Certified accuracy against the radius (poisoned points); × the worst attack found."))
    adaptive = ctx.get("adaptive")
    if adaptive and adaptive["rows"]:
        blocks.append(
            _p(
                "Filtering defenses against an adaptive attacker who knows the defense (worst non-adaptive vs adaptive damage, "
                "recommended hyperparameters)."
            )
        )
        blocks.append(
            _table(
                ["Defense", "ε", "Non-adaptive damage", "Adaptive damage", "Poisons surviving (adaptive)", "Verdict"],
                [[r["defense"], r["budget"], r["plain"], r["adaptive"], r["adaptive_survived"], r["verdict"]] for r in adaptive["rows"]],
            )
        )
        if adaptive.get("bracket_rows"):
            blocks.append(
                _table(
                    ["Defense", "ε", "Worst objective found", "Certified upper bound"],
                    [[r["defense"], r["budget"], r["found"], r["bound"]] for r in adaptive["bracket_rows"]],
                    "Certificates (Steinhardt et al. 2017): no attack in the region pushes the objective above the bound.",
                )
            )
    pois = ctx.get("poisonability")
    if pois and pois.get("thresholds"):
        blocks.append(
            _table(
                ["Candidate", "Target", "τ(2)", "τ(c)", "τ_ρ(2)", "τ_ρ(c)"],
                [[r["label"], r["eps_w"], r["tau_2"], r["tau_c"], r["tau_rho_2"], r["tau_rho_c"]] for r in pois["thresholds"]],
                "Poisonability thresholds τ (Lu et al.): the budget any attack needs to reach the target model.",
            )
        )
    return _section("results", "4. Results", blocks)


def _statement(a: Analysis, ctx: dict[str, Any]) -> dict[str, Any]:
    rec = a.recommended()
    cfg, ds = a.config, a.meta["dataset"]
    target = a.recommendation.target_budget
    who = cfg.system.name or f"the model audited in run {cfg.name}"
    if rec is None:
        text = f"No setting of {who} has finished cells; no accuracy or robustness level can be declared from this run."
    else:
        metric = "accuracy" if a.higher_is_better else "mean squared error"
        clean_ci = (rec.clean_test - Z95 * rec.clean_test_se, rec.clean_test + Z95 * rec.clean_test_se)
        per_budget = "; ".join(
            f"ε = {_pct(e)}: {fmt(rec.worst_damage_test[e])} (95 % interval {_ci(rec.worst_damage_test_ci.get(e))})"
            for e in cfg.budgets
            if e in rec.worst_damage_test
        )
        unit = "points of accuracy" if a.higher_is_better else "MSE"
        text = (
            f"Declared for {who}, deployed as {a.recommendation.label} with defense {a.recommendation.defense}: test {metric} "
            f"{fmt(rec.clean_test)}{' %' if a.higher_is_better else ''} (95 % interval {_ci(clean_ci)}) on the {ds['n_test']} held-out "
            f"test points of {ds['name']}{' (synthetic data)' if ds.get('synthetic') else ''}. Under availability poisoning by injection "
            f"of a share ε of the training set by the attacks of section 3, the largest measured degradation, in {unit}, is {per_budget}; "
            f"at the budget the setting was chosen for (ε = {_pct(target)}) it is {fmt(rec.worst_damage_test.get(target))}. "
            "These figures are measured attacks, hence lower bounds on the degradation an attacker can cause"
            + (", except the certified bounds of section 4." if (ctx.get("adaptive") or {}).get("bracket_rows") else ".")
            + ("" if a.completeness().complete else " The run is INCOMPLETE (section 7): the statement covers its finished cells only.")
            + _strength_words(a)
        )
        check = a.deployed()
        if check is not None and not check.matches:  # the figures are of the audit's retraining, not the declared model
            text = f"{check.sentence(a.metric).upper() if check.withheld else check.sentence(a.metric)}. " + text
    return _section("statement", "5. Declared accuracy and robustness (EU AI Act Art. 15(3))", [_p(text)])


def _deployed_words(a: Analysis) -> str:
    """The glance row on whether the audited model is the one the user handed over."""
    check = a.deployed()
    if check is None:
        return "no trained estimator was handed over; the audit trains the configured model"
    return check.sentence(a.metric).upper() if check.withheld else check.sentence(a.metric)


def _strength_words(a: Analysis) -> str:
    """The statement's sentence on the verdict's strength: confirmed at full strength, or a reduced-strength lower bound."""
    st = a.strength()
    if st.confirmed:
        return f" The figure at ε = {_pct(a.recommendation.target_budget)} is {st.text}."
    return (
        f" The figure at ε = {_pct(a.recommendation.target_budget)} is a {st.text.upper()} ({st.why}): the attacks ran at "
        "reduced strength and the true degradation may be considerably larger."
    )


def _mitigations(a: Analysis, ctx: dict[str, Any]) -> dict[str, Any]:
    rec = a.recommended()
    target = a.recommendation.target_budget
    severity = {
        "ok": "low (≤ 2 points)",
        "warn": "moderate (2–5 points)",
        "bad": "high (> 5 points)",
        "info": "see the MSE increase",
        "unknown": "unknown (no finished cells)",
    }[ctx["severity"]]
    items = [
        f"Hyperparameters chosen on the trusted validation set: {a.recommendation.label}.",
        f"Defense deployed: {a.recommendation.defense}"
        + (" (a training-data sanitiser, ATLAS AML.M0007)." if a.recommendation.defense != "none" else "."),
    ]
    items.append(a.recommendation.reason)
    residual = (
        f"Residual risk at ε = {_pct(target)}: worst measured {ctx['unit']} {fmt(rec.worst_damage_test.get(target)) if rec else 'n/a'} "
        f"— {severity}. Above the largest budget tested ({ctx['max_budget']}) nothing was measured."
    )
    return _section("mitigations", "6. Mitigations and residual risk", [_list(items), _p(residual)])


def _limitations(a: Analysis, ctx: dict[str, Any]) -> dict[str, Any]:
    cfg = a.config
    done = a.completeness()
    items = []
    if not done.complete:
        items.append(f"INCOMPLETE run: {done.describe()}; the worst case may be among the missing cells.")
    if ctx["failed"]:
        items.append(f"{len(ctx['failed'])} cells failed (listed in report.html), e.g. {ctx['failed'][0]['error']}.")
    items += [f"Attack not run: {why}." for why in ctx["not_run_why"]]
    items += [f"Possibly a lower bound: {caveat}." for caveat in a.meta.get("victim_caveats") or []]
    filters = [d.key for d in cfg.defenses if d.defense.filters]
    faced = {c.defense for c in a.cells if c.attack.endswith("~adaptive")}
    non_adaptive = [d for d in filters if d not in faced]
    if non_adaptive:
        items.append(f"Non-adaptive evaluation only: {', '.join(non_adaptive)} faced no attacker that knows it; its damage may be understated.")
    robust = [d.key for d in cfg.defenses if d.key != "none" and not d.defense.filters]
    if robust:
        items.append(f"Robust training ({', '.join(robust)}) faced the attacks as crafted against the undefended model (no attacker adapted to it).")
    items.append(f"Budgets covered: {', '.join(_pct(b) for b in cfg.budgets)} only; nothing is claimed between or above them.")
    if a.meta["dataset"].get("synthetic"):
        items.append(f"Synthetic data: {a.meta['dataset']['synthetic']}")
    if a.meta["dataset"].get("attacker_reads") != "attacker_split":
        items.append(f"The attacks read {attacker_sentence(a.meta['dataset'])}.")
    if ctx["profile"]["reduced"]:
        items.append(f"Reduced attack profile {cfg.profile!r} for the screen: " + "; ".join(ctx["profile"]["reduced"]) + ".")
    check = a.deployed()
    if check is not None and not check.matches:
        items.append(f"Audited model: {check.sentence(a.metric)}.")
    strength = a.strength()
    if not strength.confirmed:
        items.append(f"Verdict not confirmed at full strength — {strength.text}: {strength.why}.")
    elif a.confirmation.get("left_out"):
        items.append(f"Confirmation narrowed by confirm.attacks: {', '.join(a.confirmation['left_out'])} did not confirm the verdict.")
    unconfirmed = len(a.pairs) - len(a.confirmation.get("pairs", []))
    if a.config.confirmation_attacks() and unconfirmed > 0:
        items.append(f"{unconfirmed} settings other than the recommended and tied ones were screened only; their worst cases are lower bounds.")
    if ctx["one_seed"]:
        items.append(f"Run at one seed only: {', '.join(ctx['one_seed'])}.")
    if ctx["not_converged"]:
        items.append(f"{ctx['not_converged']} of {ctx['n_retrains']} retrainings did not reach the convergence tolerance.")
    items.append("Empirical attacks give lower bounds on the worst case; only certificates (where stated) bound it from above.")
    return _section("limitations", "7. Limitations", [_list(items)])


def _test_log(a: Analysis, exported_at: str, signing: Signing | None) -> dict[str, Any]:
    rows = [[iso(a.meta.get("created")), "run", "run started (store created)", "", ""]]
    for c in sorted(a.cells, key=lambda c: (c.finished_at or 0.0, c.position)):
        metric = fmt(c.poisoned_test) if c.status == "ok" else (c.error or "")
        where = f"{candidate_label(c.hparams)} · {c.attack} · ε {_pct(c.budget)} · {c.defense} · seed {c.seed}" + (
            f" · split {c.split}" if c.split else ""
        )
        rows.append([iso(c.finished_at), "cell", where, c.status, metric])
    rows.append([exported_at, "export", "this record generated", "", ""])
    if signing is not None:
        rows.append([signing.signed_at, "signature", f"manifest signed by {signing.signer}", "", ""])
    return _section(
        "test_log",
        "9. Test log",
        [
            _p("Every cell of the run with the time its result was recorded (UTC), its status and its poisoned test metric (or error)."),
            _table(["Time (UTC)", "Event", "What", "Status", f"Poisoned {a.metric}"], rows, dense=True),
        ],
    )


def _integrity(signing: Signing | None, key_fingerprint: str | None) -> dict[str, Any]:
    how = (
        "manifest.json lists every file of the run directory (report, summary, store, poisons, gate results and this record) with "
        "its size and SHA-256. `poison-audit verify RUN_DIR --public-key KEY.pub` recomputes every hash and checks the signature; "
        "it exits 1 on any mismatch."
    )
    if signing is None:
        state = "UNSIGNED: no key was given to `poison-audit export --sign-key`. The hashes show whether files changed, not who wrote them."
    else:
        state = (
            f"Signed by {signing.signer} at {signing.signed_at} with Ed25519 key {key_fingerprint}; the signature of manifest.json "
            "is in manifest.sig."
        )
    return _section("integrity", "10. Integrity and signature", [_p(how), _p(state)])
