"""The CI gate: pass when the recommended setting's worst case at a budget is within bounds; JUnit XML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from audit.errors import AuditError
from audit.jsonio import atomic_write
from audit.report.analysis import analyse
from audit.report.recommend import z_of

#: exit codes of ``poison-audit gate``
EXIT_PASS, EXIT_FAIL, EXIT_INCOMPLETE = 0, 1, 3


@dataclass
class GateResult:
    """``passed``: the verdict; ``refused``: no verdict was given (an incomplete run without
    ``allow_incomplete``); ``missing``/``failed``: planned cells not finished."""

    passed: bool
    message: str
    damage: float | None
    refused: bool = False
    missing: int = 0
    failed: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.refused else (EXIT_PASS if self.passed else EXIT_FAIL)


def gate(run_dir: str | Path, budget: float, max_drop: float, allow_incomplete: bool = False, confidence: float | None = None) -> GateResult:
    """Pass when the recommended setting's worst-case test damage at ``budget`` is at most ``max_drop``; writes gate.xml.

    A run whose planned cells are not all finished (some failed or never ran) gets no verdict
    — ``refused``, exit code 3 — because its worst case may be among the missing cells. With
    ``allow_incomplete`` the finished cells are judged and the message and the JUnit file say
    how many cells were missing. With ``confidence`` (e.g. 0.95) the gate judges the upper end
    of the worst-case drop's two-sided interval at that level (``max_a damage_a + z·SE_a``,
    :mod:`audit.report.recommend`) instead of the point estimate.
    """
    if confidence is not None and not 0 < confidence < 1:
        raise AuditError(f"--confidence must be in (0, 1) (got {confidence:g})")
    run_dir = Path(run_dir)
    a = analyse(run_dir)
    if budget not in a.config.budgets:
        raise AuditError(f"--budget {budget:g} was not run; budgets of this run: {', '.join(f'{b:g}' for b in a.config.budgets)}")
    done = a.completeness()
    if not done.complete and not allow_incomplete:
        result = GateResult(False, f"the run is incomplete ({done.describe()}); finish it (run the same command again) "
                            "or pass --allow-incomplete to judge the finished cells", None, True, done.missing, done.failed)  # fmt: skip
        atomic_write(run_dir / "gate.xml", junit_xml(a.config.name, budget, result))
        return result
    rec = a.recommended()
    damage = rec.worst_damage_test.get(budget) if rec else None
    judged = "worst-case"
    if rec is not None and damage is not None and confidence is not None:
        z = z_of(confidence)
        per_attack = [st for (_, eps, d), st in rec.stats.items() if eps == budget and d == rec.defense]
        damage = max(st.damage_test + z * st.damage_test_se for st in per_attack)
        judged = f"upper {100 * confidence:g} % bound of the worst-case"
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
            f"({'≤' if passed else '>'} {max_drop:g}{unit} allowed; worst attack {rec.worst_attack.get(budget)})",
            damage,
        )
    if not done.complete:
        result.message += f" — INCOMPLETE run judged on its finished cells only ({done.describe()})"
        result.missing, result.failed = done.missing, done.failed
    atomic_write(run_dir / "gate.xml", junit_xml(a.config.name, budget, result))
    return result


def junit_xml(name: str, budget: float, result: GateResult) -> str:
    case = quoteattr(f"worst-case damage at eps={budget:g}")
    if result.refused:  # no verdict: a JUnit error, not a failure
        body = f'<error type="incomplete" message={quoteattr(result.message)}>{escape(result.message)}</error>'
    else:
        body = "" if result.passed else f"<failure message={quoteattr(result.message)}>{escape(result.message)}</failure>"
    props = (
        f'<properties><property name="cells_missing" value="{result.missing}"/><property name="cells_failed" value="{result.failed}"/></properties>'
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name={quoteattr("poison-audit " + name)} tests="1" '
        f'failures="{0 if result.passed or result.refused else 1}" errors="{1 if result.refused else 0}">{props}'
        f'<testcase classname="poison-audit.report.gate" name={case}>{body}'
        f"<system-out>{escape(result.message)}</system-out></testcase></testsuite></testsuites>\n"
    )
