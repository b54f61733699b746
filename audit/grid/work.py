"""The grid's work as units that never touch the store: each returns what is to be written.

An audit is a grid of independent retrainings (README: How the audit works). :func:`plan_work` reads
the store once and lays the unfinished part out as :class:`GroupJob` s — one per ``(h, s)``
with pending cells — each holding its :class:`PoisonJob` s (one per ``(h, a, ε, s)``, shared
by every defense cell of it) and :class:`AdaptiveJob` s. Four pure units do the computing:

- :func:`clean_unit`: the clean model of ``(h, s)``, what each defense costs on clean data, the
  poisonability targets — as :class:`StoreWrites` to replay;
- :func:`craft_unit`: one poison set;
- :func:`defense_unit`: one cell (defense, retraining, metrics) from a poison set;
- :func:`adaptive_unit`: one cell of the adaptive stage (poisons crafted knowing its defense).

The local executor (:func:`audit.grid.runner.run_local`) calls them in run order in this
process; the Ray executor (:mod:`audit.grid.distributed`) runs them as tasks, the poison set as
an object-store reference the defense cells depend on. Either way only the coordinator writes
the store, and the same unit with the same inputs gives the same numbers (its seeds derive from
the cell, never from the order units run in).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.attacks import AttackContext
from audit.config import CONFIRM_SUFFIX, AuditConfig, DefenseSpec
from audit.data import Dataset
from audit.errors import AuditError
from audit.grid.adaptive import craft_adaptive, is_adaptive
from audit.grid.cells import GridCell, apply_defense
from audit.grid.plan import RunPlan
from audit.grid.store import Cell, Store, derive_seed
from audit.jsonio import jsonable, pack_points
from audit.maths.certificate import certified_objective
from audit.maths.poisonability import gradpc_target, module_metric, target_thresholds, thresholds
from audit.maths.sgd_guarantee import sgd_certificate as maths_sgd_certificate
from audit.models import Candidate
from audit.models.structure import is_convex_linear


def poison_cache_key(candidate: str, attack_key: str, params: dict[str, Any], budget: float, seed: int, fingerprint: str, split: int = 0) -> str:
    """The key a cell's poisons are cached under: they depend on the candidate, the attack and its
    parameters, ε, the seed, the split (from the second on) and the run's fingerprint, not on the defense
    (every defense sees the same poisons)."""
    parts: list[Any] = [candidate, attack_key, params, budget, seed, fingerprint]
    return json.dumps(parts + [split] if split else parts, sort_keys=True)


def clean_train_seed(seed: int) -> int:
    """The seed a candidate is trained with on clean data (and retrained with after poisoning) for grid seed ``seed``."""
    return derive_seed(seed, "train")


# ---------------------------------------------------------------------------------------------- results of units
@dataclass(frozen=True)
class Failure:
    """Why a unit failed, picklable (an exception may not be): its one-line message and traceback tail."""

    message: str
    traceback: list[str]

    @classmethod
    def of(cls, err: BaseException) -> Failure:
        last = f"{type(err).__name__}: {err}".strip().splitlines()[0] if str(err) else type(err).__name__
        return cls(last, traceback.format_exception(err)[-6:])


def failure_cell(c: GridCell, failure: Failure, device: str) -> Cell:
    """The stored row of a cell that failed (the report lists it; a re-run retries it)."""
    return Cell(**c.identity(), status="failed", device=device, error=failure.message, diagnostics=json.dumps({"traceback": failure.traceback}))


@dataclass
class StoreWrites:
    """Store writes a unit made, to be replayed by the one writer (:meth:`replay`); quacks like
    the :class:`~audit.grid.store.Store` methods the clean stage calls."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def put_clean(self, *args: Any) -> None:
        self.calls.append(("put_clean", args))

    def put_clean_defended(self, *args: Any) -> None:
        self.calls.append(("put_clean_defended", args))

    def put_target(self, *args: Any) -> None:
        self.calls.append(("put_target", args))

    def copy_targets(self, other: StoreWrites, seed: int) -> bool:
        """``other``'s targets again under ``seed`` (a seed-free victim: the same clean model at every seed of a split);
        False when it has none."""
        targets = [args for name, args in other.calls if name == "put_target"]
        for args in targets:
            self.put_target(args[0], seed, *args[2:])
        return bool(targets)

    def replay(self, store: Store) -> None:
        for name, args in self.calls:
            getattr(store, name)(*args)


