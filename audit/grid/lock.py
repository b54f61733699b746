"""An exclusive lock on a run directory, so two processes never run, restart or report it at once.

The lock is an advisory ``flock`` on ``RUN_DIR/.poison-audit.lock``; the file records the
holder's pid, host and start time for the error message. The kernel drops a ``flock`` when
its process dies, so a lock left by a killed run is stale by construction and the next run
takes it (the recorded holder is then only history).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from audit.errors import AuditError
from audit.paths import refuse_link

LOCK_FILE = ".poison-audit.lock"


class RunLock:
    """``with RunLock(run_dir, "run"):`` — held for the block; a second holder gets a one-line :class:`AuditError`."""

    def __init__(self, run_dir: str | Path, purpose: str) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            refuse_link(self.path)  # truncated below: never a file elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise AuditError(f"cannot write to the run directory {self.path.parent}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise AuditError(f"{self.path.parent} is in use by {holder}; wait for it to finish (a lock dies with its process)") from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose, "since": time.time()}
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "another poison-audit process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return f"poison-audit {record.get('purpose', '?')} (pid {record.get('pid')} on {record.get('host')}, since {since})"
