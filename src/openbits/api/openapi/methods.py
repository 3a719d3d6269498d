"""The instance methods of BitsClientJob as the OpenAPI document describes them (SPEC §2, §6):
parameters, out parameters, example and failing statuses, by lower-case name.

Its keys are those of the service's public table ``service.methods.METHODS`` (which says which
methods are not built yet); tests/unit/test_openapi.py checks they match.
"""

from __future__ import annotations

from openbits.api.openapi.schemas import (
    DIGEST,
    FILE_PAIR,
    LOCAL_FILE,
    REMOTE_URL,
    UINT32,
    UINT64,
    Schema,
    described,
    enum_of,
    or_null,
    ref,
    string,
)
from openbits.model import (
    CUSTOM_HEADERS_MAX,
    REMOTE_URL_MAX,
    AuthScheme,
    AuthTarget,
    CertStoreLocation,
    ErrorContext,
    ProxyUsage,
    SetJobStateCode,
)
from openbits.service.methods import METHODS as SERVICE_METHODS
from openbits.service.params import PASSWORD_MAX, USER_NAME_MAX
from openbits.transfer.proxylist import LIST_MAX_CHARS


class Method:
    """An instance method: its WMI name, parameters, out parameters, failing statuses."""

    def __init__(
        self,
        name: str,
        summary: str,
        params: dict[str, Schema] | None = None,
        required: tuple[str, ...] = (),
        out: dict[str, Schema] | None = None,
        out_required: tuple[str, ...] = (),
        statuses: tuple[str, ...] = ("400", "403", "404", "409", "413", "500"),
        example: Schema | None = None,
    ) -> None:
        self.name = name
        self.summary = summary
        self.params = params or {}
        self.required = required
        self.out = out
        self.out_required = out_required
        self.statuses = statuses
        self.example = example


#: SetClientCertificateBy*'s store (bits-spec §2.7; 2-4 answer E_NOTIMPL)
CERT_STORE_LOCATION = enum_of(CertStoreLocation, "BG_CERT_STORE_LOCATION")
STORE_NAME = string(255, description="a directory of the location's stores, matched case-insensitively")

#: what a method the service does not build yet answers (E_NOTIMPL, whatever the job)
NOT_YET_STATUSES = ("400", "413", "500")

