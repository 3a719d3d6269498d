"""The embedded store: one SQLite file in WAL mode, with a schema version and migrations.

Every write is one transaction committed before the method returns.  The daemon
calls the store from its event-loop thread: statements are small (tens of µs) and
progress is checkpointed at most once a second per running job, never per chunk.
Opened with ``group_commit`` (the daemon does), a commit does not fsync on the loop: it is
in the WAL at once (it survives SIGKILL), and :meth:`SqliteStore.durable` awaits the fsync
that makes it survive power loss, done on another thread for every commit before it
(``groupcommit.py``).  The API answers a change only after that.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from openbits.errors import StoreFull, StoreWriteFailed
from openbits.model import (
    Job,
    JobFile,
    JobState,
)
from openbits.store import RECOVERY_HINT, StoreDamaged, StoreError
from openbits.store.groupcommit import WAL_KEEP_BYTES, GroupCommit
from openbits.store.rows import (
    FILE_COLUMNS,
    INSERT_FILE,
    JOB_COLUMN_COUNT,
    JOB_COLUMN_NAMES,
    JOB_COLUMNS,
    UPDATE_FILE,
    file_from_row,
    file_insert_row,
    file_update_row,
    job_from_row,
    job_row,
)
from openbits.store.secrets import Keyring, headers_label, key_path_for

#: Migration n brings a database from user_version n to n + 1.  Never edit one
#: that has shipped; append a new one (tests/unit/test_store_sqlite.py records the digest
#: of every shipped migration, and migrates a store of every earlier version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        owner TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        display_name TEXT NOT NULL,
        description TEXT NOT NULL,
        job_type INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        state INTEGER NOT NULL,
        minimum_retry_delay_s INTEGER NOT NULL,
        no_progress_timeout_s INTEGER NOT NULL,
        notify_flags INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        modified_ns INTEGER NOT NULL,
        transferred_ns INTEGER NOT NULL,
        finished_ns INTEGER NOT NULL,
        transient_error_count INTEGER NOT NULL,
        error_hresult INTEGER,
        error_context INTEGER,
        error_message TEXT,
        error_file_index INTEGER,
        retry_at_ns INTEGER NOT NULL,
        no_progress_since_ns INTEGER NOT NULL
    );
    CREATE TABLE files (
        file_id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        remote_url TEXT NOT NULL,
        local_file TEXT NOT NULL,
        bytes_total INTEGER,
        bytes_transferred INTEGER NOT NULL,
        completed INTEGER NOT NULL,
        temp_name TEXT,
        etag TEXT,
        last_modified TEXT,
        published INTEGER NOT NULL
    );
    CREATE INDEX files_by_job ON files(job_id, position);
    """,
    """
    ALTER TABLE jobs ADD COLUMN maximum_download_time_s INTEGER NOT NULL DEFAULT 7776000;
    ALTER TABLE jobs ADD COLUMN download_time_ns INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    ALTER TABLE jobs ADD COLUMN custom_headers TEXT;
    ALTER TABLE jobs ADD COLUMN security_flags INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE files ADD COLUMN ranges TEXT;
    """,
    """
    ALTER TABLE files ADD COLUMN range_support INTEGER;
    ALTER TABLE files ADD COLUMN response_headers TEXT;
    """,
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN notify_program TEXT;
    ALTER TABLE jobs ADD COLUMN notify_parameters TEXT;
    ALTER TABLE jobs ADD COLUMN notify_url TEXT;
    ALTER TABLE jobs ADD COLUMN notify_due_ns INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        uid INTEGER NOT NULL,
        description TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    );
    """,
    """
    ALTER TABLE jobs ADD COLUMN custom_headers_write_only INTEGER NOT NULL DEFAULT 0;
    """,
    # identity (SPEC §7): sealed secrets (store/secrets.py), proxy settings, the client
    # certificate; custom headers move to a sealed column (SqliteStore._seal_legacy); token
    # scopes and expiry
    """
    ALTER TABLE jobs ADD COLUMN custom_headers_sealed BLOB;
    ALTER TABLE jobs ADD COLUMN credentials TEXT;
    ALTER TABLE jobs ADD COLUMN proxy_usage INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN proxy_list TEXT;
    ALTER TABLE jobs ADD COLUMN proxy_bypass_list TEXT;
    ALTER TABLE jobs ADD COLUMN proxy_environment_sealed BLOB;
    ALTER TABLE jobs ADD COLUMN client_certificate TEXT;
    ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE tokens ADD COLUMN expires_ns INTEGER NOT NULL DEFAULT 0;
    """,
    # uploads (SPEC §8): the upload-reply job's reply file and progress, and the upload's
    # protocol state (model.UploadState as a JSON object; NULL before AddFile and for downloads)
    """
    ALTER TABLE jobs ADD COLUMN reply_file_name TEXT;
    ALTER TABLE jobs ADD COLUMN reply_bytes_total INTEGER;
    ALTER TABLE jobs ADD COLUMN reply_bytes_transferred INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN upload_state TEXT;
    """,
    # expected digests (SPEC §9): the canonical digest a file's bytes must match
    """
    ALTER TABLE files ADD COLUMN digest TEXT;
    """,
    # MaxConnections (SPEC §9): how many connections the job may use at once (NULL: the
    # default by priority)
    """
    ALTER TABLE jobs ADD COLUMN max_connections INTEGER;
    """,
    # segmented downloads (SPEC §9): a file's segments, [[start, done, end], ...] as JSON
    # (NULL: one stream, bytes_transferred its durable prefix)
    """
    ALTER TABLE files ADD COLUMN segments TEXT;
    """,
    # a server's Repr-Digest (SPEC §9), kept for a resume whose 206 does not repeat it
    """
    ALTER TABLE files ADD COLUMN repr_digest TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

