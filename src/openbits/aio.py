"""The asyncio client of the daemon's API: :class:`AsyncClient`, on aiohttp, with the
same methods as :class:`openbits.client.Client` (as coroutines) and the same ways to find
the daemon.  Requests, answers and errors are the client core's (``openbits._wire``), and
so are the flows (wait, transfer: ``openbits._flows``), driven here; aiohttp is imported
when a client first connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from openbits import _flows as flows
from openbits import _wire as wire
from openbits._identity import AsyncIdentityCalls
from openbits._wire import WAIT_UNTIL, DaemonUnavailable, FilePairs, Progress, SseDecoder, StreamEvent
from openbits.jobs import BitsJob, JobErrorInfo, JobEvent
from openbits.model import POLICY_PATH, JobState

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")


async def _report(progress: Progress | None, job: BitsJob) -> None:
    if progress is not None:
        result = progress(job)
        if inspect.isawaitable(result):
            await result


class AsyncClient(AsyncIdentityCalls, wire.ClientBase):
    """The daemon's API for asyncio, on aiohttp: the same methods as :class:`Client`, as
    coroutines, and the same ways to find the daemon (``socket``, ``url`` + ``token`` (and
    ``cacert`` for https), $OPENBITS_SOCKET, $OPENBITS_URL + $OPENBITS_TOKEN (+
    $OPENBITS_CACERT), the default socket)::

        async with AsyncClient() as client:
            job = await client.transfer({"https://host/a.iso": "/srv/a.iso"})

    A pool of connections serves the calls (concurrent calls are fine); ``await close()``
    (or ``async with``) releases them.
    """

    _session: aiohttp.ClientSession | None = None  # (opened on first use)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp  # (here, not at import time: `import openbits` stays fast)

            ep = self._endpoint
            connector: aiohttp.BaseConnector
            if ep.socket is not None:
                connector = aiohttp.UnixConnector(path=ep.socket)
            elif ep.scheme == "https":
                connector = aiohttp.TCPConnector(ssl=ep.tls_context())
            else:
                connector = aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    def _url(self, path: str) -> Any:
        from yarl import URL

        base = "http://localhost" if self._endpoint.socket is not None else self._endpoint.url
        return URL(f"{base}{path}", encoded=True)

    def _connect_error(self, error: Exception) -> Exception:
        os_error = getattr(error, "os_error", None)
        unavailable = self._endpoint.unavailable(os_error) if isinstance(os_error, OSError) else None
        return unavailable if unavailable is not None else error

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call: its JSON answer, or the BitsError of a failing one."""
        import aiohttp

        data, content_type = wire.json_body(body)
        headers = self._endpoint.headers(content_type)
        for attempt in (0, 1):
            try:
                async with self._http().request(method, self._url(path), data=data, headers=headers) as resp:
                    status, payload = resp.status, await resp.read()
                break
            except aiohttp.ClientConnectorError as e:
                raise self._connect_error(e) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt:  # (a kept-alive connection that went away gets one fresh try)
                    raise self._endpoint.closed(e) from None
        return wire.answer(status, payload)

    async def _call(self, call: wire.Call) -> Any:
        return await self.request(call.method, call.path, call.body)

    async def _drive(self, flow: flows.Flow[T], progress: Progress | None = None) -> T:
        """Run a flow of the client core; ``progress`` may be a coroutine function."""
        run = flows.FlowRun(flow)
        events: AsyncJobEventStream | None = None
        try:
            while (step := run.step()) is not None:
                try:
                    if isinstance(step, wire.Call):
                        run.answer(await self._call(step))
                    elif isinstance(step, flows.Subscribe):
                        events = await self.job_events(job=step.job).open()
                    elif isinstance(step, flows.NextEvent) and events is not None:
                        events.timeout = step.timeout
                        run.answer(await events.__anext__())
                    elif isinstance(step, flows.Report):
                        await _report(progress, step.job)
                except BaseException as e:  # (thrown into the flow, which may clean up)
                    run.fail(e)
            return run.result
        finally:
            if events is not None:
                await events.aclose()

    async def _open_stream(self, path: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None)
        try:
            resp = await self._http().get(
                self._url(path), headers=self._endpoint.headers(headers), timeout=timeout
            )
        except aiohttp.ClientConnectorError as e:
            raise self._connect_error(e) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise self._endpoint.closed(e) from None
        if resp.status >= 400:
            payload = await resp.read()
            resp.release()
            wire.answer(resp.status, payload)
        return resp

    # -- jobs ------------------------------------------------------------------------------------

    async def create_job(
        self,
        display_name: str = "",
        remote_url: str | None = None,
        local_file: str | None = None,
        **options: Unpack[wire.JobOptions],
    ) -> BitsJob:
        call = wire.create_call(display_name, remote_url, local_file, **self._job_options(options))
        return await self.get_job(str((await self._call(call))["JobId"]))

    async def get_job(self, job: str, **options: Unpack[wire.GetJobOptions]) -> BitsJob:
        return BitsJob.from_cim(await self._call(wire.get_job_call(job, self.timeout, **options)))

    async def list_jobs(self, all_users: bool = False, where: str | None = None) -> list[BitsJob]:
        return [BitsJob.from_cim(j) for j in await self._call(wire.list_call(all_users, where))]

    async def query(self, wql: str, all_users: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call(wire.query_call(wql, all_users))
        return result

    async def set_properties(self, job: str, **props: Any) -> BitsJob:
        return BitsJob.from_cim(await self._call(wire.patch_call(wire.job_path(job), props)))

    async def set_max_connections(self, job: str, connections: int) -> BitsJob:
        """MaxConnections (1-32, SPEC §9): how many of the job's files move at once."""
        return await self.set_properties(job, MaxConnections=connections)

    async def get_error(self, job: str) -> JobErrorInfo:
        return JobErrorInfo.from_cim(await self.invoke(job, "GetError"))

    async def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(wire.invoke_call(job, method, **params))
        return result

    async def resolve(self, job: str) -> str:
        return await self._drive(flows.resolve(job))

    # -- the verbs --------------------------------------------------------------------------------

    async def add_file(self, job: str, remote_url: str, local_file: str, digest: str | None = None) -> None:
        await self._call(wire.add_file_call(job, remote_url, local_file, digest))

    async def add_file_set(self, job: str, files: FilePairs) -> None:
        await self.invoke(job, "AddFileSet", Files=wire.file_pairs(files))

    async def add_file_with_ranges(
        self,
        job: str,
        remote_url: str,
        local_file: str,
        ranges: Iterable[tuple[int, int | None]],
        digest: str | None = None,
    ) -> None:
        await self._call(wire.ranges_call(job, remote_url, local_file, ranges, digest))

    async def set_job_state(self, job: str, state: int) -> int:
        return int((await self.invoke(job, "SetJobState", JobState=state))["ReturnValue"])

    async def cancel(self, job: str) -> int:
        return await self.set_job_state(job, wire.CANCEL)

    async def complete(self, job: str) -> int:
        return await self.set_job_state(job, wire.COMPLETE)

    async def resume(self, job: str) -> int:
        return await self.set_job_state(job, wire.RESUME)

    async def suspend(self, job: str) -> int:
        return await self.set_job_state(job, wire.SUSPEND)

    async def set_maximum_download_time(self, job: str, seconds: int | timedelta | None) -> None:
        await self.invoke(job, "SetMaximumDownloadTime", MaximumDownloadTime=wire.json_value(seconds))

    async def set_custom_headers(self, job: str, headers: str | Mapping[str, str] | None) -> None:
        await self.invoke(job, "SetCustomHeaders", CustomHeaders=wire.headers_text(headers))

    async def set_security_flags(self, job: str, flags: int | None) -> None:
        await self.invoke(job, "SetSecurityFlags", SecurityFlags=None if flags is None else int(flags))

    async def set_notify_flags(self, job: str, flags: int | None) -> None:
        await self.invoke(job, "SetNotifyFlags", NotifyFlags=None if flags is None else int(flags))

    async def set_notify_cmd_line(self, job: str, program: str | None, parameters: str | None = None) -> None:
        await self.invoke(job, "SetNotifyCmdLine", Program=program, Parameters=parameters)

    async def set_notify_url(self, job: str, url: str | None) -> None:
        await self.invoke(job, "SetNotifyUrl", NotifyUrl=url)

    async def set_remote_name(self, job: str, local_file: str, remote_url: str) -> None:
        await self.invoke(job, "SetRemoteName", LocalFile=local_file, RemoteUrl=remote_url)

    async def replace_remote_prefix(self, job: str, old_prefix: str, new_prefix: str) -> int:
        result = await self.invoke(job, "ReplaceRemotePrefix", OldPrefix=old_prefix, NewPrefix=new_prefix)
        return int(result.get("FilesChanged", 0))

    async def get_response_headers(self, job: str, local_file: str | None = None) -> str | None:
        params = {} if local_file is None else {"LocalFile": local_file}
        headers: str | None = (await self.invoke(job, "GetResponseHeaders", **params)).get("ResponseHeaders")
        return headers

    async def set_reply_file_name(self, job: str, path: str) -> None:
        await self.invoke(job, "SetReplyFileName", ReplyFileName=path)

    async def get_reply_data(self, job: str) -> bytes:
        return wire.reply_data(await self.invoke(job, "GetReplyData"))

    async def set_client_certificate_by_id(
        self, job: str, store_location: int, store_name: str, cert_hash: str | bytes
    ) -> None:
        await self.invoke(
            job,
            "SetClientCertificateById",
            CertStoreLocation=int(store_location),
            StoreName=store_name,
            CertHash=wire.cert_hash(cert_hash),
        )

    async def set_client_certificate_by_name(
        self, job: str, store_location: int, store_name: str, subject_name: str
    ) -> None:
        await self.invoke(
            job,
            "SetClientCertificateByName",
            CertStoreLocation=int(store_location),
            StoreName=store_name,
            SubjectName=subject_name,
        )

    async def remove_client_certificate(self, job: str) -> bool:
        return int((await self.invoke(job, "RemoveClientCertificate")).get("ReturnValue", 0)) == 0

    # -- the service ---------------------------------------------------------------------------------

    async def policy(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", POLICY_PATH)
        return result

    async def set_policy(self, **props: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(wire.patch_call(POLICY_PATH, props))
        return result

    # -- bearer tokens of the TCP listener (over the Unix socket only) --------------------------------

    async def create_token(
        self, description: str = "", scope: str | None = None, expires_after_s: int | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "POST", "/tokens", wire.token_body(description, scope, expires_after_s)
        )
        return result

    async def tokens(self, all_users: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call(wire.tokens_call(all_users))
        return result

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(wire.revoke_call(token_id))
        return result

    # -- live events ------------------------------------------------------------------------------------

    def events(
        self, last_event_id: int | None = None, **options: Unpack[wire.StreamOptions]
    ) -> AsyncEventStream:
        """``GET /events`` as raw :class:`StreamEvent` s (see ``Client.events``); it connects
        at ``await stream.open()``, ``async with`` or the first ``async for``."""
        path, headers = wire.events_request(last_event_id, **wire.event_filter(options))
        return AsyncEventStream(self, path, headers, options.get("timeout"), last_event_id)

    def job_events(
        self, last_event_id: int | None = None, **options: Unpack[wire.JobEventOptions]
    ) -> AsyncJobEventStream:
        """Typed :class:`~openbits.jobs.JobEvent` s as they happen::

            async for event in client.job_events(job=job_id):
                print(event.id, event.type, event.job)

        ``reconnect`` (on by default): when the stream ends, connect again with
        Last-Event-ID (no event missed or repeated), backing off from 50 ms to 2 s while
        no daemon answers, for up to ``reconnect_timeout`` seconds (then
        DaemonUnavailable).  ``timeout``: the longest wait for the next event."""
        return AsyncJobEventStream(self, last_event_id, options)

    # -- waiting and transferring ------------------------------------------------------------------

    async def wait(
        self,
        job: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the same signature as Client.wait
        *,
        until: Collection[JobState] = WAIT_UNTIL,
        progress: Progress | None = None,
    ) -> BitsJob:
        """See ``Client.wait``; ``progress`` may be a coroutine function."""
        flow = flows.follow(job, frozenset(until), flows.deadline_of(timeout), flows.poll_s(progress))
        return await self._drive(flow, progress)

    async def transfer(
        self,
        files: FilePairs,
        display_name: str = "",
        *,
        progress: Progress | None = None,
        **options: Unpack[wire.TransferOptions],
    ) -> BitsJob:
        """See ``Client.transfer``; ``progress`` may be a coroutine function.  A cancelled
        task cancels its job."""
        spec = flows.TransferSpec.of(files, display_name, options)
        spec.job.update(self._job_options(spec.job))  # (not to a daemon over TCP: its proxy environment)
        if not options.get("wait", True):
            return await self.get_job(await self._drive(flows.start(spec)))
        deadline = flows.deadline_of(options.get("timeout"))
        return await self._drive(flows.transfer(spec, deadline, flows.poll_s(progress)), progress)


class AsyncEventStream(AsyncIterator[StreamEvent]):
    """The stream of ``AsyncClient.events()``: ``async for`` it; ``await aclose()`` it (or
    use ``async with``).  ``last_event_id`` and ``timeout`` as in :class:`EventStream`."""

    def __init__(
        self,
        client: AsyncClient,
        path: str,
        headers: Mapping[str, str],
        timeout: float | None,
        last_event_id: int | None,
    ) -> None:
        self.timeout = timeout
        self._client = client
        self._path = path
        self._headers = headers
        self._resp: aiohttp.ClientResponse | None = None
        self._ended = False
        self._sse = SseDecoder(last_event_id)
        self._ahead: StreamEvent | None = None

    @property
    def last_event_id(self) -> int | None:
        return self._sse.last_event_id

    async def open(self) -> AsyncEventStream:
        """Connect (once) and read the daemon's opening, so ``last_event_id`` is known."""
        if self._resp is None and not self._ended:
            self._resp = await self._client._open_stream(self._path, self._headers)
            saved, self.timeout = self.timeout, self._client.timeout
            try:
                self._ahead = await self._read(opening=True)
            except StopAsyncIteration:
                pass
            finally:
                self.timeout = saved
        return self

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> StreamEvent:
        await self.open()
        ahead, self._ahead = self._ahead, None
        while ahead is None:
            ahead = await self._read()
        return ahead

    async def _read(self, opening: bool = False) -> StreamEvent | None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not (popped := self._sse.pop(opening))[0]:
            await self._fill(deadline)
        return popped[1]

    async def _fill(self, deadline: float | None) -> None:
        import aiohttp

        if self._resp is None or self._ended:
            raise StopAsyncIteration
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            await self.aclose()
            raise TimeoutError("no event before the timeout")
        try:
            async with asyncio.timeout(left):
                chunk = await self._resp.content.readany()
        except TimeoutError:
            await self.aclose()
            raise TimeoutError("no event before the timeout") from None
        except (aiohttp.ClientError, OSError, ValueError):
            chunk = b""  # the daemon went away: the stream ends
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._sse.feed(chunk)

    async def aclose(self) -> None:
        self._ended = True
        if self._resp is not None:
            self._resp.close()

    async def __aenter__(self) -> AsyncEventStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJobEventStream(AsyncIterator[JobEvent]):
    """The stream of ``AsyncClient.job_events()``: ``async for`` it; ``await aclose()`` it
    (or use ``async with``)."""

    def __init__(self, client: AsyncClient, last_event_id: int | None, options: wire.JobEventOptions) -> None:
        self.timeout = options.get("timeout")
        self.reconnect = options.get("reconnect", True)
        self.reconnect_timeout = options.get("reconnect_timeout", 30.0)
        self._client = client
        self._filter = wire.event_filter(options)
        self._stream = client.events(last_event_id, **self._filter)
        self._closed = False

    @property
    def last_event_id(self) -> int | None:
        return self._stream.last_event_id

    async def open(self) -> AsyncJobEventStream:
        await self._stream.open()
        return self

    def __aiter__(self) -> AsyncJobEventStream:
        return self

    async def __anext__(self) -> JobEvent:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not self._closed:
            self._stream.timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(StopAsyncIteration):
                event = await self._stream.__anext__()
                return JobEvent.from_sse(event.id, event.event, event.data)
            if not self.reconnect:
                break
            await self._reopen(deadline)
        await self.aclose()
        raise StopAsyncIteration

    async def _reopen(self, deadline: float | None) -> None:
        pauses = wire.reconnect_pauses(self.reconnect_timeout, deadline)
        while True:
            stream = self._client.events(self.last_event_id, **self._filter)
            try:
                self._stream = await stream.open()
                return
            except (DaemonUnavailable, ConnectionError):
                pause = next(pauses, None)
                if pause is None:
                    raise
                await asyncio.sleep(pause)

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()

    async def __aenter__(self) -> AsyncJobEventStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["AsyncClient", "AsyncEventStream", "AsyncJobEventStream"]
