"""Every file-system action of a job, with its owner's uid, gid and groups: never root's.

A root daemon serving several users keeps one helper process per owner while that owner
has work (``Owners``).  The helper is ``python -I -S fsops.py`` started by the daemon as
root (so it can read the daemon's own code wherever it is installed) that at once drops to
the owner's ids for good (``fsops.become``), then does what it is asked over a
``SOCK_SEQPACKET`` socketpair: one JSON datagram a request, one answer, descriptors passed
back with SCM_RIGHTS.  The daemon writes and reads through the fds it is given, so the
bytes land in the owner's files.  A daemon that is not root (the user daemon), and root's
own jobs, run the same actions (``fsops``) in-process: the behaviour is the same.

The helper runs as the owner, who may signal it: an answer is waited for at most
``timeout_s`` (5 s); a helper that does not answer is killed, and its owner's actions then
fail at once for ``pause_s`` (60 s), so an owner who stops his helper stalls the daemon for
5 s a minute at most; one that died is replaced at the next call.  An answer is no more
trusted than its owner: an fd the daemon is given must be a regular file.  Errors come back
as OSError (their errno), which ``files.local_error`` translates, once.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from openbits.transfer import fsops

#: how long an owner's identity (primary group, groups) read from the databases is used
IDENTITY_TTL_S = 5.0
#: the longest path an action takes, in bytes (Linux's PATH_MAX less its NUL): a longer one
#: is ENAMETOOLONG here, as the kernel would answer, before it is sent (a request must fit
#: in one datagram of ``fsops.MESSAGE_BYTES``; a path of 4,095 bytes takes 12 KiB of JSON
#: at most)
PATH_MAX_BYTES = 4095


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a helper becomes: uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, uid: int, gid: int | None = None) -> Identity:
        """The user's identity from the password and group databases, read now; a uid that
        no longer exists is itself alone (its gid = its uid unless given, no other group)."""
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            primary = uid if gid is None else gid
            return cls(uid, primary, (primary,))
        primary = pw.pw_gid if gid is None else gid
        return cls(uid, primary, tuple(sorted(set(os.getgrouplist(pw.pw_name, primary)))))


def user_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class Helper:
    """One helper process acting as one owner, and the socket to it."""

    def __init__(self, identity: Identity, timeout_s: float) -> None:
        self.identity = identity
        self.used = time.monotonic()
        self._lock = threading.Lock()  # one request at a time (local copies run in threads)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            groups = ",".join(str(g) for g in identity.groups)
            args = [sys.executable, "-I", "-S", fsops.__file__]
            args += [str(identity.uid), str(identity.gid), groups, str(theirs.fileno())]
            self.proc = subprocess.Popen(
                args,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd="/",
                start_new_session=True,
            )
        mine.settimeout(timeout_s)
        self.sock = mine

    def call(self, action: str, args: list[Any]) -> tuple[Any, int | None]:
        """(value, fd or None) of ``action``; OSError with the helper's errno if it failed."""
        request = json.dumps([action, args]).encode()
        if len(request) > fsops.MESSAGE_BYTES:  # (not sent: EMSGSIZE would look like a dead helper)
            raise OSError(errno.ENAMETOOLONG, "the request is too long for the owner's helper")
        with self._lock:
            self.used = time.monotonic()
            try:
                self.sock.send(request)
                data, fds, _flags, _addr = socket.recv_fds(self.sock, fsops.MESSAGE_BYTES, 1)
            except TimeoutError:
                self.close(kill=True)
                raise OSError(errno.ETIMEDOUT, "the owner's helper did not answer") from None
            except OSError as e:
                self.close()
                raise OSError(e.errno or errno.EIO, "the owner's helper is gone") from e
            if not data:
                self.close()
                raise OSError(errno.EIO, "the owner's helper is gone")
            fd = fds[0] if fds else None
            for extra in fds[1:]:
                os.close(extra)
            try:
                answer = json.loads(data)
                if "ok" in answer:
                    return answer["ok"], fd
                err = int(answer["errno"])
                message = str(answer.get("message", os.strerror(err)))
            except (ValueError, KeyError, TypeError):
                err, message = errno.EIO, "the owner's helper answered nonsense"
            if fd is not None:
                os.close(fd)
            raise OSError(err, message)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() >= 0

    def close(self, *, kill: bool = False) -> None:
        """Close the socket (the helper exits at EOF), kill it if it lingers (or at once:
        ``kill``, one that stopped answering), reap it."""
        self.sock.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Owners:
    """The file-system actions of jobs, each with its owner's rights.

    ``in_process`` (default: the daemon is not root) runs every action here; a root daemon
    runs the actions of other users' jobs in their helpers, started on first use and closed
    once idle for ``idle_s`` (by a reaper thread that runs while any helper does) or at
    ``close``.
    """

    def __init__(
        self,
        *,
        in_process: bool | None = None,
        idle_s: float = 60.0,
        timeout_s: float = 5.0,
        pause_s: float = 60.0,
    ) -> None:
        #: the daemon's user: acts in process (read once, not a syscall per file; the
        #: daemon never changes its ids)
        self.euid = os.geteuid()
        self.in_process = self.euid != 0 if in_process is None else in_process
        self.idle_s = idle_s
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        #: uid -> until when (monotonic) its actions fail at once: its helper stopped
        #: answering (its owner may stop it), so no caller waits on it again for ``pause_s``
        self._paused: dict[int, float] = {}
        self._helpers: dict[Identity, Helper] = {}
        #: (uid, gid) -> (when read, identity): the databases are read again after IDENTITY_TTL_S
        self._identities: dict[tuple[int, int | None], tuple[float, Identity]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper: threading.Thread | None = None

    def _helper(self, identity: Identity) -> Helper:
        with self._lock:
            if self._closing.is_set():  # (a thread still at work after ``close``: no helper left behind)
                raise OSError(errno.ESHUTDOWN, "the daemon is shutting down")
            found = self._helpers.get(identity)
            if found is None or not found.alive:
                if found is not None:
                    found.close()  # (died, or killed after a timeout: reaped)
                found = self._helpers[identity] = Helper(identity, self.timeout_s)
            found.used = time.monotonic()  # (handed out: not idle, the reaper leaves it)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="openbits-owners", daemon=True)
                self._reaper.start()
            return found

    def _reap(self) -> None:
        """Close the helpers idle for ``idle_s``; end when none is left (a new helper starts
        another reaper) or at ``close``."""
        while not self._closing.wait(max(0.05, self.idle_s / 2)):
            now = time.monotonic()
            with self._lock:
                idle = [i for i, h in self._helpers.items() if now - h.used > self.idle_s or not h.alive]
                helpers = [self._helpers.pop(i) for i in idle]
                done = not self._helpers
                if done:
                    self._reaper = None
            for helper in helpers:
                helper.close()
            if done:
                return

    def run(self, uid: int, gid: int | None, action: str, *args: Any) -> tuple[Any, int | None]:
        """(value, fd or None) of ``action`` run as ``uid`` (with ``gid`` as primary group
        if given, else the user's); a path longer than ``PATH_MAX_BYTES`` is ENAMETOOLONG,
        in-process or not."""
        _check_paths(args)
        if self.acts_in_process(uid):
            result = fsops.ACTIONS[action](*args)
            if action not in fsops.FD_ACTIONS:
                return result, None
            return (result[1], result[0]) if isinstance(result, tuple) else (None, result)
        until = self._paused.get(uid)
        if until is not None:
            if time.monotonic() < until:
                raise OSError(errno.EAGAIN, "the owner's helper stopped answering; try again later")
            self._paused.pop(uid, None)
        try:
            return self._helper(self._identity(uid, gid)).call(action, list(args))
        except OSError as e:
            if e.errno == errno.ETIMEDOUT:
                self._paused[uid] = time.monotonic() + self.pause_s
            raise

    def _identity(self, uid: int, gid: int | None) -> Identity:
        """The owner's identity, read from the databases at most ``IDENTITY_TTL_S`` ago (as
        ``api/peer.Callers`` reads administrators): a group change reaches his next actions
        within seconds, and a busy owner costs no database read per file."""
        now = time.monotonic()
        seen = self._identities.get((uid, gid))
        if seen is not None and now - seen[0] < IDENTITY_TTL_S:
            return seen[1]
        identity = Identity.of(uid, gid)
        with self._lock:
            if len(self._identities) > 1024:
                self._identities.clear()
            self._identities[uid, gid] = (now, identity)
        return identity

    def acts_in_process(self, uid: int) -> bool:
        """Whether ``uid``'s actions run here (fast) rather than in a helper (a round trip
        that may take up to ``timeout_s``: callers on the event loop run those in a thread)."""
        return self.in_process or uid == self.euid

    def helpers(self) -> list[int]:
        """The pids of the helpers running (for tests and metrics)."""
        with self._lock:
            return [h.proc.pid for h in self._helpers.values() if h.alive]

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            helpers, self._helpers = list(self._helpers.values()), {}
            reaper, self._reaper = self._reaper, None
        for helper in helpers:
            helper.close()
        if reaper is not None:
            reaper.join()

    # -- the actions -------------------------------------------------------------------------

    def open_temp(self, uid: int, gid: int | None, path: str) -> tuple[int, bool]:
        """(fd, created) of a temporary file (``fsops.open_temp``)."""
        if self.acts_in_process(uid):  # (as ``run`` does it: once per small file, so directly)
            _check_paths((path,))
            return fsops.open_temp(path)  # (its own fd: regular, checked there)
        created, fd = self.run(uid, gid, "open_temp", path)
        return _regular(_given(fd), path), bool(created)

    def create_temp(self, uid: int, gid: int | None, path: str) -> int:
        """A new temporary file (``fsops.create_temp``: O_EXCL, 0600)."""
        return _regular(_given(self.run(uid, gid, "create_temp", path)[1]), path)

    def open_source(self, uid: int, gid: int | None, path: str) -> int:
        """A local source opened read-only with the owner's rights."""
        return _regular(_given(self.run(uid, gid, "open_source", path)[1]), path)

    def open_directory(self, uid: int, gid: int | None, directory: str) -> int:
        """A read-only fd of ``directory`` if the owner reaches it and may search it (walked
        without a user's symlink: ``fsops.searchable_dir``), opened again here from the
        O_PATH fd his action sent (so a search-only directory will do): no content is read
        through it, it is for ``syncfs``."""
        fd = _given(self.run(uid, gid, "searchable_dir", directory)[1])
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", directory)
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)

    def publish(
        self, uid: int, gid: int | None, temp: str, local_file: str, mode: int, mtime: float | None
    ) -> None:
        self.run(uid, gid, "publish", temp, local_file, mode, mtime)

    def publish_batch(
        self,
        uid: int,
        gid: int | None,
        directory: str,
        target_directory: str,
        mode: int,
        items: list[tuple[str, str, float | None]],
    ) -> tuple[int, OSError | None]:
        """(done, error): ``fsops.publish_batch`` of ``items`` (``(temp_name, target_name,
        mtime)``), in order, until the first that fails: ``done`` were renamed, and
        ``error`` (None if none failed) is why the next one was not, or why its helper
        could not say (the files after ``done`` are then in an unknown state).  A helper
        takes them in as few requests as fit in its datagrams."""
        done = 0
        # (in process: no datagram to fit in, so one call and no JSON)
        in_process = self.acts_in_process(uid)
        chunks: Iterable[Sequence[Any]] = (
            [items] if in_process else _chunks(directory, target_directory, items)
        )
        try:
            for chunk in chunks:
                result = self.run(uid, gid, "publish_batch", directory, target_directory, mode, chunk)[0]
                n, err, message = _batch_answer(result, len(chunk))
                done += n
                if err:
                    return done, OSError(err, message)
        except OSError as e:
            return done, e
        return done, None

    def unlink(self, uid: int, gid: int | None, path: str) -> bool:
        return bool(self.run(uid, gid, "unlink", path)[0])

    def exists(self, uid: int, gid: int | None, path: str) -> bool:
        return bool(self.run(uid, gid, "exists", path)[0])

    def fsync_dir(self, uid: int, gid: int | None, directory: str) -> None:
        self.run(uid, gid, "fsync_dir", directory)

    def check_destination(self, uid: int, gid: int | None, local_file: str) -> None:
        self.run(uid, gid, "check_destination", local_file)

    def read(self, uid: int, gid: int | None, path: str, max_bytes: int) -> bytes:
        """The first ``max_bytes`` of ``path`` (EFBIG when it is longer), read with the
        owner's rights."""
        fd = self.open_source(uid, gid, path)
        with open(fd, "rb", closefd=True) as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
        return data

    def list_dir(self, uid: int, gid: int | None, directory: str, max_names: int) -> list[str]:
        """The names in ``directory`` listed with the owner's rights (``fsops.list_dir``:
        sorted, at most ``max_names``); a name that could not be one is never passed on."""
        names = self.run(uid, gid, "list_dir", directory, max_names)[0]
        if not isinstance(names, list):
            raise OSError(errno.EIO, "the owner's helper answered nonsense")
        return [
            n
            for n in names
            if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\0" not in n
        ]


