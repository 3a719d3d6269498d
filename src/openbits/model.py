"""The BITS object model: enumerations, Job and JobFile, FILETIME, the CIM JSON shape.

Pure data: no I/O, no imports of other openbits modules but ``redaction`` (pure string
rules: a webhook's URL is shown redacted).  Values and names are
those of ../shared/reference/bits-spec.md §1-2 and SPEC §1.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

from openbits.redaction import redact_url, redact_webhook

BG_SIZE_UNKNOWN = 0xFFFFFFFFFFFFFFFF
BG_LENGTH_TO_EOF = 0xFFFFFFFFFFFFFFFF  # a range that runs to the end of the remote file
#: the API's paths of the BitsClientJob class and of the BitsServicePolicy singleton
JOB_CLASS_PATH = "/root/microsoft/bits/BitsClientJob"
POLICY_PATH = "/root/microsoft/bits/BitsServicePolicy"
#: FILETIME of the Unix epoch: 100 ns intervals from 1601-01-01 to 1970-01-01.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000

DISPLAY_NAME_MAX = 256
DESCRIPTION_MAX = 1024
REMOTE_URL_MAX = 2200
LOCAL_FILE_MAX = 4095  # PATH_MAX - 1 on Linux, the analogue of MAX_PATH
MINIMUM_RETRY_DELAY_FLOOR_S = 5
DEFAULT_MAXIMUM_DOWNLOAD_TIME_S = 7_776_000  # 90 days
UINT32_MAX = 0xFFFFFFFF
#: MaxConnections (SPEC §9): the range a caller may set, and the defaults by priority
#: (FOREGROUND moves several files at once; background priorities one at a time, as BITS)
MAX_CONNECTIONS_RANGE = range(1, 33)
DEFAULT_MAX_CONNECTIONS_FOREGROUND = 4
DEFAULT_MAX_CONNECTIONS_BACKGROUND = 1
_GUID = re.compile(r"\{?([0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12})\}?", re.ASCII)


class NamedIntEnum(IntEnum):
    """An IntEnum that prints as its name: ``print(job.state)`` shows TRANSFERRED, not 6.
    int(), JSON, SQLite and ``%d`` still see the number the API carries."""

    def __str__(self) -> str:
        return self.name


class JobState(NamedIntEnum):
    QUEUED = 0
    CONNECTING = 1
    TRANSFERRING = 2
    SUSPENDED = 3
    ERROR = 4
    TRANSIENT_ERROR = 5
    TRANSFERRED = 6
    ACKNOWLEDGED = 7
    CANCELLED = 8

    @property
    def is_final(self) -> bool:
        return self in (JobState.ACKNOWLEDGED, JobState.CANCELLED)

    @property
    def bitsadmin_name(self) -> str:
        """The spelling bitsadmin prints (CANCELED with one L)."""
        return "CANCELED" if self is JobState.CANCELLED else self.name


class JobPriority(NamedIntEnum):
    FOREGROUND = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


class JobType(NamedIntEnum):
    DOWNLOAD = 0
    UPLOAD = 1
    UPLOAD_REPLY = 2


class ErrorContext(NamedIntEnum):
    NONE = 0
    UNKNOWN = 1
    GENERAL_QUEUE_MANAGER = 2
    QUEUE_MANAGER_NOTIFICATION = 3
    LOCAL_FILE = 4
    REMOTE_FILE = 5
    GENERAL_TRANSPORT = 6
    REMOTE_APPLICATION = 7
    SERVER_CERTIFICATE_CALLBACK = 8


class SetJobStateCode(NamedIntEnum):
    """The JobState parameter of the WMI SetJobState method."""

    CANCEL = 0
    COMPLETE = 1
    RESUME = 2
    SUSPEND = 3


class ProxyUsage(NamedIntEnum):
    PRECONFIG = 0
    NO_PROXY = 1
    OVERRIDE = 2
    AUTODETECT = 3


class AuthTarget(NamedIntEnum):
    """SetCredentials' Target (BG_AUTH_TARGET, 0-based as in WMI)."""

    SERVER = 0
    PROXY = 1


