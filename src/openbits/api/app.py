"""The HTTP API of SPEC §4, shaped after CIM, on aiohttp.web.

It translates HTTP to service calls and BitsError to the error body; it decides
nothing.  ``/events`` comes in a later part of issue 4: the route is reserved and answers
E_NOTIMPL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

from aiohttp import web

from openbits import __version__
from openbits.api import metrics, wql
from openbits.api.peer import caller_of
from openbits.errors import (
    BitsError,
    HResult,
    InvalidArgument,
    NotImplementedValue,
    RequestTooLarge,
    api_http_status,
    hresult_message,
    hresult_name,
)
from openbits.model import ALL_PROPERTIES, Job, JobState
from openbits.service import Service
from openbits.transfer.throttle import Throttle

log = logging.getLogger("openbits.api")

BASE = "/root/microsoft/bits"
CLASS = f"{BASE}/BitsClientJob"
MAX_BODY = 1024 * 1024

T = TypeVar("T")
SERVICE_KEY = web.AppKey("service", Service)
#: the transfers' throttle, for the seconds spent waiting on it (set by the daemon)
THROTTLE_KEY = web.AppKey("throttle", Throttle)


def error_response(error: BitsError) -> web.Response:
    return web.json_response(
        {
            "ReturnValue": error.hresult,
            "ErrorCode": error.hex,
            "Name": error.name,
            "Message": error.message,
        },
        status=api_http_status(error.hresult),
    )


def result_response(body: dict[str, Any]) -> web.Response:
    code = int(body.get("ReturnValue", 0))
    if code:
        body.setdefault("Name", hresult_name(code))
        body.setdefault("Message", hresult_message(code))
    return web.json_response(body)


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = _query(request, name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise InvalidArgument(f"{name} must be true or false")


async def _body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestTooLarge(f"the request body is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge(f"the request body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidArgument("the request body is nested too deeply") from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bits_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BitsError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(
                InvalidArgument(f"no such resource {request.path}", hresult=HResult.E_INVALIDARG)
            )
        if e.status == 405:
            return error_response(InvalidArgument(f"{request.method} is not allowed on {request.path}"))
        if e.status == 413:
            return error_response(RequestTooLarge(f"the request body is over {MAX_BODY} bytes"))
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(BitsError("internal error; see the daemon's log", hresult=HResult.E_FAIL))


async def enumerate_jobs(request: web.Request) -> web.Response:
    """The caller's jobs (``AllUsers=true``: everyone's, for an administrator); ``Where=`` a
    WQL condition keeps those it is true of."""
    service = request.app[SERVICE_KEY]
    caller = caller_of(request)
    where = _query(request, "Where")
    jobs = service.enumerate(caller, all_users=_flag(request, "AllUsers"))
    if where is None:
        return web.json_response([j.to_cim() for j in jobs])
    condition = _wql(wql.parse_condition, where, ALL_PROPERTIES)
    return web.json_response([j.to_cim() for j in _matching(jobs, condition)])


async def query(request: web.Request) -> web.Response:
    """``{"Query": "SELECT … FROM BitsClientJob [WHERE …]", "AllUsers": false}``: the
    instances the condition is true of, with only the selected properties."""
    service = request.app[SERVICE_KEY]
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("Query"), str):
        raise InvalidArgument('Query needs {"Query": "SELECT … FROM BitsClientJob [WHERE …]"}')
    unknown = sorted(set(body) - {"Query", "AllUsers"})
    if unknown:
        raise InvalidArgument(f"unknown parameter(s): {', '.join(unknown)}")
    all_users = body.get("AllUsers", False)
    if not isinstance(all_users, bool):
        raise InvalidArgument("AllUsers must be true or false")
    text = body["Query"]
    parsed = _wql(wql.parse_query, text, ALL_PROPERTIES)
    jobs = service.enumerate(caller_of(request), all_users=all_users)
    if parsed.where is not None:
        jobs = _matching(jobs, parsed.where)
    return web.json_response([wql.project(parsed, j.cim_view()) for j in jobs])


def _matching(jobs: Iterable[Job], condition: wql.Condition) -> list[Job]:
    """The jobs ``condition`` is true of, tested on views that compute only the properties
    the condition reads."""
    return [j for j in jobs if wql.matches(condition, j.cim_view())]


def _wql(parse: Callable[[str, Collection[str]], T], text: str, properties: Collection[str]) -> T:
    try:
        return parse(text, properties)
    except wql.WqlError as e:
        raise InvalidArgument(f"WQL {e}") from None


#: the longest a GetJob may wait (``WaitTimeout``)
WAIT_TIMEOUT_MAX_S = 300.0


async def get_job(request: web.Request) -> web.Response:
    """GetJob; with ``WaitWhile=STATE[,STATE…]`` (names or numbers) it answers only once the
    job is in none of those states, or after ``WaitTimeout`` seconds (default 30): a long
    poll, so a client learns of a state change at once."""
    service = request.app[SERVICE_KEY]
    caller = caller_of(request)
    include_finished = _flag(request, "IncludeFinished")
    job = service.find(caller, request.match_info["job"], include_finished=include_finished)
    wait_while = _query(request, "WaitWhile")
    if wait_while is not None:
        states = _job_states(wait_while)
        timeout = _query(request, "WaitTimeout")
        try:
            timeout_s = 30.0 if timeout is None else float(timeout)
        except ValueError:
            raise InvalidArgument("WaitTimeout must be a number of seconds") from None
        if not 0 <= timeout_s <= WAIT_TIMEOUT_MAX_S:
            raise InvalidArgument(f"WaitTimeout must be between 0 and {WAIT_TIMEOUT_MAX_S:g} seconds")
        await service.wait_while(job, states, timeout_s)
    return web.json_response(job.to_cim(files=_flag(request, "Files", default=True)))


def _query(request: web.Request, name: str) -> str | None:
    for key, value in request.query.items():
        if key.lower() == name.lower():
            return value
    return None


def _job_states(text: str) -> frozenset[JobState]:
    states: set[JobState] = set()
    for item in text.split(","):
        name = item.strip().upper()
        try:
            states.add(JobState(int(name)) if name.isdigit() else JobState[name])
        except (KeyError, ValueError):
            raise InvalidArgument(f"WaitWhile: {item.strip()!r} is not a job state") from None
    return frozenset(states)


async def patch_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _body(request)
    job = service.patch(caller_of(request), request.match_info["job"], body)
    return web.json_response(job.to_cim())


async def create_job(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _body(request)
    job = await service.create_job(caller_of(request), body)
    return result_response({"ReturnValue": 0, "JobId": job.job_id})


async def invoke(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _body(request)
    result = await service.invoke(
        caller_of(request), request.match_info["job"], request.match_info["method"], body
    )
    return result_response(result)


async def get_policy(request: web.Request) -> web.Response:
    caller_of(request)
    return web.json_response(request.app[SERVICE_KEY].get_policy())


async def patch_policy(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _body(request)
    return web.json_response(service.set_policy(caller_of(request), body))


async def not_yet(request: web.Request) -> web.Response:
    raise NotImplementedValue(f"{request.path} is not implemented yet")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"Version": __version__})


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text: jobs by state and priority (the caller's, or all for an
    administrator), bytes and files transferred, errors, seconds throttled."""
    throttle = request.app.get(THROTTLE_KEY)
    text = metrics.render(
        request.app[SERVICE_KEY], caller_of(request), throttle.throttled_s if throttle is not None else 0.0
    )
    return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[bits_errors], client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app.router.add_get(CLASS, enumerate_jobs)
    app.router.add_post(f"{CLASS}/CreateJob", create_job)
    app.router.add_get(f"{CLASS}/{{job:[^/]+}}", get_job)
    app.router.add_patch(f"{CLASS}/{{job:[^/]+}}", patch_job)
    app.router.add_post(f"{CLASS}/{{job:[^/]+}}/{{method}}", invoke)
    app.router.add_get(f"{BASE}/BitsServicePolicy", get_policy)
    app.router.add_patch(f"{BASE}/BitsServicePolicy", patch_policy)
    app.router.add_post(f"{BASE}/Query", query)
    app.router.add_get("/events", not_yet)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", get_metrics)
    return app
