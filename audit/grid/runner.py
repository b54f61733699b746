"""The audit grid (README: How the audit works) with a resumable store.

Order is deterministic: candidate → split → seed → attack → budget → defense. For each
``(h, j, s)`` the victim is trained once on split j's ``D_tr`` (clean metric); for each
``(h, j, a, ε, s)`` the attack crafts poisons once (cached on disk and reused by every
defense); for each defense the mixed set is filtered or robustly trained and the victim
retrained from scratch with the same procedure, seed and ``h``.

Seeds: the clean model and every retraining use ``derive_seed(s, "train")`` (same
initialisation, so a drop measures the poison, not the draw of the weights); the attack
uses ``derive_seed(s, h, a, ε)`` and the defense ``derive_seed(s, h, a, ε, d)``. Any cell
re-run alone gives the same numbers on the same device.

Seeds that cannot change a cell are not run: when training is seed-free (a convex model
trained full batch starts at w = 0, :meth:`Victim.seed_free`), the attack draws nothing
(:meth:`AuditAttack.seed_free`) and the defense draws nothing of its own, the cell runs at the
first seed only (:meth:`RunPlan.cell_seeds`; the store's ``cell_seeds`` tells the report what
was planned), and the clean model and its thresholds are computed once per candidate. A
profile may also run an attack at fewer seeds (``AttackSpec.seeds``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.config import SCHEMA_VERSION, AuditConfig, candidate_label
from audit.data import Dataset, TableColumns, check_dataset, load_dataset
from audit.errors import AuditError
from audit.grid.adaptive import resolve_adaptive
from audit.grid.lock import LOCK_FILE, RunLock
from audit.grid.plan import RunPlan
from audit.grid.pool import WorkerPool, payload, worker_pool
from audit.grid.store import (
    RUN_FILES,
    STORE_FILE,
    Store,
    candidate_key,
    clean_temporaries,
    derive_seed,
    grid_plan,
    is_run_directory,
    never_started,
    plan_digest,
    remove_run,
)
from audit.grid.work import (
    CleanOutcome,
    Poisons,
    adaptive_unit,
    clean_train_seed,
    clean_unit,
    craft_unit,
    defense_unit,
    failure_cell,
    plan_work,
    poison_cache_key,
    progress_bar,
    standard_error,
)
from audit.models import Candidate, Victim, build_victim, resolve_device
from audit.models.digest import model_digests
from audit.models.estimator import deployed_metric, trivial_metric
from audit.models.structure import is_convex_linear
from audit.models.surrogate import with_table
from audit.models.victim import MODEL_AXES
from audit.paths import refuse_link
from audit.seeding import seeded_init
from audit.threads import available_cpus

__all__ = [
    "RunPlan",
    "plan_audit",
    "run_audit",
    "run_plan",
    "run_local",
    "clean_train_seed",
    "poison_cache_key",
    "standard_error",
]


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["poison-audit", "torch", "adversarial-robustness-toolbox", "scikit-learn", "numpy", "scipy"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def plan_audit(
    config: AuditConfig,
    *,
    model: Any = None,
    dataset: Dataset | None = None,
    output_dir: str | Path | None = None,
    train_fn: Callable[..., Any] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
    resplit: Callable[[int], Dataset] | None = None,
) -> RunPlan:
    """Validate everything a run needs *before* anything is written to disk.

    ``model`` (an nn.Module, ART estimator or scikit-learn estimator) and ``dataset``
    override the config's model and dataset (library API); ``resplit(seed)``: ``dataset`` split again with
    another seed (a DataFrame's), for the config's ``splits``; ``train_fn`` and ``fit_kwargs``
    are the user's training (:func:`audit.models.build_victim`).
    """
    device = resolve_device(config.device)
    data = check_dataset(dataset) if dataset is not None else load_dataset(config.dataset)
    if model is not None:  # a scikit-learn pipeline that selects a table's columns by name reads the table's rows
        model = with_table(model, TableColumns.of(data.domain))
    deployed = deployed_metric(model, data.x_test, data.y_test, data.task, data.class_names) if model is not None else None
    if (dataset is not None and data.notes.get("split_by") != "frame") or deployed is not None:
        # a Dataset handed over, or a trained model to compare with: the user trained on all of x_train, so D_att
        # comes out of D_val (README: Four roles for the data)
        data = dataclasses.replace(data, notes={**data.notes, "split_by": "user"})
    seed = config.dataset.split.seed
    data = _roles(config, data, seed)
    check_model_size(config, data)
    victim = build_victim(config.model, config.training, data, device, model_obj=model, train_fn=train_fn, fit_kwargs=fit_kwargs)
    _check_user_training(victim, config)
    if config.poisonability.enabled == "on" and not victim.builds_modules:
        raise AuditError("poisonability.enabled is 'on' but the victim is not a torch model (τ needs its logits)")
    if config.minimax is not None and not victim.builds_modules:
        raise AuditError("minimax: λ under attack needs a PyTorch victim (the back-gradient attack unrolls its training)")
    try:
        config = config.resolved(data.task, victim.attack_kinds)  # the profile's battery and settings, explicit
    except ValueError as err:
        raise AuditError(str(err)) from None
    convex = victim.builds_modules and _convex(victim, config.candidate_grid()[0])
    config = resolve_adaptive(config, data.task, victim.kind, convex, data.n_classes)  # the adaptive attackers, explicit
    for attack in config.attacks:
        cls = attack.attack
        if data.task not in cls.tasks:
            raise AuditError(f"attacks: {attack.name!r} does not apply to {data.task} (it supports {', '.join(cls.tasks)})")
        _check_victim_kind("attacks", attack.name, cls.victims, victim.attack_kinds)
    if "l1" in config.candidates and config.model.name not in ("lasso", "elastic_net") and (config.training.optimizer or "") != "fista":
        raise AuditError("candidates.l1: an L1 term needs model 'lasso' or 'elastic_net' (or training.optimizer 'fista')")
    for spec in config.defenses:
        if data.task not in spec.defense.tasks:
            raise AuditError(f"defenses: {spec.name!r} does not apply to {data.task} (it supports {', '.join(spec.defense.tasks)})")
        _check_victim_kind("defenses", spec.name, spec.defense.victims, (victim.kind,))
    out = Path(output_dir if output_dir is not None else config.output_dir)
    if out.exists() and not out.is_dir():
        raise AuditError(f"output directory {out} exists and is a file")
    run_dir = out / config.name
    if run_dir.exists() and not run_dir.is_dir():
        raise AuditError(f"run directory {run_dir} exists and is a file")
    workers = resolve_workers(config.executor.workers, config.executor.cell_threads, device) if config.executor.kind == "local" else 1
    # a Ray task's or a pool worker's torch threads (the numbers depend on them); None: this process's
    threads = config.executor.cell_threads if config.executor.kind == "ray" or workers > 1 else None
    if config.executor.kind == "ray":
        from audit.grid.distributed import require_ray

        require_ray()
        if device.type == "cpu" and config.executor.gpus_per_cell:
            share = config.executor.gpus_per_cell
            raise AuditError(f"executor.gpus_per_cell is {share:g} but the run's device is the CPU; set device: cuda or leave it out")
    digests = model_digests(victim, config.candidate_grid()[0], config.model, model)
    plan = RunPlan(config, data, victim, device, run_dir, deployed, threads, digests, workers=workers)
    plan.deployed_trivial_metric = trivial_metric(data.y_train, data.y_test, data.task) if deployed is not None else None
    plan.resplits, plan.splits_note = _resplits(config, data, resplit if dataset is not None else None)
    if plan.workers > 1:
        payload(plan)  # a run that cannot reach a worker process is refused before anything is written
    return plan


def resolve_workers(workers: int | str | None, cell_threads: int, device: torch.device) -> int:
    """How many worker processes run the cells (``executor.workers``): None → 1 (this process);
    ``auto`` → on a CPU run the CPUs this process may use over the threads per cell, on a GPU run 1."""
    if workers is None:
        return 1
    if workers == "auto":
        return 1 if device.type != "cpu" else max(1, available_cpus() // cell_threads)
    return int(workers)


def _roles(config: AuditConfig, data: Dataset, seed: int) -> Dataset:
    """``data`` with its four roles (README: Four roles for the data): D_att carved (no attack reads D_val), the
    defenses' own part of D_val where one reads it, each part checked scorable."""
    check_scorable(data, config.budgets)  # as the data came (then again on what carving D_att leaves)
    threat = config.threat
    data = data.with_attacker_split(threat.attacker_reads, threat.attacker_split, seed)
    if any(spec.defense.reads_validation for spec in config.defenses):
        data = data.with_defense_validation(seed)  # selection never reuses a defense's points
    check_scorable(data, config.budgets)
    return dataclasses.replace(data, notes={**data.notes, "split_seed": str(seed)})


def split_seed(seed: int, split: int) -> int:
    """The data seed of split ``split``: the configured ``dataset.split.seed`` for split 0, a derived one after."""
    return seed if split == 0 else derive_seed(seed, "split", split)


def _resplits(config: AuditConfig, data: Dataset, resplit: Callable[[int], Dataset] | None) -> tuple[list[Dataset], str | None]:
    """The data of splits 1 … k−1 (``config.splits`` = k): the partition re-drawn with :func:`split_seed` — the config's
    dataset loaded again, or ``resplit`` (the API's DataFrame) — and the reason when there are none although k > 1."""
    k = config.splits or 1
    if k == 1:
        return [], None
    if data.notes.get("split_by") == "user":
        return [], (
            f"splits: {k} asked for, 1 run — the split is the user's (an npz with its own validation/test "
            "split, a Dataset handed over, or a trained model), so the interval cannot cover split-to-split variation"
        )
    base = config.dataset.split.seed
    out = []
    for j in range(1, k):
        seed = split_seed(base, j)
        if resplit is not None:
            raw = resplit(seed)
        else:
            spec = config.dataset
            raw = load_dataset(spec.model_copy(update={"split": spec.split.model_copy(update={"seed": seed})}))
        out.append(_roles(config, raw, seed))
    return out, None


def check_model_size(config: AuditConfig, data: Dataset) -> None:
    """Refuse, before anything is allocated, a fully connected network whose parameters — with their gradients and
    two optimizer moments, 16 bytes each — would take more than half of this machine's memory."""
    if config.model.name not in ("mlp", "relu2"):
        return
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    d, c = data.n_features, data.n_classes or 1
    for width in config.candidates.get("width", [config.model.width]):
        for depth in config.candidates.get("depth", [config.model.depth]):
            if width is None:
                continue
            params = d * width + (int(depth) - 1) * width * width + width * c
            if 16 * params > total / 2:
                raise AuditError(
                    f"model: width {width:g} × depth {depth} on {d} features is {params:.3g} parameters, ≈ "
                    f"{16 * params / 2**30:.3g} GiB with gradients and optimizer state; this machine has "
                    f"{total / 2**30:.0f} GiB — use a smaller width"
                )


def _check_user_training(victim: Victim, config: AuditConfig) -> None:
    """A user's training function must take what the candidates vary: ρ (``l2``) or the whole ``hparams``."""
    own = getattr(victim, "user_training", None)
    if own is None or own.takes("hparams"):
        return
    varied = [axis for axis, values in config.candidates.items() if len(set(map(str, values))) > 1 and axis not in MODEL_AXES]
    missing = [axis for axis in varied if axis != "l2" or not own.takes("l2")]
    if missing:
        raise AuditError(
            f"training.factory / train_fn: the candidates vary {', '.join(missing)} but {own.name} takes neither "
            f"{'l2 nor ' if 'l2' in missing else ''}hparams; add the keyword to its signature"
        )


def _convex(victim: Victim, hparams: dict[str, Any]) -> bool:
    """Whether the victim built for ``hparams`` is softmax regression (built under a forked RNG: the
    caller's global generators are left as they were)."""
    with seeded_init(0):
        return is_convex_linear(victim.build(hparams))


def check_scorable(data: Dataset, budgets: list[float]) -> None:
    """Refuse data on which an audit cannot mean anything: a budget that rounds to no poison, an
    empty split, or (classification) a split with a single class, since its accuracy says nothing."""
    n = len(data.y_train)
    for name, y in (("train", data.y_train), ("validation", data.y_val), ("test", data.y_test)):
        if len(y) == 0:
            raise AuditError(f"dataset {data.name!r}: the {name} split is empty")
        if data.task == "classification" and len(np.unique(y)) < 2:
            raise AuditError(f"dataset {data.name!r}: the {name} split has a single class ({len(y)} points); every scored split needs two or more")
    small = [b for b in budgets if int(round(b * n)) < 1]  # as AuditAttack.n_poison rounds
    if small:
        raise AuditError(
            f"budgets: ε = {', '.join(f'{b:g}' for b in small)} of {n} training points is less than one poison; "
            f"use ε > {0.5 / n:.3g} or more training data"
        )


_KIND_NAMES = {"torch": "a PyTorch model", "sklearn": "a scikit-learn estimator"}


def _check_victim_kind(axis: str, name: str, supported: tuple[str, ...], kinds: tuple[str, ...]) -> None:
    """Refuse, before anything runs, an attack or defense that cannot work on this kind of victim
    (``kinds``: what it can be attacked as, :attr:`audit.models.victim.Victim.attack_kinds`)."""
    if not set(kinds) & set(supported):
        needs = " or ".join(_KIND_NAMES.get(k, k) for k in supported)
        raise AuditError(f"{axis}: {name!r} needs {needs} as the victim; this run's victim is {_KIND_NAMES.get(kinds[0], kinds[0])}")


def _prepare_store(plan: RunPlan, restart: bool) -> Store:
    """Open the run directory's store (call with the directory's lock held).

    A directory that exists, is not empty and holds no store is not a run directory: it is
    refused, never written into or cleaned. ``restart`` removes only what a previous run wrote.
    """
    store = Store(plan.run_dir)
    store.refuse_links()  # before anything reads or writes them: never a store elsewhere
    fingerprint = plan.fingerprint()
    if never_started(plan.run_dir):  # killed right after creating the store: nothing in it to keep
        store.close()
        for name in (STORE_FILE, *(STORE_FILE + side for side in ("-wal", "-shm", "-journal"))):
            refuse_link(plan.run_dir / name)
            (plan.run_dir / name).unlink(missing_ok=True)
        store = Store(plan.run_dir)
    if store.path.is_file():
        if not is_run_directory(plan.run_dir):
            raise AuditError(f"{store.path} is not a readable poison-audit store; move it away or choose another name/output directory")
        previous = store.meta("fingerprint")
        if previous is not None and previous != fingerprint and not restart:
            before, now = store.meta("threads"), plan.numerics()["threads"]
            store.close()
            if before is not None and before != now:
                raise AuditError(
                    f"{plan.run_dir} was run with torch at {before} thread(s) per cell and this run would use {now} "
                    "(--threads, or executor.cpus_per_cell in worker processes and Ray tasks); CPU numbers depend on it: use the same count, "
                    "or pass --restart to replace the run"
                )
            raise AuditError(
                f"{plan.run_dir} holds a run of a different config or training procedure "
                f"(fingerprint {previous}, now {fingerprint}); "
                "pass --restart to replace it or choose another name/output directory"
            )
        if restart:
            store.close()
            remove_run(plan.run_dir)
            store = Store(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(plan.run_dir)  # a killed run's half-written poisons; finished ones are kept
    data_digests = plan.dataset.digests()
    stored_digests = store.meta("data_sha256")
    if stored_digests is not None and stored_digests != data_digests:
        changed = ", ".join(k for k in data_digests if stored_digests.get(k) != data_digests[k])
        store.close()
        raise AuditError(
            f"{plan.run_dir} was run on other data (the {changed} split's SHA-256 differs from what the run recorded); "
            "restore the data, or pass --restart to replace the run"
        )
    if store.meta("fingerprint") is None:
        store.initialise(
            {
                "fingerprint": fingerprint,
                "training": plan.victim.procedure,
                "config": plan.config.model_dump(mode="json"),
                "config_schema_version": SCHEMA_VERSION,
                "dataset": plan.dataset.describe(),
                "victim": plan.victim.description,
                "victim_kind": plan.victim.kind,
                "victim_attack_kinds": list(plan.victim.attack_kinds),  # a scikit-learn model with a torch surrogate: both
                "victim_caveats": plan.victim.caveats,  # said by the report, summary.json and the record
                "device": str(plan.device),
                "device_name": torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else platform.processor() or platform.machine(),
                "versions": package_versions(),
                "created": time.time(),
                "total_cells": len(plan.cells()),
                "cell_seeds": plan.seed_plan(),
                "splits": plan.splits_record(),  # before plan_digest: the grid's keys depend on the number of splits
                "plan_digest": plan_digest(grid_plan(plan.seed_plan(), plan.config.budgets, plan.n_splits)),  # checked by every reader
                "deployed_test_metric": plan.deployed_test_metric,
                "threads": plan.numerics()["threads"],
                "data_sha256": data_digests,
                "model_sha256": plan.model_digests,
            }
        )
    elif stored_digests is None:  # a run begun before the digests were recorded: the data of the cells still to run
        store.set_meta("data_sha256", data_digests)
        store.set_meta("model_sha256", plan.model_digests)
    store.set_meta("deployed", plan.deployed())
    return store


def run_audit(
    config: AuditConfig,
    *,
    model: Any = None,
    dataset: Dataset | None = None,
    output_dir: str | Path | None = None,
    restart: bool = False,
    progress: bool = True,
    train_fn: Callable[..., Any] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Run (or resume) the audit a config describes and return its run directory.

    Finished cells in the run directory's store are read, not recomputed; failed cells
    are retried. The HTML report is written separately (:func:`audit.report.write_report`).
    """
    plan = plan_audit(config, model=model, dataset=dataset, output_dir=output_dir, train_fn=train_fn, fit_kwargs=fit_kwargs)
    return run_plan(plan, restart=restart, progress=progress)


def run_plan(plan: RunPlan, *, restart: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a validated plan into its run directory and return the directory.

    The directory is locked for the whole run (:class:`audit.grid.lock.RunLock`): a second
    ``run``, ``--restart`` or ``report`` of it fails with one line instead of racing. A
    directory that exists, holds other files and no store is not a run directory: it is
    refused, never written into or cleaned.
    """
    if _holds_foreign_files(plan.run_dir) and not (plan.run_dir / STORE_FILE).is_file():
        raise AuditError(f"{plan.run_dir} exists and is not a poison-audit run directory (it holds other files); choose another name")
    with RunLock(plan.run_dir, "run"):
        store = _prepare_store(plan, restart)
        try:
            with worker_pool(plan) as pool:
                execute(plan, store, progress, pool)
                run_confirmation(plan, store, progress, pool)
            if plan.config.minimax is not None:
                run_minimax(plan, store, progress)
        finally:
            store.close()
    return plan.run_dir


def execute(plan: RunPlan, store: Store, progress: bool, pool: WorkerPool | None = None) -> None:
    """Run the plan's unfinished cells (:meth:`RunPlan.work_cells`) with the configured executor: Ray, the
    run's worker ``pool`` (``executor.workers`` > 1), or this process."""
    if plan.config.executor.kind == "ray":
        from audit.grid.distributed import run_ray

        run_ray(plan, store, progress)
    elif pool is not None:
        pool.run(plan, store, progress)
    else:
        run_local(plan, store, progress)


CONFIRMATION_META = "confirmation"


def run_confirmation(plan: RunPlan, store: Store, progress: bool, pool: WorkerPool | None = None) -> None:
    """The confirmation stage (:mod:`audit.grid.confirm`), after the grid; its state goes to the store's
    ``confirmation`` meta, which the report reads.

    Round by round: ask the analysis which settings the verdict rests on (the recommended one and
    those tied with it, :func:`audit.report.analysis.confirmation_targets`, computed with every
    confirmation cell stored so far); confirm those not yet confirmed — the battery at its paper's
    settings, every seed, at the confirming budgets — and decide again. Confirmation can only raise
    a setting's worst case, so it ends when the recommended setting and its ties are all confirmed
    (at most once per setting). A resumed run first finishes the settings it had chosen, then
    decides again from the same stored results, so it chooses as the interrupted run would have.
    """
    from audit.attacks import ATTACKS
    from audit.catalog import BATTERY
    from audit.report.analysis import confirmation_targets  # the verdict's rule lives with the report (pyproject: import layers)

    cfg = plan.config
    store.set_meta("config", cfg.model_dump(mode="json"))  # confirm is outside the fingerprint: the stored config says how this run confirms
    kinds = set(plan.victim.attack_kinds)
    applies = [e.id for e in BATTERY if e.applies(ATTACKS[e.attack], plan.dataset.task, kinds)]
    state: dict[str, Any] = {
        "enabled": cfg.confirm.enabled,
        "budgets": cfg.confirm_budgets,
        "battery": list(cfg.confirm.attacks or []),
        "left_out": [i for i in applies if i not in (cfg.confirm.attacks or [])],
        "attacks": [key for key, _, _ in plan.all_axes()[len(plan.attack_axes()) :]],
        "pairs": [],
        "rounds": [],
        "cells": [],
        "status": "done",
    }
    if not cfg.confirm.enabled or not cfg.confirmation_attacks():  # off, or the grid ran the confirming battery itself
        store.set_meta(CONFIRMATION_META, state)
        return
    previous = store.meta(CONFIRMATION_META) or {}
    pairs: list[tuple[str, str]] = [(c, d) for c, d in previous.get("pairs", [])]
    rounds: list[dict[str, Any]] = list(previous.get("rounds", [])) if pairs else []
    plan.confirming = True
    try:
        for _ in range(len(cfg.candidate_grid()) * len(cfg.defense_keys) + 1):
            plan.confirm_pairs = pairs
            state.update(pairs=[list(p) for p in pairs], rounds=rounds, cells=[c.key for c in plan.confirmation_cells()], status="running")
            store.set_meta(CONFIRMATION_META, state)
            execute(plan, store, progress, pool)
            picked, wanted = confirmation_targets(plan.run_dir)
            new = [p for p in wanted if p not in pairs]
            if not new:
                break
            rounds.append({"recommended": list(picked) if picked else None, "confirmed": [list(p) for p in new]})
            pairs = pairs + new
    finally:
        plan.confirming = False
    state["status"] = "done"
    store.set_meta(CONFIRMATION_META, state)


def _holds_foreign_files(run_dir: Path) -> bool:
    """True when ``run_dir`` has entries other than what a run writes (its lock included)."""
    if not run_dir.is_dir():
        return False
    ours = {*RUN_FILES, LOCK_FILE, "poisons"}
    return any(p.name not in ours and not p.name.endswith(".tmp") for p in run_dir.iterdir())


def run_local(plan: RunPlan, store: Store, progress: bool) -> None:
    """The local executor: the grid's unfinished units (:func:`audit.grid.work.plan_work`) in run
    order in this process, each result stored as it ends."""
    fingerprint, device = plan.fingerprint(), str(plan.device)
    jobs, finished = plan_work(plan, store, fingerprint)
    bar = progress_bar(plan, finished, progress)
    first: dict[tuple[Candidate, int, int], CleanOutcome] = {}
    for group in jobs:
        reuse = first.get((group.candidate, group.split, group.reuse_seed)) if group.reuse_seed is not None else None
        clean = clean_unit(plan, group.candidate, group.seed, reuse, group.split)
        first[group.candidate, group.split, group.seed] = clean
        if clean.failure is not None:
            for c in group.cells:
                store.put_cell(failure_cell(c, clean.failure, device))
                bar.update(1)
            continue
        clean.writes.replay(store)
        crafted: dict[tuple[str, float], Poisons] = {}
        for job in group.poison_jobs:
            warm = crafted.get(job.warm) if job.warm is not None else job.warm_cached
            poisons = job.cached if job.cached is not None else craft_unit(plan, clean, job.attack, job.budget, warm)
            if job.cached is None and poisons.failure is None:
                assert poisons.x is not None and poisons.y is not None
                store.save_poisons(job.key, poisons.x, poisons.y, poisons.diagnostics)
            crafted[job.attack, job.budget] = poisons
            for c in job.cells:
                store.put_cell(defense_unit(plan, clean, c, poisons))
                bar.update(1)
        for adaptive in group.adaptive_jobs:
            initial = crafted.get(adaptive.initial_job) if adaptive.initial_job is not None else adaptive.initial
            cell, new = adaptive_unit(plan, clean, adaptive, initial)
            if new is not None and new.x is not None and new.y is not None:
                store.save_poisons(adaptive.key, new.x, new.y, new.diagnostics)
            store.put_cell(cell)
            bar.update(1)
    bar.close()


def minimax_bases(cfg: AuditConfig) -> list[dict[str, Any]]:
    """The candidates with their ρ left out (λ is what the policies choose), without repeats, in grid order."""
    out: list[dict[str, Any]] = []
    for hp in cfg.candidate_grid():
        base = {k: v for k, v in hp.items() if k != "l2"}
        if base not in out:
            out.append(base)
    return out


def run_minimax(plan: RunPlan, store: Store, progress: bool = True) -> None:
    """The λ-policy stage (:mod:`audit.grid.minimax`): one row per (base, policy, budget, seed), each stored as it ends.

    Resumes like the grid: rows already stored are not recomputed. A failure ends the
    (base, seed); its error goes to stderr and to the store (the report shows it); the grid's
    results stand.
    """
    import sys

    from audit.grid.minimax import PolicySettings, policy_rows

    cfg = plan.config
    spec, attack = cfg.minimax, cfg.minimax_attack()
    assert spec is not None and attack is not None
    settings = PolicySettings(
        dict(attack.params), spec.l2_range, spec.l2_lr, spec.clean_iterations, spec.warm_start, spec.cv_folds, list(spec.cv_grid), spec.retune()
    )
    stored = store.policy_rows()
    errors: dict[str, str] = {}
    for base in minimax_bases(cfg):
        key = candidate_key(base)
        for seed in cfg.seeds:
            done = {(r.policy, r.budget): r for r in stored if r.base == key and r.seed == seed}
            expected = 3 * (len(cfg.budgets) + 1)
            if len(done) >= expected:
                continue
            attack_seed = lambda policy, eps: derive_seed(seed, key, "minimax", policy, eps)  # noqa: E731
            try:
                for row in policy_rows(plan.dataset, plan.victim, base, cfg.budgets, seed, key, settings, clean_train_seed(seed), attack_seed, done):
                    store.put_policy(row)
                    if progress:
                        print(
                            f"minimax {row.policy} ε={row.budget:g} seed {seed}: λ={row.lam:.2f} metric {row.test_metric:.2f} ({row.seconds:.0f} s)",
                            file=sys.stderr,
                        )
            except Exception as err:  # noqa: BLE001 - the grid's results stand; the report says what failed
                message = f"{type(err).__name__}: {err}".splitlines()[0]
                errors[f"{candidate_label(base)}, seed {seed}"] = message
                print(f"minimax (seed {seed}) failed: {message}", file=sys.stderr)
    store.set_meta("minimax_errors", errors)
