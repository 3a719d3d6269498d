"""The client core, without I/O: where the daemon is, the requests both clients send and
how their answers are read, the Server-Sent Events decoder.  The flows that use them
(following a job, waiting, transferring) are in ``_flows.py``.

stdlib only: ``import openbits.client`` stays light for the CLI.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack
from urllib.parse import quote, urlencode, urlsplit

from openbits.config import client_socket_path
from openbits.errors import AccessDenied, BitsError, InternalError, InvalidState
from openbits.model import (
    BG_LENGTH_TO_EOF,
    JOB_CLASS_PATH,
    AuthScheme,
    AuthTarget,
    JobPriority,
    JobState,
    JobType,
    ProxyUsage,
)
from openbits.redaction import redact_url

if TYPE_CHECKING:  # (imported where used: `import openbits.client` stays light for the CLI)
    import ssl

    from openbits.jobs import BitsJob, JobErrorInfo, JobEvent

T = TypeVar("T")

#: what ``wait()`` waits for: the job will not move on by itself (SUSPENDED and
#: TRANSIENT_ERROR are waited through: someone may resume it, a transient error is retried)
WAIT_UNTIL: frozenset[JobState] = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
)

#: a ``progress`` callback of ``transfer()`` and ``wait()``: called with the job after each change
Progress = Callable[["BitsJob"], object]
#: (RemoteUrl, LocalFile) pairs, or (RemoteUrl, LocalFile, Digest) triples (the expected
#: digest: ``sha-256=:<base64>:`` or ``sha256:<hex>``; None: none), or {RemoteUrl: LocalFile}
FilePairs = Mapping[str, str] | Iterable[tuple[str, str] | tuple[str, str, str | None]]

RECONNECT_FIRST_DELAY_S = 0.05
RECONNECT_MAX_DELAY_S = 2.0
#: SetJobState's codes (bits-spec §1.3)
CANCEL, COMPLETE, RESUME, SUSPEND = 0, 1, 2, 3


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (or at the URL)."""


# -- where the daemon is ----------------------------------------------------------------------


