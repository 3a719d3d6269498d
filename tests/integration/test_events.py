"""Live events (``GET /events``, Server-Sent Events) through a real daemon.

SPEC §4 and §6: monotonically numbered events after the BITS callbacks, the instance after
each change as data, owner-scoped, replayable with ``Last-Event-ID`` from a persisted log
(across restarts too), progress throttled per job; ``openbits get --watch`` and ``wait``.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.client import Client, EventStream, StreamEvent
from openbits.errors import BitsError
from openbits.model import JobState
from tests.support.daemon import Daemon, UnixHTTP, reap
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx
from tests.support.users import as_nobody

KiB = 1024
MiB = 1024 * KiB


def read_until(
    stream: EventStream, done: Callable[[StreamEvent], bool], timeout: float = 20.0
) -> list[StreamEvent]:
    """Events from ``stream`` up to and including the first that ``done`` is true of."""
    deadline = time.monotonic() + timeout
    got: list[StreamEvent] = []
    while True:
        stream.timeout = max(0.01, deadline - time.monotonic())
        try:
            event = next(stream)
        except TimeoutError:
            raise AssertionError(f"no matching event within {timeout} s; got {got}") from None
        got.append(event)
        if done(event):
            return got


def is_state(state: JobState) -> Callable[[StreamEvent], bool]:
    return lambda e: isinstance(e.data, dict) and e.data.get("State") == state


def has_id(event_id: int) -> Callable[[StreamEvent], bool]:
    return lambda e: e.id is not None and e.id >= event_id


@pytest.fixture
def open_streams() -> Iterator[list[EventStream]]:
    """Streams a test opened, closed at its end whatever happens."""
    streams: list[EventStream] = []
    yield streams
    for s in streams:
        s.close()


def listen(daemon: Daemon, streams: list[EventStream], **kwargs: object) -> EventStream:
    stream = Client(daemon.socket).events(timeout=20, **kwargs)  # type: ignore[arg-type]
    streams.append(stream)
    return stream


# -- numbering, types, data -------------------------------------------------------------------


def test_a_transfer_gives_numbered_events_in_order_with_the_instance_after_each_change(
    daemon: Daemon, nginx: Nginx, dest: Path, open_streams: list[EventStream]
) -> None:
    make_file(nginx.www, "events/one.bin", 300 * KiB, seed=401)
    stream = listen(daemon, open_streams)
    client = daemon.client
    job = client.create_job("events one").job_id
    client.invoke(job, "SetCustomHeaders", CustomHeaders="Authorization: Bearer s3cret-token\r\n")
    client.add_file(job, f"{nginx.url}/events/one.bin", str(dest / "one.bin"))
    client.resume(job)
    events = read_until(stream, is_state(JobState.TRANSFERRED))
    instance = daemon.job(job)  # nothing changes between TRANSFERRED and Complete
    assert instance.pop("CustomHeaders") == "Authorization: Bearer s3cret-token\r\n"
    assert events[-1].data == instance, "the data is the instance after the change"
    client.complete(job)
    events += read_until(stream, is_state(JobState.ACKNOWLEDGED))

    ids = [e.id for e in events]
    assert all(i is not None for i in ids)
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"ids not consecutive: {ids}"
    assert all(e.data["JobId"] == job for e in events)
    kinds = [(e.event, JobState(e.data["State"]).name) for e in events]
    assert kinds[0] == ("JobModification", "SUSPENDED"), kinds  # created
    assert kinds[-2:] == [("JobTransferred", "TRANSFERRED"), ("JobAcknowledged", "ACKNOWLEDGED")], kinds
    states = [s for _, s in kinds]
    for a, b in [("SUSPENDED", "QUEUED"), ("QUEUED", "CONNECTING"), ("CONNECTING", "TRANSFERRING")]:
        assert states.index(a) < states.index(b), kinds
    assert ("FileTransferred", "TRANSFERRING") in kinds, kinds
    transferred = events[-2].data
    assert transferred["BytesTransferred"] == transferred["BytesTotal"] == 300 * KiB
    assert transferred["Files"][0]["Completed"] is True
    assert all("CustomHeaders" not in e.data and "s3cret" not in json.dumps(e.data) for e in events)


def test_errors_and_cancellation_have_their_types(
    daemon: Daemon, nginx: Nginx, dest: Path, open_streams: list[EventStream]
) -> None:
    stream = listen(daemon, open_streams)
    client = daemon.client
    failing = client.create_job("events missing").job_id
    client.set_properties(failing, NoProgressTimeout=0)  # every error is fatal
    client.add_file(failing, f"{nginx.url}/events/no-such-file.bin", str(dest / "missing.bin"))
    client.resume(failing)
    events = read_until(stream, is_state(JobState.ERROR))
    assert events[-1].event == "JobError"
    client.cancel(failing)
    events = read_until(stream, is_state(JobState.CANCELLED))
    assert [e.event for e in events] == ["JobCancelled"]


# -- filters and bad parameters ----------------------------------------------------------------


def test_job_and_type_filters(daemon: Daemon, open_streams: list[EventStream]) -> None:
    client = daemon.client
    a = client.create_job("filter-a").job_id
    b = client.create_job("filter-b").job_id
    only_a = listen(daemon, open_streams, job="filter-a")  # by display name
    cancels = listen(daemon, open_streams, types=["JobCancelled"])
    client.set_properties(b, Description="b changed")
    client.set_properties(a, Description="a changed")
    client.cancel(b)
    client.cancel(a)
    seen_a = read_until(only_a, is_state(JobState.CANCELLED))
    assert {e.data["JobId"] for e in seen_a} == {a}
    assert [e.event for e in seen_a] == ["JobModification", "JobCancelled"]
    seen = read_until(cancels, lambda e: e.data["JobId"] == a)
    assert [(e.event, e.data["JobId"]) for e in seen] == [("JobCancelled", b), ("JobCancelled", a)]


def test_bad_parameters_answer_the_usual_errors(daemon: Daemon) -> None:
    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        conn = UnixHTTP(daemon.socket)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, body = get("/events?Types=JobTransferred,Bogus")
    assert status == 400 and body["Name"] == "E_INVALIDARG" and "Bogus" in body["Message"]
    status, body = get("/events?Job={00000000-0000-0000-0000-000000000000}")
    assert status == 404 and body["Name"] == "BG_E_NOT_FOUND"
    status, body = get("/events", {"Last-Event-ID": "yesterday"})
    assert status == 400 and body["Name"] == "E_INVALIDARG"
    status, body = get("/events?LastEventId=-3")
    assert status == 400 and body["Name"] == "E_INVALIDARG"


# -- owners ------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_each_user_sees_only_the_events_of_their_own_jobs(
    tmp_path: Path, open_streams: list[EventStream]
) -> None:
    run = Path(tempfile.mkdtemp(prefix="openbits-events-"))
    run.chmod(0o755)
    daemon = Daemon(tmp_path / "state", config={"socket_mode": 0o666}, socket=str(run / "openbits.sock"))
    daemon.start()
    stop = threading.Event()
    writer: threading.Thread | None = None
    try:
        sock = daemon.socket
        root_job = daemon.client.create_job("root's").job_id
        everyone = listen(daemon, open_streams, all_users=True)
        mine = listen(daemon, open_streams)

        def keep_changing() -> None:  # root's events flow while nobody listens
            c = Client(sock)
            # (300 at most: the streams read only later cannot fall QUEUE_LIMIT (1024) events behind)
            for _ in range(300):
                if stop.is_set():
                    break
                c.set_properties(root_job, Description=f"{time.monotonic()}")
            c.close()

        writer = threading.Thread(target=keep_changing)
        writer.start()

        def nobody_view() -> dict[str, Any]:
            c = Client(sock)
            live = c.events(timeout=20)
            own = c.create_job("nobody's").job_id
            c.set_properties(own, Description="x")
            c.cancel(own)
            seen = [e.data for e in read_until(live, is_state(JobState.CANCELLED))]
            replayed = [
                e.data
                for e in read_until(c.events(last_event_id=0, timeout=20), is_state(JobState.CANCELLED))
            ]
            errors = []
            for kwargs in ({"all_users": True}, {"job": root_job}):
                try:
                    c.events(**kwargs)  # type: ignore[arg-type]
                except BitsError as e:
                    errors.append(e.name)
            return {"own": own, "live": seen, "replayed": replayed, "errors": errors}

        view = as_nobody(nobody_view)
        own = view["own"]
        for data in view["live"] + view["replayed"]:
            assert (data["JobId"], data["Owner"]) == (own, "nobody")
        assert len(view["replayed"]) == 3  # created, changed, cancelled
        assert view["errors"] == ["E_ACCESSDENIED", "BG_E_NOT_FOUND"]
        seen_all = read_until(everyone, lambda e: e.data["JobId"] == own and e.event == "JobCancelled")
        assert {e.data["Owner"] for e in seen_all} == {"root", "nobody"}
        stop.set()
        writer.join(30)
        daemon.client.cancel(root_job)
        seen_mine = read_until(mine, lambda e: e.event == "JobCancelled")
        assert {e.data["JobId"] for e in seen_mine} == {root_job}
    finally:
        stop.set()
        if writer is not None:
            writer.join(30)
        daemon.stop()
        shutil.rmtree(run, ignore_errors=True)


# -- replay ----------------------------------------------------------------------------------------


def test_a_client_that_reconnects_with_last_event_id_misses_nothing_and_repeats_nothing(
    daemon: Daemon, open_streams: list[EventStream]
) -> None:
    """A reference stream stays connected; another disconnects and reconnects again and
    again with Last-Event-ID while changes keep coming from another thread."""
    client = daemon.client
    job = client.create_job("replay").job_id
    reference = listen(daemon, open_streams)
    stop = threading.Event()
    changes = 0

    def change() -> None:
        nonlocal changes
        writer = Client(daemon.socket)
        while not stop.is_set() and changes < 400:
            changes += 1
            writer.set_properties(job, Description=f"change {changes}")
        writer.close()

    thread = threading.Thread(target=change)
    thread.start()
    received: list[int] = []
    last: int | None = None
    try:
        for reconnect in range(12):
            stream = Client(daemon.socket).events(last_event_id=last, timeout=20)
            open_streams.append(stream)
            if last is None:
                last = stream.last_event_id
            for _ in range(3 + reconnect % 4):
                event = next(stream)
                assert event.id is not None and event.event == "JobModification"
                received.append(event.id)
            last = stream.last_event_id
            stream.close()
    finally:
        stop.set()
        thread.join(30)
    client.cancel(job)  # the end marker
    final = listen(daemon, open_streams, last_event_id=last)
    received += [e.id for e in read_until(final, is_state(JobState.CANCELLED)) if e.id is not None]
    expected = [e.id for e in read_until(reference, is_state(JobState.CANCELLED))]
    first = expected.index(received[0])
    assert received == expected[first:], "a reconnecting client missed or repeated events"
    assert len(received) > 30


def test_replay_across_daemon_restarts_and_a_sigkill(daemon: Daemon, open_streams: list[EventStream]) -> None:
    client = daemon.client
    job = client.create_job("restart").job_id
    stream = listen(daemon, open_streams)
    client.set_properties(job, Description="before")
    before = read_until(stream, lambda e: e.data["Description"] == "before")
    last = before[-1].id
    assert last is not None
    client.set_properties(job, Description="missed 1")
    daemon.stop()  # SIGTERM
    daemon.start()
    client = daemon.client
    client.set_properties(job, Description="missed 2")
    daemon.kill()  # SIGKILL right after an acknowledged change
    daemon.start()
    client = daemon.client
    client.set_properties(job, Description="after")
    replay = listen(daemon, open_streams, last_event_id=last)
    events = read_until(replay, lambda e: e.data["Description"] == "after")
    assert [e.data["Description"] for e in events] == ["missed 1", "missed 2", "after"]
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) and ids[0] == last + 1, f"ids must keep increasing: {last} then {ids}"


def test_an_id_the_log_no_longer_holds_gets_a_reset_first(
    tmp_path: Path, open_streams: list[EventStream]
) -> None:
    daemon = Daemon(tmp_path / "state", config={"event_log_size": 10})
    daemon.start()
    try:
        client = daemon.client
        job = client.create_job("small log").job_id
        for i in range(90):  # the log trims in batches (at least 64)
            client.set_properties(job, Description=f"{i}")
        client.cancel(job)
        stream = listen(daemon, open_streams, last_event_id=1)
        reset = next(stream)
        assert reset.event == "Reset" and reset.id is None
        assert reset.data["LastEventId"] == 1 and reset.data["OldestEventId"] > 2
        rest = read_until(stream, is_state(JobState.CANCELLED))
        assert rest[0].id == reset.data["OldestEventId"]
        assert len(rest) <= 10 + 64
        assert [e.id for e in rest] == list(range(rest[0].id or 0, (rest[-1].id or 0) + 1))

        never = listen(daemon, open_streams, last_event_id=10**9)  # an id never issued
        assert next(never).event == "Reset"
        assert next(never).id == reset.data["OldestEventId"]  # then all the log keeps
        # an id the log still holds: no Reset, the events after it
        kept = rest[-3].id
        assert kept is not None
        again = listen(daemon, open_streams, last_event_id=kept)
        assert [e.id for e in read_until(again, is_state(JobState.CANCELLED))] == [kept + 1, kept + 2]
    finally:
        daemon.stop()


# -- progress throttling ------------------------------------------------------------------------------


def test_progress_is_throttled_per_job_while_every_state_change_arrives(
    tmp_path: Path, nginx: Nginx, dest: Path, open_streams: list[EventStream]
) -> None:
    """Checkpoints every 50 ms of a transfer limited to 1 MiB/s: JobModification events
    for progress come at most every 500 ms; the state changes all come."""
    make_file(nginx.www, "events/slow.bin", 3 * MiB, seed=402)
    # (a limited transfer is read in small slices, each followed by a checkpoint when due)
    config = {"checkpoint_interval_s": 0.05, "bandwidth_limit": "1M"}
    daemon = Daemon(tmp_path / "state", config=config)
    daemon.start()
    try:
        client = daemon.client
        job = client.create_job("throttled").job_id
        client.add_file(job, f"{nginx.url}/events/slow.bin", str(dest / "slow.bin"))
        stream = listen(daemon, open_streams, job=job)
        client.resume(job)
        arrivals: list[tuple[float, StreamEvent]] = []
        while not arrivals or arrivals[-1][1].event != "JobTransferred":
            stream.timeout = 30
            event = next(stream)
            arrivals.append((time.monotonic(), event))
    finally:
        daemon.stop()
    states = [JobState(e.data["State"]).name for _, e in arrivals]
    assert states[:3] == ["QUEUED", "CONNECTING", "TRANSFERRING"], states
    progress = [
        (t, e)
        for t, e in arrivals[3:]
        if e.event == "JobModification" and e.data["State"] == JobState.TRANSFERRING
    ]
    assert len(progress) >= 3, f"a 3 s transfer shows its progress: {states}"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(progress)]
    # (the last may come sooner: progress still held is sent ahead of the state change).
    # Measured where they arrive, so one event held up on a busy machine shortens the gap
    # after it: the median keeps the 500 ms minimum, and no two come as a burst
    between = sorted(gaps[:-1])
    assert between[len(between) // 2] >= 0.4, f"progress events closer than the 500 ms minimum: {gaps}"
    assert between[0] >= 0.15, f"progress events in a burst: {gaps}"
    assert len(progress) <= 2 * (arrivals[-1][0] - arrivals[0][0]) + 2, f"{len(progress)} progress events"
    sizes = [e.data["BytesTransferred"] for _, e in progress]
    assert sizes == sorted(sizes) and sizes[0] > 0
    assert arrivals[-1][1].data["BytesTransferred"] == 3 * MiB


# -- slow consumers and shutdown ------------------------------------------------------------------


def test_a_consumer_that_falls_behind_is_cut_off_and_resumes_without_a_gap(
    daemon: Daemon, open_streams: list[EventStream]
) -> None:
    client = daemon.client
    job = client.create_job("x" * 200, description="y" * 1000).job_id  # large events
    slow = listen(daemon, open_streams)
    first = slow.last_event_id
    assert first is not None
    for i in range(1500):  # more than the queue and the socket buffers hold
        client.set_properties(job, Priority=i % 2 + 2)
    client.cancel(job)
    got: list[int] = []
    for event in slow:  # the daemon ended this stream when it fell behind
        assert event.id is not None
        got.append(event.id)
    assert got and got[-1] < first + 1501, "the slow stream was not cut off"
    resumed = listen(daemon, open_streams, last_event_id=slow.last_event_id)
    got += [e.id for e in read_until(resumed, is_state(JobState.CANCELLED)) if e.id is not None]
    assert got == list(range(first + 1, first + 1502))


def test_the_daemon_stops_at_once_with_streams_open(daemon: Daemon, open_streams: list[EventStream]) -> None:
    streams = [listen(daemon, open_streams) for _ in range(3)]
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    for stream in streams:
        assert list(stream) == []  # ended by the daemon, not by a timeout


# -- the CLI ----------------------------------------------------------------------------------------


def spawn(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket)
    return subprocess.Popen(
        [sys.executable, "-m", "openbits", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def first_line_while(proc: subprocess.Popen[str], poke: Callable[[], None], timeout: float = 20) -> str:
    """Poke the daemon until the subprocess prints its first line (it is subscribed then)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poke()
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline()
    proc.kill()
    raise AssertionError(f"no output from {proc.args}: {proc.communicate()}")


