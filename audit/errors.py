"""The one exception type for mistakes a user can make (bad config, data, paths).

The CLI turns it into one line on stderr and exit code 2; library callers catch it.
Internal invariants use ``assert`` instead.
"""


class AuditError(ValueError):
    """A user-controlled input is invalid; the message says what was expected and what arrived."""
