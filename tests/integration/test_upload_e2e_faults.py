"""Issue 14's acceptance, the faults, with real processes only (tests/support/uploade2e.py):
the daemon, ``openbits upload-server`` and a fault-injecting relay between them.

A relay that resets, stalls, truncates and refuses the server's answers never leaves a wrong
file (several seeds, each with the server's count of bytes written); a source changed
mid-upload is ERROR BG_E_LOCAL_FILE_CHANGED (LOCAL_FILE); an upload over the server's
max_upload_bytes is ERROR BG_E_TOO_LARGE (REMOTE_FILE, the context the server sends);
Cancel reaches the server (Cancel-Session: its partial file is gone); a session abandoned
longer than its timeout is removed by the server, and the job resumed later starts a new
one; traversal and symlink URLs are refused with the server's code (E_INVALIDARG, 400).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.errors import HResult
from openbits.model import ErrorContext, JobPriority, JobState, JobType
from tests.support.daemon import wait_until
from tests.support.faultproxy import Fault, FaultProxy, Kind
from tests.support.uploade2e import (
    MiB,
    Rig,
    created_sessions,
    drive,
    mid_upload,
    new_job,
    published,
    running_rig,
    sha256_of,
    start_throttled,
    write_source,
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("upload-e2e-faults")) as started:
        yield started


def _error(rig: Rig, job: str) -> tuple[int, ErrorContext]:
    rig.daemon.wait_state(job, JobState.ERROR, timeout=30)
    error = rig.daemon.client.get_error(job)
    return error.hresult, error.context


def _partials(rig: Rig, folder: str) -> list[Path]:
    return list((rig.server.root / folder).glob(".bits-*.part"))


def _plan(seed: int) -> list[Fault]:
    """A fault for each of the first connections, in a seeded order at seeded offsets of
    the server's answers (past the Ping's Ack, so most strike a Fragment's Ack; the daemon
    keeps a connection alive until it breaks, so each fault gets its own): resets,
    truncations, a stall the daemon gives up on (read_timeout_s), a refusal; last a short
    stall it lives through (the connection then carries the rest)."""
    rng = random.Random(seed)
    faults = [
        Fault.reset(at=rng.randint(140, 420)),
        Fault.reset(at=rng.randint(140, 420)),
        Fault.truncate(at=rng.randint(140, 420)),
        Fault.truncate(at=rng.randint(140, 420)),
        Fault.stall(at=rng.randint(140, 420)),
        Fault.refuse(),
    ]
    rng.shuffle(faults)
    return [*faults, Fault.stall(at=rng.randint(140, 420), seconds=0.5)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_faulty_relay_never_leaves_a_wrong_file(rig: Rig, seed: int) -> None:
    """A fragment the server wrote whose Ack was lost is refused 416 the next time (once);
    a session whose Create-Session Ack was lost is left to expire; the file is right."""
    size = 16 * MiB + seed
    name = f"chaos{seed}.bin"
    source = rig.outbox / "faults" / name
    digest = write_source(source, size)
    with FaultProxy(rig.server.port, plan=_plan(seed)) as relay:
        client = rig.daemon.client
        job = client.create_job(name, job_type=JobType.UPLOAD, priority=JobPriority.FOREGROUND).job_id
        client.add_file(job, f"http://127.0.0.1:{relay.port}/faults/{name}", str(source))
        client.resume(job)
        drive(rig.daemon, job, timeout_s=45)
        struck = Counter(fault.kind for record in relay.connections for fault, _ in record.struck)
    assert sha256_of(rig.server.root / "faults" / name) == digest
    sessions = created_sessions(rig.server, f"faults/{name}")
    written, refused = published(rig.server, sessions[-1])
    assert written == size  # no acknowledged byte written twice
    assert refused <= sum(struck.values())  # a 416 at most for each Ack lost
    assert len(sessions) <= 1 + struck[Kind.RESET] + struck[Kind.TRUNCATE] + struck[Kind.STALL]
    assert struck[Kind.RESET] >= 1 and struck[Kind.TRUNCATE] >= 1 and struck[Kind.STALL] >= 1, struck
    client.complete(job)


def test_a_source_changed_mid_upload_is_a_local_file_error(rig: Rig) -> None:
    job, source, _ = start_throttled(rig, "in/changed.bin", 24 * MiB)
    mid_upload(rig, "changed.bin")
    with source.open("ab") as f:
        f.write(b"more")
    hresult, context = _error(rig, job)
    assert hresult == HResult.BG_E_LOCAL_FILE_CHANGED == 0x8020001D
    assert context is ErrorContext.LOCAL_FILE
    rig.daemon.client.cancel(job)


def test_an_upload_over_the_servers_maximum_is_too_large(rig: Rig) -> None:
    source = rig.outbox / "small" / "big.bin"
    write_source(source, 5000)  # max_upload_bytes = 1000
    job = new_job(rig, "small/big.bin", source, JobType.UPLOAD, JobPriority.FOREGROUND)
    rig.daemon.client.resume(job)
    hresult, context = _error(rig, job)
    assert hresult == HResult.BG_E_TOO_LARGE == 0x80200020
    assert context is ErrorContext.REMOTE_FILE  # the server's BITS-Error-Context 0x5
    assert not (rig.server.root / "small" / "big.bin").exists()
    rig.daemon.client.cancel(job)
    wait_until(lambda: not _partials(rig, "small"), 10, "the session cancelled")


def test_cancel_removes_the_servers_partial_file(rig: Rig) -> None:
    job, _, _ = start_throttled(rig, "in/cancelled.bin", 24 * MiB)
    mid_upload(rig, "cancelled.bin")
    [partial] = _partials(rig, "in")
    rig.daemon.client.cancel(job)
    wait_until(lambda: not partial.exists(), 10, "the partial file removed by Cancel-Session")
    [session] = created_sessions(rig.server, "in/cancelled.bin")
    # (the server logs the cancel once the file is gone: poll, the line may come a moment later)
    wait_until(lambda: f"session {session}: cancelled" in rig.server.logs(), 10, "the cancel logged")
    assert not (rig.server.root / "in" / "cancelled.bin").exists()


def test_an_abandoned_session_is_removed_after_its_timeout(rig: Rig) -> None:
    """session_timeout_s = 1.5 in /short: a job suspended mid-upload leaves its session
    idle; the server removes it; resumed, the job starts a new session from byte 0."""
    job, _, digest = start_throttled(rig, "short/abandoned.bin", 24 * MiB)
    mid_upload(rig, "abandoned.bin")
    [partial] = _partials(rig, "short")
    rig.daemon.client.suspend(job)
    [first] = created_sessions(rig.server, "short/abandoned.bin")
    wait_until(lambda: f"session {first}: abandoned, removed" in rig.server.logs(), 10, "the session expired")
    assert not partial.exists()
    rig.daemon.client.set_properties(job, Priority=int(JobPriority.FOREGROUND))
    rig.daemon.client.resume(job)
    drive(rig.daemon, job)
    assert sha256_of(rig.server.root / "short" / "abandoned.bin") == digest
    sessions = created_sessions(rig.server, "short/abandoned.bin")
    assert len(sessions) == 2 and sessions[0] == first
    assert published(rig.server, sessions[1])[0] == 24 * MiB
    rig.daemon.client.complete(job)


@pytest.mark.parametrize(
    "path",
    ["in/..%2Fescape.bin", "in/%2E%2E%2Fescape.bin", "link/escape.bin"],
    ids=["encoded-slash", "encoded-dots", "symlink"],
)
def test_traversal_and_symlink_urls_are_refused(rig: Rig, tmp_path: Path, path: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = rig.server.root / "link"
    if not link.is_symlink():
        link.symlink_to(outside)
    source = rig.outbox / "escape.bin"
    write_source(source, 1000)
    job = new_job(rig, path, source, JobType.UPLOAD, JobPriority.FOREGROUND)
    rig.daemon.client.resume(job)
    hresult, context = _error(rig, job)
    assert hresult == HResult.E_INVALIDARG and context is ErrorContext.REMOTE_FILE
    assert not list(outside.iterdir())
    assert not (rig.server.root / "escape.bin").exists()
    assert not (rig.server.workdir / "escape.bin").exists()
    rig.daemon.client.cancel(job)
    assert os.path.islink(link)
