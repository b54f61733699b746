"""CUDA code paths: the same audit on the GPU, reproducible there. Skipped without a GPU."""

import pytest

from audit.config import parse_config
from audit.runner import run_audit
from tests.conftest import stored_cells as _cells, tiny_config

pytestmark = pytest.mark.gpu




def test_audit_runs_on_cuda_and_repeats_exactly(tmp_path):
    cfg = parse_config(tiny_config(device="cuda", model={"name": "mlp", "width": 32}, training={"epochs": 5, "batch_size": 64}))
    a = _cells(run_audit(cfg, output_dir=tmp_path / "a", progress=False))
    b = _cells(run_audit(cfg, output_dir=tmp_path / "b", progress=False))
    assert {c.status for c in a} == {"ok"} and all(c.device.startswith("cuda") for c in a)
    assert [c.poisoned_test for c in a] == [c.poisoned_test for c in b]


def test_auto_picks_cuda(tmp_path):
    cells = _cells(run_audit(parse_config(tiny_config(device="auto")), output_dir=tmp_path, progress=False))
    assert all(c.device.startswith("cuda") for c in cells)
