"""CUDA code paths: the same audit on the GPU, reproducible there. Skipped without a GPU."""

import pytest

from audit.config import parse_config
from audit.grid.runner import run_audit
from audit.models import Candidate
from tests.conftest import stored_cells as _cells
from tests.conftest import tiny_config

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


def test_tgda_runs_on_cuda_in_the_box_and_repeats_exactly():
    import numpy as np
    import torch

    from audit.attacks import ATTACKS, AttackContext
    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.models import build_victim

    d = load_dataset(DatasetSpec(name="digits"))
    victim = build_victim(ModelSpec(name="mlp", width=64), TrainingSpec(epochs=5), d, torch.device("cuda"))
    fitted = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)
    params = {"epochs": 3, "pretrain_epochs": 3, "cg_max_iter": 8, "batch_size": 300}
    runs = [ATTACKS["tgda"].for_cell(params, AttackContext.of(d, victim, fitted, {"l2": 1e-3}, 0.1, 0)) for _ in range(2)]
    (x1, y1), (x2, y2) = (r.poison(d.x_train, d.y_train) for r in runs)
    assert np.all(x1 >= d.lo) and np.all(x1 <= d.hi)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_back_gradient_minimax_runs_on_cuda_and_repeats_exactly():
    import numpy as np
    import torch

    from audit.attacks import ATTACKS, AttackContext
    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.models import build_victim

    d = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="mlp", width=32), TrainingSpec(epochs=5), d, torch.device("cuda"))
    fitted = victim.fit(d.x_train, d.y_train, {"l2": 1e-3}, 0)
    params = {"iterations": 3, "inner_steps": 20, "learn_l2": True, "checkpoint_every": 6}
    runs = [ATTACKS["back_gradient"].for_cell(params, AttackContext.of(d, victim, fitted, {"l2": 1e-3}, 0.1, 0)) for _ in range(2)]
    (x1, y1), (x2, y2) = (r.poison(d.x_train, d.y_train) for r in runs)
    assert np.all(x1 >= d.lo) and np.all(x1 <= d.hi)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert runs[0].diagnostics["lambda_rmd"] == runs[1].diagnostics["lambda_rmd"]


def test_partition_learners_train_as_one_batch_on_cuda_as_on_the_cpu():
    """DPA's and FA's learners (softmax regression) trained as one batch on the GPU reach the CPU batch's minimisers
    (objectives within 1e-6) and certify the same curves."""
    import numpy as np
    import torch

    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.defenses.dpa import DeepPartitionAggregation, FiniteAggregation
    from audit.models import build_victim

    d = load_dataset(DatasetSpec(name="mnist5k"))
    for cls, params in ((DeepPartitionAggregation, {"partitions": 50}), (FiniteAggregation, {"partitions": 50, "spread": 4})):
        runs = []
        for device in ("cpu", "cuda"):
            victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(epochs=100), d, torch.device(device))
            defense = cls(0.0, 0, evaluation=(d.x_test, d.y_test), n_clean=len(d.y_train), **params)
            runs.append(defense.apply(d.x_train, d.y_train, victim, Candidate.of(victim, {"l2": 1e-3})))
        cpu, gpu = runs
        objectives = [(a.train_result["objective"], b.train_result["objective"]) for a, b in zip(cpu.fitted.members, gpu.fitted.members)]
        assert max(abs(a - b) for a, b in objectives) <= 1e-6
        assert np.mean(cpu.fitted.predict(d.x_test) == gpu.fitted.predict(d.x_test)) >= 0.995
        for name, curve in cpu.diagnostics["certified_curves"].items():
            assert np.allclose(curve[:10], gpu.diagnostics["certified_curves"][name][:10], atol=0.5)
