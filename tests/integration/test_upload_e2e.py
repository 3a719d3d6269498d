"""Issue 14's acceptance end to end, with real processes only: the daemon
(tests/support/daemon.py), ``openbits upload-server`` (tests/support/bitsupload.py), the CLIs
(``openbits upload``, ``bitsadmin``) as subprocesses, and a server application for
upload-reply (tests/support/uploade2e.py).

Uploads and upload-replies of 0 B, 1 B, 5 MiB and 100 MiB land byte-identical on the server;
the reply (the application's answer to the by-value notification) is at ReplyFileName after
Complete and GetReplyData returns it.  A daemon SIGKILLed mid-upload and a server SIGKILLed
and restarted mid-upload both go on in the same session from the server's offset: the
server's own count at publish says no acknowledged byte was written twice and at most one
fragment was refused with 416.  The faults (a changed source, a too large upload, Cancel,
an abandoned session, traversal and symlinks) are in test_upload_e2e_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.model import JobPriority, JobState, JobType
from tests.support.uploade2e import (
    MiB,
    Rig,
    created_sessions,
    drive,
    mid_upload,
    new_job,
    published,
    reply_of,
    running_rig,
    server_offset,
    sha256_of,
    start_throttled,
    write_source,
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("upload-e2e")) as started:
        yield started


def _bitsadmin(rig: Rig, *args: str) -> str:
    return rig.daemon.cli("/rawreturn", *args, prog="bitsadmin", check=True).stdout.strip()


@pytest.mark.parametrize("kind", [JobType.UPLOAD, JobType.UPLOAD_REPLY], ids=["upload", "upload-reply"])
def test_every_size_arrives_byte_identical(rig: Rig, kind: JobType) -> None:
    """0 B by ``openbits upload``, 1 B by bitsadmin, 5 and 100 MiB by the Python client."""
    folder = "reply" if kind is JobType.UPLOAD_REPLY else "in"
    sizes = {"zero.bin": 0, "one.bin": 1, "five.bin": 5 * MiB, "hundred.bin": 100 * MiB}
    digests = {name: write_source(rig.outbox / folder / name, size) for name, size in sizes.items()}
    sources = {name: rig.outbox / folder / name for name in sizes}
    client = rig.daemon.client
    big = {
        name: new_job(rig, f"{folder}/{name}", sources[name], kind, JobPriority.FOREGROUND)
        for name in ("five.bin", "hundred.bin")
    }
    for job in big.values():
        client.resume(job)

    # 0 B: the one-shot command (create, add, resume, follow, complete)
    reply_zero = rig.outbox / folder / "zero.reply"
    argv = ["upload", "-q", str(sources["zero.bin"]), rig.url(f"{folder}/zero.bin")]
    if kind is JobType.UPLOAD_REPLY:
        argv += ["--reply", str(reply_zero)]
    rig.daemon.cli(*argv, check=True)

    # 1 B: bitsadmin /create /upload(-reply), /addfile, /resume, then /complete
    switch = "/upload-reply" if kind is JobType.UPLOAD_REPLY else "/upload"
    one = _bitsadmin(rig, "/create", switch, f"{folder}-one")
    _bitsadmin(rig, "/addfile", one, rig.url(f"{folder}/one.bin"), str(sources["one.bin"]))
    reply_one = rig.outbox / folder / "one.reply"
    if kind is JobType.UPLOAD_REPLY:
        _bitsadmin(rig, "/setreplyfilename", one, str(reply_one))
    _bitsadmin(rig, "/resume", one)
    rig.daemon.wait_state(one, JobState.TRANSFERRED, timeout=30)
    if kind is JobType.UPLOAD_REPLY:
        hex_dump = rig.daemon.cli("/getreplydata", one, prog="bitsadmin", check=True).stdout
        assert reply_of(digests["one.bin"]).hex()[:32] in hex_dump.replace(" ", "").lower()
    _bitsadmin(rig, "/complete", one)
    rig.daemon.wait_state(one, JobState.ACKNOWLEDGED)

    for name, job in big.items():
        rig.daemon.wait_state(job, JobState.TRANSFERRED, timeout=60)
        if kind is JobType.UPLOAD_REPLY:
            assert client.get_reply_data(job) == reply_of(digests[name])
        reply_file = client.get_job(job).reply_file_name
        client.complete(job)
        rig.daemon.wait_state(job, JobState.ACKNOWLEDGED)
        if reply_file is not None:
            assert Path(reply_file).read_bytes() == reply_of(digests[name])

    for name, digest in digests.items():
        assert sha256_of(rig.server.root / folder / name) == digest, name
    assert not list((rig.server.root / folder).glob(".bits-*"))  # no partial file left
    if kind is JobType.UPLOAD_REPLY:
        assert reply_zero.read_bytes() == reply_of(digests["zero.bin"])
        assert reply_one.read_bytes() == reply_of(digests["one.bin"])
        assert sorted(rig.app.received[-4:]) == sorted(digests.values())


def test_a_daemon_killed_mid_upload_goes_on_in_the_same_session(rig: Rig) -> None:
    size = 24 * MiB
    job, _, digest = start_throttled(rig, "in/killed.bin", size)
    offset = mid_upload(rig, "killed.bin")
    assert offset < size
    rig.daemon.kill()
    rig.daemon.start()
    drive(rig.daemon, job)
    assert sha256_of(rig.server.root / "in" / "killed.bin") == digest
    [session] = created_sessions(rig.server, "in/killed.bin")
    written, refused = published(rig.server, session)
    assert written == size  # no acknowledged byte written twice (the same server process)
    assert refused <= 1
    rig.daemon.client.complete(job)


def test_an_upload_raised_to_foreground_mid_file_is_no_longer_held_to_its_limit(rig: Rig) -> None:
    # the priority was taken once per upload: raised mid-file, still held to NORMAL's 8 MB/s
    size = 160 * MiB  # 20 s at NORMAL's limit; a moment unlimited
    job, _, digest = start_throttled(rig, "in/raised.bin", size)
    mid_upload(rig, "raised.bin")
    rig.daemon.client.set_properties(job, priority=int(JobPriority.FOREGROUND))
    rig.daemon.wait_state(job, JobState.TRANSFERRED, timeout=10)
    assert sha256_of(rig.server.root / "in" / "raised.bin") == digest
    rig.daemon.client.complete(job)


def test_a_server_restarted_mid_upload_is_resumed_from_its_offset(rig: Rig) -> None:
    size = 24 * MiB
    job, _, digest = start_throttled(rig, "in/restarted.bin", size)
    mid_upload(rig, "restarted.bin")
    rig.server.kill()
    durable = server_offset(rig.server, "restarted.bin")  # what the restarted server goes on from
    assert 0 < durable < size
    rig.server.start()
    drive(rig.daemon, job)
    assert sha256_of(rig.server.root / "in" / "restarted.bin") == digest
    [session] = created_sessions(rig.server, "in/restarted.bin")
    written, refused = published(rig.server, session)
    assert written == size - durable  # the restarted process wrote only what was not acknowledged
    assert refused <= 1
    rig.daemon.client.complete(job)
