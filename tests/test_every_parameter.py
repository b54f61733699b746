"""Every documented parameter runs (issue 34): each parameter of every registered attack and defense, at a value other
than its default, goes through a YAML config and ``poison-audit run`` into a real cell of a tiny audit, and the cell
finishes. A parameter missing from the tables below fails the test, so a new one gets a value here.

``VALUES`` gives the non-default value of each parameter (with the companions it needs to matter, e.g. a region
quantile with a region); a ``Literal`` parameter runs at every one of its other options. ``SMOKE`` keeps each attack
cheap (few iterations or epochs) — the parameter under test overrides it. TGDA's and the regression audit's cases are
``slow``, as are back-gradient's (37 cells); the rest run in the default suite.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from audit.attacks import ATTACKS
from audit.cli import cli
from audit.defenses import DEFENSES
from tests.conftest import stored_cells, write_yaml

TARGET_FILE = "GC_TARGET_FILE"  # replaced by a real state dict's path

SMOKE: dict[str, dict[str, Any]] = {
    "back_gradient": {"iterations": 2, "inner_steps": 5, "start_screen": 1},
    "gradient_canceling": {"epochs": 20, "gradpc_steps": 10},
    "tgda": {"epochs": 2, "pretrain_epochs": 1, "follower_steps": 2},
    "optp": {"iterations": 2, "unroll_steps": 10},
    "regime_a": {"steps": 3},
    "regime_b": {"steps": 2},
}

VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "back_gradient": {
        "inner_steps": {"inner_steps": 7, "hypergradient": "unrolled"},
        "inner_lr": {"inner_lr": 0.05, "hypergradient": "unrolled"},
        "step": {"step": 0.5},
        "iterations": {"iterations": 3},
        "batch_size": {"batch_size": 5},
        "restarts": {"restarts": 1, "patience": 1, "min_gain": 0.9},
        "patience": {"patience": 1},
        "min_gain": {"min_gain": 0.5},
        "checkpoint_every": {"checkpoint_every": 2, "hypergradient": "unrolled"},
        "optimize_response": {"optimize_response": False},  # regression: the regression audit runs it too
        "learn_l2": {"learn_l2": True},
        "l2_lr": {"l2_lr": 0.5, "learn_l2": True},
        "l2_range": {"l2_range": [-6.0, 4.0], "learn_l2": True},
        "l2_init": {"l2_init": 1.0, "learn_l2": True},
        "region_quantile": {"region": "sphere", "region_quantile": 0.9},
        "region_margin": {"region": "sphere", "region_margin": 0.01},
        "evade_rate": {"evade": "loss_filter", "evade_rate": 0.2},
        "evade_weight": {"evade": "loss_filter", "evade_weight": 0.1},
        "evade_scale": {"evade": "loss_filter", "evade_scale": 10.0},
        "starts": {"starts": ["training"]},
        "inner_tol": {"inner_tol": 1e-5},
        "cg_tol": {"cg_tol": 1e-4},
        "cg_max_iter": {"cg_max_iter": 50},
        "precondition": {"precondition": "none"},
        "ls_shrink": {"ls_shrink": 0.3},
        "ls_grow": {"ls_grow": 1.5},
        "ls_tries": {"ls_tries": 3},
        "start_screen": {"start_screen": 2},
        "stall_gain": {"stall_gain": 0.1, "stall_window": 1},
        "stall_window": {"stall_window": 2},
        "implicit": {"implicit": {"iterations": 1}},
        "refit_scalers": {"refit_scalers": False},  # a no-op without a pipeline; its effect: tests/test_sklearn_pipeline.py
    },
    "gradient_canceling": {
        "target_eps": {"target": "label_flip", "target_eps": 0.5},
        "target_multiple": {"target": "label_flip", "target_multiple": 3.0, "labels": "choose"},
        "refit_scalers": {"refit_scalers": True},  # a no-op without a pipeline; its effect: tests/test_sklearn_pipeline.py
        "eps_w": {"target": "gradpc", "eps_w": 0.5},
        "eps_w_grid": {"eps_w_grid": [0.5, 1.0]},
        "target_file": {"target": "file", "target_file": TARGET_FILE},
        "target=file": {"target": "file", "target_file": TARGET_FILE},
        "lr": {"lr": 0.3},
        "epochs": {"epochs": 25},
        "momentum": {"momentum": 0.5},
        "batch_size": {"batch_size": 50},
        "region_quantile": {"region": "sphere", "region_quantile": 0.9},
        "region_margin": {"region": "sphere", "region_margin": 0.01},
        "gradpc_steps": {"gradpc_steps": 20},
        "log_every": {"log_every": 5},
        "relabel_every": {"labels": "choose", "relabel_every": 5},
        "relabel_until": {"labels": "choose", "relabel_until": 0.5},
        "search_multiples": {"target": "search", "search_multiples": [1.0, 2.0]},
    },
    "label_flip": {},
    "regime_a": {"radius": {"radius": 0.5}, "overall": {"overall": 1.0}, "steps": {"steps": 4}},
    "regime_b": {"steps": {"steps": 3}},
    "regime_c": {},
    "statp": {},
    "tgda": {
        "epochs": {"epochs": 3},
        "leader_lr": {"leader_lr": 0.01},
        "leader_steps": {"leader_steps": 2},
        "follower_lr": {"follower_lr": 0.05},
        "follower_steps": {"follower_steps": 3},
        "batch_size": {"batch_size": 100},
        "cg_max_iter": {"cg_max_iter": 10},
        "cg_tol": {"cg_tol": 0.1},
        "damping": {"damping": 0.1},
        "precondition": {"precondition": "kfac"},
        "generator_width": {"generator_width": 16},
        "pretrain": {"pretrain": False},
        "pretrain_epochs": {"pretrain_epochs": 2},
        "pretrain_lr": {"pretrain_lr": 0.001},
        "pretrain_batch_size": {"pretrain_batch_size": 50},
        "pretrain_seed": {"pretrain_seed": 1},
        "log_every": {"log_every": 1},
        "n_examples": {"n_examples": 2},
    },
    "optp": {"iterations": {"iterations": 3}, "step": {"step": 0.3}, "unroll_steps": {"unroll_steps": 12}, "tol": {"tol": 1e-4}},
    "minmax": {"quantile": {"quantile": 0.9}, "margin": {"margin": 0.01}, "lr": {"lr": 0.1}, "bound_rounds": {"bound_rounds": 5}},
    # defenses
    "dpa": {"partitions": {"partitions": 10}, "aggregation": {"aggregation": "runoff"}, "batched": {"batched": False}},
    "fa": {"partitions": {"partitions": 5}, "spread": {"spread": 2}, "aggregation": {"aggregation": "runoff"}, "batched": {"batched": False}},
    "influence_filter": {"damping": {"damping": 0.1}, "cg_iter": {"cg_iter": 50}, "cg_tol": {"cg_tol": 1e-4}},
    "sever": {"rounds": {"rounds": 1}, "max_params": {"max_params": 1000}},
    "sphere": {"quantile": {"quantile": 0.9}},
    "slab": {"quantile": {"quantile": 0.9}},
    "sphere_slab": {"quantile": {"quantile": 0.9}},
    "trim": {"n_keep": {"n_keep": 200}, "max_iter": {"max_iter": 10}, "rtol": {"rtol": 1e-4}, "restarts": {"restarts": 2}},
}
NOT_IN_THE_GRID = {"minmax": "the min-max stage runs it (minimax/sanitiser config), not the attack grid: tests/test_minimax.py"}
REGRESSION = {"optp", "trim", "huber", "ransac"}


def _variants(name: str, cls: type) -> list[tuple[str, dict[str, Any]]]:
    """(parameter, the params of one attack or defense entry) for every parameter of ``cls.Params``."""
    out = []
    for field, info in cls.Params.model_fields.items():
        options = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
        if options:
            own = VALUES.get(name, {})
            out += [(f"{field}={o}", own.get(f"{field}={o}", {field: o})) for o in options if o != info.default]
        else:
            assert field in VALUES.get(name, {}), f"{name}.{field}: give it a non-default value in VALUES"
            out.append((field, VALUES[name][field]))
    return out


def _audit(tmp_path: Path, dataset: str | dict, model: str, attacks: list[dict], defenses: list[dict] | None = None) -> list:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = dataset if isinstance(dataset, dict) else {"name": dataset}
    cfg = {"name": "params", "dataset": data, "model": {"name": model}, "candidates": {"l2": [0.01]}, "budgets": [0.1],
           "seeds": [0], "device": "cpu", "attacks": attacks, "confirm": False, "adaptive": {"enabled": "off"},
           "poisonability": {"enabled": "off"}}  # fmt: skip
    if defenses:
        cfg["defenses"] = defenses
    result = CliRunner().invoke(cli, ["run", str(write_yaml(tmp_path / "params.yaml", cfg)), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code in (0, 4), result.output[-2000:]  # 4: some cell failed, named below
    cells = stored_cells(tmp_path / "out" / "params")
    failed = {c.attack + "/" + c.defense: c.error for c in cells if c.status != "ok"}
    assert result.exit_code == 0 and not failed, (result.output[-2000:], failed)
    return cells


def _target_file(tmp_path: Path) -> str:
    """A Gradient Canceling target as the file form takes it: a state dict of the victim (breast_cancer logreg)."""
    torch.manual_seed(0)
    path = tmp_path / "target.pt"
    torch.save({"linear.weight": torch.randn(2, 30) * 0.1, "linear.bias": torch.zeros(2)}, path)
    return str(path)


def _entries(name: str, target_file: str) -> list[dict[str, Any]]:
    entries = []
    for label, params in _variants(name, ATTACKS[name]):
        params = {k: (target_file if v == TARGET_FILE else v) for k, v in params.items()}
        entries.append({"name": name, "id": f"{name}:{label}", "params": {**SMOKE.get(name, {}), **params}})
    return entries or [{"name": name, "id": name, "params": dict(SMOKE.get(name, {}))}]


def test_every_parameter_has_a_value():
    for name, cls in {**ATTACKS, **DEFENSES}.items():
        if name not in NOT_IN_THE_GRID:
            _variants(name, cls)


CLASSIFICATION_ATTACKS = [pytest.param("back_gradient", marks=pytest.mark.slow)] + [  # back-gradient's 37 cells take ~40 s
    "gradient_canceling", "label_flip", "regime_a", "regime_b", "regime_c", "statp"]  # fmt: skip


@pytest.mark.parametrize("name", CLASSIFICATION_ATTACKS)
def test_every_attack_parameter_runs_through_a_config_into_a_cell(tmp_path, name):
    entries = _entries(name, _target_file(tmp_path))
    cells = _audit(tmp_path, "breast_cancer", "logreg", entries)
    assert {c.attack for c in cells} == {e["id"] for e in entries}


IMAGE_ONLY = {"tgda:generator=conv"}  # the convolutional generator needs image data: run on a slice of mnist5k


@pytest.mark.slow
def test_every_tgda_parameter_runs_through_a_config_into_a_cell(tmp_path):
    entries = _entries("tgda", "")
    flat = [e for e in entries if e["id"] not in IMAGE_ONLY]
    cells = _audit(tmp_path / "flat", "breast_cancer", "logreg", flat)
    assert {c.attack for c in cells} == {e["id"] for e in flat}
    images = [e for e in entries if e["id"] in IMAGE_ONLY]
    cells = _audit(tmp_path / "images", {"name": "mnist5k", "n_samples": 600}, "logreg", images)
    assert {c.attack for c in cells} == IMAGE_ONLY


def test_every_defense_parameter_runs_through_a_config_into_a_cell(tmp_path):
    defenses = []
    for name, cls in sorted(DEFENSES.items()):
        if name in REGRESSION or "classification" not in cls.tasks or "torch" not in cls.victims:
            continue  # RONI needs a scikit-learn victim (tests/test_art_detectors.py) and has no parameters
        variants = _variants(name, cls) or [("", {})]
        defenses += [{"name": name, "id": f"{name}:{label}" if label else name, "params": params} for label, params in variants]
    cells = _audit(tmp_path, "breast_cancer", "logreg", [{"name": "label_flip", "id": "lf", "params": {"variant": "adversarial"}}], defenses)
    assert {c.defense for c in cells} == {d["id"] for d in defenses}


@pytest.mark.slow
def test_every_regression_parameter_runs_through_a_config_into_a_cell(tmp_path):
    attacks = _entries("optp", "") + [{"name": "back_gradient", "id": "bg:optimize_response",
                                       "params": {**SMOKE["back_gradient"], "optimize_response": False}}]  # fmt: skip
    defenses = []
    for name in sorted(REGRESSION - {"optp"}):
        variants = _variants(name, DEFENSES[name]) or [("", {})]
        defenses += [{"name": name, "id": f"{name}:{label}" if label else name, "params": params} for label, params in variants]
    cells = _audit(tmp_path, "diabetes", "ridge", attacks, defenses)
    assert {c.attack for c in cells} == {a["id"] for a in attacks} and {c.defense for c in cells} == {d["id"] for d in defenses}
    assert json.loads(cells[0].candidate) == {"l2": 0.01}


def test_every_parameter_is_documented_in_the_readme():
    """The README's attack and defense tables name every parameter of every registered attack and defense."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = []
    for name, cls in sorted({**ATTACKS, **DEFENSES}.items()):
        rows = " ".join(line for line in readme.splitlines() if re.match(rf"\| (`[a-z_]+`, )*`{name}`[ ,|]", line))
        assert rows, f"README has no table row for {name}"
        missing += [f"{name}.{f}" for f in cls.Params.model_fields if not re.search(rf"`{f}[`: ]", rows)]
    assert not missing, missing
