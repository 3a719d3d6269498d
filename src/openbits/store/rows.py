"""The rows of the store's tables as the model's objects, and back: the column lists, the
rows written by an insert or an update, and the Job and JobFile read from a row (sealed
fields through ``secrets.Keyring``).  Plain functions: ``sqlite.SqliteStore`` runs the SQL."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from openbits.model import (
    CertStoreLocation,
    ClientCertificate,
    ErrorContext,
    Job,
    JobError,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    ProxyUsage,
    UploadState,
)
from openbits.store.secrets import Keyring, open_job, seal_job

JOB_COLUMNS = (
    "job_id, seq, owner, owner_uid, display_name, description, job_type, priority, state, "
    "minimum_retry_delay_s, no_progress_timeout_s, notify_flags, created_ns, modified_ns, "
    "transferred_ns, finished_ns, transient_error_count, error_hresult, error_context, "
    "error_message, error_file_index, retry_at_ns, no_progress_since_ns, "
    "maximum_download_time_s, download_time_ns, custom_headers, security_flags, "
    "notify_program, notify_parameters, notify_url, notify_due_ns, custom_headers_write_only, "
    "custom_headers_sealed, credentials, proxy_usage, proxy_list, proxy_bypass_list, "
    "proxy_environment_sealed, client_certificate, reply_file_name, reply_bytes_total, "
    "reply_bytes_transferred, upload_state, max_connections"
)
JOB_COLUMN_NAMES = tuple(c.strip() for c in JOB_COLUMNS.split(","))
JOB_COLUMN_COUNT = len(JOB_COLUMN_NAMES)
FILE_COLUMNS = (
    "file_id, job_id, position, remote_url, local_file, bytes_total, bytes_transferred, "
    "completed, temp_name, etag, last_modified, published, ranges, range_support, response_headers, "
    "digest, segments, repr_digest"
)


INSERT_FILE = (
    "INSERT INTO files (job_id, position, remote_url, local_file, bytes_total, "
    "bytes_transferred, completed, temp_name, etag, last_modified, published, ranges, "
    "range_support, response_headers, digest, segments, repr_digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _file_state(f: JobFile) -> tuple[object, ...]:
    """The columns both an insert and an update write, from remote_url to published."""
    return (
        f.remote_url,
        f.local_file,
        f.bytes_total,
        f.bytes_transferred,
        int(f.completed),
        f.temp_name,
        f.etag,
        f.last_modified,
        int(f.published),
    )


def _range_support(f: JobFile) -> int | None:
    return None if f.range_support is None else int(f.range_support)


def file_insert_row(job_id: str, position: int, f: JobFile) -> tuple[object, ...]:
    ranges = None if f.ranges is None else json.dumps(f.ranges)
    rest = (ranges, _range_support(f), f.response_headers, f.digest, f.segments, f.repr_digest)
    return (job_id, position, *_file_state(f), *rest)


UPDATE_FILE = (
    "UPDATE files SET remote_url=?, local_file=?, bytes_total=?, bytes_transferred=?, "
    "completed=?, temp_name=?, etag=?, last_modified=?, published=?, range_support=?, "
    "response_headers=?, segments=?, repr_digest=? WHERE file_id=?"
)


def file_update_row(f: JobFile) -> tuple[object, ...]:
    return (*_file_state(f), _range_support(f), f.response_headers, f.segments, f.repr_digest, f.file_id)


def job_row(job: Job, seq: int, keyring: Keyring) -> tuple[object, ...]:
    err = job.error
    headers, credentials, environment = seal_job(keyring, job)
    cert = job.client_certificate
    return (
        job.job_id,
        seq,
        job.owner,
        job.owner_uid,
        job.display_name,
        job.description,
        int(job.job_type),
        int(job.priority),
        int(job.state),
        job.minimum_retry_delay_s,
        job.no_progress_timeout_s,
        job.notify_flags,
        job.created_ns,
        job.modified_ns,
        job.transferred_ns,
        job.finished_ns,
        job.transient_error_count,
        err.hresult if err else None,
        int(err.context) if err else None,
        err.message if err else None,
        err.file_index if err else None,
        job.retry_at_ns,
        job.no_progress_since_ns,
        job.maximum_download_time_s,
        job.download_time_ns,
        None,  # custom_headers: sealed since migration 10
        job.security_flags,
        job.notify_program,
        job.notify_parameters,
        job.notify_url,
        job.notify_due_ns,
        int(job.custom_headers_write_only),
        headers,
        credentials,
        int(job.proxy_usage),
        job.proxy_list,
        job.proxy_bypass_list,
        environment,
        None if cert is None else json.dumps(cert.to_cim()),
        job.reply_file_name,
        job.reply_bytes_total,
        job.reply_bytes_transferred,
        None if job.upload is None else json.dumps(dataclasses.asdict(job.upload)),
        job.max_connections,
    )


def job_from_row(row: tuple[Any, ...], keyring: Keyring) -> Job:
    """A Job from its row of ``JOB_COLUMNS`` (sealed fields opened with ``keyring``)."""
    c = dict(zip(JOB_COLUMN_NAMES, row, strict=True))
    error = None
    if c["error_hresult"] is not None:
        error = JobError(
            int(c["error_hresult"]),
            ErrorContext(c["error_context"]),
            str(c["error_message"] or ""),
            _number(c["error_file_index"]),
        )
    job = Job(
        job_id=str(c["job_id"]),
        owner=str(c["owner"]),
        owner_uid=int(c["owner_uid"]),
        display_name=str(c["display_name"]),
        description=str(c["description"]),
        job_type=JobType(c["job_type"]),
        priority=JobPriority(c["priority"]),
        state=JobState(c["state"]),
        minimum_retry_delay_s=int(c["minimum_retry_delay_s"]),
        no_progress_timeout_s=int(c["no_progress_timeout_s"]),
        notify_flags=int(c["notify_flags"]),
        created_ns=int(c["created_ns"]),
        modified_ns=int(c["modified_ns"]),
        transferred_ns=int(c["transferred_ns"]),
        finished_ns=int(c["finished_ns"]),
        transient_error_count=int(c["transient_error_count"]),
        error=error,
        retry_at_ns=int(c["retry_at_ns"]),
        no_progress_since_ns=int(c["no_progress_since_ns"]),
        seq=int(c["seq"]),
        maximum_download_time_s=int(c["maximum_download_time_s"]),
        download_time_ns=int(c["download_time_ns"]),
        # (clear text only in a store before migration 10, until _seal_legacy runs)
        custom_headers=_text(c["custom_headers"]),
        security_flags=int(c["security_flags"]),
        notify_program=_text(c["notify_program"]),
        notify_parameters=_text(c["notify_parameters"]),
        notify_url=_text(c["notify_url"]),
        notify_due_ns=int(c["notify_due_ns"]),
        custom_headers_write_only=bool(c["custom_headers_write_only"]),
        proxy_usage=ProxyUsage(c["proxy_usage"]),
        proxy_list=_text(c["proxy_list"]),
        proxy_bypass_list=_text(c["proxy_bypass_list"]),
        client_certificate=None
        if c["client_certificate"] is None
        else _certificate(str(c["client_certificate"])),
        reply_file_name=_text(c["reply_file_name"]),
        reply_bytes_total=_number(c["reply_bytes_total"]),
        reply_bytes_transferred=int(c["reply_bytes_transferred"]),
        upload=None if c["upload_state"] is None else _upload_state(str(c["upload_state"])),
        max_connections=_number(c["max_connections"]),
    )
    open_job(keyring, job, c["custom_headers_sealed"], c["credentials"], c["proxy_environment_sealed"])
    return job


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> int | None:
    return None if value is None else int(value)


def _certificate(text: str) -> ClientCertificate:
    cim = json.loads(text)
    return ClientCertificate(
        CertStoreLocation(cim["CertStoreLocation"]), cim["StoreName"], cim["CertHash"], cim["SubjectName"]
    )


def _upload_state(text: str) -> UploadState:
    """An UploadState from its JSON; keys this version does not know are ignored (a later
    version may add some) and those missing take their defaults."""
    known = {f.name for f in dataclasses.fields(UploadState)}
    return UploadState(**{k: v for k, v in json.loads(text).items() if k in known})


def file_from_row(row: tuple[Any, ...]) -> JobFile:
    (
        file_id,
        _job,
        _pos,
        remote,
        local,
        total,
        done,
        completed,
        temp,
        etag,
        lm,
        published,
        ranges,
        rs,
        rh,
        digest,
        segments,
        repr_digest,
    ) = row
    return JobFile(
        remote_url=str(remote),
        local_file=str(local),
        bytes_total=None if total is None else int(total),
        bytes_transferred=int(done),
        completed=bool(completed),
        temp_name=None if temp is None else str(temp),
        etag=None if etag is None else str(etag),
        last_modified=None if lm is None else str(lm),
        published=bool(published),
        file_id=int(file_id),
        ranges=None if ranges is None else [(int(o), int(n)) for o, n in json.loads(ranges)],
        range_support=None if rs is None else bool(rs),
        response_headers=None if rh is None else str(rh),
        digest=None if digest is None else str(digest),
        segments=None if segments is None else str(segments),
        repr_digest=None if repr_digest is None else str(repr_digest),
    )
