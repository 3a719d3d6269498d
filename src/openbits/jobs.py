"""Typed views of the API's JSON for the Python clients: BitsJob, BitsFile, JobErrorInfo,
JobEvent.

stdlib only and pure data (no I/O), so ``import openbits`` stays fast.  Each object keeps
the dict it was built from as ``raw``; building tolerates keys it does not know (a newer
daemon) and optional keys that are missing (an older one, ``Files=false``, events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from openbits.errors import BitsError, hresult_name
from openbits.model import (
    BG_SIZE_UNKNOWN,
    AuthScheme,
    AuthTarget,
    CertStoreLocation,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
    SecurityFlags,
)

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_NO_SECURITY_FLAGS = SecurityFlags(0)

#: the states a job leaves only when someone acts on it (``BitsJob.done``)
DONE_STATES = frozenset({JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED})

#: the event types of ``GET /events`` (``Reset``: the daemon no longer held the events asked for)
EVENT_TYPES = (
    "JobModification",
    "JobTransferred",
    "JobError",
    "FileTransferred",
    "JobCancelled",
    "JobAcknowledged",
    "Reset",
)


def datetime_from_filetime(filetime: int) -> datetime | None:
    """A FILETIME (100 ns since 1601-01-01 UTC) as an aware UTC datetime; 0 is None."""
    if not filetime:
        return None
    return _FILETIME_EPOCH + timedelta(microseconds=int(filetime) // 10)


def _size(value: Any) -> int | None:
    """A uint64 size; BG_SIZE_UNKNOWN (and a missing one) is None."""
    if value is None or int(value) == BG_SIZE_UNKNOWN:
        return None
    return int(value)


class NotifyCmdLine(NamedTuple):
    """SetNotifyCmdLine: the program (an absolute path) and its command line."""

    program: str
    parameters: str | None


class JobCredential(NamedTuple):
    """One of SetCredentials' entries, as the instance names it: never its password."""

    target: AuthTarget
    scheme: AuthScheme
    #: None: the owner's default credentials (NTLM, Negotiate)
    user_name: str | None


class JobClientCertificate(NamedTuple):
    """SetClientCertificateById/ByName: where the certificate is and which it is."""

    location: CertStoreLocation
    store_name: str
    cert_hash: str  # the SHA-1 thumbprint, 40 hex digits
    subject_name: str


def _credentials(value: Any) -> tuple[JobCredential, ...]:
    return tuple(
        JobCredential(AuthTarget(int(c["Target"])), AuthScheme(int(c["Scheme"])), c.get("UserName"))
        for c in value or ()
    )


def _certificate(value: Any) -> JobClientCertificate | None:
    if not isinstance(value, Mapping):
        return None
    return JobClientCertificate(
        CertStoreLocation(int(value["CertStoreLocation"])),
        str(value.get("StoreName", "")),
        str(value.get("CertHash", "")),
        str(value.get("SubjectName", "")),
    )


@dataclass(frozen=True, slots=True)
class ReplyProgress:
    """An upload-reply job's reply download (BG_JOB_REPLY_PROGRESS); ``bytes_total`` is None
    while unknown."""

    bytes_total: int | None
    bytes_transferred: int


def _reply_progress(value: Any) -> ReplyProgress | None:
    if not isinstance(value, Mapping):
        return None
    return ReplyProgress(_size(value.get("BytesTotal")), int(value.get("BytesTransferred") or 0))


