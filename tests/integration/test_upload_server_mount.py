"""The upload server mounted in another aiohttp application (`make_subapp`) under a prefix."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_protocol
from yarl import URL

from openbits.uploadserver import ServerSettings, make_subapp
from tests.support.bitsupload import PROTOCOL
from tests.support.process import free_ports


@pytest.fixture(autouse=True)
def _restore_aiohttp_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the app switches this process's aiohttp to its Python parser (for BITS_POST):
    put the C parser back for the tests that follow."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", web_protocol.HttpRequestParser)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def test_mounted_under_a_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    parent = web.Application()
    parent.router.add_get("/hello", _hello)
    parent.add_subapp("/bits/", make_subapp(ServerSettings.load(str(root), str(tmp_path / "state"))))
    port = free_ports(1)[0]
    runner = web.AppRunner(parent)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/hello") as hello:
                assert await hello.text() == "hello"
            url = f"{base}/bits/sub%20dir.bin"
            headers = {"BITS-Packet-Type": "create-session", "BITS-Supported-Protocols": PROTOCOL}
            async with http.request("BITS_POST", url, headers=headers) as created:
                assert created.status == 200
                session = created.headers["BITS-Session-Id"]
            for packet, body, extra in (
                ("FRAGMENT", b"mounted", {"Content-Range": "bytes 0-6/7"}),
                ("CLOSE-SESSION", b"", {}),
            ):
                headers = {"BITS-Packet-Type": packet, "BITS-Session-Id": session, **extra}
                async with http.request("BITS_POST", url, headers=headers, data=body) as answer:
                    assert answer.status == 200, await answer.read()
            traversal = {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL}
            async with http.request(
                "BITS_POST", URL(f"{base}/bits/%2e%2e/x", encoded=True), headers=traversal
            ) as refused:
                assert refused.status == 400
    finally:
        await runner.cleanup()
    assert (root / "sub dir.bin").read_bytes() == b"mounted"
