"""The paths of the OpenAPI document: one builder per group of routes of ``api.app``."""

from __future__ import annotations

from openbits.api.openapi.methods import METHODS, NOT_YET_STATUSES, Method, method_names
from openbits.api.openapi.schemas import (
    BASE,
    BOOLEAN,
    CLASS,
    DIGEST,
    JOB_PROPERTIES,
    LOCAL_FILE,
    METHOD_PATH,
    REMOTE_URL,
    UINT32,
    Schema,
    enum_of,
    json_content,
    obj,
    policy_schema,
    ref,
    result,
    string,
)
from openbits.model import (
    DESCRIPTION_MAX,
    DISPLAY_NAME_MAX,
    WRITABLE_PROPERTIES,
    JobPriority,
    JobState,
    JobType,
)
from openbits.service.methods import METHODS as SERVICE_METHODS
from openbits.service.params import PROXY_VARIABLE_MAX, PROXY_VARIABLES

#: CreateJob's ProxyEnvironment takes each variable in either case
_PROXY_NAMES = (*PROXY_VARIABLES, *(name.upper() for name in PROXY_VARIABLES))


def _responses(ok: Schema | str, statuses: tuple[str, ...], ok_description: str = "success") -> Schema:
    responses: Schema = {
        "200": {
            "description": ok_description,
            "content": json_content(ok) if isinstance(ok, dict) else {ok: {"schema": {"type": "string"}}},
        }
    }
    for status in statuses:
        responses[status] = {"$ref": f"#/components/responses/{status}"}
    return responses


def _body(schema: Schema, *, required: bool, example: Schema | None = None) -> Schema:
    content = json_content(schema)
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
            "requestBody": _body(obj(method.params), required=False),
            "responses": _responses(result(), NOT_YET_STATUSES),
        }
    return {
        "operationId": method.name,
        "summary": method.summary,
        "tags": ["BitsClientJob methods"],
        "parameters": [_JOB_ID],
        "requestBody": _body(
            obj(method.params, method.required), required=bool(method.required), example=method.example
        ),
        "responses": _responses(result(method.out, method.out_required), method.statuses),
    }


def paths() -> dict[str, Schema]:
    """Every path of the API, in the order the document lists them."""
    return {
        **_collection_paths(),
        **_job_paths(),
        **_method_paths(),
        **_service_paths(),
        **_stream_paths(),
        **_token_paths(),
        "/openapi.json": {
            "get": {
                "operationId": "OpenApi",
                "summary": "This document",
                "responses": _responses({"type": "object"}, ("500",)),
            }
        },
    }


def _collection_paths() -> dict[str, Schema]:
    """EnumerateJobs and CreateJob."""
    return {
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
                        "items": ref("BitsClientJob"),
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
                    obj(
                        {
                            "DisplayName": string(DISPLAY_NAME_MAX),
                            "RemoteUrl": REMOTE_URL,
                            "LocalFile": LOCAL_FILE,
                            "Digest": DIGEST,
                            "ServiceAccount": {"type": "integer", "enum": [0, 1, 2]},
                            "Type": enum_of(
                                JobType,
                                "job type: 0 DOWNLOAD (default), 1 UPLOAD, 2 UPLOAD_REPLY (one file each)",
                            ),
                            "Suspend": BOOLEAN,
                            "Description": string(DESCRIPTION_MAX),
                            "Priority": enum_of(JobPriority, "priority"),
                            "ProxyEnvironment": obj(
                                {name: string(PROXY_VARIABLE_MAX, nullable=True) for name in _PROXY_NAMES},
                                description="the caller's proxy variables (PRECONFIG uses them first; "
                                "kept sealed, never shown)",
                            ),
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
                    result({"JobId": JOB_PROPERTIES["JobId"]}, ("JobId",)),
                    ("400", "403", "409", "413", "500"),
                ),
            }
        },
    }


def _job_paths() -> dict[str, Schema]:
    """One job: GetJob (with its long poll) and SetJobProperties."""
    return {
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
                    ref("BitsClientJob"),
                    ("400", "404", "500"),
                ),
            },
            "patch": {
                "operationId": "SetJobProperties",
                "summary": "Set read/write properties, all or nothing",
                "parameters": [_JOB_ID],
                "requestBody": _body(
                    obj({name: JOB_PROPERTIES.get(name, {}) for name in WRITABLE_PROPERTIES}),
                    required=True,
                    example={"DisplayName": "nightly", "Priority": 1, "MinimumRetryDelay": 60},
                ),
                "responses": _responses(
                    ref("BitsClientJob"),
                    ("400", "404", "409", "413", "500"),
                ),
            },
        },
    }


