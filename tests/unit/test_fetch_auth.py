"""The download of a file with server credentials (fetch.FileDownload over h1), against the
scripted raw-TCP server of test_h1: credentials answer the file's own origin only, never one
a redirect leads to; the error of a 401 says why; connections are partitioned by job and
credentials."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import AuthScheme, AuthTarget, Credential, JobFile, Secret
from openbits.transfer.auth import basic_value
from openbits.transfer.download import Downloader, Owner, RequestOptions
from openbits.transfer.h1 import H1Client
from tests.support.rawserver import RecordingProgress
from tests.unit.test_h1 import HOST, WAIT, Peer, Script, ScriptServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
ASK = b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="r"\r\nContent-Length: 0\r\n\r\n'
BASIC = Credential(AuthTarget.SERVER, AuthScheme.BASIC, "alice", Secret("s3cret"))


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptServer]]]:
    servers: list[ScriptServer] = []

    async def start(script: Script) -> ScriptServer:
        server = ScriptServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
    errors = [e for server in servers for e in server.errors]
    if errors:
        raise errors[0]


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    h1 = H1Client(connect_timeout_s=WAIT, read_timeout_s=WAIT)
    yield Downloader(h1)
    await h1.close()


def asks_basic(peer_heads: list[str | None]) -> Script:
    """A server that asks for Basic and serves who answers it; records each Authorization."""

    async def script(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            value = req.header("Authorization")
            peer_heads.append(value)
            await peer.answer(OK if value == basic_value("alice", "s3cret") else ASK)

    return script


async def download(downloader: Downloader, url: str, tmp_path: Path, options: RequestOptions) -> None:
    file = JobFile(remote_url=url, local_file=str(tmp_path / "out.bin"), temp_name="BITfetchauth.tmp")
    await downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2, options)


async def test_credentials_do_not_follow_a_redirect_to_another_origin(
    scripted: Callable[[Script], Awaitable[ScriptServer]], downloader: Downloader, tmp_path: Path
) -> None:
    seen: list[str | None] = []
    other = await scripted(asks_basic(seen))

    moved = f"HTTP/1.1 302 Found\r\nLocation: http://{HOST}:{other.port}/f\r\nContent-Length: 0\r\n\r\n"

    async def redirect(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(moved.encode())

    origin = await scripted(redirect)
    options = RequestOptions(job_id="j", credentials=(BASIC,))
    with pytest.raises(BitsError) as caught:
        await download(downloader, f"http://{HOST}:{origin.port}/f", tmp_path, options)
    assert caught.value.hresult == HResult.BG_E_HTTP_ERROR_401
    assert seen == [None]  # asked, and never answered with the job's credentials


async def test_credentials_follow_a_redirect_within_the_origin(
    scripted: Callable[[Script], Awaitable[ScriptServer]], downloader: Downloader, tmp_path: Path
) -> None:
    seen: list[str | None] = []

    async def script(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            if req.path == "/old":
                await peer.answer(b"HTTP/1.1 301 Moved\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n")
            else:
                value = req.header("Authorization")
                seen.append(value)
                await peer.answer(OK if value == basic_value("alice", "s3cret") else ASK)

    srv = await scripted(script)
    await download(
        downloader, f"http://{HOST}:{srv.port}/old", tmp_path, RequestOptions(credentials=(BASIC,))
    )
    assert seen == [None, basic_value("alice", "s3cret")]


async def test_no_credential_for_the_offered_scheme_says_so(
    scripted: Callable[[Script], Awaitable[ScriptServer]], downloader: Downloader, tmp_path: Path
) -> None:
    srv = await scripted(asks_basic([]))
    digest = Credential(AuthTarget.SERVER, AuthScheme.DIGEST, "alice", Secret("s3cret"))
    with pytest.raises(BitsError) as caught:
        await download(
            downloader, f"http://{HOST}:{srv.port}/f", tmp_path, RequestOptions(credentials=(digest,))
        )
    assert caught.value.hresult == HResult.BG_E_HTTP_ERROR_401
    assert "offered (Basic)" in str(caught.value)


def test_partitions_name_the_job_and_its_credentials() -> None:
    assert RequestOptions(job_id="a").partition == ""
    a = RequestOptions(job_id="a", credentials=(BASIC,)).partition
    assert a.startswith("a/") and "s3cret" not in a
    assert a == RequestOptions(job_id="a", credentials=(BASIC,)).partition
    assert a != RequestOptions(job_id="b", credentials=(BASIC,)).partition
    other = Credential(AuthTarget.SERVER, AuthScheme.BASIC, "alice", Secret("other"))
    assert a != RequestOptions(job_id="a", credentials=(other,)).partition


class _ReportingProgress(RecordingProgress):
    """As the service's ``file_redirected`` does for ALLOW_REPORT: the redirect's target
    becomes the file's RemoteUrl at once (the same JobFile the download holds)."""

    def __init__(self, file: JobFile) -> None:
        super().__init__()
        self.file = file

    def redirected(self, url: str) -> None:
        self.file.remote_url = url


async def test_credentials_do_not_follow_a_reported_redirect_to_another_origin(
    scripted: Callable[[Script], Awaitable[ScriptServer]], downloader: Downloader, tmp_path: Path
) -> None:
    from openbits.model import SecurityFlags

    seen: list[str | None] = []
    other = await scripted(asks_basic(seen))
    moved = f"HTTP/1.1 302 Found\r\nLocation: http://{HOST}:{other.port}/f\r\nContent-Length: 0\r\n\r\n"

    async def redirect(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(moved.encode())

    origin = await scripted(redirect)
    file = JobFile(
        remote_url=f"http://{HOST}:{origin.port}/f",
        local_file=str(tmp_path / "out.bin"),
        temp_name="BITfetchauth.tmp",
    )
    options = RequestOptions(
        job_id="j", credentials=(BASIC,), security_flags=int(SecurityFlags.REDIRECT_POLICY_ALLOW_REPORT)
    )
    with pytest.raises(BitsError):
        await downloader.download(file, Owner(os.getuid(), os.getgid()), _ReportingProgress(file), 2, options)
    assert seen == [None]  # asked, and never answered with the job's credentials
