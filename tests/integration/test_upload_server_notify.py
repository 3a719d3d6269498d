"""The server-application notification (upload-reply, bits-spec §6.4), in-process.

A small aiohttp application plays the server application on 127.0.0.1; the upload server runs
in the same event loop (`make_app`) so the application can fail on purpose. By value: the
upload is the POST's body and the response body the reply; by reference: file names in
headers; a failing application gives its status with context 0x7, and the last fragment sent
again asks it again; BITS-Static-Response-URL and BITS-Copy-File-To-Destination are obeyed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web, web_protocol

from openbits.uploadserver import ServerSettings, make_app
from tests.support.bitsupload import PROTOCOL
from tests.support.process import free_ports

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def _restore_aiohttp_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the app switches this process's aiohttp to its Python parser (for BITS_POST):
    put the C parser back for the tests that follow."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", web_protocol.HttpRequestParser)


class Application:
    """The server application: what it was sent, and how it answers."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.failures_left = 1

    async def by_value(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append({"headers": dict(request.headers), "body": body, "query": request.query_string})
        return web.Response(body=b"reply:" + hashlib.sha256(body).hexdigest().encode())

    async def by_reference(self, request: web.Request) -> web.Response:
        data = Path(request.headers["BITS-Request-DataFile-Name"]).read_bytes()
        self.calls.append({"headers": dict(request.headers), "body": data})
        Path(request.headers["BITS-Response-DataFile-Name"]).write_bytes(b"ref:" + data[::-1])
        return web.Response()

    async def flaky(self, request: web.Request) -> web.Response:
        await request.read()
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=500)
        return web.Response(body=b"second time lucky")

    async def refuse(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=413)  # the application's own limit

    async def redirect(self, request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound("/by-value")  # never followed: the body would go elsewhere

    async def big(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"x" * 5000)  # over the directory's max_reply_bytes

    async def static(self, request: web.Request) -> web.Response:
        await request.read()
        headers = {
            "BITS-Static-Response-URL": "http://127.0.0.1:9/static-reply",
            "BITS-Copy-File-To-Destination": "1",
        }
        return web.Response(headers=headers)


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Application]]:
    app_port, server_port = free_ports(2)
    application = Application()
    backend = web.Application()
    backend.router.add_post("/by-value", application.by_value)
    backend.router.add_post("/by-reference", application.by_reference)
    backend.router.add_post("/flaky", application.flaky)
    backend.router.add_post("/static", application.static)
    backend.router.add_post("/refuse", application.refuse)
    backend.router.add_post("/redirect", application.redirect)
    backend.router.add_post("/big", application.big)
    root = tmp_path / "root"
    for name in ("val", "ref", "flaky", "static", "refuse", "redirect", "big"):
        (root / name).mkdir(parents=True)
    base = f"http://{HOST}:{app_port}"
    directories = {
        "val": {"notification_type": "by-value", "notification_url": f"{base}/by-value"},
        "ref": {"notification_type": "by-reference", "notification_url": f"{base}/by-reference"},
        "flaky": {"notification_type": "by-value", "notification_url": f"{base}/flaky"},
        "static": {"notification_type": "by-value", "notification_url": f"{base}/static"},
        "refuse": {"notification_type": "by-value", "notification_url": f"{base}/refuse"},
        "redirect": {"notification_type": "by-value", "notification_url": f"{base}/redirect"},
        "big": {"notification_type": "by-value", "notification_url": f"{base}/big", "max_reply_bytes": 1000},
    }
    settings = ServerSettings.from_mapping(str(root), str(tmp_path / "state"), {"directories": directories})
    runners = [await _serve(backend, app_port), await _serve(make_app(settings), server_port)]
    yield f"http://{HOST}:{server_port}", root, application
    for runner in runners:
        await runner.cleanup()


