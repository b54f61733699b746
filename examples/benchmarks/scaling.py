"""How one cell's cost grows with the training set: wall time and peak memory against n (issue 20).

    OMP_NUM_THREADS=2 python examples/benchmarks/scaling.py                       # n = 5k, 20k, 60k, CPU
    python examples/benchmarks/scaling.py --device cuda --n 5000 60000            # on a GPU
    python examples/benchmarks/scaling.py --smoke                                 # tiny sizes (CI keeps it alive)

Data: ``mnist60k_synthetic`` (full MNIST's shape, SYNTHETIC: times and memory carry over,
accuracies and damage do not), the first n training points; logistic regression at ρ = 1e-2,
ε = 3 %, seed 0, the audit's L-BFGS procedure. For each attack one grid cell as the audit runs
it (the ``quick`` profile's settings; TGDA at ``--tgda-epochs`` of its 200, labelled — its cost
is linear in the epochs), then the retraining on D_tr ∪ D_p, then the loss filter on the mixed
set. Peak memory: the process's resident set sampled every 5 ms during the step, minus the
resident set just before it (so the data already loaded is not counted), and on CUDA
``torch.cuda.max_memory_allocated`` over the step. The exponent of each step is the slope of
log(time) and of log(memory) against log(n) (least squares over the n given).

One JSON line per step on stdout and in reports/benchmarks/scaling.jsonl; the fits at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from audit.attacks import AttackContext
from audit.config import AuditConfig, DatasetSpec, DefenseSpec, ModelSpec, TrainingSpec
from audit.data import Dataset, load_dataset
from audit.grid.cells import apply_defense
from audit.grid.work import clean_train_seed
from audit.models import build_victim

ATTACKS = ("label_flip_adversarial", "statp", "gradient_canceling", "back_gradient", "tgda")


class PeakMemory:
    """Peak resident set (MiB, above the level at entry) of this process while the block runs, and
    peak CUDA memory allocated (MiB) when on a GPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_rss, self.peak_gpu = device, 0.0, None
        self._stop = threading.Event()

    @staticmethod
    def rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_rss = max(self.peak_rss, self.rss() - self.base)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_base = torch.cuda.memory_allocated()
        self.base = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_gpu = (torch.cuda.max_memory_allocated() - self.gpu_base) / 2**20
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss() - self.base)


def first_n(data: Dataset, n: int) -> Dataset:
    import dataclasses

    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


def fit_exponent(ns: list[int], values: list[float]) -> float | None:
    """Slope of log(value) on log(n); None with fewer than two positive points."""
    pts = [(np.log(n), np.log(v)) for n, v in zip(ns, values) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def step_row(n: int, step: str, seconds: float, mem: PeakMemory, **extra: object) -> dict:
    gpu = None if mem.peak_gpu is None else round(mem.peak_gpu, 1)
    return {"n": n, "step": step, "seconds": round(seconds, 3), "peak_rss_mib": round(mem.peak_rss, 1), "peak_gpu_mib": gpu, **extra}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 60000])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--tgda-epochs", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="n = 300, 600 on breast-cancer-sized slices: the script runs, nothing is measured")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/scaling.jsonl"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.smoke:
        args.n, args.tgda_epochs = [200, 400], 1
    data = load_dataset(DatasetSpec(name="mnist5k" if args.smoke else "mnist60k_synthetic"))
    training = TrainingSpec(epochs=20) if args.smoke else TrainingSpec()
    cfg = AuditConfig(profile="quick", training=training).resolved(data.task, "torch")
    specs = {s.key: s for s in cfg.attacks}
    specs["tgda"] = AuditConfig(profile="standard", training=training).resolved(data.task, "torch").attack_spec("tgda")
    specs["tgda"] = specs["tgda"].model_copy(update={"params": {**specs["tgda"].params, "epochs": args.tgda_epochs}})
    loss_filter = DefenseSpec(name="loss_filter")
    hp = {"l2": 1e-2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    print(f"scaling: {data.name}, device {device}, torch threads {torch.get_num_threads()}", flush=True)

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    for n in args.n:
        part = first_n(data, n)
        victim = build_victim(ModelSpec(name="logreg"), training, part, device)
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            clean = victim.fit(part.x_train, part.y_train, hp, clean_train_seed(0))
            seconds = time.perf_counter() - t0
        record(step_row(n, "clean training", seconds, mem))
        for key in args.attacks:
            spec = specs[key]
            ctx = AttackContext(part, victim, clean, hp, args.eps, 0)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                x_p, y_p = spec.attack.for_cell(dict(spec.params), ctx).poison(part.x_train, part.y_train)
                seconds = time.perf_counter() - t0
            label = f"{key} ({args.tgda_epochs} of 200 epochs)" if key == "tgda" else key
            record(step_row(n, label, seconds, mem, params=spec.params))
            x_mix, y_mix = np.concatenate([part.x_train, x_p]), np.concatenate([part.y_train, y_p])
            if key == args.attacks[0]:  # the retraining and the filter cost the same whatever made the poisons
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    victim.fit(x_mix, y_mix, hp, clean_train_seed(0))
                    seconds = time.perf_counter() - t0
                record(
                    {"n": n, "step": "retraining", "seconds": round(seconds, 3), "peak_rss_mib": round(mem.peak_rss, 1), "peak_gpu_mib": mem.peak_gpu}
                )
                defense = loss_filter.defense.for_cell(args.eps, 0, part, loss_filter.params)
                with PeakMemory(device) as mem:
                    t0 = time.perf_counter()
                    apply_defense(defense, x_mix, y_mix, victim, hp, clean_train_seed(0))
                    seconds = time.perf_counter() - t0
                record(step_row(n, "loss filter (+ retraining)", seconds, mem))
    print("\nexponents (slope of log cost on log n):")
    for step in dict.fromkeys(r["step"] for r in rows):
        mine = [r for r in rows if r["step"] == step]
        ns = [r["n"] for r in mine]
        t_exp = fit_exponent(ns, [r["seconds"] for r in mine])
        m_exp = fit_exponent(ns, [r["peak_rss_mib"] for r in mine])
        fit = {
            "step": step,
            "time_exponent": None if t_exp is None else round(t_exp, 2),
            "memory_exponent": None if m_exp is None else round(m_exp, 2),
        }
        print(json.dumps(fit), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"fit": fit, "device": str(device)}) + "\n")


if __name__ == "__main__":
    main()
