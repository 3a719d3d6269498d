"""The Python clients of the daemon's API: :class:`Client` (synchronous) and
:class:`AsyncClient` (asyncio), over the Unix socket or over TCP with a bearer token.

Both have the same methods.  The typed ones answer :class:`~openbits.jobs.BitsJob`,
:class:`~openbits.jobs.JobErrorInfo` and :class:`~openbits.jobs.JobEvent`: ``new_job``,
``job``, ``jobs``, ``update_job``, ``job_error``, ``job_events``, ``wait``, ``transfer``.
The CIM-level ones answer the JSON as the API sends it (``create_job`` the JobId,
``get_job``/``list_jobs``/``set_properties``/``get_error`` dicts, ``events`` raw
Server-Sent Events); the verbs (``add_file``, ``resume``, ``cancel``, ``set_*`` …) are
shared.  Failing calls raise the BitsError subclass rebuilt from the HRESULT of the
error body; :class:`DaemonUnavailable` when nothing answers.

The sync client is stdlib only (http.client), so the CLI starts in ~30 ms: the typed
objects (``openbits.jobs``) load on first use, AsyncClient lives in ``openbits.aio``
(``openbits.client.AsyncClient`` and ``openbits.AsyncClient`` load it on first use), and
aiohttp is imported when an AsyncClient first connects.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from openbits.config import client_socket_path
from openbits.errors import AccessDenied, BitsError, HResult, InvalidState
from openbits.model import BG_LENGTH_TO_EOF, JobPriority, JobState, JobType, redact_url

if TYPE_CHECKING:  # (imported where used: `import openbits.client` stays light for the CLI)
    from openbits.jobs import BitsJob, JobErrorInfo, JobEvent

CLASS = "/root/microsoft/bits/BitsClientJob"
POLICY = "/root/microsoft/bits/BitsServicePolicy"

#: what ``wait()`` waits for: the job will not move on by itself (SUSPENDED and
#: TRANSIENT_ERROR are waited through: someone may resume it, a transient error is retried)
WAIT_UNTIL: frozenset[JobState] = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
)

#: a ``progress`` callback of ``transfer()``: called with the job after each change
Progress = Callable[["BitsJob"], object]
FilePairs = Mapping[str, str] | Iterable[tuple[str, str]]


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (or at the URL)."""


# -- where the daemon is ----------------------------------------------------------------------


class _Endpoint:
    """The Unix socket (``socket``), or the TCP URL (``url``, as it may be shown) with its
    bearer token (never shown)."""

    __slots__ = ("host", "port", "prefix", "scheme", "socket", "token", "url")

    def __init__(
        self,
        socket: str | None,
        url: str | None = None,
        scheme: str = "http",
        host: str = "localhost",
        port: int = 0,
        prefix: str = "",
        token: str | None = None,
    ) -> None:
        self.socket = socket
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.prefix = prefix
        self.token = token

    def __repr__(self) -> str:
        return self.describe("_Endpoint")

    @staticmethod
    def resolve(sock: str | None, url: str | None, token: str | None) -> _Endpoint:
        """``socket``, else ``url``, else $OPENBITS_SOCKET, else $OPENBITS_URL (with
        ``token`` or $OPENBITS_TOKEN), else the default socket."""
        if sock is None and url is None and not os.environ.get("OPENBITS_SOCKET"):
            url = os.environ.get("OPENBITS_URL") or None
        if sock is not None or url is None:
            return _Endpoint(client_socket_path(sock))
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(f"not a valid daemon URL: {redact_url(url)!r}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the daemon URL must be http://HOST:PORT or https://…: {redact_url(url)!r}")
        host = parts.hostname
        port = port or (443 if scheme == "https" else 80)
        prefix = parts.path.rstrip("/")
        shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{prefix}"
        if token is None:
            token = os.environ.get("OPENBITS_TOKEN") or None
        return _Endpoint(None, shown, scheme, host, port, prefix, token)

    @property
    def where(self) -> str:
        return f"on {self.socket}" if self.socket is not None else f"at {self.url}"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.socket is None and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def unavailable(self, error: OSError) -> DaemonUnavailable | None:
        """The DaemonUnavailable a failure to connect means (None: it means something
        else, e.g. a TLS or permission failure)."""
        if isinstance(error, ssl.SSLError):
            return None
        if self.socket is not None:
            if not isinstance(error, FileNotFoundError | ConnectionRefusedError):
                return None
            reason = error.strerror or str(error)
            return DaemonUnavailable(
                f"no openbits daemon on {self.socket} ({reason}); start one with `openbits serve`"
            )
        reason = error.strerror or str(error) or type(error).__name__
        return DaemonUnavailable(f"no openbits daemon answers at {self.url} ({reason})")

    def describe(self, cls: str) -> str:
        if self.socket is not None:
            return f"{cls}(socket={self.socket!r})"
        return f"{cls}(url={self.url!r}, token={'<hidden>' if self.token else None})"


