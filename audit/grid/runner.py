"""The audit grid (DESIGN.md protocol) with a resumable store.

Order is deterministic: candidate → seed → attack → budget → defense. For each
``(h, s)`` the victim is trained once on ``D_tr`` (clean metric); for each
``(h, a, ε, s)`` the attack crafts poisons once (cached on disk and reused by every
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

import json
import math
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.attacks import AttackContext
from audit.config import SCHEMA_VERSION, AttackSpec, AuditConfig, DefenseSpec, candidate_label
from audit.data import Dataset, load_dataset
from audit.errors import AuditError
from audit.grid.adaptive import adaptive_axes, craft_adaptive, is_adaptive, resolve_adaptive
from audit.grid.cells import GridCell, apply_defense
from audit.grid.lock import LOCK_FILE, RunLock
from audit.grid.store import RUN_FILES, STORE_FILE, Cell, Store, candidate_key, derive_seed, is_run_directory, remove_run
from audit.jsonio import jsonable
from audit.maths.certificate import regularised_clean_loss, regularised_clean_squared_loss
from audit.maths.poisonability import box_threshold, gradpc_target, min_box_threshold, module_metric, tau_over_scalings, thresholds
from audit.models import Victim, build_victim, resolve_device
from audit.models.estimator import deployed_metric
from audit.models.structure import convex_linear_layer, is_convex_linear, is_linear_model
from audit.seeding import seeded_init


@dataclass
class RunPlan:
    """A validated audit ready to run: config, data, victim, device and its run directory."""

    config: AuditConfig
    dataset: Dataset
    victim: Victim
    device: torch.device
    run_dir: Path
    deployed_test_metric: float | None = None  # the user's estimator as handed over, on the test split
    _seed_free: dict[str, bool] = field(default_factory=dict, repr=False)

    def fingerprint(self) -> str:
        """The config's fingerprint plus what the code resolved it to (training procedure, version):
        a run directory is only resumed by the same config *and* the same procedure."""
        import hashlib

        from audit import __version__

        training = self.victim.procedure or {}
        # CPU numbers depend on torch's thread count (reduction order): a run resumes only under the same count
        numerics = {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}
        payload = json.dumps([self.config.fingerprint(), training, self.victim.description, __version__, numerics], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def attack_axes(self) -> list[tuple[str, AttackSpec, list[str]]]:
        """``(cell attack key, attack spec, defense keys)``: each grid attack against every defense,
        then each adaptive attacker against the defenses it adapts to (:mod:`audit.grid.adaptive`)."""
        return [(a.key, a, self.config.defense_keys) for a in self.config.attacks] + adaptive_axes(self.config)

    def cells(self) -> list[GridCell]:
        """All grid cells in run order (candidate → seed → attack → budget → defense; the adaptive
        attackers after the grid's attacks), each at the seeds :meth:`cell_seeds` gives it."""
        out: list[GridCell] = []
        axes = self.attack_axes()
        for hp in self.config.candidate_grid():
            cand = candidate_key(hp)
            seeds = {(key, d): self.cell_seeds(hp, spec, d) for key, spec, defenses in axes for d in defenses}
            for seed in self.config.seeds:
                for key, _, defenses in axes:
                    for eps in self.config.budgets:
                        for defense in defenses:
                            if seed in seeds[key, defense]:
                                out.append(GridCell(len(out), cand, key, eps, defense, seed))
        return out

    def cell_seeds(self, hp: dict[str, Any], attack: AttackSpec, defense: str) -> list[int]:
        """The seeds an (attack, defense) runs at for candidate ``hp``: the attack's seeds (profile or
        config), or only the first when no seed can change the cell — training seed-free
        (:meth:`Victim.seed_free`), the attack's poisons too (:meth:`AuditAttack.seed_free`) and the
        defense drawing nothing of its own."""
        seeds = self.config.attack_seeds(attack)
        deterministic = (
            self.seed_free(hp) and attack.attack.seed_free(attack.params) and not self.config.defense_spec(defense).defense.draws_randomness
        )
        return seeds[:1] if deterministic else seeds

    def seed_plan(self) -> dict[str, list[int]]:
        """``json([candidate, attack, defense])`` → the seeds its cells run at (stored for the report,
        which counts a setting's missing cells against it); see :func:`planned_seeds`."""
        return {
            json.dumps([candidate_key(hp), key, d]): self.cell_seeds(hp, spec, d) if d in defenses else []
            for hp in self.config.candidate_grid()
            for key, spec, defenses in self.attack_axes()
            for d in self.config.defense_keys
        }

    def seed_free(self, hp: dict[str, Any]) -> bool:
        """Whether the victim's training for ``hp`` is seed-free (cached per candidate)."""
        key = candidate_key(hp)
        if key not in self._seed_free:
            self._seed_free[key] = self.victim.seed_free(hp)
        return self._seed_free[key]


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
) -> RunPlan:
    """Validate everything a run needs *before* anything is written to disk.

    ``model`` (an nn.Module, ART estimator or scikit-learn estimator) and ``dataset``
    override the config's model and dataset (library API).
    """
    device = resolve_device(config.device)
    data = dataset if dataset is not None else load_dataset(config.dataset)
    if any(spec.defense.reads_validation for spec in config.defenses):
        data = data.with_defense_validation(config.dataset.split.seed)  # selection never reuses a defense's points
    check_scorable(data, config.budgets)
    victim = build_victim(config.model, config.training, data, device, model_obj=model)
    if config.poisonability.enabled == "on" and not victim.builds_modules:
        raise AuditError("poisonability.enabled is 'on' but the victim is not a torch model (τ needs its logits)")
    if config.minimax is not None and not victim.builds_modules:
        raise AuditError("minimax: λ under attack needs a PyTorch victim (the back-gradient attack unrolls its training)")
    try:
        config = config.resolved(data.task, victim.kind)  # the profile's battery and settings, explicit
    except ValueError as err:
        raise AuditError(str(err)) from None
    convex = victim.builds_modules and _convex(victim, config.candidate_grid()[0])
    config = resolve_adaptive(config, data.task, victim.kind, convex, data.n_classes)  # the adaptive attackers, explicit
    for attack in config.attacks:
        cls = attack.attack
        if data.task not in cls.tasks:
            raise AuditError(f"attacks: {attack.name!r} does not apply to {data.task} (it supports {', '.join(cls.tasks)})")
        _check_victim_kind("attacks", attack.name, cls.victims, victim.kind)
    if "l1" in config.candidates and config.model.name not in ("lasso", "elastic_net") and (config.training.optimizer or "") != "fista":
        raise AuditError("candidates.l1: an L1 term needs model 'lasso' or 'elastic_net' (or training.optimizer 'fista')")
    for spec in config.defenses:
        if data.task not in spec.defense.tasks:
            raise AuditError(f"defenses: {spec.name!r} does not apply to {data.task} (it supports {', '.join(spec.defense.tasks)})")
        _check_victim_kind("defenses", spec.name, spec.defense.victims, victim.kind)
    out = Path(output_dir if output_dir is not None else config.output_dir)
    if out.exists() and not out.is_dir():
        raise AuditError(f"output directory {out} exists and is a file")
    run_dir = out / config.name
    if run_dir.exists() and not run_dir.is_dir():
        raise AuditError(f"run directory {run_dir} exists and is a file")
    deployed = deployed_metric(model, data.x_test, data.y_test, data.task) if model is not None else None
    return RunPlan(config, data, victim, device, run_dir, deployed)


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


