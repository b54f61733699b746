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
    assert {a.params["variant"] for a in cfg.attacks} == {"random", "adversarial"}
    assert cfg.target_budget == 0.1


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
        ({"dataset": {"name": "mnist60k"}}, "unknown dataset 'mnist60k'; valid: breast_cancer, diabetes"),
        ({"model": {"name": "resnet"}}, "unknown model 'resnet'; valid: cnn, elastic_net, lasso, logreg, mlp, ridge, user"),
        ({"attacks": [{"name": "tgdaa"}]}, "unknown attack 'tgdaa'; valid: back_gradient, gradient_canceling, label_flip, optp, statp"),
        ({"defenses": ["sever2"]}, "unknown defense 'sever2'; valid: activation_clustering, dpa, huber, influence_filter"),
        ({"budgets": [0.1, 1.7]}, "budgets[1]: the poison budget ε must be in (0, 1] (got 1.7)"),
        ({"budgets": [0.0]}, "budgets[0]: the poison budget ε must be in (0, 1] (got 0.0)"),
        ({"budgets": ["a lot"]}, "budgets[0]: Input should be a valid number"),
        ({"candidates": {"l2": [0.1, -1e-3]}}, "candidates.l2: ρ must be ≥ 0 (got -0.001)"),
        ({"candidates": {"dropout": [0.1]}}, "unknown axis 'dropout'; valid: l2, l1, width"),
        ({"candidates": {"width": [8.5]}}, "candidates.width: must be an integer ≥ 1 (got 8.5)"),
        ({"seeds": [0, 0]}, "seeds: expected distinct integers ≥ 0"),
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
