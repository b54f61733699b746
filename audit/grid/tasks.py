"""The grid's units as tasks that depend on one another, for the executors that run them elsewhere
(the local worker pool, :mod:`audit.grid.pool`; Ray, :mod:`audit.grid.distributed`).

Per ``(h, j, s)`` one clean task; per ``(h, a, ε, s)`` one craft task that depends on it (and on the
same attack's craft task at the next smaller budget, which a warm-starting attack starts from); per
defense cell one task that depends on its craft task; per adaptive cell one task. A *reference* is
what an executor's ``submit`` returns for a task (a Ray ``ObjectRef``, the pool's own reference); an
executor hands a task its dependencies' results in place of their references. Only the coordinator
writes the store (:func:`store_value`), each result as it arrives, so an interrupted coordinator
resumes exactly as the in-process executor does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from audit.grid.plan import RunPlan
from audit.grid.store import Store
from audit.grid.work import AdaptiveJob, CleanOutcome, GroupJob, Poisons, adaptive_unit, clean_unit, craft_unit, defense_unit
from audit.models import Candidate

#: what a task of each kind runs, with the plan as its first argument
UNITS: dict[str, Callable[..., Any]] = {"clean": clean_unit, "craft": craft_unit, "defense": defense_unit, "adaptive": adaptive_unit}


def apply_numerics(numerics: dict[str, Any], device: str) -> None:
    """The coordinator's numeric settings in a worker: torch's thread count and deterministic algorithms
    (:meth:`RunPlan.numerics`), and on CUDA the deterministic cuBLAS/cuDNN kernels."""
    import torch

    torch.set_num_threads(int(numerics["threads"]))
    torch.use_deterministic_algorithms(bool(numerics["deterministic"]))
    if device.startswith("cuda"):
        from audit.models import resolve_device

        resolve_device("cuda")


class Submitter:
    """Submits the groups' tasks: clean → craft → defense cells (and adaptive cells), each a task
    depending on the references it is handed, and records in ``waiting`` what each reference will
    bring back (``(kind, job or cell)``, for :func:`store_value`).

    ``submit(kind, *args)`` returns a reference to the task ``UNITS[kind](plan, *args)`` (an argument
    may be a reference); ``put(value)`` a reference to a value the coordinator already holds.
    """

    def __init__(self, submit: Callable[..., Any], put: Callable[[Any], Any], waiting: dict[Any, tuple[str, Any]]) -> None:
        self.submit, self.put, self.waiting = submit, put, waiting
        self.cleans: dict[tuple[Candidate, int, int], Any] = {}

    def group(self, group: GroupJob) -> None:
        reuse = self.cleans.get((group.candidate, group.split, group.reuse_seed)) if group.reuse_seed is not None else None
        clean = self.submit("clean", group.candidate, group.seed, reuse, group.split)
        self.cleans[group.candidate, group.split, group.seed] = clean
        self.waiting[clean] = ("clean", group)
        crafted: dict[tuple[str, float], Any] = {}
        for job in group.poison_jobs:
            if job.cached is not None:
                poisons = self.put(job.cached)
            else:
                warm = crafted.get(job.warm) if job.warm is not None else job.warm_cached  # a reference: the smaller budget runs first
                poisons = self.submit("craft", clean, job.attack, job.budget, warm)
                self.waiting[poisons] = ("poisons", job)
            crafted[job.attack, job.budget] = poisons
            for c in job.cells:
                self.waiting[self.submit("defense", clean, c, poisons)] = ("cell", c)
        for adaptive in group.adaptive_jobs:
            initial = crafted.get(adaptive.initial_job) if adaptive.initial_job is not None else adaptive.initial
            self.waiting[self.submit("adaptive", clean, adaptive, initial)] = ("adaptive", adaptive)


def store_value(store: Store, kind: str, what: Any, value: Any, bar: Any) -> None:
    """Write what one finished task of ``kind`` brought back (the coordinator is the only writer)."""
    if kind == "clean":
        outcome: CleanOutcome = value
        if outcome.failure is None:
            outcome.writes.replay(store)
    elif kind == "poisons":
        poisons: Poisons = value
        if poisons.failure is None and poisons.x is not None and poisons.y is not None:
            store.save_poisons(what.key, poisons.x, poisons.y, poisons.diagnostics)
    elif kind == "cell":
        store.put_cell(value)
        bar.update(1)
    else:
        job: AdaptiveJob = what
        cell, new = value
        if new is not None and new.x is not None and new.y is not None:
            store.save_poisons(job.key, new.x, new.y, new.diagnostics)
        store.put_cell(cell)
        bar.update(1)


def run_unit(plan: RunPlan, kind: str, *args: Any) -> Any:
    """One unit of :mod:`audit.grid.work` in a worker."""
    return UNITS[kind](plan, *args)
