"""The server-application notification of upload-reply (bits-spec §6.4, [MC-BUP] §3.3).

When the last byte of an upload is in, the server POSTs to the directory's
``notification_url``: ``by-value`` sends the file as the body (the application's response
body is the reply); ``by-reference`` sends an empty body with ``BITS-Request-DataFile-Name``
(the uploaded file) and ``BITS-Response-DataFile-Name`` (where the application writes the
reply). Both send ``BITS-Original-Request-URL``. The application may answer
``BITS-Static-Response-URL`` (its own URL is the reply) and ``BITS-Copy-File-To-Destination``
(publish the upload at its URL too; else it is dropped at Close-Session). A status other
than 2xx, or no answer, fails the fragment with the application's context (0x7).
"""

from __future__ import annotations

import asyncio
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


def notification_target(configured: str, request_url: URL) -> URL:
    """The URL to POST to: relative names resolve against the upload URL's directory, and
    the upload URL's query string is appended (bits-spec §6.4)."""
    target = request_url.join(URL(configured))
    if request_url.query_string:
        joined = "&".join(q for q in (target.query_string, request_url.query_string) if q)
        target = target.with_query(joined)
    return target


async def notify(
    http: aiohttp.ClientSession,
    kind: str,
    url: URL,
    original_url: str,
    data_path: str,
    reply_path: str,
    timeout_s: float,
) -> Notified:
    """POST the notification; the reply lands in ``reply_path`` unless a static URL is given."""
    headers = {"BITS-Original-Request-URL": original_url}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if kind == "by-reference":
            headers["BITS-Request-DataFile-Name"] = data_path
            headers["BITS-Response-DataFile-Name"] = reply_path
            async with http.post(url, headers=headers, data=b"", timeout=timeout) as response:
                _check(response.status)
                await response.read()
                return _answer(response)
        body = await asyncio.to_thread(open, data_path, "rb")
        with body:
            async with http.post(url, headers=headers, data=body, timeout=timeout) as response:
                _check(response.status)
                answer = _answer(response)
                if answer.static_url is None:
                    await _save_reply(response, reply_path)
                return answer
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise UploadFailure(
            502, HTTP_ERROR_BASE + 502, f"server application: {type(e).__name__}", CONTEXT_REMOTE_APPLICATION
        ) from None


def _check(status: int) -> None:
    if not 200 <= status < 300:
        answer = status if 400 <= status < 600 else 500
        raise UploadFailure(
            answer,
            HTTP_ERROR_BASE + status,
            f"server application answered {status}",
            CONTEXT_REMOTE_APPLICATION,
        )


def _answer(response: aiohttp.ClientResponse) -> Notified:
    return Notified(
        static_url=response.headers.get("BITS-Static-Response-URL") or None,
        copy_to_destination="BITS-Copy-File-To-Destination" in response.headers,
    )


async def _save_reply(response: aiohttp.ClientResponse, reply_path: str) -> None:
    """The response body into the reply file (streamed; complete or absent)."""
    temp = reply_path + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            os.write(fd, chunk)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(temp, reply_path)
