"""The Python clients of the daemon's API: :class:`Client` (synchronous) and
:class:`AsyncClient` (asyncio), over the Unix socket or over TCP with a bearer token.

Both have the same methods, one name per verb, answering typed objects:
:class:`~openbits.jobs.BitsJob` (``create_job``, ``get_job``, ``list_jobs``,
``set_properties``, ``wait``, ``transfer``), :class:`~openbits.jobs.JobErrorInfo`
(``get_error``) and :class:`~openbits.jobs.JobEvent` (``job_events``); each keeps the
JSON it was built from as ``raw``.  ``query`` (a WQL projection), ``invoke`` (any method
by its WMI name), ``events`` (raw Server-Sent Events), the policy and the tokens answer
the JSON as the API sends it; the verbs (``add_file``, ``resume``, ``cancel``,
``set_*`` …) their ReturnValue or nothing.  Failing calls raise the BitsError subclass
rebuilt from the HRESULT of the error body; :class:`DaemonUnavailable` when nothing
answers.  Requests and answers are built in ``openbits._wire``; ``wait`` and ``transfer``
are the flows of ``openbits._flows``, which both clients drive.

The sync client is stdlib only (``openbits._http1``: not http.client, whose email package
costs ~30 ms of start-up; ssl only for an https daemon), so the CLI starts quickly: the typed
objects (``openbits.jobs``) load on first use, AsyncClient lives in ``openbits.aio``
(``openbits.client.AsyncClient`` and ``openbits.AsyncClient`` load it on first use), and
aiohttp is imported when an AsyncClient first connects.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from openbits import _flows as flows
from openbits import _http1 as http1
from openbits import _wire as wire
from openbits._identity import IdentityCalls
from openbits._wire import (
    WAIT_UNTIL,
    DaemonUnavailable,
    FilePairs,
    Progress,
    SseDecoder,
    SseParser,
    StreamEvent,
    wmi_name,
)
from openbits.model import POLICY_PATH, JobState

if TYPE_CHECKING:  # (imported where used: `import openbits.client` stays light for the CLI)
    from openbits.jobs import BitsJob, JobErrorInfo, JobEvent

T = TypeVar("T")


# -- the synchronous client ----------------------------------------------------------------------


class Client(IdentityCalls, wire.ClientBase):
    """The daemon's API, synchronously: ``Client()`` finds the daemon on ``socket``, else at
    ``url`` (``http://HOST:PORT`` or ``https://…``, each request carrying
    ``Authorization: Bearer <token>``; ``cacert``: the CA file an https daemon's
    certificate is checked against, else the system's), else through $OPENBITS_SOCKET, else
    $OPENBITS_URL, $OPENBITS_TOKEN and $OPENBITS_CACERT, else on the default socket.
    ``timeout``: the longest wait for an answer, in seconds.

    One connection, kept alive, serves the calls (a client is not for several threads at
    once); each event stream has a connection of its own.
    """

    _conn: http1.Connection | None = None  # (connected on first use)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> http1.Connection:
        """A new, connected connection; DaemonUnavailable when nothing answers."""
        ep = self._endpoint
        try:
            sock = _open_socket(ep, timeout)
        except OSError as e:
            unavailable = ep.unavailable(e)
            if unavailable is not None:
                raise unavailable from None
            raise
        return http1.Connection(sock, ep.host_header)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call: its JSON answer, or the BitsError of a failing one."""
        data, content_type = wire.json_body(body)
        headers = self._endpoint.headers(content_type)
        url = self._endpoint.prefix + path
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect(self.timeout)
            try:
                self._conn.request(method, url, data, headers)
                resp = self._conn.response(method)
                payload = resp.read()
                if resp.will_close:
                    self.close()
                break
            except (BrokenPipeError, ConnectionResetError):  # (http1.RemoteDisconnected too)
                self.close()  # a kept-alive connection went away: one fresh try
                if attempt:
                    raise
            except OSError as e:  # (the connection reconnects by itself after a close)
                self.close()
                unavailable = self._endpoint.unavailable(e)
                if unavailable is not None:
                    raise unavailable from None
                raise
            except BaseException:  # (interrupted mid-call: the connection is half used)
                self.close()
                raise
        return wire.answer(resp.status, payload)

    def _call(self, call: wire.Call) -> Any:
        return self.request(call.method, call.path, call.body)

    def _drive(self, flow: flows.Flow[T], progress: Progress | None = None) -> T:
        """Run a flow of the client core: its calls, its job's events, its reports."""
        run = flows.FlowRun(flow)
        events: JobEventStream | None = None
        try:
            while (step := run.step()) is not None:
                try:
                    if isinstance(step, wire.Call):
                        run.answer(self._call(step))
                    elif isinstance(step, flows.Subscribe):
                        events = self.job_events(job=step.job)
                    elif isinstance(step, flows.NextEvent) and events is not None:
                        events.timeout = step.timeout
                        run.answer(next(events))
                    elif isinstance(step, flows.Report) and progress is not None:
                        progress(step.job)
                except BaseException as e:  # (thrown into the flow, which may clean up)
                    run.fail(e)
            return run.result
        finally:
            if events is not None:
                events.close()

    # -- jobs ------------------------------------------------------------------------------------

    def create_job(
        self,
        display_name: str = "",
        remote_url: str | None = None,
        local_file: str | None = None,
        **options: Unpack[wire.JobOptions],
    ) -> BitsJob:
        """CreateJob: the new job, SUSPENDED unless ``suspend=False`` (with a file: resumed
        at once); ``description``, ``priority``, ``job_type``."""
        job_id = str(
            self._call(wire.create_call(display_name, remote_url, local_file, **self._job_options(options)))[
                "JobId"
            ]
        )
        return self.get_job(job_id)

    def get_job(self, job: str, **options: Unpack[wire.GetJobOptions]) -> BitsJob:
        """One job, by JobId or display name (``include_finished``: also an ACKNOWLEDGED or
        CANCELLED one, for 7 days); ``files=False`` leaves out its files (cheap to poll).

        With ``wait_while`` (job states) the daemon answers only once the job is in none of
        them, or after ``wait_timeout`` seconds (its default: 30): a long poll."""
        return wire.bits_job(self._call(wire.get_job_call(job, self.timeout, **options)))

    def list_jobs(self, all_users: bool = False, where: str | None = None) -> list[BitsJob]:
        """Your jobs (``all_users``: everyone's, for an administrator); ``where``: a WQL
        condition, e.g. ``"State = 4 OR DisplayName LIKE 'nightly%'"``."""
        return [wire.bits_job(j) for j in self._call(wire.list_call(all_users, where))]

    def query(self, wql: str, all_users: bool = False) -> list[dict[str, Any]]:
        """``SELECT * | p1, p2 FROM BitsClientJob [WHERE …]``: the matching instances as
        JSON, with only the selected properties."""
        result: list[dict[str, Any]] = self._call(wire.query_call(wql, all_users))
        return result

    def set_properties(self, job: str, **props: Any) -> BitsJob:
        """PATCH read/write properties, by snake_case or WMI name (``display_name=`` or
        ``DisplayName=``, ``priority=JobPriority.HIGH``, ``minimum_retry_delay=60``): all or
        nothing.  The job after the change."""
        return wire.bits_job(self._call(wire.patch_call(wire.job_path(job), props)))

    def set_max_connections(self, job: str, connections: int) -> BitsJob:
        """MaxConnections (1-32, SPEC §9): how many of the job's files move at once."""
        return self.set_properties(job, MaxConnections=connections)

    def get_error(self, job: str) -> JobErrorInfo:
        """GetError: why the job is in ERROR (or TRANSIENT_ERROR)."""
        return wire.error_info(self.invoke(job, "GetError"))

    def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        """Any instance method by its WMI name, with its WMI parameters: its answer."""
        result: dict[str, Any] = self._call(wire.invoke_call(job, method, **params))
        return result

    def resolve(self, job: str) -> str:
        """The JobId of a JobId or display name, a name looked up as every call looks it up:
        among the jobs not finished (never the hidden ACKNOWLEDGED and CANCELLED ones)."""
        return self._drive(flows.resolve(job))

    # -- the verbs ------------------------------------------------------------------------------

    def add_file(self, job: str, remote_url: str, local_file: str, digest: str | None = None) -> None:
        """AddFile; ``digest``: the expected digest of its bytes (``sha-256=:<base64>:``,
        ``sha256:<hex>``, sha-512 too): a mismatch is BG_E_VALIDATION_FAILED."""
        self._call(wire.add_file_call(job, remote_url, local_file, digest))

    def add_file_set(self, job: str, files: FilePairs) -> None:
        """Several (RemoteUrl, LocalFile) pairs, or (RemoteUrl, LocalFile, Digest) triples
        (or a {RemoteUrl: LocalFile} mapping) in one call: all are added or none."""
        self.invoke(job, "AddFileSet", Files=wire.file_pairs(files))

    def add_file_with_ranges(
        self,
        job: str,
        remote_url: str,
        local_file: str,
        ranges: Iterable[tuple[int, int | None]],
        digest: str | None = None,
    ) -> None:
        """Only these (offset, length) pieces of the remote file, one after the other in the
        local file; a length of None runs to the end (``digest``: of the bytes written)."""
        self._call(wire.ranges_call(job, remote_url, local_file, ranges, digest))

    def set_job_state(self, job: str, state: int) -> int:
        return int(self.invoke(job, "SetJobState", JobState=state)["ReturnValue"])

    def cancel(self, job: str) -> int:
        return self.set_job_state(job, wire.CANCEL)

    def complete(self, job: str) -> int:
        """The files appear under their names; the ReturnValue (BG_S_PARTIAL_COMPLETE when
        some were not transferred)."""
        return self.set_job_state(job, wire.COMPLETE)

    def resume(self, job: str) -> int:
        return self.set_job_state(job, wire.RESUME)

    def suspend(self, job: str) -> int:
        return self.set_job_state(job, wire.SUSPEND)

    def set_maximum_download_time(self, job: str, seconds: int | timedelta | None) -> None:
        """None: the default (90 days)."""
        self.invoke(job, "SetMaximumDownloadTime", MaximumDownloadTime=wire.json_value(seconds))

    def set_custom_headers(self, job: str, headers: str | Mapping[str, str] | None) -> None:
        """Headers sent with every request of the job: ``{"Name": "value"}`` or
        ``"Name: value\\r\\n"`` lines; None removes them."""
        self.invoke(job, "SetCustomHeaders", CustomHeaders=wire.headers_text(headers))

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

    def set_reply_file_name(self, job: str, path: str) -> None:
        """Where an upload-reply job's reply goes at Complete (an absolute path)."""
        self.invoke(job, "SetReplyFileName", ReplyFileName=path)

    def get_reply_data(self, job: str) -> bytes:
        """An upload-reply job's reply, once TRANSFERRED (also after Complete): up to 1 MiB
        (BG_E_TOO_LARGE above: read its ReplyFileName after Complete); b"" when the server
        application sent none."""
        return wire.reply_data(self.invoke(job, "GetReplyData"))

    def set_client_certificate_by_id(
        self, job: str, store_location: int, store_name: str, cert_hash: str | bytes
    ) -> None:
        """Present this certificate to HTTPS servers that ask for one: the one in the store
        (CertStoreLocation 0 current user, 1 local machine; the store's name) whose SHA-1
        thumbprint is ``cert_hash`` (20 bytes, or hex digits).  Raises CRYPT_E_NOT_FOUND
        (0x80092004) when the store has no such certificate, NTE_NO_KEY (0x8009000D) when it
        has not its key."""
        self.invoke(
            job,
            "SetClientCertificateById",
            CertStoreLocation=int(store_location),
            StoreName=store_name,
            CertHash=wire.cert_hash(cert_hash),
        )

    def set_client_certificate_by_name(
        self, job: str, store_location: int, store_name: str, subject_name: str
    ) -> None:
        """As ``set_client_certificate_by_id``, the certificate whose common name (or whole
        subject) is ``subject_name``, in any case."""
        self.invoke(
            job,
            "SetClientCertificateByName",
            CertStoreLocation=int(store_location),
            StoreName=store_name,
            SubjectName=subject_name,
        )

    def remove_client_certificate(self, job: str) -> bool:
        """Present none any more; False when the job had none (S_FALSE)."""
        return int(self.invoke(job, "RemoveClientCertificate").get("ReturnValue", 0)) == 0

    # -- the service -------------------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """BitsServicePolicy: the bandwidth and scheduling settings in force."""
        result: dict[str, Any] = self.request("GET", POLICY_PATH)
        return result

    def set_policy(self, **props: Any) -> dict[str, Any]:
        """Change settings (administrators), by snake_case or WMI name:
        ``set_policy(max_bandwidth="10M")``.  The policy after the change."""
        result: dict[str, Any] = self._call(wire.patch_call(POLICY_PATH, props))
        return result

    # -- bearer tokens of the TCP listener (over the Unix socket only) ----------------------

    def create_token(
        self, description: str = "", scope: str | None = None, expires_after_s: int | None = None
    ) -> dict[str, Any]:
        """A token acting as you on the TCP listener: ``{"TokenId", "Token", …}``; the only
        time the token is shown. ``scope``: read, submit (the daemon's default) or admin;
        ``expires_after_s``: seconds until it expires (None: never)."""
        result: dict[str, Any] = self.request(
            "POST", "/tokens", wire.token_body(description, scope, expires_after_s)
        )
        return result

    def tokens(self, all_users: bool = False) -> list[dict[str, Any]]:
        """Your tokens (ids and descriptions; never the tokens)."""
        result: list[dict[str, Any]] = self._call(wire.tokens_call(all_users))
        return result

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(wire.revoke_call(token_id))
        return result

    # -- live events (GET /events) ----------------------------------------------------------

    def events(self, last_event_id: int | None = None, **options: Unpack[wire.StreamOptions]) -> EventStream:
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
        path, headers = wire.events_request(last_event_id, **wire.event_filter(options))
        conn = self._connect(self.timeout)
        try:
            conn.request("GET", self._endpoint.prefix + path, None, self._endpoint.headers(headers))
            resp = conn.response()
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            payload = resp.read()
            conn.close()
            wire.answer(resp.status, payload)
        stream = EventStream(conn, resp, options.get("timeout"), last_event_id)
        stream.start(self.timeout)
        return stream

    def job_events(
        self, last_event_id: int | None = None, **options: Unpack[wire.JobEventOptions]
    ) -> JobEventStream:
        """``events()`` as typed :class:`~openbits.jobs.JobEvent` s (``event.job`` a BitsJob)::

            with client.job_events(job=job_id) as events:
                for event in events:
                    print(event.id, event.type, event.job.state.name if event.job else "")

        ``reconnect`` (on by default, in both clients): when the stream ends (the daemon
        restarted, or it cut off a client that fell behind), connect again with
        Last-Event-ID, so that no event is missed or repeated, backing off from 50 ms to
        2 s while no daemon answers, for up to ``reconnect_timeout`` seconds (then
        DaemonUnavailable).  ``reconnect=False``: the iterator ends with the stream.
        ``timeout``: the longest wait for the next event (TimeoutError)."""
        stream = self.events(last_event_id, **wire.event_filter(options), timeout=options.get("timeout"))
        return JobEventStream(self, stream, options)

    # -- waiting and transferring --------------------------------------------------------------

    def wait(
        self,
        job: str,
        timeout: float | None = None,
        *,
        until: Collection[JobState] = WAIT_UNTIL,
        progress: Progress | None = None,
    ) -> BitsJob:
        """Until the job is TRANSFERRED, in ERROR, ACKNOWLEDGED or CANCELLED (``until``:
        other states): the job then.  It follows the job's events, so it returns at once; a
        daemon without events is long polled.  ``timeout`` (seconds): TimeoutError after it.
        ``progress(job)``: called with the job after each change.  A display name is
        looked up as everywhere else: among the jobs not finished."""
        flow = flows.follow(job, frozenset(until), flows.deadline_of(timeout), flows.poll_s(progress))
        return self._drive(flow, progress)

    def transfer(
        self,
        files: FilePairs,
        display_name: str = "",
        *,
        progress: Progress | None = None,
        **options: Unpack[wire.TransferOptions],
    ) -> BitsJob:
        """Download ``files`` ((RemoteUrl, LocalFile) pairs, or a mapping) in one job: create,
        add, resume, wait, complete.  The files are in place when it returns the
        ACKNOWLEDGED job.  ``progress(job)`` is called with the job after each change.
        Options: the job's ``description``, ``priority`` and ``job_type``; ``timeout``
        (seconds); ``wait=False``: return the job once it is resumed (QUEUED).

        On failure the job is cancelled (its temporary files removed) and the error
        raised: the job's own error (``BG_E_HTTP_ERROR_404``, …) as its BitsError
        subclass, TimeoutError after ``timeout`` seconds, or whatever interrupted it
        (KeyboardInterrupt).  When the daemon cannot be told to cancel (it went away), a
        note of the error names the job and how to finish it."""
        spec = flows.TransferSpec.of(files, display_name, options)
        spec.job.update(self._job_options(spec.job))  # (not to a daemon over TCP: its proxy environment)
        if not options.get("wait", True):
            return self.get_job(self._drive(flows.start(spec)))
        deadline = flows.deadline_of(options.get("timeout"))
        return self._drive(flows.transfer(spec, deadline, flows.poll_s(progress)), progress)


class EventStream(Iterator[StreamEvent]):
    """The open stream of ``Client.events()``: iterate it; ``close()`` it (or use ``with``)."""

    def __init__(
        self,
        conn: http1.Connection,
        resp: http1.Response,
        timeout: float | None,
        last_event_id: int | None = None,
    ) -> None:
        self.timeout = timeout
        self._conn = conn
        self._resp = resp
        self._sse = SseDecoder(last_event_id)
        self._ahead: StreamEvent | None = None

    @property
    def last_event_id(self) -> int | None:
        """The id of the last event received, or the newest id when the stream opened
        (pass it to ``events()`` to resume without missing any)."""
        return self._sse.last_event_id

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
        while not (popped := self._sse.pop(opening))[0]:
            self._fill(deadline)
        return popped[1]

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
        except (OSError, ValueError):  # (http1.ProtocolError is an OSError)
            raw = b""  # the daemon went away: the stream ends
        if not raw:
            self.close()
            raise StopIteration
        self._sse.feed(raw)

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobEventStream(Iterator["JobEvent"]):
    """The open stream of ``Client.job_events()``: iterate it; ``close()`` it (or use
    ``with``).  ``timeout``: the longest wait for the next event (TimeoutError)."""

    def __init__(self, client: Client, stream: EventStream, options: wire.JobEventOptions) -> None:
        self.reconnect = options.get("reconnect", True)
        self.reconnect_timeout = options.get("reconnect_timeout", 30.0)
        self.timeout = stream.timeout
        self._client = client
        self._stream = stream
        self._filter = wire.event_filter(options)
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
            with contextlib.suppress(StopIteration):
                event = next(self._stream)
                return wire.job_event(event.id, event.event, event.data)
            if not self.reconnect:
                break
            self._reopen(deadline)
        self.close()
        raise StopIteration

    def _reopen(self, deadline: float | None) -> None:
        """Connect again after the last event received, waiting for a daemon to answer."""
        pauses = wire.reconnect_pauses(self.reconnect_timeout, deadline)
        while True:
            try:
                self._stream = self._client.events(self.last_event_id, **self._filter)
                return
            except (DaemonUnavailable, ConnectionError, http1.ProtocolError):
                pause = next(pauses, None)
                if pause is None:
                    raise
                time.sleep(pause)

    def close(self) -> None:
        self._closed = True
        self._stream.close()

    def __enter__(self) -> JobEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_socket(ep: wire.Endpoint, timeout: float) -> socket.socket:
    """A socket connected to the daemon: its Unix socket, or TCP (TLS for https: ssl is
    imported only then)."""
    if ep.socket is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(ep.socket)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((ep.host, ep.port), timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ep.scheme == "https":
            return ep.tls_context().wrap_socket(sock, server_hostname=ep.host)
    except BaseException:
        sock.close()
        raise
    return sock


def __getattr__(name: str) -> Any:
    """``openbits.client.AsyncClient`` (and its streams) live in ``openbits.aio``, loaded on
    first use: the CLI, which needs only Client, never compiles nor imports them."""
    if name in ("AsyncClient", "AsyncEventStream", "AsyncJobEventStream"):
        from openbits import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'openbits.client' has no attribute {name!r}")


__all__ = [
    "WAIT_UNTIL",
    "Client",
    "DaemonUnavailable",
    "EventStream",
    "FilePairs",
    "JobEventStream",
    "Progress",
    "SseParser",
    "StreamEvent",
    "wmi_name",
]
