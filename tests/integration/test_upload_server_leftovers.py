"""What the upload server leaves behind, in-process: nothing of a damaged session record, no
per-session counters of ended sessions, and never a planted file published (review of issue 14).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_protocol

from openbits.uploadserver import ServerSettings, make_app
from openbits.uploadserver.app import UPLOADS
from tests.support.bitsupload import PROTOCOL
from tests.support.polling import eventually
from tests.support.process import free_ports

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def _restore_aiohttp_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the app switches this process's aiohttp to its Python parser: undo it after."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", web_protocol.HttpRequestParser)


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


async def _post(
    http: aiohttp.ClientSession, url: str, packet: str, body: bytes = b"", **headers: str
) -> aiohttp.ClientResponse:
    sent = {"BITS-Packet-Type": packet, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with http.request("BITS_POST", url, headers=sent, data=body) as response:
        await response.read()
        return response


async def _session(http: aiohttp.ClientSession, url: str) -> str:
    created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
    assert created.status == 200
    return created.headers["BITS-Session-Id"]


def _settings(tmp_path: Path) -> ServerSettings:
    (tmp_path / "root" / "in" / "deep").mkdir(parents=True, exist_ok=True)
    return ServerSettings.from_mapping(str(tmp_path / "root"), str(tmp_path / "state"), {})


async def test_the_partial_file_of_a_damaged_record_is_removed_after_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    port = free_ports(1)[0]
    runner = await _serve(make_app(settings), port)
    url = f"http://{HOST}:{port}/in/deep/doc.bin"
    async with aiohttp.ClientSession() as http:
        damaged, kept = await _session(http, url), await _session(http, f"http://{HOST}:{port}/in/other.bin")
        for session, target in ((damaged, url), (kept, f"http://{HOST}:{port}/in/other.bin")):
            part = await _post(
                http, target, "Fragment", b"abc", BITS_Session_Id=session, Content_Range="bytes 0-2/10"
            )
            assert part.status == 200
    await runner.cleanup()
    root = tmp_path / "root"
    assert len(list(root.rglob(".bits-*.part"))) == 2
    (tmp_path / "state" / "sessions" / f"{damaged}.json").write_text("{not json")
    runner = await _serve(make_app(settings), port)
    try:
        await eventually(lambda: not (tmp_path / "state" / "sessions" / f"{damaged}.json").exists())
        (left,) = root.rglob(".bits-*.part")
        assert left.parent == root / "in"  # the readable session's partial file stays
        assert (tmp_path / "state" / "sessions" / f"{kept}.json").exists()
    finally:
        await runner.cleanup()


async def test_ended_sessions_leave_no_per_session_counters(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    app = make_app(_settings(tmp_path))
    runner = await _serve(app, port)
    try:
        async with aiohttp.ClientSession() as http:
            for n, end in enumerate(("Cancel-Session", "Close-Session")):
                url = f"http://{HOST}:{port}/in/f{n}.bin"
                session = await _session(http, url)
                await _post(
                    http, url, "Fragment", b"abc", BITS_Session_Id=session, Content_Range="bytes 0-2/10"
                )
                gap = await _post(
                    http, url, "Fragment", b"z", BITS_Session_Id=session, Content_Range="bytes 9-9/10"
                )
                assert gap.status == 416
                counters = app[UPLOADS].counters
                assert counters.by_session_bytes and counters.by_session_416
                assert (await _post(http, url, end, BITS_Session_Id=session)).status == 200
                assert (counters.by_session_bytes, counters.by_session_416) == ({}, {}), end
    finally:
        await runner.cleanup()


async def test_close_session_never_publishes_a_symlink_planted_for_the_partial_file(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    runner = await _serve(make_app(_settings(tmp_path)), port)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root's secret")
    root = tmp_path / "root"
    try:
        url = f"http://{HOST}:{port}/in/doc.bin"
        async with aiohttp.ClientSession() as http:
            session = await _session(http, url)
            done = await _post(
                http, url, "Fragment", b"hello", BITS_Session_Id=session, Content_Range="bytes 0-4/5"
            )
            assert done.status == 200
            (partial,) = (root / "in").glob(".bits-*.part")
            partial.unlink()
            partial.symlink_to(secret)  # a local user with write access to the directory
            closed = await _post(http, url, "Close-Session", BITS_Session_Id=session)
        assert closed.status == 500
        assert not (root / "in" / "doc.bin").exists() and not (root / "in" / "doc.bin").is_symlink()
    finally:
        await runner.cleanup()
