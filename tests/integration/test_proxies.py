"""Every ProxyUsage mode through real proxies on 127.0.0.1 (SPEC §7 SetProxySettings):
tinyproxy (twice: an HTTP proxy, and a second one to fail over to), microsocks with and without
a login, a PAC script served by nginx, CONNECT to nginx's TLS server.

The downloads run ``Downloader.download`` with an ``h1`` client and a ``Proxies`` object, as
the daemon does, with the job's settings in ``RequestOptions`` (SetProxySettings' API is
another branch's); the daemon's ``[proxy]`` table is tested through the real daemon.  Each
test proves its route from the proxy's own log (tinyproxy's request lines, microsocks'
"connected to" lines) or from its absence there.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from openbits.errors import BitsError, HResult
from openbits.model import (
    AuthScheme,
    AuthTarget,
    Credential,
    ErrorContext,
    JobFile,
    JobState,
    ProxyUsage,
    Secret,
)
from openbits.transfer.download import Downloader, Owner
from openbits.transfer.h1 import H1Client
from openbits.transfer.options import ProxyAuthFactory, RequestOptions
from openbits.transfer.pac import PacRoutes, fetch_text
from openbits.transfer.pacworker import PacEvaluator
from openbits.transfer.proxy import Proxies, parse_environment
from openbits.transfer.proxylist import ProxyEntry
from openbits.transfer.tickets import DefaultCredentials
from tests.support.daemon import Daemon
from tests.support.driver import Driver
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import REFUSED_PORT, Nginx, free_port, wait_until
from tests.support.proxy import Tinyproxy
from tests.support.rawserver import RecordingProgress

HOST = "127.0.0.1"
USER, PASSWORD = "proxyuser", "proxy-s3cret"


class Microsocks:
    """microsocks on a free port (with a login when ``user`` is given); it prints a line per
    connection it makes ("client[N] 127.0.0.1: connected to HOST:PORT").  (A local helper:
    tests/support/socks.py of the id-servers branch keeps no log.)"""

    def __init__(self, workdir: Path, user: str | None = None, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.user, self.password = user, password
        self.out_path = workdir / "microsocks.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["microsocks", "-i", HOST, "-p", str(self.port)]
        if self.user is not None:
            argv += ["-u", self.user, "-P", self.password or ""]
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: _accepts(self.port), 10, what="microsocks to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return self.out_path.read_text(errors="replace")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


@pytest.fixture
def socks(tmp_path: Path) -> Iterator[Microsocks]:
    if shutil.which("microsocks") is None:
        pytest.skip("microsocks is not installed (make test installs it)")
    proxy = Microsocks(tmp_path / "socks")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def socks_auth(tmp_path: Path) -> Iterator[Microsocks]:
    if shutil.which("microsocks") is None:
        pytest.skip("microsocks is not installed (make test installs it)")
    proxy = Microsocks(tmp_path / "socks-auth", USER, PASSWORD)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def tinyproxy2(tmp_path: Path, tinyproxy: Tinyproxy) -> Iterator[Tinyproxy]:
    """A second tinyproxy (the one failed over to)."""
    proxy = Tinyproxy(tmp_path / "tinyproxy2")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def h1() -> Iterator[H1Client]:
    client = H1Client(connect_timeout_s=5, read_timeout_s=10, default_headers={"User-Agent": "openbits-test"})
    yield client


@pytest.fixture
async def closing(h1: H1Client) -> AsyncIterator[H1Client]:
    try:
        yield h1
    finally:
        await h1.close()


@pytest.fixture
def trust_nginx(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS contexts made from now on trust nginx's test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx.ca_path))


class Fetcher:
    """Downloads one file with the given job settings, as the scheduler would."""

    def __init__(
        self,
        h1: H1Client,
        dest: Path,
        proxies: Proxies | None = None,
        proxy_auth: ProxyAuthFactory | None = None,
    ) -> None:
        self.downloader = Downloader(h1, proxies=proxies, proxy_auth=proxy_auth)
        self.dest = dest
        self.count = 0

    async def __call__(self, url: str, **settings: object) -> Path:
        self.count += 1
        local = self.dest / f"out{self.count}.bin"
        file = JobFile(remote_url=url, local_file=str(local), temp_name=f"BITproxy{self.count}.tmp")
        options = RequestOptions(job_id="{proxy-test}", **settings)  # type: ignore[arg-type]
        await self.downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2, options)
        assert file.temp_path is not None
        return Path(file.temp_path)


def override(proxy_list: str, bypass: str | None = None) -> dict[str, object]:
    return {"proxy_usage": ProxyUsage.OVERRIDE, "proxy_list": proxy_list, "proxy_bypass_list": bypass}


def basic_proxy_login(user: str, password: str) -> tuple[Credential, ...]:
    return (Credential(AuthTarget.PROXY, AuthScheme.BASIC, user, Secret(password)),)


# -- PRECONFIG and NO_PROXY ----------------------------------------------------------------


async def test_preconfig_goes_through_the_callers_proxy_unless_no_proxy_names_the_host(
    nginx: Nginx, tinyproxy: Tinyproxy, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/pre-a.bin", 200_000, seed=1)
    make_file(nginx.www, "px/pre-b.bin", 1000, seed=2)
    fetch = Fetcher(closing, dest)
    got = await fetch(f"{nginx.url}/px/pre-a.bin", proxy_environment={"HTTP_PROXY": tinyproxy.url})
    assert sha256_file(got) == digest
    assert "/px/pre-a.bin" in tinyproxy.log()
    env = {"http_proxy": tinyproxy.url, "no_proxy": "localhost,127.0.0.0/8"}
    await fetch(f"{nginx.url}/px/pre-b.bin", proxy_environment=env)
    assert "/px/pre-b.bin" not in tinyproxy.log()


async def test_no_proxy_goes_direct_past_the_daemons_proxy(
    nginx: Nginx, tinyproxy: Tinyproxy, closing: H1Client, dest: Path
) -> None:
    make_file(nginx.www, "px/np.bin", 1000, seed=3)
    proxies = Proxies(parse_environment({"http_proxy": tinyproxy.url}))
    fetch = Fetcher(closing, dest, proxies)
    await fetch(f"{nginx.url}/px/np.bin", proxy_usage=ProxyUsage.NO_PROXY)
    assert "/px/np.bin" not in tinyproxy.log()
    await fetch(f"{nginx.url}/px/np.bin")  # PRECONFIG: the daemon's
    assert "/px/np.bin" in tinyproxy.log()


def test_the_daemons_proxy_table(tmp_path: Path, nginx: Nginx, tinyproxy: Tinyproxy, dest: Path) -> None:
    digest = make_file(nginx.www, "px/table.bin", 300_000, seed=4)
    daemon = Daemon(
        tmp_path / "d", config={"proxy_http": tinyproxy.url}, env={"http_proxy": "", "no_proxy": ""}
    )
    daemon.start()
    try:
        job = daemon.client.create_job("table").job_id
        daemon.client.add_file(job, f"{nginx.url}/px/table.bin", str(dest / "table.bin"))
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED)
        daemon.client.complete(job)
    finally:
        daemon.stop()
    assert sha256_file(dest / "table.bin") == digest
    assert "/px/table.bin" in tinyproxy.log()


# -- OVERRIDE -------------------------------------------------------------------------------


async def test_override_fails_over_to_the_next_proxy(
    nginx: Nginx, tinyproxy: Tinyproxy, tinyproxy2: Tinyproxy, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/failover.bin", 100_000, seed=5)
    fetch = Fetcher(closing, dest)
    proxy_list = f"{HOST}:{REFUSED_PORT} no-such-proxy.invalid:3128 {tinyproxy2.url}"
    got = await fetch(f"{nginx.url}/px/failover.bin", **override(proxy_list))
    assert sha256_file(got) == digest
    assert "/px/failover.bin" in tinyproxy2.log()
    assert "/px/failover.bin" not in tinyproxy.log()


async def test_override_with_every_proxy_down_is_a_transient_error(closing: H1Client, dest: Path) -> None:
    fetch = Fetcher(closing, dest)
    with pytest.raises(BitsError) as refused:
        await fetch("http://127.0.0.1:9/f", **override(f"{HOST}:{REFUSED_PORT}"))
    assert refused.value.hresult == HResult.BG_E_CONNECT_FAILURE and refused.value.transient
    with pytest.raises(BitsError) as unresolved:
        await fetch("http://127.0.0.1:9/f", **override(f"{HOST}:{REFUSED_PORT} no-such-proxy.invalid:1"))
    assert unresolved.value.hresult == HResult.BG_E_PROXY_NAME_RESOLUTION_FAILURE
    assert unresolved.value.transient


async def test_override_bypasses_local_names(
    nginx: Nginx, tinyproxy: Tinyproxy, closing: H1Client, dest: Path
) -> None:
    make_file(nginx.www, "px/bypass.bin", 5000, seed=6)
    fetch = Fetcher(closing, dest)
    settings = override(tinyproxy.url, "<local>")
    await fetch(f"http://localhost:{nginx.port}/px/bypass.bin", **settings)
    assert "/px/bypass.bin" not in tinyproxy.log(), "localhost has no dot: <local> sends it direct"
    await fetch(f"{nginx.url}/px/bypass.bin", **settings)
    assert "/px/bypass.bin" in tinyproxy.log(), "127.0.0.1 is not <local>"


async def test_https_through_connect(
    nginx: Nginx, tinyproxy: Tinyproxy, trust_nginx: None, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/tls.bin", 500_000, seed=7)
    fetch = Fetcher(closing, dest)
    for _ in range(2):  # (the second over the same tunnel)
        got = await fetch(f"{nginx.https_url}/px/tls.bin", **override(tinyproxy.url))
        assert sha256_file(got) == digest
    assert tinyproxy.log().count(f"CONNECT {HOST}:{nginx.https_port}") == 1
    assert "/px/tls.bin" not in tinyproxy.log(), "the path stays inside the tunnel"


# -- SOCKS5 ---------------------------------------------------------------------------------


async def test_socks5_without_a_login(
    nginx: Nginx, socks: Microsocks, trust_nginx: None, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/socks.bin", 300_000, seed=8)
    fetch = Fetcher(closing, dest)
    got = await fetch(f"{nginx.url}/px/socks.bin", **override(f"socks5://{HOST}:{socks.port}"))
    assert sha256_file(got) == digest
    assert f"connected to {HOST}:{nginx.port}" in socks.log(), "socks5: the name was resolved here"
    got = await fetch(
        f"https://localhost:{nginx.https_port}/px/socks.bin", **override(f"socks5h://{HOST}:{socks.port}")
    )
    assert sha256_file(got) == digest
    assert f"connected to localhost:{nginx.https_port}" in socks.log(), "socks5h: the proxy resolved it"


async def test_socks5_with_the_basic_proxy_credential(
    nginx: Nginx, socks_auth: Microsocks, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/socks-auth.bin", 100_000, seed=9)
    fetch = Fetcher(closing, dest)
    settings = override(f"socks5://{HOST}:{socks_auth.port}")
    got = await fetch(
        f"{nginx.url}/px/socks-auth.bin", credentials=basic_proxy_login(USER, PASSWORD), **settings
    )
    assert sha256_file(got) == digest
    assert f"connected to {HOST}:{nginx.port}" in socks_auth.log()
    for credentials in (basic_proxy_login(USER, "wrong"), ()):
        with pytest.raises(BitsError) as refused:
            await fetch(f"{nginx.url}/px/socks-auth.bin", credentials=credentials, **settings)
        assert refused.value.hresult == 0x80190197  # BG_E_HTTP_ERROR_407
        assert not refused.value.transient
        assert refused.value.context is ErrorContext.REMOTE_FILE


# -- 407 and the proxy-authentication seam -----------------------------------------------


@pytest.fixture
def tinyproxy_auth(tmp_path: Path) -> Iterator[Tinyproxy]:
    """tinyproxy demanding Basic proxy authentication (407 without it)."""
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (make test installs it)")
    proxy = Tinyproxy(tmp_path / "tinyproxy-auth", extra_config=f"BasicAuth {USER} {PASSWORD}\n")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


class BasicAnswer:
    """The seam's shape (transfer/auth.py answers for real): Basic from a job's credential."""

    status = 407
    header_name = "Proxy-Authorization"

    def __init__(self, user: str, password: str) -> None:
        self.value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.asked: list[tuple[int, str]] = []
        self.server_certificate: bytes | None = None

    def answer(self, status: int, headers: object, method: str, uri: str) -> str | None:
        self.asked.append((status, method))
        return self.value

    def connection_lost(self) -> None:
        pass

    def verify(self, status: int, headers: object) -> bool:
        return True


async def test_a_proxy_407_without_an_answer_is_an_error_and_with_one_succeeds(
    nginx: Nginx, tinyproxy_auth: Tinyproxy, trust_nginx: None, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/auth.bin", 50_000, seed=10)
    settings = override(tinyproxy_auth.url)
    fetch = Fetcher(closing, dest)
    for url in (f"{nginx.url}/px/auth.bin", f"{nginx.https_url}/px/auth.bin"):
        with pytest.raises(BitsError) as refused:
            await fetch(url, **settings)
        assert refused.value.hresult == 0x80190197 and refused.value.context is ErrorContext.REMOTE_FILE
    answers: list[BasicAnswer] = []

    def auth(options: RequestOptions, entry: ProxyEntry, defaults: DefaultCredentials) -> BasicAnswer:
        answers.append(BasicAnswer(USER, PASSWORD))
        return answers[-1]

    fetch = Fetcher(closing, dest, proxy_auth=auth)
    for url, method in ((f"{nginx.url}/px/auth.bin", "GET"), (f"{nginx.https_url}/px/auth.bin", "CONNECT")):
        got = await fetch(url, **settings)
        assert sha256_file(got) == digest
        assert answers[-1].asked == [(407, method)]


# -- AUTODETECT -----------------------------------------------------------------------------


async def test_autodetect_follows_a_pac_script_served_by_nginx(
    nginx: Nginx, tinyproxy: Tinyproxy, closing: H1Client, dest: Path
) -> None:
    refused = REFUSED_PORT
    script = f"""
        function FindProxyForURL(url, host) {{
            if (host == "localhost") return "PROXY {HOST}:{refused}; PROXY {HOST}:{tinyproxy.port}";
            return "DIRECT";
        }}
    """
    (nginx.www / "px").mkdir(exist_ok=True)
    (nginx.www / "px" / "proxy.pac").write_text(script)
    make_file(nginx.www, "px/pac.bin", 20_000, seed=11)
    evaluator = PacEvaluator(time_limit_s=5)
    try:
        pac = PacRoutes(functools.partial(fetch_text, closing), evaluator, f"{nginx.url}/px/proxy.pac")
        fetch = Fetcher(closing, dest, Proxies(pac=pac))
        await fetch(f"{nginx.url}/px/pac.bin", proxy_usage=ProxyUsage.AUTODETECT)
        assert "/px/pac.bin" not in tinyproxy.log(), "127.0.0.1 goes DIRECT"
        await fetch(f"http://localhost:{nginx.port}/px/pac.bin", proxy_usage=ProxyUsage.AUTODETECT)
        assert f"localhost:{nginx.port}/px/pac.bin" in tinyproxy.log(), (
            "localhost goes through the second proxy"
        )
        assert pac.fetched == 1
    finally:
        await evaluator.close()


# -- an https:// proxy ----------------------------------------------------------------------


@pytest.fixture
async def tls_proxy(
    tinyproxy: Tinyproxy, nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[int]:
    """An https:// proxy: TLS on a port of its own, relayed to tinyproxy (what stunnel or an
    nginx stream block in front of a proxy does); its CA and nginx's are trusted."""
    ca = trustme.CA()
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(ca.cert_pem.bytes() + nginx.ca_path.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        proxy_r, proxy_w = await asyncio.open_connection(HOST, tinyproxy.port)
        await asyncio.gather(pipe(client_r, proxy_w), pipe(proxy_r, client_w))

    server = await asyncio.start_server(relay, HOST, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_an_https_proxy_for_http_and_https_urls(
    nginx: Nginx, tinyproxy: Tinyproxy, tls_proxy: int, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/tlsproxy.bin", 400_000, seed=12)
    fetch = Fetcher(closing, dest)
    settings = override(f"https://{HOST}:{tls_proxy}")
    got = await fetch(f"{nginx.url}/px/tlsproxy.bin", **settings)
    assert sha256_file(got) == digest
    assert f"{nginx.url}/px/tlsproxy.bin" in tinyproxy.log(), "absolute form, inside the TLS to the proxy"
    got = await fetch(f"{nginx.https_url}/px/tlsproxy.bin", **settings)  # TLS inside TLS
    assert sha256_file(got) == digest
    assert f"CONNECT {HOST}:{nginx.https_port}" in tinyproxy.log()


async def test_a_job_set_to_autodetect_is_routed_by_the_scheduler(
    tmp_path: Path, nginx: Nginx, tinyproxy: Tinyproxy, closing: H1Client
) -> None:
    """The job's ProxyUsage reaches the transfer (RequestOptions.of): set on the live job, as
    SetProxySettings will, and run by the scheduler over a real store."""
    (nginx.www / "px").mkdir(exist_ok=True)
    (nginx.www / "px" / "all.pac").write_text(
        f'function FindProxyForURL(url, host) {{ return "PROXY {HOST}:{tinyproxy.port}"; }}'
    )
    digest = make_file(nginx.www, "px/sched.bin", 30_000, seed=13)
    evaluator = PacEvaluator(time_limit_s=5)
    try:
        pac = PacRoutes(functools.partial(fetch_text, closing), evaluator, f"{nginx.url}/px/all.pac")
        async with Driver(tmp_path, proxies=Proxies(pac=pac)) as d:
            job = await d.job(f"{nginx.url}/px/sched.bin", resume=False)
            job.proxy_usage = ProxyUsage.AUTODETECT
            d.service.resume(job)
            await d.settle()
            assert job.state is JobState.TRANSFERRED, job.error
            assert sha256_file(Path(job.files[0].temp_path or "")) == digest
    finally:
        await evaluator.close()
    assert "/px/sched.bin" in tinyproxy.log()


async def test_a_login_in_the_proxy_url_is_sent_from_the_start(
    nginx: Nginx, tinyproxy_auth: Tinyproxy, trust_nginx: None, closing: H1Client, dest: Path
) -> None:
    digest = make_file(nginx.www, "px/userinfo.bin", 10_000, seed=14)
    fetch = Fetcher(closing, dest)
    env = {"all_proxy": f"http://{USER}:{PASSWORD}@{HOST}:{tinyproxy_auth.port}"}
    for url in (f"{nginx.url}/px/userinfo.bin", f"{nginx.https_url}/px/userinfo.bin"):
        got = await fetch(url, proxy_environment=env)
        assert sha256_file(got) == digest
    log = tinyproxy_auth.log()
    assert "/px/userinfo.bin" in log and f"CONNECT {HOST}:{nginx.https_port}" in log
    wrong = {"all_proxy": f"http://{USER}:nope@{HOST}:{tinyproxy_auth.port}"}
    with pytest.raises(BitsError) as refused:  # (not the tunnel the right login opened)
        await fetch(f"{nginx.https_url}/px/userinfo.bin", proxy_environment=wrong)
    assert refused.value.hresult == 0x80190197  # (tinyproxy says 401 to CONNECT: the proxy's)


def test_the_daemon_follows_the_pac_url_of_its_proxy_table(
    tmp_path: Path, nginx: Nginx, tinyproxy: Tinyproxy, dest: Path
) -> None:
    """The composition: ``[proxy] pac_url`` → the daemon's PAC worker, the script fetched
    over h1, the job's AUTODETECT (written into its store row while the daemon is down:
    SetProxySettings is another branch's)."""
    (nginx.www / "px").mkdir(exist_ok=True)
    (nginx.www / "px" / "daemon.pac").write_text(
        f'function FindProxyForURL(url, host) {{ return "PROXY {HOST}:{tinyproxy.port}; DIRECT"; }}'
    )
    digest = make_file(nginx.www, "px/daemon-pac.bin", 40_000, seed=15)
    daemon = Daemon(tmp_path / "d", config={"proxy_pac_url": f"{nginx.url}/px/daemon.pac"})
    daemon.start()
    try:
        job = daemon.client.create_job("pac").job_id
        daemon.client.add_file(job, f"{nginx.url}/px/daemon-pac.bin", str(dest / "pac.bin"))
    finally:
        daemon.stop()
    with sqlite3.connect(daemon.state_dir / "jobs.sqlite") as db:
        assert db.execute("UPDATE jobs SET proxy_usage = 3").rowcount == 1
    db.close()
    daemon.start()
    try:
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED)
        daemon.client.complete(job)
    finally:
        daemon.stop()
    assert sha256_file(dest / "pac.bin") == digest
    assert "/px/daemon-pac.bin" in tinyproxy.log()
