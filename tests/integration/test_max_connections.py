"""MaxConnections (SPEC §9): the property end to end, and a job's files moving at once.

A FOREGROUND job moves up to MaxConnections files at once over connections of their own
(real nginx, its ``/slow/`` location capping each connection); FilesTransferred, the
FileTransferred events and every file's bytes stay exact, and a SIGKILL mid-job loses no
checkpointed byte of any file.  Background priorities keep BITS's one file at a time.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from openbits.client import Client, StreamEvent
from openbits.errors import BitsError
from openbits.model import JobPriority, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

KiB = 1024
MiB = 1024 * KiB


def _files_job(
    daemon: Daemon, nginx: Nginx, dest: Path, name: str, count: int, size: int, **props: Any
) -> tuple[str, list[str]]:
    """A job of ``count`` files of ``size`` bytes from nginx's throttled ``/slow/`` (1 MB/s
    per connection): its JobId and the files' digests.  Not resumed yet."""
    digests = [make_file(nginx.www, f"{name}/{i}.bin", size + i, seed=900 + i) for i in range(count)]
    client = daemon.client
    job = client.create_job(name).job_id
    if props:
        client.set_properties(job, **props)
    client.add_file_set(
        job, [(f"{nginx.url}/slow/{name}/{i}.bin", str(dest / f"{i}.bin")) for i in range(count)]
    )
    return job, digests


def _partial(instance: dict[str, Any]) -> list[int]:
    """The files with checkpointed bytes that are not complete yet."""
    return [i for i, f in enumerate(instance["Files"]) if f["BytesTransferred"] > 0 and not f["Completed"]]


class _Events:
    """A job's events, read in a thread until it is TRANSFERRED."""

    def __init__(self, daemon: Daemon) -> None:
        self.stream = Client(daemon.socket).events(timeout=60)
        self.events: list[StreamEvent] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for event in self.stream:
            self.events.append(event)
            if isinstance(event.data, dict) and event.data.get("State") == JobState.TRANSFERRED:
                return

    def of(self, job: str) -> list[StreamEvent]:
        self.thread.join(60)
        self.stream.close()
        return [e for e in self.events if isinstance(e.data, dict) and e.data.get("JobId") == job]


def test_the_property_defaults_by_priority_is_set_by_patch_and_persists(daemon: Daemon) -> None:
    client = daemon.client
    job = client.create_job("mc").job_id
    assert daemon.job(job)["MaxConnections"] == 1, "background priorities: one file at a time"
    client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    assert daemon.job(job)["MaxConnections"] == 4, "FOREGROUND: 4 by default"
    for bad in (0, 33, -1, "4", True):
        with pytest.raises(BitsError) as info:
            client.set_properties(job, MaxConnections=bad)
        assert info.value.hresult == 0x80070057, bad  # E_INVALIDARG
    assert client.set_max_connections(job, 32).max_connections == 32
    client.set_properties(job, Priority=int(JobPriority.LOW))
    assert daemon.job(job)["MaxConnections"] == 32, "as set, whatever the priority"
    daemon.cli("set", job, "--max-connections", "7", check=True)
    assert daemon.cli("set", job, "--max-connections", "33").returncode != 0
    daemon.kill()
    daemon.start()
    assert daemon.job(job)["MaxConnections"] == 7, "stored"
    assert daemon.client.get_job(job).max_connections == 7
    shown = daemon.client.set_policy(MaxConnectionsPerJob=2)
    assert shown["MaxConnectionsPerJob"] == 2
    with pytest.raises(BitsError):
        daemon.client.set_policy(MaxConnectionsPerJob=0)
    daemon.stop()
    daemon.start()
    assert daemon.client.policy()["MaxConnectionsPerJob"] == 2, "the cap persists"


def test_foreground_files_move_at_once_with_exact_counts_and_events(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    count = 8
    job, digests = _files_job(
        daemon, nginx, dest, "mc-at-once", count, 4 * MiB, Priority=int(JobPriority.FOREGROUND)
    )
    assert daemon.job(job)["MaxConnections"] == 4
    events = _Events(daemon)
    daemon.client.resume(job)
    # at 1 MB/s per connection, one file at a time would never have several in flight
    # one file at a time would never have several checkpointed but unfinished files
    wait_until(lambda: len(_partial(daemon.job(job))) >= 3, 30, "3 files in flight at once")
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == final["FilesTotal"] == count
    assert final["BytesTransferred"] == final["BytesTotal"] == sum(4 * MiB + i for i in range(count))
    got = events.of(job)
    transferred = [e.data for e in got if e.event == "FileTransferred"]
    assert transferred, [e.event for e in got]
    counts = [d["FilesTransferred"] for d in transferred]
    assert counts == sorted(set(counts)) and counts[-1] == count, counts
    for data in transferred:  # each event's instance is exactly what the store holds
        assert data["FilesTransferred"] == sum(1 for f in data["Files"] if f["Completed"])
        assert all(f["BytesTransferred"] == f["BytesTotal"] for f in data["Files"] if f["Completed"])
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(count)] == digests

    def logged() -> list[Any]:
        return [r for r in nginx.requests() if r["uri"].startswith("/slow/mc-at-once/")]

    # (nginx logs a request a moment after its last send)
    requests = wait_until(lambda: len(found := logged()) >= count and found, 10, f"{count} requests logged")
    assert len({r["connection"] for r in requests}) >= 3, "several connections"
    assert len(requests) == count, json.dumps(requests)


