"""Helpers shared by the benchmarks in bench/ (bench_1g.py, bench_small.py, bench_upload.py, ...).

Process CPU and memory from /proc, the machine's description, tool versions,
:class:`Services`: an nginx on a free 127.0.0.1 port and an openbits daemon, and
:class:`UploadServer`, an ``openbits upload-server``: each in its own session so a terminal
Ctrl-C reaches only the benchmark, which stops them in order.  Imported as ``common`` (the
scripts run as ``python bench/NAME.py``, so bench/ is on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1024**3
MIB = 1024**2
KIB = 1024
START_DEADLINE_S = 30.0


class BenchError(Exception):
    """The benchmark cannot go on (a tool failed, a check failed, a service did not start)."""


# -- small helpers ------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, flush=True)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all its threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        data = fh.read()
    rest = data.rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14 (utime) and 15 (stime)


def proc_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants: its own (all threads), those of the
    children it reaped (cutime + cstime), and its live children's, recursively (the daemon's
    fetch worker, PAC worker and owner helpers count as the daemon)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in rest[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    children: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh,
            ):
                children.update(int(c) for c in fh.read().split())
    except OSError:
        pass
    for child in children:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += proc_tree_cpu_s(child)
    return total


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine, all CPUs (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat", encoding="ascii") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def child_pids(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                pids.extend(int(p) for p in fh.read().split())
    return pids


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its direct children (nginx master + workers)."""
    total = 0.0
    for p in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += proc_cpu_s(p)
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(cannot read {path})"
    return "\n".join(text.splitlines()[-lines:])


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else "?"


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def untimed_sync() -> None:
    subprocess.run(["sync"], check=True)


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (VmRSS and VmHWM in kB, Threads, ...)."""
    return proc_status_path(f"/proc/{pid}/status")


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches summed over every thread of ``pid``.

    Every wake-up of an idle thread is one voluntary switch, so a daemon that polls shows
    a steady count while it should be idle."""
    vol = invol = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                st = proc_status_path(f"/proc/{pid}/task/{task}/status")
                vol += st.get("voluntary_ctxt_switches", 0)
                invol += st.get("nonvoluntary_ctxt_switches", 0)
    return vol, invol


def proc_status_path(path: str) -> dict[str, int]:
    """The fields of a /proc status file whose value starts with a number."""
    out: dict[str, int] = {}
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            name, _sep, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0])
    return out


def socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the daemon's API)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def daemon_answers(path: Path, timeout: float = 5.0) -> bool:
    """``GET /version`` over the daemon's socket answers 200."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/version")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def find_venv() -> tuple[Path, str] | None:
    """(the venv's bin directory, its python) when this runs under the project's venv, else None."""
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "openbits").exists():
        return None
    python = str(venv_bin / "python") if (venv_bin / "python").exists() else sys.executable
    return venv_bin, python


Setting = int | float | str | bool


def write_daemon_config(path: Path, settings: dict[str, Setting]) -> Path:
    """A TOML file of flat ``key = value`` daemon settings (the fields of openbits.config.Config)."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def add_daemon_setting_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--daemon-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra daemon setting for its TOML config (repeatable; openbits.config.Config names), "
        "e.g. store_synchronous=NORMAL",
    )


def parse_daemon_settings(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, Setting]:
    """KEY=VALUE pairs; VALUE becomes an int, a float, a bool (true/false) or else a string."""
    out: dict[str, Setting] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            p.error(f"--daemon-setting wants KEY=VALUE, not {item!r}")
        value: Setting = raw
        if raw in ("true", "false"):
            value = raw == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


#: daemon limits raised so one job may hold thousands of files and one user thousands of jobs
#: (root is exempt from the job limits anyway; the file limit applies to everyone)
RAISED_LIMITS: dict[str, Setting] = {
    "max_jobs_per_user": 100000,
    "max_jobs_per_machine": 100000,
    "max_files_per_job": 100000,
}


