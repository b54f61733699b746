"""How many CPU threads torch uses, chosen from the CPUs this process may really use.

On a shared machine torch's default (one thread per core, OpenMP threads that spin while
waiting) oversubscribes the CPUs another process is using: small models then run 10–20×
slower. :func:`configure_threads` takes the CPUs of the process's affinity mask, capped by a
cgroup CPU quota (containers), unless told otherwise, and makes OpenMP threads sleep
instead of spinning when idle (``OMP_WAIT_POLICY=PASSIVE``, only when the user has not set it
and only before torch is first imported).

The numbers of a CPU run depend on the thread count (reductions add in another order), so
the run's fingerprint records it: a run resumes only under the same count.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota (``cpu.max`` or ``cpu.cfs_quota_us / cpu.cfs_period_us``), None without one."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (``threads``, default :func:`available_cpus`) and return it.

    Call before heavy work; when torch is not imported yet, idle OpenMP threads are also made
    to sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be ≥ 1 (got {threads})")
    n = threads if threads is not None else available_cpus()
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    return n