def _check_paths(args: tuple[Any, ...]) -> None:
    """ENAMETOOLONG for a path (a string argument) longer than ``PATH_MAX_BYTES``; encoded
    only when it might be (a character is at most 4 bytes): not once per small file."""
    for arg in args:
        if isinstance(arg, str) and len(arg) * 4 > PATH_MAX_BYTES and len(os.fsencode(arg)) > PATH_MAX_BYTES:
            raise OSError(errno.ENAMETOOLONG, f"a path is longer than {PATH_MAX_BYTES} bytes")


def _chunks(
    directory: str, target_directory: str, items: list[tuple[str, str, float | None]]
) -> Iterator[list[list[Any]]]:
    """``items`` in runs that each fit in one request to a helper (``fsops.MESSAGE_BYTES``),
    sized with the same JSON encoding the request uses (the rest of the request: its
    action, directories and mode, and room to spare)."""
    rest = len(json.dumps(["publish_batch", [directory, target_directory, 0o7777, []]]))
    budget = fsops.MESSAGE_BYTES - rest - 64
    chunk: list[list[Any]] = []
    size = 0
    for temp, target, mtime in items:
        item: list[Any] = [temp, target, mtime]
        cost = len(json.dumps(item)) + 2
        if chunk and size + cost > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


def _batch_answer(result: Any, sent: int) -> tuple[int, int, str]:
    """(done, errno, message) of a ``publish_batch`` answer, checked: a helper is no more
    trusted than its owner, and a count it cannot have done is nonsense (EIO)."""
    try:
        done, err, message = result
        if isinstance(done, int) and isinstance(err, int) and 0 <= done <= sent and (err or done == sent):
            # (every file renamed, then an error, e.g. closing a directory: they are published)
            return (done, 0, "") if done == sent else (done, err, str(message))
    except (TypeError, ValueError):
        pass
    return 0, errno.EIO, "the owner's helper answered nonsense"


