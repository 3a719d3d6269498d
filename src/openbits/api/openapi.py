"""The OpenAPI 3.1 document of the HTTP API (SPEC §4, §6), served at ``GET /openapi.json``.

Built as Python data from the code it describes wherever it can: the BitsClientJob
instance from ``model.CIM_PROPERTIES``, PATCH from ``model.WRITABLE_PROPERTIES``,
BitsServicePolicy from ``policy.PROPERTIES``, one path per instance method from the
service's public table ``service.methods.METHODS``.  tests/unit/test_openapi.py checks it against the
routes of ``make_app`` in both directions, and tests/integration/test_api_fuzz.py fuzzes
a live daemon with it.
"""

from __future__ import annotations

import copy
import functools
from enum import IntEnum
from typing import Any

from openbits import __version__
from openbits.model import (
    CIM_PROPERTIES,
    CUSTOM_HEADERS_MAX,
    DESCRIPTION_MAX,
    DISPLAY_NAME_MAX,
    LOCAL_FILE_MAX,
    REMOTE_URL_MAX,
    UINT32_MAX,
    WRITABLE_PROPERTIES,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    SetJobStateCode,
)
from openbits.policy import PROPERTIES as POLICY_PROPERTIES
from openbits.policy import READ_ONLY as POLICY_READ_ONLY
from openbits.service.methods import METHODS as SERVICE_METHODS

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


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(limit: int | None = None, *, nullable: bool = False, description: str | None = None) -> Schema:
    schema: Schema = {"type": ["string", "null"] if nullable else "string"}
    if limit is not None:
        schema["maxLength"] = limit
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def _enum(enum: type[IntEnum], what: str) -> Schema:
    return {
        "type": "integer",
        "enum": [int(member) for member in enum],
        "description": f"{what}: " + ", ".join(f"{int(m)} {m.name}" for m in enum),
    }


