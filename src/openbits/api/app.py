"""The HTTP API of SPEC §4, shaped after CIM, on aiohttp.web.

It translates HTTP to service calls and BitsError to the error body; it decides
nothing.  ``/events`` streams the event log of ``api/events.py`` (set by the daemon as
``EVENTS_KEY``; without it the route answers E_NOTIMPL).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

from aiohttp import web

from openbits import __version__
from openbits.api import events as ev
from openbits.api import metrics, openapi, wql
from openbits.api.guard import GUARD_KEY, FailureGuard
from openbits.api.peer import (
    CALLERS_KEY,
    Callers,
    authorize,
    caller_of,
    is_unix_socket,
    still_authenticated,
)
from openbits.api.tokens import (
    DEFAULT_SCOPE,
    TOKENS_KEY,
    NotAuthenticated,
    Scope,
    Tokens,
    TooManyFailures,
)
from openbits.caller import Caller
from openbits.errors import (
    AccessDenied,
    BitsError,
    InternalError,
    InvalidArgument,
    NotImplementedValue,
    RequestTooLarge,
    api_http_status,
    hresult_message,
    hresult_name,
)
from openbits.model import ALL_PROPERTIES, Job, JobState
from openbits.service import Service
from openbits.transfer.offload import FetchWorker, Stats
from openbits.transfer.throttle import Throttle

log = logging.getLogger("openbits.api")

BASE = "/root/microsoft/bits"
CLASS = f"{BASE}/BitsClientJob"
MAX_BODY = 1024 * 1024

T = TypeVar("T")
SERVICE_KEY = web.AppKey("service", Service)
#: the transfers' throttle, for the seconds spent waiting on it (set by the daemon)
THROTTLE_KEY = web.AppKey("throttle", Throttle)
#: the fetch worker, for its metrics (set by the daemon when it has one)
FETCH_WORKER_KEY = web.AppKey("fetch_worker", FetchWorker)
#: the event log behind ``GET /events`` (set by the daemon)
EVENTS_KEY = web.AppKey("events", ev.EventLog)


def error_response(error: BitsError) -> web.Response:
    body = {
        "ReturnValue": error.hresult,
        "ErrorCode": error.hex,
        "Name": error.name,
        "Message": error.message,
    }
    if isinstance(error, NotAuthenticated):  # the TCP listener: who are you?
        return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="openbits"'})
    if isinstance(error, TooManyFailures):  # the TCP listener: too many wrong tokens from there
        retry_after = str(max(1, math.ceil(error.retry_after_s or 1)))
        return web.json_response(body, status=429, headers={"Retry-After": retry_after})
    return web.json_response(body, status=api_http_status(error.hresult))


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


#: the instance methods that change nothing: a read token may call them
_READING_METHODS = frozenset({"geterror", "getresponseheaders", "getreplydata"})


def _needed_scope(request: web.Request) -> Scope:
    """The least token scope a TCP request needs: reading (GET, Query, the Get* methods),
    submitting (creating and changing jobs), else admin (the policy; anything new is closed
    until it is put in a class here)."""
    match = request.match_info
    if match.http_exception is not None:  # 404, 405: nothing to protect
        return Scope.READ
    handler = match.route.handler
    if request.method in ("GET", "HEAD") or handler is query:
        return Scope.READ
    if handler is invoke and match.get("method", "").lower() in _READING_METHODS:
        return Scope.READ
    if handler in (create_job, patch_job, invoke):
        return Scope.SUBMIT
    return Scope.ADMIN


@web.middleware
async def bits_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path != "/openapi.json" and not is_unix_socket(request):
            authorize(request, _needed_scope(request))  # TCP: 429, 401, 403 before any body is read
        return await _durably(request, handler)
    except BitsError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(InvalidArgument(f"no such resource {request.path}"))
        if e.status == 405:
            return error_response(InvalidArgument(f"{request.method} is not allowed on {request.path}"))
        if e.status == 413:
            return error_response(RequestTooLarge(f"the request body is over {MAX_BODY} bytes"))
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(InternalError("internal error; see the daemon's log"))


async def _durably(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, given only once what it stored is durable: a request that
    committed (whatever its outcome) waits for the store's fsync (group commit: done off the
    loop, shared with every change made meanwhile); a read waits for nothing."""
    store = request.app[SERVICE_KEY].store
    before = store.commits
    try:
        return await handler(request)
    finally:
        if store.commits != before:
            await store.durable()


