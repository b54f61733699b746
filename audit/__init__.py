"""poison-audit: indiscriminate data-poisoning audits built on ART."""

from audit.errors import AuditError

__version__ = "0.1.0"
__all__ = ["AuditError", "AuditResult", "__version__", "run_audit"]


def __getattr__(name: str) -> object:
    """``audit.run_audit`` and ``audit.AuditResult`` (the notebook API), imported on first use."""
    if name in ("run_audit", "AuditResult"):
        from audit import api

        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
