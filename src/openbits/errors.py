"""HRESULT values of BITS and the BitsError tree.

Every failure inside openbits is a :class:`BitsError` carrying an HRESULT and an
:class:`~openbits.model.ErrorContext`.  Foreign exceptions are translated once, at their
edge: aiohttp's and h1's in ``transfer/http.py``, OSError of a transfer's files in
``transfer/files.py``, SQLite's in ``store/sqlite.py``.  Each class carries its HRESULT,
its context and whether it is retried (transient, ``+``) or fatal; a family that holds
several codes takes the code of the instance (an errno's, an HTTP status's).

    BitsError                     E_FAIL                        GENERAL_QUEUE_MANAGER
    ├── CallError                 a caller's request refused (HTTP 400 unless said)
    │   ├── InvalidArgument       E_INVALIDARG
    │   ├── InvalidRange          BG_E_INVALID_RANGE
    │   ├── OverlappingRanges     BG_E_OVERLAPPING_RANGES
    │   ├── NotImplementedValue   E_NOTIMPL
    │   ├── AccessDenied          E_ACCESSDENIED                  403
    │   ├── PathNotFound          HRESULT_PATH_NOT_FOUND
    │   ├── StringTooLong         BG_E_STRING_TOO_LONG
    │   ├── ReadOnlyProperty      BG_E_READ_ONLY_PROPERTY
    │   ├── NotFound              BG_E_NOT_FOUND                  404
    │   ├── FileNotInJob          BG_E_FILE_NOT_FOUND
    │   ├── InvalidState          BG_E_INVALID_STATE              409
    │   ├── EmptyJob              BG_E_EMPTY                      409
    │   ├── ErrorInformationUnavailable                           409
    │   ├── LimitExceeded                                         409
    │   │   ├── TooManyJobsPerUser     BG_E_TOO_MANY_JOBS_PER_USER
    │   │   ├── TooManyJobsPerMachine  BG_E_TOO_MANY_JOBS_PER_MACHINE
    │   │   ├── TooManyFilesInJob      BG_E_TOO_MANY_FILES_IN_JOB
    │   │   ├── TooManyFiles           BG_E_TOO_MANY_FILES (an upload job's second file)
    │   │   └── TooManyRangesInFile    BG_E_TOO_MANY_RANGES_IN_FILE (400)
    │   ├── RequestTooLarge       HRESULT_REQUEST_TOO_LARGE       413
    │   ├── ReplyTooLarge         BG_E_TOO_LARGE (GetReplyData over 1 MiB)
    │   ├── CertificateNotFound   CRYPT_E_NOT_FOUND
    │   ├── NoPrivateKey          NTE_NO_KEY
    │   └── NoRoomForWork         HRESULT_DISK_FULL               507
    ├── TransferError             moving bytes failed (a job's error, not an API answer)
    │   ├── OwnerUnknown          E_ACCESSDENIED                 GENERAL_QUEUE_MANAGER
    │   ├── NetworkError        + BG_E_CONNECTION_CLOSED         GENERAL_TRANSPORT
    │   │   ├── ConnectError    + BG_E_CONNECT_FAILURE
    │   │   ├── NameResolutionError + BG_E_NAME_RESOLUTION_FAILURE
    │   │   ├── TLSError        + BG_E_SECURE_CHANNEL_FAILURE
    │   │   ├── Timeout         + BG_E_TIMEOUT
    │   │   └── UnknownNetworkError + BG_E_UNKNOWN_ERROR
    │   ├── RemoteFileError       BG_E_INVALID_SERVER_RESPONSE   REMOTE_FILE
    │   │   ├── InvalidResponse   BG_E_INVALID_SERVER_RESPONSE
    │   │   ├── HttpStatusError   BG_E_HTTP_ERROR_<status>, + for TRANSIENT_HTTP_STATUSES
    │   │   ├── DigestMismatch    BG_E_VALIDATION_FAILED
    │   │   ├── UntrustedCertificate  BG_E_TRUST_FAILURE
    │   │   ├── InvalidUrl        E_INVALIDARG
    │   │   ├── RangeNotSupported BG_E_INSUFFICIENT_RANGE_SUPPORT
    │   │   ├── RangeOutsideFile  BG_E_INVALID_RANGE
    │   │   └── SourceFileError   the errno's (E_FAIL)           a local copy's source
    │   │       └── SourceUnavailable + E_FAIL
    │   ├── LocalFileError        the errno's (E_FAIL)           LOCAL_FILE
    │   │   └── DiskFull        + HRESULT_DISK_FULL
    │   └── ClientCertificateUnavailable  CRYPT_E_NOT_FOUND / NTE_NO_KEY  GENERAL_TRANSPORT
    └── InternalError             E_FAIL                         UNKNOWN         500
        └── StoreWriteFailed    + E_FAIL                         GENERAL_QUEUE_MANAGER
            └── StoreFull       + HRESULT_DISK_FULL                              507

``BitsError.from_hresult`` rebuilds the most specific class of an HRESULT (the clients);
``api_http_status`` gives the HTTP status the API answers each with (SPEC §6).

Values come from ../shared/reference/bits-spec.md §2.11-2.12.
"""

from __future__ import annotations

from enum import IntEnum

from openbits.model import ErrorContext


