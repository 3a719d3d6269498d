"""Verifying a file's bytes against expected digests while they stream (SPEC §9).

:class:`DigestCheck` hashes what the temporary file holds, from the page cache, right after
each write (``catch_up``: an ``os.pread`` of the bytes just written, from where it stopped):
so one hasher serves every way bytes arrive (``pwritev`` of chunks, ``splice`` inside the
kernel, ``copy_file_range`` of a local source, AddFileWithRanges pieces) and the file is never
read a second time.  Hash objects cannot be stored: an attempt that resumes from a checkpoint
hashes the durable prefix once (``start``, in a thread) and goes on from there.

What it checks (``verify``): the file's expected ``Digest`` (of the bytes the job writes, so
of the pieces in order for AddFileWithRanges) and a server's ``Repr-Digest`` of a whole
representation (sha-256 and sha-512 members; others ignored).  A mismatch is
BG_E_VALIDATION_FAILED, context REMOTE_FILE, never retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from openbits.digest import Digest, parse_digest
from openbits.errors import DigestMismatch

#: bytes read per pread while catching up
READ_BYTES = 1024 * 1024


class DigestCheck:
    """Running hashes of a temporary file's first ``hashed`` bytes, and what they must match."""

    __slots__ = ("expected", "hashed", "hashes")

    def __init__(self, expected: list[tuple[str, Digest]]) -> None:
        self.expected = expected  # (who expects it: "the file's Digest" / "Repr-Digest", digest)
        self.hashes: dict[str, Any] = {}
        for _, d in expected:
            self.hashes.setdefault(d.hashlib_name, hashlib.new(d.hashlib_name))
        self.hashed = 0

    @classmethod
    def of(cls, file_digest: str | None, server: list[Digest] | None = None) -> DigestCheck | None:
        """The check of a file with ``file_digest`` (canonical) and a server's Repr-Digest
        members; None when nothing is expected (no cost at all)."""
        expected = [("the file's Digest", parse_digest(file_digest))] if file_digest else []
        expected += [("the server's Repr-Digest", d) for d in server or ()]
        return cls(expected) if expected else None

    def catch_up(self, fd: int, end: int) -> None:
        """Hash the file's bytes from ``hashed`` up to ``end`` (just written: in the page cache)."""
        while self.hashed < end:
            data = os.pread(fd, min(READ_BYTES, end - self.hashed), self.hashed)
            if not data:
                raise OSError(0, f"the temporary file ends at {self.hashed}, before {end}")
            for h in self.hashes.values():
                h.update(data)
            self.hashed += len(data)

    async def start(self, fd: int, offset: int) -> None:
        """A (resumed) attempt writes from ``offset``: hash the durable prefix once, in a
        thread (it may be large); from 0 when the file holds less than was hashed."""
        if offset < self.hashed:
            self.restart()
        if offset > self.hashed:
            await asyncio.to_thread(self.catch_up, fd, offset)

    def restart(self) -> None:
        """The file starts again from byte 0 (truncated)."""
        self.hashes = {name: hashlib.new(name) for name in self.hashes}
        self.hashed = 0

    def verify(self, fd: int, size: int, url: str) -> None:
        """The file is complete at ``size`` bytes: they must match every expected digest."""
        self.catch_up(fd, size)
        if self.hashed != size:
            self.restart()
            self.catch_up(fd, size)
        for who, d in self.expected:
            got = self.hashes[d.hashlib_name].digest()
            if got != d.value:
                shown = Digest(d.algorithm, got).canonical()
                raise DigestMismatch(
                    f"the content of {url} does not match {who}: expected {d.canonical()}, got {shown}"
                )
