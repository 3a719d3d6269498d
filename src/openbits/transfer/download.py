"""Download one file into its temporary file, resumably.

The downloader knows files, not jobs: it reads a :class:`JobFile`, and reports
through :class:`Progress` (which the scheduler binds to the service) before each
durable step.  Order of durability:

1. ``begin`` persists the temporary name and validators *before* bytes land, so a
   crash never orphans a temporary file or resumes against the wrong content;
2. bytes are written in blocks of ``write_block_bytes`` (never per chunk);
3. ``checkpoint(offset)`` is called only after ``fdatasync`` covered ``offset``
   bytes; syncs run in a worker thread on a dup of the fd while reading goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from openbits.errors import BitsError, HResult, TransferError, TransientTransferError
from openbits.model import BG_LENGTH_TO_EOF, REDIRECT_POLICY_MASK, ErrorContext, JobFile, SecurityFlags
from openbits.transfer import files as fs
from openbits.transfer.byteranges import (
    ByteRangesError,
    ByteRangesParser,
    Data,
    Part,
    boundary_from_content_type,
)
from openbits.transfer.h1 import Body as H1Body
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import (
    NETWORK_EXCEPTIONS,
    env_proxy_for,
    h1_tls_context,
    invalid_response,
    network_error,
    parse_content_range,
    parse_unsatisfied_range,
    redirect_error,
    status_error,
    tls_context,
)
from openbits.transfer.throttle import Throttle

#: buffers per pwritev (Linux's IOV_MAX)
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
#: a body up to this long (known length) is read whole and written at once
SMALL_BODY_BYTES = 256 * 1024
#: bytes copied per step from a local source while a bandwidth limit applies
LOCAL_LIMITED_STEP = 256 * 1024


def throttled_slice(throttle: Throttle, priority: int) -> int:
    """Bytes taken per read while ``priority`` is limited: ~50 ms at the slowest limit that
    applies, between 16 KiB and 1 MiB."""
    rates = [throttle.bucket(priority).rate, throttle.global_bps]
    rate = min((r for r in rates if r), default=1024 * 1024)
    return int(max(16 * 1024, min(1024 * 1024, rate * 0.05)))


MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a job adds to its requests: custom headers and SetSecurityFlags bits."""

    headers: tuple[tuple[str, str], ...] = ()
    security_flags: int = 0


class Body(Protocol):
    """A response body as aiohttp's StreamReader and ``h1.Body`` read it."""

    async def read(self, n: int = -1) -> bytes: ...

    async def readany(self) -> bytes: ...