@dataclass
class CleanOutcome:
    """The clean stage of one ``(h, j, s)``: the fitted clean model (None when it failed), its metrics
    and per-point scores (for paired standard errors), and the store writes."""

    candidate: Candidate
    seed: int
    split: int = 0
    fitted: Any = None
    metrics: tuple[float, float] = (math.nan, math.nan)
    points: tuple[np.ndarray, np.ndarray] | None = None
    writes: StoreWrites = field(default_factory=StoreWrites)
    failure: Failure | None = None


@dataclass
class Poisons:
    """One crafted (or cached) poison set ``(x_p, y_p)`` with the attack's diagnostics and the
    seconds crafting took; ``failure`` instead when the attack raised."""

    x: np.ndarray | None = None
    y: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    failure: Failure | None = None

    @property
    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        return None if self.x is None or self.y is None else (self.x, self.y, self.diagnostics)


# ---------------------------------------------------------------------------------------------- the work, laid out
@dataclass
class PoisonJob:
    """The poisons of one ``(h, a, ε, s)`` and the pending defense cells that use them."""

    attack: str
    budget: float
    key: str  # the poison cache key
    cached: Poisons | None
    cells: list[GridCell]
    #: where a warm-starting attack (AuditAttack.warm_starts) starts: its poisons at the next smaller budget —
    #: ``warm``, a poison job of this run, or ``warm_cached``, poisons cached by an earlier one (neither: a cold start)
    warm: tuple[str, float] | None = None
    warm_cached: Poisons | None = None


@dataclass
class AdaptiveJob:
    """One pending adaptive cell: its poison cache key and cached poisons, and where its
    filter-in-the-loop rounds start — the grid attack's poisons of the same cell (``initial_job``:
    a poison job of this run; ``initial``: poisons cached by an earlier one)."""

    cell: GridCell
    key: str
    cached: Poisons | None
    initial_job: tuple[str, float] | None = None
    initial: Poisons | None = None


@dataclass
class GroupJob:
    """What is left of one ``(h, j, s)``: its clean stage, poison jobs and adaptive cells.
    ``reuse_seed``: a seed-free candidate's earlier group (of the same split) whose clean model this one reuses."""

    candidate: Candidate
    seed: int
    cells: list[GridCell]
    poison_jobs: list[PoisonJob]
    adaptive_jobs: list[AdaptiveJob]
    reuse_seed: int | None = None
    split: int = 0


def plan_work(plan: RunPlan, store: Store, fingerprint: str) -> tuple[list[GroupJob], int]:
    """The unfinished part of the grid, in run order, and how many cells are finished already."""
    cfg = plan.config
    cells = plan.work_cells()
    done = store.finished_keys()
    groups: dict[tuple[Candidate, int, int], list[GridCell]] = {}
    for c in cells:
        groups.setdefault((c.candidate, c.split, c.seed), []).append(c)
    first_seed: dict[tuple[Candidate, int], int] = {}  # seed-free victims: the first group of (h, j) run now fits its one clean model
    jobs = []
    for (cand, split, seed), group in groups.items():
        pending = [c for c in group if c.key not in done]
        if not pending:
            continue
        reuse = first_seed.get((cand, split)) if plan.seed_free(cand) else None
        if plan.seed_free(cand) and reuse is None:
            first_seed[cand, split] = seed
        by_poison: dict[tuple[str, float], list[GridCell]] = {}
        for c in pending:
            if not is_adaptive(c.attack):
                by_poison.setdefault((c.attack, c.budget), []).append(c)
        poison_jobs = []
        for (attack_key, eps), defense_cells in by_poison.items():
            spec = cfg.attack_spec(attack_key)
            key = poison_cache_key(cand.key, attack_key, spec.params, eps, seed, fingerprint, split)
            pjob = PoisonJob(attack_key, eps, key, _cached(store, key), defense_cells)
            smaller = [b for b in budgets_of(plan, attack_key) if b < eps]
            screened = _screened_poisons(plan, store, cand, attack_key, eps, seed, fingerprint, split) if pjob.cached is None else None
            if screened is not None and spec.attack.warm_starts:
                pjob.warm_cached = screened  # a confirmation starts where the screen's attack ended (never below it)
            elif pjob.cached is None and spec.attack.warm_starts and smaller:
                if (attack_key, smaller[-1]) in by_poison:
                    pjob.warm = (attack_key, smaller[-1])
                else:
                    pjob.warm_cached = _cached(store, poison_cache_key(cand.key, attack_key, spec.params, smaller[-1], seed, fingerprint, split))
            poison_jobs.append(pjob)
        adaptive_jobs = []
        grid_keys = {a.key for a in cfg.attacks} | {a.key for a in cfg.confirmation_attacks()}  # attacks with non-adaptive cells
        for c in (c for c in pending if is_adaptive(c.attack)):
            axis_key, spec, _ = next(axis for axis in plan.all_axes() if axis[0] == c.attack)
            setting = {"params": spec.params, "defense": cfg.defense_spec(c.defense).model_dump(mode="json"), "rounds": cfg.adaptive.rounds}
            job = AdaptiveJob(c, poison_cache_key(cand.key, axis_key, setting, c.budget, seed, fingerprint, split), None)
            job.cached = _cached(store, job.key)
            if job.cached is None and spec.key in grid_keys:
                if (spec.key, c.budget) in by_poison:
                    job.initial_job = (spec.key, c.budget)
                else:
                    job.initial = _cached(store, poison_cache_key(cand.key, spec.key, spec.params, c.budget, seed, fingerprint, split))
            adaptive_jobs.append(job)
        jobs.append(GroupJob(cand, seed, pending, poison_jobs, adaptive_jobs, reuse, split))
    return jobs, sum(c.key in done for c in cells)


