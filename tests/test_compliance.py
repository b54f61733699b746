"""The compliance pack (issue 17): the record's sections in every format, the manifest and its
signature, hostile names, the gate's CI outputs (JUnit per setting, step summary, JSON, soft-fail)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.config import parse_config
from audit.data import DatasetSpec, array_digest, load_dataset
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.grid.store import Store
from audit.report.compliance import REGULATION_MAP, config_digest
from audit.report.export import export, render_html
from audit.report.gate import SUMMARY_LIMIT, gate, step_summary
from audit.report.integrity import MANIFEST, SIGNATURE
from audit.report.templating import md_escape
from tests.conftest import tiny_config

HOSTILE = '<script>alert("pwn")</script> \'quoted\' & <b>bold</b>\n# not a heading | pipe'
SECTIONS = ["identification", "scope", "methods", "results", "statement", "mitigations", "limitations", "mapping", "test_log", "integrity"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run (8 cells + a loss filter) whose config carries hostile names, exported unsigned."""
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(
        attacks=[{"name": "label_flip", "id": "<img src=x onerror=alert(1)>", "params": {"variant": "adversarial"}},
                 {"name": "label_flip", "id": "lf_random"}],
        defenses=["none", "loss_filter"], adaptive={"enabled": "off"},
        system={"name": HOSTILE, "version": "2.3.1", "provider": "ACME <Labs>", "responsible": "Dr. Q. \"Tester\"",
                "intended_purpose": "tumour screening\nsecond line"},
    )  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=out, progress=False)
    export(run)
    return run


@pytest.fixture
def keys(tmp_path):
    runner = CliRunner()
    for name in ("signer", "other"):
        assert runner.invoke(cli, ["keygen", str(tmp_path / name)]).exit_code == 0
    return tmp_path / "signer", tmp_path / "signer.pub", tmp_path / "other.pub"


def test_record_json_has_every_section_and_the_digests(run_dir):
    doc = json.loads((run_dir / "compliance" / "record.json").read_text())
    assert [s["id"] for s in doc["sections"]] == SECTIONS
    facts = doc["facts"]
    data = load_dataset(DatasetSpec(name="breast_cancer")).with_attacker_split("attacker_split", None, 0)
    assert facts["data_sha256"] == data.digests() and set(facts["data_sha256"]) == {"train", "attacker", "validation", "test"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert facts["fingerprint"] == summary["fingerprint"]
    store = Store.open_existing(run_dir)
    try:
        assert facts["config_sha256"] == config_digest(store.meta("config"))
    finally:
        store.close()
    assert set(facts["model_sha256"]) == {"definition", "initial_weights"}
    assert facts["versions"]["torch"] and facts["device"] == "cpu"
    assert doc["signed"] is False and facts["signer"] is None
    assert facts["recommended"]["worst_case_damage"].keys() == {"0.1", "0.3"}
    # the test log: one dated row per cell, plus the run start and the export
    log = next(s for s in doc["sections"] if s["id"] == "test_log")["blocks"][1]["rows"]
    cells = [r for r in log if r[1] == "cell"]
    assert len(cells) == len(summary["cells"]) and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[0]) for r in cells)
    mapping = next(s for s in doc["sections"] if s["id"] == "mapping")["blocks"][1]["rows"]
    provisions = {r[1] for r in mapping}
    assert {"Art. 15(3)", "Art. 15(5)", "Annex IV 2(g)", "Annex IV 2(h)", "MEASURE 2.7", "clause 9"} <= provisions
    assert len(mapping) == len(REGULATION_MAP)


