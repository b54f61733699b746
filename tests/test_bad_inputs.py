"""A generated catalogue of bad inputs: every one is one line on stderr, exit 2, no traceback, nothing written.

Malformed user data (npz, csv, image folders) and configs are built systematically — empty,
wrong dtype, wrong shape, non-finite, inconsistent, corrupt — and fed to ``poison-audit run``;
bad CLI values and unusable paths to every command. Validation only: none trains a model.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml

RNG = np.random.default_rng(0)
GOOD_X = RNG.random((60, 4)).astype(np.float32)
GOOD_Y = np.arange(60) % 2


def _npz_cases() -> dict[str, dict]:
    """Name → arrays for np.savez (each breaks one rule)."""
    return {
        "no_x_train": {"y_train": GOOD_Y},
        "no_y_train": {"x_train": GOOD_X},
        "x_1d": {"x_train": GOOD_X[:, 0], "y_train": GOOD_Y},
        "x_strings": {"x_train": GOOD_X.astype(str), "y_train": GOOD_Y},
        "x_nan": {"x_train": np.where(GOOD_X > 0.9, np.nan, GOOD_X), "y_train": GOOD_Y},
        "x_inf": {"x_train": np.where(GOOD_X > 0.9, np.inf, GOOD_X), "y_train": GOOD_Y},
        "y_short": {"x_train": GOOD_X, "y_train": GOOD_Y[:-5]},
        "y_2d": {"x_train": GOOD_X, "y_train": np.stack([GOOD_Y, GOOD_Y], 1)},
        "y_strings": {"x_train": GOOD_X, "y_train": np.array(["a", "b"] * 30)},
        "y_nan": {"x_train": GOOD_X, "y_train": np.where(GOOD_Y > 0, np.nan, 0.0)},
        "empty_x": {"x_train": np.zeros((0, 4), np.float32), "y_train": np.zeros(0, int)},
        "val_without_y": {"x_train": GOOD_X, "y_train": GOOD_Y, "x_val": GOOD_X},
        "val_wrong_width": {"x_train": GOOD_X, "y_train": GOOD_Y, "x_val": GOOD_X[:, :2], "y_val": GOOD_Y},
        "lo_above_hi": {"x_train": GOOD_X, "y_train": GOOD_Y, "lo": np.ones(4), "hi": np.zeros(4)},
        "lo_wrong_shape": {"x_train": GOOD_X, "y_train": GOOD_Y, "lo": np.zeros(3), "hi": np.ones(3)},
        "single_class": {"x_train": GOOD_X, "y_train": np.zeros(60, int)},
        # issue 33: labels that would make a huge or phantom class, features the tool cannot compute in
        "labels_0_and_1e6": {"x_train": GOOD_X, "y_train": np.where(GOOD_Y > 0, 1_000_000, 0)},
        "labels_1_to_k": {"x_train": GOOD_X, "y_train": GOOD_Y + 1},
        "labels_uint64_huge": {"x_train": GOOD_X, "y_train": np.where(GOOD_Y > 0, np.uint64(2**63 - 2), np.uint64(0))},
        "x_complex": {"x_train": GOOD_X.astype(np.complex64) * (1 + 1j), "y_train": GOOD_Y},
        "x_beyond_float32": {"x_train": GOOD_X.astype(np.float64) * 1e300, "y_train": GOOD_Y},
    }


def _csv_cases() -> dict[str, str]:
    rows = [f"{i % 2},{x[0]:.3f},{x[1]:.3f}" for i, x in enumerate(GOOD_X)]
    return {
        "empty": "",
        "header_only": "label,a,b\n",
        "no_label_column": "a,b\n" + "\n".join(r.split(",", 1)[1] for r in rows),
        "non_numeric": "label,a,b\n" + "\n".join(rows[:30]) + "\n1,x,y\n",
        "ragged": "label,a,b\n" + "\n".join(rows[:30]) + "\n1,0.5\n",
        "nan_feature": "label,a,b\n" + "\n".join(rows[:30]) + "\n1,nan,0.5\n",
        "binary_garbage": "\x00\x01\x02\xff\xfe",
        "only_the_label_column": "label\n" + "\n".join(str(i % 2) for i in range(60)) + "\n",
    }


def _write(kind: str, name: str, root: Path) -> Path:
    if kind == "npz":
        path = root / f"{name}.npz"
        np.savez(path, **_npz_cases()[name])
    elif kind == "csv":
        path = root / f"{name}.csv"
        text = _csv_cases()[name]
        path.write_bytes(text.encode("latin-1") if name == "binary_garbage" else text.encode())
    else:
        path = root / name
        path.mkdir()
        _image_case(name, path)
    return path


IMAGE_CASES = ("empty_folder", "one_class", "not_images", "mixed_sizes", "files_at_top", "decompression_bomb")


def _image_case(name: str, path: Path) -> None:
    from PIL import Image

    def save(where: Path, size: tuple[int, int] = (8, 8)) -> None:
        where.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((RNG.random(size) * 255).astype(np.uint8)).save(where)

    if name == "one_class":
        for i in range(20):
            save(path / "cat" / f"{i}.png")
    elif name == "not_images":
        for c in ("a", "b"):
            (path / c).mkdir()
            for i in range(10):
                (path / c / f"{i}.png").write_text("not an image")
    elif name == "mixed_sizes":
        for i in range(10):
            save(path / "a" / f"{i}.png")
            save(path / "b" / f"{i}.png", (9, 7))
    elif name == "files_at_top":
        for i in range(10):
            save(path / f"{i}.png")
    elif name == "decompression_bomb":  # issue 33: a few kB on disk, 25 million pixels decoded
        for c in ("a", "b"):
            save(path / c / "0.png")
        Image.new("1", (5000, 5000)).save(path / "a" / "1.png")


DATA_CASES = [("npz", n) for n in _npz_cases()] + [("csv", n) for n in _csv_cases()] + [("image_folder", n) for n in IMAGE_CASES]

CONFIG_CASES = {
    "empty": "",
    "a_list": "- 1\n- 2\n",
    "a_scalar": "42\n",
    "unknown_key": "name: x\nbudgetz: [0.1]\n",
    "budget_nan": "budgets: [.nan]\n",
    "budget_inf": "budgets: [.inf]\n",
    "budget_negative": "budgets: [-0.1]\n",
    "budget_above_one": "budgets: [1.5]\n",
    "budget_string": "budgets: [lots]\n",
    "budgets_empty": "budgets: []\n",
    "l2_negative": "candidates: {l2: [-1]}\n",
    "l2_nan": "candidates: {l2: [.nan]}\n",
    "width_fraction": "model: {name: mlp}\ncandidates: {width: [2.5]}\n",
    "seeds_negative": "seeds: [-1]\n",
    "seeds_repeat": "seeds: [1, 1]\n",
    "seeds_bool": "seeds: [true]\n",
    "unknown_attack": "attacks: [{name: nope}]\n",
    "attack_bad_param": "attacks: [{name: label_flip, params: {variant: sideways}}]\n",
    "attack_unknown_param": "attacks: [{name: tgda, params: {epochz: 3}}]\n",
    "duplicate_attacks": "attacks: [label_flip, label_flip]\n",
    "unknown_defense": "defenses: [none, nope]\n",
    "defense_bad_param": "defenses: [none, {name: trim, params: {restarts: 0}}]\n",
    "unknown_model": "model: {name: svm}\n",
    "unknown_dataset": "dataset: {name: nope}\n",
    "dataset_path_missing": "dataset: {name: npz, path: /no/such/file.npz}\n",
    "name_dotdot": "name: ..\n",
    "name_slash": "name: a/b\n",
    "yaml_syntax": "budgets: [0.1\n",
    "tabs": "name: x\n\tbudgets: [0.1]\n",
    "device_bogus": "device: tpu9\n",
    "lbfgs_batch": "training: {optimizer: lbfgs, batch_size: 10}\n",
    # issue 33: inputs that exhausted the machine or left a traceback
    "yaml_alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "system: {name: *f}\n",
    "yaml_deeply_nested": "name: " + "[" * 5000 + "]" * 5000 + "\n",
    "seed_above_int64": "seeds: [18446744073709551617]\n",
    "l2_huge": "candidates: {l2: [1.0e+308]}\n",
    "width_huge": "model: {name: mlp}\ncandidates: {width: [1000000000000]}\n",
    "factory_path_traversal": "model: {name: user, factory: '../../x:f'}\n",
    "split_larger_than_the_data": "dataset: {name: breast_cancer, split: {val: 1.0e+30}}\n",
    "attacker_split_larger_than_the_data": "dataset: {name: breast_cancer}\nthreat: {attacker_split: 1.0e+30}\n",
    "epochs_huge": "training: {epochs: 1000000000000}\n",
}

CLI_CASES = {
    "gate_budget_nan": ["gate", "{run}", "--budget", "nan", "--max-drop", "1"],
    "gate_budget_inf": ["gate", "{run}", "--budget", "inf", "--max-drop", "1"],
    "gate_max_drop_nan": ["gate", "{run}", "--budget", "0.1", "--max-drop", "nan"],
    "gate_max_drop_negative": ["gate", "{run}", "--budget", "0.1", "--max-drop", "-1"],
    "gate_budget_not_run": ["gate", "{run}", "--budget", "0.2", "--max-drop", "1"],
    "gate_no_run_dir": ["gate", "{tmp}/nothing", "--budget", "0.1", "--max-drop", "1"],
    "gate_not_a_run": ["gate", "{tmp}", "--budget", "0.1", "--max-drop", "1"],
    "gate_corrupt_store": ["gate", "{corrupt}", "--budget", "0.1", "--max-drop", "1"],
    "report_file": ["report", "{tmp}/afile.txt"],
    "report_corrupt_store": ["report", "{corrupt}"],
    "run_threads_zero": ["run", "{config}", "--threads", "0"],
    "run_out_is_a_file": ["run", "{config}", "--out", "{tmp}/afile.txt"],
    "run_out_unwritable": ["run", "{config}", "--out", "/proc/poison-audit-cannot-write-here"],
    "run_config_missing": ["run", "{tmp}/no.yaml"],
    "run_config_is_dir": ["run", "{tmp}"],
    "threshold_no_target": ["threshold", "--dataset", "breast_cancer"],
    "threshold_both_targets": ["threshold", "--dataset", "breast_cancer", "--eps-w", "0.1", "--target", "{tmp}/afile.txt"],
    "threshold_eps_nan": ["threshold", "--dataset", "breast_cancer", "--eps-w", "nan"],
    "threshold_l2_nan": ["threshold", "--dataset", "breast_cancer", "--eps-w", "0.1", "--l2", "nan"],
    "threshold_target_text": ["threshold", "--dataset", "breast_cancer", "--target", "{tmp}/afile.txt"],
    "threshold_unknown_dataset": ["threshold", "--dataset", "nope", "--eps-w", "0.1"],
}


def _assert_one_line_error(result, where: Path | None = None, before: set | None = None) -> None:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(("error: ", "Error: ")), result.output
    if where is not None:
        assert set(where.rglob("*")) == (before or set()), "nothing may be written"


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.mark.parametrize("kind, name", DATA_CASES, ids=[f"{k}-{n}" for k, n in DATA_CASES])
def test_bad_user_data(runner, tmp_path, kind, name):
    path = _write(kind, name, tmp_path)
    extra = {"label_column": "label"} if kind == "csv" else {}
    config = write_yaml(tmp_path / "audit.yaml", tiny_config(dataset={"name": kind, "path": str(path), **extra}))
    out = tmp_path / "out"
    _assert_one_line_error(runner.invoke(cli, ["run", str(config), "--out", str(out), "--quiet"]))
    assert not out.exists(), "nothing may be written"


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_bad_configs(runner, tmp_path, name):
    path = tmp_path / "audit.yaml"
    path.write_text(CONFIG_CASES[name])
    out = tmp_path / "out"
    _assert_one_line_error(runner.invoke(cli, ["run", str(path), "--out", str(out), "--quiet"]))
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from audit.config import parse_config
    from audit.grid import run_audit

    tmp = tmp_path_factory.mktemp("finished")
    run = run_audit(parse_config(tiny_config(budgets=[0.1])), output_dir=tmp, progress=False)
    return run


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_bad_cli_values(runner, tmp_path, finished_run, name):
    (tmp_path / "afile.txt").write_text("not a run")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.sqlite").write_text("this is not a database")
    config = write_yaml(tmp_path / "audit.yaml", tiny_config())
    args = [a.format(run=finished_run, tmp=tmp_path, corrupt=corrupt, config=config) for a in CLI_CASES[name]]
    before = set(tmp_path.rglob("*"))
    _assert_one_line_error(runner.invoke(cli, args), tmp_path, before)


def test_the_catalogue_is_large():
    """The README quotes this count; keep it honest."""
    total = len(DATA_CASES) + len(CONFIG_CASES) + len(CLI_CASES)
    assert total >= 80, total
    assert len(set(itertools.chain(CONFIG_CASES, CLI_CASES))) == len(CONFIG_CASES) + len(CLI_CASES)


def _config_leaves(model, prefix=()):
    """Every field path of the config model, nested sections included (attacks/defenses have their own catalogue)."""
    from pydantic import BaseModel

    for name, f in model.model_fields.items():
        args = (*getattr(f.annotation, "__args__", ()), f.annotation)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and name not in ("attacks", "defenses"):
            yield from _config_leaves(sub, (*prefix, name))
        yield (*prefix, name)


SWEEP_VALUES = {"wrong_type": {"a": [1]}, "empty_string": "", "empty_list": [], "huge": 10**30, "negative": -1, "nan": float("nan")}
#: huge values a config may hold on purpose (all of the data, full batch, every candidate eligible) or that the plan
#: refuses with the data in hand (a split or attacker share larger than the data, a network larger than memory)
ACCEPTED_HUGE = {"dataset.n_samples", "dataset.split.val", "dataset.split.test", "model.width", "training.batch_size",
                 "recommendation.clean_tolerance", "recommendation.deployed_tolerance", "threat.attacker_split"}  # fmt: skip


def test_every_config_key_takes_a_wrong_type_an_empty_a_huge_and_a_negative_value_in_one_line():
    """Issue 33's generated sweep: for every config key, a wrong type, an empty string or list, 10³⁰, −1 and NaN give a
    one-line error — never a traceback — or are a value the key may take; a huge or negative value accepted by a key
    not listed above fails this test, so a new field gets its bounds."""
    from audit.config import AuditConfig, parse_config
    from audit.errors import AuditError

    accepted = []
    for path in _config_leaves(AuditConfig):
        for label, value in SWEEP_VALUES.items():
            cfg = tiny_config()
            node = cfg
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            try:
                parse_config(cfg)
            except AuditError as err:
                assert "\n" not in str(err) and len(str(err)) < 400, (path, label, str(err)[:200])
            else:
                if label in ("huge", "negative"):
                    accepted.append(".".join(path))
    assert set(accepted) <= ACCEPTED_HUGE, sorted(set(accepted) - ACCEPTED_HUGE)


def test_every_attack_and_defense_parameter_refuses_a_huge_count_and_a_non_finite_real_in_one_line():
    """Issue 33: the registries' parameters are bounded like the config's keys — 10¹² iterations (which would never end),
    ±inf and 1e40 (beyond float32, where the cells compute) are one-line errors through a config, for every registered
    attack and defense and every numeric field; 10⁶ stays a count a user may ask for."""
    import typing

    from audit.attacks import ATTACKS
    from audit.config import parse_config
    from audit.defenses import DEFENSES
    from audit.errors import AuditError

    checked = 0
    for axis, registry in (("attacks", ATTACKS), ("defenses", DEFENSES)):
        for name, cls in sorted(registry.items()):
            for field, info in cls.Params.model_fields.items():
                kinds = {a for a in (*typing.get_args(info.annotation), info.annotation) if a in (int, float)}
                cases = ([10**12] if int in kinds and field not in cls.Params.large_counts else []) + (
                    [float("inf"), -float("inf"), 1e40] if float in kinds else [])  # fmt: skip
                for value in cases:
                    with pytest.raises(AuditError) as err:
                        parse_config({**tiny_config(), axis: [{"name": name, "params": {field: value}}]})
                    assert "\n" not in str(err.value) and f"params: {field}" in str(err.value), (name, field, str(err.value))
                    checked += 1
    assert checked > 60, checked
    parse_config({**tiny_config(), "attacks": [{"name": "back_gradient", "params": {"iterations": 10**6}}]})


class _Payload:
    """Unpickling this touches a file: proof that a loader unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_pickled_target_is_never_unpickled_and_is_one_line(tmp_path):
    """Issue 33, defect 16: ``threshold --target`` on a pickle (a whole module, or a state dict carrying an object whose
    unpickling runs code) is one line on stderr and exit 2 — no warning before it, and the payload never runs."""
    import subprocess
    import sys

    import torch

    marker = tmp_path / "unpickled"
    torch.save(torch.nn.Linear(30, 2), tmp_path / "module.pt")
    torch.save({"linear.weight": _Payload(str(marker)), "linear.bias": torch.zeros(2)}, tmp_path / "payload.pt")
    for name in ("module.pt", "payload.pt"):
        proc = subprocess.run([sys.executable, "-m", "audit", "threshold", "--dataset", "breast_cancer", "--target", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --target"), (name, proc.stdout, proc.stderr)
        assert "Warning" not in proc.stderr
    assert not marker.exists()