class HTTPResponse(Protocol):
    """What the downloader reads of a response, from aiohttp (HTTPS, proxies) or ``h1``."""

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
    a batch of them durable at once (one ``syncfs``, ``files.sync_handle``) before it commits them.
    """

    size: int
    durable: bool = True


@dataclass(slots=True)
class Owner:
    uid: int
    gid: int


@dataclass(slots=True)
class Tuning:
    checkpoint_interval_s: float = 1.0
    checkpoint_bytes: int = 64 * 1024 * 1024
    write_block_bytes: int = 1024 * 1024
    read_buffer_bytes: int = 4 * 1024 * 1024


def _sync_dup(fd: int) -> None:
    os.fdatasync(fd)
    os.close(fd)


class _Syncs:
    """The checkpoints of one body: every ``checkpoint_interval_s`` or ``checkpoint_bytes``
    an ``fdatasync`` runs in a worker thread on a dup of the fd while writing goes on; as
    soon as it returned, ``progress.checkpoint`` reports what it covered (``durable``), not
    at the next chunk (a slow server may send one only a second later).  Once ``closed``
    (the body is done or failed) a late sync reports nothing."""

    __slots__ = (
        "closed",
        "durable",
        "enabled",
        "failed",
        "fd",
        "last_time",
        "progress",
        "sync",
        "sync_offset",
        "tuning",
    )

    def __init__(self, fd: int, offset: int, tuning: Tuning, progress: Progress, enabled: bool) -> None:
        self.fd = fd
        self.tuning = tuning
        self.progress = progress
        self.enabled = enabled
        self.durable = offset  # bytes covered by a finished fdatasync and reported
        self.sync: asyncio.Future[None] | None = None
        self.sync_offset = offset
        self.last_time = time.monotonic()
        self.closed = False
        self.failed: BaseException | None = None  # a checkpoint that could not be recorded

    def due(self, now: float) -> bool:
        return now - self.last_time >= self.tuning.checkpoint_interval_s

    def step(self, written: int, now: float) -> None:
        """``written`` bytes are in the file: report a finished sync, start the next one."""
        if self.failed is not None:
            raise self.failed
        sync = self.sync
        if sync is not None and sync.done():
            sync.result()  # (a failed fdatasync fails the transfer here)
            self._report(sync)
        if (
            self.sync is None
            and self.enabled
            and (self.due(now) or written - self.sync_offset >= self.tuning.checkpoint_bytes)
        ):
            _check_still_linked(self.fd)
            self.sync_offset = written
            self.last_time = now
            self.sync = asyncio.get_running_loop().run_in_executor(None, _sync_dup, os.dup(self.fd))
            self.sync.add_done_callback(self._report)

    def _report(self, sync: asyncio.Future[None]) -> None:
        """The sync ``sync`` returned: report its checkpoint (once, if it is still the
        current one and it succeeded; a failure is raised by the next ``step``)."""
        if self.closed or sync is not self.sync or sync.cancelled() or sync.exception() is not None:
            return
        self.sync = None
        try:
            self.progress.checkpoint(self.sync_offset)
        except Exception as e:  # (from a loop callback: the transfer raises it)
            self.failed = e
            return
        self.durable = self.sync_offset

    async def finish(self) -> None:
        if self.sync is not None:
            sync, self.sync = self.sync, None
            await sync
        if self.failed is not None:
            raise self.failed


def _pipe(size: int) -> tuple[int, int]:
    """A non-blocking pipe of up to ``size`` bytes (as the system allows) for ``splice``."""
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    for want in (size, 1024 * 1024):
        try:
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, want)
            break
        except OSError:
            continue
    return pipe_r, pipe_w


def _pipe_size(pipe_w: int) -> int:
    return fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ)


class _Sink:
    """Chunks waiting to be written, and the exact offset the file holds up to.

    ``offset`` moves only by what ``pwritev`` reported written, and ``pending`` always
    holds exactly the bytes not yet written, even after a write fails half way (a full
    disk): nothing is counted twice or written at the wrong place.
    """

    __slots__ = ("fd", "offset", "pending", "pending_len")

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.pending: list[bytes] = []
        self.pending_len = 0

    def add(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_len += len(chunk)

    def flush(self) -> None:
        pending = self.pending
        while pending:
            # at most IOV_MAX buffers a call (Linux refuses more: a chunked body in tiny chunks)
            n = os.pwritev(self.fd, pending[:IOV_MAX], self.offset)
            self.offset += n
            self.pending_len -= n
            while pending and n >= len(pending[0]):
                n -= len(pending[0])
                pending.pop(0)
            if n:
                pending[0] = pending[0][n:]


class Downloader:
    """Downloads files over HTTP(S) and from local paths.

    Plain ``http://`` without a proxy goes through ``h1`` when an :class:`H1Client` is
    given (lean, pipelined); everything else through the aiohttp session.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tuning: Tuning | None = None,
        throttle: Throttle | None = None,
        h1: H1Client | None = None,
    ) -> None:
        self.session = session
        self.tuning = tuning or Tuning()
        self.throttle = throttle if throttle is not None else Throttle()
        self.h1 = h1

    async def download(
        self,
        file: JobFile,
        owner: Owner,
        progress: Progress,
        priority: int = 2,
        options: RequestOptions | None = None,
        *,
        defer_sync: bool = False,
        upcoming: Sequence[JobFile] = (),
    ) -> Fetched:
        """Bring ``file``'s temporary file to its full content within the bandwidth limits of
        ``priority`` (BG_JOB_PRIORITY), durably unless ``defer_sync`` lets a file that needed
        no checkpoint skip its own fdatasync (see :class:`Fetched`).

        ``upcoming`` are the files the caller will ask for next, with the same options: their
        requests may be sent ahead on the same connection (pipelining).

        The last checkpoint is left to the caller, which records the size and the file's
        completion in one commit.
        """
        options = options or RequestOptions()
        source = fs.local_source_path(file.remote_url)
        for _attempt in range(3):
            try:
                if source is not None:
                    return Fetched(await self._download_local(source, file, owner, progress, priority))
                if file.ranges is not None:
                    return await self._download_ranges(file, owner, progress, priority, options)
                ahead = _Ahead(upcoming, dict(options.headers))
                return await self._download_http(file, owner, progress, priority, options, defer_sync, ahead)
            except _Restart:
                continue
        raise invalid_response("the server's content kept changing during the transfer")

    # -- temporary file ---------------------------------------------------------------------

    def _open(self, file: JobFile, owner: Owner) -> tuple[int, int]:
        """(fd, offset) of the file's temporary file, created on first use, cut back to the
        last checkpoint (a temporary file that lost bytes starts again from 0)."""
        path = file.temp_path
        if path is None:
            raise TransferError("the file has no temporary name", context=ErrorContext.LOCAL_FILE)
        fd = fs.open_temp(path, owner.uid, owner.gid)
        offset = file.bytes_transferred
        with fs.translating(f"cannot use the temporary file {path}"):
            size = os.fstat(fd).st_size
            if size < offset:
                offset = 0
            if size != offset:
                # (not on a new, empty file: on ext4 a truncated file is flushed at close)
                os.ftruncate(fd, offset)
        return fd, offset

    # -- HTTP -------------------------------------------------------------------------------

    async def _download_http(
        self,
        file: JobFile,
        owner: Owner,
        progress: Progress,
        priority: int,
        options: RequestOptions,
        defer_sync: bool,
        ahead: Iterable[tuple[str, Mapping[str, str]]] = (),
    ) -> Fetched:
        fd, offset = self._open(file, owner)
        try:
            headers: dict[str, str] = dict(options.headers)
            if offset > 0:
                headers["Range"] = f"bytes={offset}-"
                validator = _if_range(file)
                if validator:
                    headers["If-Range"] = validator
            try:
                async with self._get(file.remote_url, headers, options, progress, priority, ahead) as resp:
                    start, total = self._accept(resp, file, fd, offset, progress)
                    if total is not None:
                        fs.check_free_space(os.path.dirname(file.local_file), total - start)
                    progress.connected()
                    fetched = Fetched(start)
                    if total is None or total > start:
                        fetched = await self._stream(
                            resp.content, fd, start, total, progress, priority, defer_sync
                        )
                    if total is not None and fetched.size != total:
                        raise invalid_response(f"the server sent {fetched.size} bytes of {total}")
                    _finish(fd, file)
                    return fetched
            except NETWORK_EXCEPTIONS as e:
                raise network_error(e, file.remote_url) from e
        finally:
            os.close(fd)

    async def _download_ranges(
        self, file: JobFile, owner: Owner, progress: Progress, priority: int, options: RequestOptions
    ) -> Fetched:
        """AddFileWithRanges: the ranges appended to the output in their order.

        Small ranges go several to a request (``multipart/byteranges``), others one request
        each; a server that will not do several at once is asked one at a time.  The output
        offset maps back to (range, position in it), so an interruption resumes inside the
        range it stopped in.  Every part must be exactly the range asked for; 416 is
        BG_E_INVALID_RANGE; a 200 means the content changed (If-Range) and the file starts
        again, or, with nothing to compare, that the server cannot do ranges.
        """
        ranges = file.ranges
        assert ranges is not None
        fd, out = self._open(file, owner)
        multi = True
        try:
            i = 0
            done = 0  # output bytes of the ranges before range i
            while i < len(ranges):
                start, length = ranges[i]
                if length != BG_LENGTH_TO_EOF and out >= done + length:
                    done += length
                    i += 1
                    continue
                first = start + (out - done)
                batch = _multi_batch(first, length - (out - done), ranges[i + 1 :]) if multi else []
                try:
                    if len(batch) > 1:
                        try:
                            out = await self._ranges_multi(file, fd, out, batch, progress, priority, options)
                        except _NoMultipart as e:
                            out, multi = e.out, False
                        continue  # the ranges done are skipped above
                    out = await self._range_single(
                        file, fd, out, (first, start, length), progress, priority, options
                    )
                except _RangeDone as e:
                    done += e.length  # the output holds it all already
                    i += 1
                    continue
                except NETWORK_EXCEPTIONS as e:
                    raise network_error(e, file.remote_url) from e
                done = out
                i += 1
            _finish(fd, file)
            return Fetched(out)
        finally:
            os.close(fd)

    def _range_headers(
        self, file: JobFile, options: RequestOptions, spec: str
    ) -> tuple[dict[str, str], bool]:
        headers = dict(options.headers)
        headers["Range"] = f"bytes={spec}"
        validator = _if_range(file)
        if validator:
            headers["If-Range"] = validator
        return headers, bool(validator)

    def _range_refused(self, resp: HTTPResponse, first: int) -> BitsError:
        if resp.status == 416:
            return TransferError(
                f"the range from byte {first} is not in the remote file",
                hresult=HResult.BG_E_INVALID_RANGE,
                context=ErrorContext.REMOTE_FILE,
            )
        return status_error(resp.status, resp.reason, resp.headers.get("Retry-After"))

    async def _range_single(
        self,
        file: JobFile,
        fd: int,
        out: int,
        piece: tuple[int, int, int],
        progress: Progress,
        priority: int,
        options: RequestOptions,
    ) -> int:
        """One range (from where the output stopped inside it) in one request; the new output
        offset, checkpointed."""
        first, start, length = piece
        spec = f"{first}-" if length == BG_LENGTH_TO_EOF else f"{first}-{start + length - 1}"
        headers, validator = self._range_headers(file, options, spec)
        async with self._get(file.remote_url, headers, options, progress, priority) as resp:
            if resp.status == 200:
                if validator:
                    progress.begin(file.bytes_total, None, None)
                    raise _Restart
                raise TransferError(
                    "the server ignored the Range header",
                    hresult=HResult.BG_E_INSUFFICIENT_RANGE_SUPPORT,
                    context=ErrorContext.REMOTE_FILE,
                )
            if resp.status == 416 and length == BG_LENGTH_TO_EOF:
                # A range to the end of the file whose length was not known when the output
                # went past it (it is not stored): the 416 tells the file's size.
                total = parse_unsatisfied_range(resp.headers.get("Content-Range"))
                if total is not None and start < total <= first:
                    raise _RangeDone(total - start)
            if resp.status != 206:
                raise self._range_refused(resp, first)
            last = _piece_end(resp, headers["Range"], first, start, length)
            if out > 0:
                _check_same_content(resp, file)
            progress.responded(True, _header_text(resp))
            if out == 0:
                progress.begin(file.bytes_total, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
            progress.connected()
            piece_end = out + (last - first + 1)
            fetched = await self._stream(resp.content, fd, out, piece_end, progress, priority)
            if fetched.size != piece_end:
                raise invalid_response(f"the server sent {fetched.size - out} of {piece_end - out} bytes")
        progress.checkpoint(piece_end)
        return piece_end

    async def _ranges_multi(
        self,
        file: JobFile,
        fd: int,
        out: int,
        batch: list[tuple[int, int]],
        progress: Progress,
        priority: int,
        options: RequestOptions,
    ) -> int:
        """Several ranges (first byte, length) in one request, as a multipart/byteranges answer;
        each part is written and checkpointed once the delimiter after it was seen (a part
        that was not the length its Content-Range said never reaches a checkpoint).  Raises
        _NoMultipart when the server answers otherwise (it is then asked one range at a time).
        """
        spec = ",".join(f"{first}-{first + n - 1}" for first, n in batch)
        headers, validator = self._range_headers(file, options, spec)
        async with self._get(file.remote_url, headers, options, progress, priority) as resp:
            etag = resp.headers.get("ETag")
            if resp.status == 200:
                modified = resp.headers.get("Last-Modified")
                same = (etag == file.etag) if etag else bool(modified and modified == file.last_modified)
                if validator and not same:
                    progress.begin(file.bytes_total, None, None)
                    raise _Restart  # the content changed (If-Range)
                raise _NoMultipart(out)  # same content, whole: no multi-range here
            if resp.status != 206:
                raise self._range_refused(resp, batch[0][0])
            boundary = boundary_from_content_type(resp.headers.get("Content-Type"))
            if boundary is None:
                raise _NoMultipart(out)  # one part (perhaps coalesced): ask one range at a time
            if out > 0:
                _check_same_content(resp, file)
            progress.responded(True, _header_text(resp))
            if out == 0:
                progress.begin(file.bytes_total, etag, resp.headers.get("Last-Modified"))
            progress.connected()
            parts = _PartsReader(resp.content, ByteRangesParser(boundary))
            try:
                for first, n in batch:
                    part = await parts.next_part()
                    if part is None or part.start != first or part.end != first + n - 1:
                        raise _NoMultipart(out)  # other parts than asked (reordered, coalesced, fewer)
                    end = out + n
                    fetched = await self._stream(parts, fd, out, end, progress, priority, checkpoints=False)
                    if fetched.size != end:
                        raise invalid_response(f"a part of {n} bytes ended after {fetched.size - out}")
                    out = end
                    progress.checkpoint(out)
                await parts.finish()
            except ByteRangesError as e:
                raise invalid_response(f"bad multipart/byteranges answer: {e}") from e
        return out

    def _read_buffer(self, priority: int) -> int | None:
        """A limited transfer reads ahead ~0.1 s of its rate, not 4 MiB (no bursts on the wire);
        None keeps the session's buffer."""
        if not self.throttle.is_limited(priority):
            return None
        return max(
            64 * 1024, min(self.tuning.read_buffer_bytes, throttled_slice(self.throttle, priority) * 2)
        )

    def _request(
        self,
        url: str,
        headers: dict[str, str],
        options: RequestOptions,
        priority: int,
        ahead: Iterable[tuple[str, Mapping[str, str]]],
    ) -> contextlib.AbstractAsyncContextManager[HTTPResponse]:
        """One GET, no redirects followed: through ``h1`` unless through a proxy."""
        proxy = env_proxy_for(url)
        if self.h1 is not None and proxy is None:
            scheme = url[:6].lower()
            if scheme.startswith("http:"):
                return self.h1.get(url, headers, ahead)
            if scheme == "https:":
                return self.h1.get(url, headers, ahead, h1_tls_context(options.security_flags))
        return self.session.get(
            url,
            headers=headers,
            allow_redirects=False,
            ssl=tls_context(options.security_flags),
            read_bufsize=self._read_buffer(priority),
            proxy=proxy,
        )

    @contextlib.asynccontextmanager
    async def _get(
        self,
        url: str,
        headers: dict[str, str],
        options: RequestOptions,
        progress: Progress,
        priority: int,
        ahead: Iterable[tuple[str, Mapping[str, str]]] = (),
    ) -> AsyncIterator[HTTPResponse]:
        """GET ``url``, following redirects as the job's SecurityFlags say (bits-spec §5.5):
        ALLOW_SILENT follows, ALLOW_REPORT follows and reports the final URL (which becomes
        the file's RemoteUrl), DISALLOW fails; HTTPS to HTTP fails unless allowed."""
        flags = options.security_flags
        policy = flags & REDIRECT_POLICY_MASK
        for _hop in range(MAX_REDIRECTS + 1):
            async with self._request(url, headers, options, priority, ahead) as resp:
                location = resp.headers.get("Location")
                if resp.status not in REDIRECT_STATUSES or not location:
                    yield resp
                    return
                try:
                    target = str(resp.url.join(yarl.URL(location)))
                except ValueError as e:  # a Location no URL parser takes: the server's fault
                    raise invalid_response(f"the server redirected to a malformed URL ({e})") from None
                if policy == SecurityFlags.REDIRECT_POLICY_DISALLOW:
                    raise redirect_error(resp.status, "the job's SecurityFlags disallow redirects")
                if (
                    url.lower().startswith("https:")
                    and target.lower().startswith("http:")
                    and not flags & SecurityFlags.REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP
                ):
                    raise redirect_error(resp.status, "a redirect from HTTPS to HTTP is not allowed")
                if target.split(":", 1)[0].lower() not in ("http", "https"):
                    raise redirect_error(resp.status, "a redirect to a scheme other than HTTP(S)")
            url = target
            ahead = ()  # the files that follow are asked at their own URLs
            if policy == SecurityFlags.REDIRECT_POLICY_ALLOW_REPORT:
                progress.redirected(url)
        raise invalid_response(f"more than {MAX_REDIRECTS} redirects")

    def _accept(
        self, resp: HTTPResponse, file: JobFile, fd: int, offset: int, progress: Progress
    ) -> tuple[int, int | None]:
        """Check the response against the request.

        Returns (the offset its body starts at, the file's total size or None).
        """
        status = resp.status
        etag = resp.headers.get("ETag")
        last_modified = resp.headers.get("Last-Modified")
        if status in (200, 206):
            progress.responded(_range_support(resp, file, offset), _header_text(resp))
        if status == 206 and offset > 0:
            parsed = parse_content_range(resp.headers.get("Content-Range"))
            if parsed is None:
                raise invalid_response(f"bad Content-Range {resp.headers.get('Content-Range')!r}")
            start, end, total = parsed
            if start != offset or total is None or end != total - 1:
                raise invalid_response(
                    f"asked for bytes {offset}- but the server sent {resp.headers.get('Content-Range')}"
                )
            if file.bytes_total is not None and total != file.bytes_total:
                raise invalid_response(f"the file's size changed from {file.bytes_total} to {total}")
            _check_same_content(resp, file)
            length = resp.content_length
            if length is not None and length != end - start + 1:
                raise invalid_response("Content-Length does not match Content-Range")
            return offset, total
        if status == 200:
            # Full content: the first request, changed content (If-Range failed) or a
            # server that ignores Range.  Never appended: start again from byte 0.
            if offset:
                with fs.translating("cannot truncate the temporary file"):
                    os.ftruncate(fd, 0)
            progress.begin(resp.content_length, etag, last_modified)
            return 0, resp.content_length
        if status == 416 and offset > 0:
            total = parse_unsatisfied_range(resp.headers.get("Content-Range"))
            if total is not None and total == offset:
                return offset, total  # every byte was already here
            progress.begin(None, None, None)
            raise _Restart
        if status == 206:
            raise invalid_response("the server sent 206 Partial Content to a request without Range")
        raise status_error(status, resp.reason, resp.headers.get("Retry-After"))

    async def _stream(
        self,
        content: Body,
        fd: int,
        offset: int,
        total: int | None,
        progress: Progress,
        priority: int,
        defer_sync: bool = False,
        checkpoints: bool = True,
    ) -> Fetched:
        """Copy the body to ``fd`` from ``offset``; the final offset, durable unless
        ``defer_sync`` and no checkpoint was needed on the way.  Without ``checkpoints``
        nothing is reported before the end (the caller checks the body first)."""
        tuning = self.tuning
        throttle = self.throttle
        if (
            defer_sync
            and total is not None
            and total - offset <= SMALL_BODY_BYTES
            and not throttle.is_limited(priority)
        ):
            return await self._stream_small(content, fd, offset, total)
        block = tuning.write_block_bytes
        sink = _Sink(fd, offset)
        syncs = _Syncs(fd, offset, tuning, progress, checkpoints)
        try:
            if isinstance(content, H1Body) and content.buffered() < block:
                # what came with the head goes first; the rest moves inside the kernel
                if content.buffered():
                    sink.add(await content.read(content.buffered()))
                    sink.flush()
                if content.spliceable():
                    await self._splice(content, sink, total, syncs, priority)
            while True:
                if throttle.is_limited(priority):
                    # a limited transfer takes small slices, so the file grows smoothly at
                    # the limit instead of in read-buffer-sized lumps
                    chunk = await content.read(throttled_slice(throttle, priority))
                    if chunk:
                        await throttle.acquire(priority, len(chunk))
                else:
                    chunk = await content.readany()
                if not chunk:
                    break
                sink.add(chunk)
                if total is not None and sink.offset + sink.pending_len > total:
                    raise invalid_response("the server sent more bytes than it announced")
                now = time.monotonic()
                due = syncs.due(now)
                if sink.pending_len < block and len(sink.pending) < IOV_MAX and not due:
                    continue
                sink.flush()
                syncs.step(sink.offset, now)
            sink.flush()
            if defer_sync and syncs.sync_offset == offset:
                # small and fast: the caller syncs it with others (nothing was checkpointed,
                # so a crash before that just fetches it again)
                syncs.durable = sink.offset
                return Fetched(sink.offset, durable=False)
            await syncs.finish()
            await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, fd)
            _check_still_linked(fd)
            syncs.durable = sink.offset
            return Fetched(sink.offset)  # the caller commits it with the file's completion
        except OSError as e:
            # Only the file's own writes and syncs are local errors; timeouts and resets
            # while reading the socket are OSErrors too, and stay network errors.
            if isinstance(e, NETWORK_EXCEPTIONS):
                raise
            raise fs.local_error(e, "cannot write the temporary file") from e
        finally:
            syncs.closed = True
            if checkpoints and syncs.durable < sink.offset + sink.pending_len:
                self._salvage(sink, progress)

    async def _splice(
        self, content: H1Body, sink: _Sink, total: int | None, syncs: _Syncs, priority: int
    ) -> None:
        """The body from the socket to the file through a pipe, inside the kernel
        (``splice(2)``): no copy through Python, one copy (into the page cache) in all.

        The pipe is drained into the file after every move, so it is empty whenever this
        waits (a cancellation or an error loses nothing that was counted): ``sink.offset``
        moves only by what reached the file.  Returns when the body is done, or at once
        when the kernel refuses to splice (the caller reads the rest)."""
        throttle = self.throttle
        fd = sink.fd
        pipe_r, pipe_w = _pipe(self.tuning.read_buffer_bytes)
        try:
            step = _pipe_size(pipe_w)
            while not content.done:
                limited = throttle.is_limited(priority)
                want = throttled_slice(throttle, priority) if limited else step
                moved = await content.splice(pipe_w, min(want, step))
                if not moved:
                    return
                if total is not None and sink.offset + moved > total:
                    raise invalid_response("the server sent more bytes than it announced")
                got = moved
                while moved:
                    n = os.splice(pipe_r, fd, moved, offset_dst=sink.offset)
                    sink.offset += n
                    moved -= n
                if limited:
                    await throttle.acquire(priority, got)
                syncs.step(sink.offset, time.monotonic())
        finally:
            os.close(pipe_r)
            os.close(pipe_w)

    @staticmethod
    async def _stream_small(content: Body, fd: int, offset: int, total: int) -> Fetched:
        """A small body of known length: read whole, written with one ``pwritev``, left to
        the caller's batch sync (nothing is checkpointed: an interruption fetches it again)."""
        sink = _Sink(fd, offset)
        need = total - offset
        while sink.pending_len < need:
            chunk = await content.read(need - sink.pending_len)
            if not chunk:
                break
            sink.add(chunk)
        try:
            sink.flush()
        except OSError as e:
            raise fs.local_error(e, "cannot write the temporary file") from e
        return Fetched(sink.offset, durable=False)

    @staticmethod
    def _salvage(sink: _Sink, progress: Progress) -> None:
        """On an error or cancellation: keep what arrived, durably, for the next attempt.

        Whatever could be written (the disk may be full) is synced and checkpointed;
        bytes that could not be written are simply fetched again.
        """
        with contextlib.suppress(OSError):
            sink.flush()
        try:
            os.fdatasync(sink.fd)
            progress.checkpoint(sink.offset)
        except (OSError, BitsError):
            pass

    # -- local and mounted file systems -----------------------------------------------------

    async def _download_local(
        self, source: str, file: JobFile, owner: Owner, progress: Progress, priority: int
    ) -> int:
        src = await asyncio.to_thread(open_as_owner, source, owner)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise TransferError(
                    f"the source {source} is not a regular file",
                    hresult=HResult.HRESULT_DIRECTORY,
                    context=ErrorContext.REMOTE_FILE,
                )
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            lm = _http_date(st.st_mtime)
            fd, offset = self._open(file, owner)
            try:
                progress.connected()
                if file.etag != etag or file.bytes_total != st.st_size:
                    offset = 0
                    os.ftruncate(fd, 0)
                    progress.begin(st.st_size, etag, lm)
                fs.check_free_space(os.path.dirname(file.local_file), st.st_size - offset)
                while offset < st.st_size:
                    limited = self.throttle.is_limited(priority)
                    step = LOCAL_LIMITED_STEP if limited else self.tuning.checkpoint_bytes
                    count = min(step, st.st_size - offset)
                    if limited:
                        await self.throttle.acquire(priority, count)
                    n = await asyncio.to_thread(_copy_range, src, fd, offset, count)
                    if n == 0:
                        raise _Restart  # the source shrank under us
                    offset += n
                    if offset < st.st_size:
                        progress.checkpoint(offset)
                if os.fstat(src).st_mtime_ns != st.st_mtime_ns:
                    raise _Restart
                _finish(fd, file)
                return offset
            finally:
                os.close(fd)
        except OSError as e:
            raise fs.local_error(e, f"cannot copy {source}") from e
        finally:
            os.close(src)