def _screened_poisons(
    plan: RunPlan, store: Store, cand: Candidate, attack_key: str, eps: float, seed: int, fingerprint: str, split: int = 0
) -> Poisons | None:
    """For a confirmation attack (``<id>@paper``), the screen's poisons of the same battery entry at the same candidate,
    budget and seed, where the grid ran it and cached them: the paper-strength attack takes them as one more start,
    so its objective never ends below the screen's. None for any other attack or where there are none."""
    if not attack_key.endswith(CONFIRM_SUFFIX):
        return None
    grid = next((a for a in plan.config.attacks if a.key == attack_key.removesuffix(CONFIRM_SUFFIX)), None)
    if grid is None or eps not in plan.config.budgets or seed not in plan.config.attack_seeds(grid):
        return None
    return _cached(store, poison_cache_key(cand.key, grid.key, grid.params, eps, seed, fingerprint, split))


def progress_bar(plan: RunPlan, finished: int, progress: bool, where: str = "") -> Any:
    """The executors' progress bar over :meth:`RunPlan.work_cells` (``where``: how they run, in the label)."""
    from tqdm import tqdm

    label = f"audit {plan.config.name}" + (f" ({where})" if where else "")
    return tqdm(total=len(plan.work_cells()), initial=finished, disable=not progress, unit="cell", desc=label, dynamic_ncols=True)


def budgets_of(plan: RunPlan, attack_key: str) -> list[float]:
    """The budgets an attack key's cells run at, ascending: the grid's, or the confirming budgets for a confirmation attack."""
    return plan.config.confirm_budgets if attack_key in {a.key for a in plan.config.confirmation_attacks()} else plan.config.budgets


def _cached(store: Store, key: str) -> Poisons | None:
    found = store.load_poisons(key)
    return None if found is None else Poisons(found[0], found[1], found[2])