def test_record_markdown_has_every_section_and_statement(run_dir):
    md = (run_dir / "compliance" / "record.md").read_text()
    headings = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert [h.split(".", 1)[0] for h in headings] == [str(i) for i in range(1, 11)]
    for needle in ("Scope and threat model", "Declared accuracy and robustness (EU AI Act Art. 15(3))", "Mitigations and residual risk",
                   "Limitations", "Regulation mapping", "Test log", "AML.T0020", "availability poisoning", "**UNSIGNED**", "UNSIGNED: no key"):
        assert needle in md, needle  # fmt: skip
    statement = md.split("## 5.", 1)[1].split("## 6.", 1)[0]
    assert "test accuracy" in statement and "ε = 10 %" in statement and "lower bounds" in statement
    limitations = md.split("## 7.", 1)[1].split("## 8.", 1)[0]
    assert "Attack not run: Gradient Canceling" in limitations  # attacks not run, and why
    assert "Non-adaptive evaluation only: loss\\_filter" in limitations  # adaptive stage off: the filter never faced an adaptive attacker
    card = (run_dir / "compliance" / "model_card.md").read_text()
    assert card.startswith("## Evaluation\n") and "### Robustness to data poisoning" in card and "| 10 % |" in card


def test_hostile_names_are_text_in_html_markdown_and_pdf(run_dir):
    md = (run_dir / "compliance" / "record.md").read_text()
    assert "<script" not in md and "<img" not in md and "<b>" not in md and "&lt;script&gt;" in md
    assert "\n# not a heading" not in md and "\\# not a heading \\| pipe" in md  # a newline never starts a heading
    doc = json.loads((run_dir / "compliance" / "record.json").read_text())
    html = render_html({**doc, "sections": doc["sections"]})
    assert "<script>alert" not in html and "<img src=x" not in html and "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;" in html
    text = _pdf_text(run_dir / "compliance" / "record.pdf")
    assert '<script>alert("pwn")</script>' in text and "<img src=x onerror=alert(1)>" in text  # drawn as text, not interpreted
    assert md_escape("a|b\nc") == "a\\|b c"


def test_pdf_pages_are_not_blank_and_numbered(run_dir, tmp_path):
    pdf = run_dir / "compliance" / "record.pdf"
    pages = _pdf_pages(pdf, tmp_path)
    assert len(pages) >= 4
    for page in pages:
        ink = (page < 200).mean()  # share of dark pixels
        assert ink > 0.004, f"a blank page ({ink:.4f} dark)"
    text = _pdf_text(pdf)
    assert f"Page 1 of {len(pages)}" in text and f"Page {len(pages)} of {len(pages)}" in text
    assert "UNSIGNED" in text and "1. Identification" in text and "10. Integrity and signature" in text


