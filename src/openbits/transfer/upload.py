"""One upload job's transfer: the BITS upload protocol (``uploadflow``, sans I/O) driven
over ``h1`` by the job's routes, credentials and client certificate (``routing.Requester``,
shared with downloads).

:class:`Uploader` runs an upload (or upload-reply) job's one file from where the server
stands: it opens the source with the owner's rights (off the loop), checks it against the size
and mtime AddFile found before and after every fragment (BG_E_LOCAL_FILE_CHANGED: also a
source that shrank while a fragment was read), sends Ping, Create-Session, the Fragments
(Content-Range, Content-Name, a body read from the source as it is sent, within the priority's
bandwidth limit), fetches the reply of an upload-reply job with the download machinery
(``Downloader``, into ``files.reply_temp_name`` beside ReplyFileName, as the owner; the job's
custom headers and server credentials only when the reply is at the upload's origin:
``reply_options``), then Close-Session. The state it moves (``UploadState`` and the file's
acknowledged offset) is reported through :class:`UploadProgress`, which stores it: ``urgent``
when a restart must find it (a new session, the last Ack, the reply, the close), else at the
caller's checkpoint pace. Cancel-Session is :meth:`Uploader.cancel_session` (sent again at a
5xx, as Close-Session is).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

import yarl

from openbits.errors import BitsError, HResult, LocalFileError
from openbits.model import AuthTarget, ErrorContext, JobFile, UploadState
from openbits.transfer import files as fs
from openbits.transfer import redirects
from openbits.transfer.download import Downloader
from openbits.transfer.fetch import Progress
from openbits.transfer.h1 import ConnectFailed, NameNotResolved, ProxyUnreachable, RequestBody
from openbits.transfer.h1send import FileShrank
from openbits.transfer.http import NETWORK_EXCEPTIONS, invalid_response, network_error
from openbits.transfer.options import RequestOptions
from openbits.transfer.owner import opened_off_loop
from openbits.transfer.pace import Priority
from openbits.transfer.routing import Owner, Requester, Transport
from openbits.transfer.uploadflow import (
    PROTOCOL,
    Ack,
    Advance,
    FragmentSizer,
    Kind,
    NewSession,
    Opened,
    Packet,
    Shrink,
    checked_reply_url,
    interpret,
    next_packet,
)

__all__ = ["Reply", "UploadProgress", "Uploader", "reply_options"]

log = logging.getLogger(__name__)

#: what says a BITS-Host-Id host cannot be reached (its fallback timeout runs meanwhile)
HOST_UNREACHABLE = (ConnectFailed, NameNotResolved)

#: the most of an Ack's body read (and dropped) to keep its connection
MAX_ACK_BODY_BYTES = 64 * 1024
#: new sessions one run starts at most (a server that forgets each one is broken)
MAX_NEW_SESSIONS = 3
#: Fragment Acks in a row that do not move the offset forward before the server is wrong
MAX_STALLED_ACKS = 4
#: Close-Session sent this many times at most in a run while it fails transiently, the
#: n-th resend n times this long after the one before (as Windows resends it at a 5xx)
CLOSE_ATTEMPTS = 3
CLOSE_RESEND_DELAY_S = 0.5
#: the packets that carry Content-Name (the source's base name): Windows names the file on
#: Create-Session, every Fragment and Close-Session
_NAMED = frozenset({Kind.CREATE_SESSION, Kind.FRAGMENT, Kind.CLOSE_SESSION})
#: the packets sent again at a 5xx (``Uploader._resent``)
_RESENT = frozenset({Kind.CLOSE_SESSION, Kind.CANCEL_SESSION})


class UploadProgress(Protocol):
    def connected(self) -> None:
        """The server answered: the job is TRANSFERRING."""

    def saved(self, offset: int, *, urgent: bool) -> None:
        """The session (``UploadState``) or the acknowledged ``offset`` moved: store them,
        at once when ``urgent``, else at the checkpoint pace (and at the end of the run).
        The uploader never writes the file's ``bytes_transferred``: this does."""

    def reply_done(self, size: int) -> None:
        """The reply is whole (``size`` bytes) in its temporary file."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Where an upload-reply job's reply goes: its temporary file ``temp_name`` beside
    ``file_name`` (ReplyFileName); ``progress`` reports the reply's download."""

    file_name: str
    temp_name: str
    progress: Progress