class HResult(IntEnum):
    """Every HRESULT openbits reports, with its Windows name (uint32 values)."""

    S_OK = 0x00000000
    S_FALSE = 0x00000001
    E_FAIL = 0x80004005
    E_NOTIMPL = 0x80004001
    E_INVALIDARG = 0x80070057
    E_ACCESSDENIED = 0x80070005
    E_OUTOFMEMORY = 0x8007000E
    HRESULT_FILE_NOT_FOUND = 0x80070002
    HRESULT_PATH_NOT_FOUND = 0x80070003
    HRESULT_DISK_FULL = 0x80070070
    HRESULT_FILE_EXISTS = 0x80070050
    HRESULT_SHARING_VIOLATION = 0x80070020
    HRESULT_DIRECTORY = 0x8007010B
    HRESULT_FILENAME_TOO_LONG = 0x800700CE
    WBEM_E_INVALID_QUERY = 0x80041017
    HRESULT_REQUEST_TOO_LARGE = 0x80070018
    CRYPT_E_NOT_FOUND = 0x80092004
    NTE_NO_KEY = 0x8009000D
    RPC_X_BAD_STUB_DATA = 0x800706F7
    BG_S_ERROR_CONTEXT_NONE = 0x00200006
    BG_S_PARTIAL_COMPLETE = 0x00200017
    BG_S_UNABLE_TO_DELETE_FILES = 0x0020001A
    BG_S_PROXY_CHANGED = 0x0020002A
    BG_S_OVERRIDDEN_BY_POLICY = 0x00200055
    BG_E_NOT_FOUND = 0x80200001
    BG_E_INVALID_STATE = 0x80200002
    BG_E_EMPTY = 0x80200003
    BG_E_FILE_NOT_AVAILABLE = 0x80200004
    BG_E_PROTOCOL_NOT_AVAILABLE = 0x80200005
    BG_E_ERROR_CONTEXT_UNKNOWN = 0x80200007
    BG_E_ERROR_CONTEXT_GENERAL_QUEUE_MANAGER = 0x80200008
    BG_E_ERROR_CONTEXT_LOCAL_FILE = 0x80200009
    BG_E_ERROR_CONTEXT_REMOTE_FILE = 0x8020000A
    BG_E_ERROR_CONTEXT_GENERAL_TRANSPORT = 0x8020000B
    BG_E_ERROR_CONTEXT_QUEUE_MANAGER_NOTIFICATION = 0x8020000C
    BG_E_DESTINATION_LOCKED = 0x8020000D
    BG_E_VOLUME_CHANGED = 0x8020000E
    BG_E_ERROR_INFORMATION_UNAVAILABLE = 0x8020000F
    BG_E_NETWORK_DISCONNECTED = 0x80200010
    BG_E_MISSING_FILE_SIZE = 0x80200011
    BG_E_INSUFFICIENT_HTTP_SUPPORT = 0x80200012
    BG_E_INSUFFICIENT_RANGE_SUPPORT = 0x80200013
    BG_E_REMOTE_NOT_SUPPORTED = 0x80200014
    BG_E_NEW_OWNER_DIFF_MAPPING = 0x80200015
    BG_E_NEW_OWNER_NO_FILE_ACCESS = 0x80200016
    BG_E_PROXY_LIST_TOO_LARGE = 0x80200018
    BG_E_PROXY_BYPASS_LIST_TOO_LARGE = 0x80200019
    BG_E_INVALID_SERVER_RESPONSE = 0x8020001B
    BG_E_TOO_MANY_FILES = 0x8020001C
    BG_E_LOCAL_FILE_CHANGED = 0x8020001D
    BG_E_ERROR_CONTEXT_REMOTE_APPLICATION = 0x8020001E
    BG_E_SESSION_NOT_FOUND = 0x8020001F
    BG_E_TOO_LARGE = 0x80200020
    BG_E_STRING_TOO_LONG = 0x80200021
    BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH = 0x80200022
    BG_E_SERVER_EXECUTE_ENABLE = 0x80200023
    BG_E_NO_PROGRESS = 0x80200024
    BG_E_USERNAME_TOO_LARGE = 0x80200025
    BG_E_PASSWORD_TOO_LARGE = 0x80200026
    BG_E_INVALID_AUTH_TARGET = 0x80200027
    BG_E_INVALID_AUTH_SCHEME = 0x80200028
    BG_E_FILE_NOT_FOUND = 0x80200029
    BG_E_INVALID_RANGE = 0x8020002B
    BG_E_OVERLAPPING_RANGES = 0x8020002C
    BG_E_CONNECT_FAILURE = 0x8020002D
    BG_E_CONNECTION_CLOSED = 0x8020002E
    BG_E_KEEP_ALIVE_FAILURE = 0x8020002F
    BG_E_MESSAGE_LENGTH_LIMIT_EXCEEDED = 0x80200030
    BG_E_NAME_RESOLUTION_FAILURE = 0x80200031
    BG_E_PENDING = 0x80200032
    BG_E_PIPELINE_FAILURE = 0x80200033
    BG_E_PROTOCOL_ERROR = 0x80200034
    BG_E_PROXY_NAME_RESOLUTION_FAILURE = 0x80200035
    BG_E_RECEIVE_FAILURE = 0x80200036
    BG_E_REQUEST_CANCELED = 0x80200037
    BG_E_SECURE_CHANNEL_FAILURE = 0x80200038
    BG_E_SEND_FAILURE = 0x80200039
    BG_E_SERVER_PROTOCOL_VIOLATION = 0x8020003A
    BG_E_TIMEOUT = 0x8020003B
    BG_E_TRUST_FAILURE = 0x8020003C
    BG_E_UNKNOWN_ERROR = 0x8020003D
    BG_E_BLOCKED_BY_POLICY = 0x8020003E
    BG_E_INVALID_PROXY_INFO = 0x8020003F
    BG_E_INVALID_CREDENTIALS = 0x80200040
    BG_E_INVALID_HASH_ALGORITHM = 0x80200041
    BG_E_RECORD_DELETED = 0x80200042
    BG_E_COMMIT_IN_PROGRESS = 0x80200043
    BG_E_DISCOVERY_IN_PROGRESS = 0x80200044
    BG_E_UPNP_ERROR = 0x80200045
    BG_E_TEST_OPTION_BLOCKED_DOWNLOAD = 0x80200046
    BG_E_PEERCACHING_DISABLED = 0x80200047
    BG_E_BUSYCACHERECORD = 0x80200048
    BG_E_TOO_MANY_JOBS_PER_USER = 0x80200049
    BG_E_TOO_MANY_JOBS_PER_MACHINE = 0x80200050
    BG_E_TOO_MANY_FILES_IN_JOB = 0x80200051
    BG_E_TOO_MANY_RANGES_IN_FILE = 0x80200052
    BG_E_VALIDATION_FAILED = 0x80200053
    BG_E_MAXDOWNLOAD_TIMEOUT = 0x80200054
    BG_E_TOKEN_REQUIRED = 0x80200056
    BG_E_UNKNOWN_PROPERTY_ID = 0x80200057
    BG_E_READ_ONLY_PROPERTY = 0x80200058
    BG_E_BLOCKED_BY_COST_TRANSFER_POLICY = 0x80200059
    BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY = 0x80200060
    BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE = 0x80200061
    BG_E_READ_ONLY_PROPERTY_AFTER_RESUME = 0x80200062
    BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE = 0x80200063
    BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED = 0x80200064
    BG_E_STANDBY_MODE = 0x80200065
    BG_E_USE_STORED_CREDENTIALS_NOT_SUPPORTED = 0x80200066
    BG_E_BLOCKED_BY_BATTERY_POLICY = 0x80200067
    BG_E_BLOCKED_BY_BATTERY_SAVER = 0x80200068
    BG_E_WATCHDOG_TIMEOUT = 0x80200069
    BG_E_APP_PACKAGE_NOT_FOUND = 0x8020006A
    BG_E_APP_PACKAGE_SCENARIO_NOT_SUPPORTED = 0x8020006B
    BG_E_DATABASE_CORRUPT = 0x8020006C
    BG_E_RANDOM_ACCESS_NOT_SUPPORTED = 0x8020006D
    BG_E_BLOCKED_BY_BACKGROUND_ACCESS_POLICY = 0x8020006E
    BG_E_BLOCKED_BY_GAME_MODE = 0x8020006F
    BG_E_BLOCKED_BY_SYSTEM_POLICY = 0x80200070
    BG_E_NOT_SUPPORTED_WITH_CUSTOM_HTTP_METHOD = 0x80200071
    BG_E_UNSUPPORTED_JOB_CONFIGURATION = 0x80200072
    BG_E_REMOTE_FILE_CHANGED = 0x80200073
    BG_E_SERVER_CERT_VALIDATION_INTERFACE_REQUIRED = 0x80200074
    BG_E_READ_ONLY_WHEN_JOB_ACTIVE = 0x80200075
    BG_E_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK = 0x80200076
    BG_E_HTTP_ERROR_100 = 0x80190064
    BG_E_HTTP_ERROR_101 = 0x80190065
    BG_E_HTTP_ERROR_200 = 0x801900C8
    BG_E_HTTP_ERROR_201 = 0x801900C9
    BG_E_HTTP_ERROR_202 = 0x801900CA
    BG_E_HTTP_ERROR_203 = 0x801900CB
    BG_E_HTTP_ERROR_204 = 0x801900CC
    BG_E_HTTP_ERROR_205 = 0x801900CD
    BG_E_HTTP_ERROR_206 = 0x801900CE
    BG_E_HTTP_ERROR_300 = 0x8019012C
    BG_E_HTTP_ERROR_301 = 0x8019012D
    BG_E_HTTP_ERROR_302 = 0x8019012E
    BG_E_HTTP_ERROR_303 = 0x8019012F
    BG_E_HTTP_ERROR_304 = 0x80190130
    BG_E_HTTP_ERROR_305 = 0x80190131
    BG_E_HTTP_ERROR_307 = 0x80190133
    BG_E_HTTP_ERROR_400 = 0x80190190
    BG_E_HTTP_ERROR_401 = 0x80190191
    BG_E_HTTP_ERROR_402 = 0x80190192
    BG_E_HTTP_ERROR_403 = 0x80190193
    BG_E_HTTP_ERROR_404 = 0x80190194
    BG_E_HTTP_ERROR_405 = 0x80190195
    BG_E_HTTP_ERROR_406 = 0x80190196
    BG_E_HTTP_ERROR_407 = 0x80190197
    BG_E_HTTP_ERROR_408 = 0x80190198
    BG_E_HTTP_ERROR_409 = 0x80190199
    BG_E_HTTP_ERROR_410 = 0x8019019A
    BG_E_HTTP_ERROR_411 = 0x8019019B
    BG_E_HTTP_ERROR_412 = 0x8019019C
    BG_E_HTTP_ERROR_413 = 0x8019019D
    BG_E_HTTP_ERROR_414 = 0x8019019E
    BG_E_HTTP_ERROR_415 = 0x8019019F
    BG_E_HTTP_ERROR_416 = 0x801901A0
    BG_E_HTTP_ERROR_417 = 0x801901A1
    BG_E_HTTP_ERROR_449 = 0x801901C1
    BG_E_HTTP_ERROR_500 = 0x801901F4
    BG_E_HTTP_ERROR_501 = 0x801901F5
    BG_E_HTTP_ERROR_502 = 0x801901F6
    BG_E_HTTP_ERROR_503 = 0x801901F7
    BG_E_HTTP_ERROR_504 = 0x801901F8
    BG_E_HTTP_ERROR_505 = 0x801901F9

    @property
    def hex(self) -> str:
        return f"0x{int(self):08X}"


