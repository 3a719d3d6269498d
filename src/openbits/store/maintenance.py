"""Checking, backing up and restoring the job store (``openbits store``).

These work on the SQLite file directly, without the daemon:

- ``check`` opens the file read-only and runs SQLite's full ``PRAGMA integrity_check``;
- ``backup`` copies it with SQLite's online backup API, a consistent snapshot even while a
  daemon writes to it, then checks the copy;
- ``restore`` puts a checked backup in the store's place. It needs the state directory's
  lock (no daemon may run) and never deletes anything: the file it replaces, damaged or not,
  is moved aside with its WAL, as ``jobs.sqlite.replaced-<time>``.

The secrets in a store (passwords, custom headers, proxy environments) are sealed with the key
in ``<store>.key`` beside it (``store/secrets.py``): ``backup`` copies it to ``<backup>.key``
(0600), and ``restore`` puts a backup's key in place with it (the key it replaces is moved
aside too).  A backup without its key file restores with the store's current key: its
secrets open only if that is the key they were sealed with; otherwise the jobs load and
their secrets are lost (credentials reported missing), as SPEC §7 says of a store copied
without its key.

A damaged store is never repaired or emptied behind the user's back (BITS drops its queue
when its state file is corrupt): the daemon refuses to start on it and says what to do.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from openbits.store import StoreError
from openbits.store.secrets import key_path_for
from openbits.store.sqlite import SCHEMA_VERSION

#: the files SQLite keeps beside the store in WAL mode
SIDE_FILES = ("-wal", "-shm")


@dataclass
class Report:
    """What ``check`` found in a store file."""

    path: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    schema_version: int | None = None
    jobs: int | None = None
    files: int | None = None
    events: int | None = None
    size_bytes: int = 0
    #: backup and restore: the key file of the secrets copied with the store (None: none was)
    key_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _count(db: sqlite3.Connection, table: str, tables: set[str]) -> int | None:
    if table not in tables:
        return None
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def check(path: str, *, max_problems: int = 100) -> Report:
    """SQLite's full integrity check of ``path`` (read-only), and what the store holds."""
    if not os.path.exists(path):
        raise StoreError(f"there is no job store at {path}")
    report = Report(path=path, ok=False, size_bytes=os.path.getsize(path))
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as e:
        report.problems.append(str(e))
        return report
    try:
        try:
            rows = [str(r[0]) for r in db.execute(f"PRAGMA integrity_check({int(max_problems)})")]
        except sqlite3.DatabaseError as e:
            rows = [str(e)]
        report.problems = [] if rows == ["ok"] else rows
        try:
            tables = _tables(db)
            report.schema_version = int(db.execute("PRAGMA user_version").fetchone()[0])
            report.jobs = _count(db, "jobs", tables)
            report.files = _count(db, "files", tables)
            report.events = _count(db, "events", tables)
        except sqlite3.DatabaseError as e:
            if not report.problems:
                report.problems.append(str(e))
        if report.schema_version is not None and report.schema_version > SCHEMA_VERSION:
            report.problems.append(
                f"schema version {report.schema_version} is newer than this openbits ({SCHEMA_VERSION})"
            )
        if not report.problems and report.jobs is None and report.schema_version:
            report.problems.append("the file has no jobs table: not an openbits store")
        report.ok = not report.problems
        return report
    finally:
        db.close()


def backup(path: str, dest: str, *, force: bool = False) -> Report:
    """A consistent copy of the store at ``dest`` (even while a daemon runs), checked."""
    if not os.path.exists(path):
        raise StoreError(f"there is no job store at {path}")
    for target in (dest, key_path_for(dest)):
        if os.path.exists(target) and not force:
            raise StoreError(f"{target} exists already (--force replaces it)")
    partial = _snapshot(path, dest, "cannot back up")
    key = _copy_key(key_path_for(path), key_path_for(dest), "cannot back up")
    if key is not None:
        os.replace(key, key_path_for(dest))
    os.replace(partial, dest)
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))
    report = check(dest)
    if not report.ok:
        raise StoreError(f"the backup {dest} fails its check: {'; '.join(report.problems[:3])}")
    report.key_file = None if key is None else key_path_for(dest)
    return report


def restore(path: str, source: str) -> tuple[Report, list[str]]:
    """Put the checked backup ``source`` in the place of the store ``path``; the files it
    replaces are moved aside, not deleted.  The caller holds the state directory's lock.
    Returns the report of the restored store and the paths kept aside."""
    report = check(source)
    if not report.ok:
        raise StoreError(f"the backup {source} fails its check: {'; '.join(report.problems[:3])}")
    partial = _snapshot(source, path, "cannot copy")  # the copies first: nothing moves if they fail
    try:
        key = _copy_key(key_path_for(source), key_path_for(path), "cannot copy")
    except BaseException:
        _remove(partial)
        raise
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept: list[str] = []
    for suffix in ("", *SIDE_FILES, *((".key",) if key is not None else ())):
        old = path + suffix
        if os.path.exists(old):
            aside = f"{path}.replaced-{stamp}{suffix}"
            os.replace(old, aside)
            kept.append(aside)
    if key is not None:
        os.replace(key, key_path_for(path))
    os.replace(partial, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    report = check(path)
    report.key_file = None if key is None else key_path_for(path)
    return report, kept


def _copy_key(source: str, dest: str, failing: str) -> str | None:
    """A synced 0600 copy of the key file ``source`` beside ``dest`` (its path), or None
    when there is none to copy; what the key is, is never read into a message."""
    try:
        with open(source, "rb") as f:
            key = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{failing} the key file {source}: {e.strerror}") from e
    partial = f"{dest}.partial-{os.getpid()}"
    _remove(partial)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        _remove(partial)
        raise StoreError(f"{failing} the key file to {dest}: {e.strerror}") from e
    return partial


def _snapshot(source: str, dest: str, failing: str) -> str:
    """A consistent, self-contained (no WAL), synced copy of the store ``source`` beside
    ``dest`` (SQLite's online backup: safe while a daemon writes); its path."""
    partial = f"{dest}.partial-{os.getpid()}"
    source_db = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(partial)
        try:
            source_db.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except sqlite3.DatabaseError as e:
        _remove(partial)
        raise StoreError(f"{failing} {source}: {e} (`openbits store check` says more)") from e
    finally:
        source_db.close()
    os.chmod(partial, 0o600)
    _fsync(partial)
    return partial


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