def content_name(local_file: str) -> str:
    """Content-Name: the source's base name, as Windows sends it; percent-encoded when
    HTTP/1.1 cannot carry it as it is."""
    name = os.path.basename(local_file)
    if name.isascii() and name.isprintable():
        return name
    return urllib.parse.quote(name, safe="")


def packet_url(remote_url: str, host_id: str | None) -> str:
    """The URL of a session's packets: the job's, on the host BITS-Host-Id named."""
    if not host_id:
        return remote_url
    try:
        return str(yarl.URL(remote_url).with_host(host_id))
    except ValueError as e:
        raise invalid_response(f"the server's BITS-Host-Id {host_id[:60]!r} is not a host name") from e


class _Session:
    """The packets of one upload's session: to its URL, with the job's headers."""

    __slots__ = ("file", "options", "priority", "requester", "state")

    def __init__(
        self,
        requester: Requester,
        file: JobFile,
        state: UploadState,
        options: RequestOptions,
        priority: Priority,
    ) -> None:
        self.requester, self.file, self.state = requester, file, state
        self.options, self.priority = options, priority

    @property
    def url(self) -> str:
        return packet_url(self.file.remote_url, self.state.host_id)

    async def send(self, packet: Packet, fd: int = -1) -> Ack:
        """``packet`` as BITS_POST; its Ack (the body read and dropped)."""
        headers = dict(self.options.headers)
        headers["BITS-Packet-Type"] = packet.kind.value
        if packet.kind is Kind.CREATE_SESSION:
            headers["BITS-Supported-Protocols"] = PROTOCOL
        elif packet.kind is not Kind.PING and self.state.session_id is not None:
            headers["BITS-Session-Id"] = self.state.session_id
        if packet.kind in _NAMED:  # (as Windows sends it: [MC-BUP] §4.1)
            headers["Content-Name"] = content_name(self.file.local_file)
        body = None
        if packet.kind is Kind.FRAGMENT:
            headers["Content-Range"] = packet.content_range
            throttle = self.requester.transport.throttle
            body = RequestBody(
                fd=fd, offset=packet.start, length=packet.length, throttle=throttle, priority=self.priority
            )
        for _attempt in range(2):
            try:
                ack = await self._post(headers, body)
            except NETWORK_EXCEPTIONS as e:
                if body is not None and body.read_failure is not None:
                    raise _source_failed(body.read_failure) from e
                if self._host_unreachable(e):
                    continue  # (back on the URL's host: the same packet there, once)
                raise network_error(e, self.file.remote_url) from e
            self.state.host_failing_since_ns = 0
            return ack
        raise AssertionError("unreachable")

    async def _post(self, headers: dict[str, str], body: RequestBody | None) -> Ack:
        async with self.requester.send(self.url, headers, method="BITS_POST", body=body) as resp:
            read = 0
            while read <= MAX_ACK_BODY_BYTES:
                chunk = await resp.content.read(16 * 1024)
                if not chunk:
                    break
                read += len(chunk)
            return Ack(resp.status, resp.reason or "", resp.headers)

    def _host_unreachable(self, e: BaseException) -> bool:
        """The BITS-Host-Id host could not be reached: the first time since it last answered
        is noted; once that is BITS-Host-Id-Fallback-Timeout ago, the session goes back to the
        URL's host (bits-spec §6.2) and True says to send the packet there.  A proxy that
        cannot be reached is not the host's fault."""
        state = self.state
        if state.host_id is None or not isinstance(e, HOST_UNREACHABLE) or isinstance(e, ProxyUnreachable):
            return False
        now = time.time_ns()
        if not state.host_failing_since_ns:
            state.host_failing_since_ns = now
        if state.host_fallback_s is None or now - state.host_failing_since_ns < state.host_fallback_s * 10**9:
            return False
        log.info(
            "the upload's BITS-Host-Id host %s was unreachable for %d s: back to the URL's host",
            state.host_id,
            state.host_fallback_s,
        )
        state.host_id, state.host_fallback_s, state.host_failing_since_ns = None, None, 0
        return True


