"""The process tuning the daemon and its fetch worker share: glibc's malloc and the cyclic
garbage collector, set once at start."""

from __future__ import annotations

import gc


def tune_malloc() -> None:
    """Keep glibc from returning every freed socket buffer to the kernel.

    Each ~256 KiB read from a socket is a fresh bytes object; with glibc's defaults the
    heap is grown and trimmed around every one of them (one brk and fresh zeroed pages
    per read), which cost ~0.6 CPU s per GiB downloaded. A high trim threshold and a
    top pad keep that memory for reuse; untouched pad pages are not resident.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024 * 1024)
    libc.mallopt(m_top_pad, 16 * 1024 * 1024)


def tune_gc() -> None:
    """The jobs loaded at start live as long as the daemon: keep the cyclic collector from
    walking them again and again (``gc.freeze``), and let it run less often; a transfer's
    per-file objects are acyclic and go with reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
