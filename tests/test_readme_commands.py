"""Every shell command the README shows runs as written, against a tiny run (issue 31: the README's
``export --format pdf md`` form once failed with "Got unexpected extra argument")."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml

ROOT = Path(__file__).resolve().parents[1]
#: commands shown but not run here, and why (each is exercised elsewhere)
NOT_RUN = {
    ("run",): "the embedded default audit takes about 30 minutes (README: its measured time)",
    ("run", "examples/mnist5k_logreg.yaml", "--executor", "ray"): "a Ray cluster: tests/test_ray.py runs the Ray executor",
}


def readme_commands() -> list[list[str]]:
    """The poison-audit / ``python -m audit`` commands of the README's bash blocks, as argument lists."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["poison-audit"]:
                out.append(words[1:])
            elif words[:3] == ["python", "-m", "audit"]:
                out.append(words[3:])
    return out


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert len(commands) >= 8 and any(c[:1] == ["export"] for c in commands)


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch):
    """In a scratch directory whose config files are tiny audits named as the README's run directories."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "step-summary.md"))
    for config in ("examples/breast_cancer_logreg.yaml", "examples/mnist5k_mlp_width.yaml", "CONFIG.yaml"):
        (tmp_path / config).parent.mkdir(parents=True, exist_ok=True)
        write_yaml(tmp_path / config, tiny_config(name="breast-cancer-logreg", output_dir="reports"))
    ran = 0
    for words in readme_commands():
        if tuple(words) in NOT_RUN:
            continue
        args = [os.path.expandvars(w) for w in words]
        result = CliRunner().invoke(cli, args)
        allowed = (0, 1) if args[0] == "gate" else (0,)  # a gate may fail the tiny run's worst case: that is its verdict
        assert result.exit_code in allowed, f"poison-audit {' '.join(words)} → exit {result.exit_code}: {result.output[-800:]}"
        ran += 1
    assert ran >= 7
    assert (tmp_path / "reports/breast-cancer-logreg/compliance").is_dir() and (tmp_path / "step-summary.md").is_file()


@pytest.mark.parametrize("form", [["--format", "md", "--format", "json"]])
def test_the_export_forms_the_readme_names(tmp_path, form):
    from audit.config import parse_config
    from audit.grid.runner import run_audit

    run_dir = run_audit(parse_config(tiny_config(budgets=[0.1])), output_dir=tmp_path, progress=False)
    result = CliRunner().invoke(cli, ["export", str(run_dir), *form])
    assert result.exit_code == 0, result.output
    assert {p.suffix for p in (run_dir / "compliance").iterdir()} >= {".md", ".json"}
    assert "--format md --format json" in (ROOT / "README.md").read_text()
