"""Unit tests of openbits.store.sqlite.SqliteStore against real SQLite files."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.model import (
    ErrorContext,
    Job,
    JobError,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    UploadState,
    new_job_id,
)
from openbits.store import StoreError
from openbits.store.sqlite import FILE_ROWS_PER_INSERT, MIGRATIONS, SCHEMA_VERSION, SqliteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(db_path), synchronous="NORMAL")
    yield s
    s.close()


def full_job(**kwargs: object) -> Job:
    """A job with every field set to a non-default value."""
    values: dict[str, object] = {
        "job_id": new_job_id(),
        "owner": "alice",
        "owner_uid": 1000,
        "display_name": "nightly ☃",
        "description": "a description\nwith two lines",
        "job_type": JobType.UPLOAD_REPLY,
        "priority": JobPriority.LOW,
        "state": JobState.TRANSIENT_ERROR,
        "minimum_retry_delay_s": 77,
        "no_progress_timeout_s": 999,
        "notify_flags": 0x2B,
        "created_ns": 1_700_000_000_123_456_789,
        "modified_ns": 1_700_000_001_000_000_000,
        "transferred_ns": 1_700_000_002_000_000_000,
        "finished_ns": 1_700_000_003_000_000_000,
        "transient_error_count": 6,
        "error": JobError(0x801901F7, ErrorContext.REMOTE_FILE, "the server answered HTTP 503", 1),
        "retry_at_ns": 1_700_000_600_000_000_000,
        "no_progress_since_ns": 1_700_000_000_500_000_000,
        "files": [
            JobFile(
                remote_url="https://example.com/a.iso",
                local_file="/srv/a.iso",
                bytes_total=2**40,
                bytes_transferred=2**40,
                completed=True,
                temp_name=".BIT0123ABCD.tmp",
                etag='"abc"',
                last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
                published=True,
                digest="sha-256=:" + "A" * 43 + "=:",
                repr_digest="sha-512=:" + "B" * 86 + "==:",
            ),
            JobFile(remote_url="file:///etc/hosts", local_file="/srv/hosts"),
        ],
        "reply_file_name": "/srv/a.reply",
        "reply_bytes_total": 12345,
        "reply_bytes_transferred": 678,
        "upload": UploadState(
            source_size=2**40,
            source_mtime_ns=1_700_000_000_987_654_321,
            session_id="{5E7D0FE1-0000-4A6B-8E3E-3E5C1B2D7F00}",
            host_id="node7",
            fragments_done=True,
            reply_url="http://example.com/reply/1",
            reply_done=True,
            closed=False,
        ),
    }
    values.update(kwargs)
    return Job(**values)  # type: ignore[arg-type]


def as_dict(obj: Job | JobFile) -> dict[str, object]:
    return dataclasses.asdict(obj)


def reopen(db_path: Path) -> SqliteStore:
    return SqliteStore(str(db_path), synchronous="NORMAL")


# -- round trips -----------------------------------------------------------------------------


def test_new_store_is_empty(store: SqliteStore) -> None:
    assert store.load_jobs() == []


def test_add_job_round_trips_every_field(store: SqliteStore) -> None:
    job = full_job()
    store.add_job(job)
    assert job.seq == 1
    assert all(f.file_id is not None for f in job.files)
    (loaded,) = store.load_jobs()
    assert as_dict(loaded) == as_dict(job)
    assert type(loaded.state) is JobState
    assert type(loaded.priority) is JobPriority
    assert type(loaded.job_type) is JobType
    assert loaded.error is not None
    assert type(loaded.error.context) is ErrorContext


def test_add_job_round_trips_defaults_and_no_error(store: SqliteStore) -> None:
    job = Job(job_id=new_job_id(), owner="bob", owner_uid=1001)
    store.add_job(job)
    (loaded,) = store.load_jobs()
    assert as_dict(loaded) == as_dict(job)
    assert loaded.error is None
    assert loaded.files == []


def test_upload_state_and_reply_fields_are_saved_with_the_job(store: SqliteStore, db_path: Path) -> None:
    job = full_job(upload=UploadState(source_size=10, source_mtime_ns=5), reply_file_name=None)
    store.add_job(job)
    assert job.upload is not None
    job.upload.session_id = "opaque session ☃"
    job.upload.fragments_done = True
    job.reply_file_name = "/srv/b.reply"
    job.reply_bytes_total = None
    job.reply_bytes_transferred = 9
    store.save_job(job)
    store.close()
    reopened = reopen(db_path)
    (loaded,) = reopened.load_jobs()
    reopened.close()
    assert loaded.upload == UploadState(
        source_size=10, source_mtime_ns=5, session_id="opaque session ☃", fragments_done=True
    )
    assert (loaded.reply_file_name, loaded.reply_bytes_total, loaded.reply_bytes_transferred) == (
        "/srv/b.reply",
        None,
        9,
    )


def test_an_upload_state_with_keys_of_a_later_version_still_loads(store: SqliteStore) -> None:
    job = full_job()
    store.add_job(job)
    store._db.execute(
        "UPDATE jobs SET upload_state=? WHERE job_id=?",
        ('{"source_size": 3, "closed": true, "from_the_future": 1}', job.job_id),
    )
    (loaded,) = store.load_jobs()
    assert loaded.upload == UploadState(source_size=3, closed=True)


def test_error_without_file_index_round_trips(store: SqliteStore) -> None:
    job = full_job(error=JobError(0x80070070, ErrorContext.LOCAL_FILE, "disk full", None))
    store.add_job(job)
    (loaded,) = store.load_jobs()
    assert loaded.error == JobError(0x80070070, ErrorContext.LOCAL_FILE, "disk full", None)


def test_jobs_load_in_creation_order_with_increasing_seq(store: SqliteStore) -> None:
    jobs = [full_job(display_name=f"job{i}") for i in range(5)]
    for job in jobs:
        store.add_job(job)
    loaded = store.load_jobs()
    assert [j.job_id for j in loaded] == [j.job_id for j in jobs]
    assert [j.seq for j in loaded] == [1, 2, 3, 4, 5]


def test_files_load_in_the_order_added(store: SqliteStore) -> None:
    job = full_job(files=[])
    store.add_job(job)
    for i in range(12):
        f = JobFile(f"http://h/{i}", f"/tmp/{i}")
        job.files.append(f)
        store.add_files(job, [f])
    (loaded,) = store.load_jobs()
    assert [f.remote_url for f in loaded.files] == [f"http://h/{i}" for i in range(12)]


def test_add_files_also_saves_the_job(store: SqliteStore) -> None:
    job = full_job(files=[], state=JobState.SUSPENDED)
    store.add_job(job)
    job.modified_ns += 5
    job.state = JobState.QUEUED
    f = JobFile("http://h/x", "/tmp/x", bytes_total=10)
    job.files.append(f)
    store.add_files(job, [f])
    (loaded,) = store.load_jobs()
    assert loaded.modified_ns == job.modified_ns
    assert loaded.state is JobState.QUEUED
    assert as_dict(loaded.files[0]) == as_dict(f)


def test_save_job_updates_the_row_and_given_files(store: SqliteStore) -> None:
    job = full_job()
    store.add_job(job)
    job.state = JobState.ERROR
    job.display_name = "renamed"
    job.priority = JobPriority.FOREGROUND
    job.error = None
    job.retry_at_ns = 0
    job.files[1].bytes_total = 50
    job.files[1].bytes_transferred = 25
    job.files[1].temp_name = ".BITFFFF0000.tmp"
    job.files[1].segments = "[[0,10,25],[25,40,50]]"  # (a download in segments)
    job.files[0].etag = "not saved"  # not passed to save_job
    store.save_job(job, [job.files[1]])
    (loaded,) = store.load_jobs()
    assert loaded.state is JobState.ERROR
    assert loaded.display_name == "renamed"
    assert loaded.priority is JobPriority.FOREGROUND
    assert loaded.error is None
    assert loaded.retry_at_ns == 0
    assert loaded.seq == job.seq
    assert as_dict(loaded.files[1]) == as_dict(job.files[1])
    assert loaded.files[0].etag == '"abc"'


def test_save_files_updates_only_files(store: SqliteStore) -> None:
    job = full_job()
    store.add_job(job)
    job.display_name = "not saved"
    job.files[1].bytes_transferred = 4096
    job.files[1].completed = True
    store.save_files(job, job.files)
    (loaded,) = store.load_jobs()
    assert loaded.display_name == "nightly ☃"
    assert loaded.files[1].bytes_transferred == 4096
    assert loaded.files[1].completed is True


def test_delete_jobs(store: SqliteStore) -> None:
    jobs = [full_job() for _ in range(3)]
    for job in jobs:
        store.add_job(job)
    store.delete_jobs([jobs[0].job_id, jobs[2].job_id, "{00000000-0000-0000-0000-000000000000}"])
    assert [j.job_id for j in store.load_jobs()] == [jobs[1].job_id]


def test_delete_cascades_to_files(store: SqliteStore, db_path: Path) -> None:
    keep, drop = full_job(), full_job()
    store.add_job(keep)
    store.add_job(drop)
    store.delete_jobs([drop.job_id])
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT job_id FROM files").fetchall()
    assert rows == [(keep.job_id,), (keep.job_id,)]


def test_data_survives_reopening(db_path: Path) -> None:
    first = SqliteStore(str(db_path))
    jobs = [full_job(), full_job(files=[])]
    for job in jobs:
        first.add_job(job)
    first.close()
    second = reopen(db_path)
    try:
        assert [as_dict(j) for j in second.load_jobs()] == [as_dict(j) for j in jobs]
        # creation order continues after a restart
        later = full_job()
        second.add_job(later)
        assert later.seq == 3
    finally:
        second.close()


def test_creates_the_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.sqlite"
    s = SqliteStore(str(path))
    s.close()
    assert path.exists()


def test_integrity_check(store: SqliteStore) -> None:
    store.add_job(full_job())
    assert store.integrity_check() == "ok"


# -- schema and robustness -------------------------------------------------------------------


def test_journal_mode_is_wal(store: SqliteStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_keys_are_enforced(store: SqliteStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO files (job_id, position, remote_url, local_file, bytes_transferred, "
            "completed, published) VALUES ('{nope}', 0, 'u', 'l', 0, 0, 0)"
        )


def test_schema_version_is_len_migrations(store: SqliteStore, db_path: Path) -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION
    assert store.schema_version == len(MIGRATIONS)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_reopening_does_not_migrate_again(db_path: Path) -> None:
    SqliteStore(str(db_path)).close()
    s = reopen(db_path)
    try:
        assert s.schema_version == SCHEMA_VERSION
    finally:
        s.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(str(db_path))


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a database" * 200,
        bytes(range(256)) * 16,
        b"SQLite format 3\x00" + b"\xff" * 4080,
        b"junk",
    ],
    ids=["text", "binary", "bad-header", "tiny"],
)
def test_corrupt_file_is_refused(db_path: Path, garbage: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError):
        SqliteStore(str(db_path))


def test_foreign_sqlite_database_is_refused_with_store_error(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE unrelated (x)")
        db.execute("PRAGMA user_version=1")
    with pytest.raises(StoreError):
        SqliteStore(str(db_path))


def test_a_version_1_store_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    from openbits.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore

    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO jobs VALUES ('{00000000-0000-0000-0000-00000000000A}', 1, 'alice', 1000, 'old', '', "
        "0, 2, 3, 600, 1209600, 3, 1, 2, 0, 0, 0, NULL, NULL, NULL, NULL, 0, 0)"
    )
    db.execute(
        "INSERT INTO files (job_id, position, remote_url, local_file, bytes_total, bytes_transferred, "
        "completed, temp_name, etag, last_modified, published) VALUES "
        "('{00000000-0000-0000-0000-00000000000A}', 0, 'http://h/f', '/tmp/f', 10, 4, 0, '.BIT0.tmp', "
        "'\"e\"', NULL, 0)"
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = SqliteStore(str(path))
    try:
        assert store.schema_version == SCHEMA_VERSION >= 2
        [job] = store.load_jobs()
        assert job.display_name == "old" and job.files[0].bytes_transferred == 4
        assert job.maximum_download_time_s == 7_776_000 and job.download_time_ns == 0
    finally:
        store.close()


#: sha256 (first 16 hex digits) of every migration that has shipped: a migration is never
#: edited once released (a store out there already ran it); a new one appends its digest
SHIPPED_MIGRATIONS = [
    "e6a974288092c03e",  # 1 jobs and files
    "53f916be5ab0893c",  # 2 MaximumDownloadTime
    "a791b4be6d60d11c",  # 3 settings (BitsServicePolicy)
    "a1083606504733a1",  # 4 CustomHeaders, SecurityFlags
    "4775de3673f4b72c",  # 5 file ranges
    "4654d4e1fda44999",  # 6 range support, response headers
    "c1f2585dfa295822",  # 7 the event log
    "41654015eab3cdd3",  # 8 notifications
    "93594bcb9c3f26a3",  # 9 bearer tokens
    "863e5fa17b455804",  # 10 write-only custom headers
    "a9d57ee5a00619a5",  # 11 identity: sealed secrets, proxy settings, client certificate, token scopes
    "231df795ffc695c8",  # 12 uploads: reply file and progress, the upload's protocol state
    "f8df47c266e5ab91",  # 13 expected digests of files
    "6c564d329f2353ef",  # 14 MaxConnections
    "3cefca3443830e1f",  # 15 segmented downloads: a file's segments
    "94ac532e020be1c2",  # 16 a server's Repr-Digest, kept for a resume
]


def test_shipped_migrations_are_never_edited() -> None:
    import hashlib

    digests = [hashlib.sha256(m.encode()).hexdigest()[:16] for m in MIGRATIONS]
    assert digests[: len(SHIPPED_MIGRATIONS)] == SHIPPED_MIGRATIONS, "append a migration; never edit one"
    assert len(digests) == len(SHIPPED_MIGRATIONS), "record the new migration's digest above"


def _store_at_version(path: Path, version: int) -> None:
    """A store as openbits left it at schema ``version``: its migrations, then one job with
    one file written with only the columns that version had."""
    db = sqlite3.connect(path)
    try:
        for n in range(version):
            for statement in MIGRATIONS[n].split(";"):
                if statement.strip():
                    db.execute(statement)
        # (cid, name, type, notnull, default, pk): a nullable column is NULL, others 0
        info = db.execute("PRAGMA table_info(jobs)").fetchall()
        values: dict[str, object] = {r[1]: (0 if r[3] else None) for r in info}
        values.update(
            job_id="{00000000-0000-0000-0000-0000000000" + f"{version:02d}" + "}",
            owner="alice",
            owner_uid=1000,
            display_name=f"made by v{version}",
            description="",
            job_type=0,
            priority=2,
            state=3,  # SUSPENDED
            minimum_retry_delay_s=600,
            no_progress_timeout_s=1209600,
            notify_flags=3,
            seq=1,
        )
        for nullable in (
            "error_hresult",
            "error_context",
            "error_message",
            "error_file_index",
            "custom_headers",
        ):
            if nullable in values:
                values[nullable] = None
        if "maximum_download_time_s" in values:
            values["maximum_download_time_s"] = 7_776_000
        db.execute(
            f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        db.execute(
            "INSERT INTO files (job_id, position, remote_url, local_file, bytes_total, bytes_transferred, "
            "completed, temp_name, etag, last_modified, published) VALUES (?, 0, 'http://h/f', '/tmp/f', "
            "10, 4, 0, '.BIT0.tmp', '\"e\"', NULL, 0)",
            (values["job_id"],),
        )
        db.execute(f"PRAGMA user_version={version}")
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_store_of_every_earlier_version_is_migrated_and_keeps_its_jobs(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.sqlite"
    _store_at_version(path, version)
    store = SqliteStore(str(path))
    try:
        assert store.schema_version == SCHEMA_VERSION
        [job] = store.load_jobs()
        assert job.display_name == f"made by v{version}" and job.state.name == "SUSPENDED"
        assert job.files[0].bytes_transferred == 4 and job.files[0].etag == '"e"'
        # the columns added since have their defaults
        assert job.maximum_download_time_s == 7_776_000 and job.security_flags == 0
        assert job.notify_program is None and job.notify_due_ns == 0
        assert job.custom_headers_write_only is False
        assert job.reply_file_name is None and job.reply_bytes_total is None
        assert job.reply_bytes_transferred == 0 and job.upload is None
        assert job.files[0].digest is None and job.files[0].repr_digest is None
        assert job.max_connections is None
        assert store.integrity_check() == "ok"
        store.save_job(job)  # and it can be written in the new shape
    finally:
        store.close()
    reopened = SqliteStore(str(path))
    try:
        assert [j.display_name for j in reopened.load_jobs()] == [f"made by v{version}"]
    finally:
        reopened.close()


def test_add_files_gives_each_file_its_row_id(store: SqliteStore, db_path: Path) -> None:
    """The ids of many files inserted at once are taken from last_insert_rowid(), not read
    back row by row, and written several hundred a statement: each file's id is its own row's,
    in two jobs whose adds interleave; they load in the order added."""
    jobs = [full_job(files=[]), full_job(files=[])]
    for job in jobs:
        store.add_job(job)
    for round_, count in enumerate((40, 2 * FILE_ROWS_PER_INSERT + 7, 1)):
        for n, job in enumerate(jobs):
            new = [JobFile(f"http://h/{n}/{round_}/{i}", f"/tmp/{n}/{round_}/{i}") for i in range(count)]
            job.files.extend(new)
            store.add_files(job, new)
    db = sqlite3.connect(str(db_path))
    try:
        for job in jobs:
            rows = dict(db.execute("SELECT local_file, file_id FROM files WHERE job_id = ?", (job.job_id,)))
            assert {f.local_file: f.file_id for f in job.files} == rows
    finally:
        db.close()
    loaded = {j.job_id: j for j in store.load_jobs()}
    for job in jobs:
        assert [as_dict(f) for f in loaded[job.job_id].files] == [as_dict(f) for f in job.files]