class Endpoint:
    """The Unix socket (``socket``), or the TCP URL (``url``, as it may be shown) with its
    bearer token (never shown); an ``https`` URL is checked against the system's trusted
    certificates, or against ``cacert`` (a PEM file of CA certificates) when given."""

    __slots__ = ("_tls", "cacert", "host", "port", "prefix", "scheme", "socket", "token", "url")

    def __init__(
        self,
        socket: str | None,
        url: str | None = None,
        scheme: str = "http",
        host: str = "localhost",
        port: int = 0,
        prefix: str = "",
        token: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.socket = socket
        self.url = url
        self.scheme = scheme
        self.host = host
        self.port = port
        self.prefix = prefix
        self.token = token
        self.cacert = cacert
        self._tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return self.describe("Endpoint")

    @staticmethod
    def resolve(sock: str | None, url: str | None, token: str | None, cacert: str | None = None) -> Endpoint:
        """``socket``, else ``url``, else $OPENBITS_SOCKET, else $OPENBITS_URL (with
        ``token`` or $OPENBITS_TOKEN, and ``cacert`` or $OPENBITS_CACERT), else the default
        socket."""
        if sock is None and url is None and not os.environ.get("OPENBITS_SOCKET"):
            url = os.environ.get("OPENBITS_URL") or None
        if sock is not None or url is None:
            return Endpoint(client_socket_path(sock))
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
        if cacert is None:
            cacert = os.environ.get("OPENBITS_CACERT") or None
        return Endpoint(None, shown, scheme, host, port, prefix, token, cacert)

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context of an ``https`` URL (made once): the host name and the
        chain are checked, against ``cacert`` or the system's trust."""
        if self._tls is None:
            import ssl  # (here: ssl costs ~7 ms of start-up, and only https needs it)

            self._tls = ssl.create_default_context(cafile=self.cacert)
        return self._tls

    @property
    def host_header(self) -> str:
        """The Host header of a request (as http.client wrote it: the port unless the default)."""
        if self.socket is not None:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"

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
        if tls_error(error) is not None:
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

    def closed(self, error: Exception) -> ConnectionError:
        return ConnectionError(f"the daemon {self.where} closed the connection: {error}")

    def describe(self, cls: str) -> str:
        if self.socket is not None:
            return f"{cls}(socket={self.socket!r})"
        return f"{cls}(url={self.url!r}, token={'<hidden>' if self.token else None})"


def tls_error(error: BaseException) -> ssl.SSLError | None:
    """``error`` as a TLS failure, if it is one (without importing ssl: none happened unless
    something imported it)."""
    ssl_module = sys.modules.get("ssl")
    if ssl_module is not None and isinstance(error, ssl_module.SSLError):
        tls: ssl.SSLError = error
        return tls
    return None


class ClientBase:
    """What both clients hold: where the daemon is (``socket``, else ``url`` + ``token``,
    else $OPENBITS_SOCKET, else $OPENBITS_URL + $OPENBITS_TOKEN, else the default socket),
    ``timeout``, the longest wait for an answer, in seconds, and for an ``https`` URL
    ``cacert`` (else $OPENBITS_CACERT, else the system's trusted certificates)."""

    def __init__(
        self,
        socket: str | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        cacert: str | None = None,
    ) -> None:
        self._endpoint = Endpoint.resolve(socket, url, token, cacert)
        #: the Unix socket (None when the daemon is reached over TCP)
        self.socket = self._endpoint.socket
        #: the TCP URL (None on the Unix socket)
        self.url = self._endpoint.url
        self.timeout = timeout

    def __repr__(self) -> str:
        return self._endpoint.describe(type(self).__name__)

    def _job_options(self, options: JobOptions) -> JobOptions:
        """CreateJob's options as sent: a daemon reached over TCP is not given this
        machine's proxy environment unless asked (it reaches servers from its own network,
        and the variables may hold a proxy password)."""
        if self.socket is None and "proxy_environment" not in options:
            options = options.copy()
            options["proxy_environment"] = None
        return options


def answer(status: int, payload: bytes) -> Any:
    """The JSON of a response; a failing one raises its BitsError."""
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        if status < 400:
            raise InternalError(f"the daemon's answer is not JSON (HTTP {status})") from None
        result = None
    if status >= 400:
        if isinstance(result, dict) and "ReturnValue" in result:
            raise BitsError.from_hresult(int(result["ReturnValue"]), result.get("Message"))
        if status in (401, 403):
            raise AccessDenied(f"HTTP {status}")
        raise InternalError(f"HTTP {status}")
    return result


def json_body(body: Any) -> tuple[bytes | None, dict[str, str] | None]:
    """A request body as bytes, with its Content-Type (None, None without a body)."""
    if body is None:
        return None, None
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the API: the JSON answer, or the BitsError of a failing one."""

    method: str
    path: str
    body: Any = None


CREATE_PATH = f"{JOB_CLASS_PATH}/CreateJob"


def job_path(job: str, method: str | None = None) -> str:
    return f"{JOB_CLASS_PATH}/{quote(job, safe='')}" + (f"/{method}" if method else "")


def _query(params: Mapping[str, str]) -> str:
    return "?" + urlencode(params) if params else ""


def list_call(all_users: bool, where: str | None) -> Call:
    params = {"AllUsers": "true"} if all_users else {}
    if where is not None:
        params["Where"] = where
    return Call("GET", JOB_CLASS_PATH + _query(params))


def query_call(wql: str, all_users: bool) -> Call:
    body: dict[str, Any] = {"Query": wql}
    if all_users:
        body["AllUsers"] = True
    return Call("POST", "/root/microsoft/bits/Query", body)


class GetJobOptions(TypedDict, total=False):
    """``get_job``'s options: ``include_finished`` (also an ACKNOWLEDGED or CANCELLED job),
    ``files=False`` (without its Files array: cheap to poll), ``wait_while`` (job states)
    and ``wait_timeout`` (seconds, default 30): a long poll, answered once the job is in
    none of those states or after the timeout."""

    include_finished: bool
    files: bool
    wait_while: Iterable[int]
    wait_timeout: float | None


class JobOptions(TypedDict, total=False):
    """CreateJob's options: ``suspend`` (default True; False with a file: resumed at once),
    ``description``, ``priority``, ``job_type``; ``proxy_environment``: the proxy variables
    the job's PRECONFIG proxy usage follows (default: this process's ``http_proxy``,
    ``https_proxy``, ``all_proxy`` and ``no_proxy``, either case, to a daemon on its Unix
    socket; None: none sent)."""

    suspend: bool
    description: str | None
    priority: JobPriority | int | None
    job_type: JobType | int | None
    proxy_environment: Mapping[str, str] | None
    #: the file's expected digest (``sha-256=:<base64>:`` or ``sha256:<hex>``)
    digest: str | None


class TransferOptions(TypedDict, total=False):
    """``transfer``'s options: the job's ``description``, ``priority`` and ``job_type``;
    ``reply_file_name`` (an upload-reply job's ReplyFileName); ``max_connections`` (its
    MaxConnections, 1-32); ``timeout`` (seconds: TimeoutError after it); ``wait=False``
    (return the job once resumed)."""

    description: str | None
    priority: JobPriority | int | None
    job_type: JobType | int | None
    reply_file_name: str | None
    max_connections: int | None
    timeout: float | None
    wait: bool


class EventOptions(TypedDict, total=False):
    """What ``events``/``job_events`` filter on: one ``job``'s events (JobId or display
    name), some ``types`` only, everyone's (``all_users``, administrators)."""

    job: str | None
    types: Iterable[str] | None
    all_users: bool


