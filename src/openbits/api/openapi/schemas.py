"""The schemas of the OpenAPI document: the BitsClientJob instance, its files, errors, method
results and the service policy, with the small builders they are written with.

The instance from ``model.CIM_PROPERTIES``, the policy from ``policy.PROPERTIES``;
tests/unit/test_openapi.py checks both hold the same names.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from openbits.model import (
    CIM_PROPERTIES,
    CUSTOM_HEADERS_MAX,
    DESCRIPTION_MAX,
    DISPLAY_NAME_MAX,
    LOCAL_FILE_MAX,
    REMOTE_URL_MAX,
    UINT32_MAX,
    AuthScheme,
    AuthTarget,
    CertStoreLocation,
    JobPriority,
    JobState,
    JobType,
    ProxyUsage,
)
from openbits.policy import PROPERTIES as POLICY_PROPERTIES
from openbits.policy import READ_ONLY as POLICY_READ_ONLY

Schema = dict[str, Any]

BASE = "/root/microsoft/bits"
CLASS = f"{BASE}/BitsClientJob"
#: the path of every instance method: ``{METHOD}`` is replaced by the method's WMI name
METHOD_PATH = f"{CLASS}/{{JobId}}/{{METHOD}}"

UINT16: Schema = {"type": "integer", "minimum": 0, "maximum": 0xFFFF}
UINT32: Schema = {"type": "integer", "minimum": 0, "maximum": UINT32_MAX}
UINT64: Schema = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}
BOOLEAN: Schema = {"type": "boolean"}
GUID_PATTERN = r"^\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}$"


def json_content(schema: Schema) -> Schema:
    """A JSON body of ``schema``, as a request body's or a response's ``content``."""
    return {"application/json": {"schema": schema}}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def string(limit: int | None = None, *, nullable: bool = False, description: str | None = None) -> Schema:
    schema: Schema = {"type": ["string", "null"] if nullable else "string"}
    if limit is not None:
        schema["maxLength"] = limit
    if description:
        schema["description"] = description
    return schema


def or_null(schema: Schema) -> Schema:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def enum_of(enum: type[IntEnum], what: str) -> Schema:
    return {
        "type": "integer",
        "enum": [int(member) for member in enum],
        "description": f"{what}: " + ", ".join(f"{int(m)} {m.name}" for m in enum),
    }


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


def obj(
    properties: dict[str, Schema],
    required: tuple[str, ...] | list[str] = (),
    *,
    additional: bool = False,
    description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": additional}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


# -- the BitsClientJob instance (SPEC §1) ---------------------------------------------------------

#: JSON schema of every property of ``model.CIM_PROPERTIES``, WMI names and types (SPEC §1);
#: tests/unit/test_openapi.py checks the two hold the same names.
JOB_PROPERTIES: dict[str, Schema] = {
    "JobId": {
        "type": "string",
        "pattern": GUID_PATTERN,
        "description": "GUID, canonical form {XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX} upper-case",
    },
    "DisplayName": string(DISPLAY_NAME_MAX),
    "Description": string(DESCRIPTION_MAX),
    "Priority": enum_of(JobPriority, "priority"),
    "MinimumRetryDelay": described(UINT32, "seconds (default 600; values below 5 are raised to 5)"),
    "NoProgressTimeout": described(UINT32, "seconds (default 1209600); 0: every error is fatal"),
    "Files": {
        "type": "array",
        "items": ref("BitsClientFile"),
        "description": "in the order added (left out with Files=false)",
    },
    "JobCreationTime": described(UINT64, "FILETIME (100 ns since 1601-01-01 UTC)"),
    "JobLastModificationTime": described(UINT64, "FILETIME (100 ns since 1601-01-01 UTC)"),
    "JobCompletionTime": described(UINT64, "FILETIME of entering TRANSFERRED; 0 before"),
    "BytesTotal": described(UINT64, "18446744073709551615 (BG_SIZE_UNKNOWN) while a file's size is unknown"),
    "BytesTransferred": UINT64,
    "FilesTotal": UINT32,
    "FilesTransferred": UINT32,
    "TransientErrorCount": UINT32,
    "State": enum_of(JobState, "BG_JOB_STATE"),
    "Owner": string(description="the POSIX user name of the creator"),
    "JobType": enum_of(JobType, "job type (extension)"),
    "NotifyFlags": described(UINT32, "BG_NOTIFY_* bits (extension)"),
    "NotifyCmdLine": {
        "oneOf": [
            {"type": "null"},
            obj(
                {"Program": {"type": "string"}, "Parameters": {"type": ["string", "null"]}},
                ("Program", "Parameters"),
            ),
        ],
        "description": "SetNotifyCmdLine's program and command line, or null",
    },
    "NotifyUrl": string(
        nullable=True, description="SetNotifyUrl's webhook (extension): its scheme and host only"
    ),
    "MaximumDownloadTime": described(UINT32, "seconds (extension; SetMaximumDownloadTime)"),
    "CustomHeaders": string(CUSTOM_HEADERS_MAX, nullable=True, description="'Name: value\\r\\n' lines"),
    "SecurityFlags": described(UINT32, "BG_SSL_* and BG_HTTP_REDIRECT_POLICY_* bits (extension)"),
    "Credentials": {
        "type": "array",
        "items": obj(
            {
                "Target": enum_of(AuthTarget, "BG_AUTH_TARGET"),
                "Scheme": enum_of(AuthScheme, "BG_AUTH_SCHEME"),
                "UserName": string(nullable=True),
            },
            ("Target", "Scheme", "UserName"),
        ),
        "description": "SetCredentials' entries, never their passwords",
    },
    "ProxyUsage": enum_of(ProxyUsage, "BG_JOB_PROXY_USAGE"),
    "ProxyList": string(nullable=True, description="SetProxySettings' list, as given (OVERRIDE)"),
    "ProxyBypassList": string(nullable=True, description="SetProxySettings' bypass list (OVERRIDE)"),
    "ClientCertificate": {
        "oneOf": [
            {"type": "null"},
            obj(
                {
                    "CertStoreLocation": enum_of(CertStoreLocation, "BG_CERT_STORE_LOCATION"),
                    "StoreName": {"type": "string"},
                    "CertHash": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                    "SubjectName": {"type": "string"},
                },
                ("CertStoreLocation", "StoreName", "CertHash", "SubjectName"),
            ),
        ],
        "description": "SetClientCertificateById/ByName: which certificate, never its key",
    },
    "ReplyFileName": string(
        LOCAL_FILE_MAX,
        nullable=True,
        description="upload-reply jobs: where the reply goes at Complete (SetReplyFileName; default "
        "<the source's directory>/<JobId>.reply once the file is added); null for other jobs",
    ),
    "ReplyProgress": {
        "oneOf": [
            {"type": "null"},
            obj(
                {
                    "BytesTotal": described(UINT64, "18446744073709551615 (BG_SIZE_UNKNOWN) until known"),
                    "BytesTransferred": UINT64,
                },
                ("BytesTotal", "BytesTransferred"),
            ),
        ],
        "description": "upload-reply jobs: BG_JOB_REPLY_PROGRESS of the reply's download; null for others",
    },
    "MaxConnections": {
        "type": "integer",
        "minimum": 1,
        "maximum": 32,
        "description": "connections the job may use at once, its files together (extension; PATCH): "
        "as set, else the default by priority (4 for FOREGROUND, 1 otherwise); the policy's "
        "MaxConnectionsPerJob caps it",
    },
}

RANGE: Schema = obj(
    {
        "InitialOffset": described({**UINT64, "maximum": 2**64 - 2}, "byte offset in the remote file"),
        "Length": described({**UINT64, "minimum": 1}, "bytes; 18446744073709551615 runs to the end"),
    },
    ("InitialOffset", "Length"),
)

FILE: Schema = obj(
    {
        "RemoteUrl": string(REMOTE_URL_MAX, description="passwords are shown as ***"),
        "LocalFile": string(LOCAL_FILE_MAX, description="absolute path"),
        "BytesTotal": described(UINT64, "18446744073709551615 (BG_SIZE_UNKNOWN) while unknown"),
        "BytesTransferred": UINT64,
        "Completed": described(BOOLEAN, "all its bytes are transferred"),
        "RangeSupport": {"type": ["boolean", "null"], "description": "the server can resume it"},
        "Ranges": {
            "type": "array",
            "items": ref("Range"),
            "description": "AddFileWithRanges",
        },
        "Digest": string(200, description="the expected digest, as sha-256=:<base64>: (when given)"),
    },
    ("RemoteUrl", "LocalFile", "BytesTotal", "BytesTransferred", "Completed", "RangeSupport"),
    description="BitsClientFile",
)


def job_instance() -> Schema:
    """The BitsClientJob instance: every property of ``model.CIM_PROPERTIES``."""
    properties = {name: JOB_PROPERTIES.get(name, {}) for name in CIM_PROPERTIES}
    # (Files is left out on request, CustomHeaders once MakeCustomHeadersWriteOnly was called)
    required = [name for name in CIM_PROPERTIES if name not in ("Files", "CustomHeaders")]
    return obj(properties, required, description="BitsClientJob instance (SPEC §1)")


def query_row() -> Schema:
    return obj(
        {name: JOB_PROPERTIES.get(name, {}) for name in CIM_PROPERTIES},
        description="the properties the query selects (all of them for *)",
    )


# -- errors and results -----------------------------------------------------------------------------

ERROR: Schema = obj(
    {
        "ReturnValue": described(UINT32, "the failing HRESULT as uint32"),
        "ErrorCode": {"type": "string", "pattern": "^0x[0-9A-F]{8}$", "description": "the HRESULT in hex"},
        "Name": string(description="the HRESULT's Windows name, e.g. BG_E_INVALID_STATE"),
        "Message": {"type": "string"},
    },
    ("ReturnValue", "ErrorCode", "Name", "Message"),
    description="the body of every failing call (SPEC §6)",
)

#: HTTP status -> what it answers (SPEC §6)
STATUSES: dict[str, str] = {
    "400": "bad argument: E_INVALIDARG, E_NOTIMPL, BG_E_STRING_TOO_LONG, BG_E_READ_ONLY_PROPERTY, "
    "WBEM_E_INVALID_QUERY, path not found, malformed JSON, an unknown path or method",
    "403": "E_ACCESSDENIED",
    "404": "BG_E_NOT_FOUND: no such job (or another user's, or finished without IncludeFinished)",
    "409": "BG_E_INVALID_STATE, BG_E_EMPTY and other state conflicts; job and file limits",
    "413": "the request body is over 1 MiB",
    "500": "E_FAIL: an internal error (see the daemon's log)",
    "507": "0x80070070 (disk full): the state directory's file system is full; new work is "
    "refused, and a change the store cannot record is not made",
}


def result(properties: dict[str, Schema] | None = None, required: tuple[str, ...] = ()) -> Schema:
    """A method's answer: ReturnValue (0, or a success code such as BG_S_PARTIAL_COMPLETE
    with its Name and Message) and its out parameters."""
    return obj(
        {
            "ReturnValue": described(UINT32, "0, or a success HRESULT (BG_S_*)"),
            "Name": {"type": "string"},
            "Message": {"type": "string"},
            **(properties or {}),
        },
        ("ReturnValue", *required),
    )


# -- the files the instance methods take (SPEC §2) --------------------------------------------------

REMOTE_URL = string(REMOTE_URL_MAX, description="http://, https://, file:// or an absolute path")
LOCAL_FILE = string(LOCAL_FILE_MAX, description="absolute path; its directory must exist")
DIGEST = string(
    200,
    description="the expected digest of the file's bytes: sha-256=:<base64>: or sha-512=:<base64>: "
    "(RFC 9530), or sha256:<hex> / sha512:<hex>; a mismatch is BG_E_VALIDATION_FAILED",
)
FILE_PAIR = obj(
    {"RemoteUrl": REMOTE_URL, "LocalFile": LOCAL_FILE, "Digest": DIGEST}, ("RemoteUrl", "LocalFile")
)


# -- the service policy ------------------------------------------------------------------------------

_RATE_IN: Schema = {
    "type": ["integer", "string", "null"],
    "minimum": 0,
    "description": "bytes per second, a rate such as '10M' or 'off', or null (unlimited)",
}
#: ``policy.PROPERTIES`` kind -> (schema in a PATCH, schema in the answer)
POLICY_KINDS: dict[str, tuple[Schema, Schema]] = {
    "rate": (_RATE_IN, {"type": ["integer", "null"], "minimum": 0, "description": "bytes per second"}),
    "schedule": (string(nullable=True, description="a weekly timetable"), string(nullable=True)),
    "bool": (BOOLEAN, BOOLEAN),
    "work_hours": (string(nullable=True, description="e.g. 'Mon-Fri 08-17'"), string(nullable=True)),
    "count": ({"type": "integer", "minimum": 1, "maximum": 1000}, {"type": "integer", "minimum": 1}),
    "seconds": ({"type": "number", "minimum": 0.1, "maximum": 86400}, {"type": "number", "minimum": 0}),
    "connections": (
        {"type": "integer", "minimum": 1, "maximum": 32, "description": "cap on every job's MaxConnections"},
        {"type": "integer", "minimum": 1, "maximum": 32},
    ),
    "priorities": (
        {
            "oneOf": [
                string(description="priorities, e.g. 'HIGH,NORMAL,LOW' ('' for none)"),
                {"type": "array", "items": {"enum": ["FOREGROUND", "HIGH", "NORMAL", "LOW"]}},
            ]
        },
        string(description="the priorities that yield to other traffic, e.g. 'HIGH,NORMAL,LOW'"),
    ),
    "delay_ms": (
        {"type": "number", "minimum": 1, "maximum": 10000},
        {"type": "number", "minimum": 1, "description": "milliseconds"},
    ),
}
_POLICY_READ_ONLY: dict[str, Schema] = {
    "CurrentBandwidthLimit": {"type": ["integer", "null"], "minimum": 0, "description": "bytes/s now"},
    "CurrentBandwidthLimitText": {"type": "string"},
}


def policy_schema(changes: bool) -> Schema:
    if changes:
        return obj(
            {name: POLICY_KINDS.get(kind, ({}, {}))[0] for name, (_, kind) in POLICY_PROPERTIES.items()},
            description="the properties to change, all or nothing (read-only ones: "
            + ", ".join(POLICY_READ_ONLY)
            + ")",
        )
    properties = {name: POLICY_KINDS.get(kind, ({}, {}))[1] for name, (_, kind) in POLICY_PROPERTIES.items()}
    properties.update({name: _POLICY_READ_ONLY.get(name, {}) for name in POLICY_READ_ONLY})
    return obj(properties, list(properties), description="BitsServicePolicy")