def _check_victim_kind(axis: str, name: str, supported: tuple[str, ...], kind: str) -> None:
    """Refuse, before anything runs, an attack or defense that cannot work on this kind of victim."""
    if kind not in supported:
        needs = " or ".join(_KIND_NAMES.get(k, k) for k in supported)
        raise AuditError(f"{axis}: {name!r} needs {needs} as the victim; this run's victim is {_KIND_NAMES.get(kind, kind)}")


def _prepare_store(plan: RunPlan, restart: bool) -> Store:
    """Open the run directory's store (call with the directory's lock held).

    A directory that exists, is not empty and holds no store is not a run directory: it is
    refused, never written into or cleaned. ``restart`` removes only what a previous run wrote.
    """
    store = Store(plan.run_dir)
    fingerprint = plan.fingerprint()
    if store.path.is_file():
        if not is_run_directory(plan.run_dir):
            raise AuditError(f"{store.path} is not a readable poison-audit store; move it away or choose another name/output directory")
        previous = store.meta("fingerprint")
        if previous is not None and previous != fingerprint and not restart:
            store.close()
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
                "device": str(plan.device),
                "device_name": torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else platform.processor() or platform.machine(),
                "versions": package_versions(),
                "created": time.time(),
                "total_cells": len(plan.cells()),
                "cell_seeds": plan.seed_plan(),
                "deployed_test_metric": plan.deployed_test_metric,
                "threads": torch.get_num_threads(),
            }
        )
    return store