class StreamOptions(EventOptions, total=False):
    """``events``' options: its filter and ``timeout``, the longest wait for the next event."""

    timeout: float | None


class JobEventOptions(StreamOptions, total=False):
    """``job_events``' options: ``events``' and ``reconnect`` (default True), for up to
    ``reconnect_timeout`` seconds (default 30) while no daemon answers."""

    reconnect: bool
    reconnect_timeout: float


def event_filter(options: EventOptions) -> EventOptions:
    """The filter of a stream, kept to open it again (``types`` read once)."""
    types = options.get("types")
    return {
        "job": options.get("job"),
        "types": None if types is None else tuple(types),
        "all_users": options.get("all_users", False),
    }


def ranges_call(
    job: str,
    remote_url: str,
    local_file: str,
    ranges: Iterable[tuple[int, int | None]],
    digest: str | None = None,
) -> Call:
    extra = {} if digest is None else {"Digest": digest}
    return invoke_call(
        job,
        "AddFileWithRanges",
        RemoteUrl=remote_url,
        LocalFile=local_file,
        Ranges=ranges_param(ranges),
        **extra,
    )


def add_file_call(job: str, remote_url: str, local_file: str, digest: str | None = None) -> Call:
    extra = {} if digest is None else {"Digest": digest}
    return invoke_call(job, "AddFile", RemoteUrl=remote_url, LocalFile=local_file, **extra)


def get_job_call(job: str, client_timeout: float = 60.0, **options: Unpack[GetJobOptions]) -> Call:
    params = {"IncludeFinished": "true"} if options.get("include_finished") else {}
    if not options.get("files", True):
        params["Files"] = "false"
    waits = ",".join(str(int(s)) for s in options.get("wait_while", ()))
    if waits:
        # (within the connection's own timeout)
        wait_timeout = options.get("wait_timeout")
        wait = min(30.0 if wait_timeout is None else wait_timeout, client_timeout - 1)
        params["WaitWhile"] = waits
        params["WaitTimeout"] = f"{max(0.0, wait):.3f}"
    return Call("GET", job_path(job) + _query(params))


