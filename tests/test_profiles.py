"""Issue 16: profiles, the default battery, and seeds that cannot change a cell."""

import json

import numpy as np
import pytest
import torch

from audit.attacks import AttackContext, LabelFlip, profile_settings
from audit.catalog import BATTERY, PROFILE_NAMES
from audit.config import AuditConfig, DatasetSpec, ModelSpec, TrainingSpec, parse_config
from audit.data import load_dataset
from audit.grid import plan_audit, run_audit
from audit.models import build_victim
from audit.report import write_report
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def test_the_profile_table_names_real_attacks_and_valid_parameters():
    from audit.attacks import ATTACKS

    assert set(PROFILE_NAMES) == {"quick", "standard", "paper"}
    assert profile_settings("paper") == {}  # paper is every attack's defaults
    assert {e.attack for e in BATTERY} <= set(ATTACKS)
    for profile in PROFILE_NAMES:
        for name, setting in profile_settings(profile).items():
            ATTACKS[name].Params.model_validate(dict(setting.params))  # a typo in a class's profiles fails here


def test_an_attack_class_may_reduce_itself_only_under_the_reduced_profiles():
    from audit.attacks.label_flip import LabelFlip
    from audit.catalog import ProfileSetting

    with pytest.raises(TypeError, match=r"Bad.profiles: \['paper'\] are not reduced profiles \(quick, standard; paper is the defaults\)"):
        type("Bad", (LabelFlip,), {"profiles": {"paper": ProfileSetting(seeds=1)}})


def test_the_embedded_default_audit_plans_every_attack_of_the_quick_battery():
    plan = plan_audit(AuditConfig(), output_dir="unused")
    attacks = {c.attack for c in plan.cells()}
    assert attacks == {"label_flip_random", "label_flip_adversarial", "statp", "gradient_canceling", "back_gradient"}
    assert len(plan.cells()) == 5 * 3 * 5  # candidates × budgets × attacks, one seed each under quick


def test_gradient_canceling_s_target_search_is_an_entry_the_quick_screen_leaves_to_the_confirmation():
    """The battery's second Gradient Canceling (target: search, labels: choose) confirms a quick verdict, runs in the
    standard screen at one seed, and never against a regression (the search refuses it)."""
    quick = AuditConfig().resolved("classification", "torch")
    assert "gradient_canceling_search" not in {s.key for s in quick.attacks}
    assert {s.key: s.params for s in quick.confirmation_attacks()}["gradient_canceling_search@paper"] == {"target": "search", "labels": "choose"}
    assert quick.resolved("classification", "torch") == quick  # still idempotent with entry-own settings
    standard = AuditConfig(profile="standard").resolved("classification", "torch")
    search = next(s for s in standard.attacks if s.key == "gradient_canceling_search")
    assert search.params == {"target": "search", "labels": "choose"} and standard.attack_seeds(search) == [0]
    plain = next(s for s in standard.attacks if s.key == "gradient_canceling")
    assert plain.params == {} and standard.attack_seeds(plain) == standard.seeds  # the entry's setting is its own
    paper = AuditConfig(profile="paper").resolved("classification", "torch")
    assert {s.key for s in paper.attacks} >= {"gradient_canceling", "gradient_canceling_search"}
    ridge = parse_config({"dataset": {"name": "diabetes"}, "model": {"name": "ridge"}, "profile": "paper"}).resolved("regression", "torch")
    assert "gradient_canceling" in {s.key for s in ridge.attacks} and "gradient_canceling_search" not in {s.key for s in ridge.attacks}
    assert "gradient_canceling_search" not in (ridge.confirm.attacks or [])


def test_an_audit_without_attacks_runs_the_whole_battery_and_the_report_says_what_was_left_out(tmp_path):
    cfg = tiny_config(candidates={"l2": [1e-2]}, budgets=[0.1])
    del cfg["attacks"], cfg["seeds"]
    run_dir = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    html = write_report(run_dir).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    ran = {c["attack"] for c in summary["cells"] if c["status"] == "ok"}
    # the grid's battery, then the label flips at every seed (quick ran them at one; tiny_config confirms with them only)
    assert ran == {"label_flip_random", "label_flip_adversarial", "statp", "gradient_canceling", "back_gradient",
                   "label_flip_random@paper", "label_flip_adversarial@paper"}  # fmt: skip
    assert summary["profile"] == "quick"
    assert {a["key"]: a["seeds"] for a in summary["attacks"]}["back_gradient"] == "seed 0 of 3"
    assert "<code>quick</code>" in html
    assert "left out by the quick profile" in html and "TGDA" in html.split("left out by the quick profile")[0][-400:]
    # the search entry did not run here (tiny_config confirms with the flips only): the report says why
    assert "battery entry gradient_canceling_search — left out by the quick profile: it attacks six targets" in html
    assert "min-max (online learning, Steinhardt et al. 2017) — not part of the default battery (list it under attacks:)" in html
    # the back-gradient attack did damage: the battery is not a list of names
    bg = next(c for c in summary["cells"] if c["attack"] == "back_gradient")
    assert bg["drop"] > 1.0


