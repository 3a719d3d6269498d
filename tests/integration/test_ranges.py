"""AddFileWithRanges: pieces of a remote file, concatenated, from a real nginx."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon
from tests.support.faults import CloseMidBody, FaultServer, Sequence, Serve
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

EOF_LEN = 0xFFFFFFFFFFFFFFFF


def add_ranges(
    daemon: Daemon, job: str, url: str, local: Path, ranges: list[tuple[int, int]]
) -> tuple[int, Any]:
    body = {
        "RemoteUrl": url,
        "LocalFile": str(local),
        "Ranges": [{"InitialOffset": o, "Length": n} for o, n in ranges],
    }
    return daemon.api("POST", f"{CLASS}/{job}/AddFileWithRanges", body)


def test_ranges_are_concatenated_including_one_to_the_end(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "ranges/f.bin", 1_000_000, seed=140)
    data = (nginx.www / "ranges/f.bin").read_bytes()
    ranges = [(10, 100), (500_000, 123_456), (999_000, EOF_LEN)]
    job = daemon.client.create_job("ranges").job_id
    status, body = add_ranges(daemon, job, f"{nginx.url}/ranges/f.bin", dest / "r.bin", ranges)
    assert (status, body["ReturnValue"]) == (200, 0)
    shown = daemon.job(job)["Files"][0]
    assert shown["Ranges"] == [{"InitialOffset": o, "Length": n} for o, n in ranges]
    daemon.client.resume(job)
    done = daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    expected = data[10:110] + data[500_000:623_456] + data[999_000:]
    assert (dest / "r.bin").read_bytes() == expected
    assert done["Files"][0]["BytesTotal"] == len(expected)
    asked = [r["range"] for r in nginx.requests() if r["uri"] == "/ranges/f.bin"]
    # the two bounded ranges in one multipart/byteranges request, the open-ended one alone
    assert asked[-2:] == ["bytes=10-109,500000-623455", "bytes=999000-"]


def test_bad_ranges_are_refused(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    job = daemon.client.create_job("bad ranges").job_id
    url = f"{nginx.url}/ranges/f.bin"
    for ranges, name in (
        ([(0, 10), (5, 10)], "BG_E_OVERLAPPING_RANGES"),
        ([(0, 10), (0, 10)], "BG_E_OVERLAPPING_RANGES"),
        ([(0, EOF_LEN), (100, 10)], "BG_E_OVERLAPPING_RANGES"),
        ([(0, 0)], "BG_E_INVALID_RANGE"),
        ([], "E_INVALIDARG"),
        ([(i * 10, 5) for i in range(501)], "BG_E_TOO_MANY_RANGES_IN_FILE"),
    ):
        status, body = add_ranges(daemon, job, url, dest / "x.bin", ranges)
        assert status >= 400 and body["Name"] == name, (ranges[:3], body)
    status, body = add_ranges(daemon, job, "/etc/hostname", dest / "x.bin", [(0, 1)])
    assert body["Name"] == "E_INVALIDARG"
    assert daemon.job(job)["FilesTotal"] == 0


def test_a_range_past_the_end_is_an_error(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "ranges/small.bin", 1000, seed=141)
    job = daemon.client.create_job("past the end").job_id
    add_ranges(daemon, job, f"{nginx.url}/ranges/small.bin", dest / "p.bin", [(0, 10), (5000, 10)])
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert (err.name, err.context) == ("BG_E_INVALID_RANGE", 5)


def test_a_range_resumes_inside_itself_after_an_interruption(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(142).randbytes(3_000_000)
    # this server answers a multi-range request with the whole file (200), so the ranges are
    # asked one at a time; the second range's first answer is cut after 700,000 bytes of it
    fault_server.routes["/f"] = Sequence(
        Serve(data), Serve(data), CloseMidBody(data, after=1_700_000), Serve(data)
    )
    job = daemon.client.create_job("resume a range").job_id
    add_ranges(daemon, job, f"{fault_server.url}/f", dest / "f.bin", [(100, 1000), (1_000_000, 1_500_000)])
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert (dest / "f.bin").read_bytes() == data[100:1100] + data[1_000_000:2_500_000]
    ranges = [r["headers"].get("range") for r in fault_server.requests]
    assert ranges[0] == "bytes=100-1099,1000000-2499999", ranges
    assert ranges[1:] == ["bytes=100-1099", "bytes=1000000-2499999", "bytes=1700000-2499999"], ranges


def test_a_range_to_the_end_before_others_is_not_fetched_again_after_an_interruption(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    # the range to the end comes first in the output: once the output has gone past it, its
    # length (not stored) is learned from the 416 of a request past the end of the file
    data = random.Random(143).randbytes(1_000_000)
    fault_server.routes["/f"] = Sequence(Serve(data), CloseMidBody(data, after=500), Serve(data))
    job = daemon.client.create_job("range to the end first").job_id
    add_ranges(daemon, job, f"{fault_server.url}/f", dest / "f.bin", [(900_000, EOF_LEN), (0, 1000)])
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert (dest / "f.bin").read_bytes() == data[900_000:] + data[:1000]
    ranges = [r["headers"].get("range") for r in fault_server.requests]
    assert ranges[:2] == ["bytes=900000-", "bytes=0-999"], ranges
    assert ranges[-1] == "bytes=500-999", ranges  # the rest of the second range only
