from pathlib import Path

import pytest

from audit.config import AuditConfig, load_config, parse_config
from audit.errors import AuditError
from tests.conftest import tiny_config, write_yaml


def test_default_config_is_the_embedded_default_audit():
    cfg = AuditConfig()
    assert cfg.dataset.name == "mnist5k" and cfg.model.name == "logreg"
    assert cfg.candidates == {"l2": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}
    assert cfg.budgets == [0.03, 0.1, 0.3] and cfg.seeds == [0, 1, 2]
    assert cfg.attacks == [] and cfg.profile == "quick"  # no attacks listed: the profile's battery
    assert cfg.target_budget == 0.1


def test_the_default_battery_is_every_attack_that_applies_and_the_profile_sets_its_effort():
    quick = AuditConfig().resolved("classification", "torch")
    ids = [a.key for a in quick.attacks]
    assert ids == ["label_flip_random", "label_flip_adversarial", "statp", "gradient_canceling", "back_gradient"]  # TGDA: skipped by quick
    bg = quick.attack_spec("back_gradient")
    assert bg.params == {"iterations": 5, "step": 4.0, "inner_steps": 30, "inner_lr": 0.5,
                         "implicit": {"iterations": 50, "step": 0.99, "start_screen": 5, "inner_tol": 1e-5, "cg_tol": 1e-4}} and bg.seeds == 1
    # a config's own value wins over the profile's, the implicit one included
    own = parse_config({"attacks": [{"name": "back_gradient", "params": {"iterations": 3, "cg_tol": 1e-3}}]}).resolved("classification", "torch")
    assert own.attacks[0].params["iterations"] == 3 and own.attacks[0].params["implicit"] == {"step": 0.99, "start_screen": 5, "inner_tol": 1e-5}
    assert quick.attack_seeds(bg) == [0]
    assert quick.resolved("classification", "torch") == quick  # idempotent: a stored config reads back as what ran
    paper = AuditConfig(profile="paper").resolved("classification", "torch")
    assert [a.key for a in paper.attacks] == [*ids[:4], "gradient_canceling_search", ids[4], "tgda"]
    entry = {"label_flip": {"variant": None}, "gradient_canceling_search": {"target": "search", "labels": "choose"}}
    for a in paper.attacks:  # every attack at its defaults, every seed (the battery entry's own parameters aside)
        own = {"variant": a.params.get("variant")} if a.name == "label_flip" else entry.get(a.key, {})
        assert a.seeds is None and a.params == own
    assert "tgda" in [a.key for a in AuditConfig(profile="standard").resolved("classification", "torch").attacks]
    # scikit-learn victims: only the attacks that need no torch module; regression: StatP and OptP, not the flips
    assert [a.key for a in AuditConfig().resolved("classification", "sklearn").attacks] == ["label_flip_random", "label_flip_adversarial", "statp"]
    assert "label_flip_random" not in [a.key for a in AuditConfig().resolved("regression", "torch").attacks]
    assert "optp" in [a.key for a in AuditConfig().resolved("regression", "torch").attacks]


def test_a_listed_attack_takes_the_profiles_effort_under_its_own_params_and_the_configs_seeds():
    cfg = parse_config(tiny_config(attacks=[{"name": "back_gradient", "params": {"iterations": 7}}], seeds=[0, 1]))
    bg = cfg.resolved("classification", "torch").attacks[0]
    assert bg.key == "back_gradient[iterations=7]"  # the key the config gave it, whatever the profile adds
    assert bg.params["iterations"] == 7 and bg.params["inner_steps"] == 30
    assert bg.seeds is None  # the config chose its seeds: every attack runs them all
    unseeded = {k: v for k, v in tiny_config(attacks=[{"name": "back_gradient"}]).items() if k != "seeds"}
    assert parse_config(unseeded).resolved("classification", "torch").attacks[0].seeds == 1  # the profile's


def test_an_empty_attack_list_is_refused():
    with pytest.raises(AuditError, match="attacks: the list is empty; leave the key out to run the profile's battery"):
        parse_config(tiny_config(attacks=[]))


def test_candidate_grid_is_the_product_in_config_order():
    cfg = parse_config(tiny_config(candidates={"l2": [0, 0.1], "width": [8, 16], "epochs": [5]}))
    grid = cfg.candidate_grid()
    assert grid == [
        {"l2": 0.0, "width": 8, "epochs": 5},
        {"l2": 0.0, "width": 16, "epochs": 5},
        {"l2": 0.1, "width": 8, "epochs": 5},
        {"l2": 0.1, "width": 16, "epochs": 5},
    ]


def test_fingerprint_ignores_output_dir_but_not_budgets():
    a = parse_config(tiny_config())
    assert a.fingerprint() == parse_config(tiny_config(output_dir="elsewhere")).fingerprint()
    assert a.fingerprint() != parse_config(tiny_config(budgets=[0.2])).fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"dataset": {"name": "mnist60k"}}, "unknown dataset 'mnist60k'; valid: breast_cancer, cifar10_synthetic, diabetes"),
        ({"model": {"name": "resnet"}}, "unknown model 'resnet'; valid: cnn, elastic_net, lasso, logreg, mlp, relu2, ridge, user"),
        ({"attacks": [{"name": "tgdaa"}]}, "unknown attack 'tgdaa'; valid: back_gradient, gradient_canceling, label_flip, minmax, optp, regime_a, regime_b, regime_c, statp, tgda"),
        ({"defenses": ["sever2"]}, "unknown defense 'sever2'; valid: activation_clustering, dpa, fa, huber, influence_filter"),
        ({"budgets": [0.1, 1.7]}, "budgets[1]: the poison budget ε must be in (0, 1] (got 1.7)"),
        ({"budgets": [0.0]}, "budgets[0]: the poison budget ε must be in (0, 1] (got 0.0)"),
        ({"budgets": ["a lot"]}, "budgets[0]: Input should be a valid number"),
        ({"candidates": {"l2": [0.1, -1e-3]}}, "candidates.l2: ρ must be ≥ 0 (got -0.001)"),
        ({"candidates": {"dropout": [0.1]}}, "unknown axis 'dropout'; valid: l2, l1, width"),
        ({"candidates": {"width": [8.5]}}, "candidates.width: must be an integer ≥ 1 (got 8.5)"),
        ({"seeds": [0, 0]}, "seeds: expected distinct integers in 0..2⁶³−1"),
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"attacks": [{"name": "label_flip", "params": {"variant": "sideways"}}]}, "attacks.label_flip.params: variant"),
        ({"recommendation": {"target_budget": 0.2}}, "target_budget: 0.2 is not one of the budgets [0.1, 0.3]"),
        ({"dataset": {"name": "npz"}}, "dataset.path: required for dataset 'npz'"),
    ],
)
def test_bad_config_values_give_one_clear_line(override, message):
    with pytest.raises(AuditError) as err:
        parse_config(tiny_config(**override))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_yaml_syntax_error_names_the_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nbudgets: [0.1, 0.2\nseeds: [0]\n")
    with pytest.raises(AuditError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(path)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(AuditError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(AuditError, match="expected a mapping"):
        load_config(path)


def test_yaml_round_trip(tmp_path: Path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", tiny_config()))
    assert cfg.attacks[1].key == "lf_adv" and cfg.budgets == [0.1, 0.3]
