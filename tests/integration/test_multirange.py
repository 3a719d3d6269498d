"""AddFileWithRanges: several ranges in one request (multipart/byteranges), and what the
downloader does when the answer is not the parts asked for."""

from __future__ import annotations

import random
from pathlib import Path

from openbits.model import JobState
from tests.integration.test_ranges import add_ranges
from tests.support.daemon import Daemon
from tests.support.faults import Connection, FaultServer, Request, Sequence, Serve, ServeMultipart
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

MiB = 1024 * 1024
INVALID_SERVER_RESPONSE = 0x8020001B  # BG_E_INVALID_SERVER_RESPONSE
CONNECTION_CLOSED = 0x8020002E  # BG_E_CONNECTION_CLOSED
REMOTE_FILE = 5  # BG_ERROR_CONTEXT_REMOTE_FILE

#: five small ranges out of source order, for the fault-server tests
FIVE = [(700_000, 20_000), (5, 30_000), (400_000, 25_000), (100_000, 15_000), (900_000, 10_000)]


def spec(ranges: list[tuple[int, int]]) -> str:
    """The Range header asking for ``ranges`` (offset, length), in their order."""
    return "bytes=" + ",".join(f"{o}-{o + n - 1}" for o, n in ranges)


def pieces(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    return b"".join(data[o : o + n] for o, n in ranges)


def start(daemon: Daemon, url: str, local: Path, ranges: list[tuple[int, int]]) -> str:
    job = daemon.client.create_job(local.name).job_id
    status, body = add_ranges(daemon, job, url, local, ranges)
    assert (status, body["ReturnValue"]) == (200, 0), body
    daemon.client.resume(job)
    return job


def finish(daemon: Daemon, job: str) -> None:
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)


def asked(server: FaultServer) -> list[str | None]:
    return [r["headers"].get("range") for r in server.requests]


def random_data(seed: int, size: int = MiB) -> bytes:
    return random.Random(seed).randbytes(size)


# -- nginx -------------------------------------------------------------------------------------


def test_small_ranges_go_in_one_request_in_the_order_given(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "multi/ten.bin", 1_000_000, seed=300)
    data = (nginx.www / "multi/ten.bin").read_bytes()
    offsets = [900_000, 10, 500_000, 250_000, 999_000, 120_000, 60_000, 750_000, 333_333, 1_000]
    ranges = [(o, 100 + 7 * i) for i, o in enumerate(offsets)]
    job = start(daemon, f"{nginx.url}/multi/ten.bin", dest / "ten.bin", ranges)
    finish(daemon, job)
    assert (dest / "ten.bin").read_bytes() == pieces(data, ranges)
    log = [r for r in nginx.requests() if r["uri"] == "/multi/ten.bin"]
    assert [(r["range"], r["status"]) for r in log] == [(spec(ranges), 206)]


def test_seventy_ranges_take_two_requests_of_64_and_6(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "multi/seventy.bin", 1_000_000, seed=301)
    data = (nginx.www / "multi/seventy.bin").read_bytes()
    ranges = [(i * 14_000 + 3, 50 + i) for i in range(70)]
    assert len(spec(ranges[:64])) < 2000  # the 64-range limit splits them, not the header length
    job = start(daemon, f"{nginx.url}/multi/seventy.bin", dest / "seventy.bin", ranges)
    finish(daemon, job)
    assert (dest / "seventy.bin").read_bytes() == pieces(data, ranges)
    log = [r["range"] for r in nginx.requests() if r["uri"] == "/multi/seventy.bin"]
    assert log == [spec(ranges[:64]), spec(ranges[64:])]


def test_a_range_over_16_mib_is_asked_alone(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "multi/big.bin", 20 * MiB, seed=302)
    data = (nginx.www / "multi/big.bin").read_bytes()
    big = (1_000, 16 * MiB + 1)
    ranges = [(0, 100), (200, 100), big, (19 * MiB, 100), (19 * MiB + 1_000, 100)]
    job = start(daemon, f"{nginx.url}/multi/big.bin", dest / "big.bin", ranges)
    finish(daemon, job)
    assert (dest / "big.bin").read_bytes() == pieces(data, ranges)
    log = [r["range"] for r in nginx.requests() if r["uri"] == "/multi/big.bin"]
    assert log == [spec(ranges[:2]), spec([big]), spec(ranges[3:])]


# -- servers that answer multipart/byteranges, honestly or not ----------------------------------


def test_an_honest_multipart_answer_is_taken_in_one_request(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(310)
    fault_server.routes["/f"] = ServeMultipart(data)
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE)]
    assert not fault_server.errors


def test_a_short_part_is_an_invalid_response_and_none_of_it_is_kept(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(311)
    lying = ServeMultipart(data, short_part=2, short_by=500)
    fault_server.routes["/f"] = Sequence(lying, ServeMultipart(data))
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    failed = daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert (err.hresult, err.context) == (INVALID_SERVER_RESPONSE, REMOTE_FILE), err
    # At most the two parts before the short one are kept, nothing of it: the parts confirmed
    # by their delimiter are checkpointed unless the parser saw the bad framing in the same
    # read as them (then none are; it depends on how the body arrived).
    kept = failed["Files"][0]["BytesTransferred"]
    boundaries = [sum(n for _, n in FIVE[:i]) for i in range(3)]
    assert kept in boundaries, kept
    daemon.client.resume(job)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE), spec(FIVE[boundaries.index(kept) :])]
    assert fault_server.requests[1]["headers"].get("if-range") == lying.current_etag()


