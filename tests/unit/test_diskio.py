"""Early write-back and preallocation (``transfer/diskio.py``, ``Sink.written``).

Whether a file's pages are still dirty is read from the kernel with ``cachestat(2)``
(Linux ≥ 6.5); the tests that need it are skipped where it is missing or where the
temporary directory's file system keeps no dirty pages (tmpfs).  Without early write-back
the kernel leaves dirty pages for ``dirty_expire_centisecs`` (30 s by default), far longer
than these tests wait.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openbits.model import JobFile
from openbits.transfer import diskio
from openbits.transfer.download import Downloader, Owner, Tuning
from openbits.transfer.h1 import H1Client
from openbits.transfer.sink import WRITEBACK_BYTES, Sink
from tests.support.rawserver import RecordingProgress, raw_server

MiB = 1024 * 1024
_SYS_CACHESTAT = 451  # the same number on every architecture (unified syscall table)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


def _dirty_pages(path: str, offset: int, length: int) -> int:
    """Pages of the range that are dirty or under write-back (``cachestat``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        rng, st = _Range(offset, length), _CacheStat()
        if libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return int(st.nr_dirty + st.nr_writeback)


def _within(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Poll ``condition`` until it holds or ``deadline_s`` passed (run in a thread)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _clean_within(path: str, offset: int, length: int, deadline_s: float) -> bool:
    return _within(lambda: _dirty_pages(path, offset, length) == 0, deadline_s)


@pytest.fixture
def dirty_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` where a plain write leaves dirty pages that cachestat sees."""
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.pwrite(fd, b"x" * 65536, 0)
        try:
            dirty = _dirty_pages(str(probe), 0, 65536)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM):
                pytest.skip("no cachestat(2) on this kernel")
            raise
        if dirty == 0:
            pytest.skip("the temporary directory keeps no dirty pages (tmpfs?)")
    finally:
        os.close(fd)
    probe.unlink()
    yield tmp_path


def test_start_writeback_cleans_the_range_without_a_sync(dirty_dir: Path) -> None:
    path = dirty_dir / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.pwrite(fd, os.urandom(4 * MiB), 0)
        assert _dirty_pages(str(path), 0, 4 * MiB) > 0
        diskio.start_writeback(fd, 0, 4 * MiB)
        assert _clean_within(str(path), 0, 4 * MiB, 10.0)
    finally:
        os.close(fd)


async def test_the_sink_starts_writeback_behind_its_writes(dirty_dir: Path) -> None:
    path = dirty_dir / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        sink = Sink(fd, 0)
        for _ in range(WRITEBACK_BYTES // MiB):
            assert sink.writeback is None
            sink.add(os.urandom(MiB))
            sink.flush()
        assert sink.writeback_offset == WRITEBACK_BYTES and sink.writeback is not None
        await sink.writeback  # (in a worker thread, on a dup of the fd)
        assert await asyncio.to_thread(_clean_within, str(path), 0, WRITEBACK_BYTES, 10.0)
        sink.add(os.urandom(MiB))
        sink.flush()  # less than WRITEBACK_BYTES since: not started yet
        assert sink.writeback_offset == WRITEBACK_BYTES
        assert _dirty_pages(str(path), WRITEBACK_BYTES, MiB) > 0
    finally:
        os.close(fd)


def test_preallocate_keeps_the_size_a_resume_starts_from(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.pwrite(fd, b"a" * 1000, 0)
        if not diskio.preallocate(fd, 1000, 16 * MiB):
            pytest.skip("the file system cannot preallocate")
        st = os.fstat(fd)
        assert st.st_size == 1000
        assert st.st_blocks * 512 >= 16 * MiB
        assert os.pread(fd, 2000, 0) == b"a" * 1000
    finally:
        os.close(fd)
    assert not diskio.preallocate(-1, 0, MiB)  # refused (EBADF): a hint, never an error


@pytest.mark.parametrize("splice", [True, False])
async def test_a_download_preallocates_and_writes_back_while_it_runs(dirty_dir: Path, splice: bool) -> None:
    """Halfway through a body (no checkpoint due), the temporary file keeps the size it
    holds, has the whole file's blocks, and its first bytes are on their way to disk."""
    size, half = 32 * MiB, 3 * WRITEBACK_BYTES // 2
    body = os.urandom(size)
    go_on = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "e"\r\n\r\n' % size)
        writer.write(body[:half])
        await writer.drain()
        await go_on.wait()
        writer.write(body[half:])

    tuning = Tuning(checkpoint_interval_s=3600.0, checkpoint_bytes=1 << 40)
    h1 = H1Client(connect_timeout_s=5, read_timeout_s=30, default_headers={"User-Agent": "t"}, splice=splice)
    file = JobFile(remote_url="", local_file=str(dirty_dir / "out.bin"), temp_name="BITwb.tmp")
    async with raw_server(respond) as base:
        file.remote_url = f"{base}/f"
        downloader = Downloader(h1, tuning)
        task = asyncio.create_task(
            downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2)
        )
        try:
            temp = str(dirty_dir / "BITwb.tmp")
            started = await asyncio.to_thread(
                _within, lambda: os.path.exists(temp) and os.stat(temp).st_size >= WRITEBACK_BYTES, 10.0
            )
            assert started
            st = os.stat(temp)
            assert st.st_size <= half
            assert st.st_blocks * 512 >= size  # preallocated, KEEP_SIZE
            clean = await asyncio.to_thread(_clean_within, temp, 0, WRITEBACK_BYTES, 10.0)
            assert clean, "the first bytes were not written back before any sync"
        finally:
            go_on.set()
            await task
            await h1.close()
    assert file.temp_path is not None
    assert Path(file.temp_path).read_bytes() == body


def test_page_cached_says_whether_reading_a_range_would_wait_for_the_disk(dirty_dir: Path) -> None:
    """``page_cached`` (the upload sender's test before ``sendfile``): a range just written
    is cached, the same range dropped from the cache is not, nor a range past the end."""
    path = dirty_dir / "cached.bin"
    path.write_bytes(os.urandom(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert diskio.page_cached(fd, 0, 4 * MiB)
        assert diskio.page_cached(fd, MiB + 7, 100)  # (a range within pages)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not diskio.page_cached(fd, 0, 4 * MiB)
        assert len(os.pread(fd, 2 * MiB, 2 * MiB)) == 2 * MiB  # (read back: cached again)
        assert diskio.page_cached(fd, 2 * MiB, 2 * MiB)
        assert not diskio.page_cached(fd, 0, 1)
        assert not diskio.page_cached(fd, 0, 4 * MiB)
        assert not diskio.page_cached(fd, 4 * MiB - 10, 20)  # past the end: no pages there
        assert not diskio.page_cached(fd, 0, 0)
    finally:
        os.close(fd)
