"""A throw-away nginx instance bound to 127.0.0.1, for integration tests.

Locations on the plain HTTP server (all serve the same ``www`` directory):

* ``/``           static files, ETag and byte ranges on (nginx defaults)
* ``/slow/``      same files, throttled to ``slow_rate`` bytes/s from the first byte
* ``/noranges/``  same files with ``max_ranges 0``: Range is ignored, always 200,
                  no ``Accept-Ranges`` header
* ``/basic/``     same files behind HTTP basic auth (``alice`` / ``s3cret``)
* ``/redirect/X`` 302 to ``/X``; on the HTTPS server ``/to-http/X`` 302 to the plain ``/X``

The HTTPS server serves ``/`` only, with a certificate issued by a ``trustme`` CA
whose PEM is written to ``ca_path``.

Every request is written to a JSON-lines access log; :meth:`Nginx.requests` parses it.
nginx writes a log line when it finalises a request, which can be a moment after the
client has read the last byte, so use :meth:`Nginx.wait_requests` rather than reading
the log straight after a response.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypedDict

import trustme

from tests.support.process import listening_here

HOST = "127.0.0.1"
BASIC_USER = "alice"
BASIC_PASSWORD = "s3cret"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
#: ``/lying-digest/`` sends every file (paced as ``/slow/``) with the Repr-Digest of no bytes
EMPTY_SHA256_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

# escape=json: values are JSON-escaped and missing variables log as "" (not "-"),
# so each line is a JSON object.
_LOG_FORMAT = (
    '{"method":"$request_method","uri":"$uri","request_uri":"$request_uri",'
    '"status":$status,"range":"$http_range","if_range":"$http_if_range",'
    '"bytes_sent":$body_bytes_sent,"connection":$connection,'
    '"connection_requests":$connection_requests}'
)


class NginxError(RuntimeError):
    """nginx failed to start or stop."""


class AccessLogEntry(TypedDict):
    method: str
    uri: str  # normalised, decoded path, e.g. "/slow/big.bin"
    request_uri: str  # as sent, with the query string
    status: int
    range: str | None  # Range request header, None if absent
    if_range: str | None  # If-Range request header, None if absent
    bytes_sent: int  # body bytes sent (less than the length if the client went away)
    connection: int  # nginx connection serial number: equal values = same TCP connection
    connection_requests: int  # index of this request on its connection, from 1


def find_nginx() -> str | None:
    """Path of the nginx binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    candidate = Path("/usr/sbin/nginx")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


