"""Tests of ``FileDownload.small`` (through ``Downloader.download``): a job's small files taken
whole on the kept connection give exactly what ``whole`` gives (the same ``Progress`` calls,
file fields, temporary file and result), digests included, and an answer it does not take
goes to ``whole`` without being asked twice.

They run the daemon's ``Downloader`` with an ``H1Client`` against test_h1's scripted raw-TCP
server (:class:`ScriptServer`), which records every request head.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from openbits.errors import BitsError, DigestMismatch
from openbits.model import AuthScheme, AuthTarget, Credential, JobFile
from openbits.transfer.download import Downloader, Owner
from openbits.transfer.fetch import Fetched
from openbits.transfer.files import temp_name_for
from openbits.transfer.h1 import H1Client
from openbits.transfer.h1head import Target
from openbits.transfer.options import RequestOptions
from tests.unit import test_h1
from tests.unit.test_h1 import Peer, Script, ScriptServer, resp, serving

# test_h1's fixture, used here by name
scripted = test_h1.scripted

Start = Callable[[Script], Awaitable[ScriptServer]]
BODY = b"the same small body " * 100
HEADERS = (
    'ETag: "v1"',
    "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT",
    "Accept-Ranges: bytes",
    "Set-Cookie: session=secret",
    "X-Extra: kept",
)


class Calls:
    """A ``Progress`` that records every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def connected(self) -> None:
        self.calls.append(("connected", ()))

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        self.calls.append(("begin", (total, etag, last_modified)))

    def checkpoint(self, offset: int) -> None:
        self.calls.append(("checkpoint", (offset,)))

    def redirected(self, url: str) -> None:
        self.calls.append(("redirected", (url,)))

    def responded(self, range_support: bool | None, headers: str) -> None:
        self.calls.append(("responded", (range_support, headers)))


@pytest.fixture
async def h1() -> Any:
    client = H1Client(connect_timeout_s=3, read_timeout_s=3, default_headers={"User-Agent": "t"})
    yield client
    await client.close()


def job_files(base: str, tmp_path: Path, count: int) -> list[JobFile]:
    return [
        JobFile(f"{base}/f{i}", str(tmp_path / f"f{i}"), temp_name=temp_name_for("job", i))
        for i in range(count)
    ]


async def download_all(
    h1: H1Client, files: list[JobFile], options: RequestOptions | None = None
) -> list[tuple[Calls, Fetched | BaseException]]:
    """Each file in turn, the rest ahead of it, as a job's task does (``defer_sync``)."""
    downloader = Downloader(h1)
    owner = Owner(os.getuid(), os.getgid())
    out: list[tuple[Calls, Fetched | BaseException]] = []
    for i, f in enumerate(files):
        calls = Calls()
        try:
            fetched: Fetched | BaseException = await downloader.download(
                f, owner, calls, 2, options, defer_sync=True, upcoming=files[i + 1 :]
            )
        except BitsError as e:
            fetched = e
        out.append((calls, fetched))
    return out


def asked(server: ScriptServer) -> list[str]:
    return [req.path for peer in server.peers for req in peer.heads]


async def test_files_taken_whole_give_what_whole_gives(scripted: Start, h1: H1Client, tmp_path: Path) -> None:
    server = await scripted(serving({f"/f{i}": resp(BODY, *HEADERS) for i in range(5)}))
    files = job_files(server.url, tmp_path, 5)
    results = await download_all(h1, files)
    assert h1.small_answers == 4  # every file but the first (no connection open yet)
    first_calls, first = results[0]
    assert first == Fetched(len(BODY), durable=False)
    assert [name for name, _ in first_calls.calls] == ["responded", "begin", "connected"]
    assert "secret" not in first_calls.calls[0][1][1]
    for (calls, fetched), f in zip(results, files, strict=True):
        assert calls.calls == first_calls.calls
        assert fetched == first
        assert f.temp_path is not None
        assert Path(f.temp_path).read_bytes() == BODY
        assert stat.S_IMODE(os.stat(f.temp_path).st_mode) == 0o600
    assert asked(server) == [f"/f{i}" for i in range(5)]
    assert len(server.peers) == 1