#: every instance method, by lower-case name (the keys of ``service.methods.METHODS``,
#: which says which are not built yet; tests/unit/test_openapi.py checks they match)
METHODS: dict[str, Method] = {
    m.name.lower(): m
    for m in (
        Method(
            "AddFile",
            "Add a file to the job",
            {"RemoteUrl": REMOTE_URL, "LocalFile": LOCAL_FILE, "Digest": DIGEST},
            ("RemoteUrl", "LocalFile"),
            example={"RemoteUrl": "https://example.com/a.iso", "LocalFile": "/srv/downloads/a.iso"},
        ),
        Method(
            "AddFileSet",
            "Add several files, all or none (COM)",
            {"Files": {"type": "array", "minItems": 1, "items": FILE_PAIR}},
            ("Files",),
            example={
                "Files": [
                    {"RemoteUrl": "https://example.com/a", "LocalFile": "/srv/downloads/a"},
                    {"RemoteUrl": "https://example.com/b", "LocalFile": "/srv/downloads/b"},
                ]
            },
        ),
        Method(
            "AddFileWithRanges",
            "Add pieces of a remote file, written one after the other (COM)",
            {
                "RemoteUrl": REMOTE_URL,
                "LocalFile": LOCAL_FILE,
                "Ranges": {
                    "type": "array",
                    "minItems": 1,
                    "items": ref("Range"),
                },
                "Digest": described(DIGEST, "of the bytes the job writes (the ranges, in order)"),
            },
            ("RemoteUrl", "LocalFile", "Ranges"),
            example={
                "RemoteUrl": "https://example.com/big.bin",
                "LocalFile": "/srv/downloads/pieces.bin",
                "Ranges": [{"InitialOffset": 0, "Length": 1024}, {"InitialOffset": 4096, "Length": 512}],
            },
        ),
        Method(
            "SetJobState",
            "Cancel, complete, resume or suspend the job",
            {"JobState": enum_of(SetJobStateCode, "JobState")},
            ("JobState",),
            example={"JobState": 2},
        ),
        Method(
            "GetError",
            "The job's error (ERROR or TRANSIENT_ERROR)",
            {"LanguageId": UINT32},
            out={
                "ErrorContext": enum_of(ErrorContext, "BG_ERROR_CONTEXT"),
                "ErrorCode": described(UINT32, "the HRESULT of the error"),
                "ContextDescription": {"type": "string"},
                "ErrorDescription": {"type": "string"},
                "RemoteUrl": {"type": "string"},
                "LocalFile": {"type": "string"},
            },
            out_required=("ErrorContext", "ErrorCode", "ContextDescription", "ErrorDescription", "Name"),
        ),
        Method(
            "SetMaximumDownloadTime",
            "Seconds the job may spend transferring (null: the default, 90 days)",
            {"MaximumDownloadTime": or_null(UINT32)},
            example={"MaximumDownloadTime": 600},
        ),
        Method(
            "SetCustomHeaders",
            "Headers sent with every request ('Name: value\\r\\n' lines; null clears them)",
            {"CustomHeaders": string(CUSTOM_HEADERS_MAX, nullable=True)},
            example={"CustomHeaders": "X-Token: abc\r\nAccept: */*\r\n"},
        ),
        Method(
            "MakeCustomHeadersWriteOnly",
            "From now on CustomHeaders are sent but never shown again (irreversible)",
            {},
        ),
        Method(
            "SetSecurityFlags",
            "BG_SSL_* and BG_HTTP_REDIRECT_POLICY_* bits (null: 0)",
            {"SecurityFlags": or_null(UINT32)},
            example={"SecurityFlags": 256},
        ),
        Method(
            "SetRemoteName",
            "A new RemoteUrl for one of the job's files",
            {"LocalFile": LOCAL_FILE, "RemoteUrl": REMOTE_URL},
            ("LocalFile", "RemoteUrl"),
            example={"LocalFile": "/srv/downloads/a.iso", "RemoteUrl": "https://mirror.example.com/a.iso"},
        ),
        Method(
            "ReplaceRemotePrefix",
            "Replace the start of the RemoteUrl of every unfinished file that has it",
            {"OldPrefix": string(REMOTE_URL_MAX), "NewPrefix": string(REMOTE_URL_MAX)},
            ("OldPrefix", "NewPrefix"),
            example={"OldPrefix": "https://example.com/", "NewPrefix": "https://mirror.example.com/"},
            out={"FilesChanged": UINT32},
            out_required=("FilesChanged",),
        ),
        Method(
            "GetResponseHeaders",
            "The headers of the last response accepted for one of the job's files",
            {"LocalFile": LOCAL_FILE},
            ("LocalFile",),
            out={"ResponseHeaders": string(nullable=True)},
            out_required=("ResponseHeaders",),
        ),
        Method(
            "SetClientCertificateById",
            "The client certificate of the job's HTTPS handshakes, by its store and SHA-1 hash "
            "(CRYPT_E_NOT_FOUND: not in the store; NTE_NO_KEY: its key is not)",
            {
                "CertStoreLocation": CERT_STORE_LOCATION,
                "StoreName": STORE_NAME,
                "CertHash": {
                    "oneOf": [
                        {
                            "type": "array",
                            "minItems": 20,
                            "maxItems": 20,
                            "items": {"type": "integer", "minimum": 0, "maximum": 255},
                        },
                        {"type": "string", "pattern": "^(0x)?[0-9A-Fa-f:]{40,59}$"},
                    ],
                    "description": "the SHA-1 thumbprint: 20 numbers or 40 hexadecimal digits",
                },
            },
            ("CertStoreLocation", "StoreName", "CertHash"),
            example={
                "CertStoreLocation": 0,
                "StoreName": "MY",
                "CertHash": "a9993e364706816aba3e25717850c26c9cd0d89d",
            },
        ),
        Method(
            "SetClientCertificateByName",
            "The client certificate of the job's HTTPS handshakes, by its store and subject "
            "(its common name or whole subject, case-insensitive)",
            {
                "CertStoreLocation": CERT_STORE_LOCATION,
                "StoreName": STORE_NAME,
                "SubjectName": string(1024, description="a common name, or an RFC 4514 subject"),
            },
            ("CertStoreLocation", "StoreName", "SubjectName"),
            example={"CertStoreLocation": 1, "StoreName": "MY", "SubjectName": "backup client"},
        ),
        Method("RemoveClientCertificate", "Remove the client certificate (ReturnValue 1: there was none)"),
        Method(
            "SetCredentials",
            "Credentials for the server or the proxy, one per Target and Scheme (owner only; "
            "Basic and Digest need both names, NTLM and Negotiate with neither use the owner's "
            "default credentials; the password is never read back)",
            {
                "Target": enum_of(AuthTarget, "BG_AUTH_TARGET (WMI)"),
                "Scheme": enum_of(AuthScheme, "BG_AUTH_SCHEME (WMI; 4 Passport answers E_NOTIMPL)"),
                "UserName": string(USER_NAME_MAX, nullable=True),
                "Password": string(
                    PASSWORD_MAX, nullable=True, description="never shown, logged or stored in clear"
                ),
            },
            ("Target", "Scheme"),
            example={"Target": 0, "Scheme": 0, "UserName": "alice", "Password": "…"},
        ),
        Method(
            "RemoveCredentials",
            "Remove the credentials of a Target and Scheme (ReturnValue 1, S_FALSE, when none was set)",
            {
                "Target": enum_of(AuthTarget, "BG_AUTH_TARGET (WMI)"),
                "Scheme": enum_of(AuthScheme, "BG_AUTH_SCHEME (WMI)"),
            },
            ("Target", "Scheme"),
            example={"Target": 0, "Scheme": 0},
        ),
        Method(
            "SetProxySettings",
            "How the job reaches servers (owner only); the lists go with OVERRIDE alone",
            {
                "ProxyUsage": enum_of(ProxyUsage, "BG_JOB_PROXY_USAGE"),
                "ProxyList": string(
                    LIST_MAX_CHARS,
                    nullable=True,
                    description="OVERRIDE: [scheme=]host:port or http://, https://, socks5://, socks5h:// "
                    "URLs separated by spaces or ';', tried in order",
                ),
                "ProxyBypassList": string(
                    LIST_MAX_CHARS,
                    nullable=True,
                    description="OVERRIDE: hosts reached directly (wildcards, IPs, CIDR, <local>)",
                ),
            },
            ("ProxyUsage",),
            example={"ProxyUsage": 2, "ProxyList": "http://proxy:3128", "ProxyBypassList": "<local>"},
        ),
        Method(
            "SetNotifyFlags",
            "Which events notify: BG_NOTIFY_* bits (null: the default, 3)",
            {"NotifyFlags": or_null(UINT32)},
            example={"NotifyFlags": 3},
        ),
        Method(
            "SetNotifyCmdLine",
            "A program to run when the job is TRANSFERRED or in ERROR (both null: none)",
            {
                "Program": string(260, nullable=True, description="absolute path"),
                "Parameters": string(4000, nullable=True, description="the command line, program first"),
            },
            example={"Program": "/usr/bin/logger", "Parameters": "logger openbits job done"},
        ),
        Method(
            "SetNotifyUrl",
            "A webhook: the job is POSTed as JSON to it when TRANSFERRED or in ERROR (extension)",
            {"NotifyUrl": string(REMOTE_URL_MAX, nullable=True, description="http:// or https://")},
            example={"NotifyUrl": "https://hooks.example.com/openbits"},
        ),
        Method("TakeOwnership", "Make the caller the job's owner (administrators)"),
        Method(
            "GetReplyData",
            "The reply of an upload-reply job, once TRANSFERRED (also after Complete); up to 1 MiB "
            "(BG_E_TOO_LARGE above: read ReplyFileName after Complete); E_NOTIMPL for other jobs",
            out={
                "ReplyData": described({"type": "string", "contentEncoding": "base64"}, "the reply's bytes"),
                "ReplySize": described(UINT64, "bytes (0: the server application sent no reply)"),
            },
            out_required=("ReplyData", "ReplySize"),
        ),
        Method(
            "SetReplyFileName",
            "Where an upload-reply job's reply goes at Complete: an absolute path in a directory the "
            "owner may write in; E_NOTIMPL for other jobs, BG_E_INVALID_STATE once the reply is fetched",
            {"ReplyFileName": LOCAL_FILE},
            ("ReplyFileName",),
            example={"ReplyFileName": "/home/alice/report.reply"},
        ),
    )
}


def method_names() -> list[str]:
    """The WMI name of every instance method the service answers (built or E_NOTIMPL)."""
    return [m.name for m in SERVICE_METHODS.values()]
