"""The CI gate: pass when the recommended setting's worst case at a budget is within bounds; JUnit XML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from audit.errors import AuditError
from audit.jsonio import atomic_write
from audit.report.analysis import analyse


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
    if rec is None or damage is None or not math.isfinite(damage):
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
    atomic_write(run_dir / "gate.xml", junit_xml(a.config.name, budget, result))
    return result


def junit_xml(name: str, budget: float, result: GateResult) -> str:
    case = quoteattr(f"worst-case damage at eps={budget:g}")
    body = "" if result.passed else f"<failure message={quoteattr(result.message)}>{escape(result.message)}</failure>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name={quoteattr("poison-audit " + name)} tests="1" '
        f'failures="{0 if result.passed else 1}" errors="0">'
        f'<testcase classname="poison-audit.report.gate" name={case}>{body}'
        f"<system-out>{escape(result.message)}</system-out></testcase></testsuite></testsuites>\n"
    )
