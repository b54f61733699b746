"""Paths inside a run directory are never followed out of it (README: "Run directory").

Every file the tool writes, truncates or deletes inside a run directory is checked first: a
symbolic link (which could point anywhere) or a regular file with more than one hard link
(whose content is shared with a file elsewhere) is refused with a one-line error instead of
being followed. Renaming a fresh file over a path (``atomic_write``) replaces a link rather
than writing through it, so only in-place writes, directories and deletions need the check.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from audit.errors import AuditError


def refuse_link(path: Path) -> None:
    """A one-line :class:`AuditError` when ``path`` is a symbolic link or a hard-linked regular file; nothing when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise AuditError(
            f"{path} is a symbolic link; poison-audit never writes, truncates or deletes through a link "
            "(it could reach outside the run directory): remove the link"
        )
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise AuditError(f"{path} has {st.st_nlink} hard links; poison-audit never writes into a file shared with another path: remove this one")


def own_dir(path: Path) -> Path:
    """``path`` as a real directory inside its parent (created when missing); a link or a non-directory is refused."""
    refuse_link(path)
    if path.exists() and not path.is_dir():
        raise AuditError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    return path
