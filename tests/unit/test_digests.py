"""Expected digests (SPEC §9): parsing, the canonical form, hashing across a resume, and
``Downloader.download`` verifying while the bytes stream (splice on and off, a resumed file,
a server's Repr-Digest), against a raw server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
from pathlib import Path

import pytest

from openbits.digest import Digest, parse_digest, parse_repr_digest
from openbits.errors import BitsError, DigestMismatch, HResult
from openbits.model import ErrorContext, Job, JobFile, new_job_id
from openbits.store.sqlite import SqliteStore
from openbits.transfer.download import Downloader, Owner, Tuning
from openbits.transfer.h1 import H1Client
from openbits.transfer.verify import READ_BYTES, DigestCheck
from tests.support.rawserver import RecordingProgress, Respond, raw_server

MiB = 1024 * 1024


def _body(size: int) -> bytes:
    block = hashlib.sha256(b"digests").digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def _sf(data: bytes, algorithm: str = "sha-256") -> str:
    name = algorithm.replace("-", "")
    return f"{algorithm}=:{base64.b64encode(hashlib.new(name, data).digest()).decode()}:"


# -- parsing --------------------------------------------------------------------------------


def test_the_four_forms_parse_to_one_canonical_form() -> None:
    data = b"hello"
    hex256, hex512 = hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest()
    assert parse_digest(f"sha256:{hex256}").canonical() == _sf(data)
    assert parse_digest(f"sha256:{hex256.upper()}").canonical() == _sf(data)
    assert parse_digest(_sf(data)) == Digest("sha-256", hashlib.sha256(data).digest())
    assert parse_digest(f"sha512:{hex512}").canonical() == _sf(data, "sha-512")
    assert parse_digest(_sf(data, "sha-512")).algorithm == "sha-512"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "sha256:abc",  # odd length
        "sha256:" + "00" * 31,  # too short
        "sha512:" + "00" * 32,  # a sha-256's length
        "md5:" + "00" * 16,
        "sha-256=:" + "A" * 43 + "=",  # no closing colon
        "sha-256=:not base64!:",
        "sha-1=:" + base64.b64encode(b"x" * 20).decode() + ":",
        "sha-256=:" + base64.b64encode(b"x" * 31).decode() + ":",
    ],
)
def test_bad_syntax_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_digest(text)


def test_repr_digest_keeps_sha256_and_sha512_and_ignores_others() -> None:
    data = b"x"
    md5 = base64.b64encode(b"0" * 16).decode()
    header = f"md5=:{md5}:, {_sf(data)}, {_sf(data, 'sha-512')};p=1, unixsum=:AA==:"
    assert [d.canonical() for d in parse_repr_digest(header)] == [_sf(data), _sf(data, "sha-512")]
    assert parse_repr_digest(None) == [] and parse_repr_digest("garbage") == []


def test_the_service_refuses_a_bad_digest_with_e_invalidarg() -> None:
    from openbits.service.params import file_entry, validate_digest

    with pytest.raises(BitsError) as e:
        validate_digest("sha256:xyz")
    assert e.value.hresult == HResult.E_INVALIDARG
    entry = file_entry(
        {"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "digest": f"sha256:{'ab' * 32}"}, "AddFile"
    )
    assert entry[2] == "sha-256=:" + base64.b64encode(bytes.fromhex("ab" * 32)).decode() + ":"


def test_bits_client_file_shows_the_digest_only_when_given() -> None:
    f = JobFile("http://h/a", "/t/a")
    assert "Digest" not in f.to_cim()
    f.digest = _sf(b"a")
    assert f.to_cim()["Digest"] == _sf(b"a")


# -- hashing across a resume ----------------------------------------------------------------


async def test_a_resumed_check_rebuilds_its_state_from_the_durable_prefix(tmp_path: Path) -> None:
    data = _body(3 * MiB + 17)
    path = tmp_path / "t"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for resumed_at in (0, 10, 2 * MiB + 3, len(data)):
            check = DigestCheck.of(_sf(data))
            assert check is not None
            check.start(fd, resumed_at)  # the attempt resumes at its checkpoint
            assert check.queued == resumed_at, "the durable prefix is the worker's first job"
            check.catch_up(fd, resumed_at + 100)  # (less than READ_BYTES: left for later)
            assert check.queued == resumed_at
            check.catch_up(fd, min(resumed_at + READ_BYTES + 5, len(data)))
            await check.verify(len(data), "u")
            assert check.hashed == len(data)
            check.close()
        check = DigestCheck.of(_sf(data[:-1] + b"?"))
        assert check is not None
        check.start(fd, 0)
        with pytest.raises(DigestMismatch):
            await check.verify(len(data), "u")
        check.close()
        assert check.fd == -1 and check.worker is None
    finally:
        os.close(fd)


def test_closing_a_resumed_check_does_not_wait_for_its_whole_prefix(tmp_path: Path) -> None:
    size = 512 * MiB  # a resumed large file's durable prefix (sparse here: zeros)
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(size)
    fd = os.open(path, os.O_RDONLY)
    try:
        check = DigestCheck.of("sha-512=:" + base64.b64encode(bytes(64)).decode() + ":")
        assert check is not None
        check.start(fd, size)  # the attempt resumes at its checkpoint: the prefix is queued
        check.close()  # the transfer is stopped at once (Suspend, pre-emption, a lost connection)
        assert check.hashed < size, "close() (on the loop) waited for the whole prefix to be hashed"
    finally:
        os.close(fd)


def test_a_closed_check_lets_go_of_its_fd_and_thread_once_its_worker_stopped(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    for earlier in [t for t in threading.enumerate() if t.name.startswith("digest")]:
        earlier.join(timeout=30)  # (an earlier test's check, stopping: its fd goes with it)
    fd = os.open(path, os.O_RDONLY)
    try:
        before = set(os.listdir("/proc/self/fd"))
        check = DigestCheck.of("sha-512=:" + base64.b64encode(bytes(64)).decode() + ":")
        assert check is not None
        check.start(fd, 64 * MiB)
        (thread,) = [t for t in threading.enumerate() if t.name.startswith("digest")]
        check.close()
        assert check.fd == -1 and check.worker is None
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"
        assert set(os.listdir("/proc/self/fd")) == before, "the worker's dup of the fd was not closed"
    finally:
        os.close(fd)


def test_no_expected_digest_costs_nothing() -> None:
    assert DigestCheck.of(None, []) is None


# -- Downloader.download with a raw server -------------------------------------------------


def _answer(body: bytes, *, repr_digest: str | None = None, start: int = 0) -> Respond:
    """A 200 of ``body`` (a 206 from ``start`` when given), in 256 KiB pieces."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        head = b'ETag: "e1"\r\nAccept-Ranges: bytes\r\n'
        if repr_digest is not None:
            head += b"Repr-Digest: %s\r\n" % repr_digest.encode()
        if start:
            head = (
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                % (
                    start,
                    len(body) - 1,
                    len(body),
                )
                + head
            )
        else:
            head = b"HTTP/1.1 200 OK\r\n" + head
        writer.write(head + b"Content-Length: %d\r\n\r\n" % (len(body) - start))
        for pos in range(start, len(body), 256 * 1024):
            writer.write(body[pos : pos + 256 * 1024])
            await writer.drain()

    return respond


