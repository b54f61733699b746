"""Same numbers: a tiny audit's summary.json cells against a stored fixture, so a refactor that changes what the audit
computes fails here (times, versions and the fingerprint aside).

Regenerate the fixture only for a change that is meant to move the numbers, and say why in the commit:
``python -m tests.test_same_numbers``.
"""

import json
from pathlib import Path
from typing import Any

import audit
from audit.config import parse_config
from audit.report import write_report
from tests.conftest import tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_summary_cells.json"
#: fields that differ from run to run or machine to machine without the audit computing anything else
VOLATILE = {"seconds", "device"}
#: the metrics, in points of accuracy: the same CPU gives them to the bit; another x86-64 CPU's kernels may round a
#: float32 product differently, which can move a retrained model by one test point (100/114 points here), not more
TOLERANCE = 0.9


def _config() -> dict[str, Any]:
    return tiny_config(
        candidates={"l2": [0.001, 0.01]},
        budgets=[0.05, 0.1],
        defenses=["none", "loss_filter"],
        attacks=[
            {"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}},
            {"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}},
            {"name": "statp"},
            {"name": "gradient_canceling", "params": {"epochs": 30}},
            {"name": "back_gradient", "params": {"iterations": 3, "start_screen": 1}},
        ],
        adaptive={"enabled": "off"},
    )


def _cells(out: Path) -> list[dict[str, Any]]:
    result = audit.run_audit(parse_config(_config()), output_dir=out, progress=False)
    write_report(result)
    cells = json.loads((result.run_dir / "summary.json").read_text())["cells"]
    return [{k: v for k, v in c.items() if k not in VOLATILE} for c in cells]


def _close(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(set(a) ^ set(b))} differ"]
        return [m for k in a for m in _close(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= TOLERANCE else [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_a_tiny_audit_gives_the_stored_numbers(tmp_path):
    got = _cells(tmp_path)
    expected = json.loads(FIXTURE.read_text())
    assert len(got) == len(expected)
    mismatches = [m for i, (g, e) in enumerate(zip(got, expected)) for m in _close(g, e, f"cell {i} ({e['attack']}, ε = {e['budget']})")]
    assert not mismatches, "\n".join(mismatches[:20])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(_cells(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