def latency_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99 and max of per-call latencies, in ms, and the mean of the first 10% of
    the calls against the last 10% (a growing cost per call shows as last > first)."""
    ms = sorted(x * 1000 for x in samples_s)
    n = len(ms)
    tenth = max(1, n // 10)
    return {
        "median": statistics.median(ms),
        "p90": ms[min(n - 1, int(n * 0.9))],
        "p99": ms[min(n - 1, int(n * 0.99))],
        "max": ms[-1],
        "mean_first_10pct": statistics.fmean(samples_s[:tenth]) * 1000,
        "mean_last_10pct": statistics.fmean(samples_s[-tenth:]) * 1000,
    }


def add_daemon_env_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the daemon only (repeatable), e.g. MALLOC_TOP_PAD_=67108864",
    )


def parse_daemon_env(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    daemon_env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--daemon-env wants NAME=VALUE, not {item!r}")
        daemon_env[name] = value
    return daemon_env


def render_rows(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first row is the header; first column left-aligned, others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the machine --------------------------------------------------------------------------------


def machine_info(work: Path) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024**2
                break
    fs = {"device": "?", "type": "?", "mount": "?"}
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run(
            ["df", "-T", "-P", str(work)], capture_output=True, text=True, check=True, timeout=10
        ).stdout.splitlines()
        cols = out[-1].split()
        fs = {"device": cols[0], "type": cols[1], "mount": cols[-1]}
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release 2>/dev/null && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "work_dir": str(work),
        "work_fs": fs,
        "cpu_probe_ms": cpu_probe_ms(),
    }


def cpu_probe_ms() -> float:
    """The best of five runs of a fixed Python loop, in ms: the CPU's speed at the moment.
    A VM's speed swings (seen here: the same loop 0.5-1.0 µs an iteration from one minute
    to the next, and whole sessions twice as slow as others); CPU-bound figures of two
    invocations compare only beside it."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(range(200_000))
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def versions(nginx: str, aria2c: str | None, venv_python: str) -> dict[str, str]:
    git = first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"])
    return {
        "nginx": first_line([nginx, "-v"]).removeprefix("nginx version: "),
        "curl": " ".join(first_line(["curl", "--version"]).split()[:2]),
        "aria2c": first_line([aria2c, "--version"]) if aria2c else "not installed",
        "openbits": first_line([venv_python, "-c", "import openbits; print(openbits.__version__)"]),
        "git": git,
    }


# -- services -----------------------------------------------------------------------------------


NGINX_CONF = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    {access_log}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        {listen}
        root {work}/www;
        {server_extra}
    }}
}}
"""


#: nginx log format naming the connection of every request (to count keep-alive connections)
CONN_LOG_FORMAT = "log_format conns '$connection $connection_requests $status $body_bytes_sent';"
#: the same over HTTPS, with the TLS protocol and cipher suite each request was served with
CONN_TLS_LOG_FORMAT = (
    "log_format conns '$connection $connection_requests $status $body_bytes_sent $ssl_protocol $ssl_cipher';"
)
#: over HTTPS without the connection log: only the TLS protocol and cipher suite of every request
TLS_LOG_FORMAT = "log_format tls '$ssl_protocol $ssl_cipher';"


# -- HTTPS --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 (``--https``)."""

    ca: Path  # the CA certificate (PEM): the only thing every client is told to trust
    server: Path  # nginx's private key and certificate chain (PEM), one file
    certificate: str  # what the server certificate is, e.g. "ECDSA secp256r1 (SHA256)"

    def daemon_env(self) -> dict[str, str]:
        """The daemon's trust: ``ssl.create_default_context()`` reads SSL_CERT_FILE."""
        return {"SSL_CERT_FILE": str(self.ca)}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls(directory: Path) -> TlsFiles:
    """A CA and a certificate for ``127.0.0.1`` and ``localhost``, made with trustme (the venv's
    test dependency), written to ``directory/ca.pem`` and ``directory/server.pem``."""
    try:
        import trustme
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
    except ImportError as e:
        raise BenchError(f"--https needs trustme in the venv (make venv): {e}") from e
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = directory / "ca.pem"
    server_path = directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_path))
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    key = leaf.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"ECDSA {key.curve.name}"
    elif isinstance(key, rsa.RSAPublicKey):
        kind = f"RSA {key.key_size}"
    else:
        kind = type(key).__name__
    digest = leaf.signature_hash_algorithm
    signed = f" ({digest.name.upper()})" if digest is not None else ""
    return TlsFiles(ca_path, server_path, f"{kind}{signed}")


def add_https_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--https",
        action="store_true",
        help="serve over TLS (a trustme CA and certificate for 127.0.0.1); every client verifies it",
    )