async def _download(
    base: str, tmp_path: Path, digest: str | None, *, splice: bool = True, file: JobFile | None = None
) -> tuple[JobFile, RecordingProgress, BitsError | None]:
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5, default_headers={"User-Agent": "t"}, splice=splice)
    progress = RecordingProgress()
    if file is None:
        file = JobFile(f"{base}/f", str(tmp_path / "out.bin"), temp_name="BITdigest.tmp", digest=digest)
    error: BitsError | None = None
    try:
        tuning = Tuning(checkpoint_interval_s=0.0, checkpoint_bytes=MiB)
        try:
            await Downloader(h1, tuning).download(file, Owner(os.getuid(), os.getgid()), progress, 2)
        except BitsError as e:
            error = e
    finally:
        await h1.close()
    return file, progress, error


@pytest.mark.parametrize("splice", [True, False])
async def test_the_right_digest_passes_and_a_wrong_one_fails_and_removes_the_temporary_file(
    tmp_path: Path, splice: bool
) -> None:
    body = _body(5 * MiB + 999)
    async with raw_server(_answer(body)) as base:
        file, _, error = await _download(base, tmp_path, _sf(body, "sha-512"), splice=splice)
    assert error is None, error
    assert file.temp_path is not None and Path(file.temp_path).read_bytes() == body
    os.unlink(file.temp_path)
    async with raw_server(_answer(body)) as base:
        file, _, error = await _download(base, tmp_path, _sf(body[:-1] + b"\0"), splice=splice)
    assert isinstance(error, DigestMismatch), error
    assert error.hresult == HResult.BG_E_VALIDATION_FAILED == 0x80200053
    assert error.context is ErrorContext.REMOTE_FILE and not error.transient
    assert file.temp_path is not None and not os.path.exists(file.temp_path)
    assert not os.path.exists(file.local_file)