def _answer(status: int, payload: bytes) -> Any:
    """The JSON of a response; a failing one raises its BitsError."""
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        if status < 400:
            raise BitsError(
                f"the daemon's answer is not JSON (HTTP {status})", hresult=HResult.E_FAIL
            ) from None
        result = None
    if status >= 400:
        if isinstance(result, dict) and "ReturnValue" in result:
            raise BitsError.from_hresult(int(result["ReturnValue"]), result.get("Message"))
        if status in (401, 403):
            raise AccessDenied(f"HTTP {status}")
        raise BitsError(f"HTTP {status}", hresult=HResult.E_FAIL)
    return result


# -- requests, built once for both clients -------------------------------------------------------


def _job_path(job: str, method: str | None = None) -> str:
    return f"{CLASS}/{quote(job, safe='')}" + (f"/{method}" if method else "")


def _query(params: Mapping[str, str]) -> str:
    return "?" + urlencode(params) if params else ""


def _list_path(all_users: bool, where: str | None) -> str:
    params = {"AllUsers": "true"} if all_users else {}
    if where is not None:
        params["Where"] = where
    return CLASS + _query(params)


def _get_job_path(
    job: str,
    include_finished: bool,
    files: bool,
    wait_while: Iterable[int],
    wait_timeout: float | None,
    client_timeout: float,
) -> str:
    params = {"IncludeFinished": "true"} if include_finished else {}
    if not files:
        params["Files"] = "false"
    waits = ",".join(str(int(s)) for s in wait_while)
    if waits:
        # (within the connection's own timeout)
        wait = min(30.0 if wait_timeout is None else wait_timeout, client_timeout - 1)
        params["WaitWhile"] = waits
        params["WaitTimeout"] = f"{max(0.0, wait):.3f}"
    return _job_path(job) + _query(params)


def _create_body(
    display_name: str,
    remote_url: str | None,
    local_file: str | None,
    suspend: bool,
    description: str | None,
    priority: int | None,
    job_type: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"DisplayName": display_name, "Suspend": suspend}
    if remote_url is not None:
        body["RemoteUrl"] = remote_url
    if local_file is not None:
        body["LocalFile"] = local_file
    if description is not None:
        body["Description"] = description
    if priority is not None:
        body["Priority"] = int(priority)
    if job_type is not None:
        body["Type"] = int(job_type)
    return body


def wmi_name(name: str) -> str:
    """``display_name`` → ``DisplayName``; a WMI name (``DisplayName``) stays as it is."""
    if "_" not in name and name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def _json_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return value


def _wmi_props(props: Mapping[str, Any]) -> dict[str, Any]:
    return {wmi_name(k): _json_value(v) for k, v in props.items()}


def _file_pairs(files: FilePairs) -> list[dict[str, str]]:
    pairs = files.items() if isinstance(files, Mapping) else files
    return [{"RemoteUrl": remote, "LocalFile": local} for remote, local in pairs]


def _ranges(ranges: Iterable[tuple[int, int | None]]) -> list[dict[str, int]]:
    """(offset, length) pairs; a length of None runs to the end of the file."""
    return [{"InitialOffset": int(o), "Length": BG_LENGTH_TO_EOF if n is None else int(n)} for o, n in ranges]


def _headers_text(headers: str | Mapping[str, str] | None) -> str | None:
    """SetCustomHeaders' text: ``Name: value`` lines, each ended by CR LF."""
    if headers is None or isinstance(headers, str):
        return headers
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()) or None


