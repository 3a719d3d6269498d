"""TakeOwnership's files: the old owner's temporary files copied into new ones of the new
owner; no inode is ever handed over.

A file the old owner made he may still hold open (read-write, and any mode he gave it), or
have linked elsewhere: giving that inode to the new owner would let him rewrite the new
owner's file, even once published.  So the new owner's helper creates a fresh temporary
file (a name no one can foresee, ``files.fresh_temp_name``, O_EXCL, 0600) beside the old
one, the bytes up to the file's checkpoint are copied into it from an fd the old owner's
helper opened read-only, and it is made durable (fdatasync, then its directory) before the
caller commits the new names.  What the old owner left is removed after the commit, as him
(``remove_old``: a link he planted is only a name removed).  A file of his that cannot be
read as his own regular file (gone, a symlink, a FIFO, shorter than its checkpoint, his
helper not answering) is not refused: it starts again from byte 0 as the new owner's.

Everything here does I/O through the owners' helpers (each answers within its timeout):
callers run it in a worker thread, off the event loop.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openbits.errors import AccessDenied, HResult
from openbits.transfer.files import check_new_owner, fsync_dir, local_error, remove_quietly, translating

if TYPE_CHECKING:
    from openbits.transfer.owner import Owners

#: the most bytes one pread/pwrite moves where copy_file_range cannot be used
_CHUNK_BYTES = 1 << 20
#: copy_file_range's errors that mean "not here" (another file system, an old kernel):
#: the bytes are then copied by hand
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


@dataclass(slots=True)
class Move:
    """One unpublished file of a job whose ownership is taken."""

    old_path: str | None  # the old owner's temporary file (None: it never had a name)
    new_path: str  # the new owner's, beside it under a fresh name
    length: int  # the bytes to keep: the file's checkpoint
    needed: bool  # a copy is made (bytes to keep, or a completed empty file)
    kept: bool = False  # the copy holds ``length`` bytes (else the file starts again from 0)
    made: bool = False  # the new file exists (removed if the commit fails)


def prepare(
    owners: Owners, local_files: list[str], old_uid: int, new_uid: int, new_gid: int | None, moves: list[Move]
) -> None:
    """The new owner may create files in every directory of ``local_files`` (else
    BG_E_NEW_OWNER_NO_FILE_ACCESS, nothing made), then each move that is ``needed`` is
    copied, durably.  On any error the copies made are removed and the error raised."""
    check_new_owner(owners, local_files, new_uid, new_gid)
    try:
        for move in moves:
            if move.needed:
                _copy(owners, old_uid, new_uid, new_gid, move)
        for directory in sorted({os.path.dirname(m.new_path) for m in moves if m.made}):
            fsync_dir(owners, new_uid, new_gid, directory)  # (the new names survive a crash)
    except BaseException:
        discard(owners, new_uid, new_gid, moves)
        raise


def discard(owners: Owners, new_uid: int, new_gid: int | None, moves: list[Move]) -> None:
    """Remove the new owner's copies (the commit failed, or the job changed meanwhile)."""
    for move in moves:
        if move.made and remove_quietly(owners, new_uid, new_gid, move.new_path):
            move.made = False


def remove_old(owners: Owners, old_uid: int, moves: list[Move]) -> None:
    """Remove what the old owner left under the old names, as him, quietly (once the new
    names are stored: a crash before leaves him a stray file, never the job without one)."""
    for move in moves:
        remove_quietly(owners, old_uid, None, move.old_path)


def _copy(owners: Owners, old_uid: int, new_uid: int, new_gid: int | None, move: Move) -> None:
    src = _open_old(owners, old_uid, move)
    if src is None:
        return  # (not kept: it starts again from byte 0)
    try:
        try:
            dst = owners.create_temp(new_uid, new_gid, move.new_path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return  # (its directory is gone: the file fails for any owner, from byte 0)
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP):
                raise AccessDenied(
                    f"the new owner cannot create {move.new_path}: {e.strerror}",
                    hresult=HResult.BG_E_NEW_OWNER_NO_FILE_ACCESS,
                ) from e
            raise local_error(e, f"cannot create {move.new_path}") from e
        move.made = True
        try:
            with translating(f"cannot copy the temporary file to {move.new_path}"):
                move.kept = _copy_bytes(src, dst, move.length)
                os.fdatasync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _open_old(owners: Owners, old_uid: int, move: Move) -> int | None:
    """A read-only fd of the old owner's temporary file, opened by him (no symlink, a
    regular file) and his own, at least ``length`` bytes long; None when it is not."""
    if move.old_path is None:
        return None
    try:
        fd = owners.open_source(old_uid, None, move.old_path)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != old_uid or st.st_size < move.length:
        os.close(fd)
        return None
    return fd


def _copy_bytes(src: int, dst: int, length: int) -> bool:
    """Copy bytes [0, length) of ``src`` to ``dst`` (copy_file_range: in the kernel, and
    shared extents where the file system can); False when ``src`` ends first."""
    pos = 0
    while pos < length:
        try:
            n = os.copy_file_range(src, dst, length - pos, pos, pos)
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE:
                raise
            n = _copy_chunk(src, dst, pos, min(length - pos, _CHUNK_BYTES))
        if n == 0:
            return False
        pos += n
    return True


def _copy_chunk(src: int, dst: int, pos: int, count: int) -> int:
    data = os.pread(src, count, pos)
    done = 0
    while done < len(data):
        done += os.pwrite(dst, data[done:], pos + done)
    return len(data)
