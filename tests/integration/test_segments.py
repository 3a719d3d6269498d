"""Segmented downloads (SPEC §9, issue 15 item 3) through the real daemon.

A big file from a server that serves byte ranges with a strong ETag (real nginx) moves over
several connections at once, its bytes exact; a SIGKILL mid-file keeps every segment's
durable bytes and the restart fetches only what was not durable; servers that ignore Range,
send another range, or change the content mid-way (in-process faulty servers) never yield
a wrong file; an expected Digest is still verified; MaxConnections 1, or a file below
``segment_min_bytes``, is fetched by one connection as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openbits.model import ErrorContext, JobPriority, JobState
from openbits.transfer.segplan import STEAL_MIN_BYTES
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import (
    CloseMidBody,
    Connection,
    FaultServer,
    IgnoreRange,
    Request,
    Serve,
    WrongContentRange,
)
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx, find_nginx

MiB = 1024 * 1024
SIZE = 64 * MiB


@pytest.fixture
def seg_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that checkpoints every 0.25 s (several checkpoints per second of transfer)."""
    d = Daemon(tmp_path / "state", config={"checkpoint_interval_s": 0.25})
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_https_segments_are_read_and_written_in_blocks(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    daemon = Daemon(tmp_path / "state", env={"SSL_CERT_FILE": str(nginx.ca_path)})
    daemon.start()
    try:
        digest = make_file(nginx.www, "seg/tls.bin", 24 * MiB + 3, seed=1511)
        job = _job(daemon, f"{nginx.https_url}/seg/tls.bin", dest / "tls.bin")
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        assert daemon.client.complete(job) == 0
        assert "in 4 segments" in daemon.log()
    finally:
        daemon.stop()
    assert sha256_file(dest / "tls.bin") == digest
    served = nginx.wait_requests(4, "/seg/tls.bin")
    assert len([r for r in served if r["range"]]) >= 3, served


@pytest.fixture(scope="module")
def paced_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """An nginx whose ``/slow/`` sends 2 MB/s per connection (a 64 MiB file over 4
    connections: about 8 s, so a SIGKILL lands mid-file)."""
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx binary not found")
    base = tmp_path_factory.mktemp("paced")
    with Nginx(base / "work", base / "www", slow_rate="2m", binary=binary) as server:
        yield server


def _job(daemon: Daemon, url: str, local: Path, digest: str | None = None, **props: Any) -> str:
    """A FOREGROUND job (MaxConnections 4 by default) of one file, not resumed yet."""
    client = daemon.client
    job = client.create_job(local.name, priority=JobPriority.FOREGROUND).job_id
    if props:
        client.set_properties(job, **props)
    client.add_file(job, url, str(local), digest=digest)
    return job


def _served(nginx: Nginx, uri: str) -> list[dict[str, Any]]:
    return [dict(r) for r in nginx.requests() if r["uri"] == uri]


def test_a_big_file_moves_in_segments_and_is_exact(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "seg/big.bin", SIZE, seed=1501)
    job = _job(daemon, f"{nginx.url}/seg/big.bin", dest / "big.bin")
    assert daemon.job(job)["MaxConnections"] == 4
    daemon.client.resume(job)
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=120)
    assert final["BytesTransferred"] == final["BytesTotal"] == SIZE
    assert final["FilesTransferred"] == 1
    assert daemon.client.complete(job) == 0
    assert sha256_file(dest / "big.bin") == digest
    wait_until(lambda: len(_served(nginx, "/seg/big.bin")) >= 4, 10, "nginx's log of the segments")
    served = _served(nginx, "/seg/big.bin")
    ranged = [r for r in served if r["range"]]
    assert len(ranged) >= 3, served
    assert len({r["connection"] for r in served}) >= 4, "one connection per segment"
    assert all(r["if_range"] for r in ranged), "each segment is asked If-Range"
    # the first answer is segment 0's stream: one request without Range, none for bytes=0-
    # (nginx logs a request when it ends: segment 0's may come after the others)
    assert [r["range"] for r in served].count(None) == 1, served
    assert not any(r["range"].startswith("bytes=0-") for r in ranged), served
    assert "segments" in daemon.log()