async def test_a_server_repr_digest_that_does_not_match_fails(tmp_path: Path) -> None:
    body = _body(2 * MiB)
    async with raw_server(_answer(body, repr_digest=_sf(body, "sha-512"))) as base:
        _, _, error = await _download(base, tmp_path, None)
    assert error is None, error
    two_lines = f"md5=:AAAA:\r\nRepr-Digest: {_sf(b'other')}"  # (a second header line counts too)
    async with raw_server(_answer(body, repr_digest=two_lines)) as base:
        file, _, error = await _download(base, tmp_path, None)
    assert isinstance(error, DigestMismatch) and "Repr-Digest" in error.message, error
    assert file.temp_path is not None and not os.path.exists(file.temp_path)


@pytest.mark.parametrize("right", [True, False])
async def test_a_resumed_file_is_verified_over_all_its_bytes(tmp_path: Path, right: bool) -> None:
    body = _body(4 * MiB + 3)
    durable = 3 * MiB + 1  # what an earlier run left, checkpointed
    file = JobFile(
        "http://x/f",
        str(tmp_path / "out.bin"),
        temp_name="BITresume.tmp",
        digest=_sf(body if right else b"x" + body[1:]),
        bytes_total=len(body),
        bytes_transferred=durable,
        etag='"e1"',
    )
    assert file.temp_path is not None
    Path(file.temp_path).write_bytes(body[:durable])
    async with raw_server(_answer(body, start=durable)) as base:
        file.remote_url = f"{base}/f"
        _, _, error = await _download(base, tmp_path, None, file=file)
    if right:
        assert error is None, error
        assert Path(file.temp_path).read_bytes() == body
    else:
        assert isinstance(error, DigestMismatch), error
        assert not os.path.exists(file.temp_path)


