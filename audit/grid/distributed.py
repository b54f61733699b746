"""The Ray executor (``executor: {kind: ray}``): the grid's units as Ray tasks, one writer.

The coordinator (this process) plans the unfinished work (:func:`audit.grid.work.plan_work`),
puts the plan (config, data, victim) into the object store once and submits, per ``(h, s)``,
one clean task, one craft task per ``(h, a, ε, s)`` and one task per defense cell that *depends
on* its craft task's result — the poison set crafted once travels as an object-store reference
to every defense cell that needs it. The coordinator alone writes ``results.sqlite`` and the
poison cache, each result as it arrives (workers return rows; SQLite is not safe across hosts),
so an interrupted coordinator resumes exactly as the local executor does.

Failures: a unit that raises returns its failure and its cells are stored as failed (the audit
goes on, as with the local executor); a task whose *worker* dies is retried ``retries`` times by
Ray, then its cells are stored as failed with Ray's error.

Numbers: a task runs torch at ``ceil(cpus_per_cell)`` threads with the coordinator's
deterministic settings (:meth:`RunPlan.numerics`), so a Ray run gives the numbers of a local run
at that thread count on the same device kind (the fingerprint records the count).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from audit.errors import AuditError
from audit.grid.plan import RunPlan
from audit.grid.store import Store
from audit.grid.tasks import Submitter, apply_numerics, run_unit, store_value
from audit.grid.work import Failure, failure_cell, plan_work, progress_bar
from audit.threads import available_cpus

RAY_EXTRA = 'pip install -e ".[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise AuditError(f"executor: 'ray' needs the Ray extra ({RAY_EXTRA}); or use executor.kind 'local'") from None
    return ray


def connect(address: str | None) -> bool:
    """Join or start a Ray cluster; True when this call started it (the caller shuts it down).

    Already initialised (a test's ``ray.init(num_cpus=2)``, a notebook's cluster): used as it is.
    ``address`` None and no ``RAY_ADDRESS``: a private cluster on this machine, on the loopback
    address, with the CPUs this process may use.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):
            path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)  # model factories import from here
            ray.init(num_cpus=available_cpus(), _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or os.environ.get("RAY_ADDRESS") or "this machine"
        raise AuditError(f"executor: could not start or reach the Ray cluster at {where}: {str(err).splitlines()[0]}") from None
    return True


def _unit(kind: str, numerics: dict[str, Any], device: str, plan: RunPlan, *args: Any) -> Any:
    """What a Ray task runs: the coordinator's numeric settings, then one unit of :mod:`audit.grid.work`."""
    apply_numerics(numerics, device)
    return run_unit(plan, kind, *args)


def run_ray(plan: RunPlan, store: Store, progress: bool) -> None:
    """Run the grid's unfinished cells on Ray (module docstring); returns when every submitted cell is stored."""
    ray = require_ray()
    spec = plan.config.executor
    started = connect(spec.address)
    waiting: dict[Any, tuple[str, Any]] = {}
    try:
        jobs, finished = plan_work(plan, store, plan.fingerprint())
        bar = progress_bar(plan, finished, progress, "ray")
        task = ray.remote(_unit).options(num_cpus=spec.cpus_per_cell, num_gpus=gpu_share(plan), max_retries=spec.retries)
        plan_ref, numerics, device = ray.put(plan), plan.numerics(), str(plan.device)
        submit = Submitter(lambda kind, *args: task.remote(kind, numerics, device, plan_ref, *args), ray.put, waiting)
        for group in jobs:
            submit.group(group)
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                kind, what = waiting.pop(ref)
                _store_result(ray, store, plan, ref, kind, what, bar)
        bar.close()
    finally:
        for ref in waiting:  # interrupted: what is still running is of no use to anyone
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def gpu_share(plan: RunPlan) -> float:
    """The GPU share a task reserves: ``executor.gpus_per_cell``, or a whole GPU on a CUDA run when unset."""
    share = plan.config.executor.gpus_per_cell
    if share is None:
        return 1.0 if plan.device.type == "cuda" else 0.0
    return share


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ray_failure(err: BaseException, retries: int) -> Failure:
    """A Ray error as a cell's failure: the error under Ray's wrapper (a dependency's, when a task a
    cell depends on failed), one line, without terminal colours."""
    cause = getattr(err, "cause", None) or err
    name = type(cause).__name__
    if name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return Failure(
            f"{name}: the Ray worker running this cell, or a task it depends on, died (retried {retries}×)", [_ANSI.sub("", str(err))[-2000:]]
        )
    lines = [line for line in _ANSI.sub("", str(cause)).splitlines() if line.strip()]
    return Failure(f"{name}: {lines[0].strip() if lines else 'Ray task failed'}", [_ANSI.sub("", str(err))[-2000:]])


def _store_result(ray: Any, store: Store, plan: RunPlan, ref: Any, kind: str, what: Any, bar: Any) -> None:
    """Write what one finished task brought back (the coordinator is the only writer)."""
    try:
        value = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died (after Ray's retries) or a dependency did
        if kind in ("cell", "adaptive"):
            cell = what if kind == "cell" else what.cell
            store.put_cell(failure_cell(cell, ray_failure(err, plan.config.executor.retries), str(plan.device)))
            bar.update(1)
        else:  # a clean or craft task: the cells that depend on it fail with it, and are stored then
            print(f"ray: a {kind} task failed: {ray_failure(err, plan.config.executor.retries).message}", file=sys.stderr)
        return
    store_value(store, kind, what, value, bar)