def _with(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


def _object(
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
    "DisplayName": _string(DISPLAY_NAME_MAX),
    "Description": _string(DESCRIPTION_MAX),
    "Priority": _enum(JobPriority, "priority"),
    "MinimumRetryDelay": _with(UINT32, "seconds (default 600; values below 5 are raised to 5)"),
    "NoProgressTimeout": _with(UINT32, "seconds (default 1209600); 0: every error is fatal"),
    "Files": {
        "type": "array",
        "items": _ref("BitsClientFile"),
        "description": "in the order added (left out with Files=false)",
    },
    "JobCreationTime": _with(UINT64, "FILETIME (100 ns since 1601-01-01 UTC)"),
    "JobLastModificationTime": _with(UINT64, "FILETIME (100 ns since 1601-01-01 UTC)"),
    "JobCompletionTime": _with(UINT64, "FILETIME of entering TRANSFERRED; 0 before"),
    "BytesTotal": _with(UINT64, "18446744073709551615 (BG_SIZE_UNKNOWN) while a file's size is unknown"),
    "BytesTransferred": UINT64,
    "FilesTotal": UINT32,
    "FilesTransferred": UINT32,
    "TransientErrorCount": UINT32,
    "State": _enum(JobState, "BG_JOB_STATE"),
    "Owner": _string(description="the POSIX user name of the creator"),
    "JobType": _enum(JobType, "job type (extension)"),
    "NotifyFlags": _with(UINT32, "BG_NOTIFY_* bits (extension)"),
    "NotifyCmdLine": {
        "oneOf": [
            {"type": "null"},
            _object(
                {"Program": {"type": "string"}, "Parameters": {"type": ["string", "null"]}},
                ("Program", "Parameters"),
            ),
        ],
        "description": "SetNotifyCmdLine's program and command line, or null",
    },
    "NotifyUrl": _string(
        nullable=True, description="SetNotifyUrl's webhook (extension): its scheme and host only"
    ),
    "MaximumDownloadTime": _with(UINT32, "seconds (extension; SetMaximumDownloadTime)"),
    "CustomHeaders": _string(CUSTOM_HEADERS_MAX, nullable=True, description="'Name: value\\r\\n' lines"),
    "SecurityFlags": _with(UINT32, "BG_SSL_* and BG_HTTP_REDIRECT_POLICY_* bits (extension)"),
}

RANGE: Schema = _object(
    {
        "InitialOffset": _with({**UINT64, "maximum": 2**64 - 2}, "byte offset in the remote file"),
        "Length": _with({**UINT64, "minimum": 1}, "bytes; 18446744073709551615 runs to the end"),
    },
    ("InitialOffset", "Length"),
)

FILE: Schema = _object(
    {
        "RemoteUrl": _string(REMOTE_URL_MAX, description="passwords are shown as ***"),
        "LocalFile": _string(LOCAL_FILE_MAX, description="absolute path"),
        "BytesTotal": _with(UINT64, "18446744073709551615 (BG_SIZE_UNKNOWN) while unknown"),
        "BytesTransferred": UINT64,
        "Completed": _with(BOOLEAN, "all its bytes are transferred"),
        "RangeSupport": {"type": ["boolean", "null"], "description": "the server can resume it"},
        "Ranges": {
            "type": "array",
            "items": _ref("Range"),
            "description": "AddFileWithRanges",
        },
    },
    ("RemoteUrl", "LocalFile", "BytesTotal", "BytesTransferred", "Completed", "RangeSupport"),
    description="BitsClientFile",
)


def job_instance() -> Schema:
    """The BitsClientJob instance: every property of ``model.CIM_PROPERTIES``."""
    properties = {name: JOB_PROPERTIES.get(name, {}) for name in CIM_PROPERTIES}
    # (Files is left out on request, CustomHeaders once MakeCustomHeadersWriteOnly was called)
    required = [name for name in CIM_PROPERTIES if name not in ("Files", "CustomHeaders")]
    return _object(properties, required, description="BitsClientJob instance (SPEC §1)")


def _query_row() -> Schema:
    return _object(
        {name: JOB_PROPERTIES.get(name, {}) for name in CIM_PROPERTIES},
        description="the properties the query selects (all of them for *)",
    )


# -- errors and results -----------------------------------------------------------------------------

ERROR: Schema = _object(
    {
        "ReturnValue": _with(UINT32, "the failing HRESULT as uint32"),
        "ErrorCode": {"type": "string", "pattern": "^0x[0-9A-F]{8}$", "description": "the HRESULT in hex"},
        "Name": _string(description="the HRESULT's Windows name, e.g. BG_E_INVALID_STATE"),
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


def _result(properties: dict[str, Schema] | None = None, required: tuple[str, ...] = ()) -> Schema:
    """A method's answer: ReturnValue (0, or a success code such as BG_S_PARTIAL_COMPLETE
    with its Name and Message) and its out parameters."""
    return _object(
        {
            "ReturnValue": _with(UINT32, "0, or a success HRESULT (BG_S_*)"),
            "Name": {"type": "string"},
            "Message": {"type": "string"},
            **(properties or {}),
        },
        ("ReturnValue", *required),
    )


# -- the instance methods (SPEC §2, §6) ---------------------------------------------------------------

_REMOTE_URL = _string(REMOTE_URL_MAX, description="http://, https://, file:// or an absolute path")
_LOCAL_FILE = _string(LOCAL_FILE_MAX, description="absolute path; its directory must exist")
_FILE_PAIR = _object({"RemoteUrl": _REMOTE_URL, "LocalFile": _LOCAL_FILE}, ("RemoteUrl", "LocalFile"))


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


#: what a method the service does not build yet answers (E_NOTIMPL, whatever the job)
_NOT_YET_STATUSES = ("400", "413", "500")

#: every instance method, by lower-case name (the keys of ``service.methods.METHODS``,
#: which says which are not built yet; tests/unit/test_openapi.py checks they match)
METHODS: dict[str, Method] = {
    m.name.lower(): m
    for m in (
        Method(
            "AddFile",
            "Add a file to the job",
            {"RemoteUrl": _REMOTE_URL, "LocalFile": _LOCAL_FILE},
            ("RemoteUrl", "LocalFile"),
            example={"RemoteUrl": "https://example.com/a.iso", "LocalFile": "/srv/downloads/a.iso"},
        ),
        Method(
            "AddFileSet",
            "Add several files, all or none (COM)",
            {"Files": {"type": "array", "minItems": 1, "items": _FILE_PAIR}},
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
                "RemoteUrl": _REMOTE_URL,
                "LocalFile": _LOCAL_FILE,
                "Ranges": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref("Range"),
                },
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
            {"JobState": _enum(SetJobStateCode, "JobState")},
            ("JobState",),
            example={"JobState": 2},
        ),
        Method(
            "GetError",
            "The job's error (ERROR or TRANSIENT_ERROR)",
            {"LanguageId": UINT32},
            out={
                "ErrorContext": _enum(ErrorContext, "BG_ERROR_CONTEXT"),
                "ErrorCode": _with(UINT32, "the HRESULT of the error"),
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
            {"MaximumDownloadTime": _nullable(UINT32)},
            example={"MaximumDownloadTime": 600},
        ),
        Method(
            "SetCustomHeaders",
            "Headers sent with every request ('Name: value\\r\\n' lines; null clears them)",
            {"CustomHeaders": _string(CUSTOM_HEADERS_MAX, nullable=True)},
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
            {"SecurityFlags": _nullable(UINT32)},
            example={"SecurityFlags": 256},
        ),
        Method(
            "SetRemoteName",
            "A new RemoteUrl for one of the job's files",
            {"LocalFile": _LOCAL_FILE, "RemoteUrl": _REMOTE_URL},
            ("LocalFile", "RemoteUrl"),
            example={"LocalFile": "/srv/downloads/a.iso", "RemoteUrl": "https://mirror.example.com/a.iso"},
        ),
        Method(
            "ReplaceRemotePrefix",
            "Replace the start of the RemoteUrl of every unfinished file that has it",
            {"OldPrefix": _string(REMOTE_URL_MAX), "NewPrefix": _string(REMOTE_URL_MAX)},
            ("OldPrefix", "NewPrefix"),
            example={"OldPrefix": "https://example.com/", "NewPrefix": "https://mirror.example.com/"},
            out={"FilesChanged": UINT32},
            out_required=("FilesChanged",),
        ),
        Method(
            "GetResponseHeaders",
            "The headers of the last response accepted for one of the job's files",
            {"LocalFile": _LOCAL_FILE},
            ("LocalFile",),
            out={"ResponseHeaders": _string(nullable=True)},
            out_required=("ResponseHeaders",),
        ),
        # not built yet: they answer E_NOTIMPL (SPEC §2 names their WMI parameters)
        Method(
            "SetCredentials",
            "Credentials for the server or the proxy (Target 0 server, 1 proxy; "
            "Scheme 0 Basic, 1 Digest, 2 NTLM, 3 Negotiate, 4 Passport)",
            {
                "Target": UINT16,
                "Scheme": UINT16,
                "UserName": _string(nullable=True),
                "Password": _string(nullable=True),
            },
        ),
        Method(
            "RemoveCredentials",
            "Remove the credentials of a Target and Scheme",
            {"Target": UINT16, "Scheme": UINT16},
        ),
        Method(
            "SetClientCertificateById",
            "A client certificate by its store and hash",
            {
                "CertStoreLocation": UINT16,
                "StoreName": {"type": "string"},
                "CertHash": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
            },
        ),
        Method(
            "SetClientCertificateByName",
            "A client certificate by its store and subject name",
            {"CertStoreLocation": UINT16, "StoreName": {"type": "string"}, "SubjectName": {"type": "string"}},
        ),
        Method("RemoveClientCertificate", "Remove the client certificate"),
        Method(
            "SetProxySettings",
            "The job's proxy (ProxyUsage 0 preconfig, 1 no proxy, 2 override, 3 autodetect)",
            {
                "ProxyUsage": UINT16,
                "ProxyList": _string(nullable=True),
                "ProxyBypassList": _string(nullable=True),
            },
        ),
        Method(
            "SetNotifyFlags",
            "Which events notify: BG_NOTIFY_* bits (null: the default, 3)",
            {"NotifyFlags": _nullable(UINT32)},
            example={"NotifyFlags": 3},
        ),
        Method(
            "SetNotifyCmdLine",
            "A program to run when the job is TRANSFERRED or in ERROR (both null: none)",
            {
                "Program": _string(260, nullable=True, description="absolute path"),
                "Parameters": _string(4000, nullable=True, description="the command line, program first"),
            },
            example={"Program": "/usr/bin/logger", "Parameters": "logger openbits job done"},
        ),
        Method(
            "SetNotifyUrl",
            "A webhook: the job is POSTed as JSON to it when TRANSFERRED or in ERROR (extension)",
            {"NotifyUrl": _string(REMOTE_URL_MAX, nullable=True, description="http:// or https://")},
            example={"NotifyUrl": "https://hooks.example.com/openbits"},
        ),
        Method("TakeOwnership", "Make the caller the job's owner (administrators)"),
        Method("GetReplyData", "The reply of an upload-reply job"),
        Method(
            "SetReplyFileName",
            "Where an upload-reply job's reply goes",
            {"ReplyFileName": _string(nullable=True)},
        ),
    )
}


def method_names() -> list[str]:
    """The WMI name of every instance method the service answers (built or E_NOTIMPL)."""
    return [m.name for m in SERVICE_METHODS.values()]


# -- the service policy ------------------------------------------------------------------------------

_RATE_IN: Schema = {
    "type": ["integer", "string", "null"],
    "minimum": 0,
    "description": "bytes per second, a rate such as '10M' or 'off', or null (unlimited)",
}
#: ``policy.PROPERTIES`` kind -> (schema in a PATCH, schema in the answer)
POLICY_KINDS: dict[str, tuple[Schema, Schema]] = {
    "rate": (_RATE_IN, {"type": ["integer", "null"], "minimum": 0, "description": "bytes per second"}),
    "schedule": (_string(nullable=True, description="a weekly timetable"), _string(nullable=True)),
    "bool": (BOOLEAN, BOOLEAN),
    "work_hours": (_string(nullable=True, description="e.g. 'Mon-Fri 08-17'"), _string(nullable=True)),
    "count": ({"type": "integer", "minimum": 1, "maximum": 1000}, {"type": "integer", "minimum": 1}),
    "seconds": ({"type": "number", "minimum": 0.1, "maximum": 86400}, {"type": "number", "minimum": 0}),
}
_POLICY_READ_ONLY: dict[str, Schema] = {
    "CurrentBandwidthLimit": {"type": ["integer", "null"], "minimum": 0, "description": "bytes/s now"},
    "CurrentBandwidthLimitText": {"type": "string"},
}


def _policy(changes: bool) -> Schema:
    if changes:
        return _object(
            {name: POLICY_KINDS.get(kind, ({}, {}))[0] for name, (_, kind) in POLICY_PROPERTIES.items()},
            description="the properties to change, all or nothing (read-only ones: "
            + ", ".join(POLICY_READ_ONLY)
            + ")",
        )
    properties = {name: POLICY_KINDS.get(kind, ({}, {}))[1] for name, (_, kind) in POLICY_PROPERTIES.items()}
    properties.update({name: _POLICY_READ_ONLY.get(name, {}) for name in POLICY_READ_ONLY})
    return _object(properties, list(properties), description="BitsServicePolicy")


# -- paths --------------------------------------------------------------------------------------------


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _responses(ok: Schema | str, statuses: tuple[str, ...], ok_description: str = "success") -> Schema:
    responses: Schema = {
        "200": {
            "description": ok_description,
            "content": _json(ok) if isinstance(ok, dict) else {ok: {"schema": {"type": "string"}}},
        }
    }
    for status in statuses:
        responses[status] = {"$ref": f"#/components/responses/{status}"}
    return responses


def _body(schema: Schema, *, required: bool, example: Schema | None = None) -> Schema:
    content = _json(schema)
    if example is not None:
        content["application/json"]["example"] = example
    return {"required": required, "content": content}


def _query(name: str, schema: Schema, description: str, example: str | None = None) -> Schema:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
    if example is not None:
        parameter["example"] = example
    return parameter


_JOB_ID: Schema = {
    "name": "JobId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "the JobId (any case, braces optional) or a DisplayName that names one job",
}
_ALL_USERS = _query("AllUsers", BOOLEAN, "every user's jobs (administrators only)")
_STATE_NAMES = "|".join(s.name for s in JobState)
_STATE_ITEM = rf"\s*({_STATE_NAMES}|[0-8])\s*"


def _method_operation(method: Method) -> Schema:
    if not SERVICE_METHODS[method.name.lower()].implemented:
        return {
            "operationId": method.name,
            "summary": f"{method.summary}: not implemented yet (answers E_NOTIMPL)",
            "tags": ["BitsClientJob methods"],
            "parameters": [_JOB_ID],
            "requestBody": _body(_object(method.params), required=False),
            "responses": _responses(_result(), _NOT_YET_STATUSES),
        }
    return {
        "operationId": method.name,
        "summary": method.summary,
        "tags": ["BitsClientJob methods"],
        "parameters": [_JOB_ID],
        "requestBody": _body(
            _object(method.params, method.required), required=bool(method.required), example=method.example
        ),
        "responses": _responses(_result(method.out, method.out_required), method.statuses),
    }


def _paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {
        CLASS: {
            "get": {
                "operationId": "EnumerateJobs",
                "summary": "The caller's jobs that are not finished",
                "parameters": [
                    _ALL_USERS,
                    _query(
                        "Where",
                        {"type": "string"},
                        "a WQL condition the jobs must meet",
                        "State = 4 OR (Priority < 2 AND DisplayName LIKE 'night%')",
                    ),
                ],
                "responses": _responses(
                    {
                        "type": "array",
                        "items": _ref("BitsClientJob"),
                    },
                    ("400", "403", "500"),
                ),
            }
        },
        f"{CLASS}/CreateJob": {
            "post": {
                "operationId": "CreateJob",
                "summary": "Create a job, empty or with one file (resumed unless Suspend)",
                "requestBody": _body(
                    _object(
                        {
                            "DisplayName": _string(DISPLAY_NAME_MAX),
                            "RemoteUrl": _REMOTE_URL,
                            "LocalFile": _LOCAL_FILE,
                            "ServiceAccount": {"type": "integer", "enum": [0, 1, 2]},
                            "Type": _enum(JobType, "job type (only 0 DOWNLOAD is supported yet)"),
                            "Suspend": BOOLEAN,
                            "Description": _string(DESCRIPTION_MAX),
                            "Priority": _enum(JobPriority, "priority"),
                        },
                        description="RemoteUrl and LocalFile go together; names are case-insensitive",
                    ),
                    required=False,
                    example={
                        "DisplayName": "nightly",
                        "RemoteUrl": "https://example.com/a.iso",
                        "LocalFile": "/srv/downloads/a.iso",
                        "Suspend": True,
                        "Priority": 3,
                    },
                ),
                "responses": _responses(
                    _result({"JobId": JOB_PROPERTIES["JobId"]}, ("JobId",)),
                    ("400", "403", "409", "413", "500"),
                ),
            }
        },
        f"{CLASS}/{{JobId}}": {
            "get": {
                "operationId": "GetJob",
                "summary": "One job; with WaitWhile a long poll",
                "parameters": [
                    _JOB_ID,
                    _query("IncludeFinished", BOOLEAN, "also ACKNOWLEDGED and CANCELLED jobs (kept 7 days)"),
                    _query("Files", {**BOOLEAN, "default": True}, "false leaves out the Files array"),
                    _query(
                        "WaitWhile",
                        {"type": "string", "pattern": rf"^{_STATE_ITEM}(,{_STATE_ITEM})*$"},
                        "answer once the job is in none of these states (names or numbers, comma-separated)",
                        "QUEUED,CONNECTING,TRANSFERRING",
                    ),
                    _query(
                        "WaitTimeout",
                        {"type": "number", "minimum": 0, "maximum": 300, "default": 30},
                        "seconds to wait at most (with WaitWhile)",
                    ),
                ],
                "responses": _responses(
                    _ref("BitsClientJob"),
                    ("400", "404", "500"),
                ),
            },
            "patch": {
                "operationId": "SetJobProperties",
                "summary": "Set read/write properties, all or nothing",
                "parameters": [_JOB_ID],
                "requestBody": _body(
                    _object({name: JOB_PROPERTIES.get(name, {}) for name in WRITABLE_PROPERTIES}),
                    required=True,
                    example={"DisplayName": "nightly", "Priority": 1, "MinimumRetryDelay": 60},
                ),
                "responses": _responses(
                    _ref("BitsClientJob"),
                    ("400", "404", "409", "413", "500"),
                ),
            },
        },
    }
    for name in method_names():
        method = METHODS.get(name.lower(), Method(name, name))
        paths[METHOD_PATH.replace("{METHOD}", name)] = {"post": _method_operation(method)}
    paths[f"{BASE}/BitsServicePolicy"] = {
        "get": {
            "operationId": "GetServicePolicy",
            "summary": "Bandwidth and scheduling settings",
            "responses": _responses(
                _ref("BitsServicePolicy"),
                ("400", "500"),
            ),
        },
        "patch": {
            "operationId": "SetServicePolicy",
            "summary": "Change bandwidth and scheduling settings (administrators)",
            "requestBody": _body(
                _policy(changes=True), required=True, example={"MaxBandwidth": "10M", "TimeSlice": 30}
            ),
            "responses": _responses(
                _ref("BitsServicePolicy"),
                ("400", "403", "413", "500"),
            ),
        },
    }
    paths[f"{BASE}/Query"] = {
        "post": {
            "operationId": "Query",
            "summary": "WQL: SELECT * | p1, p2 FROM BitsClientJob [WHERE …]",
            "requestBody": _body(
                _object(
                    {"Query": {"type": "string"}, "AllUsers": BOOLEAN},
                    ("Query",),
                    description="the names Query and AllUsers are case-sensitive here",
                ),
                required=True,
                example={"Query": "SELECT JobId, State FROM BitsClientJob WHERE State = 4"},
            ),
            "responses": _responses(
                {
                    "type": "array",
                    "items": _ref("QueryRow"),
                },
                ("400", "403", "413", "500"),
            ),
        }
    }
    paths["/events"] = {
        "get": {
            "operationId": "Events",
            "summary": "Server-Sent Events of job changes, replayable with Last-Event-ID",
            "description": "Each event has `id: <integer, increasing>`, `event: <JobModification | "
            "JobTransferred | JobError | FileTransferred | JobCancelled | JobAcknowledged>` and "
            "`data: <the instance JSON after the change>`.",
            "parameters": [
                _ALL_USERS,
                _query("Job", {"type": "string"}, "only this job's events (JobId or DisplayName)"),
                _query("Types", {"type": "string"}, "only these event types, comma-separated"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "description": "replay the stored events after this id, then go on live",
                },
                _query(
                    "LastEventId", {"type": "string", "pattern": "^[0-9]+$"}, "Last-Event-ID as a parameter"
                ),
            ],
            "responses": _responses("text/event-stream", ("400", "403", "404", "500"), "the event stream"),
        }
    }
    paths["/version"] = {
        "get": {
            "operationId": "Version",
            "summary": "The daemon's version",
            "responses": _responses(_object({"Version": {"type": "string"}}, ("Version",)), ("500",)),
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "Metrics",
            "summary": "Prometheus text: jobs by state and priority (the caller's; an administrator's: all), "
            "bytes and files transferred, errors, seconds throttled",
            "responses": _responses("text/plain", ("400", "500"), "Prometheus text format 0.0.4"),
        }
    }
    token = _object(
        {
            "TokenId": {"type": "string", "description": "{GUID}: what revokes it"},
            "Owner": {"type": "string"},
            "Description": {"type": "string", "maxLength": 256},
            "CreationTime": {"type": "integer", "minimum": 0, "description": "FILETIME"},
        },
        ("TokenId", "Owner", "Description", "CreationTime"),
        description="a bearer token of the TCP listener (the token itself is never shown again)",
    )
    paths["/tokens"] = {
        "post": {
            "operationId": "CreateToken",
            "summary": "A bearer token for the TCP listener (openbits serve --listen), acting as the "
            "caller; answered once, kept only as a hash. Over the Unix socket only (403 on TCP).",
            "requestBody": _body(
                _object({"Description": {"type": "string", "maxLength": 256}}),
                required=False,
                example={"Description": "backup server"},
            ),
            "responses": _responses(
                _object(
                    {**token["properties"], "ReturnValue": UINT32, "Token": {"type": "string"}},
                    ("ReturnValue", "TokenId", "Token"),
                ),
                ("400", "403", "409", "413", "500"),
            ),
        },
        "get": {
            "operationId": "ListTokens",
            "summary": "Your tokens (AllUsers=true: everyone's, for an administrator), without the "
            "tokens themselves. Over the Unix socket only.",
            "parameters": [_query("AllUsers", BOOLEAN, "every user's tokens (administrators only)")],
            "responses": _responses({"type": "array", "items": token}, ("400", "403", "500")),
        },
    }
    paths["/tokens/{TokenId}"] = {
        "delete": {
            "operationId": "RevokeToken",
            "summary": "Revoke a token (yours; an administrator: anyone's), at once. "
            "Over the Unix socket only.",
            "parameters": [{"name": "TokenId", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses(_result(), ("400", "403", "404", "500")),
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "OpenApi",
            "summary": "This document",
            "responses": _responses({"type": "object"}, ("500",)),
        }
    }
    return paths


@functools.cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openbits",
            "version": __version__,
            "description": "The openbits daemon's API, shaped after the BITS WMI provider "
            "(root\\microsoft\\bits): JSON over the daemon's Unix socket, the caller identified "
            "by its peer credentials. Input property and parameter names are matched "
            "case-insensitively; output uses the WMI spelling.",
        },
        "servers": [
            {"url": "http://localhost", "description": "the daemon's Unix socket"},
            {
                "url": "http://127.0.0.1:8765",
                "description": "the TCP listener of `openbits serve --listen 127.0.0.1:8765`: every "
                "request needs Authorization: Bearer <token> (else 401)",
            },
        ],
        "security": [{}, {"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": {
                "BitsClientJob": job_instance(),
                "BitsClientFile": FILE,
                "Range": RANGE,
                "QueryRow": _query_row(),
                "Error": ERROR,
                "BitsServicePolicy": _policy(changes=False),
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from POST /tokens; needed on the TCP listener only "
                    "(the Unix socket knows its caller by SO_PEERCRED)",
                }
            },
            "responses": {
                "401": {
                    "description": "the TCP listener without a valid bearer token (E_ACCESSDENIED)",
                    "content": _json(_ref("Error")),
                },
                **{
                    status: {
                        "description": text,
                        "content": _json(_ref("Error")),
                    }
                    for status, text in STATUSES.items()
                },
            },
        },
    }


def document() -> Schema:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