def create_call(
    display_name: str,
    remote_url: str | None = None,
    local_file: str | None = None,
    **options: Unpack[JobOptions],
) -> Call:
    body: dict[str, Any] = {"DisplayName": display_name, "Suspend": options.get("suspend", True)}
    priority, job_type = options.get("priority"), options.get("job_type")
    optional = {
        "RemoteUrl": remote_url,
        "LocalFile": local_file,
        "Description": options.get("description"),
        "Priority": None if priority is None else int(priority),
        "Type": None if job_type is None else int(job_type),
        "Digest": options.get("digest"),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    environment = (
        options["proxy_environment"] if "proxy_environment" in options else caller_proxy_environment()
    )
    if environment:
        body["ProxyEnvironment"] = dict(environment)
    return Call("POST", CREATE_PATH, body)


#: the variables of the caller's proxy environment CreateJob sends (SPEC §7: PRECONFIG)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def caller_proxy_environment() -> dict[str, str]:
    """This process's proxy variables (either case), read at the call: what a job created
    now follows with PRECONFIG, as curl would here."""
    names = {*PROXY_VARIABLES, *(n.upper() for n in PROXY_VARIABLES)}
    return {k: v for k, v in os.environ.items() if k in names and v}


def reply_data(result: Mapping[str, Any]) -> bytes:
    """GetReplyData's answer: the reply's bytes (its ReplyData is base64)."""
    return base64.b64decode(str(result.get("ReplyData") or ""), validate=True)


def invoke_call(job: str, method: str, **params: Any) -> Call:
    return Call("POST", job_path(job, method), params)


def state_call(job: str, state: int) -> Call:
    return invoke_call(job, "SetJobState", JobState=state)


def patch_call(path: str, props: Mapping[str, Any]) -> Call:
    return Call("PATCH", path, {wmi_name(k): json_value(v) for k, v in props.items()})


def token_body(description: str, scope: str | None, expires_after_s: int | None) -> dict[str, Any]:
    """The body of ``POST /tokens``."""
    body: dict[str, Any] = {"Description": description}
    if scope is not None:
        body["Scope"] = scope
    if expires_after_s is not None:
        body["ExpiresAfter"] = int(expires_after_s)
    return body


def tokens_call(all_users: bool) -> Call:
    return Call("GET", "/tokens?AllUsers=true" if all_users else "/tokens")


def revoke_call(token_id: str) -> Call:
    return Call("DELETE", f"/tokens/{quote(token_id, safe='')}")


def wmi_name(name: str) -> str:
    """``display_name`` → ``DisplayName``; a WMI name (``DisplayName``) stays as it is."""
    if "_" not in name and name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def json_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return value


def file_pairs(files: FilePairs) -> list[dict[str, str]]:
    pairs: Iterable[tuple[str, ...] | tuple[str, str, str | None]] = (
        files.items() if isinstance(files, Mapping) else files
    )
    out: list[dict[str, str]] = []
    for remote, local, *rest in pairs:
        entry = {"RemoteUrl": remote, "LocalFile": local}
        if rest and rest[0] is not None:
            entry["Digest"] = rest[0]
        out.append(entry)
    return out


def ranges_param(ranges: Iterable[tuple[int, int | None]]) -> list[dict[str, int]]:
    """(offset, length) pairs; a length of None runs to the end of the file."""
    return [{"InitialOffset": int(o), "Length": BG_LENGTH_TO_EOF if n is None else int(n)} for o, n in ranges]


def credential_params(
    target: AuthTarget | int, scheme: AuthScheme | int, user_name: str | None, password: str | None
) -> dict[str, Any]:
    """SetCredentials' parameters (WMI codes: Target 0 server, 1 proxy; Scheme 0 Basic …)."""
    return {"Target": int(target), "Scheme": int(scheme), "UserName": user_name, "Password": password}


def proxy_params(
    usage: ProxyUsage | int, proxy_list: str | Iterable[str] | None, bypass_list: str | Iterable[str] | None
) -> dict[str, Any]:
    """SetProxySettings' parameters; lists given as strings are sent as they are, others
    joined by spaces."""

    def text(value: str | Iterable[str] | None) -> str | None:
        return value if value is None or isinstance(value, str) else " ".join(value)

    return {"ProxyUsage": int(usage), "ProxyList": text(proxy_list), "ProxyBypassList": text(bypass_list)}


def cert_hash_param(cert_hash: str | bytes) -> list[int]:
    """A SHA-1 thumbprint (20 bytes, or 40 hex digits, ':' or spaces allowed) as WMI's
    uint8 array."""
    if isinstance(cert_hash, str):
        try:
            cert_hash = bytes.fromhex(cert_hash.removeprefix("0x").replace(":", "").replace(" ", ""))
        except ValueError:
            raise ValueError("a certificate hash is 40 hexadecimal digits") from None
    return list(cert_hash)


def headers_text(headers: str | Mapping[str, str] | None) -> str | None:
    """SetCustomHeaders' text: ``Name: value`` lines, each ended by CR LF."""
    if headers is None or isinstance(headers, str):
        return headers
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()) or None


