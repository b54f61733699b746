"""The shipped examples stay valid: every config parses, and the wheel carries the templates."""

import subprocess
import sys
from pathlib import Path

import pytest

from audit.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    cfg = load_config(path)
    assert cfg.candidate_grid() and cfg.attacks


def test_at_least_three_example_configs_and_an_api_script():
    assert len(list(EXAMPLES.glob("*.yaml"))) >= 3
    assert (EXAMPLES / "api_example.py").is_file()


@pytest.mark.slow
def test_non_editable_wheel_renders_reports(tmp_path):
    """`pip install .` (not -e) must ship templates/ inside the package."""
    root = EXAMPLES.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"), str(root)], check=True)
    wheel = next((tmp_path / "w").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True)  # fmt: skip
    code = "import audit.report as r, sys; d = r.templates_dir(); print(d); sys.exit(0 if 'site' in str(d) else 1)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (Path(proc.stdout.strip()) / "report.html.j2").is_file()


@pytest.mark.slow  # 15–25 s; the suite's time goes to tests of the audit itself (the GPU run exercises the suite)
def test_gpu_suite_smoke_runs_every_part_on_the_cpu(tmp_path):
    """The GPU suite's every code path at tiny sizes on the CPU (issue 20): CI keeps it alive."""
    import json

    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    suite = json.loads(out.read_text())
    from examples.benchmarks.gpu_suite import PARTS

    assert [p["part"] for p in suite["parts"]] == list(PARTS) and suite["smoke"] is True and suite["device"] == "cpu"
    assert suite["device_name"].startswith("CPU")
    for part in suite["parts"]:
        assert "error" not in part, part
        if part["part"] != "default_audit_paper":
            assert part["attack_seconds"] > 0 and part["n_train"] == 300 and part["peak_gpu_gib"] is None
    assert suite["parts"][-1]["cells"] >= 1 and suite["parts"][-1]["failed"] == 0


@pytest.mark.parametrize("path", sorted((EXAMPLES / "ci").glob("*.yml")), ids=lambda p: p.name)
def test_ci_examples_use_real_commands_and_options(path):
    """Every `poison-audit …` line of the CI examples names a command and options this version has,
    and the workflow runs, gates, exports and verifies."""
    import re
    import shlex

    import yaml

    from audit.cli import cli

    yaml.safe_load(path.read_text())  # valid YAML
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # shell line continuations
    text = re.sub(r">\n\s+(poison-audit[^\n]*)\n\s+([^\n]*)", r"\1 \2", text)  # YAML folded scalars
    used = set()
    for line in re.findall(r"poison-audit (\w+)([^\n]*)", text):
        name, rest = line
        if name not in cli.commands:
            continue  # "poison-audit @ git+…" in pip install
        used.add(name)
        options = {opt for p in cli.commands[name].params for opt in getattr(p, "opts", [])}
        for word in shlex.split(rest.replace("$", "")):
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{path.name}: poison-audit {name} has no option {word}"
    assert {"run", "gate", "export", "verify"} <= used


@pytest.mark.slow  # ~30 s: 8 trainings of the width benchmark at widths 16 and 32
def test_width_benchmark_smoke(tmp_path):
    import json

    proc = subprocess.run([sys.executable, str(EXAMPLES / "benchmarks" / "width_mnist5k.py"), "--smoke", "--workers", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "width_mnist5k_smoke.json").read_text())
    assert {(s["attack"], s["width"]) for s in record["summary"]} >= {("clean", 16), ("regime_b", 32)}
    assert (tmp_path / "width_mnist5k_smoke.png").stat().st_size > 10_000


@pytest.mark.slow  # 30–50 s each on 2 cores: the README's scikit-learn and table examples, as a user runs them
@pytest.mark.parametrize(("script", "expect"), [
    ("sklearn_pipeline.py", "gate: "),
    ("tables.py", r"poison sets inside the domain: (\d+) of \1;"),  # every one
    ("tables.py --model pipeline", r"your model: the audited model matches yours(.|\n)*poison sets inside the domain: (\d+) of \2;"),
])  # fmt: skip
def test_the_scikit_learn_and_table_examples_run(tmp_path, script, expect):
    import re

    name, *extra = script.split()
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *extra, "--out", str(tmp_path / "reports")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(expect, proc.stdout) and "report: " in proc.stdout, proc.stdout[-2000:]
