"""The Python clients (openbits.Client and openbits.AsyncClient) against a real daemon and a
real nginx: every verb, typed objects equal to the raw instances, errors rebuilt from their
HRESULT, wait(), job_events() with reconnection across a daemon restart, transfer()."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from openbits import (
    AsyncClient,
    BitsError,
    BitsJob,
    Client,
    DaemonUnavailable,
    JobErrorInfo,
    JobEvent,
    JobPriority,
    JobState,
    NotifyFlags,
    SecurityFlags,
)
from openbits.api.app import make_app
from openbits.config import Config
from openbits.errors import (
    EmptyJob,
    ErrorInformationUnavailable,
    HResult,
    InvalidArgument,
    NotFound,
    NotImplementedValue,
    ReadOnlyProperty,
)
from openbits.jobs import NotifyCmdLine
from openbits.model import BG_LENGTH_TO_EOF
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import CLASS, Daemon
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import REFUSED_PORT, Nginx

KiB = 1024


FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def raw_instance(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, body = daemon.api("GET", f"{CLASS}/{job_id}?IncludeFinished=true")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def assert_matches_raw(job: BitsJob, raw: dict[str, Any]) -> None:
    """Every typed attribute against the instance as the API sends it."""
    assert job == BitsJob.from_cim(raw)
    assert job.job_id == raw["JobId"] and job.display_name == raw["DisplayName"]
    assert job.description == raw["Description"] and job.owner == raw["Owner"]
    assert job.priority == raw["Priority"] and job.state == raw["State"] and job.job_type == raw["JobType"]
    assert job.bytes_transferred == raw["BytesTransferred"]
    assert job.bytes_total == (None if raw["BytesTotal"] == 2**64 - 1 else raw["BytesTotal"])
    assert (job.files_total, job.files_transferred) == (raw["FilesTotal"], raw["FilesTransferred"])
    assert job.transient_error_count == raw["TransientErrorCount"]
    assert job.minimum_retry_delay == raw["MinimumRetryDelay"]
    assert job.no_progress_timeout == raw["NoProgressTimeout"]
    assert job.notify_flags == raw["NotifyFlags"] and job.security_flags == raw["SecurityFlags"]
    assert job.maximum_download_time == raw["MaximumDownloadTime"]
    assert job.custom_headers == raw["CustomHeaders"] and job.notify_url == raw["NotifyUrl"]
    for when, key in [
        (job.creation_time, "JobCreationTime"),
        (job.modification_time, "JobLastModificationTime"),
        (job.completion_time, "JobCompletionTime"),
    ]:
        if raw[key] == 0:
            assert when is None
        else:
            assert when is not None and when.tzinfo is not None
            # (exact: the datetime is the FILETIME to the microsecond; a float timestamp of
            # ~10^16 hundreds of ns is not, and made this flaky)
            assert (when - FILETIME_EPOCH) // timedelta(microseconds=1) == raw[key] // 10
    assert [(f.remote_url, f.local_file, f.bytes_transferred, f.completed) for f in job.files] == [
        (f["RemoteUrl"], f["LocalFile"], f["BytesTransferred"], f["Completed"]) for f in raw["Files"]
    ]


# -- the synchronous client ------------------------------------------------------------------------


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    """A client of the daemon, closed after the test."""
    with Client(daemon.socket) as client:
        yield client


def test_typed_jobs_match_the_raw_instances(daemon: Daemon, nginx: Nginx, dest: Path, client: Client) -> None:
    make_file(nginx.www, "client/typed.bin", 64 * KiB, seed=501)
    job = client.create_job(
        "typed", f"{nginx.url}/client/typed.bin", str(dest / "typed.bin"), description="d", priority=1
    )
    assert job.state is JobState.SUSPENDED and job.priority is JobPriority.HIGH
    assert_matches_raw(job, raw_instance(daemon, job.job_id))
    client.set_custom_headers(job.job_id, {"X-Trace": "1"})
    client.resume(job.job_id)
    done = client.wait(job.job_id, timeout=30)
    assert done.state is JobState.TRANSFERRED and done.progress == 1.0 and done.done
    assert_matches_raw(done, raw_instance(daemon, job.job_id))
    assert done.completion_time is not None and done.custom_headers == "X-Trace: 1\r\n"
    listed = {j.job_id: j for j in client.list_jobs()}
    assert_matches_raw(listed[job.job_id], raw_instance(daemon, job.job_id))


def test_every_verb(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "client/verbs-a.bin", 40 * KiB, seed=502)
    make_file(nginx.www, "client/verbs-b.bin", 30 * KiB, seed=503)
    make_file(nginx.www, "client/verbs-r.bin", 10 * KiB, seed=504)
    url = nginx.url
    with Client(daemon.socket) as client:
        job = client.create_job("verbs").job_id
        assert job in {j.job_id for j in client.list_jobs()}
        client.add_file(job, f"{url}/client/moved-a.bin", str(dest / "a.bin"))
        client.add_file_set(job, [(f"{url}/client/verbs-b.bin", str(dest / "b.bin"))])
        client.add_file_with_ranges(
            job, f"{url}/client/verbs-r.bin", str(dest / "r.bin"), [(0, 100), (200, None)]
        )
        assert client.get_job(job).files[2].ranges == ((0, 100), (200, BG_LENGTH_TO_EOF))
        client.set_remote_name(job, str(dest / "a.bin"), f"{url}/client/gone/verbs-a.bin")
        assert client.replace_remote_prefix(job, f"{url}/client/gone/", f"{url}/client/") == 1
        assert client.get_job(job).files[0].remote_url == f"{url}/client/verbs-a.bin"

        after = client.set_properties(
            job, display_name="verbs 2", priority=JobPriority.LOW, minimum_retry_delay=30, Description="x"
        )
        assert (after.display_name, after.priority, after.minimum_retry_delay, after.description) == (
            "verbs 2",
            JobPriority.LOW,
            30,
            "x",
        )
        assert client.set_properties(job, no_progress_timeout=100).no_progress_timeout == 100
        client.set_maximum_download_time(job, 900)
        client.set_custom_headers(job, "X-A: 1\r\n")
        client.set_security_flags(job, SecurityFlags.IGNORE_UNKNOWN_CA)
        client.set_notify_flags(job, NotifyFlags.DISABLE)
        client.set_notify_cmd_line(job, "/bin/true", "true now")
        client.set_notify_url(job, "https://hooks.example/T/secret")
        typed = client.get_job(job)
        assert typed.maximum_download_time == 900 and typed.custom_headers == "X-A: 1\r\n"
        assert typed.security_flags == SecurityFlags.IGNORE_UNKNOWN_CA
        assert typed.notify_flags == NotifyFlags.DISABLE
        assert typed.notify_cmd_line == NotifyCmdLine("/bin/true", "true now")
        assert typed.notify_url == "https://hooks.example/***"
        client.set_notify_cmd_line(job, None)
        client.set_notify_url(job, None)
        client.set_custom_headers(job, None)
        client.set_maximum_download_time(job, None)
        typed = client.get_job(job)
        assert typed.notify_cmd_line is None and typed.notify_url is None and typed.custom_headers is None
        assert typed.maximum_download_time == 7_776_000

        assert [j.job_id for j in client.list_jobs(where="DisplayName = 'verbs 2'")] == [job]
        assert client.query("SELECT JobId, Priority FROM BitsClientJob WHERE DisplayName = 'verbs 2'") == [
            {"JobId": job, "Priority": 3}
        ]
        assert client.resume(job) == 0
        assert client.suspend(job) == 0
        assert client.get_job(job).state is JobState.SUSPENDED
        client.resume(job)
        done = client.wait(job, timeout=30)
        assert done.state is JobState.TRANSFERRED, (
            client.get_error(job) if done.state == JobState.ERROR else done
        )
        headers = client.get_response_headers(job, str(dest / "b.bin"))
        assert headers is not None and "Content-Length: 30720" in headers
        assert client.complete(job) == 0
        assert client.get_job(job, include_finished=True).state is JobState.ACKNOWLEDGED
        assert sha256_file(dest / "b.bin") == sha256_file(nginx.www / "client/verbs-b.bin")

        other = client.create_job("to cancel").job_id
        assert client.cancel(other) == 0
        assert client.get_job(other, include_finished=True).state is JobState.CANCELLED

        policy = client.policy()
        assert "MaxBandwidth" in policy
        assert (
            client.set_policy(max_bandwidth="10M")["MaxBandwidth"] == 10 * 1024 * 1024
        )  # (the tests run as root)
        assert client.set_policy(MaxBandwidth=None)["MaxBandwidth"] is None


def test_errors_are_rebuilt_with_their_subclass_and_hresult(
    daemon: Daemon, client: Client, tmp_path: Path, dest: Path
) -> None:
    job = client.create_job("errors").job_id
    cases: list[tuple[Any, type[BitsError], int]] = [
        (lambda: client.get_job("{00000000-0000-0000-0000-000000000000}"), NotFound, HResult.BG_E_NOT_FOUND),
        (lambda: client.set_properties(job, job_id="x"), ReadOnlyProperty, HResult.BG_E_READ_ONLY_PROPERTY),
        (lambda: client.set_properties(job, priority=9), NotImplementedValue, HResult.E_NOTIMPL),
        (lambda: client.add_file(job, "https://e/x", "relative/x"), InvalidArgument, HResult.E_INVALIDARG),
        (lambda: client.resume(job), EmptyJob, HResult.BG_E_EMPTY),
        (
            lambda: client.get_error(job),
            ErrorInformationUnavailable,
            HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE,
        ),
        (lambda: client.query("SELECT FROM"), InvalidArgument, HResult.E_INVALIDARG),
    ]
    for call, cls, hresult in cases:
        with pytest.raises(BitsError) as e:
            call()
        assert type(e.value) is cls and e.value.hresult == hresult, (e.value, cls)
    with pytest.raises(DaemonUnavailable, match="no openbits daemon"):
        Client(str(tmp_path / "nobody.sock")).list_jobs()
    with pytest.raises(DaemonUnavailable, match="no openbits daemon"):
        Client(url=f"http://127.0.0.1:{REFUSED_PORT}", token="t").list_jobs()


def test_wait_returns_at_transferred_and_at_error_and_times_out(
    daemon: Daemon, client: Client, nginx: Nginx, dest: Path
) -> None:
    make_file(nginx.www, "client/wait.bin", 200 * KiB, seed=505)
    ok = client.create_job("wait ok", f"{nginx.url}/client/wait.bin", str(dest / "wait.bin")).job_id
    bad = client.create_job("wait bad", f"{nginx.url}/client/no-such.bin", str(dest / "bad.bin")).job_id
    client.resume(ok)
    client.resume(bad)
    assert client.wait(ok, timeout=30).state is JobState.TRANSFERRED
    failed = client.wait(bad, timeout=30)
    assert failed.state is JobState.ERROR
    info = client.get_error(bad)
    assert isinstance(info, JobErrorInfo)
    assert (info.hresult, info.name) == (0x80190194, "BG_E_HTTP_ERROR_404")
    assert info.remote_url == f"{nginx.url}/client/no-such.bin"
    idle = client.create_job("idle").job_id
    with pytest.raises(TimeoutError, match="SUSPENDED"):
        client.wait(idle, timeout=0.3)
    assert client.wait(idle, timeout=5, until={JobState.SUSPENDED}).state is JobState.SUSPENDED


def test_job_events_are_typed_in_order_and_reconnect_after_a_restart(daemon: Daemon, client: Client) -> None:
    job = client.create_job("events").job_id
    with client.job_events(job=job, reconnect=True, timeout=20) as events:
        client.set_properties(job, description="before")
        first = next(events)
        assert isinstance(first, JobEvent) and first.type == "JobModification"
        assert first.job is not None and first.job.description == "before" and first.id is not None
        daemon.stop()  # the stream ends; the iterator notices at its next read
        daemon.start()
        with Client(daemon.socket) as restarted:
            restarted.set_properties(job, description="missed while away")
            restarted.cancel(job)
        rest = [next(events), next(events)]
    assert [(e.type, e.job.description if e.job else None) for e in rest] == [
        ("JobModification", "missed while away"),
        ("JobCancelled", "missed while away"),
    ]
    assert [e.id for e in rest] == [first.id + 1, first.id + 2]
    assert rest[-1].job is not None and rest[-1].job.state is JobState.CANCELLED
    # without reconnect (it is on by default) the iterator ends with the stream
    other = client.create_job("no reconnect").job_id
    plain = client.job_events(job=other, timeout=20, reconnect=False)
    daemon.stop()
    assert list(plain) == []
    daemon.start()


def test_transfer_end_to_end_with_progress(daemon: Daemon, nginx: Nginx, dest: Path, client: Client) -> None:
    digests = {
        name: make_file(nginx.www, f"client/t-{name}", 300 * KiB, seed=510 + i) for i, name in enumerate("ab")
    }
    seen: list[BitsJob] = []
    job = client.transfer(
        {f"{nginx.url}/client/t-{n}": str(dest / n) for n in digests},
        "one call",
        priority=JobPriority.FOREGROUND,
        progress=seen.append,
    )
    assert job.state is JobState.ACKNOWLEDGED and job.display_name == "one call"
    assert job.priority is JobPriority.FOREGROUND
    for name, digest in digests.items():
        assert sha256_file(dest / name) == digest
    states = [j.state for j in seen]
    assert states[-2:] == [JobState.TRANSFERRED, JobState.ACKNOWLEDGED]
    sizes = [j.bytes_transferred for j in seen]
    assert sizes == sorted(sizes) and sizes[-1] == 600 * KiB
    assert all(j.job_id == job.job_id for j in seen)


def test_transfer_cancels_its_job_on_failure(
    daemon: Daemon, nginx: Nginx, dest: Path, client: Client
) -> None:
    make_file(nginx.www, "client/t-good", 10 * KiB, seed=520)
    seen: list[BitsJob] = []
    with pytest.raises(BitsError) as e:
        client.transfer(
            [
                (f"{nginx.url}/client/t-good", str(dest / "good")),
                (f"{nginx.url}/client/t-gone", str(dest / "gone")),
            ],
            progress=seen.append,
        )
    assert e.value.hresult == 0x80190194 and e.value.name == "BG_E_HTTP_ERROR_404"
    job_id = seen[0].job_id
    assert any(job_id in note for note in e.value.__notes__)
    assert client.get_job(job_id, include_finished=True).state is JobState.CANCELLED
    assert sorted(p.name for p in dest.iterdir()) == []  # temporary files removed, nothing published
    # an interrupted transfer (here: the progress callback raises) cancels its job too
    calls: list[str] = []

    def interrupt(job: BitsJob) -> None:
        calls.append(job.job_id)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.transfer([(f"{nginx.url}/client/t-good", str(dest / "good"))], progress=interrupt)
    assert client.get_job(calls[0], include_finished=True).state is JobState.CANCELLED


# -- a daemon without events: wait() long polls ---------------------------------------------------------


@contextmanager
def daemon_without_events(state_dir: Path) -> Iterator[str]:
    """The real API app and store, served on a Unix socket in a thread, with no event log
    (``GET /events`` answers E_NOTIMPL, as an older daemon does) and no transfers."""
    state_dir.mkdir()
    config = Config(state_dir=str(state_dir))
    store = SqliteStore(config.db_path)
    service = Service(store, config)
    sock = str(state_dir / "old.sock")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(make_app(service), access_log=None, handle_signals=False)

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, sock).start()
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    try:
        assert ready.wait(10)
        yield sock
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()


def test_wait_long_polls_a_daemon_without_events(tmp_path: Path) -> None:
    with daemon_without_events(tmp_path / "old") as sock, Client(sock) as client:
        with pytest.raises(NotImplementedValue):
            client.job_events()
        job = client.create_job("old", "https://example.invalid/x", str(tmp_path / "x")).job_id
        client.resume(job)  # QUEUED for ever: this daemon runs no transfers
        with pytest.raises(TimeoutError, match="QUEUED"):
            client.wait(job, timeout=0.5)
        result: list[BitsJob] = []

        def wait() -> None:
            with Client(sock) as other:
                result.append(other.wait(job, timeout=30))

        waiter = threading.Thread(target=wait)
        waiter.start()
        client.cancel(job)  # answers the long poll, whenever it started
        waiter.join(30)
        assert result and result[0].state is JobState.CANCELLED

        async def run_async() -> BitsJob:
            async with AsyncClient(sock) as a:
                other = (
                    await a.create_job("old async", "https://example.invalid/y", str(tmp_path / "y"))
                ).job_id
                await a.resume(other)
                with pytest.raises(TimeoutError):
                    await a.wait(other, timeout=0.3)
                waiting = asyncio.create_task(a.wait(other, timeout=30))
                await a.cancel(other)
                return await waiting

        assert asyncio.run(run_async()).state is JobState.CANCELLED


# -- the asyncio client ----------------------------------------------------------------------------------


async def test_async_every_verb(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "client/async-a.bin", 50 * KiB, seed=530)
    make_file(nginx.www, "client/async-r.bin", 10 * KiB, seed=531)
    url = nginx.url
    async with AsyncClient(daemon.socket) as client:
        job = await client.create_job("async", description="d", priority=JobPriority.HIGH)
        assert_matches_raw(job, raw_instance(daemon, job.job_id))
        ref = job.job_id
        assert ref in {j.job_id for j in await client.list_jobs()}
        await client.add_file(ref, f"{url}/client/gone/async-a.bin", str(dest / "a.bin"))
        await client.add_file_set(ref, {f"{url}/client/async-r.bin": str(dest / "r.bin")})
        await client.add_file_with_ranges(ref, f"{url}/client/async-r.bin", str(dest / "r2.bin"), [(0, 5)])
        await client.set_remote_name(ref, str(dest / "r.bin"), f"{url}/client/gone/async-r.bin")
        assert await client.replace_remote_prefix(ref, f"{url}/client/gone/", f"{url}/client/") == 2
        updated = await client.set_properties(ref, display_name="async 2", priority=JobPriority.NORMAL)
        assert (updated.display_name, updated.priority) == ("async 2", JobPriority.NORMAL)
        assert (await client.set_properties(ref, Description="y")).description == "y"
        await client.set_maximum_download_time(ref, 1200)
        await client.set_custom_headers(ref, {"X-B": "2"})
        await client.set_security_flags(ref, 0)
        await client.set_notify_flags(ref, 3)
        await client.set_notify_cmd_line(ref, "/bin/true")
        await client.set_notify_url(ref, "https://hooks.example/x")
        typed = await client.get_job(ref)
        assert typed.maximum_download_time == 1200 and typed.custom_headers == "X-B: 2\r\n"
        assert typed.notify_cmd_line == NotifyCmdLine("/bin/true", None)
        assert_matches_raw(typed, raw_instance(daemon, ref))
        assert [j.job_id for j in await client.list_jobs(where="DisplayName = 'async 2'")] == [ref]
        assert await client.query("SELECT JobId FROM BitsClientJob WHERE DisplayName = 'async 2'") == [
            {"JobId": ref}
        ]
        without_files = await client.get_job(ref, files=False)
        assert without_files.files == () and without_files.files_total == 3
        assert await client.resume(ref) == 0
        assert await client.suspend(ref) == 0
        await client.resume(ref)
        done = await client.wait(ref, timeout=30)
        assert done.state is JobState.TRANSFERRED
        headers = await client.get_response_headers(ref, str(dest / "a.bin"))
        assert headers is not None and "Content-Length: 51200" in headers
        assert await client.complete(ref) == 0
        assert (await client.get_job(ref, include_finished=True)).state is JobState.ACKNOWLEDGED
        other = (await client.create_job("cancel me")).job_id
        assert await client.cancel(other) == 0
        assert "MaxBandwidth" in await client.policy()
        assert (await client.set_policy(max_bandwidth="1M"))["MaxBandwidth"] == 1024 * 1024
        assert (await client.set_policy(max_bandwidth=None))["MaxBandwidth"] is None
        failing = await client.create_job(
            "async fail", f"{url}/client/none.bin", str(dest / "none.bin"), suspend=False
        )
        assert (await client.wait(failing.job_id, timeout=30)).state is JobState.ERROR
        info = await client.get_error(failing.job_id)
        assert info.name == "BG_E_HTTP_ERROR_404" and info.raw["ErrorCode"] == info.hresult


async def test_async_errors_are_rebuilt(daemon: Daemon, tmp_path: Path) -> None:
    async with AsyncClient(daemon.socket) as client:
        job = (await client.create_job("async errors")).job_id
        with pytest.raises(NotFound) as e:
            await client.get_job("no such job")
        assert e.value.hresult == HResult.BG_E_NOT_FOUND
        with pytest.raises(ReadOnlyProperty):
            await client.set_properties(job, state=4)
        with pytest.raises(EmptyJob):
            await client.resume(job)
        with pytest.raises(InvalidArgument):
            await client.invoke(job, "NoSuchMethod")
        with pytest.raises(NotFound):
            async for _ in client.job_events(job="no such job"):
                pass
    with pytest.raises(DaemonUnavailable, match="no openbits daemon"):
        async with AsyncClient(str(tmp_path / "nobody.sock")) as nobody:
            await nobody.list_jobs()
    with pytest.raises(DaemonUnavailable, match="no openbits daemon"):
        async with AsyncClient(url=f"http://127.0.0.1:{REFUSED_PORT}", token="t") as nobody:
            await nobody.list_jobs()


async def test_async_job_events_reconnect_by_default_after_a_restart(daemon: Daemon) -> None:
    async with AsyncClient(daemon.socket) as client:
        job = (await client.create_job("async events")).job_id
        events = client.job_events(job=job, timeout=20)
        async with events:
            await client.set_properties(job, description="one")
            first = await events.__anext__()
            assert (
                first.type == "JobModification" and first.job is not None and first.job.description == "one"
            )
            daemon.stop()
            daemon.start()
            async with AsyncClient(daemon.socket) as again:
                await again.set_properties(job, description="two")
                await again.cancel(job)
            got: list[JobEvent] = []
            async for event in events:
                got.append(event)
                if event.type == "JobCancelled":
                    break
        assert [(e.type, e.job.description if e.job else None) for e in got] == [
            ("JobModification", "two"),
            ("JobCancelled", "two"),
        ]
        assert first.id is not None and [e.id for e in got] == [first.id + 1, first.id + 2]
        raw = client.events(job=job, last_event_id=first.id, timeout=20)
        async with raw:
            replayed = [await raw.__anext__(), await raw.__anext__()]
        assert [(e.id, e.event) for e in replayed] == [
            (first.id + 1, "JobModification"),
            (first.id + 2, "JobCancelled"),
        ]


async def test_async_transfer_with_progress_and_cancel_on_failure(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digest = make_file(nginx.www, "client/async-t.bin", 200 * KiB, seed=540)
    seen: list[BitsJob] = []

    async def progress(job: BitsJob) -> None:  # a coroutine function is awaited
        seen.append(job)

    async with AsyncClient(daemon.socket) as client:
        job = await client.transfer(
            [(f"{nginx.url}/client/async-t.bin", str(dest / "t.bin"))], "async t", progress=progress
        )
        assert job.state is JobState.ACKNOWLEDGED and sha256_file(dest / "t.bin") == digest
        assert [j.state for j in seen][-2:] == [JobState.TRANSFERRED, JobState.ACKNOWLEDGED]
        failed: list[BitsJob] = []
        with pytest.raises(BitsError) as e:
            await client.transfer(
                {f"{nginx.url}/client/async-none": str(dest / "none")}, progress=failed.append
            )
        assert e.value.name == "BG_E_HTTP_ERROR_404"
        assert (await client.get_job(failed[0].job_id, include_finished=True)).state is JobState.CANCELLED
        # a cancelled task cancels its job
        started = asyncio.Event()
        ids: list[str] = []

        def note(job: BitsJob) -> None:
            ids.append(job.job_id)
            started.set()

        make_file(nginx.www, "client/async-slow.bin", 16 * 1024 * KiB, seed=541)
        task = asyncio.create_task(  # (16 MiB at 1 MB/s: still running when it is cancelled)
            client.transfer(
                {f"{nginx.url}/slow/client/async-slow.bin": str(dest / "never.bin")},
                progress=note,
                timeout=60,
            )
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await client.get_job(ids[0], include_finished=True)).state is JobState.CANCELLED
