"""A real openbits daemon process on a real Unix socket, for integration tests.

``Daemon`` starts ``python -m openbits serve`` with its own state dir and socket,
waits until the socket answers, and offers the three ways in that users have: the
Python client, raw HTTP (for malformed requests) and the CLI as a subprocess.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from openbits.client import Client
from openbits.model import JobState
from tests.support.nginx import free_port

CLASS = "/root/microsoft/bits/BitsClientJob"


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, wait for it and close its pipes."""
    with proc:  # (its exit closes the pipes and waits)
        if proc.poll() is None:
            proc.kill()


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


class Daemon:
    def __init__(
        self,
        state_dir: Path,
        config: dict[str, Any] | None = None,
        socket: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.env = env or {}  # extra environment of the daemon process
        self.args = list(args)  # extra arguments of ``serve``
        self.state_dir = Path(state_dir)
        self.socket = socket or str(self.state_dir / "openbits.sock")
        self.config = config or {}
        self.log_path = self.state_dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    # -- process --------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "openbits",
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--socket",
            self.socket,
            *self.args,
        ]
        if self.config:
            config_path = self.state_dir / "openbits.toml"
            config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in self.config.items()))
            cmd += ["--config", str(config_path)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = dict(os.environ, OPENBITS_LOG_LEVEL="DEBUG", **self.env)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket)
            except OSError:
                return False
            finally:
                probe.close()
            return True

        try:
            wait_until(ready, timeout, "the daemon's socket")
        except BaseException:
            reap(self.proc)  # (a daemon that did not answer in time is not left running)
            self.proc = None
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop on signal {sig}:\n{self.log()}") from None
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- ways in --------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def api(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        """One HTTP request; (status, decoded JSON body)."""
        conn = UnixHTTP(self.socket)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, (json.loads(payload) if payload else None)

    def cli(
        self, *args: str, prog: str = "openbits", check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        module = "openbits" if prog == "openbits" else "openbits.cli.bitsadmin"
        env = dict(os.environ, OPENBITS_SOCKET=self.socket)
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{prog} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    # -- conveniences ---------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.get_job(job_id, include_finished=True).raw)

    def wait_state(
        self, job_id: str, states: Iterable[JobState] | JobState, timeout: float = 30.0
    ) -> dict[str, Any]:
        wanted = {states} if isinstance(states, JobState) else set(states)
        seen: list[str] = []

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            name = JobState(job["State"]).name
            if not seen or seen[-1] != name:
                seen.append(name)
            return job if JobState(job["State"]) in wanted else None

        try:
            return wait_until(reached, timeout, f"{job_id} to reach {sorted(s.name for s in wanted)}")
        except AssertionError as e:
            raise AssertionError(f"{e}; states seen: {seen}\n{self.log()[-4000:]}") from None


def start_listening(
    state_dir: Path,
    config: dict[str, Any] | None = None,
    *,
    on_command_line: bool = False,
    attempts: int = 5,
    **kw: Any,
) -> tuple[Daemon, int]:
    """A started daemon also listening on 127.0.0.1:PORT (in its config, or as ``serve
    --listen`` with ``on_command_line``), and PORT.

    The port was merely free a moment ago (``free_port``), so another pytest-xdist worker
    may take it before the daemon binds it: then, and only then, it starts again on
    another port."""
    for attempt in range(attempts):
        port = free_port()
        listen = f"127.0.0.1:{port}"
        if on_command_line:
            daemon = Daemon(state_dir, config, args=("--listen", listen), **kw)
        else:
            daemon = Daemon(state_dir, {**(config or {}), "listen": listen}, **kw)
        seen = len(daemon.log())  # (the log of an earlier attempt stays in the file)
        try:
            daemon.start()
        except AssertionError:
            if attempt == attempts - 1 or "cannot listen on" not in daemon.log()[seen:]:
                raise
            continue
        return daemon, port
    raise AssertionError("unreachable")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "state")
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty destination directory."""
    path = tmp_path / "dest"
    path.mkdir()
    return path