def _events_request(
    last_event_id: int | None, job: str | None, types: Iterable[str] | None, all_users: bool
) -> tuple[str, dict[str, str]]:
    params: dict[str, str] = {}
    if job is not None:
        params["Job"] = job
    if types is not None:
        params["Types"] = ",".join(types)
    if all_users:
        params["AllUsers"] = "true"
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(int(last_event_id))
    return "/events" + _query(params), headers


def _bits_job(data: Mapping[str, Any]) -> BitsJob:
    from openbits.jobs import BitsJob

    return BitsJob.from_cim(data)


def _error_info(data: Mapping[str, Any]) -> JobErrorInfo:
    from openbits.jobs import JobErrorInfo

    return JobErrorInfo.from_cim(data)


def _job_event(event_id: int | None, event_type: str, data: Any) -> JobEvent:
    from openbits.jobs import JobEvent

    return JobEvent.from_sse(event_id, event_type, data)


def _timed_out(job: str, state: JobState) -> TimeoutError:
    return TimeoutError(f"timed out waiting for {job}: it is {state.name}")


def _job_failed(info: JobErrorInfo, job_id: str) -> BitsError:
    error = info.exception()
    where = f" ({info.remote_url} -> {info.local_file})" if info.remote_url else ""
    error.add_note(f"job {job_id} went to ERROR{where} and was cancelled")
    return error


def _not_transferred(job: BitsJob) -> BitsError:
    return InvalidState(f"job {job.job_id} became {job.state.name} before it was transferred")


_RECONNECT_FIRST_DELAY_S = 0.05
_RECONNECT_MAX_DELAY_S = 2.0