def _given(fd: int | None) -> int:
    if fd is None:
        raise OSError(errno.EIO, "the owner's helper sent no file")
    return fd


def _regular(fd: int, path: str) -> int:
    """``fd`` if it is a regular file: whatever a helper sends is checked before use."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EACCES, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def read_as_owner(owners: Owners, uid: int, path: str, max_bytes: int, gid: int | None = None) -> bytes:
    """The bytes of ``path`` read with the rights of ``uid`` (a client certificate, an
    upload's source), ``gid`` his primary group if given: OSError as ``fsops`` raises it,
    translated by the caller."""
    import asyncio

    read: Callable[[int, int | None, str, int], bytes] = owners.read
    return await asyncio.to_thread(read, uid, gid, path, max_bytes)


async def list_as_owner(
    owners: Owners, uid: int, directory: str, max_names: int, gid: int | None = None
) -> list[str]:
    """The names in ``directory`` listed with the rights of ``uid`` (``Owners.list_dir``):
    OSError as ``fsops`` raises it, translated by the caller."""
    import asyncio

    listed: Callable[[int, int | None, str, int], list[str]] = owners.list_dir
    return await asyncio.to_thread(listed, uid, gid, directory, max_names)


async def opened_off_loop(opener: Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """``opener()`` (an fd and a value) run in a thread, so a helper that is slow to answer
    stalls no one else; the fd is closed if the caller is cancelled meanwhile."""
    import asyncio

    future = asyncio.get_running_loop().run_in_executor(None, opener)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_opened)
        raise


def _close_opened(future: Any) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result()[0])