def run_audit(
    config: AuditConfig,
    *,
    model: Any = None,
    dataset: Dataset | None = None,
    output_dir: str | Path | None = None,
    restart: bool = False,
    progress: bool = True,
) -> Path:
    """Run (or resume) the audit a config describes and return its run directory.

    Finished cells in the run directory's store are read, not recomputed; failed cells
    are retried. The HTML report is written separately (:func:`audit.report.write_report`).
    """
    return run_plan(plan_audit(config, model=model, dataset=dataset, output_dir=output_dir), restart=restart, progress=progress)


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
            _run_grid(plan, store, progress)
            if plan.config.minimax is not None:
                run_minimax(plan, store, progress)
        finally:
            store.close()
    return plan.run_dir


def _holds_foreign_files(run_dir: Path) -> bool:
    """True when ``run_dir`` has entries other than what a run writes (its lock included)."""
    if not run_dir.is_dir():
        return False
    ours = {*RUN_FILES, LOCK_FILE, "poisons"}
    return any(p.name not in ours and not p.name.endswith(".tmp") for p in run_dir.iterdir())


def poison_cache_key(candidate: str, attack_key: str, params: dict[str, Any], budget: float, seed: int, fingerprint: str) -> str:
    """The key a cell's poisons are cached under: they depend on the candidate, the attack and its
    parameters, ε, the seed and the run's fingerprint, not on the defense (every defense sees the same poisons)."""
    return json.dumps([candidate, attack_key, params, budget, seed, fingerprint], sort_keys=True)


def clean_train_seed(seed: int) -> int:
    """The seed a candidate is trained with on clean data (and retrained with after poisoning) for grid seed ``seed``."""
    return derive_seed(seed, "train")


def _run_grid(plan: RunPlan, store: Store, progress: bool) -> None:
    from tqdm import tqdm

    cfg, data, victim = plan.config, plan.dataset, plan.victim
    fingerprint = plan.fingerprint()
    cells = plan.cells()
    done = store.finished_keys()
    bar = tqdm(total=len(cells), initial=sum(c.key in done for c in cells), disable=not progress,
               unit="cell", desc=f"audit {cfg.name}", dynamic_ncols=True)  # fmt: skip
    by_group: dict[tuple[str, int], list[GridCell]] = {}
    for c in cells:
        by_group.setdefault((c.candidate, c.seed), []).append(c)

    first_fit: dict[str, tuple[int, Any]] = {}  # seed-free victims: the candidate's one clean model, and its seed
    for (cand, seed), group in by_group.items():
        pending = [c for c in group if c.key not in done]
        if not pending:
            continue
        hp = json.loads(cand)
        train_seed = clean_train_seed(seed)
        t0 = time.perf_counter()
        try:
            reused = first_fit.get(cand) if plan.seed_free(hp) else None
            clean = reused[1] if reused else victim.fit(data.x_train, data.y_train, hp, train_seed)
            if plan.seed_free(hp) and not reused:
                first_fit[cand] = (seed, clean)
            clean_val, clean_test = clean.metric(data.x_val, data.y_val), clean.metric(data.x_test, data.y_test)
            clean_points = (clean.pointwise(data.x_val, data.y_val), clean.pointwise(data.x_test, data.y_test))
        except Exception as err:  # the whole (h, s) group fails; the audit goes on
            for c in pending:
                _record_failure(store, c, err, plan.device)
                bar.update(1)
            continue
        clean_record = {**clean.train_result, "metric_se": {"val": standard_error(clean_points[0]), "test": standard_error(clean_points[1])},
                        **certified_objective(clean, data, victim, hp, 0.0)}  # fmt: skip
        store.put_clean(cand, seed, clean_val, clean_test, time.perf_counter() - t0, clean_record)
        for defense_spec in cfg.defenses:
            if defense_spec.name != "none":
                record_clean_defense(store, plan, victim, hp, cand, seed, train_seed, defense_spec)
        if reused and store.copy_targets(cand, reused[0], seed):
            pass  # the same clean model: the same targets and thresholds
        elif wants_thresholds(cfg, data, clean):
            try:
                record_thresholds(store, cfg, data, victim, clean, hp, cand, seed)
            except Exception as err:  # τ is diagnostic: record why it is missing, keep auditing
                store.put_target(cand, seed, -1.0, math.nan, math.nan, {"error": f"{type(err).__name__}: {err}"}, {})

        by_poison: dict[tuple[str, float], list[GridCell]] = {}
        for c in pending:
            if not is_adaptive(c.attack):
                by_poison.setdefault((c.attack, c.budget), []).append(c)
        for (attack_key, eps), defense_cells in by_poison.items():
            spec = cfg.attack_spec(attack_key)
            poison_key = poison_cache_key(cand, attack_key, spec.params, eps, seed, fingerprint)
            t_attack = time.perf_counter()
            try:
                cached = store.load_poisons(poison_key)
                if cached is None:
                    ctx = AttackContext(data, victim, clean, hp, eps, derive_seed(seed, cand, attack_key, eps))
                    attack = spec.attack.for_cell(dict(spec.params), ctx)
                    x_p, y_p = attack.poison(data.x_train, data.y_train)
                    diagnostics = attack.diagnostics.to_json()
                    store.save_poisons(poison_key, x_p, y_p, diagnostics)
                else:
                    x_p, y_p, diagnostics = cached
            except Exception as err:
                for c in defense_cells:
                    _record_failure(store, c, err, plan.device)
                    bar.update(1)
                continue
            attack_seconds = time.perf_counter() - t_attack
            for c in defense_cells:
                _run_defense_cell(plan, store, c, hp, train_seed, (clean_val, clean_test), clean_points, x_p, y_p,
                                  diagnostics, attack_seconds)  # fmt: skip
                bar.update(1)
        for c in (c for c in pending if is_adaptive(c.attack)):
            _run_adaptive_cell(plan, store, c, hp, clean, train_seed, (clean_val, clean_test), clean_points)
            bar.update(1)
    bar.close()


