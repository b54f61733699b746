"""The report's templates and the jinja2 environments that render them: Python builds data, templates lay it out.

HTML (``report.html.j2``, ``compliance.html.j2``) is autoescaped; markdown (``record.md.j2``,
``model_card.md.j2``, ``gate_summary.md.j2``) escapes every value through the ``md`` filter
(:func:`md_escape`), so a name from the config stays text in both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape


def templates_dir() -> Path:
    """Templates shipped in the wheel (``audit/templates``) or, from a checkout, the repository's ``templates/``."""
    packaged = Path(__file__).resolve().parents[1] / "templates"
    if (packaged / "report.html.j2").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}|#~!])")


def md_escape(text: Any) -> str:
    """One line of markdown that renders as the literal text: HTML's ``& < >`` as entities, markdown's
    punctuation backslash-escaped, line breaks as spaces (a value never starts a heading or a table row)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\s*[\r\n]+\s*", " ", s)


def html_environment() -> Environment:
    """The environment of the HTML templates (autoescaped; ``|safe`` only for SVG this package generated)."""
    return Environment(loader=FileSystemLoader(templates_dir()), autoescape=select_autoescape(["html", "j2"]))


def render_markdown(template: str, **context: Any) -> str:
    """Render markdown template ``template`` with ``context``: no autoescape (markdown is not HTML), every value
    escaped in the template by ``|md``; block tags take their own line (``trim_blocks``, ``lstrip_blocks``)."""
    env = Environment(
        loader=FileSystemLoader(templates_dir()),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.filters["md"] = md_escape
    return env.get_template(template).render(**context)
