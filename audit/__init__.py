"""poison-audit: indiscriminate data-poisoning audits built on ART."""

from audit.errors import AuditError

__version__ = "0.1.0"
__all__ = ["AuditError", "__version__"]