class Uploader:
    """Runs upload jobs over the ``downloader``'s transport (its client, routes, TLS
    contexts, throttle, owners), and fetches replies with it."""

    def __init__(self, downloader: Downloader) -> None:
        self.downloader = downloader

    @property
    def transport(self) -> Transport:
        return self.downloader.transport

    async def upload(
        self,
        file: JobFile,
        state: UploadState,
        owner: Owner,
        progress: UploadProgress,
        priority: Priority = 2,
        options: RequestOptions | None = None,
        reply: Reply | None = None,
    ) -> None:
        """Bring the upload of ``file`` (the source ``local_file`` to ``remote_url``) to its
        end: every byte acknowledged, the reply fetched (``reply``: an upload-reply job),
        the session closed (``state.closed``)."""
        options = options or RequestOptions()
        session = _Session(Requester(self.transport, options, owner), file, state, options, priority)
        source = [-1]  # (opened at the first Fragment: a run that only closes needs no source)
        try:
            await self._run(session, source, owner, progress, reply)
        finally:
            if source[0] >= 0:
                os.close(source[0])

    async def _run(
        self,
        session: _Session,
        source: list[int],
        owner: Owner,
        progress: UploadProgress,
        reply: Reply | None,
    ) -> None:
        file, state = session.file, session.state
        total, offset = state.source_size, file.bytes_transferred  # (the file's is the caller's)
        sizer = FragmentSizer()
        pinged = connected = False
        new_sessions = stalled = unnamed = 0
        while True:
            packet = next_packet(state, offset, total, sizer.bytes, pinged=pinged, reply=reply is not None)
            if packet.kind is Kind.DONE:
                return
            if packet.kind is Kind.FETCH_REPLY:
                assert reply is not None
                await self._fetch_reply(session, owner, reply, progress)
                continue
            if packet.kind is Kind.FRAGMENT:
                if source[0] < 0:
                    source[0] = await self._open_source(file.local_file, owner, state)
                _check_source(source[0], state)
            url, began = session.url, time.monotonic()
            if packet.kind in _RESENT:
                outcome = await self._resent(session, packet)
            else:
                ack = await session.send(packet, source[0])
                if packet.kind is Kind.FRAGMENT:  # (rewritten while it was read: a mix was sent)
                    _check_source(source[0], state)
                outcome = interpret(packet, ack, url, reply=reply is not None)
            if not connected:
                connected = True
                progress.connected()
            if isinstance(outcome, Opened):
                state.session_id, state.host_id = outcome.session_id, outcome.host_id
                state.host_fallback_s, state.host_failing_since_ns = outcome.fallback_s, 0
                offset = 0
                progress.saved(0, urgent=True)
            elif isinstance(outcome, NewSession):
                new_sessions += 1
                if new_sessions > MAX_NEW_SESSIONS:
                    raise invalid_response("the server keeps forgetting the upload's sessions")
                _forget_session(state)
                offset = unnamed = 0
                progress.saved(0, urgent=True)
            elif isinstance(outcome, Shrink):
                if not sizer.refused(packet.length):
                    raise outcome.error
            elif packet.kind is Kind.PING:
                pinged = True
            elif packet.kind is Kind.CLOSE_SESSION:
                state.closed = True
                progress.saved(offset, urgent=True)
            elif packet.kind is Kind.FRAGMENT and outcome.offset is not None:
                stalled = stalled + 1 if outcome.offset <= packet.start else 0
                if stalled >= MAX_STALLED_ACKS:
                    raise invalid_response(f"the server keeps acknowledging {outcome.offset} bytes")
                offset = _acknowledged(packet, outcome, state, progress, reply=reply is not None)
                sizer.acknowledged(offset - packet.start, time.monotonic() - began)
                if offset == total and reply is not None and outcome.reply_url is None:
                    # (the server had every byte already, a 416 to a resumed run: the final
                    # byte again gets an Ack that names the reply; a server that still names
                    # none is wrong)
                    unnamed += 1
                    if unnamed > 1:
                        raise invalid_response("the last Fragment's Ack has no BITS-Reply-URL")

    @staticmethod
    async def _resent(session: _Session, packet: Packet) -> Advance | Shrink | NewSession | Opened:
        """Close-Session or Cancel-Session, sent again (a few times, a moment apart) while
        the server fails with a 5xx or the connection breaks, as Windows does
        (ack-for-close-session, ack-for-cancel-session; BG_E_SESSION_NOT_FOUND is not sent
        again: a new session, or nothing left to cancel); then the failure is raised
        (a Close-Session's is the job's, transient: its next run closes)."""
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                return interpret(packet, await session.send(packet), session.url, reply=False)
            except BitsError as e:
                if not e.transient or attempt == CLOSE_ATTEMPTS:
                    raise
            await asyncio.sleep(CLOSE_RESEND_DELAY_S * attempt)
        raise AssertionError("unreachable")

    async def _fetch_reply(
        self, session: _Session, owner: Owner, reply: Reply, progress: UploadProgress
    ) -> None:
        """GET the reply (BITS-Reply-URL) into its temporary file, as a download, from 0."""
        url = session.state.reply_url
        if not url:
            raise invalid_response("the upload has no BITS-Reply-URL to fetch the reply from")
        url = checked_reply_url(url)  # (a state stored by an older version too)
        reply_file = JobFile(url, reply.file_name, temp_name=reply.temp_name)
        options = reply_options(session.options, url, session.file.remote_url, session.url)
        fetched = await self.downloader.download(reply_file, owner, reply.progress, session.priority, options)
        session.state.reply_done = True
        progress.reply_done(fetched.size)

    async def _open_source(self, path: str, owner: Owner, state: UploadState) -> int:
        """The source, opened read-only with the owner's rights (off the loop), checked."""
        owners = self.transport.owners
        try:
            fd, _ = await opened_off_loop(lambda: (fs.open_as_owner(owners, path, owner.uid, owner.gid), 0))
        except BitsError as e:
            e.context = ErrorContext.LOCAL_FILE  # (the upload's source is the local file)
            raise
        try:
            _check_source(fd, state)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def cancel_session(
        self, file: JobFile, state: UploadState, owner: Owner, options: RequestOptions
    ) -> None:
        """Cancel-Session of the job's open session (the caller bounds it in time); a
        failure is raised (BitsError) for the caller to log."""
        if state.session_id is None:
            return
        session = _Session(Requester(self.transport, options, owner), file, state, options, 0)
        await self._resent(session, Packet(Kind.CANCEL_SESSION))


