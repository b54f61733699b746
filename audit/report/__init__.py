"""From the store to what people read: analysis, recommendation, report sections, figures and the CI gate."""

from audit.report.analysis import Analysis, analyse
from audit.report.gate import GateResult, gate
from audit.report.render import build_context, build_summary, write_report
from audit.report.templating import templates_dir

__all__ = ["Analysis", "GateResult", "analyse", "build_context", "build_summary", "gate", "templates_dir", "write_report"]