def _if_range(file: JobFile) -> str | None:
    """The validator a resumed request sends in If-Range: the strong ETag, else Last-Modified."""
    if file.etag and not file.etag.startswith("W/"):
        return file.etag
    return file.last_modified


def _finish(fd: int, file: JobFile) -> None:
    """The file is whole: its published mode and time now (``files.finish_temp``)."""
    with fs.translating("cannot set the temporary file's mode and time"):
        fs.finish_temp(fd, fs.http_date_to_unix(file.last_modified))


def _check_same_content(resp: HTTPResponse, file: JobFile) -> None:
    """A 206 resuming a file must be of the same content as what is already there: If-Range
    should have brought the whole new content; never splice two versions."""
    etag = resp.headers.get("ETag")
    if etag and file.etag and etag != file.etag:
        raise invalid_response(f"a part of a changed file (ETag {file.etag} -> {etag})")
    modified = resp.headers.get("Last-Modified")
    if modified and file.last_modified and modified != file.last_modified:
        raise invalid_response("a part of a changed file (Last-Modified changed)")


def _check_still_linked(fd: int) -> None:
    """The temporary file (or its directory) was deleted under us: writing on into an
    unlinked inode would only lose the bytes at Complete, so say so now."""
    if os.fstat(fd).st_nlink == 0:
        raise TransferError(
            "the temporary file or its directory was removed during the transfer",
            hresult=HResult.HRESULT_PATH_NOT_FOUND,
            context=ErrorContext.LOCAL_FILE,
        )


