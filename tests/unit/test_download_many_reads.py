"""Bodies that arrive in many small reads: never more than IOV_MAX buffers per pwritev (found in review).

These talk to a raw asyncio server on 127.0.0.1 and run ``Downloader.download`` with an
``H1Client``, the way the daemon does for plain http:// URLs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from openbits.errors import BitsError
from openbits.model import JobFile
from openbits.transfer.download import Downloader, Owner
from openbits.transfer.fetch import _stream_small
from openbits.transfer.h1 import H1Client
from tests.support.rawserver import RecordingProgress, raw_server


async def _download(base: str, tmp_path: object) -> tuple[JobFile, bytes]:
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=5, default_headers={"User-Agent": "t"})
    try:
        downloader = Downloader(h1)
        local = os.path.join(str(tmp_path), "out.bin")
        file = JobFile(remote_url=f"{base}/f", local_file=local, temp_name="BITreview.tmp")
        owner = Owner(os.getuid(), os.getgid())
        await downloader.download(file, owner, RecordingProgress(), 2, defer_sync=True)
        assert file.temp_path is not None
        return file, Path(file.temp_path).read_bytes()
    finally:
        await h1.close()


async def test_chunked_body_in_small_chunks_downloads(tmp_path: object) -> None:
    body = bytes(range(256)) * 4096 * 2  # 2 MiB
    piece = 256

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), piece):
            writer.write(b"%x\r\n" % piece + body[i : i + piece] + b"\r\n")
        writer.write(b"0\r\n\r\n")

    async with raw_server(respond) as base:
        try:
            _file, got = await _download(base, tmp_path)
        except BitsError as e:
            pytest.fail(f"download failed: {e}")
    assert got == body


class _TrickleBody:
    """A body of known length as h1.Body hands it out from a slow sender: a little per read."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece, self.pos = data, piece, 0

    async def read(self, n: int = -1) -> bytes:
        n = self.piece if n < 0 else min(n, self.piece)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    async def readany(self) -> bytes:
        return await self.read()


async def test_small_body_arriving_in_many_reads_is_written(tmp_path: object) -> None:
    body = os.urandom(200 * 1024)
    path = os.path.join(str(tmp_path), "small.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fetched = await _stream_small(_TrickleBody(body, 100), fd, 0, len(body))
    except BitsError as e:
        pytest.fail(f"write failed: {e}")
    finally:
        os.close(fd)
    assert fetched.size == len(body)
    assert Path(path).read_bytes() == body