def test_sigkill_keeps_every_segment_and_refetches_only_what_was_not_durable(
    seg_daemon: Daemon, paced_nginx: Nginx, dest: Path
) -> None:
    daemon, nginx = seg_daemon, paced_nginx
    digest = make_file(nginx.www, "seg/kill.bin", SIZE, seed=1502)
    # (with its Digest: the resumed file's hash follows the segments from the durable prefix)
    job = _job(daemon, f"{nginx.url}/slow/seg/kill.bin", dest / "kill.bin", digest=f"sha256:{digest}")
    daemon.client.resume(job)

    def mid() -> int | None:
        done = int(daemon.job(job)["BytesTransferred"])
        return done if done >= 0.35 * SIZE else None

    wait_until(mid, 60, "35% of the file durable")
    before = int(daemon.job(job)["BytesTransferred"])
    daemon.kill()
    assert before <= 0.8 * SIZE, before
    daemon.start()
    after = int(daemon.job(job)["BytesTransferred"])
    assert after >= before, "no checkpointed byte lost"
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=120)
    assert final["BytesTransferred"] == SIZE
    assert daemon.client.complete(job) == 0
    assert sha256_file(dest / "kill.bin") == digest

    # every byte nginx sent: the file once, plus per connection at most 4 MiB: what nginx
    # had handed to the socket (it logs what it wrote, in chunks of up to 2 MiB, into
    # loopback buffers of a few MiB) but was not durable at the kill (2 MB/s for a 0.25 s
    # checkpoint interval and its sync), and what a split segment's request sent past its
    # new end.  Measured: 10.4 MiB over 4 connections.  A refetch from byte 0 would add the
    # 35% (22 MiB) the kill kept.
    uri = "/slow/seg/kill.bin"
    wait_until(lambda: sum(r["bytes_sent"] for r in _served(nginx, uri)) >= SIZE, 20, "the log")
    served = _served(nginx, uri)
    total = sum(r["bytes_sent"] for r in served)
    assert total <= SIZE + 4 * 4 * MiB, (total, served)
    resumed = [r for r in served if r["range"] and not r["range"].startswith("bytes=0-")]
    assert len({r["connection"] for r in served}) >= 4 and resumed


@dataclass
class ChangesAfterFirst(Serve):
    """A server whose content changes (a new ETag) right after it began the first answer;
    ``lying``: it ignores If-Range and sends 206s of the new content."""

    new: bytes = b""
    lying: bool = False
    changed: bool = False

    def if_range_ok(self, req: Request) -> bool:
        return True if self.lying else super().if_range_ok(req)

    async def respond(self, req: Request, conn: Connection) -> bool:
        if self.changed or req.headers.get("range"):
            return await super().respond(req, conn)
        old = self.data
        planned = self.plan(req)
        assert planned is not None
        await conn.send_head(200, self.head_for(*planned))
        self.data, self.changed = self.new, True  # (the segments are asked of the new content)
        await conn.send_body(old)
        return True


@dataclass
class SlowFrom(Serve):
    """A correct server whose answers to ranges starting at ``slow_start`` trickle (64 KiB
    every 50 ms): the other connections finish first and take half of that segment."""

    slow_start: int = 0

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is None or planned[:2] != (206, self.slow_start):
            return await super().respond(req, conn)
        status, start, end = planned
        await conn.send_head(status, self.head_for(status, start, end))
        for at in range(start, end, 64 * 1024):
            await conn.send_body(memoryview(self.data)[at : min(at + 64 * 1024, end)])
            await asyncio.sleep(0.05)  # (the server's pace, not a synchronisation)
        return True


