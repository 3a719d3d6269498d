"""A small synchronous client of the daemon's API over its Unix socket.

stdlib only (http.client), so the CLI starts in ~30 ms.  Failing calls raise the
BitsError subclass rebuilt from the HRESULT of the error body.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterable
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