def test_get_watch_json_prints_one_object_a_line_until_the_job_ends(daemon: Daemon) -> None:
    client = daemon.client
    job = client.create_job("watched").job_id
    watcher = spawn(daemon, "get", "--watch", "--json", job)
    try:
        count = 0

        def poke() -> None:
            nonlocal count
            count += 1
            client.set_properties(job, Description=f"poke {count}")

        lines = [first_line_while(watcher, poke)]
        client.cancel(job)
        out, err = watcher.communicate(timeout=20)
    finally:
        reap(watcher)
    assert watcher.returncode == 0, err
    lines += out.splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(set(o) == {"id", "event", "data"} for o in objects)
    assert objects[-1]["event"] == "JobCancelled" and objects[-1]["data"]["JobId"] == job
    ids = [o["id"] for o in objects]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_get_watch_exits_130_quietly_on_ctrl_c(daemon: Daemon) -> None:
    client = daemon.client
    job = client.create_job("watch all").job_id
    watcher = spawn(daemon, "get", "--watch")
    try:
        line = first_line_while(watcher, lambda: client.set_properties(job, Description="poke"))
        assert "JobModification" in line and job in line and "SUSPENDED" in line
        watcher.send_signal(signal.SIGINT)
        _out, err = watcher.communicate(timeout=20)
    finally:
        reap(watcher)
    assert watcher.returncode == 130
    assert err == ""


