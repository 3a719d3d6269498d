"""The file-system actions of a job, done with the rights of the process that runs them.

A root daemon runs them in a helper process that has become the job's owner
(``owner.py``); a daemon that runs as its only user runs them itself.  The code is the
same either way, so the behaviour is.  Every path is walked from ``/`` one component at
a time with ``O_PATH|O_DIRECTORY|O_NOFOLLOW``, and the last name is used relative to the
directory fd: no component may be a symbolic link (ELOOP) unless root made it (the
system's layout), so no user's symlink can send a job anywhere, and nothing can be swapped
between a check and its use; the last name is never followed.  A path without any
symlink is opened in one openat2(2) call with RESOLVE_NO_SYMLINKS (the same directory,
without an open and a close per component: one temporary file per downloaded file); any
other path, or a kernel without openat2, takes the walk.
Existing temporary files must be regular, the process's own and singly linked (a hard
link to someone else's file is not truncated); new ones are made with O_EXCL.

This module imports the standard library only: the helper runs it as a script
(``python -I -S fsops.py UID GID GROUPS FD``), without the package, so it starts fast.
Errors are OSError (the helper sends back the errno); ``files.local_error`` translates them.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import stat
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

#: open an existing file without blocking on a FIFO a user planted, nor following a link
_EXISTING = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: a new temporary file: never through a link, never one that exists
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: a directory on the walk: search permission is enough (O_PATH), and no symlink
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: root's symlinks followed on one path at most (a loop of them ends in ELOOP)
MAX_ROOT_LINKS = 8

#: openat2(2)'s syscall number (the same on every architecture listed: the unified table) and
#: its RESOLVE_NO_SYMLINKS; AT_FDCWD
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset({"x86_64", "aarch64", "riscv64", "ppc64le", "s390x"})
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of openat2(2)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


#: the one ``open_how`` every call passes (a constant: the kernel only reads it), and its size
_DIR_HOW = _OpenHow(_DIR, 0, _RESOLVE_NO_SYMLINKS)
_DIR_HOW_REF = ctypes.byref(_DIR_HOW)
_DIR_HOW_SIZE = ctypes.sizeof(_DIR_HOW)


def _load_syscall() -> Any:
    """libc's ``syscall`` where openat2 has the number above, else None (the walk alone)."""
    if sys.platform != "linux" or os.uname().machine not in _OPENAT2_MACHINES:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


#: loaded once (a constant: the C function, never changed)
_SYSCALL = _load_syscall()

#: a request or answer on the helper's socket is one datagram of at most this size
MESSAGE_BYTES = 65536
#: the names ``list_dir`` answers take this much of an answer at most (JSON)
LIST_BYTES = MESSAGE_BYTES - 1024


def split(path: str) -> tuple[str, str]:
    """(directory, name) of an absolute path whose last component is a name."""
    directory, name = os.path.split(path)
    if not os.path.isabs(path) or not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "not an absolute file path", path)
    return directory, name


def open_dir(directory: str) -> int:
    """An O_PATH fd of ``directory``, walked from / without following a symlink, except
    one owned by root (the system's layout: /home -> var/home, /lib -> usr/lib), whose
    target is walked the same way (at most ``MAX_ROOT_LINKS`` of them)."""
    if not os.path.isabs(directory):
        raise OSError(errno.EINVAL, "not an absolute path", directory)
    names = directory.split("/")
    if ".." in names:
        raise OSError(errno.EINVAL, "'..' in a path", directory)
    fd = _open_without_links(directory)
    if fd >= 0:
        return fd
    parts = deque(p for p in names if p and p != ".")
    links = 0
    fd = os.open("/", _DIR)
    try:
        while parts:
            part = parts.popleft()
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except NotADirectoryError:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise
                if st.st_uid != 0 or links >= MAX_ROOT_LINKS:
                    raise OSError(errno.ELOOP, "a path component is a symbolic link", directory) from None
                links += 1
                target = os.readlink(part, dir_fd=fd)
                parts.extendleft(reversed([p for p in target.split("/") if p and p != "."]))
                if target.startswith("/"):
                    nxt = os.open("/", _DIR)
                else:
                    continue
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_without_links(directory: str) -> int:
    """The O_PATH fd of ``directory`` in one openat2(2) call that refuses every symlink on
    the way (RESOLVE_NO_SYMLINKS), or -1 when that call fails for any reason (a symlink,
    root's too, an error, a kernel without openat2): the walk of ``open_dir`` then decides,
    and says why.  The same fd the walk would give, without one open and close per
    component (a temporary file per downloaded file: the small-file path)."""
    if _SYSCALL is None:
        return -1
    fd: int = _SYSCALL(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(directory), _DIR_HOW_REF, _DIR_HOW_SIZE)
    return fd if fd >= 0 else -1