async def test_an_empty_body_is_taken_as_whole_takes_it(
    scripted: Start, h1: H1Client, tmp_path: Path
) -> None:
    server = await scripted(serving({f"/f{i}": resp(b"", 'ETag: "e"') for i in range(3)}))
    results = await download_all(h1, job_files(server.url, tmp_path, 3))
    assert h1.small_answers == 2
    assert [r[1] for r in results] == [Fetched(0)] * 3  # (as whole: nothing to sync)
    assert results[1][0].calls == results[0][0].calls


def repr_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def test_digests_are_checked_on_files_taken_whole(
    scripted: Start, h1: H1Client, tmp_path: Path
) -> None:
    wrong = repr_digest(b"other bytes")
    routes = {
        "/f0": resp(BODY),
        "/f1": resp(BODY, f"Repr-Digest: {repr_digest(BODY)}"),
        "/f2": resp(BODY, f"Repr-Digest: {wrong}"),  # the server's own digest is wrong
        "/f3": resp(BODY),  # the job expects another digest
        "/f4": resp(BODY),  # the job expects this one
    }
    server = await scripted(serving(routes))
    files = job_files(server.url, tmp_path, 5)
    files[3].digest = wrong
    files[4].digest = repr_digest(BODY)
    results = await download_all(h1, files)
    assert h1.small_answers == 4
    assert [isinstance(r[1], DigestMismatch) for r in results] == [False, False, True, True, False]
    for i in (2, 3):  # never kept: the temporary file is gone, the file restarts from byte 0
        path = files[i].temp_path
        assert path is not None
        assert not os.path.exists(path)
        assert results[i][0].calls[-1] == ("begin", (None, None, None))
    assert files[4].temp_path is not None
    assert Path(files[4].temp_path).read_bytes() == BODY


async def test_a_redirect_goes_to_whole_and_is_asked_once(
    scripted: Start, h1: H1Client, tmp_path: Path
) -> None:
    routes = {f"/f{i}": resp(BODY) for i in range(4)}
    routes["/f2"] = resp(b"", "Location: /moved", status="302 Found")
    routes["/moved"] = resp(b"moved body")
    server = await scripted(serving(routes))
    files = job_files(server.url, tmp_path, 4)
    results = await download_all(h1, files)
    assert h1.small_answers == 2  # /f1 and /f3
    assert files[2].temp_path is not None
    assert Path(files[2].temp_path).read_bytes() == b"moved body"
    assert results[2][1] == Fetched(len(b"moved body"), durable=False)
    assert sorted(asked(server)) == sorted(["/f0", "/f1", "/f2", "/moved", "/f3"])


async def test_a_job_with_credentials_never_takes_answers_whole(
    scripted: Start, h1: H1Client, tmp_path: Path
) -> None:
    server = await scripted(serving({f"/f{i}": resp(BODY) for i in range(3)}))
    credential = Credential(AuthTarget.SERVER, AuthScheme.BASIC, "user", None)
    options = RequestOptions(job_id="job", credentials=(credential,))
    await download_all(h1, job_files(server.url, tmp_path, 3), options)
    assert h1.small_answers == 0


async def test_a_body_cut_short_fails_after_the_same_calls_as_whole(
    scripted: Start, h1: H1Client, tmp_path: Path
) -> None:
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "v"\r\n\r\n' + b"x" * 100

    async def script(peer: Peer) -> None:
        req = await peer.request()  # the first file: whole's (no connection was open)
        assert req is not None
        await peer.answer(resp(BODY))
        await peer.request()  # the second: cut short, then the connection closes
        await peer.answer(cut)
        await peer.close()

    async def first_cut(peer: Peer) -> None:
        await peer.request()
        await peer.answer(cut)
        await peer.close()

    server = await scripted(script)
    files = job_files(server.url, tmp_path, 2)
    results = await download_all(h1, files[:1]) + await download_all(h1, files[1:])
    assert h1.small_answers == 1  # (the second file's answer was taken; its body failed)
    fast_calls, fast_error = results[1]
    assert isinstance(fast_error, BitsError)
    # the general path on the same answer, for comparison
    other = await scripted(first_cut)
    (tmp_path / "general").mkdir()
    general = await download_all(h1, job_files(other.url, tmp_path / "general", 1))
    general_calls, general_error = general[0]
    assert isinstance(general_error, BitsError)
    assert fast_calls.calls == general_calls.calls
    assert [name for name, _ in fast_calls.calls] == ["responded", "begin", "connected"]
    assert type(fast_error) is type(general_error)
    assert fast_error.hresult == general_error.hresult
    assert not h1.warm(Target(server.url + "/f1").key)