RESPONSE_HEADERS_MAX = 16 * 1024


def _header_text(resp: HTTPResponse) -> str:
    # Set-Cookie may carry a session secret: never kept, never returned
    text = "".join(
        f"{name}: {value}\r\n" for name, value in resp.headers.items() if name.lower() != "set-cookie"
    )
    return text[:RESPONSE_HEADERS_MAX]


def _range_support(resp: HTTPResponse, file: JobFile, offset: int) -> bool | None:
    """Can the server resume this file? 206: yes; a 200 to a Range with unchanged validators,
    no length, or Accept-Ranges: none: no (an interruption restarts it from byte 0)."""
    if resp.status == 206:
        return True
    etag = resp.headers.get("ETag")
    if offset > 0 and etag is not None and etag == file.etag and not etag.startswith("W/"):
        return False  # same content, yet the whole of it: Range was ignored
    accept = (resp.headers.get("Accept-Ranges") or "").strip().lower()
    if resp.content_length is None or accept == "none":
        return False
    return True if accept == "bytes" else None


def _piece_end(resp: HTTPResponse, asked: str, first: int, start: int, length: int) -> int:
    """The last byte of a 206 answer to one range, checked to be exactly what was asked."""
    got = resp.headers.get("Content-Range")
    parsed = parse_content_range(got)
    if parsed is None:
        raise invalid_response(f"asked for {asked}, got {got}")
    begin, last, total = parsed
    if begin != first or total is None:
        raise invalid_response(f"asked for {asked}, got {got}")
    wanted_last = total - 1 if length == BG_LENGTH_TO_EOF else start + length - 1
    if wanted_last >= total:
        raise TransferError(
            f"the range ends past the end of the remote file ({total} bytes)",
            hresult=HResult.BG_E_INVALID_RANGE,
            context=ErrorContext.REMOTE_FILE,
        )
    if last != wanted_last:
        raise invalid_response(f"asked for {asked}, got {got}")
    return last