def searchable_dir(directory: str) -> int:
    """The O_PATH fd of ``directory`` (``open_dir``) if the process may reach the files in
    it (search permission), else EACCES: an O_PATH open needs no right on the directory
    itself, so this says the process could use it."""
    fd = open_dir(directory)
    if not os.access(".", os.X_OK, dir_fd=fd, effective_ids=True):
        os.close(fd)
        raise OSError(errno.EACCES, "the directory cannot be searched", directory)
    return fd


def _check_own_file(fd: int, path: str, euid: int | None = None) -> None:
    """``fd`` is a regular file of this process's user (``euid`` if the caller read it
    already) with one link, else EACCES."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EACCES, "not a regular file", path)
    if st.st_nlink != 1 or st.st_uid != (os.geteuid() if euid is None else euid):
        raise OSError(errno.EACCES, "the temporary file is linked elsewhere or not the owner's", path)


def open_temp(path: str) -> tuple[int, bool]:
    """(fd, created): the temporary file ``path`` for reading and writing, created (O_EXCL,
    0600) if absent; an existing one must be the owner's own, singly linked, regular file."""
    directory, name = split(path)
    dfd = open_dir(directory)
    try:
        # created first: most temporary files are new (a job of small files: one syscall each)
        for _ in range(3):
            try:
                return os.open(name, _CREATE, 0o600, dir_fd=dfd), True
            except FileExistsError:
                pass
            try:
                fd = os.open(name, os.O_RDWR | _EXISTING, dir_fd=dfd)
            except FileNotFoundError:
                continue  # removed in between: create it
            try:
                _check_own_file(fd, path)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd, False
        raise OSError(errno.EEXIST, "the temporary file keeps appearing and vanishing", path)
    finally:
        os.close(dfd)


def create_temp(path: str) -> int:
    """A new temporary file ``path`` for reading and writing (O_EXCL, 0600, never through a
    link): EEXIST if the name is taken, whoever took it."""
    directory, name = split(path)
    dfd = open_dir(directory)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, 0o600, dir_fd=dfd)
    finally:
        os.close(dfd)


def open_source(path: str) -> int:
    """``path`` opened read-only: a regular file (a FIFO or device is refused, unopened
    for long enough to block)."""
    directory, name = split(path)
    dfd = open_dir(directory)
    try:
        fd = os.open(name, os.O_RDONLY | _EXISTING, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EACCES, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def publish(temp_path: str, local_file: str, mode: int, mtime: float | None) -> None:
    """Give the temporary file its published ``mode`` and ``mtime`` and rename it to
    ``local_file`` (the same directory: the temporary file sits beside its LocalFile)."""
    directory, temp = split(temp_path)
    target_dir, target = split(local_file)
    dfd = open_dir(directory)
    try:
        tdfd = dfd if target_dir == directory else open_dir(target_dir)
        try:
            _publish_one(dfd, tdfd, temp, target, mode, mtime)
        finally:
            if tdfd != dfd:
                os.close(tdfd)
    finally:
        os.close(dfd)


def publish_batch(
    directory: str, target_directory: str, mode: int, items: Sequence[Sequence[Any]]
) -> list[Any]:
    """``publish`` for many files of one directory (``[temp_name, target_name, mtime]``
    each, renamed to ``target_directory``), in order: each directory is opened once for all
    of them, not once per file (a job of 2,000 small files: two syscalls fewer each, and one
    helper round trip for the lot).  Every file gets what ``publish`` gives it: opened
    without following a link, checked to be our own singly linked regular file, ``mode``
    and its mtime set through that fd, renamed relative to the directories' fds.

    Stops at the first file that fails: ``[done, errno, message]`` with ``done`` the number
    renamed before it (``errno`` 0 when every one was), a value rather than an exception so
    the caller knows which files are published (the helper sends an exception's errno
    alone)."""
    done = 0
    try:
        dfd = open_dir(directory)
        try:
            tdfd = dfd if target_directory == directory else open_dir(target_directory)
            try:
                euid = os.geteuid()  # (once: the process's ids do not change)
                for temp, target, mtime in items:
                    _publish_one(dfd, tdfd, _name(temp), _name(target), mode, mtime, euid)
                    done += 1
            finally:
                if tdfd != dfd:
                    os.close(tdfd)
        finally:
            os.close(dfd)
    except OSError as e:
        return [done, e.errno or errno.EIO, e.strerror or str(e)]
    return [done, 0, ""]


def _name(name: Any) -> str:
    """``name`` if it is one name in a directory (no ``/``, not ``.`` nor ``..``), else EINVAL."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise OSError(errno.EINVAL, "not a file name", str(name))
    return name


def _publish_one(
    dfd: int, tdfd: int, temp: str, target: str, mode: int, mtime: float | None, euid: int | None = None
) -> None:
    """Mode and mtime of the temporary file ``temp`` in ``dfd`` (opened without following
    a link, checked to be our own), then its rename to ``target`` in ``tdfd``."""
    fd = os.open(temp, os.O_RDONLY | _EXISTING, dir_fd=dfd)
    try:
        _check_own_file(fd, temp, euid)
        os.fchmod(fd, mode)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
    os.rename(temp, target, src_dir_fd=dfd, dst_dir_fd=tdfd)


def unlink(path: str) -> bool:
    """Remove the file ``path`` (never a directory); True if it existed."""
    directory, name = split(path)
    dfd = open_dir(directory)
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    finally:
        os.close(dfd)
    return True


def exists(path: str) -> bool:
    """Whether ``path`` names something (a symlink counts), reached without symlinks."""
    directory, name = split(path)
    try:
        dfd = open_dir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(dfd)
    return True


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` (a rename in it is durable); skipped when it cannot be read."""
    dfd = open_dir(directory)
    try:
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except PermissionError:
            return  # (search-only directory: the owner could not sync it either)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def check_destination(local_file: str) -> None:
    """The directory of ``local_file`` is reached without symlinks and the process may
    create files in it (EACCES otherwise); ``local_file`` is no directory (EISDIR)."""
    directory, name = split(local_file)
    dfd = open_dir(directory)
    try:
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=dfd, effective_ids=True):
            raise OSError(errno.EACCES, "the directory is not writable", directory)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory", local_file)
    finally:
        os.close(dfd)