MESSAGES: dict[int, str] = {
    HResult.S_OK: "the operation completed successfully",
    HResult.S_FALSE: "nothing to do: there was nothing to remove",
    HResult.E_FAIL: "unspecified failure",
    HResult.E_NOTIMPL: "not implemented: the value or operation is not supported",
    HResult.E_INVALIDARG: "the parameter is incorrect",
    HResult.E_ACCESSDENIED: "access is denied",
    HResult.E_OUTOFMEMORY: "not enough memory",
    HResult.HRESULT_FILE_NOT_FOUND: "the system cannot find the file specified",
    HResult.HRESULT_PATH_NOT_FOUND: "the system cannot find the path specified",
    HResult.HRESULT_DISK_FULL: "there is not enough space on the disk",
    HResult.HRESULT_FILE_EXISTS: "the file exists",
    HResult.HRESULT_SHARING_VIOLATION: "the file is being used by another process",
    HResult.HRESULT_DIRECTORY: "the directory name is invalid",
    HResult.HRESULT_FILENAME_TOO_LONG: "the file name or extension is too long",
    HResult.WBEM_E_INVALID_QUERY: "the query is not syntactically valid",
    HResult.HRESULT_REQUEST_TOO_LARGE: "the request body is too large",
    HResult.CRYPT_E_NOT_FOUND: "cannot find object or property: no such certificate in the store",
    HResult.NTE_NO_KEY: "key does not exist: the certificate has no private key in its store",
    HResult.RPC_X_BAD_STUB_DATA: "the job does not specify a client certificate",
    HResult.BG_S_ERROR_CONTEXT_NONE: "no error has occurred",
    HResult.BG_S_PARTIAL_COMPLETE: "Complete succeeded for only some files; the unfinished ones were deleted",
    HResult.BG_S_UNABLE_TO_DELETE_FILES: "job finished/cancelled but some temporary files could not be removed",
    HResult.BG_S_PROXY_CHANGED: "proxy server changed",
    HResult.BG_S_OVERRIDDEN_BY_POLICY: "preference stored but a group policy overrides it",
    HResult.BG_E_NOT_FOUND: "job not found",
    HResult.BG_E_INVALID_STATE: "operation not allowed in the job's current state",
    HResult.BG_E_EMPTY: "Resume on a job with no files",
    HResult.BG_E_FILE_NOT_AVAILABLE: "error is not tied to a file",
    HResult.BG_E_PROTOCOL_NOT_AVAILABLE: "error is not tied to a protocol",
    HResult.BG_E_ERROR_CONTEXT_UNKNOWN: "context description message",
    HResult.BG_E_ERROR_CONTEXT_GENERAL_QUEUE_MANAGER: "context description message",
    HResult.BG_E_ERROR_CONTEXT_LOCAL_FILE: "context description message",
    HResult.BG_E_ERROR_CONTEXT_REMOTE_FILE: "context description message",
    HResult.BG_E_ERROR_CONTEXT_GENERAL_TRANSPORT: "context description message",
    HResult.BG_E_ERROR_CONTEXT_QUEUE_MANAGER_NOTIFICATION: "context description message",
    HResult.BG_E_DESTINATION_LOCKED: "the destination volume is locked (e.g. by chkdsk)",
    HResult.BG_E_VOLUME_CHANGED: "destination volume replaced",
    HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE: "GetError called when no error object exists",
    HResult.BG_E_NETWORK_DISCONNECTED: "no active network; jobs go to TRANSIENT_ERROR",
    HResult.BG_E_MISSING_FILE_SIZE: "the server gave no Content-Length (dynamic content)",
    HResult.BG_E_INSUFFICIENT_HTTP_SUPPORT: "server not HTTP/1.1",
    HResult.BG_E_INSUFFICIENT_RANGE_SUPPORT: "server/proxy does not honour Range / strips Content-Range",
    HResult.BG_E_REMOTE_NOT_SUPPORTED: "BITS used remotely",
    HResult.BG_E_NEW_OWNER_DIFF_MAPPING: "drive mapping differs for new owner",
    HResult.BG_E_NEW_OWNER_NO_FILE_ACCESS: "new owner cannot access the temp files",
    HResult.BG_E_PROXY_LIST_TOO_LARGE: "the proxy list is too long",
    HResult.BG_E_PROXY_BYPASS_LIST_TOO_LARGE: "bypass list too long",
    HResult.BG_E_INVALID_SERVER_RESPONSE: "the server's response is not valid for the request",
    HResult.BG_E_TOO_MANY_FILES: "second file added to an upload job",
    HResult.BG_E_LOCAL_FILE_CHANGED: "upload source changed during transfer",
    HResult.BG_E_ERROR_CONTEXT_REMOTE_APPLICATION: "context description message",
    HResult.BG_E_SESSION_NOT_FOUND: "upload session unknown to server",
    HResult.BG_E_TOO_LARGE: "upload exceeds server maximum; also GetReplyData for replies > 1 MB",
    HResult.BG_E_STRING_TOO_LONG: "string argument too long",
    HResult.BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH: "no common upload protocol",
    HResult.BG_E_SERVER_EXECUTE_ENABLE: "IIS vdir has script/execute enabled",
    HResult.BG_E_NO_PROGRESS: "job not making headway",
    HResult.BG_E_USERNAME_TOO_LARGE: "user name > 300 chars",
    HResult.BG_E_PASSWORD_TOO_LARGE: "the password is too long",
    HResult.BG_E_INVALID_AUTH_TARGET: "bad target value",
    HResult.BG_E_INVALID_AUTH_SCHEME: "bad scheme value",
    HResult.BG_E_FILE_NOT_FOUND: "named file not in job",
    HResult.BG_E_INVALID_RANGE: "range outside file / bad range",
    HResult.BG_E_OVERLAPPING_RANGES: "duplicate or overlapping ranges",
    HResult.BG_E_CONNECT_FAILURE: "connection could not be made",
    HResult.BG_E_CONNECTION_CLOSED: "connection closed early",
    HResult.BG_E_KEEP_ALIVE_FAILURE: "a kept-alive connection to the server was dropped",
    HResult.BG_E_MESSAGE_LENGTH_LIMIT_EXCEEDED: "the server's response is too long",
    HResult.BG_E_NAME_RESOLUTION_FAILURE: "the server's name could not be resolved",
    HResult.BG_E_PENDING: "the operation is still pending",
    HResult.BG_E_PIPELINE_FAILURE: "a request sent ahead on the connection failed",
    HResult.BG_E_PROTOCOL_ERROR: "a protocol error occurred",
    HResult.BG_E_PROXY_NAME_RESOLUTION_FAILURE: "the proxy server's name could not be resolved",
    HResult.BG_E_RECEIVE_FAILURE: "the response could not be received",
    HResult.BG_E_REQUEST_CANCELED: "the request was cancelled",
    HResult.BG_E_SECURE_CHANNEL_FAILURE: "a secure (TLS) connection to the server could not be set up",
    HResult.BG_E_SEND_FAILURE: "the request could not be sent",
    HResult.BG_E_SERVER_PROTOCOL_VIOLATION: "the server violated the HTTP protocol",
    HResult.BG_E_TIMEOUT: "the operation timed out",
    HResult.BG_E_TRUST_FAILURE: "the server's certificate could not be validated",
    HResult.BG_E_UNKNOWN_ERROR: "an unknown error occurred",
    HResult.BG_E_BLOCKED_BY_POLICY: "group policy blocks background jobs now (e.g. MaxInternetBandwidth = 0)",
    HResult.BG_E_INVALID_PROXY_INFO: "the proxy or bypass list is not valid",
    HResult.BG_E_INVALID_CREDENTIALS: "malformed credentials",
    HResult.BG_E_INVALID_HASH_ALGORITHM: "invalid hash algorithm",
    HResult.BG_E_RECORD_DELETED: "peer-cache record deleted",
    HResult.BG_E_COMMIT_IN_PROGRESS: "commit in progress",
    HResult.BG_E_DISCOVERY_IN_PROGRESS: "discovery in progress",
    HResult.BG_E_UPNP_ERROR: "gateway (IGD) error",
    HResult.BG_E_TEST_OPTION_BLOCKED_DOWNLOAD: "test option blocked download",
    HResult.BG_E_PEERCACHING_DISABLED: "peercaching disabled",
    HResult.BG_E_BUSYCACHERECORD: "busycacherecord",
    HResult.BG_E_TOO_MANY_JOBS_PER_USER: "MaxJobsPerUser exceeded",
    HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE: "MaxJobsPerMachine exceeded",
    HResult.BG_E_TOO_MANY_FILES_IN_JOB: "MaxFilesPerJob exceeded",
    HResult.BG_E_TOO_MANY_RANGES_IN_FILE: "MaxRangesPerFile exceeded",
    HResult.BG_E_VALIDATION_FAILED: "app marked content invalid / response invalid",
    HResult.BG_E_MAXDOWNLOAD_TIMEOUT: "MaximumDownloadTime exceeded",
    HResult.BG_E_TOKEN_REQUIRED: "a helper token is needed",
    HResult.BG_E_UNKNOWN_PROPERTY_ID: "unknown property id",
    HResult.BG_E_READ_ONLY_PROPERTY: "read only property",
    HResult.BG_E_BLOCKED_BY_COST_TRANSFER_POLICY: "current network cost not allowed",
    HResult.BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY: "property supported for download jobs only",
    HResult.BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE: "read only property after addfile",
    HResult.BG_E_READ_ONLY_PROPERTY_AFTER_RESUME: "read only property after resume",
    HResult.BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE: "max download size invalid value",
    HResult.BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED: "max download size limit reached",
    HResult.BG_E_STANDBY_MODE: "standby mode",
    HResult.BG_E_USE_STORED_CREDENTIALS_NOT_SUPPORTED: "use stored credentials not supported",
    HResult.BG_E_BLOCKED_BY_BATTERY_POLICY: "blocked by battery policy",
    HResult.BG_E_BLOCKED_BY_BATTERY_SAVER: "blocked by battery saver",
    HResult.BG_E_WATCHDOG_TIMEOUT: "watchdog timeout",
    HResult.BG_E_APP_PACKAGE_NOT_FOUND: "app package not found",
    HResult.BG_E_APP_PACKAGE_SCENARIO_NOT_SUPPORTED: "app package scenario not supported",
    HResult.BG_E_DATABASE_CORRUPT: "database corrupt",
    HResult.BG_E_RANDOM_ACCESS_NOT_SUPPORTED: "random access not supported",
    HResult.BG_E_BLOCKED_BY_BACKGROUND_ACCESS_POLICY: "blocked by background access policy",
    HResult.BG_E_BLOCKED_BY_GAME_MODE: "blocked by game mode",
    HResult.BG_E_BLOCKED_BY_SYSTEM_POLICY: "blocked by system policy",
    HResult.BG_E_NOT_SUPPORTED_WITH_CUSTOM_HTTP_METHOD: "not supported with custom http method",
    HResult.BG_E_UNSUPPORTED_JOB_CONFIGURATION: "unsupported job configuration",
    HResult.BG_E_REMOTE_FILE_CHANGED: "remote file changed",
    HResult.BG_E_SERVER_CERT_VALIDATION_INTERFACE_REQUIRED: "server cert validation interface required",
    HResult.BG_E_READ_ONLY_WHEN_JOB_ACTIVE: "read only when job active",
    HResult.BG_E_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK: "error context server certificate callback",
    HResult.BG_E_HTTP_ERROR_100: "the server returned HTTP status 100",
    HResult.BG_E_HTTP_ERROR_101: "the server returned HTTP status 101",
    HResult.BG_E_HTTP_ERROR_200: "the server returned HTTP status 200",
    HResult.BG_E_HTTP_ERROR_201: "the server returned HTTP status 201",
    HResult.BG_E_HTTP_ERROR_202: "the server returned HTTP status 202",
    HResult.BG_E_HTTP_ERROR_203: "the server returned HTTP status 203",
    HResult.BG_E_HTTP_ERROR_204: "the server returned HTTP status 204",
    HResult.BG_E_HTTP_ERROR_205: "the server returned HTTP status 205",
    HResult.BG_E_HTTP_ERROR_206: "the server returned HTTP status 206",
    HResult.BG_E_HTTP_ERROR_300: "the server returned HTTP status 300",
    HResult.BG_E_HTTP_ERROR_301: "the server returned HTTP status 301",
    HResult.BG_E_HTTP_ERROR_302: "the server returned HTTP status 302",
    HResult.BG_E_HTTP_ERROR_303: "the server returned HTTP status 303",
    HResult.BG_E_HTTP_ERROR_304: "the server returned HTTP status 304",
    HResult.BG_E_HTTP_ERROR_305: "the server returned HTTP status 305",
    HResult.BG_E_HTTP_ERROR_307: "the server returned HTTP status 307",
    HResult.BG_E_HTTP_ERROR_400: "the server returned HTTP status 400",
    HResult.BG_E_HTTP_ERROR_401: "the server returned HTTP status 401",
    HResult.BG_E_HTTP_ERROR_402: "the server returned HTTP status 402",
    HResult.BG_E_HTTP_ERROR_403: "the server returned HTTP status 403",
    HResult.BG_E_HTTP_ERROR_404: "the server returned HTTP status 404",
    HResult.BG_E_HTTP_ERROR_405: "the server returned HTTP status 405",
    HResult.BG_E_HTTP_ERROR_406: "the server returned HTTP status 406",
    HResult.BG_E_HTTP_ERROR_407: "the server returned HTTP status 407",
    HResult.BG_E_HTTP_ERROR_408: "the server returned HTTP status 408",
    HResult.BG_E_HTTP_ERROR_409: "the server returned HTTP status 409",
    HResult.BG_E_HTTP_ERROR_410: "the server returned HTTP status 410",
    HResult.BG_E_HTTP_ERROR_411: "the server returned HTTP status 411",
    HResult.BG_E_HTTP_ERROR_412: "the server returned HTTP status 412",
    HResult.BG_E_HTTP_ERROR_413: "the server returned HTTP status 413",
    HResult.BG_E_HTTP_ERROR_414: "the server returned HTTP status 414",
    HResult.BG_E_HTTP_ERROR_415: "the server returned HTTP status 415",
    HResult.BG_E_HTTP_ERROR_416: "the server returned HTTP status 416",
    HResult.BG_E_HTTP_ERROR_417: "the server returned HTTP status 417",
    HResult.BG_E_HTTP_ERROR_449: "the server returned HTTP status 449",
    HResult.BG_E_HTTP_ERROR_500: "the server returned HTTP status 500",
    HResult.BG_E_HTTP_ERROR_501: "the server returned HTTP status 501",
    HResult.BG_E_HTTP_ERROR_502: "the server returned HTTP status 502",
    HResult.BG_E_HTTP_ERROR_503: "the server returned HTTP status 503",
    HResult.BG_E_HTTP_ERROR_504: "the server returned HTTP status 504",
    HResult.BG_E_HTTP_ERROR_505: "the server returned HTTP status 505",
}