async def enumerate_jobs(request: web.Request) -> web.Response:
    """The caller's jobs (``AllUsers=true``: everyone's, for an administrator); ``Where=`` a
    WQL condition keeps those it is true of."""
    service = request.app[SERVICE_KEY]
    caller = caller_of(request)
    where = _query(request, "Where")
    jobs = service.enumerate(caller, all_users=_flag(request, "AllUsers"))
    if where is None:
        return web.json_response([j.to_cim(viewer_uid=caller.uid) for j in jobs])
    condition = _wql(wql.parse_condition, where, ALL_PROPERTIES)
    matching = _matching(jobs, condition, caller.uid)
    return web.json_response([j.to_cim(viewer_uid=caller.uid) for j in matching])


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
    caller = caller_of(request)
    jobs = service.enumerate(caller, all_users=all_users)
    if parsed.where is not None:
        jobs = _matching(jobs, parsed.where, caller.uid)
    return web.json_response([wql.project(parsed, j.cim_view(viewer_uid=caller.uid)) for j in jobs])


def _matching(jobs: Iterable[Job], condition: wql.Condition, viewer_uid: int) -> list[Job]:
    """The jobs ``condition`` is true of, tested on views that compute only the properties
    the condition reads (as ``viewer_uid`` sees them: no other user's CustomHeaders)."""
    return [j for j in jobs if wql.matches(condition, j.cim_view(viewer_uid=viewer_uid))]


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
    return web.json_response(job.to_cim(files=_flag(request, "Files", default=True), viewer_uid=caller.uid))


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
    caller = caller_of(request)
    job = service.patch(caller, request.match_info["job"], body)
    return web.json_response(job.to_cim(viewer_uid=caller.uid))


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


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the caller's job events (``AllUsers=true``: everyone's, for an
    administrator; ``Job=`` one job, by JobId or display name; ``Types=`` some types).
    ``Last-Event-ID`` (or ``LastEventId=``) replays the stored events after that id, then
    goes on live, with no gap and no duplicate."""
    log_ = request.app.get(EVENTS_KEY)
    if log_ is None:
        raise NotImplementedValue(f"{request.path} is not available")
    service = request.app[SERVICE_KEY]
    caller = caller_of(request)
    all_users = _flag(request, "AllUsers")
    if all_users and not caller.is_admin:
        raise AccessDenied("only administrators may see all users' events")
    job_id = None
    job_ref = _query(request, "Job")
    if job_ref is not None:  # a job the caller may see (an administrator: anyone's)
        job_id = service.find(caller, job_ref, include_finished=True).job_id
    types = None
    types_text = _query(request, "Types")
    if types_text is not None:
        try:
            types = ev.parse_types(types_text)
        except ValueError as e:
            raise InvalidArgument(f"Types: {e}") from None
    last = _last_event_id(request.headers.get("Last-Event-ID") or _query(request, "LastEventId"))
    # a user's stream of one job shows it while it is theirs (an administrator may take it)
    owner = None if all_users or (job_id is not None and caller.is_admin) else caller.uid
    event_filter = ev.EventFilter(owner_uid=owner, job_id=job_id, types=types)
    sub = log_.subscribe(event_filter)  # before the replay: nothing falls in between
    transport = request.transport
    if transport is not None:
        sub.abort = transport.close
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

    async def send(data: bytes) -> None:
        if not still_authenticated(request):  # its token was revoked: not one more byte
            raise ConnectionResetError("the stream's bearer token was revoked")
        sub.writing = True
        try:
            await response.write(data)
        finally:
            sub.writing = False

    try:
        await response.prepare(request)
        # a fresh stream starts with the newest id (an id field without data: no event, but
        # a client that reconnects with it misses nothing, even if nothing happened yet)
        start = b"" if last is not None else f"id: {sub.horizon}\n".encode()
        await send(b"retry: 1000\n" + start + b"\n")
        sent = sub.horizon if last is None else last
        if last is not None:
            if log_.missed(last):  # Reset, then all the log keeps (and the id that precedes it)
                info = {"LastEventId": last, "OldestEventId": log_.oldest_id}
                sent = min(last, log_.oldest_id - 1)
                await send(ev.sse_frame(None, ev.RESET, json.dumps(info)) + f"id: {sent}\n\n".encode())
            while page := log_.replay(sent, sub.horizon, event_filter):
                if sub.closed is not None:  # fell behind while replaying: end, never skip
                    return response
                await send(b"".join(e.frame for e in page))
                sent = page[-1].id
        while True:
            event = await sub.get(log_.keepalive_s)
            if event is None:
                if sub.closed is not None or transport is None or transport.is_closing():
                    break
                await send(ev.sse_comment("keepalive"))
            elif event.id > sent:
                await send(event.frame)
                sent = event.id
    except ConnectionError:
        pass  # the client went away (or the stream was aborted: shutdown, overflow)
    finally:
        log_.unsubscribe(sub)
    return response


def _last_event_id(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        last = int(text.strip())
    except ValueError:
        raise InvalidArgument("Last-Event-ID must be an event id (an integer)") from None
    if last < 0:
        raise InvalidArgument("Last-Event-ID must not be negative")
    return last


async def _end_waits(app: web.Application) -> None:
    """Shutdown: open event streams end and long polls answer (each now and any asked
    after), so stopping the daemon never waits on them."""
    log_ = app.get(EVENTS_KEY)
    if log_ is not None:
        log_.close_streams()
    app[SERVICE_KEY].end_long_polls()


def _tokens(request: web.Request) -> Tokens:
    if not is_unix_socket(request):
        raise AccessDenied("tokens are managed over the Unix socket only")
    tokens = request.app.get(TOKENS_KEY)
    if tokens is None:
        raise NotImplementedValue("this daemon keeps no tokens")
    return tokens


_TOKEN_PARAMETERS = ("description", "scope", "expiresafter")


async def create_token(request: web.Request) -> web.Response:
    """``{"Description": "…", "Scope": "read"|"submit"|"admin", "ExpiresAfter": seconds}``
    (all optional; Scope submit, no expiry): a bearer token for the TCP listener, acting as
    the caller within its scope; the answer is the only place the token is ever shown."""
    tokens = _tokens(request)
    caller = caller_of(request)
    body = await _body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    unknown = sorted(k for k in body if str(k).lower() not in _TOKEN_PARAMETERS)
    if unknown:
        raise InvalidArgument(f"unknown parameter(s): {', '.join(map(str, unknown))}")
    given = {str(k).lower(): v for k, v in body.items()}
    description = given.get("description") or ""
    if not isinstance(description, str):
        raise InvalidArgument("Description must be a string")
    scope_text = given.get("scope")
    if scope_text is not None and not isinstance(scope_text, str):
        raise InvalidArgument("Scope must be read, submit or admin")
    lifetime = given.get("expiresafter")
    if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)):
        raise InvalidArgument("ExpiresAfter must be a number of seconds (an integer)")
    scope = DEFAULT_SCOPE if scope_text is None else Scope.parse(scope_text)
    token, secret = tokens.issue(caller, description, scope, lifetime)
    answer = {"ReturnValue": 0, **token.to_cim(caller.user), "Token": secret}
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


async def list_tokens(request: web.Request) -> web.Response:
    """The caller's tokens (``AllUsers=true``: everyone's, for an administrator), never
    the tokens themselves."""
    tokens = _tokens(request)
    caller = caller_of(request)
    listed = tokens.listed(caller, _flag(request, "AllUsers"))
    return web.json_response([t.to_cim(Caller.from_uid(t.uid).user) for t in listed])


async def delete_token(request: web.Request) -> web.Response:
    """Revoke a token (the caller's own; an administrator: anyone's); effective at once."""
    _tokens(request).revoke(caller_of(request), request.match_info["TokenId"])
    return web.json_response({"ReturnValue": 0})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"Version": __version__})


async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API (api/openapi/)."""
    return web.json_response(openapi.document())


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text: jobs by state and priority (the caller's, or all for an
    administrator), bytes and files transferred, errors, seconds throttled, each running
    background job's added delay and pace (BackgroundYield), the fetch worker's state and
    files, wrong bearer tokens and the requests refused for them."""
    throttle = request.app.get(THROTTLE_KEY)
    text = metrics.render(
        request.app[SERVICE_KEY],
        caller_of(request),
        throttle.throttled_s if throttle is not None else 0.0,
        list(throttle.politeness.running.values()) if throttle is not None else (),
    )
    worker = request.app.get(FETCH_WORKER_KEY)
    text += metrics.fetch_worker(worker.stats() if worker is not None else Stats())
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        text += guard.metrics()
    return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[bits_errors], client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app[CALLERS_KEY] = Callers()
    app[GUARD_KEY] = FailureGuard()
    app.router.add_get(CLASS, enumerate_jobs)
    app.router.add_post(f"{CLASS}/CreateJob", create_job)
    app.router.add_get(f"{CLASS}/{{job:[^/]+}}", get_job)
    app.router.add_patch(f"{CLASS}/{{job:[^/]+}}", patch_job)
    app.router.add_post(f"{CLASS}/{{job:[^/]+}}/{{method}}", invoke)
    app.router.add_get(f"{BASE}/BitsServicePolicy", get_policy)
    app.router.add_patch(f"{BASE}/BitsServicePolicy", patch_policy)
    app.router.add_post(f"{BASE}/Query", query)
    app.router.add_get("/events", events)
    app.on_shutdown.append(_end_waits)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_post("/tokens", create_token)
    app.router.add_get("/tokens", list_tokens)
    app.router.add_delete("/tokens/{TokenId:[^/]+}", delete_token)
    return app
