"""One candidate, one ρ: the plan builds each candidate once, and every cell and attack context reads its ρ there."""

from __future__ import annotations

import json

import pytest
import torch

from audit.attacks import AttackContext
from audit.config import parse_config
from audit.data import DatasetSpec, load_dataset
from audit.grid.runner import plan_audit
from audit.models import Candidate, candidate_key
from tests.conftest import tiny_config


def test_a_candidate_is_its_key_and_carries_the_victims_rho(tmp_path):
    plan = plan_audit(parse_config(tiny_config(candidates={"l2": [0.0, 0.01]}, confirm=False)), output_dir=tmp_path)
    cands = plan.candidates()
    assert [c.hparams for c in cands] == [{"l2": 0.0}, {"l2": 0.01}]
    assert [c.rho for c in cands] == [plan.victim.l2({"l2": 0.0}), plan.victim.l2({"l2": 0.01})] == [0.0, 0.01]
    assert plan.candidate(candidate_key({"l2": 0.01})) is cands[1]  # built once: the same object everywhere
    assert {c.candidate for c in plan.cells()} == set(cands)
    assert all(c.candidate is plan.candidate(c.candidate.key) for c in plan.cells())
    # a candidate is compared and hashed by its key (the store's), not by the dict's identity
    again = Candidate.of(plan.victim, {"l2": 0.01})
    assert again == cands[1] and hash(again) == hash(cands[1]) and again != cands[0]
    assert json.loads(plan.cells()[0].identity()["candidate"]) == {"l2": 0.0}


def test_an_attack_context_reads_rho_from_its_candidate_for_a_scikit_learn_victim_too():
    from sklearn.linear_model import LogisticRegression

    from audit.config import ModelSpec, TrainingSpec
    from audit.models import build_victim

    data = load_dataset(DatasetSpec(name="breast_cancer"))
    est = LogisticRegression(max_iter=2000).fit(data.x_train, data.y_train)
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, torch.device("cpu"), model_obj=est)
    fitted = victim.fit(data.x_train, data.y_train, {"l2": 0.02}, 0)
    ctx = AttackContext.of(data, victim, fitted, {"l2": 0.02}, 0.1, seed=0)
    assert victim.kind == "sklearn" and ctx.candidate.rho == pytest.approx(victim.l2({"l2": 0.02})) == 0.02
    assert ctx.optimiser_arguments()["l2"] == ctx.candidate.rho and ctx.hparams == {"l2": 0.02}


def test_spec_lookups_follow_a_copy_with_other_attacks():
    cfg = parse_config(tiny_config()).resolved("classification", "torch")
    assert cfg.attack_spec("lf_adv").params == {"variant": "adversarial"}
    assert cfg.defense_spec("none").name == "none"
    narrowed = cfg.model_copy(update={"attacks": cfg.attacks[:1]})
    with pytest.raises(KeyError):
        narrowed.attack_spec("lf_adv")  # the copy's own lookups, not the original's cached ones
    assert cfg.attack_spec("lf_adv").key == "lf_adv"