CONTEXT_DESCRIPTIONS: dict[ErrorContext, str] = {
    ErrorContext.NONE: "No error has occurred.",
    ErrorContext.UNKNOWN: "The error context is unknown.",
    ErrorContext.GENERAL_QUEUE_MANAGER: "The error occurred in the transfer queue manager.",
    ErrorContext.QUEUE_MANAGER_NOTIFICATION: "The error occurred while the queue manager was notifying the client.",
    ErrorContext.LOCAL_FILE: "The error occurred while processing the local file.",
    ErrorContext.REMOTE_FILE: "The error occurred while processing the remote file.",
    ErrorContext.GENERAL_TRANSPORT: "The error occurred in the transport layer.",
    ErrorContext.REMOTE_APPLICATION: "The error occurred in the server application.",
    ErrorContext.SERVER_CERTIFICATE_CALLBACK: "The error occurred in the server certificate validation callback.",
}

#: HTTP statuses that are retried (SPEC §3); everything else is fatal.
TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429} | set(range(500, 600))) - {501, 505}


def hresult_name(code: int) -> str:
    """The Windows name of an HRESULT, or its hex spelling when it has none."""
    code &= 0xFFFFFFFF
    try:
        return HResult(code).name
    except ValueError:
        if code & 0xFFFF0000 == 0x80190000:
            return f"BG_E_HTTP_ERROR_{code & 0xFFFF}"
        return f"0x{code:08X}"


