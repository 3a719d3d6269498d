"""Local and mounted file systems: a ``file://`` URL or absolute path copied into the
temporary file with ``copy_file_range``, opened with the job owner's rights
(``files.open_as_owner``), checkpointed every ``checkpoint_bytes``.  The source's size and
mtime are its validators: a source that changed during the copy starts it again."""

from __future__ import annotations

import asyncio
import os
import stat
from email.utils import formatdate

from openbits.errors import HResult, SourceFileError
from openbits.transfer import files as fs
from openbits.transfer.checks import RESTART, Restart
from openbits.transfer.fetch import Fetched, FileDownload
from openbits.transfer.owner import opened_off_loop

#: bytes copied per step from a local source while a bandwidth limit applies
LOCAL_LIMITED_STEP = 256 * 1024


async def download_local(d: FileDownload, source: str) -> Fetched | Restart:
    """Copy ``source`` into the file's temporary file, from its last checkpoint."""
    file, owner, progress, priority = d.file, d.owner, d.progress, d.priority
    throttle, tuning = d.transport.throttle, d.transport.tuning
    owners = d.transport.owners
    src, _ = await opened_off_loop(lambda: (fs.open_as_owner(owners, source, owner.uid, owner.gid), 0))
    try:
        with fs.translating(f"cannot copy {source}"):
            st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise SourceFileError(
                f"the source {source} is not a regular file", hresult=HResult.HRESULT_DIRECTORY
            )
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        offset = await d.open()
        fd = d.fd
        try:
            progress.connected()
            if file.etag != etag or file.bytes_total != st.st_size:
                offset = 0
                with fs.translating(f"cannot copy {source}"):
                    os.ftruncate(fd, 0)
                progress.begin(st.st_size, etag, formatdate(st.st_mtime, usegmt=True))
            d.transport.free_space.check(file.directory, st.st_size - offset)
            d.begin_check(offset)
            while offset < st.st_size:
                limited = throttle.is_limited(priority)
                step = LOCAL_LIMITED_STEP if limited else tuning.checkpoint_bytes
                count = min(step, st.st_size - offset)
                if limited:
                    await throttle.acquire(priority, count)
                with fs.translating(f"cannot copy {source}"):
                    n = await asyncio.to_thread(_copy_range, src, fd, offset, count)
                if n == 0:
                    return RESTART  # the source shrank under us
                offset += n
                if d.check is not None:  # (hashed from the page cache, in its worker)
                    d.check.catch_up(fd, offset)
                if offset < st.st_size:
                    progress.checkpoint(offset)
            with fs.translating(f"cannot copy {source}"):
                if os.fstat(src).st_mtime_ns != st.st_mtime_ns:
                    return RESTART  # the source changed under us
            await d.verify(offset)
            return Fetched(offset)
        finally:
            d.close()
    finally:
        os.close(src)


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``offset`` from src to dst, then fdatasync dst."""
    done = 0
    while done < count:
        n = os.copy_file_range(src, dst, count - done, offset + done, offset + done)
        if n == 0:
            break
        done += n
    os.fdatasync(dst)
    return done
