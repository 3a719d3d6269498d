"""One file's download: :class:`FileDownload` holds what every step of it needs (the file,
its owner, where it reports, its priority and request options, the temporary file's fd),
and fetches a whole file over HTTP(S), resuming from the last checkpoint.

Ranged files (``ranges.py``) and local sources (``local.py``) are fetched by their own
modules; ``download.Downloader`` picks one per file.  Order of durability:

1. ``begin`` persists the temporary name and validators *before* bytes land, so a
   crash never orphans a temporary file or resumes against the wrong content;
2. bytes are written in blocks of ``write_block_bytes`` (never per chunk);
3. ``checkpoint(offset)`` is called only after ``fdatasync`` covered ``offset``
   bytes; syncs run in a worker thread on a dup of the fd while reading goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import yarl
from multidict import CIMultiDictProxy

from openbits.digest import Digest
from openbits.model import JobFile
from openbits.redaction import redact_url
from openbits.transfer import checks, diskio, redirects, segplan
from openbits.transfer import files as fs
from openbits.transfer.checks import Restart
from openbits.transfer.h1 import BadRequest
from openbits.transfer.h1 import Body as H1Body
from openbits.transfer.http import NETWORK_EXCEPTIONS, invalid_response, network_error
from openbits.transfer.options import RequestOptions
from openbits.transfer.owner import opened_off_loop
from openbits.transfer.pace import Pacer, Priority, pacer, priority_of
from openbits.transfer.proxy import DIRECT, Proxies
from openbits.transfer.routing import Owner, Requester, Transport
from openbits.transfer.sink import (
    IOV_MAX,
    WRITEBACK_BYTES,
    Sink,
    Syncs,
    check_still_linked,
    salvage,
    splice,
)
from openbits.transfer.verify import DigestCheck, server_digests

log = logging.getLogger("openbits.transfer")

#: a body up to this long (known length) is read whole and written at once
SMALL_BODY_BYTES = 256 * 1024


class Body(Protocol):
    """A response body as aiohttp's StreamReader and ``h1.Body`` read it."""

    async def read(self, n: int = -1) -> bytes: ...

    async def readany(self) -> bytes: ...


