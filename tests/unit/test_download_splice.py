"""Plain-HTTP bodies moved socket → pipe → file with splice(2) (``h1.Body.splice_into``).

A raw asyncio server on 127.0.0.1 sends the bytes exactly as a test wants them (in
pieces, cut short, with bytes past the Content-Length); ``Downloader.download`` runs
with an ``H1Client`` as in the daemon, with splice on and off, and the temporary file
must hold exactly the body, with every checkpoint covering bytes that are in it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from openbits.errors import BitsError
from openbits.model import JobFile
from openbits.transfer.download import Downloader, Owner, Tuning
from openbits.transfer.h1 import H1Client
from openbits.transfer.throttle import Throttle
from tests.support.rawserver import RecordingProgress, Respond, raw_server

MiB = 1024 * 1024


def _body(size: int, seed: int = 1) -> bytes:
    out = bytearray()
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB of varied bytes
    while len(out) < size:
        out += block
        block = block[1:] + block[:1]
    return bytes(out[:size])


def _in_pieces(body: bytes, pieces: list[int], extra: bytes = b"", stop_at: int | None = None) -> Respond:
    """A 200 with Content-Length ``len(body)``; the body sent in ``pieces`` (cycled), each
    drained, then ``extra``; cut at ``stop_at`` bytes when given."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "e1"\r\n\r\n' % len(body))
        end = len(body) if stop_at is None else stop_at
        pos, i = 0, 0
        while pos < end:
            n = min(pieces[i % len(pieces)], end - pos)
            writer.write(body[pos : pos + n])
            await writer.drain()
            await asyncio.sleep(0)
            pos += n
            i += 1
        writer.write(extra)

    return respond


async def _download(
    base: str,
    tmp_path: Path,
    *,
    splice: bool,
    throttle: Throttle | None = None,
    tuning: Tuning | None = None,
) -> tuple[JobFile, RecordingProgress, H1Client, BitsError | None]:
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5, default_headers={"User-Agent": "t"}, splice=splice)
    progress = RecordingProgress()
    file = JobFile(remote_url=f"{base}/f", local_file=str(tmp_path / "out.bin"), temp_name="BITsplice.tmp")
    error: BitsError | None = None
    try:
        downloader = Downloader(h1, tuning or Tuning(), throttle=throttle)
        try:
            await downloader.download(file, Owner(os.getuid(), os.getgid()), progress, 2)
        except BitsError as e:
            error = e
    finally:
        await h1.close()
    return file, progress, h1, error


def _temp_bytes(file: JobFile) -> bytes:
    assert file.temp_path is not None
    return Path(file.temp_path).read_bytes()


@pytest.mark.parametrize("splice", [True, False])
async def test_body_in_uneven_pieces_is_written_exactly(tmp_path: Path, splice: bool) -> None:
    body = _body(6 * MiB + 12345)
    async with raw_server(_in_pieces(body, [1, 4096, 700_000, 65_537, 3 * MiB])) as base:
        file, _progress, h1, error = await _download(base, tmp_path, splice=splice)
    assert error is None, error
    assert _temp_bytes(file) == body
    if splice:
        # all but what arrived with the head went through the pipe
        assert len(body) - 256 * 1024 <= h1.spliced_bytes <= len(body)
    else:
        assert h1.spliced_bytes == 0


async def test_bytes_past_the_content_length_are_not_written(tmp_path: Path) -> None:
    body = _body(3 * MiB)
    async with raw_server(_in_pieces(body, [MiB], extra=b"GARBAGE" * 1000)) as base:
        file, _progress, h1, error = await _download(base, tmp_path, splice=True)
    assert error is None, error
    assert h1.spliced_bytes > 0
    assert _temp_bytes(file) == body


async def test_a_body_cut_short_keeps_only_checkpointed_bytes_that_are_on_disk(tmp_path: Path) -> None:
    body = _body(8 * MiB)
    cut = 5 * MiB + 333
    tuning = Tuning(checkpoint_interval_s=0.0, checkpoint_bytes=MiB)  # a checkpoint at every step
    async with raw_server(_in_pieces(body, [256 * 1024], stop_at=cut)) as base:
        file, progress, h1, error = await _download(base, tmp_path, splice=True, tuning=tuning)
    assert error is not None and error.transient, error
    assert h1.spliced_bytes > 0
    got = _temp_bytes(file)
    assert got == body[: len(got)]
    assert progress.checkpoints, "nothing was checkpointed"
    assert progress.checkpoints == sorted(progress.checkpoints)
    # the salvage on the error kept everything that arrived, and says so
    assert progress.checkpoints[-1] == cut == len(got)


async def test_a_limited_transfer_splices_at_its_rate(tmp_path: Path) -> None:
    body = _body(4 * MiB)
    throttle = Throttle()
    throttle.set_limits(per_priority={2: 2 * MiB})
    async with raw_server(_in_pieces(body, [MiB])) as base:
        file, _progress, h1, error = await _download(base, tmp_path, splice=True, throttle=throttle)
    assert error is None, error
    assert h1.spliced_bytes > 0
    assert _temp_bytes(file) == body
    # past the bucket's burst the transfer had to wait for tokens
    assert throttle.throttled_s > 0


async def test_a_checkpoint_is_reported_when_its_sync_returns_not_at_the_next_chunk(tmp_path: Path) -> None:
    body = _body(4 * MiB)
    go_on = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body[: 2 * MiB])
        await writer.drain()
        await go_on.wait()  # the server pauses: no next chunk until a checkpoint is seen
        writer.write(body[2 * MiB :])

    seen = asyncio.Event()

    class Seen(RecordingProgress):
        def checkpoint(self, offset: int) -> None:
            super().checkpoint(offset)
            seen.set()

    progress = Seen()
    tuning = Tuning(checkpoint_interval_s=0.0, checkpoint_bytes=MiB)
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=30, default_headers={"User-Agent": "t"})
    file = JobFile(remote_url="", local_file=str(tmp_path / "out.bin"), temp_name="BITprompt.tmp")
    async with raw_server(respond) as base:
        file.remote_url = f"{base}/f"
        downloader = Downloader(h1, tuning)
        task = asyncio.create_task(downloader.download(file, Owner(os.getuid(), os.getgid()), progress, 2))
        try:
            async with asyncio.timeout(10):
                await seen.wait()
            assert 0 < progress.checkpoints[-1] <= 2 * MiB
        finally:
            go_on.set()
            await task
            await h1.close()
    assert _temp_bytes(file) == body