def cert_hash(value: str | bytes) -> list[int]:
    """SetClientCertificateById's CertHash (the WMI uint8 array) of a SHA-1 thumbprint given
    as 20 bytes or as hex digits (colons allowed); the daemon checks it is 20 bytes."""
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x").replace(":", ""))
    return list(value)


def events_request(last_event_id: int | None, **options: Unpack[EventOptions]) -> tuple[str, dict[str, str]]:
    params: dict[str, str] = {}
    job, types = options.get("job"), options.get("types")
    if job is not None:
        params["Job"] = job
    if types is not None:
        params["Types"] = ",".join(types)
    if options.get("all_users"):
        params["AllUsers"] = "true"
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(int(last_event_id))
    return "/events" + _query(params), headers


# -- answers --------------------------------------------------------------------------------------


def bits_job(data: Mapping[str, Any]) -> BitsJob:
    from openbits.jobs import BitsJob

    return BitsJob.from_cim(data)


def error_info(data: Mapping[str, Any]) -> JobErrorInfo:
    from openbits.jobs import JobErrorInfo

    return JobErrorInfo.from_cim(data)


def job_event(event_id: int | None, event_type: str, data: Any) -> JobEvent:
    from openbits.jobs import JobEvent

    return JobEvent.from_sse(event_id, event_type, data)


def timed_out(job: str, state: JobState) -> TimeoutError:
    return TimeoutError(f"timed out waiting for {job}: it is {state.name}")


def job_failed(info: JobErrorInfo, job_id: str) -> BitsError:
    error = info.exception()
    where = f" ({info.remote_url} -> {info.local_file})" if info.remote_url else ""
    error.add_note(f"job {job_id} went to ERROR{where} and was cancelled")
    return error


def not_transferred(job: BitsJob) -> BitsError:
    return InvalidState(f"job {job.job_id} became {job.state.name} before it was transferred")


# -- Server-Sent Events ---------------------------------------------------------------------------


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


class SseDecoder:
    """Bytes of an event stream in (``feed``), events out (``pop``); ``last_event_id``: the
    id of the last event received, or the one the stream was opened after."""

    def __init__(self, last_event_id: int | None) -> None:
        self.last_event_id = last_event_id
        self._parser = SseParser()
        self._lines: list[str] = []  # read, not yet parsed (in reverse)
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        *complete, self._buffer = (self._buffer + chunk).split(b"\n")
        lines = []
        for raw in complete:
            text = raw.decode("utf-8", "replace")
            lines.extend((text[:-1] if text.endswith("\r") else text).split("\r"))  # (a lone CR too)
        self._lines[:0] = reversed(lines)

    def pop(self, opening: bool = False) -> tuple[bool, StreamEvent | None]:
        """(True, the next event) — with ``opening``, (True, None) at the first blank line
        before one; (False, None) when more bytes are needed."""
        while self._lines:
            line = self._lines.pop()
            event = self._parser.feed(line)
            last = self._parser.last_event_id
            if last is not None and last.isdigit():
                self.last_event_id = int(last)
            if event is not None or (opening and not line):
                return True, event
        return False, None


def reconnect_pauses(reconnect_timeout: float, deadline: float | None) -> Iterator[float]:
    """The pauses between attempts to reopen an event stream: from 50 ms to 2 s, for up to
    ``reconnect_timeout`` seconds (then it ends: the caller raises its last error), or
    TimeoutError when the caller's ``deadline`` comes first."""
    give_up = time.monotonic() + reconnect_timeout
    if deadline is not None:
        give_up = min(give_up, deadline)
    delay = RECONNECT_FIRST_DELAY_S
    while True:
        left = give_up - time.monotonic()
        if left <= 0:
            if deadline is not None and deadline <= give_up:
                raise TimeoutError("no event before the timeout (the daemon is away)")
            return
        yield min(delay, left)
        delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