def hresult_message(code: int) -> str:
    code &= 0xFFFFFFFF
    if code in MESSAGES:
        return MESSAGES[code]
    if code & 0xFFFF0000 == 0x80190000:
        return f"the server returned HTTP status {code & 0xFFFF}"
    return "unknown error"


def http_status_hresult(status: int) -> int:
    """HRESULT for an HTTP status: 0x80190000 + status (bits-spec §2.12)."""
    return 0x80190000 + status


def is_success(code: int) -> bool:
    return (code & 0x80000000) == 0


class BitsError(Exception):
    """An error with a BITS HRESULT and the context it happened in.

    A class gives the defaults: its HRESULT (``default_hresult``), its context
    (``default_context``) and whether it is retried (``transient``).  ``hresult`` and
    ``context`` may still be given where one family holds several codes (an errno's, an
    HTTP status's, or an HRESULT a client rebuilds with ``from_hresult``).
    """

    default_hresult: int = HResult.E_FAIL
    default_context: ErrorContext = ErrorContext.GENERAL_QUEUE_MANAGER
    transient: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        hresult: int | None = None,
        context: ErrorContext | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.hresult = int(hresult if hresult is not None else self.default_hresult) & 0xFFFFFFFF
        self.context = context if context is not None else self.default_context
        self.retry_after_s = retry_after_s
        self.message = message or hresult_message(self.hresult)
        self.transient = self.retried()
        super().__init__(self.message)

    def retried(self) -> bool:
        """Whether this error is transient: the class's word, unless a family decides by code."""
        return type(self).transient

    @property
    def name(self) -> str:
        return hresult_name(self.hresult)

    @property
    def hex(self) -> str:
        return f"0x{self.hresult:08X}"

    def __str__(self) -> str:
        return f"{self.hex} {self.name}: {self.message}"

    @staticmethod
    def from_hresult(
        hresult: int, message: str | None = None, context: ErrorContext = ErrorContext.NONE
    ) -> BitsError:
        """Rebuild the class of an HRESULT a daemon answered (used by clients): the call
        error it names (a limit's family, ``LimitExceeded``), ``InternalError`` for E_FAIL,
        else a plain BitsError (a job's transfer error, an HTTP status)."""
        cls = _BY_HRESULT.get(hresult & 0xFFFFFFFF, BitsError)
        return cls(message, hresult=hresult, context=context)


