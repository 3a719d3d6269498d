"""Local files: destination checks, temporary files, publishing, removal.

Every action on a job's files is done with its owner's rights through ``owner.Owners``
(in-process, or in the owner's helper process); this module says what to do and translates
what went wrong.  OSError is translated here, once, into BitsError with context LOCAL_FILE
(DESIGN rule 1).  A full disk is transient; permissions, symlinks on the way and missing
directories are fatal (SPEC §6).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote, urlsplit

from openbits.errors import (
    AccessDenied,
    BitsError,
    DiskFull,
    HResult,
    InvalidArgument,
    LocalFileError,
    PathNotFound,
    SourceFileError,
    SourceUnavailable,
)
from openbits.model import ErrorContext

if TYPE_CHECKING:
    from openbits.transfer.owner import Owners

TEMP_PREFIX = ".BIT"
TEMP_SUFFIX = ".tmp"


def local_error(e: OSError, what: str, context: ErrorContext = ErrorContext.LOCAL_FILE) -> BitsError:
    """The BitsError for an OSError on a local path."""
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: no space left on the device", context=context)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP):
        return LocalFileError(f"{what}: {e.strerror}", hresult=HResult.E_ACCESSDENIED, context=context)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return LocalFileError(
            f"{what}: {e.strerror}", hresult=HResult.HRESULT_PATH_NOT_FOUND, context=context
        )
    if code == errno.EISDIR:
        return LocalFileError(f"{what}: {e.strerror}", hresult=HResult.HRESULT_DIRECTORY, context=context)
    return LocalFileError(f"{what}: {e.strerror or e}", context=context)


class _Translating:
    __slots__ = ("context", "what")

    def __init__(self, what: str, context: ErrorContext) -> None:
        self.what, self.context = what, context

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if isinstance(error, OSError):
            raise local_error(error, self.what, self.context) from error


def translating(what: str, context: ErrorContext = ErrorContext.LOCAL_FILE) -> _Translating:
    """``with translating(what):`` an OSError inside is raised as its BitsError
    (``local_error``).  A class rather than a generator: it runs several times for each
    small file (0.3 µs a use, not 1.2)."""
    return _Translating(what, context)


class DirectoryNames:
    """Which of the LocalFiles of one call name directories (``os.path.isdir``: a symlink
    to one too), learned with one listing of a destination directory that many of them
    share instead of one ``stat`` per file (AddFileSet of thousands of files).

    A directory is listed only for ``LIST_MIN`` files or more, and the listing is given up
    (each file then ``stat``-ed as before) when it cannot be read or holds more than
    ``LIST_PER_FILE`` entries per file asked about: never much dearer than the ``stat``s."""

    LIST_MIN = 16
    LIST_PER_FILE = 4

    def __init__(self, local_files: Iterable[str]) -> None:
        self._wanted: dict[str, set[str]] = {}
        for local_file in local_files:
            directory, _, name = local_file.rpartition("/")
            self._wanted.setdefault(directory or "/", set()).add(name)
        self._found: dict[str, set[str] | None] = {}  # directory -> its wanted directories

    def is_dir(self, local_file: str) -> bool:
        directory, _, name = local_file.rpartition("/")
        directory = directory or "/"
        if directory not in self._found:
            self._found[directory] = self._list(directory)
        found = self._found[directory]
        if found is None or name not in self._wanted.get(directory, ()):
            return os.path.isdir(local_file)
        return name in found

    def _list(self, directory: str) -> set[str] | None:
        wanted = self._wanted.get(directory, set())
        if len(wanted) < self.LIST_MIN:
            return None
        budget = self.LIST_PER_FILE * len(wanted)
        found: set[str] = set()
        try:
            with os.scandir(directory) as entries:
                for n, entry in enumerate(entries):
                    if n >= budget:
                        return None
                    if entry.name in wanted and entry.is_dir():  # (follows a symlink, as isdir)
                        found.add(entry.name)
        except OSError:
            return None
        return found


def check_destination(
    owners: Owners,
    local_file: str,
    uid: int,
    gid: int | None,
    checked: set[str] | None = None,
    names: DirectoryNames | None = None,
) -> None:
    """The directory of ``local_file`` is reached without symlinks and the owner may create
    files in it, checked with the owner's rights (``owner.Owners``).

    Raises PathNotFound (0x80070003), AccessDenied or InvalidArgument.  Directories in
    ``checked`` passed already (many files added at once); the ones that pass are added.
    ``names`` tells then whether ``local_file`` is a directory (one listing, not a stat).
    """
    directory = os.path.dirname(local_file)
    if checked is not None and directory in checked:
        if names.is_dir(local_file) if names is not None else os.path.isdir(local_file):
            raise InvalidArgument(f"the local file {local_file} is a directory")
        return
    try:
        owners.check_destination(uid, gid, local_file)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise PathNotFound(f"the destination directory {directory} does not exist") from None
        if e.errno == errno.EISDIR:
            raise InvalidArgument(f"the local file {local_file} is a directory") from None
        if e.errno == errno.ELOOP:
            raise AccessDenied(f"the path to {local_file} goes through a symbolic link") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise AccessDenied(
                f"the destination directory {directory} is not writable by the job owner"
            ) from None
        raise local_error(e, f"cannot check {directory}") from e
    if checked is not None:
        checked.add(directory)


class FreeSpace:
    """Checks that a file fits before a byte of it is written: a file that cannot fit is a
    transient disk-full error.  Remembers each directory's free space for a second, so many
    small files in a row cost one ``statvfs`` a second (the downloader owns one)."""

    CACHE_S = 1.0

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}  # directory -> (when, bytes free)

    def check(self, directory: str, needed: int) -> None:
        if needed <= 0:
            return
        now = time.monotonic()
        seen = self._seen.get(directory)
        if seen is not None and now - seen[0] < self.CACHE_S and needed * 64 <= seen[1]:
            return
        with translating(f"cannot check the free space in {directory}"):
            st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if len(self._seen) > 1024:
            self._seen.clear()
        self._seen[directory] = (now, free)
        if free < needed:
            raise DiskFull(f"{directory} has {free} bytes free; the file needs {needed} more")


def temp_name_for(job_id: str, index: int) -> str:
    """The temporary file name of a job's file: ``.BIT<8 hex>.tmp``, derived from the job's
    random GUID and the file's position, so it is known before the file exists and never
    has to be committed before bytes are written (a crash leaves no orphan: the same name is
    found again)."""
    digest = hashlib.sha256(f"{job_id}/{index}".encode()).digest()[:4].hex().upper()
    return f"{TEMP_PREFIX}{digest}{TEMP_SUFFIX}"


def reply_temp_name(job_id: str) -> str:
    """The temporary file of an upload-reply job's reply, in the directory of its
    ReplyFileName (renamed to it at Complete): ``temp_name_for(job_id, -1)``, a name no file
    of the job takes (their positions start at 0)."""
    return temp_name_for(job_id, -1)


def fresh_temp_name() -> str:
    """A temporary file name no one can foresee (``.BIT<8 random hex>.tmp``): the name a new
    owner's copy takes at TakeOwnership (``handover``), recorded in the file row, so the old
    owner cannot plant a file or a link under it beforehand."""
    return f"{TEMP_PREFIX}{secrets.token_hex(4).upper()}{TEMP_SUFFIX}"


def open_temp(owners: Owners, path: str, uid: int, gid: int | None) -> int:
    """Open the temporary file for writing as its owner, creating it (O_EXCL, 0600) if
    absent; an existing one must be the owner's regular file with one link, reached
    without symlinks (``fsops.open_temp``)."""
    with translating(f"cannot open the temporary file {path}"):
        return owners.open_temp(uid, gid, path)[0]


def open_resumable(
    owners: Owners, path: str | None, uid: int, gid: int | None, offset: int
) -> tuple[int, int]:
    """(fd, offset) of a file's temporary file ``path``, created on first use, cut back to
    the last checkpoint ``offset`` (a temporary file that lost bytes starts again from 0)."""
    if path is None:
        raise LocalFileError("the file has no temporary name")
    with translating(f"cannot open the temporary file {path}"):
        fd, created = owners.open_temp(uid, gid, path)
    if created:
        return fd, 0  # (empty: nothing to cut back)
    try:
        with translating(f"cannot use the temporary file {path}"):
            size = os.fstat(fd).st_size
            if size < offset:
                offset = 0
            if size != offset:
                # (not on a new, empty file: on ext4 a truncated file is flushed at close)
                os.ftruncate(fd, offset)
    except BaseException:
        os.close(fd)
        raise
    return fd, offset


#: the months of an HTTP date (RFC 9110 §5.6.7), three letters each, in order
_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"


@functools.lru_cache(maxsize=256)
def http_date_to_unix(value: str | None) -> float | None:
    """The Unix time of a Last-Modified value, None if it is none.  The IMF-fixdate every
    server sends ("Sun, 06 Nov 1994 08:49:37 GMT") is read by slicing (half the email
    parser's time: a job of thousands of files may have as many dates); any other form by
    the email parser, whose answer it always gives."""
    if not value:
        return None
    try:
        digits = value[5:7] + value[12:16] + value[17:19] + value[20:22] + value[23:25]
        if (
            len(value) == 29
            and value[3:5] == ", "
            and value[25:] == " GMT"
            and digits.isascii()
            and digits.isdigit()
        ):
            at = _MONTHS.find(value[8:11])
            if at >= 0 and at % 3 == 0 and value[16] == " " and value[19] == value[22] == ":":
                month = at // 3 + 1
                day, year = int(value[5:7]), int(value[12:16])
                hms = int(value[17:19]), int(value[20:22]), int(value[23:25])
                return datetime(year, month, day, *hms, tzinfo=UTC).timestamp()
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def published_mode() -> int:
    """The mode of a published file: what a new file created by the process would get (0666
    less its umask).  Read once, by the composition root."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, from /proc/self/status (Linux 4.7+), which leaves it as it is;
    else by setting it and putting it back, which changes it for every thread for a moment."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def publish(
    owners: Owners, uid: int, gid: int | None, temp_path: str, local_file: str, mtime: float | None, mode: int
) -> None:
    """Make a finished temporary file the LocalFile, as its owner: mode, mtime, atomic rename.

    The temporary file stays owner-only (0600) until now, whatever the job's state (SPEC §3);
    its published ``mode`` (``published_mode``) and the server's Last-Modified are set through
    an fd opened without following links, and it is renamed relative to its directory's fd
    (``fsops.publish``).  Its bytes were made durable when the download finished; the caller
    fsyncs the directory once for all the files it publishes there (``fsync_dir``).
    """
    with translating(f"cannot publish {local_file}"):
        owners.publish(uid, gid, temp_path, local_file, mode, mtime)