def test_convex_full_batch_training_is_seed_free_and_so_is_the_max_loss_flip():
    data = load_dataset(DatasetSpec(name="breast_cancer"))
    victim = build_victim(ModelSpec(name="logreg"), TrainingSpec(), data, CPU)
    hp = {"l2": 1e-2}
    assert victim.seed_free(hp)
    a, b = victim.fit(data.x_train, data.y_train, hp, 1), victim.fit(data.x_train, data.y_train, hp, 987)
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(p, q)  # bitwise: the seed played no part
    poisons = [LabelFlip.for_cell({"variant": "adversarial"}, AttackContext.of(data, victim, a, hp, 0.1, s)).poison(data.x_train, data.y_train)
               for s in (3, 4)]  # fmt: skip
    assert np.array_equal(poisons[0][0], poisons[1][0]) and np.array_equal(poisons[0][1], poisons[1][1])
    assert LabelFlip.seed_free({"variant": "adversarial"}) and not LabelFlip.seed_free({"variant": "random"})
    assert not LabelFlip.seed_free({"variant": "adversarial", "selection": "random"})


@pytest.mark.parametrize(
    "model, training, once",
    [
        ({"name": "logreg"}, {"epochs": 100}, True),  # convex, L-BFGS: computed at one seed
        ({"name": "logreg"}, {"optimizer": "sgd", "batch_size": 64, "epochs": 2}, False),  # mini-batches are drawn by the seed
        ({"name": "mlp", "width": 4}, {"epochs": 2}, False),  # non-convex: the initialisation matters
    ],
)
def test_only_cells_no_seed_can_change_are_run_once(model, training, once):
    cfg = parse_config(tiny_config(model=model, training=training, seeds=[0, 1, 2], defenses=["none", "activation_clustering"]))
    plan = plan_audit(cfg, output_dir="unused")
    seeds: dict[tuple[str, str], set[int]] = {}
    for c in plan.cells():
        seeds.setdefault((c.attack, c.defense), set()).add(c.seed)
    assert seeds["lf_random", "none"] == {0, 1, 2}
    assert seeds["lf_adv", "none"] == ({0} if once else {0, 1, 2})
    assert seeds["lf_adv", "activation_clustering"] == {0, 1, 2}  # the detector draws its own randomness


def test_a_run_once_cell_is_counted_as_complete_and_the_clean_model_is_shared(tmp_path):
    cfg = parse_config(tiny_config(seeds=[0, 1]))
    run_dir = run_audit(cfg, output_dir=tmp_path, progress=False)
    write_report(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completeness"]["complete"] and summary["completeness"]["planned"] == 2 * 2 * 2 + 2 * 2
    assert "missing" not in summary["recommendation"]["reason"]
    clean = {(c["hyperparameters"]["l2"], c["seed"]): c["clean_metric"] for c in summary["cells"]}
    assert all(clean[(rho, 0)] == clean[(rho, 1)] for rho in (0.0, 0.01))


def test_run_profile_overrides_the_configs_and_is_part_of_the_fingerprint(tmp_path):
    from click.testing import CliRunner

    from audit.cli import cli
    from tests.conftest import write_yaml

    path = write_yaml(tmp_path / "audit.yaml", tiny_config(candidates={"l2": [1e-2]}, budgets=[0.1]))
    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--quiet"]).exit_code == 0
    again = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--quiet", "--profile", "paper"])
    assert again.exit_code == 2 and "holds a run of a different config" in again.output  # another profile, another run
    fresh = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--quiet", "--profile", "paper", "--restart"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((out / "tiny" / "summary.json").read_text())["profile"] == "paper"
    bad = CliRunner().invoke(cli, ["run", str(path), "--profile", "fast"])
    assert bad.exit_code == 2 and "'fast' is not one of 'quick', 'standard', 'paper'" in bad.output
