"""URL paths → places under the root, never outside it (issue 14 item 5).

A URL path is split on ``/`` as sent (percent-decoding each segment afterwards, so ``%2F``
cannot make a separator); ``.``, ``..``, empty names in the middle, NUL, names over 255
bytes and paths over 4096 bytes are refused. The directory is then opened one component at
a time from the root's fd with ``O_NOFOLLOW | O_DIRECTORY``: a symlink anywhere below the
root, even one pointing inside it, is refused (ELOOP / ENOTDIR). The root itself may be a
symlink: the administrator chose it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from openbits.errors import HResult
from openbits.uploadserver.protocol import ERROR_PATH_NOT_FOUND, UploadFailure, invalid

PARTIAL_PREFIX = ".bits-"  # the partial files of sessions: ".bits-{ID}.part", beside their targets
PARTIAL_SUFFIX = ".part"
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Target:
    """Where an upload goes: its directory (components under the root) and its file name."""

    parts: tuple[str, ...]
    name: str

    @property
    def relative(self) -> str:
        return "/".join((*self.parts, self.name))


def parse_target(raw_path: str) -> Target:
    """The target of a raw (still percent-encoded) URL path relative to the mount point."""
    if len(raw_path.encode()) > PATH_MAX_BYTES:
        raise invalid("path too long")
    segments = raw_path.split("/")
    while segments and segments[0] == "":
        segments.pop(0)
    if not segments or segments[-1] == "":
        raise invalid("no file name")
    names: list[str] = []
    for segment in segments:
        decoded = unquote_to_bytes(segment)
        if segment in ("", ".", "..") or decoded in (b"", b".", b".."):
            raise invalid("'.', '..' and empty names are refused")
        if b"\x00" in decoded or b"/" in decoded:
            raise invalid("NUL and '/' are refused in names")
        if len(decoded) > NAME_MAX_BYTES:
            raise invalid("name too long")
        try:
            names.append(decoded.decode("utf-8", "surrogateescape"))
        except UnicodeDecodeError:
            raise invalid("bad name") from None
    if names[-1].startswith(PARTIAL_PREFIX) and names[-1].endswith(PARTIAL_SUFFIX):
        raise invalid("the names of partial files are reserved")
    return Target(tuple(names[:-1]), names[-1])


def open_directory(root_fd: int, parts: tuple[str, ...]) -> int:
    """An fd of the target's directory, walked from the root without following a symlink.

    A missing directory → 404 (IIS: the URL does not exist; uploads make no directories);
    a symlink or a non-directory on the way → 400 E_INVALIDARG.
    """
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise UploadFailure(404, ERROR_PATH_NOT_FOUND, "no such directory") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise invalid("a symlink or a file on the path") from None
                raise UploadFailure(403, HResult.E_ACCESSDENIED, "directory not usable") from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_target_file(dir_fd: int, name: str, allow_overwrite: bool) -> None:
    """The target name may be written: absent, or a regular file we may replace.

    A symlink or anything not a regular file → 400; an existing file without
    allow_overwrite → 409 E_ACCESSDENIED (Create-Session's 409, bits-spec §6.3).
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise invalid("the target is not a regular file")
    if not allow_overwrite:
        raise UploadFailure(409, HResult.E_ACCESSDENIED, "the file exists and may not be overwritten")


def fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


def unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