def publish_batch(
    owners: Owners,
    uid: int,
    gid: int | None,
    directory: str,
    names: list[tuple[str, str, float | None]],
    mode: int,
) -> tuple[int, BitsError | None]:
    """``publish`` of each ``(temp_name, name, mtime)`` of ``names``: the temporary file
    ``temp_name`` in ``directory`` becomes its LocalFile ``name`` there (a temporary file
    sits beside its LocalFile), the directory opened once for all (``Owners.publish_batch``:
    one helper round trip for many files, not one per file), in order until the first that
    fails: (how many were published, why the next one was not, or None)."""
    done, error = owners.publish_batch(uid, gid, directory, directory, mode, names)
    if error is None:
        return done, None
    failed = os.path.join(directory, names[done][1]) if done < len(names) else directory
    return done, local_error(error, f"cannot publish {failed}")


def check_new_owner(owners: Owners, local_files: list[str], uid: int, gid: int | None) -> None:
    """TakeOwnership: the new owner ``uid`` may create files in the directory of every one of
    ``local_files`` (so publish them, and delete their temporary files), checked with his
    rights; else BG_E_NEW_OWNER_NO_FILE_ACCESS.  A directory that is gone is no reason to
    refuse (the file fails for any owner)."""
    checked: set[str] = set()
    for local_file in local_files:
        try:
            check_destination(owners, local_file, uid, gid, checked)
        except AccessDenied as e:
            raise AccessDenied(e.message, hresult=HResult.BG_E_NEW_OWNER_NO_FILE_ACCESS) from None
        except (PathNotFound, InvalidArgument):
            continue