def list_dir(directory: str, max_names: int) -> list[str]:
    """The names in ``directory`` (reached as ``open_dir`` walks, so not through a user's
    symlink, nor one itself), sorted, at most ``max_names`` of them and no more than fit in
    one answer (``LIST_BYTES`` of JSON): the first ones in order when there are more.  The
    directory must be readable (EACCES otherwise)."""
    dfd = open_dir(directory)
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    kept: list[str] = []
    size = 0
    for name in names[: max(0, max_names)]:
        size += len(json.dumps(name)) + 2
        if size > LIST_BYTES:
            break
        kept.append(name)
    return kept


#: the actions by name; each returns an fd (sent with SCM_RIGHTS), a pair (fd, value) or
#: a JSON value
ACTIONS: dict[str, Callable[..., Any]] = {
    "open_temp": open_temp,
    "create_temp": create_temp,
    "open_source": open_source,
    "publish": publish,
    "publish_batch": publish_batch,
    "unlink": unlink,
    "exists": exists,
    "fsync_dir": fsync_dir,
    "check_destination": check_destination,
    "list_dir": list_dir,
    "searchable_dir": searchable_dir,
}

#: the actions whose result is a file descriptor (first of a pair for open_temp)
FD_ACTIONS = frozenset({"open_temp", "create_temp", "open_source", "searchable_dir"})


# -- the helper process ---------------------------------------------------------------------


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Drop every privilege for good: groups, gid, uid (real, effective and saved), then
    check that root cannot be had back.  Changing ids also makes the process undumpable,
    so the owner cannot ptrace the helper into answering for him."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise SystemExit("the helper could take root back")


def serve(sock: socket.socket) -> None:
    """Answer requests (one JSON datagram ``[action, args]`` each) until the socket closes:
    ``{"ok": value}`` with the fd attached, or ``{"errno": n, "message": text}``."""
    while True:
        data = sock.recv(MESSAGE_BYTES)
        if not data:
            return
        fds: list[int] = []
        try:
            action, args = json.loads(data)
            result = ACTIONS[action](*args)
            if action in FD_ACTIONS:
                if isinstance(result, tuple):
                    fds, result = [result[0]], result[1]
                else:
                    fds, result = [result], None
            answer: dict[str, Any] = {"ok": result}
        except OSError as e:
            answer = {"errno": e.errno or errno.EIO, "message": e.strerror or str(e)}
        except (ValueError, KeyError, TypeError) as e:
            answer = {"errno": errno.EINVAL, "message": f"bad request: {e}"}
        try:
            socket.send_fds(sock, [json.dumps(answer).encode()], fds)
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str]) -> int:
    """``fsops.py UID GID GROUPS FD``: become UID and serve on the inherited socket FD."""
    uid, gid, groups, fd = int(argv[1]), int(argv[2]), argv[3], int(argv[4])
    sock = socket.socket(fileno=fd)
    os.umask(0o077)
    become(uid, gid, [int(g) for g in groups.split(",") if g])
    with sock:
        serve(sock)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs in the helper process
    sys.exit(main(sys.argv))
