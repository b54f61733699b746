import json
import re
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from audit.config import parse_config
from audit.errors import AuditError
from audit.grid.runner import run_audit
from audit.report import templates_dir, write_report
from audit.report.gate import gate
from tests.conftest import chromium_path, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(attacks=[{"name": "label_flip", "id": "<script>alert(1)</script>", "params": {"variant": "adversarial"}},
                               {"name": "label_flip", "id": "lf_random"}])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=out, progress=False)
    write_report(run)
    return run


def test_summary_json_schema(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["schema_version"] == 1
    rec = s["recommendation"]
    assert set(rec) >= {"hyperparameters", "clean_accuracy", "worst_case_drop"}
    assert set(rec["worst_case_drop"]) == {"0.1", "0.3"}
    assert len(s["cells"]) == 8
    keys = {"hyperparameters", "attack", "budget", "defense", "seed", "clean_metric", "poisoned_metric", "drop", "seconds", "status"}
    for c in s["cells"]:
        assert keys <= set(c)
        assert c["drop"] == pytest.approx(c["clean_metric"] - c["poisoned_metric"])


def test_html_is_self_contained_and_escaped(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html  # autoescape on for user-controlled names
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.replace("&lt;script", "")
    for external in ('src="http', "src='http", 'href="http', "url(http", "@import"):
        assert external not in html  # nothing is loaded from the network
    for section in (
        "Recommendation:",
        "Trade-off table",
        "Worst case over attacks",
        "Failed cells",
        "What this audit did not cover",
        "Reproducibility",
    ):
        assert section in html
    assert html.count("<svg") >= 2


def test_templates_are_found():
    assert (templates_dir() / "report.html.j2").is_file() and (templates_dir() / "report.css").is_file()


def test_gate_passes_and_fails_with_junit(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    drop = s["recommendation"]["worst_case_drop"]["0.3"]
    assert drop > 1.0
    ok = gate(run_dir, 0.3, max_drop=drop + 0.5)
    assert ok.passed
    suite = ET.parse(run_dir / "gate.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"
    bad = gate(run_dir, 0.3, max_drop=drop - 1.0)
    assert not bad.passed and "worst-case accuracy drop at ε = 0.3" in bad.message
    suite = ET.parse(run_dir / "gate.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None


def test_report_rerenders_from_store_alone(run_dir):
    (run_dir / "report.html").unlink()
    write_report(run_dir)
    assert (run_dir / "report.html").stat().st_size > 10_000


def test_report_in_headless_chromium(run_dir, tmp_path):
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,2000", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01  # text and figures drawn


def test_css_is_inlined_unescaped(run_dir):
    html = (run_dir / "report.html").read_text()
    style = html[html.index("<style>") : html.index("</style>")]
    assert '"DejaVu Sans"' in style and "&#34;" not in style


def test_poisonability_section_with_gradient_canceling(tmp_path):
    cfg = tiny_config(
        attacks=[{"name": "label_flip", "id": "lf_adv", "params": {"variant": "adversarial"}},
                 {"name": "gradient_canceling", "id": "gc", "params": {"epochs": 50, "eps_w_grid": [0.1, 0.5]}}],
        poisonability={"eps_w": [0.1, 0.5]},
    )  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(run)
    html = (run / "report.html").read_text()
    for needle in ("Poisonability", "Gradient Canceling (<code>gc</code>)", "τ_ρ(2)", "clean model", "GC epoch"):
        assert needle in html
    used = re.findall(
        r'<td class="small">(auto: GradPC ε_w=[0-9.]+, output layer ×[0-9.e+-]+)</td><td>([0-9.]+)</td><td>[^<]+</td><td>([0-9.]+)</td>', html
    )
    assert len(used) == 4, "the GC target table shows each cell's target, its accuracy and the residual read from the typed diagnostics"
    s = json.loads((run / "summary.json").read_text())
    rows = s["poisonability"]
    assert {r["eps_w"] for r in rows} == {0.0, 0.1, 0.5} and len(rows) == 6  # 2 candidates × (clean + 2 targets)
    clean = [r for r in rows if r["eps_w"] == 0.0]
    assert all(abs(r["tau_rho_2"]) < 0.05 for r in clean)  # the clean minimiser is reachable with no poison
    assert "Poisonability: the GradPC target at ε_w = 0.1" in s["recommendation"]["reason"]
    gc_cells = [c for c in s["cells"] if c["attack"] == "gc"]
    assert len(gc_cells) == 4 and all(c["status"] == "ok" for c in gc_cells)


def test_sample_poisons_section_for_tgda_on_images(tmp_path):
    fast = {"epochs": 2, "pretrain_epochs": 2, "cg_max_iter": 5, "follower_steps": 2, "batch_size": 500}
    cfg = tiny_config(dataset={"name": "digits"}, candidates={"l2": [1e-3]}, budgets=[0.03, 0.1],
                      attacks=[{"name": "tgda", "id": "tgda", "params": fast}], confirm=False)  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(run)
    html = (run / "report.html").read_text()
    assert "Sample poisons" in html and "tgda · ε = 10%" in html and "maximum pixel change" in html
    section = html[html.index("<h2>Sample poisons</h2>") :]
    assert section.index("<svg") < section.index("Change per poison set")
    s = json.loads((run / "summary.json").read_text())
    assert {c["status"] for c in s["cells"]} == {"ok"} and len(s["cells"]) == 2


def test_certified_accuracy_column_for_a_certifying_defense_under_any_id(tmp_path):
    """The column follows the class fact ``certifies``, not the name: a DPA with its own id still shows it."""
    cfg = tiny_config(candidates={"l2": [0.01]}, attacks=[{"name": "label_flip", "id": "lf", "params": {"variant": "random"}}],
                      budgets=[0.1], defenses=["none", {"name": "dpa", "id": "dpa5", "params": {"partitions": 5}}])  # fmt: skip
    run = run_audit(parse_config(cfg), output_dir=tmp_path, progress=False)
    write_report(run)
    html = (run / "report.html").read_text()
    assert "<th>certified accuracy</th>" in html and "dpa5: deep partition aggregation" in html
    row = re.search(r"<td>lf</td><td>10%</td><td>dpa5</td>(?:<td>[^<]*</td>){5}<td>([0-9.]+)</td></tr>", html)
    assert row is not None and 0 <= float(row.group(1)) <= 100, "the certified accuracy read from DPA's typed diagnostics"


def test_intervals_in_summary_and_gate_with_confidence(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    rec = s["recommendation"]
    point = rec["worst_case_drop"]["0.3"]
    lo, hi = rec["worst_case_drop_ci95"]["0.3"]
    assert lo < point < hi  # a finite test split: a real interval around the estimate
    assert all(c["drop_se"] > 0 for c in s["cells"] if c["status"] == "ok")
    assert all(len(cand["clean_test_ci95"]) == 2 for cand in s["candidates"])
    between = (point + hi) / 2
    assert gate(run_dir, 0.3, max_drop=between).passed  # the point estimate is within the bound …
    strict = gate(run_dir, 0.3, max_drop=between, confidence=0.95)
    assert not strict.passed and "upper 95 % bound of the worst-case accuracy drop" in strict.message  # … its upper end is not
    assert strict.damage == pytest.approx(hi, rel=1e-6)
    with pytest.raises(AuditError, match=r"--confidence must be in \(0, 1\)"):
        gate(run_dir, 0.3, max_drop=1, confidence=1.5)


def test_header_names_the_attacks_not_run_and_why(tmp_path):
    from sklearn.linear_model import LogisticRegression

    run = run_audit(parse_config(tiny_config(budgets=[0.1])), model=LogisticRegression(max_iter=300), output_dir=tmp_path, progress=False)
    html = write_report(run).read_text()
    header = html[: html.index("</header>")]
    assert "Not run in this audit, so not part of its worst case:" in header
    assert "StatP (statistical attack) — not in this config" in header
    # a LogisticRegression has an exact torch surrogate: TGDA is left out by the profile, not by the victim
    assert "TGDA (total gradient descent ascent) — left out by the quick profile" in header
    assert "needs a PyTorch victim" not in header
    from sklearn.linear_model import Lasso

    lasso = tiny_config(name="lasso", budgets=[0.1], dataset={"name": "diabetes"}, model={"name": "ridge"}, candidates={"l2": [0.01]},
                        attacks=[{"name": "statp"}], confirm=False)  # fmt: skip
    run = run_audit(parse_config(lasso), model=Lasso(alpha=1e-3), output_dir=tmp_path, progress=False)
    header = write_report(run).read_text()
    header = header[: header.index("</header>")]
    assert "needs a PyTorch victim or a scikit-learn LogisticRegression / Ridge" in header