# ---------------------------------------------------------------------------------------------- the units
def clean_unit(plan: RunPlan, candidate: Candidate, seed: int, reuse: CleanOutcome | None = None, split: int = 0) -> CleanOutcome:
    """The clean stage of ``(h, j, s)``: train on split j's ``D_tr`` (or take ``reuse``'s model, a seed-free
    candidate's of the same split), score it, apply each defense to clean data, compute the poisonability targets.

    Never raises: a failed fit is the outcome's ``failure`` (every cell of the group then fails
    with it); a defense or threshold that fails on clean data is recorded as such.
    """
    cfg, data, victim = plan.config, plan.data(split), plan.victim
    train_seed = clean_train_seed(seed)
    out = CleanOutcome(candidate, seed, split)
    reused = reuse if reuse is not None and reuse.failure is None else None
    t0 = time.perf_counter()
    try:
        clean = reused.fitted if reused is not None else victim.fit(data.x_train, data.y_train, candidate.hparams, train_seed)
        clean_val, clean_test = clean.metric(data.x_val, data.y_val), clean.metric(data.x_test, data.y_test)
        clean_points = (clean.pointwise(data.x_val, data.y_val), clean.pointwise(data.x_test, data.y_test))
    except Exception as err:  # the whole (h, s) group fails; the audit goes on
        out.failure = Failure.of(err)
        return out
    out.fitted, out.metrics, out.points = clean, (clean_val, clean_test), clean_points
    metric_se = accuracy_se if data.task == "classification" else standard_error
    clean_record = {
        **clean.train_result,
        "metric_se": {"val": metric_se(clean_points[0]), "test": metric_se(clean_points[1])},
        **_certified_objective(clean, data, candidate, 0.0),
    }
    out.writes.put_clean(candidate.key, seed, clean_val, clean_test, time.perf_counter() - t0, clean_record, split)
    for defense_spec in cfg.defenses:
        if defense_spec.name != "none":
            record_clean_defense(out.writes, plan, candidate, seed, train_seed, defense_spec, split)
    if reused is not None and out.writes.copy_targets(reused.writes, seed):
        pass  # the same clean model: the same targets and thresholds
    elif wants_thresholds(cfg, data, clean):
        try:
            record_thresholds(out.writes, cfg, data, clean, candidate, seed, split)
        except Exception as err:  # τ is diagnostic: record why it is missing, keep auditing
            out.writes.put_target(candidate.key, seed, -1.0, math.nan, math.nan, {"error": f"{type(err).__name__}: {err}"}, {}, split)
    return out


def craft_unit(plan: RunPlan, clean: CleanOutcome, attack_key: str, budget: float, warm: Poisons | None = None) -> Poisons:
    """The poisons of ``(h, a, ε, s)`` against the clean model (never raises: a failure is returned); ``warm``: the
    same attack's poisons at the next smaller budget, which a warm-starting attack starts from."""
    if clean.failure is not None:
        return Poisons(failure=clean.failure)
    spec = plan.config.attack_spec(attack_key)
    t0 = time.perf_counter()
    start = (warm.x, warm.y) if warm is not None and warm.failure is None and warm.x is not None and warm.y is not None else None
    try:
        data = plan.data(clean.split)
        ctx = AttackContext(
            data,
            plan.victim,
            clean.fitted,
            clean.candidate,
            budget,
            derive_seed(clean.seed, clean.candidate.key, attack_key, budget),
            start if spec.attack.warm_starts else None,
        )
        attack = spec.attack.for_context(dict(spec.params), ctx)
        x_p, y_p = attack.poison(data.x_train, data.y_train)
        return Poisons(x_p, y_p, attack.diagnostics.to_json(), time.perf_counter() - t0)
    except Exception as err:
        return Poisons(failure=Failure.of(err))


def defense_unit(plan: RunPlan, clean: CleanOutcome, c: GridCell, poisons: Poisons) -> Cell:
    """One grid cell: the cell's defense on ``D_tr`` plus ``poisons``, the retraining, its metrics."""
    if clean.failure is not None or poisons.failure is not None:
        return failure_cell(c, clean.failure or poisons.failure, str(plan.device))  # type: ignore[arg-type]
    assert poisons.x is not None and poisons.y is not None
    return _defended_cell(plan, clean, c, poisons.x, poisons.y, poisons.diagnostics, poisons.seconds)


def adaptive_unit(plan: RunPlan, clean: CleanOutcome, job: AdaptiveJob, initial: Poisons | None) -> tuple[Cell, Poisons | None]:
    """One cell of the adaptive stage: poisons crafted knowing the cell's defense (or ``job.cached``),
    then the defense and the retraining as for any cell. Returns the cell and the new poisons to cache."""
    c, cfg = job.cell, plan.config
    if clean.failure is not None:
        return failure_cell(c, clean.failure, str(plan.device)), None
    key, spec, _ = next(axis for axis in plan.all_axes() if axis[0] == c.attack)
    defense = cfg.defense_spec(c.defense)
    t0 = time.perf_counter()
    try:
        if job.cached is not None:
            x_p, y_p, diagnostics, applied, crafted = job.cached.x, job.cached.y, job.cached.diagnostics, None, None
        else:
            seed = derive_seed(c.seed, c.candidate.key, key, c.budget, c.defense)
            ctx = AttackContext(plan.data(c.split), plan.victim, clean.fitted, c.candidate, c.budget, seed)
            defense_seed = derive_seed(c.seed, c.candidate.key, c.attack, c.budget, c.defense)
            start = initial.as_tuple if initial is not None else None
            x_p, y_p, diagnostics, applied = craft_adaptive(spec, defense, ctx, cfg.adaptive.rounds, defense_seed, clean_train_seed(c.seed), start)
            crafted = Poisons(x_p, y_p, diagnostics)
    except Exception as err:
        return failure_cell(c, Failure.of(err), str(plan.device)), None
    assert x_p is not None and y_p is not None
    cell = _defended_cell(plan, clean, c, x_p, y_p, diagnostics["attack"], time.perf_counter() - t0, {"adaptive": diagnostics["adaptive"]}, applied)
    return cell, crafted