class AuthScheme(NamedIntEnum):
    """SetCredentials' Scheme (BG_AUTH_SCHEME, 0-based as in WMI)."""

    BASIC = 0
    DIGEST = 1
    NTLM = 2
    NEGOTIATE = 3
    PASSPORT = 4


class CertStoreLocation(NamedIntEnum):
    """SetClientCertificateBy*'s CertStoreLocation (BG_CERT_STORE_LOCATION)."""

    CURRENT_USER = 0
    LOCAL_MACHINE = 1
    CURRENT_SERVICE = 2
    SERVICES = 3
    USERS = 4
    CURRENT_USER_GROUP_POLICY = 5
    LOCAL_MACHINE_GROUP_POLICY = 6
    LOCAL_MACHINE_ENTERPRISE = 7


class NotifyFlags(IntFlag):
    JOB_TRANSFERRED = 0x0001
    JOB_ERROR = 0x0002
    DISABLE = 0x0004
    JOB_MODIFICATION = 0x0008
    FILE_TRANSFERRED = 0x0010
    FILE_RANGES_TRANSFERRED = 0x0020


DEFAULT_NOTIFY_FLAGS = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR


class SecurityFlags(IntFlag):
    """SetSecurityFlags bits (bits-spec §2.10)."""

    ENABLE_CRL_CHECK = 0x0001
    IGNORE_CERT_CN_INVALID = 0x0002
    IGNORE_CERT_DATE_INVALID = 0x0004
    IGNORE_UNKNOWN_CA = 0x0008
    IGNORE_CERT_WRONG_USAGE = 0x0010
    REDIRECT_POLICY_ALLOW_REPORT = 0x0100
    REDIRECT_POLICY_DISALLOW = 0x0200
    REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP = 0x0800


REDIRECT_POLICY_MASK = 0x0700
CUSTOM_HEADERS_MAX = 16_383  # 16,384 characters including the terminator


def filetime_from_unix_ns(unix_ns: int) -> int:
    """FILETIME (100 ns since 1601-01-01 UTC) of a Unix time in nanoseconds; 0 stays 0."""
    if unix_ns == 0:
        return 0
    return unix_ns // 100 + FILETIME_UNIX_EPOCH


def unix_ns_from_filetime(filetime: int) -> int:
    if filetime == 0:
        return 0
    return (filetime - FILETIME_UNIX_EPOCH) * 100


def canonical_job_id(value: str | uuid.UUID) -> str:
    """``{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}`` upper-case; raises ValueError."""
    if isinstance(value, uuid.UUID):
        return "{" + str(value).upper() + "}"
    text = value.strip()
    m = _GUID.fullmatch(text)
    if m is None or text.startswith("{") != text.endswith("}"):
        raise ValueError(f"not a GUID: {value!r}")
    return "{" + m.group(1).upper() + "}"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
#: headers the transfer itself controls; a job may not set them
RESERVED_HEADERS = frozenset(
    {"host", "range", "if-range", "content-length", "transfer-encoding", "connection", "accept-encoding"}
)


def parse_custom_headers(text: str) -> list[tuple[str, str]]:
    """``Name: value`` lines, each ended by CR LF (SetCustomHeaders); ValueError if malformed."""
    if not text.endswith("\r\n"):
        raise ValueError("each custom header must end with CR LF")
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text[:-2].split("\r\n"), 1):
        if "\r" in line or "\n" in line or "\x00" in line:
            raise ValueError("a custom header contains a bare CR, LF or NUL")
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            # (by its number: the line may hold a token, and error texts are shown and logged)
            raise ValueError(f"custom header line {number} is not 'Name: value'")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"the {name} header is set by the transfer itself")
        pairs.append((name, value.strip(" \t")))
    return pairs


def new_job_id() -> str:
    return canonical_job_id(uuid.uuid4())