def test_a_free_connection_takes_half_of_a_slow_segment(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # 4 segments of 4 MiB; the second one's server is slow
    data = _bytes(size, 1508)
    with FaultServer({"/f": SlowFrom(data, slow_start=4 * MiB)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        starts = [
            int(r["headers"]["range"][6:].split("-")[0]) for r in server.requests if r["headers"].get("range")
        ]
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert 4 * MiB in starts
    stolen = [s for s in starts if 4 * MiB + STEAL_MIN_BYTES // 2 <= s < 8 * MiB]
    assert stolen, f"a free connection took the upper half of the slow segment: {starts}"
    assert "split, a free connection takes" in daemon.log()


def tail_asked(ranges: list[str | None], stall_at: int, end: int) -> bool:
    """Whether a range of the first answer's tail was asked: from ``stall_at``, where its
    answer went silent, or from before it when the bytes before had not all been read yet
    when a free connection came to help (a slow machine)."""
    starts = [
        int(value[6:].split("-")[0])
        for value in ranges
        if value and value.startswith("bytes=") and value.endswith(f"-{end - 1}")
    ]
    return any(0 < start <= stall_at for start in starts)


@dataclass
class SilentBeforeEnd(Serve):
    """A correct server that goes silent for ``silent_s`` in its first answer (a whole-file
    200) after ``stall_at`` bytes, as a server pacing in bursts does between two bursts; its
    answer to a range of the first answer's tail asked during that silence (from
    ``stall_at``, or from before it when the client had not read that far yet: a slow
    machine) waits ``tail_silent_s`` before its body."""

    stall_at: int = 0
    silent_s: float = 60.0
    tail_silent_s: float = 0.0
    silent: bool = False  # (the first answer is in its silence)
    delayed_tails: int = 0

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is not None and planned[0] == 200:
            await conn.send_head(planned[0], self.head_for(*planned))
            await conn.send_body(memoryview(self.data)[: self.stall_at])
            self.silent = True
            await asyncio.sleep(self.silent_s)  # (the server's pace, not a synchronisation)
            self.silent = False
            await conn.send_body(memoryview(self.data)[self.stall_at :])
            return True
        tail = planned is not None and planned[0] == 206 and 0 < planned[1] <= self.stall_at
        if planned is not None and tail and self.silent and self.tail_silent_s:
            self.delayed_tails += 1
            await conn.send_head(planned[0], self.head_for(*planned))
            await asyncio.sleep(self.tail_silent_s)  # (the server's pace, not a synchronisation)
            await conn.send_body(memoryview(self.data)[planned[1] : planned[2]])
            return True
        return await super().respond(req, conn)


def test_a_free_connection_fetches_the_tail_of_a_silent_segment(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # 4 segments of 4 MiB; segment 0 (the first answer) goes silent 5000 bytes short
    data = _bytes(size, 1511)
    stall_at = 4 * MiB - 5000
    with FaultServer({"/f": SilentBeforeEnd(data, stall_at=stall_at)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=20)  # (not the 60 s of silence)
        ranges = [r["headers"].get("range") for r in server.requests]
    assert final["BytesTransferred"] == size
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert tail_asked(ranges, stall_at, 4 * MiB), ranges
    assert "a free connection also fetches the tail" in daemon.log()


def test_a_silent_segment_that_resumes_first_ends_its_tails_helper(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # segment 0 silent 3 s before its last 5000 bytes; the tail's answer 60 s
    data = _bytes(size, 1512)
    stall_at = 4 * MiB - 5000
    behaviour = SilentBeforeEnd(data, stall_at=stall_at, silent_s=3.0, tail_silent_s=60.0)
    with FaultServer({"/f": behaviour}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=20)  # (not the tail's 60 s)
        ranges = [r["headers"].get("range") for r in server.requests]
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert tail_asked(ranges, stall_at, 4 * MiB), f"the tail was asked of a second connection: {ranges}"
    assert "a free connection also fetches the tail" in daemon.log()
    assert behaviour.delayed_tails >= 1, "the tail was asked during the silence, and held"


def test_a_connection_that_fails_leaves_its_segment_to_the_others(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # 4 segments of 4 MiB; the first answer (segment 0) stops at 2 MiB + 7
    data = _bytes(size, 1509)
    with FaultServer({"/f": CloseMidBody(data, after=2 * MiB + 7)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        final = daemon.wait_state(job, {JobState.TRANSFERRED, JobState.TRANSIENT_ERROR}, timeout=30)
        assert JobState(final["State"]) is JobState.TRANSFERRED, daemon.client.get_error(job)
        ranges = [r["headers"].get("range") for r in server.requests]
    assert final["TransientErrorCount"] == 0, "the file went on, on the other connections"
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert f"bytes={2 * MiB + 7}-{4 * MiB - 1}" in ranges, "the rest of segment 0, from where it stopped"
    assert "a connection gave up" in daemon.log()


@dataclass
class CutFirstRefuseRanges(CloseMidBody):
    """The first answer cut at ``after``, and every range refused (503) while ``refusing``:
    each connection fails, so the file does."""

    refusing: bool = True
    retry_after: str | None = None
    cut_last: bool = False  # (the first answer cut only once three ranges were refused)
    refused: int = 0
    three_refused: asyncio.Event = field(default_factory=asyncio.Event)

    async def interrupt(self, conn: Connection) -> None:
        if self.cut_last:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.three_refused.wait(), 10)
        await super().interrupt(conn)

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if self.refusing and planned is not None and planned[0] == 206:
            extra = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            await conn.send_head(503, {"Content-Length": "0", **extra})
            self.refused += 1
            if self.refused >= 3:
                self.three_refused.set()
            return True
        return await super().respond(req, conn)


def test_a_failed_segmented_file_keeps_every_segments_bytes_for_the_retry(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB
    data = _bytes(size, 1510)
    behaviour = CutFirstRefuseRanges(data, after=2 * MiB + 7)
    with FaultServer({"/f": behaviour}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSIENT_ERROR, timeout=30)
        err = daemon.client.get_error(job)
        # (the last connection's error is the file's: the cut, or a 503 if the cut came first)
        assert err.hresult in (0x8020002E, 0x801901F7), err  # not an internal error
        kept = int(daemon.job(job)["BytesTransferred"])
        assert kept >= 2 * MiB + 7, "what arrived of segment 0 is kept"
        behaviour.refusing = False
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
        ranges = [r["headers"].get("range") for r in server.requests]
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert f"bytes={2 * MiB + 7}-{4 * MiB - 1}" in ranges, ranges


@pytest.mark.parametrize(
    ("retry_after", "cut_last"),
    [(None, False), ("30", False), ("30", True)],
    ids=["none", "30", "30-cut-last"],
)
def test_the_last_connection_tries_again_only_where_the_server_allows(
    daemon: Daemon, dest: Path, retry_after: str | None, cut_last: bool
) -> None:
    """Without Retry-After the last connection tries a few times more, a moment apart; a
    503 asking for 30 s on any connection fails the file at once with that 503 (even when the
    last connection's own error is the first answer's cut), for the job's retry to wait it."""
    size = 16 * MiB
    behaviour = CutFirstRefuseRanges(
        _bytes(size, 1513), after=2 * MiB + 7, retry_after=retry_after, cut_last=cut_last
    )
    with FaultServer({"/f": behaviour}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSIENT_ERROR, timeout=30)
        refused = sum(1 for r in server.requests if r["headers"].get("range"))
    tried_again = "the last connection failed" in daemon.log()
    if retry_after is None:
        assert tried_again, daemon.log()
    else:
        assert not tried_again, "a Retry-After of 30 s was not answered within the second"
        assert daemon.client.get_error(job).hresult == 0x801901F7  # BG_E_HTTP_ERROR_503
        assert refused <= 4, f"{refused} ranges asked: one per connection at most"


def _bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("kind", ["ignores-range", "wrong-range", "changes", "changes-lying"])
def test_a_server_that_does_not_serve_ranges_well_never_yields_a_wrong_file(
    daemon: Daemon, dest: Path, kind: str
) -> None:
    size = 16 * MiB
    data, new = _bytes(size, 1503), _bytes(size, 1504)
    behaviour: Serve = {
        "ignores-range": IgnoreRange(data),
        "wrong-range": WrongContentRange(data, shift=4096),
        "changes": ChangesAfterFirst(data, new=new),
        "changes-lying": ChangesAfterFirst(data, new=new, lying=True),
    }[kind]
    expected = new if kind.startswith("changes") else data
    with FaultServer({"/f": behaviour}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        requests = server.requests
    assert final["BytesTransferred"] == size
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(expected).digest()
    assert any(r["headers"].get("range") for r in requests), "segments were asked"
    assert requests[-1]["headers"].get("range") is None, "then one stream from byte 0"
    assert "one stream from byte 0" in daemon.log()


@pytest.mark.parametrize("right", [True, False])
def test_an_expected_digest_is_verified_over_the_segments(
    daemon: Daemon, nginx: Nginx, dest: Path, right: bool
) -> None:
    size = 24 * MiB
    hex_digest = make_file(nginx.www, f"seg/digest-{right}.bin", size, seed=1505)
    digest = "sha256:" + (hex_digest if right else "00" * 32)
    local = dest / "d.bin"
    job = _job(daemon, f"{nginx.url}/seg/digest-{right}.bin", local, digest=digest)
    daemon.client.resume(job)
    if right:
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        assert daemon.client.complete(job) == 0
        assert sha256_file(local) == hex_digest
        shown = base64.b64encode(bytes.fromhex(hex_digest)).decode()
        assert f"sha-256=:{shown}:" in (daemon.job(job)["Files"][0].get("Digest") or "")
    else:
        daemon.wait_state(job, JobState.ERROR, timeout=60)
        err = daemon.client.get_error(job)
        assert err.hresult == 0x80200053 and err.context is ErrorContext.REMOTE_FILE
        assert daemon.job(job)["Files"][0]["BytesTransferred"] == 0
        assert not [p for p in dest.iterdir() if p.name.startswith(".BIT")]
    ranged = [r for r in nginx.requests() if r["uri"] == f"/seg/digest-{right}.bin" and r["range"]]
    assert ranged, "fetched in segments"


def test_files_at_once_share_the_connections_between_their_segments(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    # the first file goes alone (its size unknown before) on all 4 connections; the two
    # others then go at once (files_at_once), 2 connections each, in segments
    digests = [make_file(nginx.www, f"seg/three/{i}.bin", 16 * MiB + i, seed=1510 + i) for i in range(3)]
    client = daemon.client
    job = client.create_job("three", priority=JobPriority.FOREGROUND).job_id  # MaxConnections 4
    client.add_file_set(job, [(f"{nginx.url}/seg/three/{i}.bin", str(dest / f"{i}.bin")) for i in range(3)])
    client.resume(job)
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == 3 and final["BytesTransferred"] == 48 * MiB + 3
    assert client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(3)] == digests
    for i in range(3):
        served = nginx.wait_requests(2, f"/seg/three/{i}.bin")
        assert any(r["range"] for r in served), f"file {i} in segments: {served}"
    assert daemon.log().count("in 2 segments") == 2, "the two at once: 2 connections each"


def test_one_connection_or_a_small_file_is_one_stream(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    big = make_file(nginx.www, "seg/one.bin", 16 * MiB, seed=1506)
    small = make_file(nginx.www, "seg/small.bin", 6 * MiB, seed=1507)
    one = _job(daemon, f"{nginx.url}/seg/one.bin", dest / "one.bin", MaxConnections=1)
    few = _job(daemon, f"{nginx.url}/seg/small.bin", dest / "small.bin")
    for job in (one, few):
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        assert daemon.client.complete(job) == 0
    assert sha256_file(dest / "one.bin") == big and sha256_file(dest / "small.bin") == small
    for uri in ("/seg/one.bin", "/seg/small.bin"):
        served = nginx.wait_requests(1, uri)
        assert len(served) == 1 and served[0]["range"] is None, served


def test_spare_connections_do_not_fetch_a_segment_twice_from_the_start(daemon: Daemon, dest: Path) -> None:
    size = 9 * MiB  # over segment_min_bytes (8 MiB): 9 segments of 1 MiB on 16 connections
    data = _bytes(size, 1513)
    with FaultServer({"/f": Serve(data)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin", MaxConnections=16)
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=20)
        ranges = [r["headers"].get("range") for r in server.requests if r["headers"].get("range")]
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert len(ranges) == len(set(ranges)), f"ranges asked twice: {sorted(ranges)}"


@dataclass
class TailRefused(SilentBeforeEnd):
    """``SilentBeforeEnd`` (its first answer silent ``silent_s`` before its last bytes) whose
    answer to the tail's range (from ``stall_at``) is a 503: a busy server refusing one more."""

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is not None and planned[:2] == (206, self.stall_at):
            await conn.send_head(503, {"Content-Length": "0"})
            return True
        return await super().respond(req, conn)


def test_a_refused_tail_request_does_not_fail_the_file(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # segment 0 silent 1 s before its last 5000 bytes; the tail's range: 503
    data = _bytes(size, 1514)
    stall_at = 4 * MiB - 5000
    with FaultServer({"/f": TailRefused(data, stall_at=stall_at, silent_s=1.0)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        states = {JobState.TRANSFERRED, JobState.TRANSIENT_ERROR, JobState.ERROR}
        final = daemon.wait_state(job, states, timeout=20)
    assert JobState(final["State"]) is JobState.TRANSFERRED, final
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_segmented_file_resumed_after_sigkill_is_still_checked_against_the_servers_repr_digest(
    seg_daemon: Daemon, paced_nginx: Nginx, dest: Path
) -> None:
    """The first answer's Repr-Digest is kept with the file: the segments' 206s after a
    restart are not read for it, and the file is still checked (here: a digest of no bytes,
    so the check must fail)."""
    daemon, nginx = seg_daemon, paced_nginx
    make_file(nginx.www, "seg/lying.bin", SIZE, seed=1520)
    job = _job(daemon, f"{nginx.url}/lying-digest/seg/lying.bin", dest / "lying.bin")
    daemon.client.resume(job)
    wait_until(lambda: int(daemon.job(job)["BytesTransferred"]) >= 0.35 * SIZE, 60, "35% of the file durable")
    daemon.kill()
    daemon.start()
    final = daemon.wait_state(job, {JobState.ERROR, JobState.TRANSFERRED}, timeout=120)
    assert JobState(final["State"]) is JobState.ERROR, "a resumed file was not checked"
    assert daemon.client.get_error(job).hresult == 0x80200053  # BG_E_VALIDATION_FAILED
    assert not (dest / "lying.bin").exists()


@dataclass
class OneConnectionPerClient(Serve):
    """A correct server that serves one answer at a time per client, as nginx's
    ``limit_conn addr 1`` (or a mirror's per-IP cap) does: a request that comes while
    another answer is being sent is refused with a 503; its body is sent in paced slices."""

    busy: int = 0

    async def respond(self, req: Request, conn: Connection) -> bool:
        if self.busy:
            await conn.send_head(503, {"Content-Length": "0"})
            return True
        planned = self.plan(req)
        if planned is None:
            return await super().respond(req, conn)
        self.busy += 1
        try:
            status, start, end = planned
            await conn.send_head(status, self.head_for(status, start, end))
            for at in range(start, end, MiB):
                await conn.send_body(memoryview(self.data)[at : min(at + MiB, end)])
                await asyncio.sleep(0.01)  # (the server's pace, not a synchronisation)
        finally:
            self.busy -= 1
        return True


def test_a_server_that_refuses_extra_connections_still_yields_the_file(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # 4 segments of 4 MiB; only the first answer is served, the ranges get 503s
    data = _bytes(size, 1519)
    with FaultServer({"/f": OneConnectionPerClient(data)}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        states = {JobState.TRANSFERRED, JobState.TRANSIENT_ERROR, JobState.ERROR}
        final = daemon.wait_state(job, states, timeout=30)
        assert JobState(final["State"]) is JobState.TRANSFERRED, daemon.client.get_error(job)
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


@dataclass
class OwnerCutWhileTailRefused(SilentBeforeEnd):
    """``SilentBeforeEnd`` whose first answer (segment 0) is cut (FIN) once the tail's range
    is asked, and whose first answer to that range is a 503 a moment later: the segment's own
    connection gives up while a twin is counted among those at work, then the twin fails."""

    refused: int = 0
    _asked: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._asked is None:
            self._asked = asyncio.Event()
        return self._asked

    async def respond(self, req: Request, conn: Connection) -> bool:
        planned = self.plan(req)
        if planned is not None and planned[:2] == (206, self.stall_at) and not self.refused:
            self.refused += 1
            self._event().set()
            await asyncio.sleep(0.3)  # (the server's pace: the cut reaches the client first)
            await conn.send_head(503, {"Content-Length": "0"})
            return True
        if planned is None or planned[0] != 200:
            return await super().respond(req, conn)
        await conn.send_head(planned[0], self.head_for(*planned))
        await conn.send_body(memoryview(self.data)[: self.stall_at])
        await self._event().wait()
        conn.writer.close()
        with contextlib.suppress(OSError):
            await conn.writer.wait_closed()
        return False


def test_a_segment_whose_connection_and_twin_both_fail_is_still_fetched(daemon: Daemon, dest: Path) -> None:
    size = 16 * MiB  # 4 segments; segment 0 silent 5000 bytes short, cut when its tail is asked
    data = _bytes(size, 1530)
    stall_at = 4 * MiB - 5000
    behaviour = OwnerCutWhileTailRefused(data, stall_at=stall_at, silent_s=60.0)
    with FaultServer({"/f": behaviour}) as server:
        job = _job(daemon, f"{server.url}/f", dest / "f.bin")
        daemon.client.resume(job)
        states = {JobState.TRANSFERRED, JobState.TRANSIENT_ERROR, JobState.ERROR}
        final = daemon.wait_state(job, states, timeout=20)
        assert behaviour.refused == 1, "the tail was asked of a second connection"
        assert JobState(final["State"]) is JobState.TRANSFERRED, daemon.client.get_error(job)
    assert daemon.client.complete(job) == 0
    assert hashlib.sha256((dest / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
