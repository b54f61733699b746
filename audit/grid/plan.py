"""A validated audit: config, data, victim and device, and the cells it plans (README: How the audit works)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from audit.config import AttackSpec, AuditConfig
from audit.data import Dataset
from audit.grid.adaptive import grid_axes
from audit.grid.cells import GridCell
from audit.grid.confirm import all_axes, confirm_axes
from audit.models import Candidate, Victim


@dataclass
class RunPlan:
    """A validated audit ready to run: config, data, victim, device and its run directory."""

    config: AuditConfig
    dataset: Dataset
    victim: Victim
    device: torch.device
    run_dir: Path
    deployed_test_metric: float | None = None  # the user's estimator as handed over, on the test split
    threads: int | None = None  # torch's threads where the cells run (a Ray task's, a pool worker's); None: this process's
    model_digests: dict[str, str] = field(default_factory=dict)  # audit.models.digest.model_digests (the compliance record)
    workers: int = 1  # local worker processes running the cells (audit.grid.pool); 1: this process
    #: (candidate key, defense key) settings the confirmation stage confirms (audit.grid.runner.run_confirmation)
    confirm_pairs: list[tuple[str, str]] = field(default_factory=list)
    confirming: bool = False  # the executors run the confirmation cells only (the grid is over: its failures are not retried each round)
    #: the trivial predictor's test metric (majority class of D_train; its mean response): a model handed
    #: over that does no better is an untrained architecture, not a deployed model to compare with
    deployed_trivial_metric: float | None = None
    #: the data of splits 1, 2, … (``splits``: the partition re-drawn; :attr:`dataset` is split 0, the configured one)
    resplits: list[Dataset] = field(default_factory=list, repr=False)
    #: why the run has fewer splits than the config asks for (the user fixed the split); None: as asked
    splits_note: str | None = None
    _seed_free: dict[str, bool] = field(default_factory=dict, repr=False)
    _candidates: dict[str, Candidate] = field(default_factory=dict, repr=False)

    def candidates(self) -> list[Candidate]:
        """The config's candidate grid in config order, each built once (its ρ worked out by the victim here only)."""
        if not self._candidates:
            for hp in self.config.candidate_grid():
                cand = Candidate.of(self.victim, hp)
                self._candidates[cand.key] = cand
        return list(self._candidates.values())

    def candidate(self, key: str) -> Candidate:
        """The candidate stored under ``key`` (:attr:`Candidate.key`)."""
        if not self._candidates:
            self.candidates()
        return self._candidates[key]

    @property
    def n_splits(self) -> int:
        """How many draws of the data's partition the grid runs on."""
        return 1 + len(self.resplits)

    def data(self, split: int = 0) -> Dataset:
        """The data of ``split`` (0: :attr:`dataset`)."""
        return self.dataset if split == 0 else self.resplits[split - 1]

    def splits_record(self) -> dict[str, Any]:
        """Store meta ``splits``: how many were asked for and run, why fewer, and each split's data seed."""
        asked = self.config.splits or 1
        return {
            "requested": asked,
            "run": self.n_splits,
            "note": self.splits_note,
            "seeds": [int(self.data(j).notes.get("split_seed", "0")) for j in range(self.n_splits)],
            "data_sha256": [self.data(j).digests() for j in range(1, self.n_splits)],
        }  # splits 1…: split 0's is data_sha256

    def fingerprint(self) -> str:
        """The config's fingerprint plus what the code resolved it to (training procedure, version):
        a run directory is only resumed by the same config *and* the same procedure."""
        import hashlib

        from audit import __version__

        training = self.victim.procedure or {}
        # CPU numbers depend on torch's thread count (reduction order): a run resumes only under the same count
        numerics = self.numerics()
        parts: list[Any] = [self.config.fingerprint(), training, self.victim.description, __version__, numerics]
        if self.dataset.domain is not None:  # the poisons are mapped into the domain: another domain, other poisons
            parts.append(self.dataset.domain.describe())
        payload = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def deployed(self) -> dict[str, Any]:
        """What the run knows of the model the user deploys (store meta ``deployed``, written at every
        start: the tolerance and the acceptance of a mismatch are the latest run's, never a cell's)."""
        rec = self.config.recommendation
        return {
            "test_metric": self.deployed_test_metric,
            "trivial_metric": self.deployed_trivial_metric,
            "tolerance": rec.deployed_tolerance,
            "allow_mismatch": rec.allow_mismatch,
            "training": (self.victim.procedure or {}).get("train_fn"),
        }

    def numerics(self) -> dict[str, Any]:
        """The settings a cell's numbers depend on besides the config: torch's thread count (CPU
        reductions add in another order) and deterministic algorithms; a Ray worker applies them."""
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        return {"threads": threads, "deterministic": torch.are_deterministic_algorithms_enabled()}

    def attack_axes(self) -> list[tuple[str, AttackSpec, list[str]]]:
        """``(cell attack key, attack spec, defense keys)``: each grid attack against every defense,
        then each adaptive attacker against the defenses it adapts to (:mod:`audit.grid.adaptive`)."""
        return grid_axes(self.config)

    def all_axes(self) -> list[tuple[str, AttackSpec, list[str]]]:
        """:meth:`attack_axes` and the confirmation stage's (:func:`audit.grid.confirm.confirm_axes`): every attack key a cell may have."""
        return all_axes(self.config)

    def cells(self) -> list[GridCell]:
        """All cells in run order: the grid's (candidate → split → seed → attack → budget → defense; the adaptive
        attackers after the grid's attacks), each at the seeds :meth:`cell_seeds` gives it, then the
        confirmation cells of :attr:`confirm_pairs` (:meth:`confirmation_cells`)."""
        grid = self.grid_cells()
        return grid + self.confirmation_cells(len(grid))

    def work_cells(self) -> list[GridCell]:
        """The cells an executor runs now: :meth:`cells`, or only the confirmation cells while :attr:`confirming`."""
        return self.confirmation_cells(len(self.grid_cells())) if self.confirming else self.cells()

    def confirmation_cells(self, start: int = 0) -> list[GridCell]:
        """The confirmation cells of :attr:`confirm_pairs`, in setting order → split → seed → attack → budget, at
        the confirming budgets, positions from ``start``."""
        out: list[GridCell] = []
        axes = confirm_axes(self.config)
        for key_, defense in self.confirm_pairs:
            cand = self.candidate(key_)
            seeds = {key: self.cell_seeds(cand, spec, defense) for key, spec, defenses in axes if defense in defenses}
            for split in range(self.n_splits):
                for seed in self.config.seeds:
                    for key in seeds:
                        for eps in self.config.confirm_budgets:
                            if seed in seeds[key]:
                                out.append(GridCell(start + len(out), cand, key, eps, defense, seed, split))
        return out

    def grid_cells(self) -> list[GridCell]:
        """The grid's cells in run order (see :meth:`cells`)."""
        out: list[GridCell] = []
        axes = self.attack_axes()
        for cand in self.candidates():
            seeds = {(key, d): self.cell_seeds(cand, spec, d) for key, spec, defenses in axes for d in defenses}
            for split in range(self.n_splits):
                for seed in self.config.seeds:
                    for key, _, defenses in axes:
                        for eps in self.config.budgets:
                            for defense in defenses:
                                if seed in seeds[key, defense]:
                                    out.append(GridCell(len(out), cand, key, eps, defense, seed, split))
        return out

    def cell_seeds(self, cand: Candidate, attack: AttackSpec, defense: str) -> list[int]:
        """The seeds an (attack, defense) runs at for candidate ``cand``: the attack's seeds (profile or
        config), or only the first when no seed can change the cell — training seed-free
        (:meth:`Victim.seed_free`), the attack's poisons too (:meth:`AuditAttack.seed_free`) and the
        defense drawing nothing of its own."""
        seeds = self.config.attack_seeds(attack)
        deterministic = (
            self.seed_free(cand) and attack.attack.seed_free(attack.params) and not self.config.defense_spec(defense).defense.draws_randomness
        )
        return seeds[:1] if deterministic else seeds

    def seed_plan(self) -> dict[str, list[int]]:
        """``json([candidate, attack, defense])`` → the seeds its cells run at (stored for the report,
        which counts a setting's missing cells against it); see :func:`planned_seeds`."""
        return {
            json.dumps([cand.key, key, d]): self.cell_seeds(cand, spec, d) if d in defenses else []
            for cand in self.candidates()
            for key, spec, defenses in self.attack_axes()
            for d in self.config.defense_keys
        }

    def seed_free(self, cand: Candidate) -> bool:
        """Whether the victim's training for ``cand`` is seed-free (cached per candidate)."""
        if cand.key not in self._seed_free:
            self._seed_free[cand.key] = self.victim.seed_free(cand.hparams)
        return self._seed_free[cand.key]
