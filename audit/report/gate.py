"""The CI gate: pass when the recommended setting's worst case at a budget is within bounds.

Outputs for CI systems: JUnit XML (``gate.xml``: a ``gate`` suite with the verdict and
a ``settings`` suite with one case per (setting, budget) and its figures as properties), a
GitHub step summary (markdown, under 1 MB), and a JSON result. In soft-fail mode (an advisory
gate) a failure is reported as skipped and the exit code is 0.

Only the verdict can fail: a (setting, budget) case over the limit that is not the gated one
(another setting, or another budget) is reported *skipped* with the reason — visible, but it
does not turn a CI test report red when the gate itself passes. The gated case fails in both
suites when the gate fails.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.jsonio import atomic_write, finite
from audit.report.aggregation import LOWER_BOUND, Analysis
from audit.report.analysis import analyse
from audit.report.recommend import CandidateSummary, z_of
from audit.report.templating import render_markdown
from audit.report.wording import fmt

#: exit codes of ``poison-audit gate``
EXIT_PASS, EXIT_FAIL, EXIT_INCOMPLETE = 0, 1, 3
#: GitHub's limit for one step's summary is 1 MiB; the summary stays well under it
SUMMARY_LIMIT = 1_000_000
SUMMARY_ROWS = 60  # settings listed in the step summary's table (the worst first); the rest are counted
GATE_JSON_SCHEMA_VERSION = 1
#: the artifacts of a run a CI job uploads (named in the step summary when they exist)
ARTIFACT_NAMES = (
    "report.html",
    "summary.json",
    "gate.xml",
    "compliance/record.pdf",
    "compliance/record.md",
    "compliance/record.json",
    "compliance/model_card.md",
    "manifest.json",
    "manifest.sig",
)


@dataclass
class SettingCase:
    """One (setting, budget) of the run, as the JUnit ``settings`` suite and the JSON result show it."""

    setting: str
    defense: str
    hyperparameters: dict[str, Any]
    budget: float
    clean_test: float | None
    damage: float | None
    damage_ci95: list[float] | None
    judged: float | None  # what is compared with the limit: the point estimate, or the upper bound with --confidence
    worst_attack: str | None
    seeds: int
    recommended: bool
    gated: bool  # the one case the verdict is about
    status: str  # "passed", "failed", "over the limit (not gated)", "no finished cells"


@dataclass
class GateResult:
    """``passed``: the verdict; ``refused``: no verdict was given (an incomplete run without
    ``allow_incomplete``); ``missing``/``failed``: planned cells not finished; ``soft``: an advisory
    gate (a failure or refusal exits 0 and is skipped in JUnit)."""

    passed: bool
    message: str
    damage: float | None
    refused: bool = False
    missing: int = 0
    failed: int = 0
    soft: bool = False
    budget: float = math.nan
    max_drop: float = math.nan
    judged: str = "worst-case"
    setting: str | None = None
    cases: list[SettingCase] = field(default_factory=list)
    strength: str = ""  # "confirmed: …" or the lower-bound label (audit.report.analysis.Strength.text)
    confirmed: bool = False
    deployed: str = ""  # the audited model against the user's (audit.report.analysis.DeployedCheck.sentence); "" when none was handed over

    @property
    def exit_code(self) -> int:
        if self.soft:
            return EXIT_PASS
        return EXIT_INCOMPLETE if self.refused else (EXIT_PASS if self.passed else EXIT_FAIL)

    @property
    def verdict(self) -> str:
        return "no verdict" if self.refused else ("pass" if self.passed else "fail")


def gate(
    run_dir: str | Path,
    budget: float,
    max_drop: float,
    allow_incomplete: bool = False,
    confidence: float | None = None,
    soft_fail: bool = False,
    junit: str | Path | None = None,
    allow_lower_bound: bool = False,
    allow_mismatch: bool = False,
) -> GateResult:
    """Pass when the recommended setting's worst-case test damage at ``budget`` is at most ``max_drop``;
    writes the JUnit file ``junit`` (default ``RUN_DIR/gate.xml``).

    A run whose planned cells are not all finished (some failed or never ran) gets no verdict
    — ``refused``, exit code 3 — because its worst case may be among the missing cells. With
    ``allow_incomplete`` the finished cells are judged and the message and the JUnit file say
    how many cells were missing. With ``confidence`` (e.g. 0.95) the gate judges the upper end
    of the worst-case drop's two-sided interval at that level (one split: ``max_a damage_a + z·SE_a``; k ≥ 2 splits: the
    worst-of-attacks statistic's t-interval, :func:`audit.report.recommend.across_splits`) instead of the point estimate.
    ``soft_fail``: an advisory gate.

    A verdict that was not confirmed at full strength (:meth:`Analysis.strength`: ``--no-confirm``, a
    budget the run did not confirm, an unfinished confirmation) is a lower bound on the damage and
    gets no verdict (exit 3) unless ``allow_lower_bound``; then it is judged and every output says
    "lower bound".

    A run whose clean retraining does not reproduce the estimator the user handed over
    (:meth:`Analysis.deployed`) audited another model: no verdict (exit 3) unless ``allow_mismatch``
    (or the run's own ``recommendation.allow_mismatch``); then every output says "MISMATCH ACCEPTED".
    """
    if confidence is not None and not 0 < confidence < 1:
        raise AuditError(f"--confidence must be in (0, 1) (got {confidence:g})")
    run_dir = Path(run_dir)
    a = analyse(run_dir)
    if budget not in a.config.budgets:
        raise AuditError(f"--budget {budget:g} was not run; budgets of this run: {', '.join(f'{b:g}' for b in a.config.budgets)}")
    junit_path = Path(junit) if junit is not None else run_dir / "gate.xml"
    done = a.completeness()
    judged = "worst-case" if confidence is None else f"upper {100 * confidence:g} % bound of the worst-case"
    cases = setting_cases(a, budget, max_drop, confidence)

    def finish(result: GateResult) -> GateResult:
        _label(result, a, budget, allow_mismatch)
        atomic_write(junit_path, junit_xml(a.config.name, budget, result))
        return result

    def refuse(message: str) -> GateResult:
        """No verdict (exit 3): the reason, and everything the JUnit file and the step summary report beside it."""
        refused = GateResult(False, message, None, refused=True, missing=done.missing, failed=done.failed, soft=soft_fail)
        refused.budget, refused.max_drop, refused.judged, refused.setting, refused.cases = budget, max_drop, judged, a.recommendation.label, cases
        return finish(refused)

    if done.corrupt:  # no flag judges a store that does not match its plan
        return refuse(f"no verdict: the result store does not match the run's plan ({done.describe()}); rerun with --restart")
    if not done.complete and not allow_incomplete:
        return refuse(
            f"the run is incomplete ({done.describe()}); finish it (run the same command again) "
            "or pass --allow-incomplete to judge the finished cells"
        )
    check = a.deployed(allow_mismatch)
    if check is not None and check.withheld:
        return refuse(f"{check.sentence(a.metric)}; or pass --allow-mismatch to judge the audit's model")
    strength = a.strength(budget)
    if not strength.confirmed and not allow_lower_bound:
        return refuse(
            f"no verdict: the worst case at ε = {budget:g} is a {LOWER_BOUND} ({strength.why}); confirm it "
            "(run without --no-confirm, with this budget in confirm.budgets) or pass --allow-lower-bound to judge "
            "it as a lower bound"
        )
    rec = a.recommended()
    gated = next((c for c in cases if c.gated), None)
    damage = gated.judged if gated is not None else None
    what = "accuracy drop" if a.higher_is_better else "MSE increase"
    unit = " points" if a.higher_is_better else ""
    if rec is None or damage is None or not math.isfinite(damage):
        result = GateResult(False, f"no finished cells for the recommended setting at ε = {budget:g}", None)
    else:
        passed = damage <= max_drop
        shown = f"{damage:.2f}" if a.higher_is_better else f"{damage:.4g}"
        result = GateResult(
            passed,
            f"{a.recommendation.label}: {judged} {what} at ε = {budget:g} is {shown}{unit} "
            f"({'≤' if passed else '>'} {max_drop:g}{unit} allowed; worst attack {rec.worst_attack_test.get(budget)})",
            damage,
        )
        if not strength.confirmed:
            result.message = f"LOWER BOUND ({LOWER_BOUND}; {strength.why}) — {result.message}"
        if check is not None and not check.matches:
            result.message = f"{check.sentence(a.metric)} — {result.message}"
    result.soft, result.budget, result.max_drop, result.judged = soft_fail, budget, max_drop, judged
    result.setting, result.cases = a.recommendation.label, cases
    if a.meta.get("victim_caveats"):  # e.g. a pipeline's scaler the white-box attacks hold fixed (report: the alert)
        result.message += " — possibly a lower bound: " + "; ".join(a.meta["victim_caveats"])
    if not done.complete:
        result.message += f" — INCOMPLETE run judged on its finished cells only ({done.describe()})"
        result.missing, result.failed = done.missing, done.failed
    return finish(result)


def _label(result: GateResult, a: Analysis, budget: float, allow_mismatch: bool) -> None:
    """Record on ``result`` whether the verdict at ``budget`` is confirmed or a lower bound, and whether
    the audited model is the user's."""
    st = a.strength(budget)
    result.confirmed, result.strength = st.confirmed, st.text
    check = a.deployed(allow_mismatch)
    result.deployed = check.sentence(a.metric) if check is not None else ""


def setting_cases(a: Analysis, budget: float, max_drop: float, confidence: float | None) -> list[SettingCase]:
    """Every (setting, budget) of the run with its figures; the recommended setting at ``budget`` is the gated case."""
    rec = a.recommended()
    cases = []
    for p in a.pairs:
        for eps in a.config.budgets:
            damage = p.worst_damage_test.get(eps)
            judged = _upper(p, eps, confidence) if confidence is not None else damage
            gated = rec is not None and p.pair == rec.pair and eps == budget
            if judged is None or not math.isfinite(judged):
                status = "no finished cells"
            elif judged <= max_drop:
                status = "passed"
            else:
                status = "failed" if gated else "over the limit (not gated)"
            ci = p.worst_damage_test_ci.get(eps)
            seeds = max((st.n_seeds for (_, e, _), st in p.stats.items() if e == eps), default=0)
            cases.append(
                SettingCase(
                    p.label,
                    p.defense,
                    p.hparams,
                    eps,
                    p.clean_test,
                    damage,
                    list(ci) if ci else None,
                    judged,
                    p.worst_attack_test.get(eps),
                    seeds,
                    rec is not None and p.pair == rec.pair,
                    gated,
                    status,
                )
            )
    return cases


def _upper(p: CandidateSummary, eps: float, confidence: float) -> float | None:
    """The upper end of the worst case's interval at ``confidence``: over k ≥ 2 splits the worst-of-attacks statistic's
    own (t, k − 1 degrees of freedom); on one split ``max_a damage_a + z·SE_a`` over the attacks of a setting at ``eps``
    and the budgets below it (the worst case is monotone in ε, :func:`audit.report.recommend.aggregate`); None without
    finished cells at ``eps``."""
    if not any(e == eps and d == p.defense for (_, e, d) in p.stats):
        return None
    est = p.worst_damage_test_est.get(eps)
    if est is not None and not math.isinf(est.df):
        return est.upper(confidence)
    z = z_of(confidence)
    values = [st.damage_test + z * st.damage_test_se for (_, e, d), st in p.stats.items() if e <= eps and d == p.defense]
    return max(values) if values else None


def junit_xml(name: str, budget: float, result: GateResult) -> str:
    """JUnit XML as CI systems read it (testsuites/testsuite/testcase with failure, error, skipped, properties),
    built with :mod:`xml.etree.ElementTree` (every text and attribute escaped by it)."""
    soft = "advisory gate (--soft-fail): "
    root = ET.Element("testsuites")
    gate = ET.SubElement(root, "testsuite", name="poison-audit " + name, tests="1", failures="0", errors="0", skipped="0")
    _properties(
        gate,
        {
            "cells_missing": result.missing,
            "cells_failed": result.failed,
            "verdict": result.verdict,
            "budget": budget,
            "max_drop": result.max_drop,
            "judged": result.judged,
            "damage": result.damage,
            "setting": result.setting,
            "soft_fail": result.soft,
            "confirmed": result.confirmed,
            "strength": result.strength,
            "deployed_model": result.deployed,
        },
    )
    case = ET.SubElement(gate, "testcase", classname="poison-audit.report.gate", name=f"worst-case damage at eps={budget:g}")
    if result.refused or not result.passed:  # no verdict: a JUnit error, not a failure; --soft-fail: skipped
        if result.soft:
            ET.SubElement(case, "skipped", message=soft + result.message)
            gate.set("skipped", "1")
        elif result.refused:
            ET.SubElement(case, "error", type="incomplete", message=result.message).text = result.message
            gate.set("errors", "1")
        else:
            ET.SubElement(case, "failure", message=result.message).text = result.message
            gate.set("failures", "1")
    ET.SubElement(case, "system-out").text = result.message
    settings = ET.SubElement(root, "testsuite", name="poison-audit " + name + " settings", tests=str(len(result.cases)))
    failed_settings = skipped_settings = 0
    for c in result.cases:
        label = c.setting  # a defended setting's label names its defense ("ρ=0.01 + loss_filter")
        row = ET.SubElement(settings, "testcase", classname="poison-audit.settings", name=f"{label} at eps={c.budget:g}")
        _properties(
            row,
            {
                "setting": c.setting,
                "defense": c.defense,
                "hyperparameters": json.dumps(c.hyperparameters, sort_keys=True),
                "budget": c.budget,
                "clean_test": c.clean_test,
                "worst_case_damage": c.damage,
                "worst_case_damage_ci95_low": c.damage_ci95[0] if c.damage_ci95 else None,
                "worst_case_damage_ci95_high": c.damage_ci95[1] if c.damage_ci95 else None,
                "judged": c.judged,
                "worst_attack": c.worst_attack,
                "seeds": c.seeds,
                "recommended": c.recommended,
                "gated": c.gated,
                "status": c.status,
            },
        )
        reason = f"{c.status}: {fmt(c.judged)} vs {result.max_drop:g} allowed" if c.judged is not None else c.status
        if c.status == "failed" and not result.soft:  # the gated case: the verdict, seen per setting
            ET.SubElement(row, "failure", message=reason).text = result.message
            failed_settings += 1
        elif c.status != "passed":
            ET.SubElement(row, "skipped", message=(soft if c.gated else "") + reason)
            skipped_settings += 1
    settings.set("failures", str(failed_settings))
    settings.set("errors", "0")
    settings.set("skipped", str(skipped_settings))
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _properties(parent: ET.Element, values: dict[str, Any]) -> None:
    props = ET.SubElement(parent, "properties")
    for k, v in values.items():
        ET.SubElement(props, "property", name=k, value=_prop(v))


def _prop(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def step_summary(result: GateResult, run_dir: Path, name: str) -> str:
    """The GitHub step summary (``templates/gate_summary.md.j2``): the verdict, the worst-case table (worst settings
    first, at most :data:`SUMMARY_ROWS`), and the names of the artifacts to open; always under :data:`SUMMARY_LIMIT` bytes."""
    budgets = sorted({c.budget for c in result.cases})
    by_setting: dict[tuple[str, str], dict[float, SettingCase]] = {}
    for c in result.cases:
        by_setting.setdefault((c.setting, c.defense), {})[c.budget] = c
    order = sorted(
        by_setting.items(),
        key=lambda kv: (
            not any(c.recommended for c in kv[1].values()),
            -max((c.damage if c.damage is not None else -math.inf) for c in kv[1].values()),
        ),
    )
    rows = []
    for (setting, _), cells in order[:SUMMARY_ROWS]:
        first = next(iter(cells.values()))
        row = [f"{setting}{' (recommended)' if first.recommended else ''}", fmt(first.clean_test)]
        for b in budgets:
            case = cells.get(b)
            if case is None or case.damage is None:
                row.append("n/a")
                continue
            ci = f" ({fmt(case.damage_ci95[0])}–{fmt(case.damage_ci95[1])})" if case.damage_ci95 else ""
            flag = " ❌" if case.status == "failed" else (" ⚠️" if case.status.startswith("over") else "")
            row.append(f"{fmt(case.damage)}{ci}{flag}")
        rows.append(row)
    text = render_markdown(
        "gate_summary.md.j2",
        name=name,
        icon={"pass": "✅ PASS", "fail": "❌ FAIL", "no verdict": "⚠️ NO VERDICT"}[result.verdict],
        advisory=" (advisory: --soft-fail, the job does not fail)" if result.soft and result.verdict != "pass" else "",
        message=result.message,
        strength=result.strength,
        deployed=result.deployed,
        header=["Setting", "Clean test"] + [f"ε = {100 * b:g} %" for b in budgets],
        rows=rows,
        more=max(len(order) - SUMMARY_ROWS, 0),
        limit=f"{result.max_drop:g}",
        budget=f"{result.budget:g}",
        judged=result.judged,
        artifacts=[n for n in ARTIFACT_NAMES if (run_dir / n).is_file()],
    )
    if len(text.encode("utf-8")) > SUMMARY_LIMIT:  # a pathological name length; cut at a line, say so
        text = text.encode("utf-8")[: SUMMARY_LIMIT - 200].decode("utf-8", "ignore").rsplit("\n", 1)[0] + "\n\n… (cut at 1 MB)\n"
    return text


def result_json(result: GateResult, name: str) -> dict[str, Any]:
    """The gate's result for machines (``poison-audit gate --json``)."""
    return finite(
        {
            "schema_version": GATE_JSON_SCHEMA_VERSION,
            "run": name,
            "verdict": result.verdict,
            "passed": result.passed,
            "exit_code": result.exit_code,
            "soft_fail": result.soft,
            "message": result.message,
            "budget": result.budget,
            "max_drop": result.max_drop,
            "judged": result.judged,
            "damage": result.damage,
            "setting": result.setting,
            "cells_missing": result.missing,
            "cells_failed": result.failed,
            "confirmed": result.confirmed,
            "strength": result.strength,
            "deployed_model": result.deployed or None,
            "cases": [asdict(c) for c in result.cases],
        }
    )