class HTTPResponse(Protocol):
    """What the downloader reads of a response (``h1.Response``)."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def url(self) -> yarl.URL: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> Body: ...

    def close(self) -> None:
        """Let the connection go without reading the rest of the body."""


class Progress(Protocol):
    def connected(self) -> None:
        """A server (or source file) answered: the job is TRANSFERRING."""

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        """The file (re)starts from byte 0 with these validators (a restart is persisted
        before new bytes are written)."""

    def checkpoint(self, offset: int) -> None:
        """``offset`` bytes are durable in the temporary file."""

    def redirected(self, url: str) -> None:
        """The server moved the file to ``url`` (ALLOW_REPORT): it becomes the RemoteUrl."""

    def responded(self, range_support: bool | None, headers: str) -> None:
        """A response was accepted: whether the server can resume the file, and its headers."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A finished file: its size, and whether its bytes are already durable (fdatasync'd).

    ``durable`` is False only for a small file asked with ``defer_sync``: the caller makes
    a batch of them durable at once (one ``syncfs``, ``sink.SyncBatch``) before it commits them.
    """

    size: int
    durable: bool = True


def not_begun(f: JobFile) -> bool:
    """A whole file from byte 0, nothing of it durable yet: its request may be sent ahead
    (``Ahead``), and the fetch worker may take it (``offload.eligible``)."""
    return f.bytes_transferred == 0 and f.ranges is None and f.segments is None and not f.completed


def direct_and_plain(file: JobFile, options: RequestOptions, proxies: Proxies) -> bool:
    """A file not begun, of a job without credentials or client certificate, whose server is
    reached directly: what the fetch worker may take (``offload.eligible``) and what
    ``FileDownload.small`` may take whole."""
    return (
        not_begun(file)
        and not options.credentials
        and options.client_certificate is None
        and proxies.fixed(file.remote_url, options) == DIRECT
    )


class Ahead:
    """The requests of the files after the current one, built only when the connection has
    room for them (most of the time it has not)."""

    __slots__ = ("files", "headers")

    def __init__(self, files: Sequence[JobFile], headers: Mapping[str, str]) -> None:
        self.files, self.headers = files, headers

    def __iter__(self) -> Iterator[tuple[str, Mapping[str, str]]]:
        for f in self.files:
            if not_begun(f):
                yield f.remote_url, self.headers


class FileDownload:
    """One file's download, what each of its attempts needs: the file, its owner, where it
    reports, its priority and request options, the connections it may use at once (its
    segments: ``segments.py``), and the temporary file open on ``fd`` during an attempt
    (``open``/``close``); its requests (``get``) and bodies (``stream``)."""

    __slots__ = (
        "check",
        "connections",
        "fd",
        "file",
        "options",
        "owner",
        "priority_of",
        "progress",
        "requester",
        "segmented",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        file: JobFile,
        owner: Owner,
        progress: Progress,
        priority: Priority,
        options: RequestOptions,
        connections: int = 1,
    ) -> None:
        self.transport = transport
        self.file, self.owner, self.progress = file, owner, progress
        #: the job's priority now (SetPriority may change it mid-file)
        self.priority_of, self.options = priority_of(priority), options
        self.requester = Requester(transport, options, owner)
        self.fd = -1
        #: the expected digests of this attempt's bytes (``verify.DigestCheck``), if any
        self.check: DigestCheck | None = None
        self.connections = connections
        #: the file may be fetched in segments (False once a server did not serve them well)
        self.segmented = True

    @property
    def priority(self) -> int:
        return self.priority_of()

    async def open(self) -> int:
        """Open the temporary file (as its owner: in a thread when that takes a helper's
        round trip); the offset it resumes from."""
        file, owner, owners = self.file, self.owner, self.transport.owners
        args = (owners, file.temp_path, owner.uid, owner.gid, file.bytes_transferred)
        if owners.acts_in_process(owner.uid):
            self.fd, offset = fs.open_resumable(*args)
        else:
            self.fd, offset = await opened_off_loop(functools.partial(fs.open_resumable, *args))
        return offset

    def begin_check(self, offset: int, server: list[Digest] | None = None) -> None:
        """The attempt writes from ``offset``: hash the durable prefix before it (once, in the
        check's worker) when the file has an expected digest or the server sent one (``server``)."""
        self.close_check()
        self.check = DigestCheck.of(self.file.digest, server)
        if self.check is not None:
            with fs.translating("cannot read the temporary file"):
                self.check.start(self.fd, offset)

    async def verify(self, size: int) -> None:
        """The temporary file is whole at ``size`` bytes: they must match the expected digests
        (DigestMismatch: BG_E_VALIDATION_FAILED)."""
        if self.check is not None:
            with fs.translating("cannot read the temporary file"):
                await self.check.verify(size, redact_url(self.file.remote_url))

    def close_check(self) -> None:
        if self.check is not None:
            self.check.close()
            self.check = None

    def close(self) -> None:
        self.close_check()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def resume_headers(self, spec: str) -> tuple[dict[str, str], bool]:
        """The job's headers with ``Range: bytes=spec`` and If-Range when the file has a
        validator; and whether it has."""
        headers = dict(self.options.headers)
        headers["Range"] = f"bytes={spec}"
        validator = checks.if_range(self.file)
        if validator:
            headers["If-Range"] = validator
        return headers, bool(validator)

    # -- HTTP -------------------------------------------------------------------------------

    def segment_count(self, resp: HTTPResponse, answer: checks.Accepted) -> int:
        """How many segments the file may be fetched in, from its answer from byte 0."""
        if not self.segmented or not answer.whole:
            return 1
        min_bytes = self.transport.tuning.segment_min_bytes
        return segplan.connections_for(
            resp.status, resp.headers, resp.content_length, self.connections, min_bytes
        )

    async def whole(
        self,
        defer_sync: bool,
        ahead: Iterable[tuple[str, Mapping[str, str]]],
        segmented: SegmentedStart | None = None,
    ) -> Fetched | Restart:
        """The file from where its temporary file stopped (Range, If-Range) to its end; in
        segments by ``segmented`` when its answer allows it (``segment_count``)."""
        file, progress = self.file, self.progress
        offset = await self.open()
        try:
            headers = self.resume_headers(f"{offset}-")[0] if offset > 0 else dict(self.options.headers)
            async with self.get(headers, ahead) as resp:
                if resp.status in (200, 206):
                    progress.responded(checks.range_support(resp, file, offset), checks.header_text(resp))
                answer = checks.accept(resp, file, offset)
                if isinstance(answer, Restart):
                    progress.begin(None, None, None)
                    return answer
                if answer.whole:
                    if offset:
                        with fs.translating("cannot truncate the temporary file"):
                            os.ftruncate(self.fd, 0)
                    progress.begin(
                        resp.content_length, resp.headers.get("ETag"), resp.headers.get("Last-Modified")
                    )
                start, total = answer.start, answer.total
                server = server_digests(file, resp.headers.getall("Repr-Digest", ()), answer.whole)
                self.begin_check(start, server)
                if total is not None:
                    self.transport.free_space.check(file.directory, total - start)
                progress.connected()
                fetched = Fetched(start)
                count = self.segment_count(resp, answer)
                if segmented is not None and total is not None and count > 1:
                    outcome = await segmented(self, resp, total, count)
                    if isinstance(outcome, Restart):
                        return outcome
                    fetched = outcome
                elif total is None or total > start:
                    fetched = await self.stream(resp.content, start, total, defer_sync=defer_sync)
                if total is not None and fetched.size != total:
                    raise invalid_response(f"the server sent {fetched.size} bytes of {total}")
                await self.verify(fetched.size)
                return fetched
        finally:
            self.close()

    def takes_small(self, defer_sync: bool) -> bool:
        """Whether ``small`` may fetch the file: a whole file not begun (``not_begun``), not
        known to be larger than ``SMALL_BODY_BYTES``, left to the caller's batch sync, from
        an http(s):// server reached directly, without credentials or client certificate,
        at a priority without bandwidth limit, too small for segments.  (What ``whole``
        then does with a small answer, ``small`` does with less work.)"""
        f, transport = self.file, self.transport
        return (
            defer_sync
            and (f.bytes_total is None or f.bytes_total <= SMALL_BODY_BYTES)
            and (self.connections <= 1 or transport.tuning.segment_min_bytes > SMALL_BODY_BYTES)
            and direct_and_plain(f, self.options, transport.proxies)
            and not transport.throttle.is_limited(self.priority)
        )

    async def small(self, ahead: Ahead) -> Fetched | None:
        """The file (``takes_small``) from one answer read whole on a connection already
        open to its server (``h1.get_small``): the same steps, checks, ``Progress`` calls
        and result as ``whole`` with a small 200, without its layers (a job of many small
        files spends most of its CPU there).  None when that answer is not there to be
        taken (no open connection, a redirect, an error, a chunked or large body: then it
        is left unread, for ``whole`` to read): ``whole`` does the rest."""
        file, transport, progress = self.file, self.transport, self.progress
        url = file.remote_url
        tls = transport.tls.for_h1(self.options.security_flags) if url[:6].lower() == "https:" else None
        h1 = transport.h1
        try:
            target = h1.target(url, tls, self.options.partition)
        except (BadRequest, ValueError):
            return None  # (``whole`` says what is wrong with it)
        if not h1.warm(target.key):
            return None
        await self.open()  # (before the request, as ``whole``: a local error comes first)
        try:
            try:
                answer = await h1.get_small(url, target, ahead.headers, ahead, SMALL_BODY_BYTES)
            except NETWORK_EXCEPTIONS as e:
                raise network_error(e, url) from e
            if answer is None:
                return None
            with contextlib.closing(answer):  # (a body not read to its end closes its connection)
                progress.responded(checks.range_support(answer, file, 0), checks.header_text(answer))
                headers, total = answer.headers, answer.content_length
                progress.begin(total, headers.get("ETag"), headers.get("Last-Modified"))
                self.begin_check(0, server_digests(file, headers.getall("Repr-Digest", ()), True))
                transport.free_space.check(file.directory, total)
                progress.connected()
                try:
                    body = await answer.read()
                except NETWORK_EXCEPTIONS as e:
                    raise network_error(e, url) from e
            fetched = write_small(self.fd, body, 0) if total else Fetched(0)
            if self.check is not None:
                await self.verify(fetched.size)
            return fetched
        finally:
            self.close()

    @contextlib.asynccontextmanager
    async def get(
        self, headers: dict[str, str], ahead: Iterable[tuple[str, Mapping[str, str]]] = ()
    ) -> AsyncIterator[HTTPResponse]:
        """GET the file, following redirects as the job's SecurityFlags say
        (``redirects.next_url``), by the job's routes with its credentials
        (``routing.Requester``).  Network errors, while asking or while the body is read,
        are translated here (``http.network_error``)."""
        flags = self.options.security_flags
        url = start = self.file.remote_url  # (ALLOW_REPORT rewrites file.remote_url on the way)
        requester = self.requester
        await requester.resolve_defaults()
        try:
            for _hop in range(redirects.MAX_REDIRECTS + 1):
                routes = await requester.routes(url)
                auth = requester.authenticator(url, start)
                client_tls = await requester.client_tls(url)
                async with requester.request(url, headers, ahead, routes, auth, client_tls) as resp:
                    target = None
                    if resp.status in redirects.REDIRECT_STATUSES:  # (resp.url is parsed when read)
                        target = redirects.next_url(
                            resp.status, resp.headers.get("Location"), resp.url, url, flags
                        )
                    if target is None:
                        if auth is not None:
                            requester.authenticated(auth, resp.status, self.file.remote_url)
                        yield resp
                        return
                url = target
                ahead = ()  # the files that follow are asked at their own URLs
                if redirects.reported(flags):
                    self.progress.redirected(url)
        except NETWORK_EXCEPTIONS as e:
            raise network_error(e, self.file.remote_url) from e
        raise invalid_response(f"more than {redirects.MAX_REDIRECTS} redirects")

    # -- bodies -----------------------------------------------------------------------------

    async def stream(
        self,
        content: Body,
        offset: int,
        total: int | None,
        *,
        defer_sync: bool = False,
        checkpoints: bool = True,
    ) -> Fetched:
        """Copy the body to the temporary file from ``offset``; the final offset, durable
        unless ``defer_sync`` and no checkpoint was needed on the way.  Without
        ``checkpoints`` nothing is reported before the end (the caller checks the body first)."""
        fd, priority = self.fd, self.priority
        throttle = self.transport.throttle
        if (
            defer_sync
            and total is not None
            and total - offset <= SMALL_BODY_BYTES
            and not throttle.is_limited(priority)
        ):
            return await _stream_small(content, fd, offset, total)
        sock = content.socket() if isinstance(content, H1Body) else None
        with pacer(throttle, self.priority_of, self.options.job_id, self.options.owner_uid, sock) as pace:
            return await self._stream(content, offset, total, pace, defer_sync, checkpoints)

    async def _stream(
        self, content: Body, offset: int, total: int | None, pace: Pacer, defer_sync: bool, checkpoints: bool
    ) -> Fetched:
        """``stream``'s copy loop, read at ``pace``."""
        fd, progress = self.fd, self.progress
        tuning = self.transport.tuning
        block = tuning.write_block_bytes
        if total is not None and total - offset >= WRITEBACK_BYTES:
            # a big file of known size: its blocks reserved at once (few extents, no
            # allocation on the way); KEEP_SIZE, as the size is the offset a resume starts at
            diskio.preallocate(fd, offset, total - offset)
        sink = Sink(fd, offset)
        syncs = Syncs(
            fd,
            offset,
            tuning.checkpoint_interval_s,
            tuning.checkpoint_bytes,
            progress.checkpoint,
            checkpoints,
        )
        if self.check is not None:
            syncs.hashing = self.check.catch_up
        writing = "cannot write the temporary file"
        try:
            if isinstance(content, H1Body) and content.buffered() < block:
                # what came with the head goes first; the rest moves inside the kernel
                if content.buffered():
                    sink.add(await content.read(content.buffered()))
                    with fs.translating(writing):
                        sink.flush()
                if content.spliceable():
                    await splice(content, sink, total, syncs, pace, tuning.read_buffer_bytes)
            while True:
                asked = time.monotonic()
                if pace.limited():
                    # a paced transfer takes small slices, so the file grows smoothly at
                    # the pace instead of in read-buffer-sized lumps
                    chunk = await content.read(pace.slice_bytes())
                    if chunk:
                        pace.arrived(len(chunk), time.monotonic() - asked)
                        await pace.acquire(len(chunk))
                else:
                    chunk = await content.readany()
                    pace.arrived(len(chunk), time.monotonic() - asked)
                if not chunk:
                    break
                sink.add(chunk)
                if total is not None and sink.offset + sink.pending_len > total:
                    raise invalid_response("the server sent more bytes than it announced")
                now = time.monotonic()
                due = syncs.due(now)
                if sink.pending_len < block and len(sink.pending) < IOV_MAX and not due:
                    continue
                with fs.translating(writing):
                    sink.flush()
                    syncs.step(sink.offset, now)
            with fs.translating(writing):
                sink.flush()
            return await self._durable(syncs, sink.offset, defer_sync and syncs.sync_offset == offset)
        finally:
            syncs.closed = True
            if checkpoints and syncs.durable < sink.offset + sink.pending_len:
                await salvage(sink, progress.checkpoint)

    async def _durable(self, syncs: Syncs, end: int, deferred: bool) -> Fetched:
        """The body is in the file up to ``end``: make it durable (the caller commits it with
        the file's completion), unless ``deferred``: small and fast, the caller syncs it with
        others (nothing was checkpointed, so a crash before that just fetches it again)."""
        if not deferred:
            with fs.translating("cannot write the temporary file"):
                await syncs.finish()
                await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self.fd)
                check_still_linked(self.fd)
        syncs.durable = end
        return Fetched(end, durable=not deferred)


#: fetches a fresh file in segments from its first answer (``segments.start``)
SegmentedStart = Callable[[FileDownload, HTTPResponse, int, int], Awaitable[Fetched | Restart]]


async def _stream_small(content: Body, fd: int, offset: int, total: int) -> Fetched:
    """A small body of known length: read whole, written with one ``pwrite``, left to
    the caller's batch sync (nothing is checkpointed: an interruption fetches it again)."""
    need = total - offset
    parts = [await content.read(need)]
    got = len(parts[0])
    while got < need:  # (a body in many reads: joined once, not copied at each)
        more = await content.read(need - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return write_small(fd, parts[0] if len(parts) == 1 else b"".join(parts), offset)


def write_small(fd: int, data: bytes, offset: int) -> Fetched:
    """``data`` written at ``offset`` (one ``pwrite`` mostly; a short write goes on from where
    it stopped), not synced: the caller's batch sync makes it durable."""
    with fs.translating("cannot write the temporary file"):
        done = os.pwrite(fd, data, offset)
        if done < len(data):
            sink = Sink(fd, offset + done)
            sink.add(data[done:])
            sink.flush()
            return Fetched(sink.offset, durable=False)
    return Fetched(offset + done, durable=False)
