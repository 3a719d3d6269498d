"""The aiohttp application of the upload server: routes, Acks, lifecycle, the cleanup task.

``make_app(settings)`` is the whole server; ``make_subapp(settings)`` the same application
to mount under a prefix of another one (``parent.add_subapp("/uploads/", make_subapp(s))``).
Every path takes ``BITS_POST``; ``GET`` (and HEAD) serve only reply URLs
(``?bits-reply={SESSION}``); any other method → 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from openbits.lockfile import lock_exclusively
from openbits.uploadserver import protocol
from openbits.uploadserver.config import ServerSettings
from openbits.uploadserver.paths import Target, parse_target
from openbits.uploadserver.protocol import Packet, UploadFailure
from openbits.uploadserver.uploads import Uploads
from openbits.uploadserver.urls import request_urls

log = logging.getLogger("openbits.uploadserver")

UPLOADS = web.AppKey("uploads", Uploads)
SETTINGS = web.AppKey("upload_settings", ServerSettings)
_CHUNK_BYTES = 1 << 20
#: a fragment's connection reads this much at most at once (asyncio's transports: 256 KiB)
_FRAGMENT_RECV_BYTES = 512 * 1024
_REPLY_QUERY = "bits-reply"


def make_app(settings: ServerSettings) -> web.Application:
    """The upload server as an application of its own."""
    return make_subapp(settings)


def make_subapp(settings: ServerSettings) -> web.Application:
    """The upload server, mountable: its root fd, store and cleanup task live with the app."""
    _check_state_dir(settings)
    accept_extension_methods()
    app = web.Application()
    app[SETTINGS] = settings
    app.router.add_route("*", "/{tail:.*}", _handle)
    app.cleanup_ctx.append(_lifecycle)
    return app


def accept_extension_methods() -> None:
    """Let this process's aiohttp servers take ``BITS_POST``.

    aiohttp's C parser (llhttp) answers 400 to a method it does not know, ``BITS_POST``
    among them; its pure-Python parser takes any token. So the process serving uploads
    (and an application that mounts `make_subapp`) parses requests in Python: idempotent,
    and the one process-wide effect of building the application.
    """
    from aiohttp import http_parser, web_protocol

    setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)  # noqa: B010


def _check_state_dir(settings: ServerSettings) -> None:
    """The state directory must not be reachable by uploads (it would take them)."""
    root = os.path.realpath(settings.root)
    state = os.path.realpath(settings.state_dir)
    if state == root or state.startswith(root.rstrip("/") + "/"):
        raise ValueError("the state directory must not be inside the upload root")


class StateDirInUse(RuntimeError):
    """Another upload server holds the state directory (it would serve the same sessions)."""


def _lock_state_dir(state_dir: str) -> int:
    """One server per state directory: an exclusive flock held for the server's life (a
    server started while another finishes its last fragments must not take their sessions)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = lock_exclusively(os.path.join(state_dir, "upload-server.lock"))
    if fd is None:
        raise StateDirInUse(f"another upload server is using the state directory {state_dir}")
    return fd


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:  # (a start that fails half way closes what it opened)
        # (the lock before any session is read: no session is served by two servers)
        stack.callback(os.close, _lock_state_dir(settings.state_dir))
        root_fd = os.open(settings.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, root_fd)
        http = aiohttp.ClientSession(auto_decompress=False)
        stack.push_async_callback(http.close)
        uploads = Uploads(settings, root_fd, http)
        app[UPLOADS] = uploads
        cleaner = asyncio.create_task(_clean(uploads, settings))
        try:
            yield
        finally:
            cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleaner


async def _clean(uploads: Uploads, settings: ServerSettings) -> None:
    """Remove abandoned sessions, every quarter of the shortest timeout (at most every minute);
    first the partial files of damaged session records, if the start found any."""
    interval_s = settings.cleanup_interval_s or min(60.0, settings.shortest_timeout_s() / 4)
    if uploads.store.damaged:
        try:
            await asyncio.to_thread(uploads.remove_damaged_leftovers)
        except OSError as e:
            log.warning("removing the partial files of damaged session records failed: %s", e)
    while True:
        await asyncio.sleep(interval_s)
        try:
            uploads.expire(time.time())
        except OSError as e:  # a full or broken disk: try again next time
            log.warning("session cleanup failed: %s", e)


# -- the requests ----------------------------------------------------------------------------------


