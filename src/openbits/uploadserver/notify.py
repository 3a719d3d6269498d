"""The server-application notification of upload-reply (bits-spec §6.4, [MC-BUP] §3.3).

When the last byte of an upload is in, the server POSTs to the directory's
``notification_url``: ``by-value`` sends the file as the body (the application's response
body is the reply); ``by-reference`` sends an empty body with ``BITS-Request-DataFile-Name``
(the uploaded file) and ``BITS-Response-DataFile-Name`` (where the application writes the
reply). Both send ``BITS-Original-Request-URL``. The application may answer
``BITS-Static-Response-URL`` (its own URL is the reply) and ``BITS-Copy-File-To-Destination``
(publish the upload at its URL too; else it is dropped at Close-Session). A status other
than 2xx (redirects are not followed), no answer, or a by-value reply over
``max_reply_bytes`` fails the fragment: 500 with ``BG_E_HTTP_ERROR_{status}`` and the
application's context (0x7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import aiohttp
from yarl import URL

from openbits.uploadserver.protocol import CONTEXT_REMOTE_APPLICATION, HTTP_ERROR_BASE, UploadFailure

_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class Notified:
    """What the application answered."""

    static_url: str | None
    copy_to_destination: bool


def notification_target(configured: str, own_url: URL) -> URL:
    """The URL to POST to: relative names resolve against the upload URL's directory, and
    the upload URL's query string is appended (bits-spec §6.4).

    ``own_url`` is the upload URL on the server's OWN origin (``public_base_url``, else the
    address the request came in on), never the client's Host header: a client must not choose
    where the server sends the upload (a relative ``notification_url`` would otherwise make
    the server POST the file to any host:port the client names).
    """
    target = own_url.join(URL(configured))
    if own_url.query_string:
        joined = "&".join(q for q in (target.query_string, own_url.query_string) if q)
        target = target.with_query(joined)
    return target


@dataclass(frozen=True, slots=True)
class Notification:
    """What the server tells the application, and where its reply goes."""

    kind: str  # by-value | by-reference
    url: URL
    original_url: str
    data_path: str  # the partial file (by-reference: its name is sent)
    data_fd: int | None  # by-value: the partial file, opened without following a symlink
    reply_path: str
    timeout_s: float
    max_reply_bytes: int


async def notify(http: aiohttp.ClientSession, n: Notification) -> Notified:
    """POST the notification; the reply lands in ``reply_path`` unless a static URL is given.

    Redirects are not followed (a 3xx is the application's failure) and a by-value reply
    longer than ``max_reply_bytes`` fails the notification. Every failure of the application
    is answered 500 with ``BG_E_HTTP_ERROR_{its status}`` (502 when it gave none) and context
    0x7: the client classifies it by that code (bits-spec §2.12), never as a fragment status.
    """
    headers = {"BITS-Original-Request-URL": n.original_url}
    timeout = aiohttp.ClientTimeout(total=n.timeout_s)
    try:
        if n.kind == "by-reference":
            headers["BITS-Request-DataFile-Name"] = n.data_path
            headers["BITS-Response-DataFile-Name"] = n.reply_path
            async with http.post(
                n.url, headers=headers, data=b"", timeout=timeout, allow_redirects=False
            ) as response:
                _check(response.status)
                await _drain(response, n.max_reply_bytes)
                return _answer(response)
        assert n.data_fd is not None
        with os.fdopen(os.dup(n.data_fd), "rb") as body:
            async with http.post(
                n.url, headers=headers, data=body, timeout=timeout, allow_redirects=False
            ) as response:
                _check(response.status)
                answer = _answer(response)
                if answer.static_url is None:
                    await _save_reply(response, n.reply_path, n.max_reply_bytes)
                else:
                    await _drain(response, n.max_reply_bytes)
                return answer
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise application_failure(502, f"server application: {type(e).__name__}") from None


def application_failure(status: int, message: str) -> UploadFailure:
    """The Ack of a failed notification: 500, ``BG_E_HTTP_ERROR_{status}``, context 0x7."""
    return UploadFailure(500, HTTP_ERROR_BASE + status, message, CONTEXT_REMOTE_APPLICATION)


def _check(status: int) -> None:
    if not 200 <= status < 300:
        raise application_failure(status, f"server application answered {status}")


def _answer(response: aiohttp.ClientResponse) -> Notified:
    return Notified(
        static_url=response.headers.get("BITS-Static-Response-URL") or None,
        copy_to_destination="BITS-Copy-File-To-Destination" in response.headers,
    )


async def _drain(response: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Read (and drop) a body the server has no use for, within the bound."""
    seen = 0
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        seen += len(chunk)
        if seen > max_bytes:
            raise application_failure(502, "server application: reply too long")


async def _save_reply(response: aiohttp.ClientResponse, reply_path: str, max_bytes: int) -> None:
    """The response body into the reply file (streamed, off the event loop; complete or absent)."""
    temp = reply_path + ".tmp"
    fd = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        written = 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise application_failure(502, "server application: reply too long")
            await asyncio.to_thread(_write_all, fd, chunk)
        await asyncio.to_thread(os.fdatasync, fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    await asyncio.to_thread(_replace_durably, temp, reply_path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace_durably(temp: str, path: str) -> None:
    os.replace(temp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