# -- a caller's request refused -----------------------------------------------------------


class CallError(BitsError):
    """The daemon refuses a caller's request (a verb, a property, a WMI method)."""


class InvalidArgument(CallError):
    default_hresult = HResult.E_INVALIDARG


class InvalidRange(CallError):
    default_hresult = HResult.BG_E_INVALID_RANGE


class OverlappingRanges(CallError):
    default_hresult = HResult.BG_E_OVERLAPPING_RANGES


class NotImplementedValue(CallError):
    default_hresult = HResult.E_NOTIMPL


class AccessDenied(CallError):
    default_hresult = HResult.E_ACCESSDENIED


class PathNotFound(CallError):
    default_hresult = HResult.HRESULT_PATH_NOT_FOUND


class StringTooLong(CallError):
    default_hresult = HResult.BG_E_STRING_TOO_LONG


class ReadOnlyProperty(CallError):
    default_hresult = HResult.BG_E_READ_ONLY_PROPERTY


class NotFound(CallError):
    default_hresult = HResult.BG_E_NOT_FOUND


class FileNotInJob(CallError):
    default_hresult = HResult.BG_E_FILE_NOT_FOUND


class InvalidState(CallError):
    default_hresult = HResult.BG_E_INVALID_STATE


class EmptyJob(CallError):
    default_hresult = HResult.BG_E_EMPTY