class TlsLog:
    """The TLS protocol and cipher suite nginx logged per request (the last two fields of each
    line of ``Services.tls_log``) since :meth:`mark`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self, expected: int = 1, wait_s: float = 2.0) -> set[str]:
        """The distinct "protocol cipher" pairs since ``mark``; waits (untimed) up to ``wait_s``
        for ``expected`` lines, since nginx logs a request after the client may have exited."""
        deadline = time.monotonic() + wait_s
        lines: list[str] = []
        while True:
            if self.path.exists():
                with open(self.path, "rb") as fh:
                    fh.seek(self.offset)
                    lines = fh.read().decode("ascii", "replace").splitlines()
            if len(lines) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return {" ".join(line.split()[-2:]) for line in lines if len(line.split()) >= 2}


def log_tls_negotiated(services: Services, negotiated: dict[str, set[str]]) -> dict[str, Any]:
    """Print what the TLS set-up was and what every case negotiated; the same for the JSON."""
    assert services.tls is not None
    log(f"TLS as nginx logged it per request (server certificate {services.tls.certificate}):")
    for case, pairs in negotiated.items():
        log(f"  {case:<11} {', '.join(sorted(pairs)) or '(nothing logged)'}")
    return {
        "certificate": services.tls.certificate,
        "probe": services.tls_probe,
        "negotiated": {case: sorted(pairs) for case, pairs in negotiated.items()},
    }


class Services:
    """nginx and the openbits daemon, started as new sessions (so a terminal Ctrl-C reaches
    only this script, which then stops them in order).

    ``conn_log``: nginx writes one line per request (``$connection $connection_requests
    $status $body_bytes_sent``, unbuffered) to WORK/conn.log, so a benchmark can count the
    connections a case used; off by default (``access_log off``)."""

    def __init__(
        self,
        work: Path,
        nginx: str,
        venv_python: str,
        daemon_env: dict[str, str],
        *,
        conn_log: bool = False,
    ) -> None:
        self.work = work
        self.daemon_env = daemon_env
        self.conn_log = work / "conn.log" if conn_log else None
        self.tls: TlsFiles | None = None  # set by use_tls (--https)
        self.tls_log: Path | None = None
        self.tls_probe = ""  # "protocol cipher" of the start-up probe (HTTPS only)
        self.state_dir = work / "state"
        self.nginx_bin = nginx
        self.venv_python = venv_python
        self.nginx: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.socket = work / "ob.sock"
        self.daemon_log = work / "daemon.log"
        self.nginx_log = work / "nginx.out"
        self._logs: list[IO[bytes]] = []

    def use_tls(self, tls: TlsFiles) -> None:
        """HTTPS (before starting anything): nginx listens with TLS, the daemon trusts ``tls.ca``
        (SSL_CERT_FILE), and nginx logs every request's TLS protocol and cipher suite to
        :attr:`tls_log` (the connection log's last two fields, or WORK/tls.log)."""
        self.tls = tls
        self.tls_log = self.conn_log or self.work / "tls.log"

    def tls_note(self) -> str:
        """The report header's " over HTTPS (...)", or "" over plain HTTP."""
        if self.tls is None:
            return ""
        return f" over HTTPS ({self.tls_probe}, {self.tls.certificate} certificate by trustme, verified)"

    # nginx

    def start_nginx(self, url_path: str, size: int, server_extra: str = "") -> str:
        """Start nginx serving WORK/www; wait until ``HEAD url_path`` answers 200 with
        Content-Length ``size``; the URL of ``url_path``.  ``server_extra``: directives added to
        its ``server`` block (bench_upload.py's WebDAV PUT location)."""
        (self.work / "nginx-tmp").mkdir(exist_ok=True)
        last_error = ""
        for _attempt in range(5):
            self.port = free_port()
            user = "user root root;\n" if os.geteuid() == 0 else ""
            conf = self.work / "nginx.conf"
            access_log = "access_log off;"
            listen = f"listen 127.0.0.1:{self.port};"
            if self.tls is None:
                if self.conn_log is not None:
                    access_log = f"{CONN_LOG_FORMAT}\n    access_log {self.conn_log} conns;"
            else:
                if self.conn_log is not None:
                    access_log = f"{CONN_TLS_LOG_FORMAT}\n    access_log {self.conn_log} conns;"
                else:
                    access_log = f"{TLS_LOG_FORMAT}\n    access_log {self.tls_log} tls;"
                # nginx before 1.23.4 leaves TLSv1.3 out of its default ssl_protocols
                listen = (
                    f"listen 127.0.0.1:{self.port} ssl;\n"
                    f"        ssl_certificate {self.tls.server};\n"
                    f"        ssl_certificate_key {self.tls.server};\n"
                    "        ssl_protocols TLSv1.2 TLSv1.3;"
                )
            conf.write_text(
                NGINX_CONF.format(
                    user=user,
                    work=self.work,
                    port=self.port,
                    access_log=access_log,
                    listen=listen,
                    server_extra=server_extra,
                )
            )
            out = open(self.nginx_log, "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
            self.nginx = subprocess.Popen(
                [
                    self.nginx_bin,
                    "-p",
                    f"{self.work}/",
                    "-e",
                    str(self.work / "nginx-error.log"),
                    "-c",
                    str(conf),
                    "-g",
                    "daemon off;",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            scheme = "http" if self.tls is None else "https"
            url = f"{scheme}://127.0.0.1:{self.port}{url_path}"
            try:
                self._wait_nginx(url_path, size)
                return url
            except BenchError as e:
                last_error = str(e)
                self.stop_nginx()
        raise BenchError(f"nginx did not start: {last_error}")

    def _wait_nginx(self, url_path: str, size: int) -> None:
        assert self.nginx is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.nginx.poll() is not None:
                raise BenchError(
                    f"nginx exited with {self.nginx.returncode}:\n{tail(self.nginx_log)}\n"
                    f"{tail(self.work / 'nginx-error.log')}"
                )
            try:
                if self.tls is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                else:  # verifies the certificate as every client will
                    conn = http.client.HTTPSConnection(
                        "127.0.0.1", self.port, timeout=5, context=self.tls.client_context()
                    )
                try:
                    conn.request("HEAD", url_path)
                    resp = conn.getresponse()
                    length = resp.getheader("Content-Length")
                    if resp.status != 200 or length != str(size):
                        raise BenchError(f"HEAD {url_path}: {resp.status}, Content-Length {length}")
                    if isinstance(conn.sock, ssl.SSLSocket):
                        cipher = conn.sock.cipher()
                        self.tls_probe = f"{conn.sock.version()} {cipher[0] if cipher else '?'}"
                    return
                finally:
                    conn.close()
            except ssl.SSLCertVerificationError as e:  # an OSError, but no reason to wait
                raise BenchError(f"HEAD {url_path}: the certificate did not verify: {e}") from e
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"nginx did not accept connections on port {self.port}")
            time.sleep(0.05)

    def stop_nginx(self) -> None:
        proc, self.nginx = self.nginx, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def nginx_cpu_s(self) -> float:
        return tree_cpu_s(self.nginx.pid) if self.nginx is not None else 0.0

    # openbits daemon

    def start_daemon(
        self, config: Path | None = None, *, answer: bool = False, poll_s: float = 0.05
    ) -> float:
        """Start ``openbits serve`` and wait until it is ready; the seconds that took.

        Ready means the socket accepts a connection, or with ``answer`` that ``GET /version``
        over it returns 200 (the daemon loads every job before it listens, so either way the
        time includes loading the store)."""
        out = open(self.daemon_log, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(out)
        argv = [
            self.venv_python,
            "-m",
            "openbits",
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--socket",
            str(self.socket),
        ]
        if config is not None:
            argv += ["--config", str(config)]
        t0 = time.perf_counter()
        self.daemon = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=self.work,
            env={**os.environ, **(self.tls.daemon_env() if self.tls else {}), **self.daemon_env},
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.daemon.poll() is not None:
                raise BenchError(
                    f"openbits serve exited with {self.daemon.returncode}:\n{tail(self.daemon_log)}"
                )
            if (daemon_answers if answer else socket_accepts)(self.socket):
                return time.perf_counter() - t0
            if time.monotonic() > deadline:
                raise BenchError(
                    f"openbits serve did not accept connections on {self.socket} "
                    f"within {START_DEADLINE_S:.0f} s:\n{tail(self.daemon_log)}"
                )
            time.sleep(poll_s)

    def daemon_cpu_s(self) -> float:
        if self.daemon is None:
            return 0.0
        try:  # (with its worker processes: the fetch worker is part of its work)
            return proc_tree_cpu_s(self.daemon.pid)
        except OSError:
            return 0.0

    def daemon_pid(self) -> int:
        if self.daemon is None:
            raise BenchError("the openbits daemon is not running")
        return self.daemon.pid

    def check_daemon_alive(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise BenchError(
                f"the openbits daemon died (exit status {self.daemon.returncode}):\n{tail(self.daemon_log)}"
            )

    def stop_daemon(self) -> int | None:
        """SIGTERM the daemon; its exit status (None when it had to be killed or never ran)."""
        proc, self.daemon = self.daemon, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def close_logs(self) -> None:
        for fh in self._logs:
            fh.close()
        self._logs.clear()


# -- openbits upload-server (bench_upload.py) ----------------------------------------------------


def openbits_missing(venv_bin: Path, venv_python: str) -> str | None:
    """Why the openbits case cannot run (``upload-server`` or ``upload`` missing), or None."""
    for argv in (
        [venv_python, "-m", "openbits", "upload-server", "--help"],
        [str(venv_bin / "openbits"), "upload", "--help"],
    ):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{' '.join(argv[-3:])}` failed: {e}"
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            why = f": {said[-1]}" if said else ""
            return f"`openbits {' '.join(argv[-2:])}` failed (exit status {proc.returncode}{why})"
    return None


class UploadServer:
    """``openbits upload-server --root WORK/up-root`` on a free 127.0.0.1 port, its sessions in
    WORK/up-state, started in its own session like :class:`Services`' nginx and daemon (the
    server of bench_upload.py's openbits case)."""

    def __init__(self, work: Path, venv_python: str) -> None:
        self.work = work
        self.venv_python = venv_python
        self.root = work / "up-root"
        self.state_dir = work / "up-state"
        self.log_path = work / "upload-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ping_status = 0
        self.started = False  # it answered a Ping (its exit status then matters)
        self._log: IO[bytes] | None = None

    def start(self) -> str:
        """Start it and wait until a BITS Ping is answered; its base URL."""
        last_error = ""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        for _attempt in range(5):  # a free port may be taken before the server binds it
            self.port = free_port()
            argv = [self.venv_python, "-m", "openbits", "upload-server", "--root", str(self.root)]
            argv += ["--listen", f"127.0.0.1:{self.port}", "--state-dir", str(self.state_dir)]
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
                cwd=self.work,
            )
            try:
                self._wait()
                self.started = True
                return f"http://127.0.0.1:{self.port}"
            except BenchError as e:
                last_error = str(e)
                self.stop()
                self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        raise BenchError(f"openbits upload-server did not start: {last_error}")

    def _wait(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"openbits upload-server exited with {self.proc.returncode}:\n{tail(self.log_path)}"
                )
            status = self._ping()
            if status is not None:
                self.ping_status = status
                return
            if time.monotonic() > deadline:
                raise BenchError(f"openbits upload-server did not answer on port {self.port}")
            time.sleep(0.05)

    def _ping(self) -> int | None:
        """The status of a BITS Ping ([MC-BUP] §3.2.5.2.3), None while nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("BITS_POST", "/ping", headers={"BITS-Packet-Type": "Ping", "Content-Length": "0"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except OSError:
            return None
        finally:
            conn.close()

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            return proc_cpu_s(self.proc.pid)
        except OSError:
            return 0.0

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"openbits upload-server died (exit status {self.proc.returncode}):\n{tail(self.log_path)}"
            )

    def stop(self) -> int | None:
        """SIGTERM it; its exit status (None when it had to be killed or never ran)."""
        proc, self.proc = self.proc, None
        rc: int | None = None
        if proc is not None:
            if proc.poll() is not None:
                rc = proc.returncode
            else:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc


# -- timed runs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    """One timed section: wall time, and the CPU of the client, the daemon, nginx and the machine."""

    wall_s: float
    client_cpu_s: float
    daemon_cpu_s: float
    nginx_cpu_s: float
    machine_busy_s: float

    @property
    def other_cpu_s(self) -> float:
        return self.machine_busy_s - self.client_cpu_s - self.daemon_cpu_s - self.nginx_cpu_s


@dataclass(slots=True)
class Case:
    name: str
    commands: Callable[[Path], list[list[str]]]  # output path -> commands run one after another
    env: dict[str, str] | None = None
    uses_daemon: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The clocks a :class:`Timing` is the difference of."""

    t: float
    daemon_cpu_s: float
    nginx_cpu_s: float
    machine_busy_s: float

    @classmethod
    def take(cls, services: Services) -> Snapshot:
        return cls(time.perf_counter(), services.daemon_cpu_s(), services.nginx_cpu_s(), machine_busy_s())

    def since(self, before: Snapshot, client_cpu_s: float) -> Timing:
        return Timing(
            self.t - before.t,
            client_cpu_s,
            self.daemon_cpu_s - before.daemon_cpu_s,
            self.nginx_cpu_s - before.nginx_cpu_s,
            self.machine_busy_s - before.machine_busy_s,
        )


class Runner:
    """Runs a case's commands as child processes, timed; empties the output directory."""

    def __init__(self, services: Services, dl_dir: Path, logs_dir: Path) -> None:
        self.services = services
        self.dl_dir = dl_dir
        self.logs_dir = logs_dir
        self.current: subprocess.Popen[bytes] | None = None

    def clear_output(self) -> None:
        clear_dir(self.dl_dir)

    def run(self, case: Case, out: Path, err_path: Path) -> Timing:
        """Run the case's commands one after another, timed."""
        env = dict(os.environ)
        if case.env:
            env.update(case.env)
        client_cpu = 0.0
        with open(err_path, "wb") as err:
            before = Snapshot.take(self.services)
            for argv in case.commands(out):
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
                self.current = proc
                _pid, status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.current = None
                client_cpu += rusage.ru_utime + rusage.ru_stime
                if proc.returncode != 0:
                    msg = f"{case.name}: {' '.join(argv)} exited with {proc.returncode}:\n{tail(err_path)}"
                    if case.uses_daemon:
                        msg += f"\n--- daemon log (tail) ---\n{tail(self.services.daemon_log)}"
                    raise BenchError(msg)
            return Snapshot.take(self.services).since(before, client_cpu)

    def kill_current(self) -> None:
        proc, self.current = self.current, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)


class OutputWatcher:
    """Polls the output path while a command runs: was it ever visible with a partial size?

    (An openbits download or upload must publish its file only whole.)"""

    def __init__(self, path: Path, size: int, interval_s: float = 0.01) -> None:
        self.path = path
        self.size = size
        self.interval_s = interval_s
        self.partial = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="watch-output", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                st = os.stat(self.path)
            except OSError:
                continue
            if st.st_size != self.size:
                self.partial = True
                return

    def __enter__(self) -> OutputWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every ``finally`` cleans up.

    SIGINT is set to raise KeyboardInterrupt even when the script started with it ignored
    (as background jobs of a non-interactive shell do).
    """
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- what every script does around its measurement ----------------------------------------------

#: JobState values (openbits.model.JobState; kept here so a script needs no openbits import to start)
QUEUED, CONNECTING, TRANSFERRING, SUSPENDED, ERROR, TRANSIENT_ERROR, TRANSFERRED, ACKNOWLEDGED, CANCELLED = (
    range(9)
)
STATE_NAMES = {
    0: "QUEUED",
    1: "CONNECTING",
    2: "TRANSFERRING",
    3: "SUSPENDED",
    4: "ERROR",
    5: "TRANSIENT_ERROR",
    6: "TRANSFERRED",
    7: "ACKNOWLEDGED",
    8: "CANCELLED",
}


def clear_dir(directory: Path) -> None:
    """Remove everything inside ``directory``."""
    for entry in directory.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_random_file(path: Path, size: int) -> str:
    """``size`` random bytes written to ``path``; their sha256 (hex)."""
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as fh:
        while left:
            block = os.urandom(min(4 * MIB, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)


def add_cases_arg(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    p.add_argument("--cases", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")


def add_keep_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--keep", action="store_true", help=f"keep the work directory ({what})")


def add_output_args(
    p: argparse.ArgumentParser, json_path: Path, work_parent_help: str = "(bench/out/)"
) -> None:
    """--work-parent and --json, then --daemon-env."""
    p.add_argument(
        "--work-parent",
        type=Path,
        default=OUT_DIR,
        help=f"where the work directory is made {work_parent_help}",
    )
    p.add_argument(
        "--json", type=Path, default=json_path, help=f"results file (default bench/out/{json_path.name})"
    )
    add_daemon_env_arg(p)


def parse_common_args(
    p: argparse.ArgumentParser, argv: list[str] | None, *, settings: bool = True
) -> argparse.Namespace:
    """Parse; --daemon-env (and with ``settings`` --daemon-setting, added here) become dicts."""
    if settings:
        add_daemon_setting_arg(p)
    args = p.parse_args(argv)
    args.daemon_env = parse_daemon_env(p, args.daemon_env)
    if settings:
        args.daemon_setting = parse_daemon_settings(p, args.daemon_setting)
    return args


def parse_cases(
    p: argparse.ArgumentParser, text: str, names: Sequence[str], *, allow_empty: bool = True
) -> list[str]:
    wanted = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"unknown case(s): {', '.join(unknown)}")
    if not wanted and not allow_empty:
        p.error("no case given")
    return wanted


@dataclass(frozen=True, slots=True)
class Tools:
    nginx: str
    venv_bin: Path
    venv_python: str
    aria2c: str | None = None


def find_tools(script: str, *, clients: bool = False, venv_hint: str | None = None) -> Tools | None:
    """nginx, with ``clients`` curl and aria2c (if installed), and the project's venv; None (said
    why) when one is missing (the script then exits with 2)."""
    nginx = find_program("nginx")
    if nginx is None:
        log("nginx not found (apt-get install nginx, or `make bench`)")
        return None
    if clients and find_program("curl") is None:
        log("curl not found")
        return None
    aria2c = find_program("aria2c") if clients else None
    venv = find_venv()
    if venv is None:
        log(
            venv_hint
            or f"run this with the project's venv python (make venv; .venv/bin/python bench/{script}.py)"
        )
        return None
    compile_package(venv[1])
    return Tools(nginx, venv[0], venv[1], aria2c)


def compile_package(python: str) -> None:
    """Byte-compile the openbits package the venv imports, as a pip install (not editable) does.

    An editable install has no ``.pyc`` until an import writes one, and none is ever written
    under ``PYTHONDONTWRITEBYTECODE`` (set in some shells and CI images): every ``openbits``
    command and every daemon start would then compile ~50 modules again (~40-70 ms), which
    no installed copy pays.  Up-to-date files are skipped, so this costs little when done."""
    package = "os.path.dirname(openbits.__file__)"
    code = f"import compileall, os, sys, openbits; sys.exit(not compileall.compile_dir({package}, quiet=2))"
    done = subprocess.run([python, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if done.returncode != 0:
        log(f"note: could not byte-compile openbits ({done.stderr.decode(errors='replace').strip()[-200:]})")


def log_versions(vers: dict[str, str], skip: Sequence[str] = ()) -> None:
    log("versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items() if k not in skip))


def log_daemon_env(daemon_env: dict[str, str]) -> None:
    if daemon_env:
        log("daemon environment: " + " ".join(f"{k}={v}" for k, v in daemon_env.items()))


def log_machine_line(machine: dict[str, Any]) -> None:
    fs = machine["work_fs"]
    log(
        f"machine: nproc {machine['nproc']}, {machine['cpu_model']}, {machine['mem_gib']} GiB RAM, "
        f"kernel {machine['kernel']}, work dir on {fs['type']} ({fs['device']} at {fs['mount']}), "
        f"CPU probe {machine['cpu_probe_ms']} ms"
    )


def log_loadavg_line(machine: dict[str, Any]) -> None:
    log(
        f"load average (1, 5, 15 min) at start: {machine['loadavg_start']}, "
        f"at end: {machine.get('loadavg_end', '?')}"
    )


def log_busy_note(other_and_wall_s: Iterable[tuple[float, float]]) -> None:
    """A note when the machine's other CPU was a large share of a case's median wall time."""
    busy = max((other / wall for other, wall in other_and_wall_s if other > 0.1), default=0.0)
    if busy > 0.25:
        log(
            f"note: other CPU reached {busy:.0%} of a case's median wall time: something else was using "
            "the machine (or the kernel was writing back); rerun on an idle machine before trusting ratios"
        )


def ratio_lines(
    rates: dict[str, float], what: str, targets: dict[str, float] | None = None
) -> tuple[list[str], dict[str, float]]:
    """openbits' rate against curl, curl+fsync and aria2c (those present): lines and ratios;
    ``targets``: the issue's goal for openbits against each peer (reported met / NOT met)."""
    lines: list[str] = []
    ratios: dict[str, float] = {}
    ob = rates.get("openbits")
    if ob is None:
        return lines, ratios
    notes = {"curl": "", "curl+fsync": "like-for-like: both durable on return", "aria2c": ""}
    for case, note in notes.items():
        if case not in rates:
            continue
        r = ob / rates[case]
        ratios[f"openbits/{case}"] = r
        target = (targets or {}).get(case)
        if target is not None:
            verdict = f"target ≥ {target:g}: {'met' if r >= target else 'NOT met'}"
            note = f"{note}; {verdict}" if note else verdict
        lines.append(
            f"openbits/{case} {what} ratio = {r:.2f} ({note})"
            if note
            else f"openbits/{case} {what} ratio = {r:.2f}"
        )
    return lines, ratios


def case_medians(counted: Sequence[Any]) -> dict[str, Any]:
    """Run count, wall time (median, min, max) and median CPU figures of a case's counted runs."""
    walls = [r.wall_s for r in counted]
    return {
        "runs": len(counted),
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "max_wall_s": max(walls),
        "median_cpu_s": statistics.median(r.cpu_s for r in counted),
        "median_client_cpu_s": statistics.median(r.client_cpu_s for r in counted),
        "median_daemon_cpu_s": statistics.median(r.daemon_cpu_s for r in counted),
        "median_nginx_cpu_s": statistics.median(r.nginx_cpu_s for r in counted),
        "median_other_cpu_s": statistics.median(r.other_cpu_s for r in counted),
    }


class Session:
    """One benchmark invocation: its work directory, the machine's description, the failures,
    and the clean-up on success, failure, Ctrl-C or SIGTERM (:meth:`guard`)."""

    def __init__(self, name: str, args: argparse.Namespace, subdirs: Sequence[str]) -> None:
        self.name = name
        self.keep: bool = args.keep
        args.work_parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work_parent)).resolve()
        for d in subdirs:
            (self.work / d).mkdir()
        self.machine = machine_info(self.work)
        self.machine["loadavg_start"] = loadavg()
        self.failures: list[str] = []
        self.interrupted = False
        self.daemon_rc: int | None = None

    def log_start(self) -> None:
        m = self.machine
        fs = m["work_fs"]
        log(
            f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_gib']} GiB, "
            f"kernel {m['kernel']}, {m['os']}"
        )
        log(f"CPU probe: {m['cpu_probe_ms']} ms (a fixed Python loop, best of 5; lower is faster)")
        log(f"work dir: {self.work} on {fs['type']} ({fs['device']} at {fs['mount']})")
        log(f"load average: {m['loadavg_start']}")

    @contextlib.contextmanager
    def guard(
        self,
        cleanup: Callable[[], object],
        *,
        catch_unexpected: bool = False,
        remove_at_exit: bool = True,
    ) -> Iterator[None]:
        """Run the body with SIGTERM/SIGHUP unwinding like Ctrl-C: a :class:`BenchError` (and with
        ``catch_unexpected`` any Exception) becomes a failure, an interruption sets
        :attr:`interrupted`; then ``cleanup`` runs with those signals ignored (it is bounded by
        timeouts), and the work directory is removed unless --keep.  With ``remove_at_exit``
        False the caller removes it later with :meth:`remove_work`."""
        try:
            with exit_on_signals():
                try:
                    yield
                    self.machine["loadavg_end"] = loadavg()
                except BenchError as e:
                    self.failures.append(str(e))
                except Exception:
                    if not catch_unexpected:
                        raise
                    # a bug here or in the client: report it, clean up all the same
                    self.failures.append(f"unexpected error:\n{traceback.format_exc()}")
                except (KeyboardInterrupt, SystemExit):
                    self.interrupted = True
                    log("interrupted: cleaning up")
                finally:
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                        signal.signal(signum, signal.SIG_IGN)
                    cleanup()
        finally:
            if remove_at_exit:
                self.remove_work()

    def remove_work(self) -> None:
        """Remove the work directory, or with --keep name it."""
        if self.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def stop_services(self, services: Services, runner: Runner | None = None) -> int | None:
        """Stop the running command, the daemon and nginx; a failure when a daemon that ran did not
        exit with 0 after SIGTERM.  The daemon's exit status, also kept in :attr:`daemon_rc`."""
        if runner is not None:
            runner.kill_current()
        daemon_started = services.daemon is not None
        self.daemon_rc = services.stop_daemon()
        services.stop_nginx()
        services.close_logs()
        if daemon_started and self.daemon_rc != 0 and not self.interrupted:
            self.failures.append(
                f"openbits serve exited with {self.daemon_rc} after SIGTERM (expected 0):\n"
                f"{tail(services.daemon_log)}"
            )
        return self.daemon_rc

    def finish(self, json_path: Path, args: dict[str, Any], versions: dict[str, str], **results: Any) -> int:
        """Write the results file (benchmark, time, args, machine, versions, ``results``, failures,
        ok), name it and the failures; the exit status: 1 after a failure, else 0."""
        doc = {
            "benchmark": self.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "args": args,
            "machine": self.machine,
            "versions": versions,
            **results,
            "failures": self.failures,
            "ok": not self.failures,
        }
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results: {json_path}")
        for f in self.failures:
            log(f"FAILED: {f}")
        return 1 if self.failures else 0