def test_the_policy_cap_and_background_priorities_keep_one_file_at_a_time(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    job, digests = _files_job(daemon, nginx, dest, "mc-one", 4, 600 * KiB)  # NORMAL
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(4)] == digests
    requests = [r for r in nginx.requests() if r["uri"].startswith("/slow/mc-one/")]
    assert len({r["connection"] for r in requests}) == 1, "one connection, the files in turn"

    daemon.client.set_policy(MaxConnectionsPerJob=1)
    capped, _ = _files_job(
        daemon, nginx, dest, "mc-capped", 3, 600 * KiB, Priority=int(JobPriority.FOREGROUND), MaxConnections=8
    )
    daemon.client.resume(capped)
    daemon.wait_state(capped, JobState.TRANSFERRED, timeout=60)
    requests = [r for r in nginx.requests() if r["uri"].startswith("/slow/mc-capped/")]
    assert len({r["connection"] for r in requests}) == 1, "the policy caps the job at 1"


def test_a_sigkill_mid_job_keeps_every_files_checkpoint(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    count = 6
    job, digests = _files_job(
        daemon, nginx, dest, "mc-kill", count, 3 * MiB, Priority=int(JobPriority.FOREGROUND), MaxConnections=3
    )
    daemon.client.resume(job)

    def several_checkpointed() -> dict[str, Any] | None:
        instance = daemon.job(job)
        deep = [i for i in _partial(instance) if instance["Files"][i]["BytesTransferred"] >= 512 * KiB]
        return instance if len(deep) >= 2 else None

    wait_until(several_checkpointed, 30, "2 files checkpointed mid-body")
    before = daemon.job(job)["Files"]  # (only grows until the kill)
    daemon.kill()
    daemon.start()
    after = daemon.job(job)["Files"]
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a["BytesTransferred"] >= b["BytesTransferred"], f"file {i} lost checkpointed bytes"
        assert a["Completed"] or not b["Completed"], f"file {i} lost its completion"
    resumed_from = {i for i, f in enumerate(after) if f["BytesTransferred"] > 0 and not f["Completed"]}
    assert len(resumed_from) >= 2, after
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == count
    assert daemon.client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(count)] == digests
    ranged = {r["uri"] for r in nginx.requests() if r["uri"].startswith("/slow/mc-kill/") and r["range"]}
    assert {f"/slow/mc-kill/{i}.bin" for i in resumed_from} <= ranged, "each resumed at its checkpoint"


def test_openbits_transfer_max_connections_reaches_the_job(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = [make_file(nginx.www, f"mc-cli/{i}.bin", 600 * KiB + i, seed=950 + i) for i in range(3)]
    urls = [f"{nginx.url}/slow/mc-cli/{i}.bin" for i in range(3)]
    daemon.cli("transfer", "-q", "--max-connections", "1", *urls, str(dest), check=True)
    assert [sha256_file(dest / f"{i}.bin") for i in range(3)] == digests
    requests = [r for r in nginx.requests() if r["uri"].startswith("/slow/mc-cli/")]
    assert len({r["connection"] for r in requests}) == 1, "FOREGROUND, but MaxConnections 1"
    assert daemon.cli("transfer", "--max-connections", "0", urls[0], str(dest)).returncode == 2


def test_files_fetched_before_the_job_goes_at_once_are_not_fetched_again(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    """A FOREGROUND job moves one file at a time until it meets a big one, then the rest at
    once: the files fetched before (in the batch, their sync not yet committed) are not
    fetched again (a second fetch rewrote a temporary file the batch then committed whole:
    the mixed-faults torture published a truncated file)."""
    sizes = [700, 300 * KiB, 2 * MiB, 2 * MiB, 2 * MiB, 2 * MiB]
    digests = [make_file(nginx.www, f"mc-switch/{i}.bin", size, seed=950 + i) for i, size in enumerate(sizes)]
    client = daemon.client
    job = client.create_job("mc-switch").job_id
    client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    client.add_file_set(job, [(f"{nginx.url}/mc-switch/{i}.bin", str(dest / f"{i}.bin")) for i in range(6)])
    client.resume(job)
    final = daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
    assert final["FilesTransferred"] == len(sizes)
    assert client.complete(job) == 0
    assert [sha256_file(dest / f"{i}.bin") for i in range(len(sizes))] == digests
    asked = [r["uri"] for r in nginx.requests() if r["uri"].startswith("/mc-switch/")]
    # files 0-2 went one at a time (the third is the first big one: the rest go at once);
    # the requests sent ahead for 3-5 on that connection may be asked again at once
    before = [f"/mc-switch/{i}.bin" for i in range(3)]
    assert [asked.count(uri) for uri in before] == [1, 1, 1], f"fetched again: {sorted(asked)}"
