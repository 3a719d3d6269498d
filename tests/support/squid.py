"""Real squid proxies on 127.0.0.1: without authentication, with Basic, with Digest.

Each instance offers a single scheme (squid offers every ``auth_param`` it has, so one
instance per scheme): ``squid`` (none), ``squid_basic`` (``basic_ncsa_auth``) and
``squid_digest`` (``digest_file_auth``), session-scoped fixtures, started on first use
(~0.06 s each) and stopped together at the end of the session (~2 s). Each runs ``squid -N`` (in the
foreground) with its configuration, logs and pid file in its own directory, no disk cache,
and ``CONNECT`` allowed to any port. User :data:`USER`, password :data:`PASSWORD` (the same
as every other test server); realm ``openbits``.

:meth:`Squid.requests` reads squid's access log: method, URL, status and user of each request.

Example::

    def test_proxy_basic(squid_basic: Squid, nginx: Nginx) -> None:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "-x", squid_basic.url, "--proxy-basic", "-U", f"{USER}:{PASSWORD}",
                              nginx.url + "/f.bin"], capture_output=True, text=True)
        assert out.stdout == "200"
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest

from tests.support.kdc import PASSWORD, USER
from tests.support.process import (
    HOST,
    ServerError,
    ServerProcess,
    chown_tree,
    find_program,
    free_ports,
    remove_server_dir,
    server_dir,
)

HELPERS = Path("/usr/lib/squid")
REALM = "openbits"
_WORKER_USER = "proxy"  # squid's cache_effective_user when started as root

Auth = Literal["none", "basic", "digest"]


@dataclass(frozen=True)
class Request:
    """One line of squid's access log."""

    method: str
    url: str  # absolute URL, or host:port for CONNECT
    status: int  # the status squid answered (407 when it wanted credentials)
    user: str | None


class Squid:
    """One squid demanding ``auth`` ("none", "basic" or "digest") from its clients."""

    def __init__(self, auth: Auth = "none") -> None:
        self.auth = auth
        self.user = USER
        self.password = PASSWORD
        self.port = 0
        self.workdir = Path()
        self._server: ServerProcess | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, to use as the proxy."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.workdir = server_dir("squid", _WORKER_USER)
        try:
            self._write_passwords()
            chown_tree(self.workdir, _WORKER_USER)
            for _attempt in range(3):  # a port taken between the probe and the bind: retry
                (self.port,) = free_ports(1)
                conf = self.workdir / "squid.conf"
                conf.write_text(self._config())
                server = ServerProcess(
                    "squid",
                    [find_program("squid") or "squid", "-N", "-f", str(conf)],
                    ports=[self.port],
                    log_path=self.workdir / "squid.out",
                    extra_logs=[self.workdir / "cache.log"],
                )
                try:
                    server.start()
                except ServerError as exc:
                    if "in use" not in str(exc):
                        raise
                    continue
                self._server = server
                return
            raise ServerError("squid found no free port")
        except BaseException:
            remove_server_dir(self.workdir)
            raise

    def signal_stop(self) -> None:
        """Ask squid to stop without waiting (it takes ~2 s): lets several stop at once."""
        if self._server is not None:
            self._server.signal_stop()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        remove_server_dir(self.workdir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def requests(self) -> list[Request]:
        """Requests squid has logged so far (it logs each once answered), oldest first."""
        try:
            text = (self.workdir / "access.log").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            fields = line.split(" ")
            # (the readiness probe's empty connections log as method "-")
            if len(fields) == 4 and fields[2].isdigit() and fields[0] != "-":
                method, url, status, user = fields
                found.append(Request(method, url, int(status), None if user == "-" else user))
        return found

    def _write_passwords(self) -> None:
        # basic_ncsa_auth takes a plain MD5 hex digest; digest_file_auth a plain password.
        md5 = hashlib.md5(PASSWORD.encode()).hexdigest()
        (self.workdir / "passwd").write_text(f"{USER}:{md5}\n")
        (self.workdir / "digest_passwd").write_text(f"{USER}:{PASSWORD}\n")

    def _auth_config(self) -> str:
        w = self.workdir
        if self.auth == "none":
            return "http_access allow localhost\n"
        if self.auth == "basic":
            helper = f"auth_param basic program {HELPERS}/basic_ncsa_auth {w}/passwd\n"
        else:
            helper = f"auth_param digest program {HELPERS}/digest_file_auth {w}/digest_passwd\n"
        return (
            f"{helper}auth_param {self.auth} children 2 startup=1 idle=1\n"
            f"auth_param {self.auth} realm {REALM}\n"
            "acl authenticated proxy_auth REQUIRED\nhttp_access allow authenticated\n"
        )

    def _config(self) -> str:
        w = self.workdir
        return f"""http_port {HOST}:{self.port}
visible_hostname openbits-test
pid_filename {w}/squid.pid
cache_log {w}/cache.log
logformat openbits %rm %ru %>Hs %un
access_log stdio:{w}/access.log logformat=openbits
cache_store_log none
coredump_dir {w}
netdb_filename none
pinger_enable off
cache deny all
cache_mem 8 MB
shutdown_lifetime 0 seconds
acl localhost src 127.0.0.1/32
acl CONNECT method CONNECT
{self._auth_config()}http_access deny all
"""


class SquidPool:
    """The session's squids, one per ``Auth``, each started when first asked for and all
    stopped together (squid takes ~2 s to stop: in parallel, not one after the other)."""

    def __init__(self) -> None:
        self._started: dict[Auth, Squid] = {}

    def get(self, auth: Auth) -> Squid:
        if auth not in self._started:
            if find_program("squid") is None:
                pytest.skip("squid is not installed; make test-deps installs it")
            proxy = Squid(auth)
            proxy.start()
            self._started[auth] = proxy
        return self._started[auth]

    def stop(self) -> None:
        for proxy in self._started.values():
            proxy.signal_stop()
        for proxy in self._started.values():
            proxy.stop()
        self._started.clear()


@pytest.fixture(scope="session")
def squid_pool() -> Iterator[SquidPool]:
    pool = SquidPool()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def squid(squid_pool: SquidPool) -> Squid:
    """A squid that asks for no credentials."""
    return squid_pool.get("none")


@pytest.fixture(scope="session")
def squid_basic(squid_pool: SquidPool) -> Squid:
    """A squid demanding Basic proxy authentication (407 without it)."""
    return squid_pool.get("basic")


@pytest.fixture(scope="session")
def squid_digest(squid_pool: SquidPool) -> Squid:
    """A squid demanding Digest proxy authentication (407 without it)."""
    return squid_pool.get("digest")