def _defended_cell(
    plan: RunPlan,
    clean: CleanOutcome,
    c: GridCell,
    x_p: np.ndarray,
    y_p: np.ndarray,
    attack_diag: dict,
    attack_seconds: float,
    extra: dict[str, Any] | None = None,
    applied: tuple[Any, np.ndarray, Any] | None = None,
) -> Cell:
    """Apply the cell's defense to ``D_tr`` plus the poisons, retrain and return the cell's row; ``applied``:
    that defense's result already computed on these very poisons (the adaptive stage's kept round)."""
    data, victim = plan.data(c.split), plan.victim
    train_seed = clean_train_seed(c.seed)
    assert clean.points is not None
    t0 = time.perf_counter()
    try:
        if _modifies(plan, c.attack):  # the poisoned training set itself (Wang et al. 2021's regimes): changed points are the poisons
            x_mix, y_mix = x_p, y_p
            flat = (len(x_p), -1)
            is_poison = np.any(x_p.reshape(flat) != data.x_train.reshape(flat), axis=1) | (y_p != data.y_train)
        else:
            x_mix = np.concatenate([data.x_train, x_p])
            y_mix = np.concatenate([data.y_train, y_p])
            is_poison = np.r_[np.zeros(len(data.y_train), bool), np.ones(len(y_p), bool)]
        if applied is None:
            spec = plan.config.defense_spec(c.defense)
            defense = spec.defense.for_cell(c.budget, derive_seed(c.seed, c.candidate.key, c.attack, c.budget, c.defense), data, spec.params)
            applied = apply_defense(defense, x_mix, y_mix, victim, c.candidate, train_seed)
        poisoned, keep, defense_diag = applied
        val_points = poisoned.pointwise(data.x_val, data.y_val)
        return Cell(
            **c.identity(),
            status="ok",
            clean_val=clean.metrics[0],
            clean_test=clean.metrics[1],
            poisoned_val=poisoned.metric(data.x_val, data.y_val),
            poisoned_test=poisoned.metric(data.x_test, data.y_test),
            n_poison=int(is_poison.sum()),
            poisons_removed=int((~keep & is_poison).sum()),
            clean_removed=int((~keep & ~is_poison).sum()),
            seconds=attack_seconds + time.perf_counter() - t0,
            device=str(plan.device),
            diagnostics=json.dumps(
                {
                    "attack": attack_diag,
                    "defense": jsonable(defense_diag),
                    "retrain": poisoned.train_result,
                    "se": _paired_errors(clean.points, poisoned, data, val_points),
                    "val_points": pack_points(val_points, data.task),  # for paired ties between settings
                    **_attacker_split_metrics(clean, poisoned, data),
                    **_certified_objective(poisoned, data, c.candidate, c.budget),
                    **(sgd_certificate(clean, data, x_p, y_p, train_seed) if c.defense == "none" and _modifies(plan, c.attack) else {}),
                    **(_feasible_damage(plan, c, x_p, y_p, poisoned) if c.defense == "none" and not _modifies(plan, c.attack) else {}),
                    **(extra or {}),
                }
            ),
        )
    except Exception as err:
        return failure_cell(c, Failure.of(err), str(plan.device))


def _feasible_damage(plan: RunPlan, c: GridCell, x_p: np.ndarray, y_p: np.ndarray, poisoned: Any) -> dict[str, Any]:
    """Under ``dataset.domain: relaxed`` with a domain the data has (a table's): ``{"feasible": …}``, the model retrained on
    D_tr plus the cell's poisons mapped into that domain (:meth:`FeatureDomain.project`) — its validation and test
    metrics and how many poisons the mapping changed — so the report shows both; ``{}`` otherwise."""
    data = plan.data(c.split)
    if data.relaxed_domain is None:
        return {}
    x_f, changed = data.relaxed_domain.project(x_p)
    if changed:
        x_mix, y_mix = np.concatenate([data.x_train, x_f]), np.concatenate([data.y_train, y_p])
        poisoned = plan.victim.fit(x_mix, y_mix, c.candidate.hparams, clean_train_seed(c.seed))
    return {"feasible": {"val": poisoned.metric(data.x_val, data.y_val), "test": poisoned.metric(data.x_test, data.y_test), "changed": changed}}