# -- the synchronous client ----------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """The daemon's API, synchronously: ``Client()`` finds the daemon on ``socket``, else at
    ``url`` (``http://HOST:PORT``, each request carrying ``Authorization: Bearer <token>``),
    else through $OPENBITS_SOCKET, else $OPENBITS_URL and $OPENBITS_TOKEN, else on the
    default socket.  ``timeout``: the longest wait for an answer, in seconds.

    One connection, kept alive, serves the calls (a client is not for several threads at
    once); each event stream has a connection of its own.
    """

    def __init__(
        self,
        socket: str | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._endpoint = _Endpoint.resolve(socket, url, token)
        #: the Unix socket (None when the daemon is reached over TCP)
        self.socket = self._endpoint.socket
        #: the TCP URL (None on the Unix socket)
        self.url = self._endpoint.url
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        return self._endpoint.describe("Client")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new, connected connection; DaemonUnavailable when nothing answers."""
        ep = self._endpoint
        conn: http.client.HTTPConnection
        if ep.socket is not None:
            conn = _UnixConnection(ep.socket, timeout)
        elif ep.scheme == "https":
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            unavailable = ep.unavailable(e)
            if unavailable is not None:
                raise unavailable from None
            raise
        return conn

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call: its JSON answer, or the BitsError of a failing one."""
        data = None if body is None else json.dumps(body).encode()
        headers = self._endpoint.headers({"Content-Type": "application/json"} if data is not None else None)
        url = self._endpoint.prefix + path
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect(self.timeout)
            try:
                self._conn.request(method, url, body=data, headers=headers)
                resp = self._conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection went away: one fresh try
                if attempt:
                    raise
            except OSError as e:  # (the connection reconnects by itself after a close)
                self.close()
                unavailable = self._endpoint.unavailable(e)
                if unavailable is not None:
                    raise unavailable from None
                raise
        return _answer(resp.status, payload)

    # -- jobs: CIM level (dicts, as the API answers) -----------------------------------------

    def list_jobs(self, all_users: bool = False, where: str | None = None) -> list[dict[str, Any]]:
        """Your jobs (``all_users``: everyone's, for an administrator); ``where``: a WQL
        condition, e.g. ``"State = 4 OR DisplayName LIKE 'nightly%'"``."""
        jobs: list[dict[str, Any]] = self.request("GET", _list_path(all_users, where))
        return jobs

    def query(self, wql: str, all_users: bool = False) -> list[dict[str, Any]]:
        """``SELECT * | p1, p2 FROM BitsClientJob [WHERE …]``: the matching instances, with only
        the selected properties."""
        body: dict[str, Any] = {"Query": wql}
        if all_users:
            body["AllUsers"] = True
        result: list[dict[str, Any]] = self.request("POST", "/root/microsoft/bits/Query", body)
        return result

    def get_job(
        self,
        job: str,
        include_finished: bool = False,
        files: bool = True,
        wait_while: Iterable[int] = (),
        wait_timeout: float | None = None,
    ) -> dict[str, Any]:
        """One instance; ``files=False`` leaves out its Files array (cheap to poll).

        With ``wait_while`` (job states) the daemon answers only once the job is in none of
        them, or after ``wait_timeout`` seconds (its default: 30): a long poll."""
        path = _get_job_path(job, include_finished, files, wait_while, wait_timeout, self.timeout)
        result: dict[str, Any] = self.request("GET", path)
        return result

    def create_job(self, **params: Any) -> str:
        """CreateJob with its WMI parameters (``DisplayName=``, ``RemoteUrl=``, …): the JobId.
        (``new_job`` answers a BitsJob.)"""
        result = self.request("POST", f"{CLASS}/CreateJob", params)
        return str(result["JobId"])

    def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        """Any instance method by its WMI name, with its WMI parameters: its answer."""
        result: dict[str, Any] = self.request("POST", _job_path(job, method), params)
        return result

    def get_error(self, job: str) -> dict[str, Any]:
        """GetError's answer as JSON (``job_error`` answers a JobErrorInfo)."""
        return self.invoke(job, "GetError")

    def set_properties(self, job: str, **props: Any) -> dict[str, Any]:
        """PATCH read/write properties, by snake_case or WMI name (``display_name=`` or
        ``DisplayName=``, ``priority=JobPriority.HIGH``, ``minimum_retry_delay=60``): all or
        nothing.  The instance after the change, as JSON (``update_job``: a BitsJob)."""
        result: dict[str, Any] = self.request("PATCH", _job_path(job), _wmi_props(props))
        return result

    # -- jobs: typed ---------------------------------------------------------------------------

    def new_job(
        self,
        display_name: str = "",
        remote_url: str | None = None,
        local_file: str | None = None,
        *,
        suspend: bool = True,
        description: str | None = None,
        priority: JobPriority | int | None = None,
        job_type: JobType | int | None = None,
    ) -> BitsJob:
        """CreateJob: a new job, SUSPENDED unless ``suspend=False`` (with a file: resumed at
        once)."""
        body = _create_body(display_name, remote_url, local_file, suspend, description, priority, job_type)
        job_id = str(self.request("POST", f"{CLASS}/CreateJob", body)["JobId"])
        return self.job(job_id)

    def job(self, job: str, *, include_finished: bool = False) -> BitsJob:
        """One job, by JobId or display name (``include_finished``: also an ACKNOWLEDGED or
        CANCELLED one, for 7 days)."""
        return _bits_job(self.get_job(job, include_finished=include_finished))

    def jobs(self, all_users: bool = False, where: str | None = None) -> list[BitsJob]:
        """Your jobs (``all_users``: everyone's, for an administrator); ``where``: a WQL
        condition."""
        return [_bits_job(j) for j in self.list_jobs(all_users, where)]

    def update_job(self, job: str, **props: Any) -> BitsJob:
        """``set_properties``, answering the job after the change."""
        return _bits_job(self.set_properties(job, **props))

    def job_error(self, job: str) -> JobErrorInfo:
        """GetError: why the job is in ERROR (or TRANSIENT_ERROR)."""
        return _error_info(self.get_error(job))

    # -- the verbs ------------------------------------------------------------------------------

    def add_file(self, job: str, remote_url: str, local_file: str) -> None:
        self.invoke(job, "AddFile", RemoteUrl=remote_url, LocalFile=local_file)

    def add_file_set(self, job: str, files: FilePairs) -> None:
        """Several (RemoteUrl, LocalFile) pairs (or a {RemoteUrl: LocalFile} mapping) in one
        call: all are added or none."""
        self.invoke(job, "AddFileSet", Files=_file_pairs(files))

    def add_file_with_ranges(
        self, job: str, remote_url: str, local_file: str, ranges: Iterable[tuple[int, int | None]]
    ) -> None:
        """Only these (offset, length) pieces of the remote file, one after the other in the
        local file; a length of None runs to the end."""
        self.invoke(
            job, "AddFileWithRanges", RemoteUrl=remote_url, LocalFile=local_file, Ranges=_ranges(ranges)
        )

    def set_job_state(self, job: str, state: int) -> int:
        return int(self.invoke(job, "SetJobState", JobState=state)["ReturnValue"])

    def cancel(self, job: str) -> int:
        return self.set_job_state(job, 0)

    def complete(self, job: str) -> int:
        """The files appear under their names; the ReturnValue (BG_S_PARTIAL_COMPLETE when
        some were not transferred)."""
        return self.set_job_state(job, 1)

    def resume(self, job: str) -> int:
        return self.set_job_state(job, 2)

    def suspend(self, job: str) -> int:
        return self.set_job_state(job, 3)

    def set_maximum_download_time(self, job: str, seconds: int | timedelta | None) -> None:
        """None: the default (90 days)."""
        self.invoke(job, "SetMaximumDownloadTime", MaximumDownloadTime=_json_value(seconds))

    def set_custom_headers(self, job: str, headers: str | Mapping[str, str] | None) -> None:
        """Headers sent with every request of the job: ``{"Name": "value"}`` or
        ``"Name: value\\r\\n"`` lines; None removes them."""
        self.invoke(job, "SetCustomHeaders", CustomHeaders=_headers_text(headers))

    def set_security_flags(self, job: str, flags: int | None) -> None:
        self.invoke(job, "SetSecurityFlags", SecurityFlags=None if flags is None else int(flags))

    def set_notify_flags(self, job: str, flags: int | None) -> None:
        """NotifyFlags (1 transferred, 2 error, 4 off); None: the default, 3."""
        self.invoke(job, "SetNotifyFlags", NotifyFlags=None if flags is None else int(flags))

    def set_notify_cmd_line(self, job: str, program: str | None, parameters: str | None = None) -> None:
        """Run ``program`` (an absolute path; ``parameters``: its command line, program
        first) when the job is TRANSFERRED or in ERROR; None removes it."""
        self.invoke(job, "SetNotifyCmdLine", Program=program, Parameters=parameters)

    def set_notify_url(self, job: str, url: str | None) -> None:
        """POST the job as JSON to this webhook when it is TRANSFERRED or in ERROR."""
        self.invoke(job, "SetNotifyUrl", NotifyUrl=url)

    def set_remote_name(self, job: str, local_file: str, remote_url: str) -> None:
        """A new RemoteUrl for the file of the job that has this LocalFile."""
        self.invoke(job, "SetRemoteName", LocalFile=local_file, RemoteUrl=remote_url)

    def replace_remote_prefix(self, job: str, old_prefix: str, new_prefix: str) -> int:
        """Move the files not transferred yet to another server: how many changed."""
        result = self.invoke(job, "ReplaceRemotePrefix", OldPrefix=old_prefix, NewPrefix=new_prefix)
        return int(result.get("FilesChanged", 0))

    def get_response_headers(self, job: str, local_file: str | None = None) -> str | None:
        """The headers of the last response accepted for a file (``local_file``; None: the
        job's only file), as ``Name: value\\r\\n`` lines."""
        params = {} if local_file is None else {"LocalFile": local_file}
        headers: str | None = self.invoke(job, "GetResponseHeaders", **params).get("ResponseHeaders")
        return headers

    # -- the service -------------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """BitsServicePolicy: the bandwidth and scheduling settings in force."""
        result: dict[str, Any] = self.request("GET", POLICY)
        return result

    def set_policy(self, **props: Any) -> dict[str, Any]:
        """Change settings (administrators), by snake_case or WMI name:
        ``set_policy(max_bandwidth="10M")``.  The policy after the change."""
        result: dict[str, Any] = self.request("PATCH", POLICY, _wmi_props(props))
        return result

    # -- bearer tokens of the TCP listener (over the Unix socket only) ----------------------

    def create_token(self, description: str = "") -> dict[str, Any]:
        """A token acting as you on the TCP listener: ``{"TokenId", "Token", …}``; the only
        time the token is shown."""
        result: dict[str, Any] = self.request("POST", "/tokens", {"Description": description})
        return result

    def tokens(self, all_users: bool = False) -> list[dict[str, Any]]:
        """Your tokens (ids and descriptions; never the tokens)."""
        result: list[dict[str, Any]] = self.request(
            "GET", "/tokens?AllUsers=true" if all_users else "/tokens"
        )
        return result

    def revoke_token(self, token_id: str) -> None:
        self.request("DELETE", f"/tokens/{quote(token_id, safe='')}")

    # -- live events (GET /events) ----------------------------------------------------------

    def events(
        self,
        last_event_id: int | None = None,
        job: str | None = None,
        types: Iterable[str] | None = None,
        all_users: bool = False,
        timeout: float | None = None,
    ) -> EventStream:
        """The daemon's job events as they happen (Server-Sent Events), an iterator of
        :class:`StreamEvent` on a connection of its own::

            with client.events(job=job_id) as stream:
                for event in stream:
                    print(event.id, event.event, event.data["State"])

        ``job``: one job's events (JobId or display name); ``types``: some types only
        (``{"JobTransferred", "JobError"}``); ``all_users``: everyone's (administrators).
        ``last_event_id``: first replay the events after that id that the daemon still
        keeps, then go on live: no event is missed or repeated. If the daemon no longer
        has that id, the first event is a ``Reset`` (``id`` None): events were missed.

        The iterator ends when the daemon ends the stream (it stops, or the client fell
        too far behind); reconnecting is the caller's choice: call ``events()`` again with
        ``last_event_id=stream.last_event_id`` (``job_events(reconnect=True)`` does it).
        ``timeout``: the longest wait for the next event (``TimeoutError``, the stream is
        closed); None waits for ever. ``stream.timeout`` may be changed between events.
        Raises BitsError (E_NOTIMPL from a daemon without events) or DaemonUnavailable."""
        path, headers = _events_request(last_event_id, job, types, all_users)
        conn = self._connect(self.timeout)
        try:
            conn.request("GET", self._endpoint.prefix + path, headers=self._endpoint.headers(headers))
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            payload = resp.read()
            conn.close()
            _answer(resp.status, payload)
        stream = EventStream(conn, resp, timeout, last_event_id)
        stream.start(self.timeout)
        return stream

    def job_events(
        self,
        last_event_id: int | None = None,
        job: str | None = None,
        types: Iterable[str] | None = None,
        all_users: bool = False,
        *,
        reconnect: bool = False,
        timeout: float | None = None,
        reconnect_timeout: float = 30.0,
    ) -> JobEventStream:
        """``events()`` as typed :class:`~openbits.jobs.JobEvent` s (``event.job`` a BitsJob)::

            with client.job_events(job=job_id, reconnect=True) as events:
                for event in events:
                    print(event.id, event.type, event.job.state.name if event.job else "")

        ``reconnect``: when the stream ends (the daemon restarted, or it cut off a client
        that fell behind), connect again with Last-Event-ID, so that no event is missed
        or repeated, trying for up to ``reconnect_timeout`` seconds while no daemon
        answers (then DaemonUnavailable).  Without it the iterator ends with the stream."""
        stream = self.events(last_event_id, job, types, all_users, timeout)
        return JobEventStream(
            self,
            stream,
            (job, tuple(types) if types is not None else None, all_users),
            reconnect,
            reconnect_timeout,
        )

    # -- waiting and transferring --------------------------------------------------------------

    def wait(
        self, job: str, timeout: float | None = None, *, until: Collection[JobState] = WAIT_UNTIL
    ) -> BitsJob:
        """Until the job is TRANSFERRED, in ERROR, ACKNOWLEDGED or CANCELLED (``until``:
        other states): the job then.  It follows the job's events, so it returns at once; a
        daemon without events is long polled.  ``timeout`` (seconds): TimeoutError after it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(job, frozenset(until), deadline, None)

    def transfer(
        self,
        files: FilePairs,
        display_name: str = "",
        *,
        description: str | None = None,
        priority: JobPriority | int | None = None,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> BitsJob:
        """Download ``files`` ((RemoteUrl, LocalFile) pairs, or a mapping) in one job: create,
        add, resume, wait, complete.  The files are in place when it returns the
        ACKNOWLEDGED job.  ``progress(job)`` is called with the job after each change.

        On failure the job is cancelled (its temporary files removed) and the error
        raised: the job's own error (``BG_E_HTTP_ERROR_404``, …) as its BitsError
        subclass, TimeoutError after ``timeout`` seconds, or whatever interrupted it
        (KeyboardInterrupt)."""
        pairs = _file_pairs(files)
        if not pairs:
            raise ValueError("transfer() needs at least one (remote_url, local_file) pair")
        deadline = None if timeout is None else time.monotonic() + timeout
        job_id = self.new_job(display_name, description=description, priority=priority).job_id
        done = False
        try:
            self.invoke(job_id, "AddFileSet", Files=pairs)
            self.resume(job_id)
            job = self._follow(job_id, WAIT_UNTIL, deadline, progress)
            if job.state is JobState.ERROR:
                raise _job_failed(self.job_error(job_id), job_id)
            if job.state is not JobState.TRANSFERRED:
                raise _not_transferred(job)
            self.complete(job_id)
            done = True
        finally:
            if not done:
                self._cancel_quietly(job_id)
        final = self.job(job_id, include_finished=True)
        if progress is not None:
            progress(final)
        return final

    def _cancel_quietly(self, job: str) -> None:
        with contextlib.suppress(BitsError, DaemonUnavailable, OSError, http.client.HTTPException):
            self.cancel(job)

    def _follow(
        self, job: str, until: frozenset[JobState], deadline: float | None, progress: Progress | None
    ) -> BitsJob:
        try:
            events = self.job_events(job=job, reconnect=True)  # subscribed before the state is read
        except BitsError as e:
            if e.hresult != HResult.E_NOTIMPL:
                raise
            return self._long_poll(job, until, deadline, progress)
        with events:
            current = self.job(job, include_finished=True)
            fresh = True  # (read with GetJob: complete, with its Files and CustomHeaders)
            while True:
                if progress is not None:
                    progress(current)
                if current.state in until:
                    break
                if deadline is not None:
                    events.timeout = deadline - time.monotonic()
                    if events.timeout <= 0:
                        raise _timed_out(job, current.state)
                try:
                    event = next(events)
                except TimeoutError:
                    raise _timed_out(job, current.state) from None
                if event.job is not None:
                    current, fresh = event.job, False
                else:  # Reset: events were missed
                    current, fresh = self.job(job, include_finished=True), True
        if fresh:
            return current
        latest = self.job(job, include_finished=True)
        return latest if latest.state in until else current

    def _long_poll(
        self, job: str, until: frozenset[JobState], deadline: float | None, progress: Progress | None
    ) -> BitsJob:
        others = [s for s in JobState if s not in until]
        current = self.job(job, include_finished=True)
        while True:
            if progress is not None:
                progress(current)
            if current.state in until:
                return current
            wait = 30.0 if progress is None else 0.5
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _timed_out(job, current.state)
                wait = min(wait, left)
            raw = self.get_job(job, include_finished=True, wait_while=others, wait_timeout=wait)
            current = _bits_job(raw)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of ``GET /events``: ``id`` (None for ``Reset``), ``event`` (the type:
    JobModification, JobTransferred, JobError, FileTransferred, JobCancelled,
    JobAcknowledged, Reset) and ``data`` (the parsed JSON: the job instance after the
    change)."""

    id: int | None
    event: str
    data: Any


class SseParser:
    """Server-Sent Events (WHATWG HTML §9.2), fed one line at a time without its end."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None  # the id buffer: kept across events
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None  # this event's own id field

    def feed(self, line: str) -> StreamEvent | None:
        """The event a blank line completes, else None."""
        if not line:
            event, data, own_id = self._event, self._data, self._id
            self._event, self._data, self._id = "", [], None
            if not data:
                return None
            text = "\n".join(data)
            try:
                value: Any = json.loads(text)
            except ValueError:
                value = text
            ident = int(own_id) if own_id is not None and own_id.isdigit() else None
            return StreamEvent(ident, event or "message", value)
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class EventStream(Iterator[StreamEvent]):
    """The open stream of ``Client.events()``: iterate it; ``close()`` it (or use ``with``)."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        timeout: float | None,
        last_event_id: int | None = None,
    ) -> None:
        self.timeout = timeout
        #: the id of the last event received, or the newest id when the stream opened
        #: (pass it to ``events()`` to resume without missing any)
        self.last_event_id = last_event_id
        self._conn = conn
        self._resp = resp
        self._parser = SseParser()
        self._lines: collections.deque[str] = collections.deque()  # read, not yet parsed
        self._ahead: StreamEvent | None = None

    def start(self, timeout: float | None) -> None:
        """Read up to the first blank line: the daemon's opening (``retry``, and the newest
        id for a stream that does not replay), so ``last_event_id`` is known at once."""
        saved, self.timeout = self.timeout, timeout
        try:
            self._ahead = self._read(opening=True)
        except StopIteration:
            pass
        finally:
            self.timeout = saved

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> StreamEvent:
        ahead, self._ahead = self._ahead, None
        while ahead is None:
            ahead = self._read()
        return ahead

    def _read(self, opening: bool = False) -> StreamEvent | None:
        """The next event; with ``opening``, None at the first blank line before one."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            while self._lines:
                line = self._lines.popleft()
                event = self._parser.feed(line)
                last = self._parser.last_event_id
                if last is not None and last.isdigit():
                    self.last_event_id = int(last)
                if event is not None or (opening and not line):
                    return event
            self._fill(deadline)

    def _fill(self, deadline: float | None) -> None:
        sock = self._conn.sock
        if sock is None:
            raise StopIteration
        if deadline is None:
            sock.settimeout(None)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise TimeoutError("no event before the timeout")
            sock.settimeout(left)
        try:
            raw = self._resp.readline()
        except TimeoutError:
            self.close()
            raise
        except (OSError, http.client.HTTPException, ValueError):
            raw = b""  # the daemon went away: the stream ends
        if not raw:
            self.close()
            raise StopIteration
        text = raw.decode("utf-8", "replace")
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        self._lines.extend(text.split("\r"))  # (a lone CR ends a line too)

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_EventFilter = tuple[str | None, tuple[str, ...] | None, bool]


class JobEventStream(Iterator["JobEvent"]):
    """The open stream of ``Client.job_events()``: iterate it; ``close()`` it (or use
    ``with``).  ``timeout``: the longest wait for the next event (TimeoutError)."""

    def __init__(
        self,
        client: Client,
        stream: EventStream,
        event_filter: _EventFilter,
        reconnect: bool,
        reconnect_timeout: float,
    ) -> None:
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.timeout = stream.timeout
        self._client = client
        self._stream = stream
        self._filter = event_filter
        self._closed = False

    @property
    def last_event_id(self) -> int | None:
        """The id of the last event received (pass it to ``job_events()`` to resume)."""
        return self._stream.last_event_id

    def __iter__(self) -> JobEventStream:
        return self

    def __next__(self) -> JobEvent:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not self._closed:
            self._stream.timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = next(self._stream)
            except StopIteration:
                if not self.reconnect:
                    break
                self._reopen(deadline)
                continue
            return _job_event(event.id, event.event, event.data)
        self.close()
        raise StopIteration

    def _reopen(self, deadline: float | None) -> None:
        """Connect again after the last event received, waiting for a daemon to answer."""
        give_up = time.monotonic() + self.reconnect_timeout
        if deadline is not None:
            give_up = min(give_up, deadline)
        delay = _RECONNECT_FIRST_DELAY_S
        job, types, all_users = self._filter
        while True:
            try:
                self._stream = self._client.events(self.last_event_id, job, types, all_users)
                return
            except (DaemonUnavailable, ConnectionError, http.client.HTTPException):
                left = give_up - time.monotonic()
                if left <= 0:
                    if deadline is not None and deadline <= give_up:
                        raise TimeoutError("no event before the timeout (the daemon is away)") from None
                    raise
                time.sleep(min(delay, left))
                delay = min(delay * 2, _RECONNECT_MAX_DELAY_S)

    def close(self) -> None:
        self._closed = True
        self._stream.close()

    def __enter__(self) -> JobEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def __getattr__(name: str) -> Any:
    """``openbits.client.AsyncClient`` (and its streams) live in ``openbits.aio``, loaded on
    first use: the CLI, which needs only Client, never compiles nor imports them."""
    if name in ("AsyncClient", "AsyncEventStream", "AsyncJobEventStream"):
        from openbits import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'openbits.client' has no attribute {name!r}")