def reply_options(options: RequestOptions, reply_url: str, *upload_urls: str) -> RequestOptions:
    """The job's options for its reply's GET: its server credentials and custom headers go
    only to the origin the upload went to (its URL, or the BITS-Host-Id one), never to
    another host the server names (nor from https:// to http://); bits-spec does not say
    what Windows does.  Proxy credentials stay: they are the proxy's."""
    if any(redirects.same_origin(reply_url, url) for url in upload_urls):
        return options
    credentials = tuple(c for c in options.credentials if c.target != AuthTarget.SERVER)
    return dataclasses.replace(options, headers=(), credentials=credentials)


def _check_source(fd: int, state: UploadState) -> None:
    """The source is still as AddFile found it (size and mtime), else
    BG_E_LOCAL_FILE_CHANGED (context LOCAL_FILE): the server would get a mix."""
    with fs.translating("cannot read the upload's source"):
        st = os.fstat(fd)
    if st.st_size != state.source_size or st.st_mtime_ns != state.source_mtime_ns:
        raise LocalFileError(
            "the source file changed during the upload", hresult=HResult.BG_E_LOCAL_FILE_CHANGED
        )


def _acknowledged(
    packet: Packet, outcome: Advance, state: UploadState, progress: UploadProgress, *, reply: bool
) -> int:
    """A Fragment's Ack moved the offset: reported (at once after the last byte); the
    fragments are done at the last byte, once the reply is named (upload-reply)."""
    assert outcome.offset is not None
    last = outcome.offset == packet.total
    if last and (not reply or outcome.reply_url is not None):
        state.fragments_done = True
        state.reply_url = outcome.reply_url
    progress.saved(outcome.offset, urgent=last)
    return outcome.offset


def _source_failed(failure: OSError) -> BitsError:
    """The source could not be read to the end of a fragment: it shrank (changed), or the
    disk failed (context LOCAL_FILE either way)."""
    if isinstance(failure, FileShrank):
        return LocalFileError(
            "the source file shrank during the upload", hresult=HResult.BG_E_LOCAL_FILE_CHANGED
        )
    return fs.local_error(failure, "cannot read the upload's source")


def _forget_session(state: UploadState) -> None:
    """The server forgot the session: a new one, from byte 0."""
    state.session_id = state.host_id = state.reply_url = None
    state.host_fallback_s, state.host_failing_since_ns = None, 0
    state.fragments_done = state.reply_done = state.closed = False