def test_verify_passes_untouched_and_fails_after_any_changed_byte(run_dir, keys, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    private, public, other = keys
    runner = CliRunner()
    signed = runner.invoke(cli, ["export", str(run), "--format", "md", "--format", "json", "--sign-key", str(private), "--signer", "Q. Tester"])
    assert signed.exit_code == 0, signed.output
    assert not (run / "compliance" / "record.pdf").exists()  # a record of a format not asked for is not left stale
    manifest = json.loads((run / MANIFEST).read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"report.html", "summary.json", "results.sqlite", "compliance/record.md"} <= listed and any(p.startswith("poisons/") for p in listed)
    assert manifest["signature"]["signer"] == "Q. Tester"
    assert "Signed by Q. Tester" in (run / "compliance" / "record.md").read_text()
    ok = runner.invoke(cli, ["verify", str(run), "--public-key", str(public)])
    assert ok.exit_code == 0 and "files match" in ok.output, ok.output
    assert runner.invoke(cli, ["verify", str(run), "--public-key", str(other)]).exit_code == 1  # another key
    poison = next(p for p in sorted(listed) if p.startswith("poisons/"))
    for rel in ("report.html", "summary.json", "results.sqlite", poison, "compliance/record.md", MANIFEST):
        path = run / rel
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        bad = runner.invoke(cli, ["verify", str(run), "--public-key", str(public)])
        assert bad.exit_code == 1, rel
        assert (rel in bad.output) if rel != MANIFEST else ("signature does not verify" in bad.output), bad.output
        path.write_bytes(original)
    assert runner.invoke(cli, ["verify", str(run), "--public-key", str(public)]).exit_code == 0  # restored
    (run / SIGNATURE).rename(run / "sig.bak")
    assert runner.invoke(cli, ["verify", str(run)]).exit_code == 1
    (run / "sig.bak").rename(run / SIGNATURE)
    (run / "summary.json").unlink()
    missing = runner.invoke(cli, ["verify", str(run)])
    assert missing.exit_code == 1 and "summary.json: missing" in missing.output


def test_unsigned_manifest_refuses_a_public_key(run_dir, keys):
    runner = CliRunner()
    assert json.loads((run_dir / MANIFEST).read_text())["signature"] is None and not (run_dir / SIGNATURE).exists()
    plain = runner.invoke(cli, ["verify", str(run_dir)])
    assert plain.exit_code == 0 and "unsigned" in plain.output
    asked = runner.invoke(cli, ["verify", str(run_dir), "--public-key", str(keys[1])])
    assert asked.exit_code == 1 and "unsigned" in asked.output


def test_export_and_verify_errors_are_one_line(run_dir, tmp_path, keys):
    runner = CliRunner()
    cases = [
        (["export", str(tmp_path / "nothing")], "run directory not found"),
        (["export", str(run_dir), "--sign-key", str(tmp_path / "absent.pem")], "--sign-key: no such file"),
        (["export", str(run_dir), "--sign-key", str(keys[1])], "not a readable PEM private key"),
        (["verify", str(tmp_path / "nothing")], "run directory not found"),
        (["verify", str(run_dir), "--public-key", str(tmp_path / "absent.pub")], "--public-key: no such file"),
        (["keygen", str(keys[0])], "never overwrites a key"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    no_manifest = tmp_path / "empty"
    no_manifest.mkdir()
    assert runner.invoke(cli, ["verify", str(no_manifest)]).exit_code == 1


def test_signing_needs_a_signer(tmp_path, keys):
    cfg = tiny_config(attacks=[{"name": "label_flip", "id": "lf", "params": {"variant": "random"}}], budgets=[0.1], candidates={"l2": [0.01]})
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "json", "--sign-key", str(keys[0])])
    assert result.exit_code == 2 and "--signer" in result.output
    assert not (run / MANIFEST).exists() and not (run / "compliance" / "record.json").exists()  # nothing half-written


def test_resume_on_other_data_is_refused(tmp_path):
    cfg = parse_config(tiny_config(attacks=[{"name": "label_flip", "id": "lf", "params": {"variant": "random"}}], budgets=[0.1],
                                   candidates={"l2": [0.01]}))  # fmt: skip
    data = load_dataset(cfg.dataset)
    run_audit(cfg, dataset=data, output_dir=tmp_path, progress=False)
    run_audit(cfg, dataset=data, output_dir=tmp_path, progress=False)  # the same data resumes
    changed = load_dataset(cfg.dataset)
    changed.x_train[0, 0] += 0.25
    with pytest.raises(AuditError, match="was run on other data \\(the train split's SHA-256 differs"):
        run_audit(cfg, dataset=changed, output_dir=tmp_path, progress=False)


def test_array_digest_sees_values_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_digest(a) == array_digest(a.copy()) == array_digest(np.asfortranarray(a))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))
    assert array_digest(b) != array_digest(a)
    assert array_digest(a.astype(np.float64)) != array_digest(a) and array_digest(a.reshape(4, 3)) != array_digest(a)