def test_wait_follows_the_events_until_the_job_ends(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "events/wait.bin", 64 * KiB, seed=403)
    client = daemon.client
    job = client.create_job("waited").job_id
    client.add_file(job, f"{nginx.url}/events/wait.bin", str(dest / "wait.bin"))
    waiter = spawn(daemon, "wait", job)
    try:
        # not answered while the job is SUSPENDED (it is subscribed or still starting)
        assert waiter.poll() is None
        client.resume(job)
        out, err = waiter.communicate(timeout=30)
    finally:
        reap(waiter)
    assert (waiter.returncode, out.strip()) == (0, "TRANSFERRED"), err
    timed_out = daemon.cli("wait", "--timeout", "0.3", client.create_job("never").job_id)
    assert timed_out.returncode == 1 and "timed out" in timed_out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_job_stream_ends_its_view_when_an_administrator_takes_the_job(tmp_path: Path) -> None:
    run = Path(tempfile.mkdtemp(prefix="openbits-events-"))
    run.chmod(0o755)
    daemon = Daemon(tmp_path / "state", config={"socket_mode": 0o666}, socket=str(run / "openbits.sock"))
    daemon.start()
    ready_r, ready_w = os.pipe()
    view: dict[str, Any] = {}
    try:
        sock = daemon.socket

        def nobody_stream() -> str:  # nobody follows its own job until the daemon stops
            with Client(sock) as mine:
                job = mine.create_job("nobody's").job_id
            conn = UnixHTTP(sock)
            conn.request("GET", f"/events?Job={job}")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.readline()  # (subscribed)
            os.write(ready_w, job.encode())
            return resp.read().decode()  # (ends with the daemon)

        child = threading.Thread(target=lambda: view.update(seen=as_nobody(nobody_stream)))
        child.start()
        readable, _, _ = select.select([ready_r], [], [], 20)
        assert readable, "nobody's stream did not open"
        job = os.read(ready_r, 100).decode()
        assert daemon.client.invoke(job, "TakeOwnership")["ReturnValue"] == 0
        daemon.client.set_properties(job, Description="root's secret")
        daemon.stop()  # (ends every stream, after what was already queued for it)
        child.join(30)
        assert "seen" in view
        assert '"Owner":"root"' not in view["seen"] and "root's secret" not in view["seen"]
    finally:
        os.close(ready_r)
        os.close(ready_w)
        daemon.stop()
        shutil.rmtree(run, ignore_errors=True)


def test_a_job_put_back_in_the_queue_by_a_restart_is_an_event(
    tmp_path: Path, nginx: Nginx, dest: Path, open_streams: list[EventStream]
) -> None:
    """SIGKILL during a transfer: the restarted daemon puts the job back to QUEUED, and a
    stream resumed with Last-Event-ID sees that before the job connects again."""
    make_file(nginx.www, "events/restart.bin", 3 * MiB, seed=403)
    daemon = Daemon(tmp_path / "state", config={"bandwidth_limit": "1M"})
    daemon.start()
    try:
        client = daemon.client
        job = client.create_job("restarted").job_id
        client.add_file(job, f"{nginx.url}/events/restart.bin", str(dest / "restart.bin"))
        stream = listen(daemon, open_streams, job=job)
        client.resume(job)
        last = read_until(stream, is_state(JobState.TRANSFERRING))[-1].id
        assert last is not None
        daemon.kill()
        daemon.start()
        resumed = listen(daemon, open_streams, job=job, last_event_id=last)
        events = read_until(resumed, is_state(JobState.CONNECTING))
        states = [JobState(e.data["State"]) for e in events]
        assert JobState.QUEUED in states, states
        daemon.client.cancel(job)
    finally:
        daemon.stop()