async def _handle(request: web.Request) -> web.StreamResponse:
    uploads = request.app[UPLOADS]
    if request.method in ("GET", "HEAD") and _REPLY_QUERY in request.query:
        return _reply(uploads, request.query[_REPLY_QUERY])
    if request.method != protocol.METHOD:
        return web.Response(status=405, headers={"Allow": protocol.METHOD})
    try:
        packet = protocol.packet_type(request.headers)
        if packet is Packet.PING:
            return _ack(200, protocol.ack())
        target = parse_target(_raw_tail(request))
        if packet is Packet.CREATE_SESSION:
            protocol.choose_protocol(request.headers)
            session = await uploads.create(target, _client(request), protocol.new_session_id)
            settings = request.app[SETTINGS].for_directory(target.parts)
            acked = protocol.create_session_ack(
                session.session_id, settings.host_id, settings.host_id_fallback_timeout_s
            )
            return _ack(200, acked)
        return await _in_session(uploads, packet, target, request)
    except UploadFailure as failure:
        if failure.status != 416:
            log.info("%s %s refused: %d %s", request.method, request.path, failure.status, failure)
        return _ack(failure.status, protocol.error_ack(failure))
    except OSError as e:
        log.warning("%s %s failed: %s", request.method, request.path, e)
        return _ack(500, protocol.error_ack(UploadFailure(500, 0x80004005, "server error")))  # E_FAIL


async def _in_session(uploads: Uploads, packet: Packet, target: Target, request: web.Request) -> web.Response:
    """Fragment, Close-Session and Cancel-Session: one request of a session at a time."""
    session = uploads.find(protocol.session_id(request.headers), target)
    uploads.preempt(session.session_id)  # its client gave up on a fragment still arriving
    async with uploads.store.lock(session.session_id):
        if packet is Packet.FRAGMENT:
            protocol.check_encoding(request.headers)
            rng = protocol.fragment_range(request.headers) or protocol.Range(0, -1, 0)
            _read_more_at_once(request)
            body = request.content.iter_any()  # (chunks as they came: no joining copy)
            urls = request_urls(request, request.app[SETTINGS])
            offset, reply_url = await uploads.fragment(session, rng, body, urls)
            return _ack(200, protocol.fragment_ack(offset, reply_url))
        if packet is Packet.CLOSE_SESSION:
            await uploads.close(session)
        else:
            await uploads.cancel(session)
        return _ack(200, protocol.ack())


def _read_more_at_once(request: web.Request) -> None:
    """Let the connection's transport take up to ``_FRAGMENT_RECV_BYTES`` per read.

    asyncio's socket transport reads 256 KiB at most (``max_size``), and each read costs a turn
    of the loop, the parser, the body stream and this server's write. Reads of 512 KiB halve
    those (the server's user CPU per GiB: ~0.28 -> ~0.19 s in bench_upload-like runs); 1 MiB
    saved little more, and a buffer that no longer fits the core's L2 cache (1 MiB here) may
    make the kernel's copy into the page cache slower. A hint only: a transport without the
    attribute keeps its own size."""
    transport = request.transport
    if transport is not None and 0 < getattr(transport, "max_size", 0) < _FRAGMENT_RECV_BYTES:
        with contextlib.suppress(AttributeError):  # (a transport whose attribute is read-only)
            setattr(transport, "max_size", _FRAGMENT_RECV_BYTES)  # noqa: B010


def _reply(uploads: Uploads, session_id: str) -> web.StreamResponse:
    path = uploads.reply_file(session_id.strip().upper())
    if path is None:
        return web.Response(status=404)
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def _ack(status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, headers=headers)


def _raw_tail(request: web.Request) -> str:
    """The still-encoded URL path below the application's mount point.

    aiohttp routes by the decoded path, so a mount prefix may arrive percent-encoded
    (``/%62its/`` for ``/bits/``): the prefix is cut by its number of segments, each checked
    to decode to the prefix's own, never by its spelling.
    """
    raw = request.rel_url.raw_path
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource else "/"
    prefix = canonical[: canonical.find("{")] if "{" in canonical else "/"
    depth = prefix.count("/")
    pieces = raw.split("/", depth)
    if len(pieces) <= depth or [unquote(p) for p in pieces[:depth]] != prefix.split("/")[:depth]:
        raise protocol.invalid("the path is not below the mount point")
    return pieces[depth]


def _client(request: web.Request) -> str:
    """The client's address (the proxy's X-Real-IP when trust_forwarded is set)."""
    if request.app[SETTINGS].trust_forwarded and request.headers.get("X-Real-IP"):
        return request.headers["X-Real-IP"].strip()
    return request.remote or ""
