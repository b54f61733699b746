"""``poison-audit export``: the compliance record as PDF, markdown and JSON, a model-card snippet,
and the run's manifest, optionally signed.

The record is :func:`audit.report.compliance.build_document`; this module only renders it.
Markdown escapes every character that is markup (``<`` ``>`` ``&`` and markdown's own), the
HTML behind the PDF is autoescaped by jinja2, JSON is JSON: a name from the config stays text.

The PDF is WeasyPrint's rendering of ``templates/compliance.html.j2`` with print CSS (A4, page
numbers, table headers repeated, black-and-white safe). WeasyPrint was chosen over headless
Chromium because it installs with ``pip`` alone (it uses the system's Pango, which Debian and the
common CI images ship), whereas Chromium is a system package the README's two commands do not install.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.grid.lock import RunLock
from audit.grid.store import Store, checkpoint, plan_digest
from audit.jsonio import atomic_write, finite
from audit.paths import own_dir
from audit.report.aggregation import Analysis
from audit.report.analysis import analyse
from audit.report.compliance import build_document
from audit.report.integrity import (
    Signing,
    build_manifest,
    key_fingerprint,
    load_private_key,
    utc_now,
    write_manifest,
)
from audit.report.reading import planned_cell_keys
from audit.report.render import write_report
from audit.report.templating import html_environment, templates_dir
from audit.report.templating import render_markdown as markdown
from audit.report.wording import fmt

FORMATS = ("pdf", "md", "json", "card")
OUT_DIR = "compliance"
FILES = {"pdf": "record.pdf", "md": "record.md", "json": "record.json", "card": "model_card.md"}


BLOCK_KINDS = ("p", "list", "kv", "table", "figure")


def render_markdown(doc: dict[str, Any]) -> str:
    """The record as GitHub-flavoured markdown (``templates/record.md.j2``; figures are named, they are in the PDF and
    report.html)."""
    unknown = sorted({b["kind"] for s in doc["sections"] for b in s["blocks"]} - set(BLOCK_KINDS))
    if unknown:
        raise ValueError(f"unknown block kind {unknown[0]!r}")
    return markdown("record.md.j2", doc=doc).rstrip() + "\n"


def document_json(doc: dict[str, Any]) -> str:
    """The record for machines: the same sections, figures by caption only (their SVG is in the PDF)."""
    plain = {
        **doc,
        "sections": [
            {**s, "blocks": [({k: v for k, v in b.items() if k != "svg"} if b["kind"] == "figure" else b) for b in s["blocks"]]}
            for s in doc["sections"]
        ],
    }
    return json.dumps(finite(plain), indent=2, allow_nan=False, default=str) + "\n"


def render_html(doc: dict[str, Any]) -> str:
    """The HTML behind the PDF (autoescaped; only the package's own SVG figures are inserted as markup)."""
    css = (templates_dir() / "compliance.css").read_text(encoding="utf-8")
    return html_environment().get_template("compliance.html.j2").render(doc=doc, css=css)


def render_pdf(doc: dict[str, Any]) -> bytes:
    """The record as PDF bytes (WeasyPrint); a one-line error when WeasyPrint or Pango is missing."""
    try:
        import weasyprint
    except (ImportError, OSError) as err:
        raise AuditError(
            f"PDF export needs WeasyPrint and the Pango library ({str(err).splitlines()[0]}); "
            "install them (pip install weasyprint; Debian: apt-get install libpango-1.0-0) or export --format md json"
        ) from None
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return bytes(weasyprint.HTML(string=render_html(doc), base_url=str(templates_dir())).write_pdf())


def model_card(a: Analysis, doc: dict[str, Any]) -> str:
    """The "Evaluation → Robustness to data poisoning" part of a model card (Hugging Face model cards,
    Google's Model Card Toolkit ``considerations``/``quantitative_analysis``), as markdown (``templates/model_card.md.j2``)."""
    facts = doc["facts"]
    rec = a.recommended()
    rows = []
    for eps in a.config.budgets if rec is not None else []:
        if rec is not None and eps in rec.worst_damage_test:
            lo, hi = rec.worst_damage_test_ci.get(eps, (float("nan"), float("nan")))
            rows.append(
                {
                    "budget": f"{100 * eps:g} %",
                    "damage": fmt(rec.worst_damage_test[eps]),
                    "low": fmt(lo),
                    "high": fmt(hi),
                    "attack": rec.worst_attack_test.get(eps, ""),
                }
            )
    return markdown(
        "model_card.md.j2",
        statement=next(s for s in doc["sections"] if s["id"] == "statement")["blocks"][0]["text"],
        damage=facts["damage"],
        rows=rows,
        table=rec is not None,
        attacks=a.attack_keys,
        mitigation=a.recommendation.label,
        defense=a.recommendation.defense,
        dataset=a.meta["dataset"]["name"],
        synthetic=facts["synthetic_data"],
        run=a.config.name,
        fingerprint=facts["fingerprint"],
        exported_at=doc["exported_at"],
        signed=doc["signed"],
        complete=facts["complete"],
    )


def export(run_dir: str | Path, formats: Sequence[str] = FORMATS, sign_key: Path | None = None, signer: str | None = None) -> list[Path]:
    """Write the record in ``formats`` under ``RUN_DIR/compliance/``, then ``manifest.json`` over every
    artifact of the run and, with ``sign_key``, ``manifest.sig``. Returns the files written.

    Everything is rendered before anything is written, each file atomically; a record of a format
    not asked for this time is removed (a stale record never enters a new manifest). A signature
    needs ``signer`` (or the config's ``system.responsible``).
    """
    run_dir = Path(run_dir)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise AuditError(f"--format: expected some of {', '.join(FORMATS)} (got {', '.join(unknown) or 'none'})")
    Store.open_existing(run_dir).close()  # a one-line error where there is no run
    private = load_private_key(sign_key) if sign_key is not None else None  # key errors before anything is written
    if not (run_dir / "report.html").is_file() or not (run_dir / "summary.json").is_file():
        write_report(run_dir)
    from audit import __version__

    with RunLock(run_dir, "export"):
        a = analyse(run_dir)
        who = signer or a.config.system.responsible
        if private is not None and not who:
            raise AuditError("--sign-key: say who signs with --signer NAME (or declare system.responsible in the config)")
        signing = Signing(sign_key, who) if private is not None and sign_key is not None and who else None
        fingerprint = key_fingerprint(private.public_key()) if private is not None else None
        doc = build_document(a, signing, fingerprint, utc_now())
        rendered: dict[str, str | bytes] = {}
        for fmt_ in dict.fromkeys(formats):
            if fmt_ == "pdf":
                rendered[fmt_] = render_pdf(doc)
            elif fmt_ == "md":
                rendered[fmt_] = render_markdown(doc)
            elif fmt_ == "json":
                rendered[fmt_] = document_json(doc)
            else:
                rendered[fmt_] = model_card(a, doc)
        out = own_dir(run_dir / OUT_DIR)  # never a folder elsewhere behind a link
        written = []
        for fmt_, content in rendered.items():
            atomic_write(out / FILES[fmt_], content)
            written.append(out / FILES[fmt_])
        for fmt_, name in FILES.items():
            if fmt_ not in rendered and (out / name).exists():
                (out / name).unlink()
        checkpoint(run_dir)  # the manifest hashes the whole store: no uncommitted -wal beside it
        planned = planned_cell_keys(a.meta, a.config)
        manifest = build_manifest(
            run_dir,
            a.config.name,
            __version__,
            signing,
            private.public_key() if private is not None else None,
            plan_digest(planned) if planned is not None else None,
        )
        written.append(write_manifest(run_dir, manifest, private))
        if private is not None:
            written.append(run_dir / "manifest.sig")
    return written
