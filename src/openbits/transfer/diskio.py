"""Write-back hints the stdlib lacks, through libc (ctypes): start writing a range to disk
now (``sync_file_range``), and reserve a file's blocks ahead (``fallocate`` KEEP_SIZE).

Both are hints: they make the final ``fdatasync`` of a download short (most of the file is
already on its way to the disk when the body ends) and keep the file in few extents.  Neither
makes anything durable, so no checkpoint ever depends on them; where a call is missing or
refused the hint is simply skipped (``posix_fadvise(DONTNEED)``, which also starts
write-back, stands in for ``sync_file_range``).  Errors that matter (a full disk, EIO) are
left to the writes and the ``fdatasync`` that follow, where the caller translates them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Callable
from typing import cast

#: sync_file_range: start write-out of the dirty pages in the range, do not wait
SYNC_FILE_RANGE_WRITE = 2
#: fallocate: allocate blocks without changing the file's size (a resumed temporary file's
#: size is the offset it resumes from)
FALLOC_FL_KEEP_SIZE = 1

_RangeCall = Callable[[int, int, int, int], int]


@functools.cache
def _libc_call(name: str) -> _RangeCall | None:
    """``int name(int fd, off64_t, off64_t, unsigned/int)`` from libc, or None."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    if name == "fallocate":
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    else:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(_RangeCall, fn)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes at ``offset`` of ``fd`` to disk without waiting
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); where that is missing,
    ``posix_fadvise(DONTNEED)``, which starts write-back too (and drops the clean pages).
    A refusal is ignored: this is only a head start for the ``fdatasync`` to come."""
    fn = _libc_call("sync_file_range")
    if fn is not None and fn(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0:
        return
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve the blocks of ``length`` bytes at ``offset`` without changing the file's size
    (``fallocate(FALLOC_FL_KEEP_SIZE)``); False when the file system cannot, or has not the
    room (the writes then allocate as they go, and report a full disk themselves)."""
    fn = _libc_call("fallocate")
    if fn is None or length <= 0:
        return False
    if fn(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINTR, errno.EAGAIN):
        return fn(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0
    return False


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


#: cachestat(2)'s number on x86-64 and arm64 alike (Linux ≥ 6.5; the generic table's)
_SYS_CACHESTAT = 451
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _syscall() -> Callable[..., int] | None:
    """libc's ``syscall``, where cachestat(2) answers on this machine (else None)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    probe = _Cachestat()
    if fn(_SYS_CACHESTAT, -1, ctypes.byref(_CachestatRange(0, 1)), ctypes.byref(probe), 0) == 0:
        return None  # (an fd of -1 must fail: something else answers to that number)
    if ctypes.get_errno() != errno.EBADF:
        return None  # ENOSYS (before 6.5), or a seccomp filter's EPERM
    return cast(Callable[..., int], fn)


def page_cached(fd: int, offset: int, length: int) -> bool:
    """Whether the page cache holds all of ``length`` bytes of ``fd`` at ``offset`` (reading
    them will not wait for the disk), by cachestat(2); False where it is missing or refused,
    and for a range beyond the file's end (which has no pages)."""
    syscall = _syscall()
    if syscall is None or length <= 0:
        return False
    first = offset // _PAGE_BYTES
    pages = (offset + length + _PAGE_BYTES - 1) // _PAGE_BYTES - first
    stat = _Cachestat()
    span = _CachestatRange(first * _PAGE_BYTES, pages * _PAGE_BYTES)
    if syscall(_SYS_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
        return False
    return bool(stat.nr_cache >= pages)