# ---------------------------------------------------------------------------------------- the gate's CI outputs
def _check_junit(path: Path) -> ET.Element:
    """The JUnit shape CI systems read: testsuites > testsuite(name, tests, failures, errors, skipped) >
    testcase(classname, name) with at most one of failure/error/skipped, properties > property(name, value)."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    for suite in root.findall("testsuite"):
        assert suite.get("name")
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        for kind in ("failure", "error", "skipped"):
            counted = sum(c.find(kind) is not None for c in cases)
            assert int(suite.get(kind + "s" if kind != "skipped" else "skipped")) == counted, kind
        for case in cases:
            assert case.get("classname") and case.get("name")
            assert sum(case.find(k) is not None for k in ("failure", "error", "skipped")) <= 1
            for child in case:
                assert child.tag in ("properties", "failure", "error", "skipped", "system-out", "system-err")
        for prop in suite.iter("property"):
            assert prop.get("name") and prop.get("value") is not None
    return root


def test_junit_has_one_case_per_setting_and_budget_and_soft_fail(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    drop = summary["recommendation"]["worst_case_drop"]["0.3"]
    junit = tmp_path / "gate.xml"
    passed = gate(run_dir, 0.3, max_drop=drop + 0.5, junit=junit)
    root = _check_junit(junit)
    verdict, settings = root.findall("testsuite")
    assert passed.passed and verdict.get("failures") == "0"
    cases = settings.findall("testcase")
    assert len(cases) == len(summary["settings"]) * 2  # (candidate, defense) settings × budgets
    props = {p.get("name"): p.get("value") for p in cases[0].iter("property")}
    assert {"worst_case_damage", "worst_case_damage_ci95_low", "worst_case_damage_ci95_high", "clean_test", "worst_attack", "seeds"} <= set(props)
    failed = gate(run_dir, 0.3, max_drop=drop - 1.0, junit=junit)
    root = _check_junit(junit)
    assert not failed.passed and failed.exit_code == 1
    assert root.findall("testsuite")[0].get("failures") == "1" and root.findall("testsuite")[1].get("failures") == "1"
    soft = gate(run_dir, 0.3, max_drop=drop - 1.0, soft_fail=True, junit=junit)
    root = _check_junit(junit)
    assert soft.exit_code == 0 and not soft.passed
    assert all(s.get("failures") == "0" for s in root.findall("testsuite")) and "advisory" in root.find("testsuite/testcase/skipped").get("message")


def test_gate_cli_summary_and_json(run_dir, tmp_path):
    runner = CliRunner()
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    result = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.1", "--max-drop", "100", "--summary", str(step), "--json",
                                 "--junit", str(tmp_path / "j.xml")])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["verdict"] == "pass" and out["exit_code"] == 0 and out["budget"] == 0.1 and len(out["cases"]) == 8
    text = step.read_text()
    assert text.startswith("earlier step\n") and "✅ PASS" in text and "| Setting |" in text and "`report.html`" in text
    assert "<script" not in text and "<img" not in text  # the hostile attack id is escaped in the step summary too
    failed = runner.invoke(cli, ["gate", str(run_dir), "--budget", "0.3", "--max-drop", "0", "--soft-fail", "--junit", str(tmp_path / "j.xml")])
    assert failed.exit_code == 0 and failed.output.startswith("ADVISORY FAIL:")


def test_step_summary_of_a_1000_cell_run_stays_under_1_mb(tmp_path):
    """1000 cells (100 candidates × 2 attacks × 1 budget × 5 seeds) written into a planned store."""
    from audit.grid.runner import _prepare_store, plan_audit
    from audit.grid.store import Cell
    from audit.report.render import write_report

    values = [round(1e-4 * 1.1**i, 8) for i in range(100)]
    random = [{"name": "label_flip", "id": f"lf_{i}", "params": {"variant": "random"}} for i in range(2)]  # seeded: a cell per seed
    cfg = parse_config(tiny_config(name="big", candidates={"l2": values}, attacks=random, budgets=[0.3], seeds=[0, 1, 2, 3, 4],
                                   adaptive={"enabled": "off"}))  # fmt: skip
    plan = plan_audit(cfg, output_dir=tmp_path)
    store = _prepare_store(plan, restart=False)
    rng = np.random.default_rng(0)
    try:
        for cand in {c.candidate.key for c in plan.cells()}:
            for seed in cfg.seeds:
                store.put_clean(cand, seed, 95.0 + rng.random(), 95.0 + rng.random(), 0.1, {})
        for cell in plan.cells():
            store.put_cell(Cell(cell.key, cell.position, cell.candidate.key, cell.attack, cell.budget, cell.defense, cell.seed, "ok",
                                95.0, 95.0, 90.0 - rng.random(), 90.0 - 10 * rng.random(), 10, 0, 0, 0.01, "cpu"))  # fmt: skip
    finally:
        store.close()
    assert len(plan.cells()) == 1000
    write_report(plan.run_dir)
    result = gate(plan.run_dir, 0.3, max_drop=5.0, allow_lower_bound=True)  # no confirmation stage ran on this store
    text = step_summary(result, plan.run_dir, "big")
    assert len(text.encode()) < SUMMARY_LIMIT and len(text.encode()) < 20_000
    assert "… and 40 more settings" in text and result.verdict == "fail"
    assert sum(line.startswith("| ρ=") for line in text.splitlines()) == 60  # the worst 60 (recommended first)
    _check_junit(plan.run_dir / "gate.xml")


# ---------------------------------------------------------------------------------------- helpers
def _pdf_pages(pdf: Path, tmp_path: Path) -> list[np.ndarray]:
    """Grey pages of a PDF at 40 dpi: pdftoppm when installed, else pypdfium2."""
    from PIL import Image

    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-r", "40", "-gray", "-png", str(pdf), str(tmp_path / "page")], check=True)
        return [np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("page-*.png"))]
    import pypdfium2

    doc = pypdfium2.PdfDocument(str(pdf))
    return [np.asarray(doc[i].render(scale=40 / 72).to_pil().convert("L")) for i in range(len(doc))]


def _pdf_text(pdf: Path) -> str:
    import pypdfium2

    doc = pypdfium2.PdfDocument(str(pdf))
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


def test_model_digests_see_the_weights_handed_over():
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    from audit.models.digest import handed_over_weights, module_weights_digest

    torch_model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    first = handed_over_weights(torch_model)
    assert first == module_weights_digest(torch_model)
    with __import__("torch").no_grad():
        torch_model[2].bias[1] += 1e-6
    assert handed_over_weights(torch_model) != first
    x = np.random.default_rng(0).random((20, 4))
    fitted = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    digest = handed_over_weights(fitted)
    fitted.coef_[0, 0] += 1e-9
    assert digest is not None and handed_over_weights(fitted) != digest
    assert handed_over_weights(LogisticRegression()) is None  # not fitted: no weights


def test_a_change_committed_into_the_wal_after_signing_fails_verify(run_dir, keys, tmp_path):
    """Issue 33, defect 3: export folds the write-ahead log into the store before hashing it (no side file
    is left), and a change committed into a fresh ``-wal`` afterwards — which the gate would read — fails
    ``verify --public-key`` naming the file (before: exit 0, and the gate flipped)."""
    import sys

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    private, public, _ = keys
    runner = CliRunner()
    assert runner.invoke(cli, ["export", str(run), "--format", "md", "--sign-key", str(private), "--signer", "Q. Tester"]).exit_code == 0
    assert not (run / "results.sqlite-wal").exists() or (run / "results.sqlite-wal").stat().st_size == 0
    from audit.report import analyse

    analyse(run)  # reading the store afterwards (as gate and report do) leaves the signed bytes as they were
    assert runner.invoke(cli, ["verify", str(run), "--public-key", str(public)]).exit_code == 0
    tamper = ("import os, sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA journal_mode=WAL'); db.execute('PRAGMA wal_autocheckpoint=0')\n"
              "db.execute('UPDATE cells SET poisoned_test = clean_test'); db.commit()\n"
              "os._exit(0)  # no close: the change stays in the -wal\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", tamper, str(run / "results.sqlite")], check=True)
    assert (run / "results.sqlite-wal").stat().st_size > 0
    result = runner.invoke(cli, ["verify", str(run), "--public-key", str(public)])
    assert result.exit_code != 0 and "results.sqlite-wal: store changes the manifest does not cover" in result.output


def test_every_attack_has_its_capability_and_a_modifying_attack_is_not_called_injection():
    """Issue 34, item 1: the regimes (training-set modification) were described as "data injection" in the signed
    record, for want of an entry."""
    from audit.attacks import ATTACKS
    from audit.attacks.base import AuditAttack, ThreatModel

    for name, cls in ATTACKS.items():
        capability = cls.threat.capability
        assert ("modification" in capability) == cls.modifies, name
        assert ("injection" in capability or "injects" in capability) != cls.modifies, name
        assert cls.threat.white_box == ("white-box" in cls.description), name  # the description says the same
    with pytest.raises(TypeError, match="must declare threat = ThreatModel"):
        type("Undeclared", (ATTACKS["statp"],), {"name": "undeclared", "threat": None})
    assert isinstance(AuditAttack.__dict__.get("threat", ThreatModel(True, "")), ThreatModel)