async def _post(
    http: aiohttp.ClientSession, url: str, packet: str, body: bytes = b"", **headers: str
) -> aiohttp.ClientResponse:
    headers = {"BITS-Packet-Type": packet, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with http.request("BITS_POST", url, headers=headers, data=body) as response:
        await response.read()
        return response


async def _upload_until_last_ack(
    http: aiohttp.ClientSession, url: str, data: bytes
) -> tuple[str, aiohttp.ClientResponse]:
    created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
    session = created.headers["BITS-Session-Id"]
    half = len(data) // 2
    first = await _post(
        http,
        url,
        "Fragment",
        data[:half],
        BITS_Session_Id=session,
        Content_Range=f"bytes 0-{half - 1}/{len(data)}",
    )
    assert first.status == 200 and "BITS-Reply-URL" not in first.headers
    last = await _post(
        http,
        url,
        "Fragment",
        data[half:],
        BITS_Session_Id=session,
        Content_Range=f"bytes {half}-{len(data) - 1}/{len(data)}",
    )
    return session, last


async def test_by_value_reply_served_at_the_reply_url(setup: tuple[str, Path, Application]) -> None:
    base, root, application = setup
    data = os.urandom(300_000)
    async with aiohttp.ClientSession() as http:
        session, last = await _upload_until_last_ack(http, f"{base}/val/doc.bin?tenant=7", data)
        assert last.status == 200
        reply_url = last.headers["BITS-Reply-URL"]
        async with http.get(reply_url) as reply:
            assert reply.status == 200
            assert await reply.read() == b"reply:" + hashlib.sha256(data).hexdigest().encode()
        (call,) = application.calls
        assert call["body"] == data
        assert call["headers"]["BITS-Original-Request-URL"] == f"{base}/val/doc.bin?tenant=7"
        assert call["query"] == "tenant=7"  # the upload URL's query string is passed on
        assert (
            await _post(http, f"{base}/val/doc.bin?tenant=7", "Close-Session", BITS_Session_Id=session)
        ).status == 200
        async with http.get(reply_url) as gone:
            assert gone.status == 404  # Close-Session drops the reply
    assert not (root / "val" / "doc.bin").exists()  # the application kept it: no copy asked for
    assert list((root / "val").iterdir()) == []


async def test_by_reference_the_application_writes_the_reply(setup: tuple[str, Path, Application]) -> None:
    base, _root, application = setup
    data = b"0123456789" * 100
    async with aiohttp.ClientSession() as http:
        _session, last = await _upload_until_last_ack(http, f"{base}/ref/doc.bin", data)
        assert last.status == 200
        async with http.get(last.headers["BITS-Reply-URL"]) as reply:
            assert await reply.read() == b"ref:" + data[::-1]
    (call,) = application.calls
    assert call["body"] == data
    assert "BITS-Original-Request-URL" in call["headers"]


async def test_an_application_error_has_context_7_and_the_last_fragment_retries(
    setup: tuple[str, Path, Application],
) -> None:
    base, _root, _application = setup
    data = os.urandom(1000)
    url = f"{base}/flaky/doc.bin"
    async with aiohttp.ClientSession() as http:
        session, last = await _upload_until_last_ack(http, url, data)
        assert last.status == 500
        assert last.headers["BITS-Error-Code"] == "0x801901F4"
        assert last.headers["BITS-Error-Context"] == "0x7"
        again = await _post(
            http, url, "Fragment", data[500:], BITS_Session_Id=session, Content_Range="bytes 500-999/1000"
        )
        assert again.status == 200
        async with http.get(again.headers["BITS-Reply-URL"]) as reply:
            assert await reply.read() == b"second time lucky"


async def test_after_the_last_byte_a_fragment_ending_there_gets_the_same_reply_url(
    setup: tuple[str, Path, Application],
) -> None:
    """A client that lost the last Ack, or resumed from an older offset of its own, sends a
    fragment that ends at the last byte: the same 200 and BITS-Reply-URL, the application
    not asked again (the client's crash recovery relies on it)."""
    base, _root, application = setup
    data = os.urandom(1000)
    url = f"{base}/val/doc.bin"
    async with aiohttp.ClientSession() as http:
        session, last = await _upload_until_last_ack(http, url, data)
        assert last.status == 200
        reply_url = last.headers["BITS-Reply-URL"]
        for first in (999, 0, 10):
            again = await _post(
                http,
                url,
                "Fragment",
                data[first:],
                BITS_Session_Id=session,
                Content_Range=f"bytes {first}-999/1000",
            )
            assert (again.status, again.headers.get("BITS-Reply-URL")) == (200, reply_url), first
            assert again.headers["BITS-Received-Content-Range"] == "1000"
        not_the_end = await _post(
            http, url, "Fragment", data[:10], BITS_Session_Id=session, Content_Range="bytes 0-9/1000"
        )
        assert (not_the_end.status, not_the_end.headers["BITS-Received-Content-Range"]) == (416, "1000")
    assert len(application.calls) == 1


@pytest.mark.parametrize(
    ("directory", "code"),
    [("refuse", "0x8019019D"), ("redirect", "0x8019012E"), ("big", "0x801901F6")],
    ids=["413", "redirect-not-followed", "reply-over-max_reply_bytes"],
)
async def test_an_application_failure_is_500_with_its_code_and_context_7(
    setup: tuple[str, Path, Application], directory: str, code: str
) -> None:
    """Never the application's own status (a 413 would read as "fragment too long"): 500,
    BG_E_HTTP_ERROR_{its status} (502 for a reply too long), context 0x7; a redirect is the
    application's failure, not followed."""
    base, _root, application = setup
    async with aiohttp.ClientSession() as http:
        _session, last = await _upload_until_last_ack(http, f"{base}/{directory}/doc.bin", os.urandom(2000))
    assert last.status == 500
    assert (last.headers["BITS-Error-Code"], last.headers["BITS-Error-Context"]) == (code, "0x7")
    assert "BITS-Reply-URL" not in last.headers
    assert application.calls == []  # the redirect's target was never posted to


async def test_the_original_request_url_is_the_servers_own_not_the_clients_host(
    setup: tuple[str, Path, Application],
) -> None:
    base, _root, application = setup
    async with aiohttp.ClientSession() as http:
        created = await _post(
            http,
            f"{base}/val/doc.bin",
            "Create-Session",
            BITS_Supported_Protocols=PROTOCOL,
            Host="evil.example",
        )
        session = created.headers["BITS-Session-Id"]
        last = await _post(
            http,
            f"{base}/val/doc.bin",
            "Fragment",
            b"hello",
            BITS_Session_Id=session,
            Content_Range="bytes 0-4/5",
            Host="evil.example",
        )
    assert last.status == 200
    (call,) = application.calls
    assert call["headers"]["BITS-Original-Request-URL"] == f"{base}/val/doc.bin"
    # the reply URL is the client's own business: it goes back to the client only
    assert last.headers["BITS-Reply-URL"].startswith("http://evil.example/val/doc.bin?bits-reply=")


async def test_a_relative_notification_url_resolves_against_public_base_url(tmp_path: Path) -> None:
    app_port, server_port = free_ports(2)
    application = Application()
    backend = web.Application()
    backend.router.add_post("/{tail:.*}", application.by_value)
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    settings = ServerSettings.from_mapping(
        str(root),
        str(tmp_path / "state"),
        {
            "public_base_url": f"http://{HOST}:{app_port}",  # the application's port plays "us"
            "directories": {"in": {"notification_type": "by-value", "notification_url": "notify?x=1"}},
        },
    )
    runners = [await _serve(backend, app_port), await _serve(make_app(settings), server_port)]
    try:
        async with aiohttp.ClientSession() as http:
            _session, last = await _upload_until_last_ack(
                http, f"http://{HOST}:{server_port}/in/doc.bin?t=2", b"0123456789"
            )
        assert last.status == 200
        (call,) = application.calls
        assert call["query"] == "x=1&t=2"
        assert call["headers"]["BITS-Original-Request-URL"] == f"http://{HOST}:{app_port}/in/doc.bin?t=2"
        assert last.headers["BITS-Reply-URL"].startswith(f"http://{HOST}:{app_port}/in/doc.bin?")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_static_reply_url_and_copy_to_destination(setup: tuple[str, Path, Application]) -> None:
    base, root, _application = setup
    data = os.urandom(5000)
    url = f"{base}/static/doc.bin"
    async with aiohttp.ClientSession() as http:
        session, last = await _upload_until_last_ack(http, url, data)
        assert last.headers["BITS-Reply-URL"] == "http://127.0.0.1:9/static-reply"
        assert (await _post(http, url, "Close-Session", BITS_Session_Id=session)).status == 200
    assert (root / "static" / "doc.bin").read_bytes() == data


async def test_a_reply_survives_a_server_restart(tmp_path: Path) -> None:
    app_port, server_port = free_ports(2)
    application = Application()
    backend = web.Application()
    backend.router.add_post("/by-value", application.by_value)
    root = tmp_path / "root"
    root.mkdir()
    mapping = {"notification_type": "by-value", "notification_url": f"http://{HOST}:{app_port}/by-value"}
    settings = ServerSettings.from_mapping(str(root), str(tmp_path / "state"), mapping)
    backend_runner = await _serve(backend, app_port)
    server = await _serve(make_app(settings), server_port)
    data = os.urandom(70_000)
    url = f"http://{HOST}:{server_port}/doc.bin"
    try:
        async with aiohttp.ClientSession() as http:
            session, last = await _upload_until_last_ack(http, url, data)
            assert last.status == 200
            await server.cleanup()
            server = await _serve(make_app(settings), server_port)  # a new process would read the same
            async with http.get(last.headers["BITS-Reply-URL"]) as reply:
                assert await reply.read() == b"reply:" + hashlib.sha256(data).hexdigest().encode()
            again = await _post(
                http,
                url,
                "Fragment",
                data[35_000:],
                BITS_Session_Id=session,
                Content_Range="bytes 35000-69999/70000",
            )
            assert (again.status, again.headers["BITS-Reply-URL"]) == (200, last.headers["BITS-Reply-URL"])
            assert len(application.calls) == 1  # answered once: not asked again
            assert (await _post(http, url, "Close-Session", BITS_Session_Id=session)).status == 200
    finally:
        await server.cleanup()
        await backend_runner.cleanup()
