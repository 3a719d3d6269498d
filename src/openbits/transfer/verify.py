"""Verifying a file's bytes against expected digests while they stream (SPEC §9).

:class:`DigestCheck` hashes what the temporary file holds, from the page cache, right after
each write: ``catch_up`` (called by ``sink.Syncs.step`` after every ``pwritev`` and every
``splice`` move) hands the bytes just written to the check's own worker thread, which
``os.pread``s them and updates the hashes (hashlib lets go of the GIL: the hashing runs
beside the transfer on another core instead of in series with it on the loop).  So one
hasher serves every way bytes arrive (``pwritev`` of chunks, ``splice`` inside the kernel,
``copy_file_range`` of a local source, AddFileWithRanges pieces), and the file is never
read a second time.  The worker reads a dup of the fd.

Hash objects cannot be stored: an attempt that resumes from a checkpoint hashes the
durable prefix once (``start``: the worker's first job, beside the transfer), then goes on
from there.

``close`` (on the loop, when the attempt ends: also on a Suspend, a pre-emption or a lost
connection right after resuming a large file) never waits for the worker: it sets a stop
flag the worker reads between READ_BYTES pieces, and the worker closes its dup of the fd
itself once it is done (it stays valid until then).

What it checks (``verify``): the file's expected ``Digest`` (of the bytes the job writes,
so of the pieces in order for AddFileWithRanges) and a server's ``Repr-Digest`` (sha-256
and sha-512 members; others ignored).  A mismatch is BG_E_VALIDATION_FAILED, context
REMOTE_FILE, never retried.  The server's members are kept on the file
(``JobFile.repr_digest``, stored with its next commit: ``server_digests``), so a resume
whose 206 does not repeat them is still checked against them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
from collections.abc import Iterable
from typing import Any

from openbits.digest import Digest, parse_digest, parse_repr_digest
from openbits.errors import DigestMismatch
from openbits.model import JobFile

#: bytes read per pread, and the least handed to the worker at once
READ_BYTES = 1024 * 1024


def server_digests(file: JobFile, lines: Iterable[str], whole: bool) -> list[Digest]:
    """The Repr-Digest members an attempt's bytes must match, from its answer's Repr-Digest
    header ``lines``: the answer's own when it has any (they are kept on
    ``file``), else, when the attempt resumes (not ``whole``: a 206 of the representation
    the file started with, If-Range saw to that), those kept from an earlier answer.  An
    answer from byte 0 without any forgets the kept ones (a new representation)."""
    found = parse_repr_digest(", ".join(lines))
    if found:
        file.repr_digest = ", ".join(d.canonical() for d in found)
    elif whole:
        file.repr_digest = None
    else:
        found = parse_repr_digest(file.repr_digest)
    return found


class DigestCheck:
    """Running hashes of a temporary file's first ``hashed`` bytes (the worker's), the
    offset handed to the worker so far (``queued``), and what the hashes must match."""

    __slots__ = ("expected", "fd", "hashed", "hashes", "last", "queued", "stopped", "worker")

    def __init__(self, expected: list[tuple[str, Digest]]) -> None:
        self.expected = expected  # (who expects it, the digest)
        self.hashes: dict[str, Any] = {}
        for _, d in expected:
            self.hashes.setdefault(d.hashlib_name, hashlib.new(d.hashlib_name))
        self.hashed = 0
        self.queued = 0
        self.fd = -1
        self.worker: concurrent.futures.ThreadPoolExecutor | None = None
        self.last: concurrent.futures.Future[None] | None = None
        #: set by ``close`` (on the loop), read by the worker between pieces: stop hashing
        self.stopped = False

    @classmethod
    def of(cls, file_digest: str | None, server: list[Digest] | None = None) -> DigestCheck | None:
        """The check of a file with ``file_digest`` (canonical) and a server's Repr-Digest
        members; None when nothing is expected (no cost at all)."""
        expected = [("the file's Digest", parse_digest(file_digest))] if file_digest else []
        expected += [("the server's Repr-Digest", d) for d in server or ()]
        return cls(expected) if expected else None

    def start(self, fd: int, offset: int) -> None:
        """An attempt writes into ``fd`` from ``offset``: hash the durable prefix before it
        once, in the worker, while the transfer goes on (the worker takes its jobs in order,
        so the new bytes are hashed after it; a large prefix never holds the connection
        idle), and follow the writes from there."""
        self.fd = os.dup(fd)
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="digest")
        self._queue(offset)

    def catch_up(self, fd: int, end: int) -> None:
        """``end`` bytes are in the file: hash the new ones (in the worker, in order) once
        there is at least READ_BYTES of them; the rest waits for the next call or ``verify``."""
        if end - self.queued >= READ_BYTES:
            self._queue(end)

    async def verify(self, size: int, url: str) -> None:
        """The file is complete at ``size`` bytes: they must match every expected digest."""
        self._queue(size)
        await self._settled()
        for who, d in self.expected:
            got = self.hashes[d.hashlib_name].digest()
            if got != d.value:
                shown = Digest(d.algorithm, got).canonical()
                raise DigestMismatch(
                    f"the content of {url} does not match {who}: expected {d.canonical()}, got {shown}"
                )

    def close(self) -> None:
        """Let go of the worker and the fd, without waiting: the worker stops at its next
        piece (``stopped``), then closes the fd (its last job: the fd stays valid for a
        pread in progress).  The hashes are left partial: the check is not used again."""
        self.stopped = True
        if self.worker is not None:
            if self.fd >= 0:
                self.worker.submit(os.close, self.fd)
            self.worker.shutdown(wait=False)
            self.worker = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def _queue(self, end: int) -> None:
        if end > self.queued and self.worker is not None:
            self.queued = end
            self.last = self.worker.submit(self._hash_to, end)

    async def _settled(self) -> None:
        """Wait for what the worker was handed; its error (a failed pread) is raised here."""
        if self.last is not None:
            await asyncio.wrap_future(self.last)

    def _hash_to(self, end: int) -> None:
        """(In the worker.)  Hash the file's bytes from ``hashed`` up to ``end``."""
        while self.hashed < end and not self.stopped:
            data = os.pread(self.fd, min(READ_BYTES, end - self.hashed), self.hashed)
            if not data:
                raise OSError(0, f"the temporary file ends at {self.hashed}, before {end}")
            for h in self.hashes.values():
                h.update(data)
            self.hashed += len(data)
