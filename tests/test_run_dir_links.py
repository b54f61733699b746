"""Nothing outside the run is touched through a link (issue 33, serious defects 1 and 2).

A symbolic link (or a hard-linked file) at a path the tool writes, truncates or deletes inside a
run directory is refused with one line and exit 2, and the file or folder it points to is
unchanged: ``run --restart`` through ``poisons/``, the lock file, ``compliance/`` of ``export``,
the SQLite store and its side files.
"""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from audit.cli import cli
from tests.conftest import tiny_config, write_yaml


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("links")
    config = write_yaml(base / "audit.yaml", tiny_config(budgets=[0.1], candidates={"l2": [0.01]}))
    out = CliRunner().invoke(cli, ["run", str(config), "--out", str(base / "out"), "--quiet"])
    assert out.exit_code == 0, out.output
    return config, base / "out" / "tiny"


@pytest.fixture
def case(finished, tmp_path):
    """A copy of the finished run, and a folder outside it holding a file that must never change."""
    config, run = finished
    copy = tmp_path / "out" / "tiny"
    shutil.copytree(run, copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.npz").write_bytes(b"precious")
    (outside / "keep.txt").write_text("precious")
    return config, copy, outside


def _outside_unchanged(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["keep.npz", "keep.txt"]
    assert (outside / "keep.npz").read_bytes() == b"precious" and (outside / "keep.txt").read_text() == "precious"


def _refused(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output


def test_restart_never_deletes_through_a_linked_poisons_folder(case):
    config, run, outside = case
    shutil.rmtree(run / "poisons")
    os.symlink(outside, run / "poisons")
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run.parent), "--quiet", "--restart"])
    _refused(result, "poisons is a symbolic link")
    _outside_unchanged(outside)


@pytest.mark.parametrize("command", ["run", "report", "export"])
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_the_lock_file_is_never_a_file_elsewhere(case, command, link):
    config, run, outside = case
    (run / ".poison-audit.lock").unlink(missing_ok=True)
    (os.symlink if link == "symbolic" else os.link)(outside / "keep.txt", run / ".poison-audit.lock")
    args = {"run": ["run", str(config), "--out", str(run.parent), "--quiet"], "report": ["report", str(run)],
            "export": ["export", str(run), "--format", "md"]}[command]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    _refused(result, "symbolic link" if link == "symbolic" else "hard links")
    _outside_unchanged(outside)


def test_export_never_writes_into_a_linked_compliance_folder(case):
    _, run, outside = case
    shutil.rmtree(run / "compliance", ignore_errors=True)
    os.symlink(outside, run / "compliance")
    _refused(CliRunner().invoke(cli, ["export", str(run), "--format", "md"]), "compliance is a symbolic link")
    _outside_unchanged(outside)


@pytest.mark.parametrize("name", ["results.sqlite", "results.sqlite-wal"])
def test_the_store_is_never_written_through_a_link(case, name):
    config, run, outside = case
    if name == "results.sqlite":
        shutil.copy(run / name, outside / name)  # a valid store elsewhere, which a resume must not write into
        (run / name).unlink()
        os.symlink(outside / name, run / name)
        before = (outside / name).read_bytes()
    else:
        (run / name).unlink(missing_ok=True)
        os.symlink(outside / "keep.txt", run / name)
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(run.parent), "--quiet"])
    _refused(result, "is a symbolic link")
    if name == "results.sqlite":
        assert (outside / name).read_bytes() == before
        (outside / name).unlink()
    _outside_unchanged(outside)