def _run_adaptive_cell(plan: RunPlan, store: Store, c: GridCell, hp: dict[str, Any], clean: Any, train_seed: int,
                       clean_metrics: tuple[float, float], clean_points: tuple[np.ndarray, np.ndarray]) -> None:  # fmt: skip
    """One cell of the adaptive stage: poisons crafted knowing the cell's defense (cached per defense),
    then the defense and the retraining as for any cell."""
    cfg, data, fingerprint = plan.config, plan.dataset, plan.fingerprint()
    key, spec, _ = next(axis for axis in plan.attack_axes() if axis[0] == c.attack)
    defense = cfg.defense_spec(c.defense)
    setting = {"params": spec.params, "defense": defense.model_dump(mode="json"), "rounds": cfg.adaptive.rounds}
    poison_key = poison_cache_key(c.candidate, key, setting, c.budget, c.seed, fingerprint)
    t_attack = time.perf_counter()
    try:
        cached, applied = store.load_poisons(poison_key), None
        if cached is None:
            initial = None  # a grid attack's non-adaptive poisons of this cell start its filter-in-the-loop rounds
            if spec.key in {a.key for a in cfg.attacks}:
                initial = store.load_poisons(poison_cache_key(c.candidate, spec.key, spec.params, c.budget, c.seed, fingerprint))
            ctx = AttackContext(data, plan.victim, clean, hp, c.budget, derive_seed(c.seed, c.candidate, key, c.budget, c.defense))
            defense_seed = derive_seed(c.seed, c.candidate, c.attack, c.budget, c.defense)
            x_p, y_p, diagnostics, applied = craft_adaptive(spec, defense, ctx, cfg.adaptive.rounds, defense_seed, train_seed, initial)
            store.save_poisons(poison_key, x_p, y_p, diagnostics)
        else:
            x_p, y_p, diagnostics = cached
    except Exception as err:
        _record_failure(store, c, err, plan.device)
        return
    _run_defense_cell(plan, store, c, hp, train_seed, clean_metrics, clean_points, x_p, y_p, diagnostics["attack"],
                      time.perf_counter() - t_attack, {"adaptive": diagnostics["adaptive"]}, applied)  # fmt: skip