#: a port of 127.0.0.1 where nothing listens, for a refused connection: a privileged one (the
#: discard port), which no test server takes (they bind ports the kernel picks), so a server of
#: another pytest-xdist worker cannot start listening on it mid-test, as it can on a port that
#: was merely free a moment ago (``free_port``)
REFUSED_PORT = 9


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class Nginx:
    """An nginx master process serving ``www`` on two fresh 127.0.0.1 ports.

    ``workdir`` receives nginx.conf, the pid file, logs, temp dirs, the htpasswd file,
    the CA (``ca.pem``) and the server certificate. ``slow_rate`` is an nginx size
    ("1m", "256k", "50000") in bytes per second for ``/slow/``.
    """

    def __init__(
        self,
        workdir: Path,
        www: Path,
        slow_rate: str = "1m",
        binary: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.www = Path(www).resolve()
        self.slow_rate = slow_rate
        found = binary or find_nginx()
        if found is None:
            raise NginxError("nginx binary not found on PATH or in /usr/sbin")
        self.binary = found
        self.conf_path = self.workdir / "nginx.conf"
        self.ca_path = self.workdir / "ca.pem"
        self.cert_path = self.workdir / "server.pem"
        self.htpasswd_path = self.workdir / "htpasswd"
        self.access_log_path = self.workdir / "access.log"
        self.error_log_path = self.workdir / "error.log"
        self.stderr_path = self.workdir / "nginx.stderr"
        self.pid_path = self.workdir / "nginx.pid"
        self.port = 0
        self.https_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- URLs ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    @property
    def https_url(self) -> str:
        """``https://127.0.0.1:PORT`` (no trailing slash)."""
        return f"https://{HOST}:{self.https_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise NginxError("nginx already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.www.mkdir(parents=True, exist_ok=True)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "tmp" / name).mkdir(parents=True, exist_ok=True)
        self._write_tls()
        self.htpasswd_path.write_text(f"{BASIC_USER}:{{PLAIN}}{BASIC_PASSWORD}\n")

        # The ports are found by binding port 0 and releasing it; another process can
        # grab one in between, so retry a couple of times on "Address already in use".
        last_error = ""
        for _attempt in range(3):
            self.port, self.https_port = self._two_free_ports()
            self.conf_path.write_text(self._config())
            try:
                self._launch()
                return
            except NginxError as exc:
                last_error = str(exc)
                if "Address already in use" not in last_error:
                    raise
        raise NginxError(last_error)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown; master stops the workers
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The master leads its own process group (start_new_session), so this
                # reaches the workers too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access log ---------------------------------------------------------

    def requests(self) -> list[AccessLogEntry]:
        """Requests logged so far, oldest first."""
        try:
            text = self.access_log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        entries: list[AccessLogEntry] = []
        for line in text.splitlines():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            entries.append(
                AccessLogEntry(
                    method=raw["method"],
                    uri=raw["uri"],
                    request_uri=raw["request_uri"],
                    status=int(raw["status"]),
                    range=raw["range"] or None,
                    if_range=raw["if_range"] or None,
                    bytes_sent=int(raw["bytes_sent"]),
                    connection=int(raw["connection"]),
                    connection_requests=int(raw["connection_requests"]),
                )
            )
        return entries

    def wait_requests(
        self,
        count: int = 1,
        uri: str | None = None,
        timeout: float = 5.0,
    ) -> list[AccessLogEntry]:
        """Wait until at least ``count`` requests (for ``uri``, if given) are logged.

        Returns the matching entries.
        """
        found: list[AccessLogEntry] = []

        def enough() -> bool:
            nonlocal found
            found = [e for e in self.requests() if uri is None or e["uri"] == uri]
            return len(found) >= count

        wait_until(enough, timeout, what=f"{count} access log entries for {uri or 'any uri'}")
        return found

    def clear_requests(self) -> None:
        """Empty the access log (nginx opened it O_APPEND, so truncating is safe)."""
        if self.access_log_path.exists():
            os.truncate(self.access_log_path, 0)

    def error_log(self) -> str:
        parts = []
        for path in (self.stderr_path, self.error_log_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _two_free_ports() -> tuple[int, int]:
        while True:
            a, b = free_port(), free_port()
            if a != b:
                return a, b

    def _write_tls(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "localhost")
        ca.cert_pem.write_to_path(str(self.ca_path))
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_path))

    def _user_directive(self) -> str:
        if os.geteuid() != 0:
            return ""  # workers run as us; the directive would only produce a warning
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        return f"user {user} {group};"

    def _config(self) -> str:
        w = self.workdir
        www = self.www
        tmp = w / "tmp"
        return f"""\
{self._user_directive()}
worker_processes 1;
pid "{self.pid_path}";
error_log "{self.error_log_path}" info;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    server_tokens off;

    client_body_temp_path "{tmp / "client_body"}";
    proxy_temp_path "{tmp / "proxy"}";
    fastcgi_temp_path "{tmp / "fastcgi"}";
    uwsgi_temp_path "{tmp / "uwsgi"}";
    scgi_temp_path "{tmp / "scgi"}";

    log_format openbits escape=json '{_LOG_FORMAT}';
    access_log "{self.access_log_path}" openbits;

    server {{
        listen {HOST}:{self.port};
        server_name localhost;
        root "{www}";

        location / {{
        }}
        location /slow/ {{
            alias "{www}/";
            limit_rate {self.slow_rate};
            limit_rate_after 0;
        }}
        location /noranges/ {{
            alias "{www}/";
            max_ranges 0;
        }}
        location /lying-digest/ {{
            alias "{www}/";
            limit_rate {self.slow_rate};
            add_header Repr-Digest "sha-256=:{EMPTY_SHA256_B64}:" always;
        }}
        location /basic/ {{
            alias "{www}/";
            auth_basic "openbits";
            auth_basic_user_file "{self.htpasswd_path}";
        }}
        location /redirect/ {{
            rewrite ^/redirect/(.*)$ /$1 redirect;
        }}
    }}

    server {{
        listen {HOST}:{self.https_port} ssl;
        server_name localhost;
        root "{www}";
        ssl_certificate "{self.cert_path}";
        ssl_certificate_key "{self.cert_path}";

        location / {{
        }}
        location /to-http/ {{
            rewrite ^/to-http/(.*)$ http://{HOST}:{self.port}/$1 redirect;
        }}
    }}
}}
"""

    def _launch(self) -> None:
        with self.stderr_path.open("wb") as stderr:
            argv = [self.binary, "-p", str(self.workdir), "-c", str(self.conf_path)]
            proc = subprocess.Popen(
                [*argv, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        self._proc = proc
        ports = (self.port, self.https_port)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise NginxError(
                    f"nginx exited with status {proc.returncode} during startup:\n" + self.error_log()
                )
            if all(_accepts(p) for p in ports):
                for p in ports:
                    if not listening_here(p, proc.pid):  # (another worker's server: retried)
                        self.stop()
                        raise NginxError(f"Address already in use: port {p} answers from another process")
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise NginxError(
                    f"nginx did not accept connections on {ports} within "
                    f"{START_TIMEOUT:.0f}s:\n" + self.error_log()
                )
            time.sleep(0.02)