@dataclass(slots=True)
class JobFile:
    remote_url: str
    local_file: str
    bytes_total: int | None = None  # None while the size is unknown
    bytes_transferred: int = 0  # durable: written, fdatasync'd and committed
    completed: bool = False  # all bytes transferred (in the temporary file)
    temp_name: str | None = None  # base name of the temporary file
    etag: str | None = None
    last_modified: str | None = None  # the server's Last-Modified header, verbatim
    published: bool = False  # renamed to local_file by Complete
    file_id: int | None = None  # store key
    #: AddFileWithRanges: (offset, length) pieces of the remote file, written one after the
    #: other; length BG_LENGTH_TO_EOF runs to the end. None: the whole file.
    ranges: list[tuple[int, int]] | None = None
    #: the server can resume this file (206 to a Range, or Accept-Ranges with a length);
    #: False: an interruption restarts it from byte 0; None: not known yet
    range_support: bool | None = None
    #: the headers of the last response accepted for this file ("Name: value\r\n" lines)
    response_headers: str | None = None
    #: the expected digest of the bytes the job writes, canonical (``digest.Digest.canonical``:
    #: ``sha-256=:<base64>:``); the file counts as Completed only once they match
    digest: str | None = None
    #: a download in segments (``transfer/segplan.py``): each segment's start, durable offset
    #: and end as compact JSON ``[[start, done, end], ...]``; None: one stream from byte 0,
    #: ``bytes_transferred`` its durable prefix
    segments: str | None = None
    #: a server's ``Repr-Digest`` for the file (its sha-256/sha-512 members, canonical, joined
    #: by ", "), from the answer that last carried one since the file started from byte 0: a
    #: resume whose 206 carries none (an attempt after a SIGKILL, a retry) is checked against it
    repr_digest: str | None = None

    @property
    def directory(self) -> str:
        """``os.path.dirname(local_file)``, without its generality: LocalFile is absolute and
        normalised (no ``.``, ``..`` or doubled slash but a leading ``//``), so its directory
        ends at its last slash (several calls a file on the path of thousands of small ones)."""
        path = self.local_file
        cut = path.rfind("/")
        return path[:cut] if cut > 0 and path[cut - 1] != "/" else path[: cut + 1]

    @property
    def temp_path(self) -> str | None:
        if self.temp_name is None:
            return None
        # (LocalFile is absolute and normalised: its directory ends at its last slash)
        return self.local_file[: self.local_file.rfind("/") + 1] + self.temp_name

    def to_cim(self) -> dict[str, Any]:
        return {
            "RemoteUrl": redact_url(self.remote_url),
            "LocalFile": self.local_file,
            "BytesTotal": BG_SIZE_UNKNOWN if self.bytes_total is None else self.bytes_total,
            "BytesTransferred": self.bytes_transferred,
            "Completed": self.completed,
            "RangeSupport": self.range_support,
            **(
                {"Ranges": [{"InitialOffset": o, "Length": n} for o, n in self.ranges]}
                if self.ranges is not None
                else {}
            ),
            **({"Digest": self.digest} if self.digest is not None else {}),
        }