def _cut_after(body: bytes, repr_digest: str, cut: int) -> Respond:
    """A 200 of ``body`` with ``repr_digest`` whose connection is lost after ``cut`` bytes."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        head = b'HTTP/1.1 200 OK\r\nETag: "e1"\r\nAccept-Ranges: bytes\r\nRepr-Digest: %s\r\n' % (
            repr_digest.encode()
        )
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:cut])
        await writer.drain()

    return respond


def _stored_and_loaded(tmp_path: Path, file: JobFile) -> JobFile:
    """``file`` as a daemon started after a SIGKILL finds it: saved to and loaded from a real
    store."""
    store = SqliteStore(str(tmp_path / "jobs.sqlite"))
    try:
        store.add_job(Job(job_id=new_job_id(), owner="alice", owner_uid=os.getuid(), files=[file]))
        [job] = store.load_jobs()
    finally:
        store.close()
    return job.files[0]


@pytest.mark.parametrize("right", [True, False])
async def test_a_servers_repr_digest_is_kept_for_a_resume_whose_206_does_not_repeat_it(
    tmp_path: Path, right: bool
) -> None:
    body = _body(4 * MiB + 3)
    cut = 3 * MiB + 1
    async with raw_server(_cut_after(body, _sf(body, "sha-512"), cut)) as base:
        file, progress, error = await _download(base, tmp_path, None)
    assert error is not None and error.transient, error  # (the connection was lost)
    assert file.repr_digest == _sf(body, "sha-512"), "the server's Repr-Digest was not kept"
    assert progress.checkpoints[-1] == cut
    file.bytes_transferred, file.bytes_total, file.etag = cut, len(body), '"e1"'  # (the run's commits)
    file = _stored_and_loaded(tmp_path, file)
    assert file.repr_digest == _sf(body, "sha-512")
    served = body if right else body[:-1] + b"?"  # (a 206 of other bytes, and no Repr-Digest)
    async with raw_server(_answer(served, start=cut)) as base:
        file.remote_url = f"{base}/f"
        _, _, error = await _download(base, tmp_path, None, file=file)
    assert file.temp_path is not None
    if right:
        assert error is None, error
        assert Path(file.temp_path).read_bytes() == body
    else:
        assert isinstance(error, DigestMismatch) and "Repr-Digest" in error.message, error
        assert not os.path.exists(file.temp_path)


async def test_an_answer_from_byte_0_without_repr_digest_forgets_the_kept_one(tmp_path: Path) -> None:
    body = _body(MiB)
    file = JobFile("http://x/f", str(tmp_path / "out.bin"), temp_name="BITnew.tmp", repr_digest=_sf(b"old"))
    async with raw_server(_answer(body)) as base:
        file.remote_url = f"{base}/f"
        _, _, error = await _download(base, tmp_path, None, file=file)
    assert error is None, error
    assert file.repr_digest is None


def test_the_file_list_takes_an_optional_digest_column() -> None:
    import click

    from openbits.cli.openbits.options import parse_file_set

    files = parse_file_set(f"http://h/a /t/a sha256:{'ab' * 32}\nhttp://h/b /t/b\n", "list")
    assert files == [
        {"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "Digest": f"sha256:{'ab' * 32}"},
        {"RemoteUrl": "http://h/b", "LocalFile": "/t/b"},
    ]
    with pytest.raises(click.UsageError):
        parse_file_set("http://h/a /t/a x y\n", "list")


def test_client_file_pairs_carry_digests() -> None:
    from openbits._wire import file_pairs

    assert file_pairs([("u", "/l", "sha256:00"), ("v", "/m", None), ("w", "/n")]) == [
        {"RemoteUrl": "u", "LocalFile": "/l", "Digest": "sha256:00"},
        {"RemoteUrl": "v", "LocalFile": "/m"},
        {"RemoteUrl": "w", "LocalFile": "/n"},
    ]


@pytest.mark.parametrize("splice", [True, False])
async def test_the_bytes_are_hashed_while_they_stream_not_at_the_end(tmp_path: Path, splice: bool) -> None:
    """Half the body is sent, then the server waits until the check's worker has hashed
    most of it: a hasher that only ran at the end would never get there."""
    body = _body(8 * MiB)
    half = 4 * MiB
    hashed_while_streaming = asyncio.Event()
    checks: list[DigestCheck] = []
    real_of = DigestCheck.of

    def recording_of(file_digest: str | None, server: list[Digest] | None = None) -> DigestCheck | None:
        check = real_of(file_digest, server)
        if check is not None:
            checks.append(check)
        return check

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for pos in range(0, half, 256 * 1024):
            writer.write(body[pos : pos + 256 * 1024])
            await writer.drain()
        deadline = asyncio.get_running_loop().time() + 10
        while not (checks and checks[0].hashed >= half - 2 * MiB):
            assert asyncio.get_running_loop().time() < deadline, "nothing hashed while streaming"
            await asyncio.sleep(0.01)
        hashed_while_streaming.set()
        writer.write(body[half:])

    mp = pytest.MonkeyPatch()
    mp.setattr(DigestCheck, "of", staticmethod(recording_of))
    try:
        async with raw_server(respond) as base:
            _, _, error = await _download(base, tmp_path, _sf(body), splice=splice)
    finally:
        mp.undo()
    assert error is None, error
    assert hashed_while_streaming.is_set()
