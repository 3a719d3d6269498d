"""A small synchronous client of the daemon's API over its Unix socket.

stdlib only (http.client), so the CLI starts in ~30 ms.  Failing calls raise the
BitsError subclass rebuilt from the HRESULT of the error body.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from openbits.config import client_socket_path
from openbits.errors import BitsError, HResult

CLASS = "/root/microsoft/bits/BitsClientJob"


class DaemonUnavailable(Exception):
    """No daemon answers on the socket."""


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
    def __init__(self, socket: str | None = None, timeout: float = 60.0) -> None:
        self.socket = client_socket_path(socket)
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(self.socket, self.timeout)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                payload = resp.read()
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                self.close()
                raise DaemonUnavailable(
                    f"no openbits daemon on {self.socket} ({e.strerror}); start one with `openbits serve`"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection went away: one fresh try
                if attempt:
                    raise
        result = json.loads(payload) if payload else None
        if resp.status >= 400:
            if isinstance(result, dict) and "ReturnValue" in result:
                raise BitsError.from_hresult(int(result["ReturnValue"]), result.get("Message"))
            raise BitsError(f"HTTP {resp.status}", hresult=HResult.E_FAIL)
        return result

    # -- the verbs ------------------------------------------------------------------------

    def list_jobs(self, all_users: bool = False, where: str | None = None) -> list[dict[str, Any]]:
        """Your jobs (``all_users``: everyone's, for an administrator); ``where``: a WQL
        condition, e.g. ``"State = 4 OR DisplayName LIKE 'nightly%'"``."""
        params = {"AllUsers": "true"} if all_users else {}
        if where is not None:
            params["Where"] = where
        query = "?" + urlencode(params) if params else ""
        jobs: list[dict[str, Any]] = self.request("GET", CLASS + query)
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
        params = {"IncludeFinished": "true"} if include_finished else {}
        if not files:
            params["Files"] = "false"
        waits = ",".join(str(int(s)) for s in wait_while)
        if waits:
            # (within the socket's own timeout)
            wait = min(30.0 if wait_timeout is None else wait_timeout, self.timeout - 1)
            params["WaitWhile"] = waits
            params["WaitTimeout"] = f"{max(0.0, wait):.3f}"
        query = "?" + urlencode(params) if params else ""
        result: dict[str, Any] = self.request("GET", f"{CLASS}/{quote(job, safe='')}{query}")
        return result

    def create_job(self, **params: Any) -> str:
        result = self.request("POST", f"{CLASS}/CreateJob", params)
        return str(result["JobId"])

    def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{CLASS}/{quote(job, safe='')}/{method}", params)
        return result

    def add_file(self, job: str, remote_url: str, local_file: str) -> None:
        self.invoke(job, "AddFile", RemoteUrl=remote_url, LocalFile=local_file)

    def add_file_set(self, job: str, files: list[tuple[str, str]]) -> None:
        """Several (RemoteUrl, LocalFile) pairs in one call: all are added or none."""
        self.invoke(job, "AddFileSet", Files=[{"RemoteUrl": r, "LocalFile": loc} for r, loc in files])

    def set_job_state(self, job: str, state: int) -> int:
        return int(self.invoke(job, "SetJobState", JobState=state)["ReturnValue"])

    def cancel(self, job: str) -> int:
        return self.set_job_state(job, 0)

    def complete(self, job: str) -> int:
        return self.set_job_state(job, 1)

    def resume(self, job: str) -> int:
        return self.set_job_state(job, 2)

    def suspend(self, job: str) -> int:
        return self.set_job_state(job, 3)

    def get_error(self, job: str) -> dict[str, Any]:
        return self.invoke(job, "GetError")

    def set_properties(self, job: str, **props: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PATCH", f"{CLASS}/{quote(job, safe='')}", props)
        return result

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
        ``last_event_id=stream.last_event_id``. ``timeout``: the longest wait for the next
        event (``TimeoutError``, the stream is closed); None waits for ever. ``stream.timeout``
        may be changed between events. Raises BitsError (E_NOTIMPL from a daemon without
        events) or DaemonUnavailable."""
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
        conn = _UnixConnection(self.socket, self.timeout)
        try:
            conn.request("GET", "/events" + ("?" + urlencode(params) if params else ""), headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            conn.close()
            raise DaemonUnavailable(
                f"no openbits daemon on {self.socket} ({e.strerror}); start one with `openbits serve`"
            ) from None
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            payload = resp.read()
            conn.close()
            result = json.loads(payload) if payload else None
            if isinstance(result, dict) and "ReturnValue" in result:
                raise BitsError.from_hresult(int(result["ReturnValue"]), result.get("Message"))
            raise BitsError(f"HTTP {resp.status}", hresult=HResult.E_FAIL)
        stream = EventStream(conn, resp, timeout, last_event_id)
        stream.start(self.timeout)
        return stream


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