class _Restart(Exception):
    """The content changed under us: start the file again from byte 0."""


class _Ahead:
    """The requests of the files after the current one, built only when the connection has
    room for them (most of the time it has not)."""

    __slots__ = ("files", "headers")

    def __init__(self, files: Sequence[JobFile], headers: Mapping[str, str]) -> None:
        self.files, self.headers = files, headers

    def __iter__(self) -> Iterator[tuple[str, Mapping[str, str]]]:
        for f in self.files:
            if f.bytes_transferred == 0 and f.ranges is None and not f.completed:
                yield f.remote_url, self.headers


class _RangeDone(Exception):
    """A range to the end of the file turned out to be in the output already (``length``)."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class _NoMultipart(Exception):
    """The server did not answer a multi-range request with the parts asked for; ``out`` is
    the output offset the parts it did send (checkpointed) brought the file to."""

    def __init__(self, out: int) -> None:
        super().__init__(out)
        self.out = out


#: ranges up to this long go several to a request, up to MULTI_RANGE_COUNT of them
MULTI_RANGE_MAX_BYTES = 16 * 1024 * 1024
MULTI_RANGE_COUNT = 64
MULTI_RANGE_HEADER_CHARS = 2000


def _multi_batch(first: int, length: int, following: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first byte, length) of the ranges to ask in one multi-range request, starting with
    the rest of the current range; empty if the current range is too long for it."""
    if length > MULTI_RANGE_MAX_BYTES or length == BG_LENGTH_TO_EOF or length <= 0:
        return []
    batch = [(first, length)]
    chars = len(f"{first}-{first + length - 1}")
    for start, n in following:
        if n > MULTI_RANGE_MAX_BYTES or len(batch) >= MULTI_RANGE_COUNT:
            break  # (BG_LENGTH_TO_EOF is larger than the limit too)
        chars += len(f",{start}-{start + n - 1}")
        if chars > MULTI_RANGE_HEADER_CHARS:
            break
        batch.append((start, n))
    return batch


