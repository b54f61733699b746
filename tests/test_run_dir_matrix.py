"""Every path the tool writes in a run directory × every kind of link × every command: nothing outside changes
(issue 33's filesystem matrix).

A link at the store, its side files, the lock, ``poisons/`` and a file in it, ``compliance/`` and a file in it,
the report, the summary, the gate file, the manifest, its signature or a temporary — a symbolic link to a file
outside, a symbolic link to a folder outside, or a hard link to a file outside — and then ``run`` (a resume),
``run --restart``, ``report``, ``gate``, ``export`` and ``verify``: the files outside keep their names and bytes,
and the command ends with an exit code and at most a one-line error, never a traceback. A path the tool replaces
by renaming may replace the link (the link, not its target, is gone); one it writes in place is refused.
The symbolic-link-to-a-file column runs in the default suite; the rest of the matrix is ``slow``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml

FILES = ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm", "results.sqlite-journal", ".poison-audit.lock",
         "report.html", "summary.json", "gate.xml", "manifest.json", "manifest.sig", "compliance/record.md",
         "poisons/POISON", "poisons/half.npz.tmp")  # fmt: skip
FOLDERS = ("poisons", "compliance")
LINKS = ("symlink_file", "symlink_folder", "hard_link")
COMMANDS = ("run", "restart", "report", "gate", "export", "verify")


def _cases() -> list:
    cases = []
    for path in FILES + FOLDERS:
        for link in LINKS:
            if link == "hard_link" and path in FOLDERS:
                continue  # a folder cannot be hard-linked
            for command in COMMANDS:
                slow = link != "symlink_file" or command in ("run", "restart")
                marks = [pytest.mark.slow] if slow else []
                cases.append(pytest.param(path, link, command, marks=marks, id=f"{path}-{link}-{command}"))
    return cases


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run with every artifact: report, summary, gate file, compliance record, signed manifest."""
    base = tmp_path_factory.mktemp("matrix")
    config = write_yaml(base / "audit.yaml", tiny_config(budgets=[0.1], candidates={"l2": [0.01]}))
    runner = CliRunner()
    assert runner.invoke(cli, ["run", str(config), "--out", str(base / "out"), "--quiet"]).exit_code == 0
    run = base / "out" / "tiny"
    assert runner.invoke(cli, ["gate", str(run), "--budget", "0.1", "--max-drop", "100"]).exit_code == 0
    assert runner.invoke(cli, ["keygen", str(base / "key.pem")]).exit_code == 0
    signed = runner.invoke(cli, ["export", str(run), "--format", "md", "--sign-key", str(base / "key.pem"), "--signer", "QA"])
    assert signed.exit_code == 0, signed.output
    assert any((run / "poisons").glob("*.npz")) and (run / "manifest.sig").is_file() and (run / "compliance" / "record.md").is_file()
    return config, run


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _place_link(run: Path, path: str, link: str, outside: Path) -> None:
    """Put a link of kind ``link`` at ``run/path`` (whatever was there removed), pointing outside."""
    if path == "poisons/POISON":
        path = str(next((run / "poisons").glob("*.npz")).relative_to(run))
    target = run / path
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the store's own link points at a valid copy of the store, which a command would otherwise read and write
    source = outside / ("store.sqlite" if path == "results.sqlite" else "keep.txt")
    if link == "symlink_file":
        os.symlink(source, target)
    elif link == "symlink_folder":
        os.symlink(outside / "folder", target)
    else:
        os.link(source, target)


@pytest.mark.parametrize("path, link, command", _cases())
def test_no_link_in_the_run_directory_lets_a_command_touch_anything_outside(finished, tmp_path, path, link, command):
    config, original = finished
    run = tmp_path / "out" / "tiny"
    shutil.copytree(original, run, symlinks=True)
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "keep.txt").write_text("precious")
    (outside / "folder" / "keep.npz").write_bytes(b"precious")
    (outside / "folder" / "record.md").write_text("precious")
    shutil.copy(original / "results.sqlite", outside / "store.sqlite")
    before = _tree(outside)
    _place_link(run, path, link, outside)
    args = {"run": ["run", str(config), "--out", str(run.parent), "--quiet"],
            "restart": ["run", str(config), "--out", str(run.parent), "--quiet", "--restart"],
            "report": ["report", str(run)], "gate": ["gate", str(run), "--budget", "0.1", "--max-drop", "100"],
            "export": ["export", str(run), "--format", "md"], "verify": ["verify", str(run)]}[command]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
    assert _tree(outside) == before, f"{command} changed a file outside the run through {link} at {path}"