def _method_paths() -> dict[str, Schema]:
    """One POST path per instance method."""
    paths: dict[str, Schema] = {}
    for name in method_names():
        method = METHODS.get(name.lower(), Method(name, name))
        paths[METHOD_PATH.replace("{METHOD}", name)] = {"post": _method_operation(method)}
    return paths


def _service_paths() -> dict[str, Schema]:
    """The service policy and WQL queries."""
    return {
        f"{BASE}/BitsServicePolicy": {
            "get": {
                "operationId": "GetServicePolicy",
                "summary": "Bandwidth and scheduling settings",
                "responses": _responses(
                    ref("BitsServicePolicy"),
                    ("400", "500"),
                ),
            },
            "patch": {
                "operationId": "SetServicePolicy",
                "summary": "Change bandwidth and scheduling settings (administrators)",
                "requestBody": _body(
                    policy_schema(changes=True),
                    required=True,
                    example={"MaxBandwidth": "10M", "TimeSlice": 30},
                ),
                "responses": _responses(
                    ref("BitsServicePolicy"),
                    ("400", "403", "413", "500"),
                ),
            },
        },
        f"{BASE}/Query": {
            "post": {
                "operationId": "Query",
                "summary": "WQL: SELECT * | p1, p2 FROM BitsClientJob [WHERE …]",
                "requestBody": _body(
                    obj(
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
                        "items": ref("QueryRow"),
                    },
                    ("400", "403", "413", "500"),
                ),
            }
        },
    }


def _stream_paths() -> dict[str, Schema]:
    """The event stream, the version and the metrics."""
    return {
        "/events": {
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
                        "LastEventId",
                        {"type": "string", "pattern": "^[0-9]+$"},
                        "Last-Event-ID as a parameter",
                    ),
                ],
                "responses": _responses(
                    "text/event-stream", ("400", "403", "404", "500"), "the event stream"
                ),
            }
        },
        "/version": {
            "get": {
                "operationId": "Version",
                "summary": "The daemon's version",
                "responses": _responses(obj({"Version": {"type": "string"}}, ("Version",)), ("500",)),
            }
        },
        "/metrics": {
            "get": {
                "operationId": "Metrics",
                "summary": "Prometheus text: jobs by state and priority (the caller's; an "
                "administrator's: all), bytes and files transferred, errors, seconds throttled",
                "responses": _responses("text/plain", ("400", "500"), "Prometheus text format 0.0.4"),
            }
        },
    }


def _token_paths() -> dict[str, Schema]:
    """Bearer tokens of the TCP listener: create, list, revoke."""
    token = obj(
        {
            "TokenId": {"type": "string", "description": "{GUID}: what revokes it"},
            "Owner": {"type": "string"},
            "Description": {"type": "string", "maxLength": 256},
            "CreationTime": {"type": "integer", "minimum": 0, "description": "FILETIME"},
            "Scope": {
                "type": "string",
                "enum": ["read", "submit", "admin"],
                "description": "read: GET, Query, events, the Get* methods; submit: also create and "
                "manage the owner's own jobs; admin: all the owner may do",
            },
            "ExpirationTime": {"type": "integer", "minimum": 0, "description": "FILETIME; 0: never"},
        },
        ("TokenId", "Owner", "Description", "CreationTime", "Scope", "ExpirationTime"),
        description="a bearer token of the TCP listener (the token itself is never shown again)",
    )
    return {
        "/tokens": {
            "post": {
                "operationId": "CreateToken",
                "summary": "A bearer token for the TCP listener (openbits serve --listen), acting as the "
                "caller within its Scope (default submit); answered once, kept only as a hash. Over "
                "the Unix socket only (403 on TCP).",
                "requestBody": _body(
                    obj(
                        {
                            "Description": {"type": "string", "maxLength": 256},
                            "Scope": {"type": "string", "enum": ["read", "submit", "admin"]},
                            "ExpiresAfter": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 10 * 366 * 86400,
                                "description": "seconds until the token expires (absent: never)",
                            },
                        }
                    ),
                    required=False,
                    example={"Description": "backup server", "Scope": "read", "ExpiresAfter": 604800},
                ),
                "responses": _responses(
                    obj(
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
        },
        "/tokens/{TokenId}": {
            "delete": {
                "operationId": "RevokeToken",
                "summary": "Revoke a token (yours; an administrator: anyone's), at once. "
                "Over the Unix socket only.",
                "parameters": [
                    {"name": "TokenId", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(result(), ("400", "403", "404", "500")),
            }
        },
    }