class _PartsReader:
    """The parts of a multipart/byteranges body, each read like a body of its own.

    The last bytes of a part are handed out only once what follows them (the next part's
    header or the closing delimiter) was seen, so a part that was not the length its
    Content-Range said never gets written whole."""

    __slots__ = ("content", "eof", "events", "left", "parser")

    def __init__(self, content: Body, parser: ByteRangesParser) -> None:
        self.content, self.parser = content, parser
        self.events: collections.deque[Part | Data] = collections.deque()
        self.left = 0  # bytes of the current part not yet handed out
        self.eof = False

    async def _more(self) -> bool:
        """Feed the parser; False once the body has ended (checked to be complete)."""
        if self.eof:
            return False
        chunk = await self.content.readany()
        if not chunk:
            self.eof = True
            self.parser.finish()
            return False
        self.events.extend(self.parser.feed(chunk))
        return True

    async def next_part(self) -> Part | None:
        while not self.events:
            if self.parser.done or not await self._more():
                return None
        event = self.events.popleft()
        if not isinstance(event, Part):
            raise ByteRangesError("part data where a part header was expected")
        self.left = event.end - event.start + 1
        return event

    async def read(self, n: int = -1) -> bytes:
        if self.left == 0:
            return b""
        while not self.events:
            if not await self._more():
                raise ByteRangesError("the body ended inside a part")
        event = self.events[0]
        if not isinstance(event, Data):
            raise ByteRangesError("a part ended early")
        data = event.data
        if 0 <= n < len(data):
            self.events[0] = Data(data[n:])
            data = data[:n]
        else:
            self.events.popleft()
        self.left -= len(data)
        if self.left == 0:
            while not self.events and not self.parser.done:  # confirm the part's end
                if not await self._more():
                    break
        return data

    async def readany(self) -> bytes:
        return await self.read()

    async def finish(self) -> None:
        """After the last part asked for: the body must end there."""
        while not self.parser.done:
            if not await self._more():
                break
        if self.events:
            raise ByteRangesError("more parts than ranges asked for")
        while await self._more():  # the epilogue, if any, up to the body's end
            pass