@dataclass(frozen=True, slots=True)
class BitsFile:
    """One file of a job (a ``BitsClientFile``)."""

    remote_url: str
    local_file: str
    #: None while the size is not known yet (BG_SIZE_UNKNOWN)
    bytes_total: int | None
    bytes_transferred: int
    completed: bool
    #: AddFileWithRanges: the (offset, length) pieces asked for; None: the whole file
    ranges: tuple[tuple[int, int], ...] | None = None
    #: whether the server resumes this file (None: not known yet)
    range_support: bool | None = None
    #: the expected digest, canonical (``sha-256=:<base64>:``); None when none was given
    digest: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cim(cls, data: Mapping[str, Any]) -> BitsFile:
        ranges = data.get("Ranges")
        return cls(
            remote_url=str(data.get("RemoteUrl", "")),
            local_file=str(data.get("LocalFile", "")),
            bytes_total=_size(data.get("BytesTotal")),
            bytes_transferred=int(data.get("BytesTransferred") or 0),
            completed=bool(data.get("Completed", False)),
            ranges=None
            if ranges is None
            else tuple((int(r["InitialOffset"]), int(r["Length"])) for r in ranges),
            range_support=data.get("RangeSupport"),
            digest=data.get("Digest"),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class BitsJob:
    """A ``BitsClientJob`` instance with snake_case attributes and Python types.

    Sizes are None while unknown (BG_SIZE_UNKNOWN), times are aware UTC datetimes (None for
    a FILETIME of 0: ``completion_time`` before TRANSFERRED), durations are seconds.
    ``files`` is empty when the instance came without its Files (``get_job(files=False)``,
    events of a job of more than 16 files): ``files_total`` still counts them.
    ``custom_headers`` is None where the daemon leaves it out (events) and is not shown
    by ``repr`` (it often holds a secret).  ``raw`` is the JSON object it was built from.
    """

    job_id: str
    display_name: str = ""
    description: str = ""
    priority: JobPriority = JobPriority.NORMAL
    state: JobState = JobState.SUSPENDED
    job_type: JobType = JobType.DOWNLOAD
    owner: str = ""
    bytes_total: int | None = 0
    bytes_transferred: int = 0
    files_total: int = 0
    files_transferred: int = 0
    transient_error_count: int = 0
    minimum_retry_delay: int = 600
    no_progress_timeout: int = 1_209_600
    notify_flags: NotifyFlags = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR
    notify_cmd_line: NotifyCmdLine | None = None
    notify_url: str | None = None
    maximum_download_time: int = 7_776_000
    #: SPEC §9: connections the job may use at once (as set, else the default by priority)
    max_connections: int = 1
    custom_headers: str | None = field(default=None, repr=False)
    security_flags: SecurityFlags = _NO_SECURITY_FLAGS
    #: SPEC §7: the credentials set (without passwords), the proxy settings, the certificate
    credentials: tuple[JobCredential, ...] = ()
    proxy_usage: ProxyUsage = ProxyUsage.PRECONFIG
    proxy_list: str | None = None
    proxy_bypass_list: str | None = None
    client_certificate: JobClientCertificate | None = None
    #: SPEC §8, upload-reply jobs: where the reply goes at Complete and its download's
    #: progress (None for other jobs; ``reply_file_name`` also before the file is added)
    reply_file_name: str | None = None
    reply_progress: ReplyProgress | None = None
    creation_time: datetime | None = None
    modification_time: datetime | None = None
    completion_time: datetime | None = None
    files: tuple[BitsFile, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cim(cls, data: Mapping[str, Any]) -> BitsJob:
        """From the instance's JSON; only ``JobId`` is required."""
        if "JobId" not in data:
            raise ValueError("a BitsClientJob instance needs its JobId")
        g = data.get
        cmd = g("NotifyCmdLine")
        return cls(
            job_id=str(data["JobId"]),
            display_name=str(g("DisplayName") or ""),
            description=str(g("Description") or ""),
            priority=JobPriority(int(g("Priority", JobPriority.NORMAL))),
            state=JobState(int(g("State", JobState.SUSPENDED))),
            job_type=JobType(int(g("JobType", JobType.DOWNLOAD))),
            owner=str(g("Owner") or ""),
            bytes_total=_size(g("BytesTotal", 0)),
            bytes_transferred=int(g("BytesTransferred") or 0),
            files_total=int(g("FilesTotal") or 0),
            files_transferred=int(g("FilesTransferred") or 0),
            transient_error_count=int(g("TransientErrorCount") or 0),
            minimum_retry_delay=int(g("MinimumRetryDelay", 600)),
            no_progress_timeout=int(g("NoProgressTimeout", 1_209_600)),
            notify_flags=NotifyFlags(int(g("NotifyFlags", 3))),
            notify_cmd_line=None
            if not isinstance(cmd, Mapping) or not cmd.get("Program")
            else NotifyCmdLine(str(cmd["Program"]), cmd.get("Parameters")),
            notify_url=g("NotifyUrl"),
            maximum_download_time=int(g("MaximumDownloadTime", 7_776_000)),
            max_connections=int(g("MaxConnections") or 1),
            custom_headers=g("CustomHeaders"),
            security_flags=SecurityFlags(int(g("SecurityFlags") or 0)),
            credentials=_credentials(g("Credentials")),
            proxy_usage=ProxyUsage(int(g("ProxyUsage") or 0)),
            proxy_list=g("ProxyList"),
            proxy_bypass_list=g("ProxyBypassList"),
            client_certificate=_certificate(g("ClientCertificate")),
            reply_file_name=g("ReplyFileName"),
            reply_progress=_reply_progress(g("ReplyProgress")),
            creation_time=datetime_from_filetime(g("JobCreationTime") or 0),
            modification_time=datetime_from_filetime(g("JobLastModificationTime") or 0),
            completion_time=datetime_from_filetime(g("JobCompletionTime") or 0),
            files=tuple(BitsFile.from_cim(f) for f in g("Files") or ()),
            raw=data,
        )

    @property
    def done(self) -> bool:
        """TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED: it will not move on by itself."""
        return self.state in DONE_STATES

    @property
    def progress(self) -> float | None:
        """Bytes transferred over bytes total, 0..1; None while the total is unknown (or
        the job has no files)."""
        if self.bytes_total is None or self.files_total == 0:
            return None
        if self.bytes_total == 0:
            return 1.0 if self.files_transferred == self.files_total else 0.0
        return min(1.0, self.bytes_transferred / self.bytes_total)


@dataclass(frozen=True, slots=True)
class JobErrorInfo:
    """GetError: why a job is in ERROR (or TRANSIENT_ERROR).  ``raw`` is GetError's answer
    as JSON."""

    hresult: int
    context: ErrorContext
    context_description: str
    error_description: str
    #: the file the error is about, when it is about one
    remote_url: str | None = None
    local_file: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cim(cls, data: Mapping[str, Any]) -> JobErrorInfo:
        return cls(
            hresult=int(data.get("ErrorCode") or 0) & 0xFFFFFFFF,
            context=ErrorContext(int(data.get("ErrorContext") or 0)),
            context_description=str(data.get("ContextDescription") or ""),
            error_description=str(data.get("ErrorDescription") or ""),
            remote_url=data.get("RemoteUrl"),
            local_file=data.get("LocalFile"),
            raw=data,
        )

    @property
    def name(self) -> str:
        """The HRESULT's Windows name (``BG_E_HTTP_ERROR_404``)."""
        return str(self.raw.get("Name") or hresult_name(self.hresult))

    @property
    def hex(self) -> str:
        return f"0x{self.hresult:08X}"

    def exception(self) -> BitsError:
        """The BitsError subclass of this HRESULT, with its description and context."""
        return BitsError.from_hresult(self.hresult, self.error_description or None, self.context)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of ``GET /events``: ``id`` (None for ``Reset``), ``type`` (one of
    :data:`EVENT_TYPES`), ``job`` (the instance after the change; None for ``Reset``)
    and ``data`` (the event's JSON as sent)."""

    id: int | None
    type: str
    job: BitsJob | None
    data: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_sse(cls, event_id: int | None, event_type: str, data: Any) -> JobEvent:
        job = BitsJob.from_cim(data) if isinstance(data, Mapping) and "JobId" in data else None
        return cls(event_id, event_type, job, data)


__all__ = [
    "DONE_STATES",
    "EVENT_TYPES",
    "BitsFile",
    "BitsJob",
    "JobErrorInfo",
    "JobEvent",
    "NotifyCmdLine",
    "datetime_from_filetime",
]
