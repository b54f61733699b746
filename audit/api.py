"""The notebook API: run an audit and get its results back as objects.

``audit.run_audit(config, model=..., dataset=...)`` plans, runs (or resumes) the grid and
returns an :class:`AuditResult`: the run directory (the result is path-like, so
``result / "summary.json"`` and ``write_report(result)`` work), the summary as a dict,
the recommendation, the poisons of any cell, and the recommended setting trained on clean
data as an ART estimator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.data import Dataset, from_frame, is_table, with_domain
from audit.errors import AuditError
from audit.grid.cells import apply_defense
from audit.grid.runner import RunPlan, clean_train_seed, plan_audit, poison_cache_key, run_plan
from audit.grid.store import Store, candidate_key, stored_cells
from audit.models import Candidate
from audit.report.analysis import analyse
from audit.report.render import build_summary


@dataclass
class AuditResult(os.PathLike):
    """What an audit produced. Path-like: it stands for its run directory wherever a path is expected.

    Attributes
    ----------
    run_dir : Path
        The run directory (store, poisons, and after :func:`audit.report.write_report` the report).
    plan : audit.grid.runner.RunPlan
        The validated plan: config, dataset, victim, device.
    """

    run_dir: Path
    plan: RunPlan = field(repr=False)
    _summary: dict[str, Any] | None = field(default=None, repr=False)

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __truediv__(self, other: str) -> Path:
        return self.run_dir / other

    def __str__(self) -> str:
        return str(self.run_dir)

    @property
    def config(self) -> AuditConfig:
        return self.plan.config

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``'s content, computed from the store (the same dict the report writes)."""
        if self._summary is None:
            self._summary = build_summary(analyse(self.run_dir))
        return self._summary

    @property
    def recommendation(self) -> dict[str, Any]:
        """The recommended setting: ``hyperparameters``, ``defense``, ``label``, worst-case drops, ``reason``."""
        return self.summary["recommendation"]

    def poisons(
        self, attack: str, budget: float, seed: int | None = None, hyperparameters: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The poisons ``(x_p, y_p)`` one cell added: attack key, budget ε, seed (default the first)
        and candidate (default the recommended one). A cell that did not run is an error."""
        cfg = self.config
        spec = next((a for a in cfg.attacks if a.key == attack), None)
        if spec is None:
            raise AuditError(f"no attack {attack!r} in this audit; its attacks are {', '.join(a.key for a in cfg.attacks)}")
        hp = hyperparameters if hyperparameters is not None else self.recommendation["hyperparameters"]
        if hp is None:
            raise AuditError("the audit recommends nothing yet: name the candidate (hyperparameters=...)")
        seed = cfg.seeds[0] if seed is None else seed
        key = poison_cache_key(candidate_key(hp), spec.key, spec.params, float(budget), seed, self.plan.fingerprint())
        store = Store.open_existing(self.run_dir, read_only=True)
        try:
            found = store.load_poisons(key)
        finally:
            store.close()
        if found is None:
            raise AuditError(f"no poisons stored for {attack} at ε = {budget:g}, seed {seed}, candidate {json.dumps(hp, sort_keys=True)}")
        return found[0], found[1]

    def export(
        self, formats: tuple[str, ...] = ("pdf", "md", "json", "card"), sign_key: str | Path | None = None, signer: str | None = None
    ) -> list[Path]:
        """The compliance record (``RUN_DIR/compliance/``) and the run's manifest, signed with an Ed25519
        key when ``sign_key`` is given (:func:`audit.report.export.export`); returns the files written."""
        from audit.report.export import export

        return export(self.run_dir, formats, sign_key=Path(sign_key) if sign_key is not None else None, signer=signer)

    def recommended_estimator(self, clip_values: tuple[float, float] | None = None) -> Any:
        """The recommended candidate trained on the clean training set (through its defense, if the
        recommendation includes one), with the audit's procedure and first seed, as an ART estimator.

        Raises when the run gives no verdict because its clean retraining does not reproduce the
        estimator handed over (``summary["no_verdict"]``): that model is not the one you deploy."""
        if self.summary.get("no_verdict"):
            raise AuditError(f"{self.summary['no_verdict']} (recommendation.allow_mismatch: true accepts it)")
        rec = self.recommendation
        if rec["hyperparameters"] is None:
            raise AuditError("the audit recommends nothing yet (no candidate has finished cells at the target budget)")
        data, victim, cfg = self.plan.dataset, self.plan.victim, self.config
        hp, seed = rec["hyperparameters"], clean_train_seed(cfg.seeds[0])
        if rec["defense"] in (None, "none"):
            fitted = victim.fit(data.x_train, data.y_train, hp, seed)
        else:
            spec = cfg.defense_spec(rec["defense"])
            defense = spec.defense.for_cell(cfg.target_budget, seed, data, spec.params)
            fitted = apply_defense(defense, data.x_train, data.y_train, victim, Candidate.of(victim, hp), seed)[0]
        return fitted.to_art(clip_values=clip_values)


def run_audit(
    config: AuditConfig,
    *,
    model: Any = None,
    dataset: Any = None,
    output_dir: str | Path | None = None,
    restart: bool = False,
    progress: bool = True,
    fit_kwargs: dict[str, Any] | None = None,
    train_fn: Callable[..., Any] | None = None,
    allow_mismatch: bool | None = None,
    label: str | None = None,
) -> AuditResult:
    """Run (or resume) the audit ``config`` describes and return its :class:`AuditResult`.

    ``model`` (an nn.Module, an ART estimator or a scikit-learn estimator) and ``dataset``
    (an :class:`audit.data.Dataset`, or a pandas DataFrame with its ``label`` column: README
    "Tables", split by the config's ``dataset.split``) override the config's. Finished cells are read, not
    recomputed. The HTML report is written by :func:`audit.report.write_report`.

    Train as you train (README): the audit retrains ``model`` for every cell, and a trained
    ``model`` is compared with the audit's clean retraining on the test split; more than
    ``recommendation.deployed_tolerance`` apart, the run gives **no verdict**. Pass what you
    trained with: ``fit_kwargs`` (``nb_epochs``, ``batch_size`` as given to ART's ``fit``) or
    ``train_fn(model, x, y, *, seed)`` (and ``l2=`` / ``hparams=`` when it takes them), which then
    trains every retraining. ``allow_mismatch=True`` gives the verdict anyway, and every output
    says it is about the audit's model.
    """
    resplit: Callable[[int], Dataset] | None = None
    if is_table(dataset):  # a DataFrame and its label column (README: "Tables")
        if label is None:
            raise AuditError("dataset: a DataFrame needs label='<the label column>'")
        frame, split = dataset, config.dataset.split

        def split_frame(seed: int) -> Dataset:  # the frame split with another seed (config splits)
            data = from_frame(frame, label, task=config.dataset.task, val=split.val, test=split.test, seed=seed, name=config.name)
            return with_domain(data, config.dataset.domain)

        dataset, resplit = split_frame(split.seed), split_frame
    elif label is not None:
        raise AuditError("label: only for a DataFrame dataset (a Dataset carries its labels)")
    if allow_mismatch is not None:
        rec = config.recommendation.model_copy(update={"allow_mismatch": bool(allow_mismatch)})
        config = config.model_copy(update={"recommendation": rec})
    plan = plan_audit(config, model=model, dataset=dataset, output_dir=output_dir, train_fn=train_fn, fit_kwargs=fit_kwargs, resplit=resplit)
    result = AuditResult(run_plan(plan, restart=restart, progress=progress), plan)
    _raise_when_nothing_finished(result.run_dir)
    return result


def _raise_when_nothing_finished(run_dir: Path) -> None:
    """Every cell failed: the CLI's exit 4, as an error (the run directory keeps the failures for the report)."""
    cells = stored_cells(run_dir)
    failed = [c for c in cells if c.status == "failed"]
    if cells and len(failed) == len(cells):
        raise AuditError(f"all {len(cells)} cells failed (first error: {failed[0].error}); write_report({str(run_dir)!r}) lists them")