def test_a_part_that_is_not_the_range_asked_falls_back_to_one_range_per_request(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(312)
    fault_server.routes["/f"] = ServeMultipart(data, wrong_range=0)
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE)] + [spec([r]) for r in FIVE]


def test_reordered_parts_fall_back_to_one_range_per_request(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(313)
    fault_server.routes["/f"] = ServeMultipart(data, reorder=True)
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE)] + [spec([r]) for r in FIVE]


class _Coalescing(Serve):
    """Answers a multi-range request with one 206 part from the first byte asked to the last
    (as a server that merges ranges may), and single ranges as Serve does."""

    async def respond(self, req: Request, conn: Connection) -> bool:
        wanted = req.headers.get("range", "")
        if "," not in wanted:
            return await super().respond(req, conn)
        bounds = [int(b) for r in wanted.removeprefix("bytes=").split(",") for b in r.split("-")]
        first, last = min(bounds), max(bounds)
        head = self.head_for(206, first, last + 1)
        await conn.send_head(206, head)
        await conn.send_body(self.data[first : last + 1])
        return True


def test_a_single_part_answer_to_several_ranges_falls_back_to_one_range_per_request(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(314)
    ranges = [(1_000, 2_000), (10_000, 3_000), (20_000, 4_000)]
    fault_server.routes["/f"] = _Coalescing(data)
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", ranges)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, ranges)
    assert asked(fault_server) == [spec(ranges)] + [spec([r]) for r in ranges]


def test_a_whole_200_answer_to_several_ranges_falls_back_to_one_range_per_request(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(315)
    fault_server.routes["/f"] = Serve(data)  # a multi-range request gets 200 and everything
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE)] + [spec([r]) for r in FIVE]


def test_a_missing_closing_delimiter_is_an_invalid_response(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(316)
    fault_server.routes["/f"] = Sequence(ServeMultipart(data, no_closing=True), ServeMultipart(data))
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    failed = daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert (err.hresult, err.context) == (INVALID_SERVER_RESPONSE, REMOTE_FILE), err
    # the last part is never confirmed by a delimiter: it is not kept
    assert failed["Files"][0]["BytesTransferred"] == sum(n for _, n in FIVE[:-1])
    daemon.client.resume(job)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE), spec(FIVE[-1:])]


def test_a_cut_inside_part_3_resumes_at_part_3(daemon: Daemon, fault_server: FaultServer, dest: Path) -> None:
    data = random_data(317)
    cut = ServeMultipart(data)
    _, starts = cut.multipart_body([(o, o + n - 1) for o, n in FIVE])
    cut.close_after = starts[2] + FIVE[2][1] // 2
    fault_server.routes["/f"] = Sequence(cut, ServeMultipart(data))
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    failed = daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == CONNECTION_CLOSED, err
    assert failed["Files"][0]["BytesTransferred"] == FIVE[0][1] + FIVE[1][1]
    daemon.client.resume(job)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE), spec(FIVE[2:])]


# -- what looked wrong ---------------------------------------------------------------------------


def test_a_part_one_byte_short_never_makes_a_wrong_file(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(318)
    assert data[FIVE[2][0] + FIVE[2][1] - 1] != 0x0D  # the lost byte is not a CR by chance
    fault_server.routes["/f"] = Sequence(ServeMultipart(data, short_part=2, short_by=1), ServeMultipart(data))
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    state = daemon.wait_state(job, (JobState.ERROR, JobState.TRANSFERRED))
    if JobState(state["State"]) is JobState.ERROR:
        assert daemon.client.get_error(job).hresult == INVALID_SERVER_RESPONSE
        daemon.client.resume(job)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)


def test_the_fallback_does_not_fetch_checkpointed_parts_again(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random_data(319)
    fault_server.routes["/f"] = ServeMultipart(data, wrong_range=2)
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    finish(daemon, job)
    assert (dest / "f.bin").read_bytes() == pieces(data, FIVE)
    assert asked(fault_server) == [spec(FIVE)] + [spec([r]) for r in FIVE[2:]]


def test_parts_of_a_changed_file_are_never_spliced(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    old, new = random_data(320), random_data(321)
    cut = ServeMultipart(old, etag='"v1"')
    _, starts = cut.multipart_body([(o, o + n - 1) for o, n in FIVE])
    cut.close_after = starts[2] + 100
    fault_server.routes["/f"] = Sequence(cut, ServeMultipart(new, etag='"v2"', honour_if_range=False))
    job = start(daemon, f"{fault_server.url}/f", dest / "f.bin", FIVE)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    daemon.client.resume(job)
    state = daemon.wait_state(job, (JobState.ERROR, JobState.TRANSFERRED))
    if JobState(state["State"]) is JobState.ERROR:
        err = daemon.client.get_error(job)
        assert (err.hresult, err.context) == (INVALID_SERVER_RESPONSE, REMOTE_FILE), err
        return
    daemon.client.complete(job)
    assert (dest / "f.bin").read_bytes() == pieces(new, FIVE), "old and new bytes spliced"