class ErrorInformationUnavailable(CallError):
    default_hresult = HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE


class LimitExceeded(CallError):
    default_hresult = HResult.BG_E_TOO_MANY_JOBS_PER_USER


class TooManyJobsPerUser(LimitExceeded):
    default_hresult = HResult.BG_E_TOO_MANY_JOBS_PER_USER


class TooManyJobsPerMachine(LimitExceeded):
    default_hresult = HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE


class TooManyFilesInJob(LimitExceeded):
    default_hresult = HResult.BG_E_TOO_MANY_FILES_IN_JOB


class TooManyFiles(LimitExceeded):
    """A second file for an upload job (it has exactly one)."""

    default_hresult = HResult.BG_E_TOO_MANY_FILES


class ReplyTooLarge(CallError):
    """GetReplyData of a reply over 1 MiB: read the reply file instead."""

    default_hresult = HResult.BG_E_TOO_LARGE


class TooManyRangesInFile(LimitExceeded):
    default_hresult = HResult.BG_E_TOO_MANY_RANGES_IN_FILE


class RequestTooLarge(CallError):
    default_hresult = HResult.HRESULT_REQUEST_TOO_LARGE


class CertificateNotFound(CallError):
    """SetClientCertificate*: no such certificate in the store (or no such store)."""

    default_hresult = HResult.CRYPT_E_NOT_FOUND


class NoPrivateKey(CallError):
    """SetClientCertificate*: the certificate is there, its private key is not."""

    default_hresult = HResult.NTE_NO_KEY


class NoRoomForWork(CallError):
    """New work refused: the state directory is down to the room kept for accepted jobs."""

    default_hresult = HResult.HRESULT_DISK_FULL


# -- a transfer failed ----------------------------------------------------------------------


class TransferError(BitsError):
    """A failure while moving bytes; the class says whether it is retried."""


class OwnerUnknown(TransferError):
    """The job's owner no longer exists: the job does not run (SPEC §7 Users)."""

    default_hresult = HResult.E_ACCESSDENIED


