"""How one cell's cost grows with the training set: wall time and peak memory against n (issue 20).

    OMP_NUM_THREADS=2 python examples/benchmarks/scaling.py                       # n = 5k, 20k, 60k, CPU
    python examples/benchmarks/scaling.py --device cuda --n 5000 60000            # on a GPU
    python examples/benchmarks/scaling.py --smoke                                 # tiny sizes (CI keeps it alive)

Data: ``mnist60k_synthetic`` (full MNIST's shape, SYNTHETIC: times and memory carry over,
accuracies and damage do not), the first n training points; logistic regression at ρ = 1e-2,
ε = 3 %, seed 0, the audit's L-BFGS procedure. For each attack one grid cell as the audit runs
it (the ``quick`` profile's settings; TGDA at ``--tgda-epochs`` of its 200, labelled — its cost
is linear in the epochs), then the retraining on D_tr ∪ D_p, then the loss filter on the mixed
set. Each (n, step) runs in a fresh process (the data from a cached .npz, the clean model,
then the step), so memory one step freed cannot hide the next one's. Peak memory: the
process's resident set sampled every 5 ms during the step, minus the resident set just
before it (so the data already loaded is not counted), and on CUDA
``torch.cuda.max_memory_allocated`` over the step. The exponent of each step is the slope of
log(time) and of log(memory) against log(n) (least squares over the n given).

One JSON line per step on stdout and in reports/benchmarks/scaling.jsonl; the fits at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
from audit.models import Candidate, build_victim

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


STEPS = ("clean training", *ATTACKS, "retraining", "loss filter (+ retraining)")


def measure(args: argparse.Namespace, n: int, step: str) -> dict:
    """One step at one n, in this (fresh) process: data from the cache, the clean model, then the step."""
    device = torch.device(args.device)
    with np.load(args.cache) as npz:
        full = Dataset(name=str(npz["name"]), task="classification", x_train=npz["x_train"], y_train=npz["y_train"], x_val=npz["x_val"],
                       y_val=npz["y_val"], x_test=npz["x_test"], y_test=npz["y_test"], lo=npz["lo"], hi=npz["hi"], n_classes=10,
                       image_shape=(1, 28, 28))  # fmt: skip
    part = first_n(full, n)
    training = TrainingSpec(epochs=20) if args.smoke else TrainingSpec()
    victim = build_victim(ModelSpec(name="logreg"), training, part, device)
    hp = {"l2": 1e-2}
    warm = first_n(full, 100)  # the first torch calls pay for kernels and threads: not the step's cost
    victim.fit(warm.x_train, warm.y_train, hp, 0)
    if step == "clean training":
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            victim.fit(part.x_train, part.y_train, hp, clean_train_seed(0))
            seconds = time.perf_counter() - t0
        return step_row(n, step, seconds, mem)
    clean = victim.fit(part.x_train, part.y_train, hp, clean_train_seed(0))
    ctx = AttackContext.of(part, victim, clean, hp, args.eps, 0)
    if step in ATTACKS:
        cfg = AuditConfig(profile="standard" if step == "tgda" else "quick", training=training).resolved(part.task, "torch")
        spec = cfg.attack_spec(step)
        if step == "tgda":
            spec = spec.model_copy(update={"params": {**spec.params, "epochs": args.tgda_epochs}})
        attack = spec.attack.for_cell(dict(spec.params), ctx)
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            attack.poison(part.x_train, part.y_train)
            seconds = time.perf_counter() - t0
        label = f"tgda ({args.tgda_epochs} of 200 epochs)" if step == "tgda" else step
        return step_row(n, label, seconds, mem, params=spec.params)
    flip = AuditConfig(profile="quick").resolved(part.task, "torch").attack_spec("label_flip_adversarial")  # poisons to retrain on
    x_p, y_p = flip.attack.for_cell(dict(flip.params), ctx).poison(part.x_train, part.y_train)
    x_mix, y_mix = np.concatenate([part.x_train, x_p]), np.concatenate([part.y_train, y_p])
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        if step == "retraining":
            victim.fit(x_mix, y_mix, hp, clean_train_seed(0))
        else:
            loss_filter = DefenseSpec(name="loss_filter")
            apply_defense(loss_filter.defense.for_cell(args.eps, 0, part, loss_filter.params), x_mix, y_mix, victim, Candidate.of(victim, hp), clean_train_seed(0))
        seconds = time.perf_counter() - t0
    return step_row(n, step, seconds, mem)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 60000])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--tgda-epochs", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="n = 200, 400 of mnist5k: the script runs, nothing is measured")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/scaling.jsonl"))
    parser.add_argument("--cache", type=Path, default=None, help="the data as .npz (written once, read by each step's process)")
    parser.add_argument("--one", nargs=2, metavar=("N", "STEP"), help=argparse.SUPPRESS)  # a child: one step, one JSON line
    args = parser.parse_args()
    if args.smoke:
        args.n, args.tgda_epochs = [200, 400], 1
    if args.one:
        print("ROW " + json.dumps(measure(args, int(args.one[0]), args.one[1])), flush=True)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.cache is None:
        args.cache = args.out.with_name("scaling_data_smoke.npz" if args.smoke else "scaling_data.npz")
    if not args.cache.is_file():
        data = load_dataset(DatasetSpec(name="mnist5k" if args.smoke else "mnist60k_synthetic"))
        np.savez(args.cache, name=data.name, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val,
                 x_test=data.x_test, y_test=data.y_test, lo=data.lo, hi=data.hi)  # fmt: skip
    print(f"scaling: device {args.device}, torch threads {torch.get_num_threads()}, one process per step", flush=True)
    rows: list[dict] = []
    for n in args.n:
        for step in args.steps:
            cmd = [sys.executable, __file__, "--one", str(n), step, "--cache", str(args.cache), "--device", args.device, "--eps", str(args.eps),
                   "--tgda-epochs", str(args.tgda_epochs), *(["--smoke"] if args.smoke else [])]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            row = json.loads(found[0]) if found else {"n": n, "step": step, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print("\nexponents (slope of log cost on log n):")
    for step in dict.fromkeys(r["step"] for r in rows if "error" not in r):
        mine = [r for r in rows if r["step"] == step and "error" not in r]
        ns = [r["n"] for r in mine]
        t_exp = fit_exponent(ns, [r["seconds"] for r in mine])
        m_exp = fit_exponent(ns, [r["peak_rss_mib"] for r in mine])
        fit = {"step": step, "time_exponent": t_exp and round(t_exp, 2), "memory_exponent": m_exp and round(m_exp, 2)}
        print(json.dumps(fit), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"fit": fit, "device": args.device}) + "\n")
    if any("error" in r for r in rows):
        raise SystemExit("scaling: some steps failed (their rows say why)")


if __name__ == "__main__":
    main()