class Secret:
    """A secret string (a password, custom header values): it never prints.  ``reveal()``
    is the one way to read it, so every use is greppable."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Credential:
    """One SetCredentials entry.  ``password`` None: set without one (NTLM/Negotiate with
    the owner's default credentials), or lost with the store's key file (``missing``)."""

    target: AuthTarget
    scheme: AuthScheme
    user_name: str | None
    password: Secret | None
    #: the store held a password that could not be decrypted (a store copied without its key)
    missing: bool = False

    @property
    def uses_default(self) -> bool:
        """NTLM/Negotiate without a password: the owner's default credentials answer."""
        connection_bound = self.scheme in (AuthScheme.NTLM, AuthScheme.NEGOTIATE)
        return connection_bound and self.password is None and not self.missing

    def to_cim(self) -> dict[str, Any]:
        return {"Target": int(self.target), "Scheme": int(self.scheme), "UserName": self.user_name}


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """SetClientCertificateById/ByName: where the certificate is and which it is.  The key
    stays in its store; only these names are kept."""

    location: CertStoreLocation
    store_name: str
    cert_hash: str  # SHA-1 thumbprint of the DER certificate, 40 lower-case hex digits
    subject_name: str  # the subject as found (RFC 4514 string)

    def to_cim(self) -> dict[str, Any]:
        return {
            "CertStoreLocation": int(self.location),
            "StoreName": self.store_name,
            "CertHash": self.cert_hash,
            "SubjectName": self.subject_name,
        }


#: the fragment size an upload starts with; it grows while fragments go fast and shrinks on 413
UPLOAD_FRAGMENT_START_BYTES = 1024 * 1024
#: the largest reply GetReplyData returns (SPEC §8: BG_E_TOO_LARGE above)
REPLY_DATA_MAX_BYTES = 1024 * 1024


@dataclass(slots=True)
class UploadState:
    """An upload (or upload-reply) job's protocol state (SPEC §8, bits-spec §6), stored with
    the job: what lets the client go on in the same session after any interruption, a
    daemon restart included.  The job's one file holds the rest: ``bytes_total`` is the
    source's size and ``bytes_transferred`` the offset the server acknowledged (progress
    never counts a byte the server has not acknowledged)."""

    #: the source as AddFile found it: a change of either before a fragment is
    #: BG_E_LOCAL_FILE_CHANGED (context LOCAL_FILE)
    source_size: int = 0
    source_mtime_ns: int = 0
    #: BITS-Session-Id of the open session (opaque, as the server spelled it); None: none yet
    session_id: str | None = None
    #: BITS-Host-Id of Create-Session's Ack: the later packets of the session go to that host
    host_id: str | None = None
    #: every byte acknowledged (the last fragment's Ack came)
    fragments_done: bool = False
    #: upload-reply: BITS-Reply-URL of the last fragment's Ack (fetched before Close-Session)
    reply_url: str | None = None
    #: upload-reply: the reply is whole in its temporary file (beside ReplyFileName)
    reply_done: bool = False
    #: Close-Session was answered: the upload is on the server (the job is TRANSFERRED)
    closed: bool = False
    #: upload-reply: the name of the reply's temporary file beside ReplyFileName when it is
    #: not ``files.reply_temp_name(JobId)``: a new owner's, unforeseeable (TakeOwnership)
    reply_temp_name: str | None = None
    #: BITS-Host-Id-Fallback-Timeout of Create-Session's Ack (seconds): the BITS-Host-Id
    #: host unreachable that long, the session goes back to the URL's host; None: never
    host_fallback_s: int | None = None
    #: when the BITS-Host-Id host first failed to be reached since it last answered (Unix
    #: ns; 0: it has not failed)
    host_failing_since_ns: int = 0


@dataclass(slots=True)
class JobError:
    hresult: int
    context: ErrorContext
    message: str
    file_index: int | None = None


@dataclass(slots=True)
class Job:
    job_id: str
    owner: str
    owner_uid: int
    display_name: str = ""
    description: str = ""
    job_type: JobType = JobType.DOWNLOAD
    priority: JobPriority = JobPriority.NORMAL
    state: JobState = JobState.SUSPENDED
    minimum_retry_delay_s: int = 600
    no_progress_timeout_s: int = 1_209_600
    notify_flags: int = int(DEFAULT_NOTIFY_FLAGS)
    created_ns: int = 0
    modified_ns: int = 0
    transferred_ns: int = 0  # entered TRANSFERRED (JobCompletionTime)
    finished_ns: int = 0  # entered ACKNOWLEDGED or CANCELLED
    transient_error_count: int = 0
    error: JobError | None = None
    retry_at_ns: int = 0  # when a TRANSIENT_ERROR job goes back to QUEUED
    no_progress_since_ns: int = 0  # first transient error since the last progress
    seq: int = 0  # creation order (store key order)
    maximum_download_time_s: int = DEFAULT_MAXIMUM_DOWNLOAD_TIME_S
    download_time_ns: int = 0  # CONNECTING + TRANSFERRING time since the last Resume
    custom_headers: str | None = None  # "Name: value\r\n..." sent with every request
    custom_headers_write_only: bool = False  # MakeCustomHeadersWriteOnly: never read back
    security_flags: int = 0  # BG_SSL_* and BG_HTTP_REDIRECT_POLICY_* bits
    notify_program: str | None = None  # SetNotifyCmdLine: the program (absolute path)
    notify_parameters: str | None = None  # ... and its command line, program first
    notify_url: str | None = None  # SetNotifyUrl (extension): a webhook
    notify_due_ns: int = 0  # when the next notification is due (0: none pending)
    #: SetCredentials, by (target, scheme); passwords sealed at rest (store/secrets.py)
    credentials: dict[tuple[AuthTarget, AuthScheme], Credential] = field(default_factory=dict)
    proxy_usage: ProxyUsage = ProxyUsage.PRECONFIG
    proxy_list: str | None = None  # OVERRIDE only, as given
    proxy_bypass_list: str | None = None  # OVERRIDE only, as given
    #: PRECONFIG: the caller's proxy variables at CreateJob (http_proxy, ...; sealed at rest)
    proxy_environment: dict[str, str] | None = None
    client_certificate: ClientCertificate | None = None
    #: upload-reply: where the reply goes at Complete (SetReplyFileName; AddFile sets the
    #: default, ``<source's directory>/<JobId>.reply``); None for other jobs
    reply_file_name: str | None = None
    reply_bytes_total: int | None = None  # ReplyProgress.BytesTotal (None: not known yet)
    reply_bytes_transferred: int = 0  # ReplyProgress.BytesTransferred
    #: upload and upload-reply jobs once their file is added: the session (UploadState)
    upload: UploadState | None = None
    #: MaxConnections as set (None: the default by priority, ``default_max_connections``)
    max_connections: int | None = None
    # not persisted: scheduling bookkeeping of this daemon's life
    run_started_ns: int = 0  # entered CONNECTING (0 while not running)
    queued_ns: int = 0  # entered QUEUED (round-robin order)
    errors_in_a_row: int = 0  # transient errors since the last progress (retry backoff)
    unsaved: bool = False  # a store write failed: the next one saves every file row too
    files: list[JobFile] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        if not self.files:
            return 0
        total = 0
        for f in self.files:
            if f.bytes_total is None:
                return BG_SIZE_UNKNOWN
            total += f.bytes_total
        return total

    @property
    def bytes_transferred(self) -> int:
        return sum(f.bytes_transferred for f in self.files)

    @property
    def default_max_connections(self) -> int:
        """MaxConnections while none was set: 4 for FOREGROUND, 1 otherwise (SPEC §9)."""
        if self.priority is JobPriority.FOREGROUND:
            return DEFAULT_MAX_CONNECTIONS_FOREGROUND
        return DEFAULT_MAX_CONNECTIONS_BACKGROUND

    def effective_max_connections(self, cap: int | None = None) -> int:
        """The connections this job may use at once: as set, else the default by priority,
        and never more than the policy's ``cap`` (max_connections_per_job)."""
        wanted = self.default_max_connections if self.max_connections is None else self.max_connections
        return max(1, wanted if cap is None else min(wanted, cap))

    @property
    def files_transferred(self) -> int:
        return sum(1 for f in self.files if f.completed)

    def to_cim(self, files: bool = True, *, viewer_uid: int | None = None) -> dict[str, Any]:
        """The BitsClientJob instance as JSON, WMI names and types (SPEC §1); ``files=False``
        leaves out the Files array (an extension for pollers of jobs with many files).
        ``viewer_uid``: who reads it; CustomHeaders are shown to the job's owner alone
        (SPEC §7: an administrator reading another user's job never sees them)."""
        cim = {name: get(self) for name, get in CIM_PROPERTIES.items() if files or name != "Files"}
        if self.custom_headers_write_only or not self.shows_secrets_to(viewer_uid):
            del cim["CustomHeaders"]  # (SPEC §1: omitted when write-only)
        return cim

    def cim_view(self, *, viewer_uid: int | None = None) -> Mapping[str, Any]:
        """The instance's properties computed only when read (WQL tests a few of thousands);
        CustomHeaders are None for a ``viewer_uid`` that is not the owner's."""
        return _CimView(self, self.shows_secrets_to(viewer_uid))

    def shows_secrets_to(self, viewer_uid: int | None) -> bool:
        """Whether the instance read by ``viewer_uid`` shows the owner's CustomHeaders
        (None: the daemon itself, which hands them on to no one)."""
        return viewer_uid is None or viewer_uid == self.owner_uid


#: The BitsClientJob instance: WMI name -> its value of a job, in the instance's order.
CIM_PROPERTIES: dict[str, Callable[[Job], Any]] = {
    "JobId": lambda j: j.job_id,
    "DisplayName": lambda j: j.display_name,
    "Description": lambda j: j.description,
    "Priority": lambda j: int(j.priority),
    "MinimumRetryDelay": lambda j: j.minimum_retry_delay_s,
    "NoProgressTimeout": lambda j: j.no_progress_timeout_s,
    "Files": lambda j: [f.to_cim() for f in j.files],
    "JobCreationTime": lambda j: filetime_from_unix_ns(j.created_ns),
    "JobLastModificationTime": lambda j: filetime_from_unix_ns(j.modified_ns),
    "JobCompletionTime": lambda j: filetime_from_unix_ns(j.transferred_ns),
    "BytesTotal": lambda j: j.bytes_total,
    "BytesTransferred": lambda j: j.bytes_transferred,
    "FilesTotal": lambda j: len(j.files),
    "FilesTransferred": lambda j: j.files_transferred,
    "TransientErrorCount": lambda j: j.transient_error_count,
    "State": lambda j: int(j.state),
    "Owner": lambda j: j.owner,
    # extensions (SPEC §1)
    "JobType": lambda j: int(j.job_type),
    "NotifyFlags": lambda j: j.notify_flags,
    "NotifyCmdLine": lambda j: (
        None if j.notify_program is None else {"Program": j.notify_program, "Parameters": j.notify_parameters}
    ),
    "NotifyUrl": lambda j: None if j.notify_url is None else redact_webhook(j.notify_url),
    "MaximumDownloadTime": lambda j: j.maximum_download_time_s,
    "CustomHeaders": lambda j: None if j.custom_headers_write_only else j.custom_headers,
    "SecurityFlags": lambda j: j.security_flags,
    "Credentials": lambda j: [c.to_cim() for c in j.credentials.values()],
    "ProxyUsage": lambda j: int(j.proxy_usage),
    "ProxyList": lambda j: j.proxy_list,
    "ProxyBypassList": lambda j: j.proxy_bypass_list,
    "ClientCertificate": lambda j: None if j.client_certificate is None else j.client_certificate.to_cim(),
    "ReplyFileName": lambda j: j.reply_file_name,
    "ReplyProgress": lambda j: _reply_progress(j),
    # as set, else the default by priority (the policy's cap is not applied here)
    "MaxConnections": lambda j: j.effective_max_connections(),
}


def _reply_progress(job: Job) -> dict[str, int] | None:
    """ReplyProgress of an upload-reply job (BG_JOB_REPLY_PROGRESS); None for other jobs."""
    if job.job_type is not JobType.UPLOAD_REPLY:
        return None
    total = BG_SIZE_UNKNOWN if job.reply_bytes_total is None else job.reply_bytes_total
    return {"BytesTotal": total, "BytesTransferred": job.reply_bytes_transferred}


class _CimView(Mapping[str, Any]):
    __slots__ = ("_job", "_owner")

    def __init__(self, job: Job, owner: bool = True) -> None:
        self._job = job
        self._owner = owner  # (read by the job's owner: its CustomHeaders are shown)

    def __getitem__(self, name: str) -> Any:
        if name == "CustomHeaders" and not self._owner:
            return None
        return CIM_PROPERTIES[name](self._job)

    def __contains__(self, name: object) -> bool:
        return name in CIM_PROPERTIES

    def __iter__(self) -> Iterator[str]:
        return iter(CIM_PROPERTIES)

    def __len__(self) -> int:
        return len(CIM_PROPERTIES)


#: Read/write properties a PATCH may set: WMI name -> Job attribute.
WRITABLE_PROPERTIES: dict[str, str] = {
    "DisplayName": "display_name",
    "Description": "description",
    "Priority": "priority",
    "MinimumRetryDelay": "minimum_retry_delay_s",
    "NoProgressTimeout": "no_progress_timeout_s",
    "MaxConnections": "max_connections",
}

#: Every property name of the instance (for BG_E_READ_ONLY_PROPERTY vs unknown).
ALL_PROPERTIES: tuple[str, ...] = tuple(CIM_PROPERTIES)
