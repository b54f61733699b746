"""The local worker pool (``executor.workers`` > 1): the grid's units in worker processes on this
machine, each at ``executor.cpus_per_cell`` torch threads, the coordinator the only writer.

The units and their dependencies are the Ray executor's (:mod:`audit.grid.tasks`): a craft task
starts when its clean model (and a warm start's smaller budget) is done, a defense cell when its
poisons are; each result is stored as it arrives, so an interrupted run resumes as the in-process
executor's does. The workers are started once per run (``forkserver`` where the platform has it,
else ``spawn``: never a fork of a process whose OpenMP threads have run) and each receives the plan
once; a task's numbers are those of the in-process executor at the same thread count.

A worker that dies (killed, out of memory) breaks the pool: the run stops with one line, the cells
stored until then are kept, and running it again resumes. A unit that raises is a failed cell, as
in-process.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from audit.errors import AuditError
from audit.grid.plan import RunPlan
from audit.grid.store import Store
from audit.grid.tasks import Submitter, apply_numerics, run_unit, store_value
from audit.grid.work import plan_work, progress_bar

_PLAN: RunPlan | None = None  # a worker's copy of the run (set by _start)
_START_ERROR: str | None = None  # why a worker could not load the run; its tasks raise it


class _Ref:
    """A task's result to come (the pool's reference): ``done`` once its future has ended."""

    __slots__ = ("done", "value")

    def __init__(self, value: Any = None, done: bool = False) -> None:
        self.value, self.done = value, done


def _start(payload: bytes) -> None:
    """A worker's initialiser: the run, the attacks registered in the coordinator, the numeric settings."""
    global _PLAN, _START_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle: it stops the workers
    try:
        from audit.attacks import ATTACKS

        plan, attacks, numerics = pickle.loads(payload)
        ATTACKS.update(attacks)  # attacks a user (or a test) registered at run time
        apply_numerics(numerics, str(plan.device))
        _PLAN = plan
    except Exception as err:  # reported by the first task, in the coordinator
        _START_ERROR = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _task(kind: str, *args: Any) -> Any:
    if _START_ERROR is not None or _PLAN is None:
        raise _WorkerStartError(_START_ERROR or "the worker was not initialised")
    return run_unit(_PLAN, kind, *args)


class _WorkerStartError(RuntimeError):
    pass


def payload(plan: RunPlan) -> bytes:
    """What each worker receives once: the plan, the attacks registered beyond the built-in ones, the
    numeric settings. Raises :class:`AuditError` (one line) where the run cannot be sent to another process."""
    from audit.attacks import ATTACKS, BUILTIN_ATTACKS

    extra = {name: cls for name, cls in ATTACKS.items() if BUILTIN_ATTACKS.get(name) is not cls}
    try:
        return pickle.dumps((plan, extra, plan.numerics()), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise AuditError(
            f"executor.workers: the run cannot be sent to worker processes ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "set executor.workers to 1 (or run --workers 1)"
        ) from None


class WorkerPool:
    """``workers`` processes for one run; :meth:`run` executes the plan's unfinished units on them."""

    def __init__(self, plan: RunPlan, workers: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(["audit.grid.tasks"])  # torch and the units imported once, in the server
        self.workers = workers
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(payload(plan),))

    def close(self, now: bool = False) -> None:
        """Shut the workers down; ``now``: without waiting for running tasks (an interrupted run)."""
        if now:
            for process in list(getattr(self.executor, "_processes", {}).values()):  # no public way before Python 3.14
                process.terminate()
        self.executor.shutdown(wait=not now, cancel_futures=True)

    def _launch(self, blocked: list[tuple[_Ref, str, tuple[Any, ...]]], running: dict[Future, _Ref]) -> None:
        """Submit, in order, every blocked task whose inputs are done (with their values in place of the references)."""
        still = []
        for ref, kind, args in blocked:
            if all(a.done for a in args if isinstance(a, _Ref)):
                resolved = tuple(a.value if isinstance(a, _Ref) else a for a in args)
                running[self.executor.submit(_task, kind, *resolved)] = ref
            else:
                still.append((ref, kind, args))
        blocked[:] = still
        if blocked and not running:
            raise AssertionError("tasks wait for results no task will bring")  # a cycle: a bug, never a user's error

    def run(self, plan: RunPlan, store: Store, progress: bool) -> None:
        """Run the plan's unfinished cells (:meth:`RunPlan.work_cells`) on the workers; returns when every one is stored."""
        jobs, finished = plan_work(plan, store, plan.fingerprint())
        bar = progress_bar(plan, finished, progress, f"{self.workers} workers")
        waiting: dict[_Ref, tuple[str, Any]] = {}
        blocked: list[tuple[_Ref, str, tuple[Any, ...]]] = []  # tasks in submission order, until their inputs are done

        def submit(kind: str, *args: Any) -> _Ref:
            ref = _Ref()
            blocked.append((ref, kind, args))
            return ref

        submitter = Submitter(submit, lambda value: _Ref(value, True), waiting)
        for group in jobs:
            submitter.group(group)
        running: dict[Future, _Ref] = {}
        try:
            while blocked or running:
                self._launch(blocked, running)
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in ended:
                    ref = running.pop(future)
                    ref.value, ref.done = future.result(), True
                    kind, what = waiting.pop(ref)
                    store_value(store, kind, what, ref.value, bar)
        except _WorkerStartError as err:
            raise AuditError(f"executor.workers: a worker process could not load the run ({err}); set executor.workers to 1") from None
        except BrokenProcessPool:
            raise AuditError(
                "executor.workers: a worker process died (killed, or out of memory); the cells finished so far are stored: "
                "run the same command again to resume, with fewer workers (--workers) if memory ran out"
            ) from None
        bar.close()


@contextmanager
def worker_pool(plan: RunPlan) -> Iterator[WorkerPool | None]:
    """The run's worker pool where ``plan.workers`` > 1 (None: the cells run in this process); its
    workers stop when the block ends, at once when it ends by an exception."""
    if plan.workers <= 1:
        yield None
        return
    pool = WorkerPool(plan, plan.workers)
    try:
        yield pool
    except BaseException:
        pool.close(now=True)
        raise
    pool.close()