def _attacker_split_metrics(clean: CleanOutcome, poisoned: Any, data: Dataset) -> dict[str, Any]:
    """``{"attacker_split": {"clean": …, "poisoned": …}}``: the metrics on D_att, the split the attack optimised
    (its damage there is what it fitted; the verdict's is on D_test); ``{}`` in the papers' setting (no D_att)."""
    if data.x_att is None or data.y_att is None or clean.fitted is None:
        return {}
    return {"attacker_split": {"clean": clean.fitted.metric(data.x_att, data.y_att), "poisoned": poisoned.metric(data.x_att, data.y_att)}}


def sgd_certificate(clean: CleanOutcome, data: Dataset, x_p: np.ndarray, y_p: np.ndarray, seed: int) -> dict[str, Any]:
    """Theorem 2.2 of Wang et al. (2021) for a softmax-regression victim and an attack that modifies the
    training set: ``{"sgd_guarantee": …}`` — the bound on projected SGD's excess clean risk on this
    poisoned oracle and the excess risk measured (:func:`audit.maths.sgd_guarantee.sgd_certificate`); ``{}`` otherwise."""
    module = clean.fitted.module if clean.fitted is not None else None
    if module is None or data.task != "classification" or data.n_classes is None or not is_convex_linear(module):
        return {}
    try:
        g = maths_sgd_certificate(module, data.x_train, data.y_train, x_p, y_p, data.n_classes, seed)
    except Exception as err:  # a certificate that cannot be computed never fails the cell it describes
        return {"sgd_guarantee": {"error": f"{type(err).__name__}: {err}"}}
    return {"sgd_guarantee": g.as_dict()}


def _modifies(plan: RunPlan, attack_key: str) -> bool:
    """Whether a cell's attack (a grid attack or an adaptive attacker) modifies the training set instead of adding to it."""
    return any(key == attack_key and spec.attack.modifies for key, spec, _ in plan.all_axes())


# ---------------------------------------------------------------------------------------------- what the units compute
def _certified_objective(fitted: Any, data: Dataset, cand: Candidate, budget: float) -> dict[str, float]:
    """``{"clean_objective": …}`` of the model trained in a cell for softmax regression and ridge
    (:func:`audit.maths.certificate.certified_objective`), so the report can put each attack beside the bound; ``{}`` otherwise."""
    value = certified_objective(fitted.module, data.x_train, data.y_train, data.task, cand.rho, budget)
    return {} if value is None else {"clean_objective": value}


def standard_error(points: np.ndarray) -> float:
    """Standard error of the mean of per-point values (n ≥ 2; 0 for fewer)."""
    return float(np.std(points, ddof=1) / np.sqrt(len(points))) if len(points) > 1 else 0.0


def accuracy_se(points: np.ndarray) -> float:
    """SE of an accuracy in points from per-point 0/100 scores, Agresti–Coull adjusted (two successes and two
    failures added): never 0, so a model right on every point still gets an interval of width ~1/n."""
    n = len(points)
    k = float(np.sum(points > 50))
    p = (k + 2) / (n + 4)
    return float(100.0 * math.sqrt(p * (1 - p) / (n + 4)))


def paired_drop_se(clean: np.ndarray, poisoned: np.ndarray) -> float:
    """SE of an accuracy drop in points, paired on the same points, Agresti–Min adjusted (½ added to each of the
    four agreement counts): with b points the clean model gets right and the poisoned wrong, c the other way,
    ``SE = 100·√((b′ + c′) − (b′ − c′)²/n′)/n′`` with b′ = b + ½, c′ = c + ½, n′ = n + 2. Without the
    adjustment a cell with no discordant point had SE 0 and the interval [0, 0].

    With no discordant point at all the SE is the exact one instead: the drop lies within ±π of 0, π the
    discordance rate, whose exact (Clopper–Pearson) 97.5 % upper bound after 0 discordant of n is
    ``1 − 0.025^(1/n)``; the SE returned is that bound / 1.96 (in points), so ``drop ± 1.96·SE`` is the exact interval."""
    b = float(np.sum((clean > 50) & (poisoned <= 50)))
    c = float(np.sum((clean <= 50) & (poisoned > 50)))
    if b + c == 0 and len(clean):
        return float(100.0 * (1.0 - 0.025 ** (1.0 / len(clean))) / 1.959963984540054)
    b, c, n = b + 0.5, c + 0.5, len(clean) + 2.0
    return float(100.0 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n)