async def open_sync_handle(owners: Owners, uid: int, gid: int | None, directory: str) -> int:
    """An fd for ``sync_handle``: one ``syncfs`` makes a batch of small files durable,
    instead of an fdatasync (and a journal commit) each.  syncfs reports a write-back error
    to each open file once, and only errors that happened after that file was opened: open
    it before the files it must vouch for are written, and use it for them alone.

    The directory is reached as the owner reaches it (``Owners.open_directory``: no user's
    symlink on the way), in a thread when that takes his helper; root only reopens what the
    owner walked to, so a symlink cannot make root open any directory."""
    from openbits.transfer.owner import opened_off_loop

    with translating(f"cannot open {directory}"):
        if owners.acts_in_process(uid):
            return owners.open_directory(uid, gid, directory)
        fd, _ = await opened_off_loop(lambda: (owners.open_directory(uid, gid, directory), 0))
        return fd


def sync_handle(fd: int, directory: str) -> None:
    """``syncfs`` through ``fd`` (see ``open_sync_handle``; ``sync()`` where syncfs is missing);
    OSError on a write-back error."""
    if _syncfs is None:
        os.sync()
    elif _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), directory)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


_syncfs = _load_syncfs()


def fsync_dir(owners: Owners, uid: int, gid: int | None, directory: str) -> None:
    with translating(f"cannot sync {directory}"):
        owners.fsync_dir(uid, gid, directory)


