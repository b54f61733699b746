"""Host reads inside the hot loops, counted with torch.profiler on the CPU (issue 20: GPU-ready loops).

    OMP_NUM_THREADS=2 python examples/benchmarks/sync_profile.py
    python examples/benchmarks/sync_profile.py --device cuda        # the same counts where a GPU is

On a GPU every read of a device value on the host — ``.item()``, ``float(t)``, ``bool(t)``,
``.cpu()`` — waits for the device to finish its queue. They all run ATen's
``_local_scalar_dense`` (a scalar read) or a device-to-host ``copy_``; on the CPU they cost
nothing but show in the profiler all the same, so the counts here are what a GPU run pays.
For each hot loop: the number of those calls per step of the loop (optimizer step, GC epoch,
unrolled inner step, TGDA leader step) over a short run of it on mnist5k. CG reads whether it
is done every ``linear_solve.CHECK_EVERY`` iterations: the run sets the GPU's value (10) on the
CPU too, so the TGDA count is the GPU's.

One JSON line per loop on stdout and in reports/benchmarks/sync_profile.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from audit.attacks import AttackContext
from audit.config import AuditConfig, DatasetSpec, ModelSpec, TrainingSpec
from audit.data import load_dataset
from audit.grid.work import clean_train_seed
from audit.maths import linear_solve
from audit.models import build_victim
from audit.models.training import TrainConfig, train


def host_reads(run, device: torch.device) -> tuple[int, int]:
    """(scalar reads, device-to-host copies) while ``run()`` runs."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    reads = copies = 0
    for event in prof.key_averages():
        if event.key == "aten::_local_scalar_dense":
            reads += event.count
        if event.key == "Memcpy DtoH (Device -> Pageable)" or event.key == "Memcpy DtoH (Device -> Pinned)":
            copies += event.count
    return reads, copies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/sync_profile.jsonl"))
    args = parser.parse_args()
    device = torch.device(args.device)
    linear_solve.CHECK_EVERY[device.type] = linear_solve.CHECK_EVERY["default"]  # the GPU's cadence, here too
    data = load_dataset(DatasetSpec(name="mnist5k"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def record(loop: str, steps: int, counts: tuple[int, int], note: str) -> None:
        row = {"loop": loop, "steps": steps, "scalar_reads": counts[0], "dtoh_copies": counts[1],
               "reads_per_step": round(counts[0] / steps, 3), "note": note, "device": str(device)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    # 1. first-order training (the MLP's and the CNN's procedure): mini-batch SGD
    x = torch.tensor(data.x_train, device=device)
    y = torch.tensor(data.y_train, device=device)
    module = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(device)
    config = TrainConfig(l2=1e-4, optimizer="sgd", lr=0.1, momentum=0.9, epochs=5, batch_size=100)
    steps = 5 * int(np.ceil(len(y) / 100))
    record("SGD training (MLP, batch 100)", steps, host_reads(lambda: train(module, x, y, "classification", config, 0), device),
           "the reads are the end-of-training objective and gradient norm (once per training), none per step")  # fmt: skip

    # 2.–4. the attacks' loops against logistic regression, as a grid cell runs them
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, device)
    hp = {"l2": 1e-2}
    clean = victim.fit(data.x_train, data.y_train, hp, clean_train_seed(0))
    ctx = AttackContext.of(data, victim, clean, hp, 0.03, 0)
    paper = {s.key: s for s in AuditConfig(profile="paper").resolved(data.task, "torch").attacks}

    def attack(key: str, **params):
        spec = paper[key]
        return lambda: spec.attack.for_cell({**spec.params, **params}, ctx).poison(data.x_train, data.y_train)

    def per_step(loop: str, key: str, steps_per_unit: int, short: dict, long: dict, units: int, note: str) -> None:
        """Reads of the loop alone: a run ``units`` longer minus the short run (the set-up cancels;
        a first run fills what the cell caches, such as Gradient Canceling's target)."""
        attack(key, **short)()
        a, b = host_reads(attack(key, **short), device), host_reads(attack(key, **long), device)
        record(loop, units * steps_per_unit, (b[0] - a[0], b[1] - a[1]), note)

    per_step("Gradient Canceling epochs", "gradient_canceling", 1, {"epochs": 50, "log_every": 10}, {"epochs": 100, "log_every": 10}, 50,
             "‖g(χ)‖ read at the log epochs only (every 10th)")  # fmt: skip
    bg = {"hypergradient": "unrolled", "inner_steps": 30, "step_rule": "paper"}
    per_step("back-gradient, unrolled (T = 30)", "back_gradient", 30, {**bg, "iterations": 2}, {**bg, "iterations": 4}, 2,
             "per outer iteration (30 unrolled + 30 reversed steps): the objective and the diagnostics; none in the steps")  # fmt: skip
    tgda = paper["tgda"]
    n_batches = int(np.ceil(len(data.y_train) / (tgda.params.get("batch_size") or 1000)))
    per_step("TGDA leader steps", "tgda", n_batches, {"epochs": 1, "pretrain_epochs": 0, "log_every": 100},
             {"epochs": 3, "pretrain_epochs": 0, "log_every": 100}, 2,
             "per leader step: CG's done-check every 10 iterations, its residual and iteration count")  # fmt: skip


if __name__ == "__main__":
    main()
