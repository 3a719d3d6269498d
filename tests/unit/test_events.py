"""The event log's parts without a daemon: SSE framing and parsing, types, coalescing,
and the log over a real SQLite store (api/events.py, client.SseParser)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbits.api import events as ev
from openbits.client import SseParser, StreamEvent
from openbits.model import Job, JobFile, JobState
from openbits.store.sqlite import SqliteStore


def parse(text: str) -> tuple[list[StreamEvent], SseParser]:
    parser = SseParser()
    got = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            got.append(event)
    return got, parser


# -- SSE ------------------------------------------------------------------------------------------


def test_a_frame_is_id_event_data_and_a_blank_line() -> None:
    assert ev.sse_frame(7, "JobTransferred", '{"State":6}') == (
        b'id: 7\nevent: JobTransferred\ndata: {"State":6}\n\n'
    )
    assert ev.sse_frame(None, "Reset", "{}") == b"event: Reset\ndata: {}\n\n"
    assert ev.sse_comment("keepalive") == b": keepalive\n\n"


@given(
    st.integers(min_value=0, max_value=2**62),
    st.sampled_from(ev.EVENT_TYPES),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
)
def test_what_the_daemon_frames_the_client_parses_back(event_id: int, kind: str, data: object) -> None:
    text = ev.sse_frame(event_id, kind, json.dumps(data)).decode()
    events, parser = parse(text)
    assert events == [StreamEvent(event_id, kind, data)]
    assert parser.last_event_id == str(event_id)


def test_the_parser_follows_the_sse_rules() -> None:
    text = (
        "retry: 1000\n"
        "id: 41\n"
        "\n"  # an id without data: no event, but the id is kept
        ": a comment\n"
        "data: first line\n"
        "data:second line\n"
        "\n"  # no event name: "message"; no id field: id None, last id unchanged
        "event: Reset\n"
        'data: {"LastEventId": 3}\n'
        "unknown: field\n"
        "\n"
        "id: 42\n"
        "event: JobError\n"
        "data: not json\n"
        "\n"
    )
    events, parser = parse(text)
    assert events == [
        StreamEvent(None, "message", "first line\nsecond line"),
        StreamEvent(None, "Reset", {"LastEventId": 3}),
        StreamEvent(42, "JobError", "not json"),
    ]
    assert parser.retry_ms == 1000 and parser.last_event_id == "42"


def test_multi_line_data_is_framed_as_several_data_lines() -> None:
    frame = ev.sse_frame(1, "JobModification", "a\nb")
    assert frame == b"id: 1\nevent: JobModification\ndata: a\ndata: b\n\n"
    assert parse(frame.decode())[0] == [StreamEvent(1, "JobModification", "a\nb")]


# -- types and data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "state", "kind"),
    [
        ("transferred", JobState.TRANSFERRED, "JobTransferred"),
        ("error", JobState.ERROR, "JobError"),
        ("no progress", JobState.ERROR, "JobError"),
        ("maximum download time exceeded", JobState.ERROR, "JobError"),
        ("transient error", JobState.ERROR, "JobError"),  # NoProgressTimeout ran out at once
        ("transient error", JobState.TRANSIENT_ERROR, "JobModification"),
        ("file transferred", JobState.TRANSFERRING, "FileTransferred"),
        ("files transferred", JobState.TRANSFERRING, "FileTransferred"),
        ("cancelled", JobState.CANCELLED, "JobCancelled"),
        ("acknowledged", JobState.ACKNOWLEDGED, "JobAcknowledged"),
        ("created", JobState.SUSPENDED, "JobModification"),
        ("resumed", JobState.QUEUED, "JobModification"),
        ("properties changed", JobState.SUSPENDED, "JobModification"),
    ],
)
def test_event_types_follow_the_bits_callbacks(what: str, state: JobState, kind: str) -> None:
    assert ev.event_type(what, state) == kind


def test_types_are_parsed_case_insensitively_and_checked() -> None:
    assert ev.parse_types("jobtransferred, JobError") == frozenset({"JobTransferred", "JobError"})
    with pytest.raises(ValueError, match="Bogus"):
        ev.parse_types("JobError,Bogus")


def job_with(files: int, headers: str | None = None) -> Job:
    job = Job(job_id="{00000000-0000-0000-0000-000000000001}", owner="ann", owner_uid=1000)
    job.custom_headers = headers
    job.files = [JobFile(f"https://user:pw@example.com/{i}", f"/tmp/f{i}") for i in range(files)]
    return job


def test_event_data_is_the_instance_without_secrets_and_without_files_of_large_jobs() -> None:
    small = json.loads(ev.event_data(job_with(2, "Authorization: Bearer s3cret\r\n")))
    expected = job_with(2).to_cim()
    del expected["CustomHeaders"]
    assert small == expected
    assert "s3cret" not in json.dumps(small) and "pw@" not in json.dumps(small)
    large = json.loads(ev.event_data(job_with(ev.EVENT_FILES_MAX + 1)))
    assert "Files" not in large and large["FilesTotal"] == ev.EVENT_FILES_MAX + 1


# -- coalescing ----------------------------------------------------------------------------------------


def test_the_first_item_goes_at_once_later_ones_wait_and_the_newest_wins() -> None:
    c: ev.Coalescer[str, str] = ev.Coalescer(0.5)
    assert c.offer("a", "a1", now=10.0) == "a1"
    assert c.offer("a", "a2", now=10.1) is None
    assert c.offer("a", "a3", now=10.2) is None  # replaces a2
    assert c.offer("b", "b1", now=10.2) == "b1"  # per key
    assert c.next_due() == pytest.approx(10.5)
    assert c.take_due(10.49) == []
    assert c.take_due(10.5) == ["a3"]
    assert c.next_due() is None
    # the interval counts from when a3 went
    assert c.offer("a", "a4", now=10.9) is None
    assert c.take_due(11.0) == ["a4"]
    assert c.offer("a", "a5", now=11.6) == "a5"


def test_a_held_item_is_taken_ahead_of_a_state_change() -> None:
    c: ev.Coalescer[str, str] = ev.Coalescer(0.5)
    c.offer("a", "a1", now=0.0)
    c.offer("a", "a2", now=0.1)
    assert c.take("a", now=0.2) == "a2"
    assert c.take("a", now=0.2) is None
    assert c.offer("a", "a3", now=0.3) is None  # counted from the take
    assert c.take_due(0.7) == ["a3"]


def test_forgotten_keys_do_not_accumulate() -> None:
    c: ev.Coalescer[str, str] = ev.Coalescer(0.5)
    c.offer("a", "a1", now=0.0)
    c.forget("a", now=0.1)  # its interval is not over: kept
    assert len(c) == 1
    c.forget("a", now=0.6)
    assert len(c) == 0
    c.offer("b", "b1", now=0.0)
    c.offer("b", "b2", now=0.1)
    c.forget("b", now=5.0)  # something is held: kept
    assert len(c) == 1


# -- the log over a real store ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(str(tmp_path / "jobs.sqlite"))


def test_events_are_numbered_persisted_and_numbering_goes_on_after_a_reopen(
    tmp_path: Path, store: SqliteStore
) -> None:
    log = ev.EventLog(store, min_interval_s=10)
    job = job_with(1)
    log.on_change(job, "created")
    job.state = JobState.QUEUED
    log.on_change(job, "resumed")
    assert log.last_id == 2
    store.close()
    reopened = SqliteStore(str(tmp_path / "jobs.sqlite"))
    log = ev.EventLog(reopened, min_interval_s=10)
    assert (log.oldest_id, log.last_id) == (1, 2)
    job.state = JobState.CANCELLED
    log.on_change(job, "cancelled")
    everything = log.replay(0, log.last_id, ev.EventFilter())
    assert [(e.id, e.type, json.loads(e.data)["State"]) for e in everything] == [
        (1, "JobModification", 3),
        (2, "JobModification", 0),
        (3, "JobCancelled", 8),
    ]
    assert log.replay(0, 3, ev.EventFilter(owner_uid=0)) == []
    assert log.replay(0, 3, ev.EventFilter(types=frozenset({"JobCancelled"})))[0].id == 3
    reopened.close()


def test_progress_is_held_then_sent_ahead_of_the_next_state_change(store: SqliteStore) -> None:
    log = ev.EventLog(store, min_interval_s=60)
    sub = log.subscribe(ev.EventFilter())
    job = job_with(1)
    job.state = JobState.TRANSFERRING
    for done in (100, 200, 300):
        job.files[0].bytes_transferred = done
        log.on_change(job, "progress")
    assert log.last_id == 1  # the first went at once, the others are held (newest kept)
    job.files[0].bytes_transferred = 400
    job.files[0].completed = True
    log.on_change(job, "file transferred")
    kinds = [(e.type, json.loads(e.data)["BytesTransferred"]) for e in log.replay(0, 9, ev.EventFilter())]
    assert kinds == [("JobModification", 100), ("JobModification", 300), ("FileTransferred", 400)]
    assert sub.horizon == 0


def test_held_progress_goes_out_when_its_time_comes(store: SqliteStore) -> None:
    async def scenario() -> list[tuple[int, str, int]]:
        log = ev.EventLog(store, min_interval_s=0.05)
        sub = log.subscribe(ev.EventFilter())
        job = job_with(1)
        job.state = JobState.TRANSFERRING
        for done in (1, 2, 3):
            job.files[0].bytes_transferred = done
            log.on_change(job, "progress")
        got = []
        while len(got) < 2:
            event = await sub.get(5.0)
            assert event is not None, "the held progress never went out"
            got.append((event.id, event.type, json.loads(event.data)["BytesTransferred"]))
        log.close()
        return got

    assert asyncio.run(scenario()) == [(1, "JobModification", 1), (2, "JobModification", 3)]


def test_the_log_keeps_the_newest_events_and_knows_what_a_client_missed(store: SqliteStore) -> None:
    log = ev.EventLog(store, size=10, min_interval_s=10)
    job = job_with(0)
    for _ in range(100):
        log.on_change(job, "properties changed")
    oldest, newest = store.event_bounds()
    assert newest == log.last_id == 100
    assert 10 <= newest - oldest + 1 < 10 + 64 + 1 and oldest == log.oldest_id
    assert not log.missed(100) and not log.missed(oldest - 1)
    assert log.missed(oldest - 2) and log.missed(0)
    assert log.missed(101), "an id this log never issued"
    assert [e.id for e in log.replay(95, 100, ev.EventFilter())] == [96, 97, 98, 99, 100]


def test_a_subscriber_that_falls_behind_is_closed_not_grown(store: SqliteStore) -> None:
    log = ev.EventLog(store, min_interval_s=10)
    sub = log.subscribe(ev.EventFilter(), limit=5)
    job = job_with(0)
    for _ in range(8):
        log.on_change(job, "properties changed")
    assert sub.closed == "overflow" and log.subscribers == 0

    async def drain() -> list[int]:
        got = []
        while (event := await sub.get(0.01)) is not None:
            got.append(event.id)
        return got

    assert asyncio.run(drain()) == [1, 2, 3, 4, 5]


def test_a_filter_shows_one_owner_one_job_some_types() -> None:
    event = ev.LoggedEvent(1, "ann", 1000, "{J}", "JobError", "{}", 0)
    assert ev.EventFilter().matches(event)
    assert ev.EventFilter(owner_uid=1000, job_id="{J}", types=frozenset({"JobError"})).matches(event)
    assert not ev.EventFilter(owner_uid=0).matches(event)
    assert not ev.EventFilter(job_id="{K}").matches(event)
    assert not ev.EventFilter(types=frozenset({"JobTransferred"})).matches(event)
