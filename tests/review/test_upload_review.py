"""Review of issue 14's upload code (helper R): each test shows one bug found in review.

They are marked ``xfail(strict=True)``: they fail today and must be turned into ordinary
tests by the fix (the strict mark then reports them as XPASS → failure, as a reminder).
The upload server runs in-process (``make_app``), its notification application too, on
127.0.0.1; the client is the real ``transfer.upload.Uploader``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_protocol

from openbits.errors import BitsError
from openbits.model import ErrorContext, JobFile, UploadState
from openbits.transfer import files as fs
from openbits.transfer.download import Owner, RequestOptions
from openbits.transfer.upload import Reply, Uploader
from openbits.uploadserver import ServerSettings, make_app
from tests.support.bitsserver import UploadRecorder, uploader_client
from tests.support.bitsupload import PROTOCOL
from tests.support.process import free_ports
from tests.support.rawserver import RecordingProgress

HOST = "127.0.0.1"
MiB = 1024 * 1024
OWNER = Owner(os.geteuid(), os.getegid())


@pytest.fixture(autouse=True)
def _restore_aiohttp_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the app switches this process's aiohttp to its Python parser: undo it after."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", web_protocol.HttpRequestParser)


class Application:
    """A server application (by value) that records the POSTs it gets."""

    def __init__(self) -> None:
        self.posts: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append(body)
        return web.Response(body=b"reply of " + str(len(body)).encode())


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


@pytest.fixture
async def uploader() -> AsyncIterator[Uploader]:
    async with uploader_client(read_timeout_s=5) as u:
        yield u


# -- the server ----------------------------------------------------------------------------------


async def test_a_relative_notification_url_never_goes_to_the_clients_host_header(tmp_path: Path) -> None:
    server_port, app_port, attacker_port = free_ports(3)
    real, attacker = Application(), Application()
    runners = []
    for application, port in ((real, app_port), (attacker, attacker_port)):
        backend = web.Application()
        backend.router.add_post("/{tail:.*}", application.handle)
        runners.append(await _serve(backend, port))
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    # the administrator's relative URL: "the application beside the upload" (bits-spec §6.4)
    try:
        settings = ServerSettings.from_mapping(
            str(root),
            str(tmp_path / "state"),
            {"directories": {"in": {"notification_type": "by-value", "notification_url": "notify"}}},
        )
    except ValueError:  # a fix may refuse relative notification URLs outright
        for runner in runners:
            await runner.cleanup()
        return
    runners.append(await _serve(make_app(settings), server_port))
    try:
        url = f"http://{HOST}:{server_port}/in/doc.bin"
        evil_host = f"{HOST}:{attacker_port}"  # what any client may send as its Host
        async with aiohttp.ClientSession() as http:
            created = await _post(
                http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL, Host=evil_host
            )
            session = created.headers["BITS-Session-Id"]
            await _post(
                http,
                url,
                "Fragment",
                b"secret",
                BITS_Session_Id=session,
                Content_Range="bytes 0-5/6",
                Host=evil_host,
            )
        assert attacker.posts == []  # the upload never leaves for the client's chosen host
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


# -- the client ----------------------------------------------------------------------------------


async def test_upload_reply_resumed_behind_the_server_still_fetches_the_reply(
    uploader: Uploader, tmp_path: Path
) -> None:
    server_port, app_port = free_ports(2)
    application = Application()
    backend = web.Application(client_max_size=16 * MiB)
    backend.router.add_post("/notify", application.handle)
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    settings = ServerSettings.from_mapping(
        str(root),
        str(tmp_path / "state"),
        {
            "directories": {
                "in": {
                    "notification_type": "by-value",
                    "notification_url": f"http://{HOST}:{app_port}/notify",
                }
            }
        },
    )
    runners = [await _serve(backend, app_port), await _serve(make_app(settings), server_port)]
    try:
        data = os.urandom(3 * MiB // 2)  # longer than the first fragment the client sends
        path = tmp_path / "src.bin"
        path.write_bytes(data)
        st = path.stat()
        url = f"http://{HOST}:{server_port}/in/doc.bin"
        # a previous run: the session made and every byte acknowledged by the server, but the
        # daemon was killed before its (once a second) checkpoint stored the last offsets
        async with aiohttp.ClientSession() as http:
            created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
            session = created.headers["BITS-Session-Id"]
            half = len(data) // 2
            for first, last in ((0, half - 1), (half, len(data) - 1)):
                acked = await _post(
                    http,
                    url,
                    "Fragment",
                    data[first : last + 1],
                    BITS_Session_Id=session,
                    Content_Range=f"bytes {first}-{last}/{len(data)}",
                )
                assert acked.status == 200
        state = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns, session_id=session)
        file = JobFile(url, str(path), bytes_total=len(data))  # stored offset: 0
        reply_name = str(tmp_path / "job.reply")
        temp = fs.reply_temp_name("job")
        reply = Reply(reply_name, temp, RecordingProgress())
        await uploader.upload(file, state, OWNER, UploadRecorder(file), 2, RequestOptions(job_id="j"), reply)
        assert state.closed and state.reply_done
        assert (tmp_path / temp).read_bytes() == f"reply of {len(data)}".encode()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_an_applications_413_is_the_jobs_remote_application_error(
    uploader: Uploader, tmp_path: Path
) -> None:
    server_port, app_port = free_ports(2)

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=413)  # the application's own limit

    backend = web.Application(client_max_size=16 * MiB)
    backend.router.add_post("/notify", refuse)
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    notify = {"notification_type": "by-value", "notification_url": f"http://{HOST}:{app_port}/notify"}
    settings = ServerSettings.from_mapping(
        str(root), str(tmp_path / "state"), {"directories": {"in": notify}}
    )
    runners = [await _serve(backend, app_port), await _serve(make_app(settings), server_port)]
    try:
        data = os.urandom(100_000)
        path = tmp_path / "src.bin"
        path.write_bytes(data)
        st = path.stat()
        state = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
        file = JobFile(f"http://{HOST}:{server_port}/in/doc.bin", str(path), bytes_total=len(data))
        reply = Reply(str(tmp_path / "job.reply"), fs.reply_temp_name("job"), RecordingProgress())
        with pytest.raises(BitsError) as e:
            await uploader.upload(
                file, state, OWNER, UploadRecorder(file), 2, RequestOptions(job_id="j"), reply
            )
        assert e.value.context is ErrorContext.REMOTE_APPLICATION, e.value
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


# -- the service ---------------------------------------------------------------------------------


def test_set_reply_file_name_during_the_run_gets_the_reply_there(tmp_path: Path) -> None:
    from openbits.model import JobState, JobType
    from tests.support.bitsserver import BitsServer, threaded_bits_server
    from tests.support.daemon import Daemon, wait_until

    data = os.urandom(2 * MiB + 1)
    outbox, old_dir, new_dir = tmp_path / "outbox", tmp_path / "old", tmp_path / "new"
    for d in (outbox, old_dir, new_dir):
        d.mkdir()
    source = outbox / "doc.bin"
    source.write_bytes(data)
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        with threaded_bits_server(BitsServer(reply=True)) as server:
            server.fragment_delay_s = 1.0  # the first fragment is held: the job is running
            client = daemon.client
            job = client.create_job("up", job_type=int(JobType.UPLOAD_REPLY)).job_id
            client.add_file(job, f"{server.url}/in/doc.bin", str(source))
            client.set_reply_file_name(job, str(old_dir / "reply.txt"))
            client.resume(job)
            wait_until(lambda: server.holding is not None, 30, "the first fragment held")
            # accepted while the job runs (as SetRemoteName): the run stops, the next one
            # fetches the reply beside the new name
            client.set_reply_file_name(job, str(new_dir / "reply.txt"))
            server.fragment_delay_s = 0
            daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
            expected = BitsServer.reply_of(data)
            assert client.get_reply_data(job) == expected
            client.complete(job)
            daemon.wait_state(job, JobState.ACKNOWLEDGED)
            assert (new_dir / "reply.txt").read_bytes() == expected
            assert list(old_dir.iterdir()) == []  # no reply (or its temporary file) left behind
    finally:
        daemon.stop()


async def test_a_source_rewritten_during_its_only_fragment_is_local_file_changed(
    uploader: Uploader, tmp_path: Path
) -> None:
    import asyncio
    import time

    from openbits.errors import HResult
    from openbits.transfer.throttle import Throttle

    throttle = uploader.transport.throttle
    assert isinstance(throttle, Throttle)
    throttle.set_limits(global_bps=None, per_priority={2: 200_000.0}, foreground_limited=False)
    server_port = free_ports(1)[0]
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    settings = ServerSettings.from_mapping(str(root), str(tmp_path / "state"), {})
    runner = await _serve(make_app(settings), server_port)
    try:
        data = os.urandom(600_000)  # one fragment, sent in about 3 s
        path = tmp_path / "src.bin"
        path.write_bytes(data)
        st = path.stat()
        state = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
        file = JobFile(f"http://{HOST}:{server_port}/in/doc.bin", str(path), bytes_total=len(data))
        task = asyncio.create_task(
            uploader.upload(file, state, OWNER, UploadRecorder(file), 2, RequestOptions(job_id="j"))
        )
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size > 0 for p in (root / "in").glob(".bits-*.part")):
            assert time.monotonic() < deadline and not task.done(), "the fragment never started"
            await asyncio.sleep(0.01)
        with path.open("r+b") as f:  # the source rewritten in place: same size, a new mtime
            f.seek(500_000)
            f.write(bytes(100_000))
        with pytest.raises(BitsError) as e:
            await asyncio.wait_for(task, 30)
        assert e.value.hresult == HResult.BG_E_LOCAL_FILE_CHANGED
    finally:
        await runner.cleanup()


async def test_a_percent_encoded_mount_prefix_maps_to_the_same_directory(tmp_path: Path) -> None:
    from yarl import URL

    from openbits.uploadserver import make_subapp

    port = free_ports(1)[0]
    root = tmp_path / "root"
    (root / "private").mkdir(parents=True)
    (root / "bits" / "private").mkdir(parents=True)  # an ordinary directory that happens to be named so
    settings = ServerSettings.from_mapping(
        str(root), str(tmp_path / "state"), {"directories": {"private": {"allow_uploads": False}}}
    )
    parent = web.Application()
    parent.add_subapp("/bits/", make_subapp(settings))
    runner = await _serve(parent, port)
    try:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for path in ("/bits/private/x.bin", "/%62its/private/x.bin"):
                url = URL(f"http://{HOST}:{port}{path}", encoded=True)
                headers = {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL}
                async with http.request("BITS_POST", url, headers=headers) as response:
                    statuses.append(response.status)
        # both name ROOT/private/x.bin, where uploads are off (or the encoded one is refused)
        assert statuses[0] == 501 and statuses[1] in (400, 404, 501), statuses
    finally:
        await runner.cleanup()


async def test_a_source_truncated_during_a_fragment_is_local_file_changed(
    uploader: Uploader, tmp_path: Path
) -> None:
    import asyncio
    import time

    from openbits.errors import HResult
    from openbits.transfer.throttle import Throttle

    throttle = uploader.transport.throttle
    assert isinstance(throttle, Throttle)
    throttle.set_limits(global_bps=None, per_priority={2: 200_000.0}, foreground_limited=False)
    server_port = free_ports(1)[0]
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    runner = await _serve(
        make_app(ServerSettings.from_mapping(str(root), str(tmp_path / "state"), {})), server_port
    )
    try:
        data = os.urandom(600_000)
        path = tmp_path / "src.bin"
        path.write_bytes(data)
        st = path.stat()
        state = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
        file = JobFile(f"http://{HOST}:{server_port}/in/doc.bin", str(path), bytes_total=len(data))
        task = asyncio.create_task(
            uploader.upload(file, state, OWNER, UploadRecorder(file), 2, RequestOptions(job_id="j"))
        )
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size > 0 for p in (root / "in").glob(".bits-*.part")):
            assert time.monotonic() < deadline and not task.done(), "the fragment never started"
            await asyncio.sleep(0.01)
        os.truncate(path, 1000)
        with pytest.raises(BitsError) as e:
            await asyncio.wait_for(task, 30)
        assert e.value.hresult == HResult.BG_E_LOCAL_FILE_CHANGED, e.value
        assert e.value.context is ErrorContext.LOCAL_FILE
    finally:
        await runner.cleanup()


async def test_a_stalled_fragment_does_not_block_its_sessions_next_request(tmp_path: Path) -> None:
    import asyncio

    port = free_ports(1)[0]
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    runner = await _serve(make_app(ServerSettings.from_mapping(str(root), str(tmp_path / "state"), {})), port)
    writer = None
    try:
        url = f"http://{HOST}:{port}/in/doc.bin"
        data = os.urandom(1000)
        async with aiohttp.ClientSession() as http:
            created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
            session = created.headers["BITS-Session-Id"]
            # the first attempt: its head and a tenth of its body, then silence (never closed)
            _reader, writer = await asyncio.open_connection(HOST, port)
            head = (
                "BITS_POST /in/doc.bin HTTP/1.1\r\n"
                f"Host: {HOST}:{port}\r\nBITS-Packet-Type: Fragment\r\nBITS-Session-Id: {session}\r\n"
                "Content-Range: bytes 0-999/1000\r\nContent-Length: 1000\r\n\r\n"
            )
            writer.write(head.encode() + data[:100])
            await writer.drain()
            deadline = asyncio.get_running_loop().time() + 10
            while not any(p.stat().st_size > 0 for p in (root / "in").glob(".bits-*.part")):
                assert asyncio.get_running_loop().time() < deadline, "the stalled body never arrived"
                await asyncio.sleep(0.01)
            # the client gave up on it and sends the fragment again on a new connection
            resend = _post(
                http, url, "Fragment", data, BITS_Session_Id=session, Content_Range="bytes 0-999/1000"
            )
            answer = await asyncio.wait_for(resend, 10)
            assert answer.status == 200
            # the abandoned attempt left nothing of its own: the file is the resend's bytes
            closed = await _post(http, url, "Close-Session", BITS_Session_Id=session)
            assert closed.status == 200
            assert (root / "in" / "doc.bin").read_bytes() == data
    finally:
        if writer is not None:
            writer.close()
        await runner.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create two real Unix users")
def test_take_ownership_of_a_transferred_upload_reply_hands_the_reply_over(tmp_path: Path) -> None:
    import base64

    from openbits import _wire as wire
    from openbits.model import JobState
    from tests.support.bitsserver import BitsServer, threaded_bits_server
    from tests.support.daemon import CLASS, wait_until
    from tests.support.users import as_user, open_site, run

    with open_site(tmp_path / "state") as site, threaded_bits_server(BitsServer(reply=True)) as server:
        alice, bob = site.alice, site.bob
        shared = site.scratch / "shared"
        shared.mkdir()
        shared.chmod(0o777)  # both may create files here (no sticky bit)
        data = os.urandom(5000)

        def write_source() -> str:
            source = shared / "doc.bin"
            source.write_bytes(data)
            source.chmod(0o644)
            return str(source)

        source = as_user(alice, write_source)
        body = {"Type": 2, "RemoteUrl": f"{server.url}/in/doc.bin", "LocalFile": source}
        status, created = site.call(alice, "POST", f"{CLASS}/CreateJob", body)
        assert status == 200, created
        job = str(created["JobId"])
        site.daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
        run("gpasswd", "--add", bob.name, site.admins)
        wait_until(
            lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator"
        )
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
        assert status == 200, answer  # (handed over as a download's temporary files are)
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/GetReplyData", {})
        assert status == 200, answer
        assert base64.b64decode(answer["ReplyData"]) == BitsServer.reply_of(data)
        assert [p.stat().st_uid for p in shared.iterdir() if p.name != "doc.bin"] == [bob.uid]
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": wire.COMPLETE})
        assert status == 200, answer
        site.daemon.wait_state(job, JobState.ACKNOWLEDGED)
        reply = shared / f"{job}.reply"
        assert reply.read_bytes() == BitsServer.reply_of(data)
        assert reply.stat().st_uid == bob.uid
        assert sorted(p.name for p in shared.iterdir()) == sorted(["doc.bin", reply.name])


async def test_the_notification_never_follows_a_symlink_planted_for_the_partial_file(tmp_path: Path) -> None:
    server_port, app_port = free_ports(2)
    posts: list[bytes] = []

    async def flaky(request: web.Request) -> web.Response:
        posts.append(await request.read())
        return web.Response(status=500 if len(posts) == 1 else 200, body=b"ok")

    backend = web.Application()
    backend.router.add_post("/notify", flaky)
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    secret = tmp_path / "secret.txt"  # outside the root
    secret.write_bytes(b"root's secret")
    notify = {"notification_type": "by-value", "notification_url": f"http://{HOST}:{app_port}/notify"}
    settings = ServerSettings.from_mapping(
        str(root), str(tmp_path / "state"), {"directories": {"in": notify}}
    )
    runners = [await _serve(backend, app_port), await _serve(make_app(settings), server_port)]
    try:
        url = f"http://{HOST}:{server_port}/in/doc.bin"
        async with aiohttp.ClientSession() as http:
            created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
            session = created.headers["BITS-Session-Id"]
            fragment = {"BITS_Session_Id": session, "Content_Range": "bytes 0-4/5"}
            first = await _post(http, url, "Fragment", b"hello", **fragment)
            assert first.status == 500  # the application failed once: the session waits, complete
            (partial,) = (root / "in").glob(".bits-*.part")
            partial.unlink()
            partial.symlink_to(secret)  # a local user with write access to the directory
            await _post(http, url, "Fragment", b"hello", **fragment)  # the client sends the last one again
        assert b"root's secret" not in posts
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_complete_but_unclosed_sessions_count_against_the_clients_limit(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    settings = ServerSettings.from_mapping(str(root), str(tmp_path / "state"), {"max_sessions_per_client": 2})
    runner = await _serve(make_app(settings), port)
    try:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for n in range(3):
                url = f"http://{HOST}:{port}/in/file{n}.bin"
                created = await _post(http, url, "Create-Session", BITS_Supported_Protocols=PROTOCOL)
                statuses.append(created.status)
                if created.status == 200:
                    session = created.headers["BITS-Session-Id"]
                    done = await _post(
                        http,
                        url,
                        "Fragment",
                        b"x" * 10,
                        BITS_Session_Id=session,
                        Content_Range="bytes 0-9/10",
                    )
                    assert done.status == 200  # every byte in; the session is never closed
        assert statuses == [200, 200, 503]
        assert len(list((root / "in").glob(".bits-*.part"))) == 2
    finally:
        await runner.cleanup()