def _run_defense_cell(
    plan: RunPlan,
    store: Store,
    c: GridCell,
    hp: dict[str, Any],
    train_seed: int,
    clean_metrics: tuple[float, float],
    clean_points: tuple[np.ndarray, np.ndarray],
    x_p: np.ndarray,
    y_p: np.ndarray,
    attack_diag: dict,
    attack_seconds: float,
    extra: dict[str, Any] | None = None,
    applied: tuple[Any, np.ndarray, Any] | None = None,
) -> None:
    """Apply the cell's defense to ``D_tr`` plus the poisons, retrain and store the cell; ``applied``:
    that defense's result already computed on these very poisons (the adaptive stage's kept round)."""
    data, victim = plan.dataset, plan.victim
    t0 = time.perf_counter()
    try:
        x_mix = np.concatenate([data.x_train, x_p])
        y_mix = np.concatenate([data.y_train, y_p])
        is_poison = np.r_[np.zeros(len(data.y_train), bool), np.ones(len(y_p), bool)]
        if applied is None:
            spec = plan.config.defense_spec(c.defense)
            defense = spec.defense.for_cell(c.budget, derive_seed(c.seed, c.candidate, c.attack, c.budget, c.defense), data,
                                            spec.params)  # fmt: skip
            applied = apply_defense(defense, x_mix, y_mix, victim, hp, train_seed)
        poisoned, keep, defense_diag = applied
        cell = Cell(
            **c.identity(),
            status="ok",
            clean_val=clean_metrics[0],
            clean_test=clean_metrics[1],
            poisoned_val=poisoned.metric(data.x_val, data.y_val),
            poisoned_test=poisoned.metric(data.x_test, data.y_test),
            n_poison=int(len(y_p)),
            poisons_removed=int((~keep & is_poison).sum()),
            clean_removed=int((~keep & ~is_poison).sum()),
            seconds=attack_seconds + time.perf_counter() - t0,
            device=str(plan.device),
            diagnostics=json.dumps(
                {
                    "attack": attack_diag,
                    "defense": jsonable(defense_diag),
                    "retrain": poisoned.train_result,
                    "se": _paired_errors(clean_points, poisoned, data),
                    **certified_objective(poisoned, data, victim, hp, c.budget),
                    **(extra or {}),
                }
            ),  # fmt: skip
        )
        store.put_cell(cell)
    except Exception as err:
        _record_failure(store, c, err, plan.device)


def certified_objective(fitted: Any, data: Dataset, victim: Victim, hp: dict[str, Any], budget: float) -> dict[str, float]:
    """For softmax regression and ridge: ``{"clean_objective": L_c(θ̂) + (1 + ε)(ρ/2)‖Ŵ‖²}`` of the model trained
    in a cell — the quantity the min-max certificate bounds (:mod:`audit.maths.certificate`, eq. 5),
    so the report can put each attack beside the bound; ``{}`` for any other victim."""
    module = fitted.module
    if module is None or not is_convex_linear(module):
        return {}
    layer = convex_linear_layer(module)
    assert layer is not None
    w = layer.weight.detach().double().cpu().numpy()
    b = layer.bias.detach().double().cpu().numpy() if layer.bias is not None else np.zeros(len(w))
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float64)
    if data.task == "regression":  # ridge: the squared loss (audit.maths.certificate.online_minmax_ridge)
        y = data.y_train.astype(np.float64)
        return {"clean_objective": regularised_clean_squared_loss(w.reshape(-1), float(b[0]), x, y, victim.l2(hp), budget)}
    return {"clean_objective": regularised_clean_loss(w, b, x, data.y_train, victim.l2(hp), budget)}


def standard_error(points: np.ndarray) -> float:
    """Standard error of the mean of per-point values (n ≥ 2; 0 for fewer)."""
    return float(np.std(points, ddof=1) / np.sqrt(len(points))) if len(points) > 1 else 0.0


def _paired_errors(clean_points: tuple[np.ndarray, np.ndarray], poisoned: Any, data: Dataset) -> dict[str, float]:
    """Standard errors of one cell's figures over the split's points: the poisoned metric, and the
    drop, paired (the same points scored by the clean and the poisoned model)."""
    out = {}
    for split, clean, (x, y) in (("val", clean_points[0], (data.x_val, data.y_val)), ("test", clean_points[1], (data.x_test, data.y_test))):
        points = poisoned.pointwise(x, y)
        out[f"{split}_metric"] = standard_error(points)
        out[f"{split}_drop"] = standard_error(clean - points)
    return out


def _record_failure(store: Store, c: GridCell, err: BaseException, device: torch.device) -> None:
    last = f"{type(err).__name__}: {err}".strip().splitlines()[0] if str(err) else type(err).__name__
    store.put_cell(
        Cell(
            **c.identity(),
            status="failed",
            device=str(device),
            error=last,
            diagnostics=json.dumps({"traceback": traceback.format_exception(err)[-6:]}),
        )
    )


def is_run_dir(path: Path) -> bool:
    return (path / STORE_FILE).is_file()