def _paired_errors(clean_points: tuple[np.ndarray, np.ndarray], poisoned: Any, data: Dataset, val_points: np.ndarray) -> dict[str, float]:
    """Standard errors of one cell's figures over the split's points: the poisoned metric, and the
    drop, paired (the same points scored by the clean and the poisoned model). Accuracies use the
    adjusted forms (:func:`accuracy_se`, :func:`paired_drop_se`); MSEs the plain SE of the mean.
    ``val_points``: the poisoned model's per-point metric on D_val, already computed."""
    out = {}
    for split, clean, points in (("val", clean_points[0], val_points), ("test", clean_points[1], poisoned.pointwise(data.x_test, data.y_test))):
        if data.task == "classification":
            out[f"{split}_metric"] = accuracy_se(points)
            out[f"{split}_drop"] = paired_drop_se(clean, points)
        else:
            out[f"{split}_metric"] = standard_error(points)
            out[f"{split}_drop"] = standard_error(clean - points)
    return out


def record_clean_defense(writes: StoreWrites, plan: RunPlan, cand: Candidate, seed: int, train_seed: int, spec: DefenseSpec, split: int = 0) -> None:
    """What a defense costs on clean data: apply it to split j's D_tr alone (assumed rate = the target budget), retrain."""
    data, rate = plan.data(split), plan.config.target_budget
    try:
        defense = spec.defense.for_cell(rate, derive_seed(seed, cand.key, "clean", spec.key), data, spec.params)
        fitted, keep, diagnostics = apply_defense(defense, data.x_train, data.y_train, plan.victim, cand, train_seed)
        writes.put_clean_defended(
            cand.key,
            seed,
            spec.key,
            fitted.metric(data.x_val, data.y_val),
            fitted.metric(data.x_test, data.y_test),
            int((~keep).sum()),
            None,
            split,
            jsonable(diagnostics),
        )
    except Exception as err:  # recorded; the pair is then not eligible for the recommendation
        writes.put_clean_defended(cand.key, seed, spec.key, None, None, None, f"{type(err).__name__}: {err}", split)


def wants_thresholds(cfg: AuditConfig, data: Dataset, fitted: Any) -> bool:
    """τ needs logits: torch classifiers (``enabled: auto``), or always when ``on``."""
    setting = cfg.poisonability.enabled
    if setting == "off":
        return False
    torch_model = fitted.module is not None
    if setting == "on" and not torch_model:
        raise AuditError("poisonability.enabled is 'on' but the victim is not a torch model (τ needs its logits)")
    return torch_model and (data.task == "classification" or setting == "on")


def record_thresholds(writes: StoreWrites, cfg: AuditConfig, data: Dataset, fitted: Any, cand: Candidate, seed: int, split: int = 0) -> None:
    """GradPC targets at the configured ε_w and their thresholds (:func:`audit.maths.poisonability.target_thresholds`)
    for one (candidate, seed); also the clean model's (ε_w = 0)."""
    clean_th = thresholds(fitted.require_module("poisonability"), data.x_train, data.y_train, data.task, cand.rho, data.n_classes)
    writes.put_target(
        cand.key, seed, 0.0, fitted.metric(data.x_val, data.y_val), fitted.metric(data.x_test, data.y_test), clean_th.as_dict(), {}, split
    )
    for eps_w in cfg.poisonability.eps_w:
        target, result = gradpc_target(fitted, data, eps_w, cfg.poisonability.gradpc_steps)
        th = target_thresholds(target, data.x_train, data.y_train, data.task, cand.rho, data.n_classes, data.lo, data.hi)
        metric = lambda x, y: module_metric(target, x, y, data.task)  # noqa: E731
        writes.put_target(cand.key, seed, eps_w, metric(data.x_val, data.y_val), metric(data.x_test, data.y_test), th, result.__dict__, split)
