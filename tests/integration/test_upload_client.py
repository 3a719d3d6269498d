"""The upload client (``transfer/upload.Uploader`` over h1) against the strict in-process
BITS server of tests/support/bitsserver.py, with its faults: resets, stalls, 416s, 413s,
forgotten sessions, wrong offsets; the source changed under the upload; upload-reply."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from openbits.errors import BitsError, HResult
from openbits.model import AuthScheme, AuthTarget, Credential, ErrorContext, JobFile, Secret, UploadState
from openbits.transfer import files as fs
from openbits.transfer.download import Owner, RequestOptions
from openbits.transfer.throttle import Throttle
from openbits.transfer.upload import Reply, Uploader, reply_options
from openbits.transfer.uploadflow import FRAGMENT_MIN_BYTES
from tests.support.bitsserver import BitsServer, UploadRecorder, bits_server, uploader_client
from tests.support.rawserver import RecordingProgress

MiB = 1024 * 1024
OWNER = Owner(os.geteuid(), os.getegid())


@pytest.fixture
async def uploader() -> AsyncIterator[Uploader]:
    async with uploader_client(read_timeout_s=2) as u:
        yield u


@pytest.fixture
async def server() -> AsyncIterator[BitsServer]:
    async with bits_server() as s:
        yield s


def source(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[Path, bytes, UploadState]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    st = path.stat()
    return path, data, UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)


async def run(
    uploader: Uploader, url: str, path: Path, state: UploadState, file: JobFile | None = None, **kw: object
) -> tuple[JobFile, UploadRecorder]:
    file = file or JobFile(url, str(path), bytes_total=state.source_size)
    saves = UploadRecorder(file)
    await uploader.upload(file, state, OWNER, saves, 2, RequestOptions(job_id="j"), **kw)  # type: ignore[arg-type]
    return file, saves


async def test_an_upload_goes_ping_create_fragments_close(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 3 * MiB + 123)
    file, saves = await run(uploader, f"{server.url}/up/a.bin", path, state)
    assert server.uploads["/up/a.bin"] == data
    kinds = [k for k, _ in server.packets]
    assert kinds[:2] == ["ping", "create-session"] and kinds[-1] == "close-session"
    assert set(kinds[2:-1]) == {"fragment"}
    assert state.closed and state.fragments_done and file.bytes_transferred == len(data)
    assert server.bytes_received == len(data) and server.bytes_resent == 0
    fragments = [h for k, h in server.packets if k == "fragment"]
    named = [h for k, h in server.packets if k in ("create-session", "fragment", "close-session")]
    assert all(h["Content-Name"] == "src.bin" for h in named)  # (as Windows names its file)
    assert all("Content-Name" not in h for k, h in server.packets if k == "ping")
    assert fragments[0]["Content-Range"] == f"bytes 0-{MiB - 1}/{len(data)}"
    assert saves.offsets[-1] == (len(data), True) and saves.connected_count == 1


async def test_an_upload_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # (the client's contexts trust it)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    async with bits_server(BitsServer(), tls) as server, uploader_client() as uploader:
        assert server.url.startswith("https://")
        path, data, state = source(tmp_path, 2 * MiB + 1)
        server.inject("fragment", "ok")
        server.inject("fragment", "416")
        await run(uploader, f"{server.url}/tls.bin", path, state)
        assert server.uploads["/tls.bin"] == data and server.bytes_resent == 0


async def test_an_empty_source_is_uploaded(uploader: Uploader, server: BitsServer, tmp_path: Path) -> None:
    path, _, state = source(tmp_path, 0)
    await run(uploader, f"{server.url}/e", path, state)
    assert server.uploads["/e"] == b"" and state.closed


async def test_an_opaque_session_id_and_host_id_are_honoured(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    server.session_ids.append("not a guid, opaque")
    server.host_id = "localhost"
    path, data, state = source(tmp_path, 1000)
    await run(uploader, f"{server.url}/h", path, state)
    assert server.uploads["/h"] == data
    later = [h for k, h in server.packets if k in ("fragment", "close-session")]
    assert all(h["BITS-Session-Id"] == "not a guid, opaque" for h in later)
    assert all(h["Host"].startswith("localhost:") for h in later)


@pytest.mark.parametrize("fallback", [None, "0"], ids=["never", "at-once"])
async def test_an_unreachable_host_id_falls_back_after_its_timeout(
    uploader: Uploader, server: BitsServer, tmp_path: Path, fallback: str | None
) -> None:
    """bits-spec §6.2: the BITS-Host-Id host unreachable for BITS-Host-Id-Fallback-Timeout
    seconds, the session's packets go back to the URL's host (no timeout: never)."""
    server.host_id, server.host_fallback = "host-id.invalid", fallback
    path, data, state = source(tmp_path, 1000)
    if fallback is None:
        with pytest.raises(BitsError) as e:
            await run(uploader, f"{server.url}/f", path, state)
        assert e.value.transient  # (retried later, still towards the Host-Id host)
        assert state.host_id == "host-id.invalid" and state.host_failing_since_ns > 0
        assert "/f" not in server.uploads
        return
    await run(uploader, f"{server.url}/f", path, state)
    assert server.uploads["/f"] == data
    assert state.host_id is None and state.host_failing_since_ns == 0
    kinds = [k for k, _ in server.packets]
    assert kinds.count("create-session") == 1  # (the same session, on the URL's host)


async def test_a_reset_fragment_is_resent_from_the_acknowledged_offset(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 3 * MiB)
    server.inject("fragment", "416")  # (first fragment refused: the client hears 0 and resends)
    file, _ = await run(uploader, f"{server.url}/r", path, state)
    assert server.uploads["/r"] == data
    assert server.bytes_resent == 0
    # a reset: the job fails (transient); the next run resumes in the same session
    path, data, state = source(tmp_path, 3 * MiB, "b.bin")
    server.inject("fragment", "ok")
    server.inject("fragment", "reset")  # (on a kept-alive connection: h1 sends it again once)
    server.inject("fragment", "reset")
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/s", path, state)
    assert e.value.transient
    session, offset = state.session_id, MiB
    file = JobFile(f"{server.url}/s", str(path), bytes_total=len(data), bytes_transferred=offset)
    await run(uploader, file.remote_url, path, state, file)
    assert state.session_id == session and server.uploads["/s"] == data
    assert server.bytes_resent == 0


async def test_a_stalled_answer_times_out_as_a_transient_error(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    server.stall_s = 4
    server.inject("fragment", "stall")
    path, _, state = source(tmp_path, 10)
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/t", path, state)
    assert e.value.hresult == HResult.BG_E_TIMEOUT and e.value.transient


async def test_the_server_behind_the_client_moves_the_offset_back(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 3 * MiB)
    server.inject("fragment", "ok")
    server.inject("fragment", "rewind", rewind_to=1000)
    await run(uploader, f"{server.url}/w", path, state)
    assert server.uploads["/w"] == data


async def test_a_client_behind_the_server_skips_ahead(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    """After a restart from an older checkpoint the server's 416 says where it is: the
    client goes on from there, sending no acknowledged byte twice beyond the one fragment."""
    path, data, state = source(tmp_path, 2 * MiB)
    await run(uploader, f"{server.url}/k", path, state)
    # same session, the client thinks the server has 0 bytes, the server has them all
    state.closed = state.fragments_done = False
    server.sessions[state.session_id or ""].closed = False
    file = JobFile(f"{server.url}/k", str(path), bytes_total=len(data), bytes_transferred=0)
    received = server.bytes_received
    await run(uploader, file.remote_url, path, state, file)
    assert server.uploads["/k"] == data
    assert server.bytes_received - received == MiB  # (the first fragment, refused by a 416)


async def test_a_server_that_keeps_forgetting_sessions_is_an_error(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, _, state = source(tmp_path, 10)
    for _ in range(5):
        server.inject("fragment", "forget")
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/ff", path, state)
    assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE
    assert server.count("create-session") == 4  # (the first, and three new ones)


async def test_a_server_whose_offset_never_moves_is_an_error(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, _, state = source(tmp_path, 10)
    for _ in range(6):
        server.inject("fragment", "416")
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/st", path, state)
    assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE
    assert server.count("fragment") == 4


async def test_413_shrinks_fragments(uploader: Uploader, tmp_path: Path) -> None:
    async with bits_server(BitsServer(max_fragment_bytes=100_000)) as server:
        path, data, state = source(tmp_path, 300_000)
        await run(uploader, f"{server.url}/m", path, state)
        assert server.uploads["/m"] == data
        assert server.count("fragment") > 3


async def test_413_at_the_smallest_fragment_is_the_servers_error(uploader: Uploader, tmp_path: Path) -> None:
    async with bits_server(BitsServer(max_fragment_bytes=FRAGMENT_MIN_BYTES - 1)) as server:
        path, _, state = source(tmp_path, 100_000)
        with pytest.raises(BitsError) as e:
            await run(uploader, f"{server.url}/m", path, state)
        assert e.value.hresult == HResult.BG_E_HTTP_ERROR_413 and not e.value.transient


async def test_a_forgotten_session_starts_again_from_zero(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 2 * MiB + 5)
    server.inject("fragment", "ok")
    server.inject("fragment", "forget")
    _, saves = await run(uploader, f"{server.url}/f", path, state)
    assert server.uploads["/f"] == data
    assert server.count("create-session") == 2
    assert (0, True) in saves.offsets[1:]


async def test_close_session_5xx_is_sent_again(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 10)
    server.inject("close-session", "500")
    await run(uploader, f"{server.url}/c1", path, state)
    assert state.closed and server.uploads["/c1"] == data
    assert server.count("close-session") == 2


async def test_close_session_failing_on_is_transient_and_closed_by_the_next_run(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, data, state = source(tmp_path, 10)
    for _ in range(3):
        server.inject("close-session", "500")
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/c", path, state)
    assert e.value.transient and e.value.hresult == 0x80004005
    assert e.value.context is ErrorContext.REMOTE_FILE
    assert state.fragments_done and not state.closed
    assert server.count("close-session") == 3
    received = server.bytes_received
    file = JobFile(f"{server.url}/c", str(path), bytes_transferred=10)
    await run(uploader, f"{server.url}/c", path, state, file)
    assert state.closed and server.uploads["/c"] == data and server.bytes_received == received


async def test_a_changed_source_is_local_file_changed(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, _, state = source(tmp_path, 10)
    path.write_bytes(b"0123456789AB")
    with pytest.raises(BitsError) as e:
        await run(uploader, f"{server.url}/x", path, state)
    assert e.value.hresult == HResult.BG_E_LOCAL_FILE_CHANGED
    assert e.value.context is ErrorContext.LOCAL_FILE and not e.value.transient
    assert server.count("fragment") == 0


async def test_upload_reply_fetches_the_reply_before_close(uploader: Uploader, tmp_path: Path) -> None:
    async with bits_server(BitsServer(reply=True)) as server:
        path, data, state = source(tmp_path, 5000)
        reply_name = str(tmp_path / "job.reply")
        temp = fs.reply_temp_name("job")
        progress = RecordingProgress()
        _, saves = await run(
            uploader, f"{server.url}/r", path, state, reply=Reply(reply_name, temp, progress)
        )
        expected = BitsServer.reply_of(data)
        assert (tmp_path / temp).read_bytes() == expected
        assert saves.reply_size == len(expected) and state.reply_done and state.closed
        assert state.reply_url == f"{server.url}/reply/{state.session_id}"


@pytest.mark.parametrize("older", [False, True])
async def test_upload_reply_resumed_behind_the_server_asks_for_the_reply_with_the_final_byte(
    uploader: Uploader, tmp_path: Path, older: bool
) -> None:
    """Review bug 3: every byte was in, but the run that heard the last Ack died before it
    was stored; the next run's 416 says "all of it" with no BITS-Reply-URL: the final byte
    again gets it.  ``older``: the state an older version stored (fragments done, no URL)."""
    async with bits_server(BitsServer(reply=True)) as server:
        path, data, state = source(tmp_path, 2 * MiB)
        reply = Reply(str(tmp_path / "job.reply"), fs.reply_temp_name("job"), RecordingProgress())
        await run(uploader, f"{server.url}/rr", path, state, reply=reply)
        state.closed = state.reply_done = False
        state.reply_url = None
        state.fragments_done = older
        server.sessions[state.session_id or ""].closed = False
        (tmp_path / reply.temp_name).unlink()
        file = JobFile(f"{server.url}/rr", str(path), bytes_total=len(data), bytes_transferred=0)
        before = len(server.packets)
        await run(uploader, file.remote_url, path, state, file, reply=reply)
        assert state.closed and state.reply_done
        assert (tmp_path / reply.temp_name).read_bytes() == BitsServer.reply_of(data)
        ranges = [h["Content-Range"] for k, h in server.packets[before:] if k == "fragment"]
        assert ranges[-1] == f"bytes {len(data) - 1}-{len(data) - 1}/{len(data)}"


async def test_an_upload_reply_server_that_names_no_reply_is_an_error(
    uploader: Uploader, tmp_path: Path
) -> None:
    async with bits_server(BitsServer(reply=True)) as server:
        server.name_reply = False
        path, _, state = source(tmp_path, 5000)
        reply = Reply(str(tmp_path / "job.reply"), fs.reply_temp_name("job"), RecordingProgress())
        with pytest.raises(BitsError) as e:
            await run(uploader, f"{server.url}/nr", path, state, reply=reply)
        assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE
        assert not state.fragments_done and server.count("fragment") == 2  # (the final byte asked again)


@pytest.mark.parametrize("same_origin", [True, False])
async def test_the_jobs_headers_go_to_a_reply_url_of_the_uploads_origin_only(
    uploader: Uploader, tmp_path: Path, same_origin: bool
) -> None:
    async with bits_server(BitsServer(reply=True)) as server:
        if not same_origin:  # (the same server under another name: another origin)
            server.reply_base = server.url.replace("127.0.0.1", "localhost")
        path, data, state = source(tmp_path, 5000)
        file = JobFile(f"{server.url}/ro", str(path), bytes_total=len(data))
        reply = Reply(str(tmp_path / "job.reply"), fs.reply_temp_name("job"), RecordingProgress())
        options = RequestOptions(job_id="j", headers=(("X-Job-Secret", "s3cret"),))
        await uploader.upload(file, state, OWNER, UploadRecorder(file), 2, options, reply)
        assert state.reply_done
        assert all(h.get("X-Job-Secret") == "s3cret" for _, h in server.packets)
        (get,) = server.gets
        assert ("X-Job-Secret" in get) is same_origin


def test_the_reply_options_keep_server_credentials_for_the_uploads_origin_only() -> None:
    server = Credential(AuthTarget.SERVER, AuthScheme.BASIC, "u", Secret("p"))
    proxy = Credential(AuthTarget.PROXY, AuthScheme.BASIC, "u", Secret("p"))
    options = RequestOptions(job_id="j", headers=(("X-A", "1"),), credentials=(server, proxy))
    upload, host_id = "https://a.example/up", "https://b.example/up"
    assert reply_options(options, "https://a.example/r", upload, host_id) is options
    assert reply_options(options, "https://b.example:443/r", upload, host_id) is options
    for elsewhere in ("http://a.example/r", "https://a.example:8443/r", "https://c.example/r"):
        other = reply_options(options, elsewhere, upload, host_id)
        assert other.headers == () and other.credentials == (proxy,)


async def test_cancel_session_5xx_is_sent_again(
    uploader: Uploader, server: BitsServer, tmp_path: Path
) -> None:
    path, _, state = source(tmp_path, 10)
    for _ in range(3):  # (the run ends with the session open)
        server.inject("close-session", "500")
    file = JobFile(f"{server.url}/cs", str(path), bytes_total=10)
    with pytest.raises(BitsError):
        await run(uploader, file.remote_url, path, state, file)
    server.inject("cancel-session", "500")
    await uploader.cancel_session(file, state, OWNER, RequestOptions(job_id="j"))
    assert server.count("cancel-session") == 2
    assert state.session_id not in server.sessions


async def test_a_throttled_upload_keeps_to_the_limit(uploader: Uploader, tmp_path: Path) -> None:
    throttle = uploader.transport.throttle
    assert isinstance(throttle, Throttle)
    throttle.set_limits(global_bps=None, per_priority={2: 400_000.0}, foreground_limited=False)
    async with bits_server() as server:
        path, data, state = source(tmp_path, 400_000)
        import time

        began = time.monotonic()
        await run(uploader, f"{server.url}/l", path, state)
        assert server.uploads["/l"] == data
        assert time.monotonic() - began > 0.5
