"""One L-BFGS fit of mnist5k logistic regression (the default audit's unit of work), idle and busy.

    python examples/benchmarks/threads.py --threads 2 [--busy] [--wait-policy PASSIVE|ACTIVE]

``--busy`` starts one CPU-bound process (a pure-Python loop) for the duration, as another job
on a shared 2-core machine would. Prints the fit's wall time (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time


def _spin() -> None:
    x = 0
    while True:
        x += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--wait-policy", default=None, help="OMP_WAIT_POLICY (default: the audit CLI's PASSIVE; '' for the runtime's own default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.wait_policy is not None:
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy  # "" leaves the OpenMP runtime's own default
    from audit.threads import configure_threads

    configure_threads(args.threads)
    import torch

    from audit.config import DatasetSpec, ModelSpec, TrainingSpec
    from audit.data import load_dataset
    from audit.models import build_victim

    data = load_dataset(DatasetSpec(name="mnist5k"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"))
    victim.fit(data.x_train, data.y_train, {"l2": 1e-3}, 0)  # warm-up
    busy = mp.Process(target=_spin, daemon=True) if args.busy else None
    if busy:
        busy.start()
    times = []
    try:
        for _ in range(args.repeats):
            start = time.perf_counter()
            victim.fit(data.x_train, data.y_train, {"l2": 1e-3}, 0)
            times.append(time.perf_counter() - start)
    finally:
        if busy:
            busy.terminate()
    print(f"threads={args.threads} busy={args.busy} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}: "
          f"median {statistics.median(times):.2f} s over {args.repeats} fits")  # fmt: skip


if __name__ == "__main__":
    main()
