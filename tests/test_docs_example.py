"""docs/architecture.md's worked example (a new attack) runs as written: its code block, saved as a module and
registered, keeps the attack contract and runs through a config into a real audit and its report."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import audit
from audit.attacks import ATTACKS, AttackContext
from audit.config import DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.models import build_victim
from audit.report import write_report
from tests.conftest import stored_cells, tiny_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The first python block under "Worked example" in docs/architecture.md, imported as a module."""
    text = DOC.read_text()
    section = text[text.index("### Worked example") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/architecture.md lost its worked example"
    path = tmp_path / "far_flip.py"
    path.write_text(code.group(1))
    spec = importlib.util.spec_from_file_location("far_flip_docs_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import does (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def far_flip(tmp_path, monkeypatch):
    cls = _example_module(tmp_path, monkeypatch).FarFlip
    monkeypatch.setitem(ATTACKS, cls.name, cls)  # "one registry line"
    return cls


def test_the_worked_example_keeps_the_attack_contract(far_flip):
    data = load_dataset(DatasetSpec(name="wine"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), data, torch.device("cpu"))
    fitted = victim.fit(data.x_train, data.y_train, {"l2": 0.01}, 0)
    ctx = AttackContext.of(data, victim, fitted, {"l2": 0.01}, 0.1, seed=0)
    x, y = data.x_train, data.y_train
    x_before = x.copy()
    x_p, y_p = far_flip.for_cell({}, ctx).poison(x, y)
    n_p = round(0.1 * len(x))
    assert x_p.shape == (n_p, x.shape[1]) and y_p.shape == (n_p,)
    assert np.array_equal(x, x_before)
    # brute force: the points farthest from their class's mean, each relabelled to another class
    means = np.stack([x[y == c].mean(0) for c in range(data.n_classes)])
    farthest = np.argsort(-np.linalg.norm(x - means[y], axis=1), kind="stable")[:n_p]
    np.testing.assert_allclose(x_p, x[farthest], rtol=0, atol=1e-6)
    assert np.all(y_p != y[farthest])
    again = far_flip.for_cell({}, ctx).poison(x, y)
    assert np.array_equal(again[0], x_p) and np.array_equal(again[1], y_p)
    with pytest.raises(audit.AuditError, match="FarFlip parameter 'distance'"):
        far_flip.for_cell({"distance": "manhattan"}, ctx)


def test_the_worked_example_runs_through_a_config_into_the_report(far_flip, tmp_path):
    cfg = tiny_config(candidates={"l2": [0.01]}, budgets=[0.1], confirm={"attacks": ["label_flip_random"]},
                      attacks=[{"name": "label_flip", "id": "lf_random", "params": {"variant": "random"}},
                               {"name": "far_flip", "params": {"distance": "cosine"}}])  # fmt: skip
    result = audit.run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    cells = [c for c in stored_cells(result.run_dir) if c.attack.startswith("far_flip")]
    assert cells and all(c.status == "ok" for c in cells)
    assert all(c.attack_diagnostics(far_flip.Diagnostics).mean_distance > 0 for c in cells)
    write_report(result)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "far_flip[distance=cosine]" in json.dumps(summary["attacks"])
    assert "far_flip[distance=cosine]" in (result.run_dir / "report.html").read_text()