class NetworkError(TransferError):
    """The connection failed or broke: retried."""

    default_hresult = HResult.BG_E_CONNECTION_CLOSED
    default_context = ErrorContext.GENERAL_TRANSPORT
    transient = True


class ConnectError(NetworkError):
    default_hresult = HResult.BG_E_CONNECT_FAILURE


class NameResolutionError(NetworkError):
    default_hresult = HResult.BG_E_NAME_RESOLUTION_FAILURE


class TLSError(NetworkError):
    default_hresult = HResult.BG_E_SECURE_CHANNEL_FAILURE


class Timeout(NetworkError):
    default_hresult = HResult.BG_E_TIMEOUT


class UnknownNetworkError(NetworkError):
    default_hresult = HResult.BG_E_UNKNOWN_ERROR


class RemoteFileError(TransferError):
    """The server (or the source of a local copy) answers what the job cannot use."""

    default_hresult = HResult.BG_E_INVALID_SERVER_RESPONSE
    default_context = ErrorContext.REMOTE_FILE


class InvalidResponse(RemoteFileError):
    default_hresult = HResult.BG_E_INVALID_SERVER_RESPONSE


class HttpStatusError(RemoteFileError):
    """BG_E_HTTP_ERROR_<status>: retried for the statuses of TRANSIENT_HTTP_STATUSES."""

    def retried(self) -> bool:
        return self.hresult & 0xFFFF0000 == 0x80190000 and self.hresult & 0xFFFF in TRANSIENT_HTTP_STATUSES


class DigestMismatch(RemoteFileError):
    """The file's bytes do not match an expected digest (SPEC §9): not retried."""

    default_hresult = HResult.BG_E_VALIDATION_FAILED


class UntrustedCertificate(RemoteFileError):
    default_hresult = HResult.BG_E_TRUST_FAILURE


class InvalidUrl(RemoteFileError):
    default_hresult = HResult.E_INVALIDARG


class RangeNotSupported(RemoteFileError):
    default_hresult = HResult.BG_E_INSUFFICIENT_RANGE_SUPPORT


class RangeOutsideFile(RemoteFileError):
    default_hresult = HResult.BG_E_INVALID_RANGE


class SourceFileError(RemoteFileError):
    """The source file of a local copy cannot be read (its errno's HRESULT)."""

    default_hresult = HResult.E_FAIL


class SourceUnavailable(SourceFileError):
    """The source file cannot be opened for a reason that may pass: retried."""

    transient = True


class LocalFileError(TransferError):
    """The destination's file system refuses (an errno's HRESULT, ``files.local_error``)."""

    default_context = ErrorContext.LOCAL_FILE


class DiskFull(LocalFileError):
    default_hresult = HResult.HRESULT_DISK_FULL
    transient = True


class ClientCertificateUnavailable(TransferError):
    """The job's client certificate (or its key) left its store after it was set: the
    handshake cannot present it (CRYPT_E_NOT_FOUND or NTE_NO_KEY); fatal until the owner
    puts it back, or removes or replaces it, and resumes the job."""

    default_hresult = HResult.CRYPT_E_NOT_FOUND
    default_context = ErrorContext.GENERAL_TRANSPORT


# -- the daemon failed ----------------------------------------------------------------------


class InternalError(BitsError):
    """An unexpected failure (a bug, an answer the client cannot read): E_FAIL."""

    default_context = ErrorContext.UNKNOWN


class StoreWriteFailed(InternalError):
    """The job store did not commit a write (an I/O error, read-only): nothing of it is
    stored, what was committed before is intact; retried."""

    default_context = ErrorContext.GENERAL_QUEUE_MANAGER
    transient = True


class StoreFull(StoreWriteFailed):
    """The job store's file system is full (HTTP 507)."""

    default_hresult = HResult.HRESULT_DISK_FULL


#: the class ``from_hresult`` rebuilds for an HRESULT (the errors a call is answered with)
_BY_HRESULT: dict[int, type[BitsError]] = {
    **{
        cls.default_hresult: cls
        for cls in (
            InvalidArgument,
            InvalidRange,
            OverlappingRanges,
            NotImplementedValue,
            AccessDenied,
            PathNotFound,
            StringTooLong,
            ReadOnlyProperty,
            NotFound,
            FileNotInJob,
            InvalidState,
            EmptyJob,
            ErrorInformationUnavailable,
            RequestTooLarge,
            ReplyTooLarge,
            CertificateNotFound,
            NoPrivateKey,
            InternalError,
        )
    },
    **{
        cls.default_hresult: LimitExceeded
        for cls in (
            TooManyJobsPerUser,
            TooManyJobsPerMachine,
            TooManyFilesInJob,
            TooManyFiles,
            TooManyRangesInFile,
        )
    },
}

_HTTP_STATUS_OF: dict[int, int] = {
    HResult.E_ACCESSDENIED: 403,
    HResult.BG_E_NOT_FOUND: 404,
    HResult.BG_E_INVALID_STATE: 409,
    HResult.BG_E_EMPTY: 409,
    HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE: 409,
    HResult.BG_E_TOO_MANY_JOBS_PER_USER: 409,
    HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE: 409,
    HResult.BG_E_TOO_MANY_FILES_IN_JOB: 409,
    HResult.BG_E_TOO_MANY_FILES: 409,
    HResult.HRESULT_REQUEST_TOO_LARGE: 413,
    HResult.HRESULT_DISK_FULL: 507,
    HResult.E_FAIL: 500,
}


def api_http_status(hresult: int) -> int:
    """The HTTP status the API answers a failing call with (SPEC §6)."""
    return _HTTP_STATUS_OF.get(hresult & 0xFFFFFFFF, 400)