def record_clean_defense(store: Store, plan: RunPlan, victim: Victim, hp: dict, cand: str, seed: int, train_seed: int,
                         spec: DefenseSpec) -> None:  # fmt: skip
    """What a defense costs on clean data: apply it to D_tr alone (assumed rate = the target budget), retrain."""
    data, rate = plan.dataset, plan.config.target_budget
    try:
        defense = spec.defense.for_cell(rate, derive_seed(seed, cand, "clean", spec.key), data, spec.params)
        fitted, keep, _ = apply_defense(defense, data.x_train, data.y_train, victim, hp, train_seed)
        store.put_clean_defended(cand, seed, spec.key, fitted.metric(data.x_val, data.y_val),
                                 fitted.metric(data.x_test, data.y_test), int((~keep).sum()))  # fmt: skip
    except Exception as err:  # recorded; the pair is then not eligible for the recommendation
        store.put_clean_defended(cand, seed, spec.key, None, None, None, f"{type(err).__name__}: {err}")


def wants_thresholds(cfg: AuditConfig, data: Dataset, fitted: Any) -> bool:
    """τ needs logits: torch classifiers (``enabled: auto``), or always when ``on``."""
    setting = cfg.poisonability.enabled
    if setting == "off":
        return False
    torch_model = fitted.module is not None
    if setting == "on" and not torch_model:
        raise AuditError("poisonability.enabled is 'on' but the victim is not a torch model (τ needs its logits)")
    return torch_model and (data.task == "classification" or setting == "on")


def record_thresholds(store: Store, cfg: AuditConfig, data: Dataset, victim: Victim, fitted: Any, hp: dict,
                      cand: str, seed: int) -> None:  # fmt: skip
    """GradPC targets at the configured ε_w and their τ for one (candidate, seed); also the clean model (ε_w = 0)."""
    l2 = victim.l2(hp)
    clean_th = thresholds(fitted.require_module("poisonability"), data.x_train, data.y_train, data.task, l2, data.n_classes)
    store.put_target(cand, seed, 0.0, fitted.metric(data.x_val, data.y_val), fitted.metric(data.x_test, data.y_test),
                     clean_th.as_dict(), {})  # fmt: skip
    for eps_w in cfg.poisonability.eps_w:
        target, result = gradpc_target(fitted, data, eps_w, cfg.poisonability.gradpc_steps)
        th = thresholds(target, data.x_train, data.y_train, data.task, l2, data.n_classes).as_dict()
        if data.task == "classification":  # the same predictions, another parameter vector: the smallest τ of the ray sW
            scale, scaled = tau_over_scalings(target, data.x_train, data.y_train, l2, data.n_classes)
            th.update(tau_rho_2_same_predictions=scaled.tau_rho_2, same_predictions_scale=scale)
            if is_linear_model(target):  # poisons inside the feature box: the box-aware threshold (exact for two classes)
                box = box_threshold(target, data.x_train, data.y_train, l2, data.lo, data.hi, data.n_classes)
                same = min_box_threshold(target, data.x_train, data.y_train, l2, data.lo, data.hi, data.n_classes)
                th.update(tau_box=box.tau, tau_box_exact=box.exact, kappa_box=box.kappa_box, tau_box_same_predictions=same[1].tau,
                          box_same_predictions_scale=same[0])  # fmt: skip
        metric = lambda x, y: module_metric(target, x, y, data.task)  # noqa: E731
        store.put_target(cand, seed, eps_w, metric(data.x_val, data.y_val), metric(data.x_test, data.y_test),
                         th, result.__dict__)  # fmt: skip


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
    settings = PolicySettings(dict(attack.params), spec.l2_range, spec.l2_lr, spec.clean_iterations, spec.warm_start,
                              spec.cv_folds, list(spec.cv_grid), spec.retune())  # fmt: skip
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
                for row in policy_rows(plan.dataset, plan.victim, base, cfg.budgets, seed, key, settings,
                                       clean_train_seed(seed), attack_seed, done):  # fmt: skip
                    store.put_policy(row)
                    if progress:
                        print(f"minimax {row.policy} ε={row.budget:g} seed {seed}: λ={row.lam:.2f} "
                              f"metric {row.test_metric:.2f} ({row.seconds:.0f} s)", file=sys.stderr)  # fmt: skip
            except Exception as err:  # noqa: BLE001 - the grid's results stand; the report says what failed
                message = f"{type(err).__name__}: {err}".splitlines()[0]
                errors[f"{candidate_label(base)}, seed {seed}"] = message
                print(f"minimax (seed {seed}) failed: {message}", file=sys.stderr)
    store.set_meta("minimax_errors", errors)
