"""An exclusive lock held through a lock file: one process at a time in a directory (the
daemon's state directory, the upload server's)."""

from __future__ import annotations

import fcntl
import os


def lock_exclusively(path: str) -> int | None:
    """The fd of the file ``path`` (created 0600), exclusively flocked for as long as it
    stays open; None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