def remove_quietly(owners: Owners, uid: int, gid: int | None, path: str | None) -> bool:
    """Remove a file as its owner; True when it is gone (or never existed)."""
    if not path:
        return True
    try:
        owners.unlink(uid, gid, path)
    except OSError:
        return False
    return True


def exists(owners: Owners, uid: int, gid: int | None, path: str) -> bool:
    """Whether ``path`` exists as its owner sees it (False when he cannot tell)."""
    try:
        return owners.exists(uid, gid, path)
    except OSError:
        return False


def local_source_path(url: str) -> str | None:
    """The path of a file:// URL or absolute-path source; None for HTTP(S)."""
    if url.startswith("/"):
        return url
    if url[:5].lower() in ("http:", "https"):
        return None
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme.lower() == "file" else None


def open_as_owner(owners: Owners, path: str, uid: int, gid: int | None) -> int:
    """Open the source ``path`` for reading with the owner's rights, not the daemon's
    (``owner.Owners``: in-process, or in the owner's helper).  Errors are the source's
    (context REMOTE_FILE)."""
    try:
        return owners.open_source(uid, gid, path)
    except FileNotFoundError as e:
        raise SourceFileError(
            f"the source {path} does not exist", hresult=HResult.HRESULT_FILE_NOT_FOUND
        ) from e
    except IsADirectoryError as e:
        raise SourceFileError(f"the source {path} is a directory", hresult=HResult.HRESULT_DIRECTORY) from e
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
            raise SourceFileError(f"the job owner may not read {path}", hresult=HResult.E_ACCESSDENIED) from e
        if e.errno == errno.ENOTDIR:
            raise SourceFileError(
                f"the source {path} does not exist", hresult=HResult.HRESULT_PATH_NOT_FOUND
            ) from e
        raise SourceUnavailable(f"cannot open {path}: {e.strerror}") from e
