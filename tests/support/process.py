"""Run a test server as a real child process: launch, wait until it listens, stop it cleanly.

The authenticating servers of the integration tests (``kdc``, ``apache``, ``squid``,
``socks``) share this: each writes its own configuration, then hands the program's argv,
environment and ports to :class:`ServerProcess`, which

* starts the program in its own session (so a stop reaches every worker it forked), with
  stdout and stderr in a log file inside the server's directory;
* polls until every port accepts a TCP connection, failing at once, with the log, if the
  program exits first, and after a deadline otherwise (no sleeps as synchronisation);
* stops it with SIGTERM, and SIGKILL to its whole process group if it does not exit in time.

Apache and squid drop root for their workers (``www-data``, ``proxy``), which cannot enter
pytest's 0700 temporary directories: :func:`server_dir` makes a directory those users can
use (removed again by :func:`remove_server_dir`).

Example::

    ports = free_ports(1)
    server = ServerProcess("microsocks", ["microsocks", "-i", "127.0.0.1", "-p", str(ports[0])],
                           ports=ports, log_path=workdir / "microsocks.log")
    server.start()
    ...
    server.stop()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_CHARS = 4000


class ServerError(RuntimeError):
    """A test server failed to start or to stop."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that were free a moment ago.

    All are bound at once before any is released, so they differ from each other; another
    process can still take one before the server binds it (callers retry on "in use").
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def accepts(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listening_here(port: int, session: int) -> bool:
    """Whether the socket listening on TCP ``port`` belongs to a process of ``session`` (a
    server started in a session of its own: its pid).  Two pytest-xdist workers may
    pick the same free port: a server that lost the race exits on "in use", but until it does
    the other worker's server answers on its port, and the test would talk to that one."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as lines:
            next(lines)  # (the header)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != session:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                return True
        except OSError:
            continue  # (gone meanwhile, or not ours to read)
    return False


def find_program(name: str) -> str | None:
    """Path of ``name`` on PATH or in /usr/sbin (not on a non-root PATH), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def server_dir(prefix: str, user: str) -> Path:
    """A fresh directory under the system temp dir for a server whose workers drop to ``user``.

    As root the directory is owned by ``user`` (its workers read keytabs and password files
    and write logs there); otherwise the server keeps our identity and the directory is ours.
    """
    path = Path(tempfile.mkdtemp(prefix=f"openbits-{prefix}-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def chown_tree(path: Path, user: str) -> None:
    """Give ``path`` and everything under it to ``user`` when we are root (else nothing)."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def remove_server_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ServerProcess:
    """One server program: started in its own session, ready when all ``ports`` accept."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        ports: Sequence[int],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        extra_logs: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ports = list(ports)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.extra_logs = list(extra_logs)  # shown too when the server fails
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Launch and wait until every port accepts; raise :class:`ServerError` otherwise."""
        if self._proc is not None:
            raise ServerError(f"{self.name} already started")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not all(accepts(port) for port in self.ports) or not self._listening_here():
            if self._proc.poll() is not None:
                status = self._proc.returncode
                self._proc = None
                raise ServerError(f"{self.name} exited with status {status} during startup:\n{self.logs()}")
            if time.monotonic() >= deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not listen on {self.ports} in {timeout_s:.0f} s:\n{self.logs()}"
                )
            time.sleep(0.02)

    def _listening_here(self) -> bool:
        """Every port answers from this server: else (another process took one) it is
        stopped and "in use" raised, which its caller retries on other ports."""
        assert self._proc is not None
        for port in self.ports:
            if not listening_here(port, self._proc.pid):
                self.stop()
                raise ServerError(f"{self.name}: port {port} in use by another process")
        return True

    def signal_stop(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting: lets several stop in parallel."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait; SIGKILL to the whole process group if it does not end in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        # Workers left in the group (they may outlive the leader by a moment) are killed too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        """The tail of the server's output and of its other logs, for error messages."""
        parts = []
        for path in [self.log_path, *self.extra_logs]:
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace")
                parts.append(f"--- {path.name}\n{text[-_LOG_TAIL_CHARS:]}")
        return "\n".join(parts)