#: an event of the log: (id, owner, owner_uid, job_id, type, data JSON, created_ns)
EventRow = tuple[int, str, int, str, str, str, int]
_EVENT_COLUMNS = "id, owner, owner_uid, job_id, type, data, created_ns"

#: a bearer token: (token_id, sha256 hex of the token, uid, description, created_ns, scope,
#: expires_ns (0: never))
TokenRow = tuple[str, str, int, str, int, str, int]
_TOKEN_COLUMNS = "token_id, digest, uid, description, created_ns, scope, expires_ns"

#: the most file rows one INSERT statement writes (AddFileSet of thousands of files)
FILE_ROWS_PER_INSERT = 500

_FINAL = f"({int(JobState.ACKNOWLEDGED)}, {int(JobState.CANCELLED)})"  # the finished states


class SqliteStore:
    """A :class:`~openbits.store.JobStore` on one SQLite file."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        check: bool = True,
        keyring: Keyring | None = None,
        group_commit: bool = False,
    ) -> None:
        """Open (or create) the store; with ``check``, a damaged file is refused before
        anything is written to it (``PRAGMA quick_check``: StoreDamaged).  Secrets are sealed
        with ``keyring``, by default the key file beside the store (made when missing).
        With ``group_commit`` and a ``synchronous`` of FULL or EXTRA, the fsyncs FULL asks for
        are done off the caller's thread, for whoever awaits :meth:`durable`."""
        self.path = path
        self._group: GroupCommit | None = None
        self._commits = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.keyring = keyring if keyring is not None else Keyring.at(key_path_for(path))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the job store {path}: {e}") from e
        try:
            if check:
                self._check_before_use()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous.upper()
            self._db.execute("PRAGMA foreign_keys=ON")
            # (freed pages are zeroed: a secret sealed or deleted leaves no plaintext behind)
            self._db.execute("PRAGMA secure_delete=ON")
            self._migrate()
            self._seal_legacy()
            self._seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0])
            if group_commit and self._synchronous in ("FULL", "EXTRA", "2", "3"):
                self._start_group_commit()
        except (sqlite3.DatabaseError, StoreError, StoreWriteFailed) as e:
            self._db.close()
            if isinstance(e, StoreError):
                raise
            if isinstance(e, StoreWriteFailed):  # (a migration's write: the store cannot open)
                raise StoreError(e.message) from e
            raise StoreDamaged(f"the job store {path} cannot be read ({e}): {RECOVERY_HINT}") from e

    def _start_group_commit(self) -> None:
        """Commits write the WAL alone (NORMAL); the fsync and the checkpoints are GroupCommit's."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        self._synchronous = "NORMAL"
        self._group = GroupCommit(self.path)

    @property
    def group_commit(self) -> GroupCommit | None:
        """The fsyncs done off the loop (None: every commit fsyncs as SQLite's ``synchronous`` says)."""
        return self._group

    @property
    def commits(self) -> int:
        """How many write transactions were committed (the API awaits :meth:`durable` after a
        request that made one)."""
        return self._commits

    async def durable(self) -> None:
        """Return once every commit made so far survives power loss (at once without
        group commit: each commit fsync'd itself); StoreWriteFailed when its fsync failed."""
        if self._group is not None:
            await self._group.durable()

    def _check_before_use(self) -> None:
        try:
            rows = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.DatabaseError as e:
            rows = [str(e)]
        if rows != ["ok"]:
            found = "; ".join(rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3 else "")
            raise StoreDamaged(f"the job store {self.path} is damaged ({found}): {RECOVERY_HINT}")

    # -- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job store {self.path} has schema version {version}, newer than this "
                f"openbits understands ({SCHEMA_VERSION}); upgrade openbits"
            )
        for n in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in MIGRATIONS[n].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={n + 1}")

    def _seal_legacy(self) -> None:
        """Custom headers stored in clear by a store before migration 10 are sealed, and the
        clear text overwritten (secure_delete) and checkpointed out of the WAL."""
        rows = self._db.execute(
            "SELECT job_id, custom_headers FROM jobs WHERE custom_headers IS NOT NULL"
        ).fetchall()
        if not rows:
            return
        with self._transaction() as db:
            for job_id, text in rows:
                sealed = self.keyring.seal(str(text), headers_label(str(job_id)))
                db.execute(
                    "UPDATE jobs SET custom_headers = NULL, custom_headers_sealed = ? WHERE job_id = ?",
                    (sealed, job_id),
                )
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction.  A write SQLite cannot make (SQLITE_FULL, an I/O error)
        rolls it back and raises StoreWriteFailed (StoreFull for want of space): nothing of
        it is stored, and what was committed before is intact."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
                self._commits += 1
                if self._group is not None:
                    self._group.committed()
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            raise self._write_failed(e) from e

    def _write_failed(self, e: sqlite3.OperationalError) -> StoreWriteFailed:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        full = code == sqlite3.SQLITE_FULL
        if not full and code == sqlite3.SQLITE_IOERR:
            with contextlib.suppress(OSError):
                full = os.statvfs(os.path.dirname(os.path.abspath(self.path))).f_bavail == 0
        if full:
            return StoreFull(
                f"the job store {self.path} cannot record the change: its file system is full; "
                f"free space in {os.path.dirname(self.path)} (nothing already accepted is lost)"
            )
        return StoreWriteFailed(f"the job store {self.path} cannot record the change: {e}")

    # -- reads ----------------------------------------------------------------------------

    def load_jobs(self) -> list[Job]:
        jobs: dict[str, Job] = {}
        for row in self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq"):
            job = job_from_row(row, self.keyring)
            jobs[job.job_id] = job
        for row in self._db.execute(f"SELECT {FILE_COLUMNS} FROM files ORDER BY job_id, position"):
            owner = jobs.get(row[1])
            if owner is not None:
                owner.files.append(file_from_row(row))
        return list(jobs.values())

    def load_job(self, job_id: str) -> Job | None:
        """One job and its files (a finished job lives only here: the service forgets it)."""
        row = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = job_from_row(row, self.keyring)
        job.files = [
            file_from_row(r)
            for r in self._db.execute(
                f"SELECT {FILE_COLUMNS} FROM files WHERE job_id = ? ORDER BY position", (job_id,)
            )
        ]
        return job

    def finished_named(self, display_name: str, owner_uid: int) -> list[Job]:
        """The finished jobs of an owner with this DisplayName."""
        ids = [
            str(r[0])
            for r in self._db.execute(
                f"SELECT job_id FROM jobs WHERE display_name = ? AND owner_uid = ? AND state IN {_FINAL}",
                (display_name, owner_uid),
            )
        ]
        return [job for job in map(self.load_job, ids) if job is not None]

    def count_finished(self, owner_uid: int | None = None) -> dict[tuple[int, int], int]:
        """Finished jobs by (state, priority), of one owner or of all."""
        sql = f"SELECT state, priority, COUNT(*) FROM jobs WHERE state IN {_FINAL}"
        args: tuple[int, ...] = ()
        if owner_uid is not None:
            sql += " AND owner_uid = ?"
            args = (owner_uid,)
        rows = self._db.execute(sql + " GROUP BY state, priority", args)
        return {(int(s), int(p)): int(n) for s, p, n in rows}

    def oldest_finished_ns(self) -> int | None:
        """When the job that finished first (of those kept) finished; None: there is none."""
        row = self._db.execute(f"SELECT MIN(finished_ns) FROM jobs WHERE state IN {_FINAL}").fetchone()
        return None if row[0] is None else int(row[0])

    # -- writes ---------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        self._seq += 1
        job.seq = self._seq
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * JOB_COLUMN_COUNT)})",
                job_row(job, self._seq, self.keyring),
            )
            for position, f in enumerate(job.files):
                self._insert_file(db, job.job_id, position, f)

    def add_files(self, job: Job, files: Iterable[JobFile]) -> None:
        """Insert ``files`` (the last ones of ``job.files``) and save the job row: one commit."""
        files = list(files)
        first = len(job.files) - len(files)  # they are the last ones
        rows = [file_insert_row(job.job_id, first + i, f) for i, f in enumerate(files)]
        with self._transaction() as db:
            self._insert_rows(db, rows)
            self._note_file_ids(db, job.job_id, first, files)
            self._update_job(db, job)

    @staticmethod
    def _insert_rows(db: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        """``INSERT_FILE`` of each row, up to ``FILE_ROWS_PER_INSERT`` rows a statement (as
        many as SQLite takes parameters): a fifth cheaper than a statement a row."""
        if not rows:
            return
        width = len(rows[0])
        per = max(1, min(FILE_ROWS_PER_INSERT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
        head, _, values = INSERT_FILE.partition(" VALUES ")
        for start in range(0, len(rows), per):
            part = rows[start : start + per]
            sql = f"{head} VALUES {', '.join([values] * len(part))}"
            db.execute(sql, list(itertools.chain.from_iterable(part)))

    @staticmethod
    def _note_file_ids(db: sqlite3.Connection, job_id: str, first: int, files: list[JobFile]) -> None:
        """The ids of ``files``, just inserted at positions ``first``... by ``_insert_rows``:
        consecutive (AUTOINCREMENT, one writer), the last one ``last_insert_rowid()``, as
        the first row's id confirms; else (never seen) read back row by row."""
        if not files:
            return
        last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
        start = last - len(files) + 1
        row = db.execute(
            "SELECT file_id FROM files WHERE job_id = ? AND position = ?", (job_id, first)
        ).fetchone()
        if row is not None and int(row[0]) == start:
            for i, f in enumerate(files):
                f.file_id = start + i
            return
        ids = dict(
            db.execute(
                "SELECT position, file_id FROM files WHERE job_id = ? AND position >= ?", (job_id, first)
            )
        )
        for i, f in enumerate(files):
            f.file_id = ids[first + i]

    def save_job(self, job: Job, files: Iterable[JobFile] = ()) -> None:
        with self._transaction() as db:
            self._update_job(db, job)
            db.executemany(UPDATE_FILE, [file_update_row(f) for f in files])

    def save_files(self, job: Job, files: Iterable[JobFile]) -> None:
        with self._transaction() as db:
            db.executemany(UPDATE_FILE, [file_update_row(f) for f in files])

    def delete_jobs(self, job_ids: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM jobs WHERE job_id = ?", [(j,) for j in job_ids])

    def delete_finished(self, finished_before_ns: int) -> int:
        """Forget the jobs that finished at or before ``finished_before_ns``: how many."""
        with self._transaction() as db:
            cur = db.execute(
                f"DELETE FROM jobs WHERE state IN {_FINAL} AND finished_ns <= ?", (finished_before_ns,)
            )
            return int(cur.rowcount)

    def load_settings(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM settings")}

    def save_settings(self, settings: dict[str, str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(settings.items()),
            )

    # -- bearer tokens of the TCP listener (api/tokens.py) -------------------------------------

    def load_tokens(self) -> list[TokenRow]:
        rows = self._db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_ns").fetchall()
        return [(str(a), str(b), int(c), str(d), int(e), str(f), int(g)) for a, b, c, d, e, f, g in rows]

    def add_token(self, row: TokenRow) -> None:
        with self._transaction() as db:
            db.execute(f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def delete_token(self, token_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM tokens WHERE token_id = ?", (token_id,))

    # -- the event log (GET /events) -----------------------------------------------------------

    def append_events(self, rows: Iterable[EventRow], delete_through: int = 0) -> None:
        """Append events (and drop those with ids up to ``delete_through``): one transaction,
        committed without its own fsync (synchronous=NORMAL in WAL mode): it survives a
        SIGKILL at once, and power loss from the next fsync of the WAL on (the next job
        commit's, or group commit's). An event follows the job commit it describes, so it
        costs no fsync."""
        relax = self._synchronous in ("FULL", "EXTRA", "2", "3")
        if relax:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                db.executemany(
                    f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if delete_through > 0:
                    db.execute("DELETE FROM events WHERE id <= ?", (delete_through,))
        finally:
            if relax:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")

    def event_bounds(self) -> tuple[int, int]:
        """(oldest id, newest id) of the events kept; (0, 0) when there are none."""
        lo, hi = self._db.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        return (0, 0) if hi is None else (int(lo), int(hi))

    def load_events(
        self,
        after: int,
        until: int,
        *,
        owner_uid: int | None = None,
        job_id: str | None = None,
        limit: int = 256,
    ) -> list[EventRow]:
        """Events with after < id <= until, oldest first, of one owner and/or job."""
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND id <= ?"
        args: list[object] = [after, until]
        if owner_uid is not None:
            sql += " AND owner_uid = ?"
            args.append(owner_uid)
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [
            (int(i), str(o), int(u), str(j), str(t), str(d), int(c))
            for i, o, u, j, t, d, c in self._db.execute(sql, args)
        ]

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        if self._group is not None:
            self._group.close()  # (every commit made durable first)
        self._db.close()

    # -- rows -----------------------------------------------------------------------------

    @staticmethod
    def _insert_file(db: sqlite3.Connection, job_id: str, position: int, f: JobFile) -> None:
        cur = db.execute(INSERT_FILE, file_insert_row(job_id, position, f))
        f.file_id = cur.lastrowid

    def _update_job(self, db: sqlite3.Connection, job: Job) -> None:
        row = job_row(job, 0, self.keyring)
        assignments = ", ".join(f"{c}=?" for c in JOB_COLUMN_NAMES[2:])
        db.execute(f"UPDATE jobs SET {assignments} WHERE job_id=?", (*row[2:], job.job_id))