def _http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``offset`` from src to dst, then fdatasync dst."""
    done = 0
    while done < count:
        n = os.copy_file_range(src, dst, count - done, offset + done, offset + done)
        if n == 0:
            break
        done += n
    os.fdatasync(dst)
    return done


def _open_in_child(path: str, owner: Owner) -> int:
    """Fork (no exec: the daemon's interpreter may live where the owner cannot read),
    drop to the owner's ids in the child, open ``path`` there and pass the fd back."""
    import pwd

    try:
        groups = os.getgrouplist(pwd.getpwuid(owner.uid).pw_name, owner.gid)
    except KeyError:
        groups = [owner.gid]
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent, child:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.setgroups(groups)
                os.setgid(owner.gid)
                os.setuid(owner.uid)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                socket.send_fds(child, [b"0"], [fd])
            except OSError as e:
                child.send(str(e.errno or 5).encode())
                code = 1
            finally:
                os._exit(code)
        child.close()
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 64, 1)
        finally:
            os.waitpid(pid, 0)
        if fds:
            return fds[0]
        err = int(msg or b"5")
        raise OSError(err, os.strerror(err), path)


def open_as_owner(path: str, owner: Owner) -> int:
    """Open ``path`` for reading with the owner's rights, not the daemon's.

    A daemon running as the owner opens it itself; a root daemon serving another
    user lets a short-lived child running as that user open it and pass the fd back.
    """
    try:
        if os.geteuid() == owner.uid or os.geteuid() != 0:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return _open_in_child(path, owner)
    except FileNotFoundError as e:
        raise TransferError(
            f"the source {path} does not exist",
            hresult=HResult.HRESULT_FILE_NOT_FOUND,
            context=ErrorContext.REMOTE_FILE,
        ) from e
    except PermissionError as e:
        raise TransferError(
            f"the job owner may not read {path}",
            hresult=HResult.E_ACCESSDENIED,
            context=ErrorContext.REMOTE_FILE,
        ) from e
    except IsADirectoryError as e:
        raise TransferError(
            f"the source {path} is a directory",
            hresult=HResult.HRESULT_DIRECTORY,
            context=ErrorContext.REMOTE_FILE,
        ) from e
    except OSError as e:
        raise TransientTransferError(
            f"cannot open {path}: {e.strerror}", hresult=HResult.E_FAIL, context=ErrorContext.REMOTE_FILE
        ) from e
