"""Which way a request goes (transfer/proxy.py, pac.py, pacworker.py): the proxy environment
read as curl and requests read it, the ProxyUsage modes, PAC answers, and the PAC worker's
time limit and sandbox."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openbits.config import Config
from openbits.model import AuthScheme, AuthTarget, Credential, ProxyUsage, Secret
from openbits.transfer.options import RequestOptions
from openbits.transfer.pac import PacRoutes, parse_pac_result
from openbits.transfer.pacworker import PacEvaluator, PacFailed
from openbits.transfer.proxy import (
    DIRECT,
    EnvProxies,
    Proxies,
    Route,
    parse_environment,
    parse_no_proxy,
    parse_proxy_url,
)
from openbits.transfer.proxylist import ProxyEntry
from tests.support.nginx import wait_until
from tests.support.polling import eventually


def http(host: str, port: int) -> Route:
    return Route(ProxyEntry("http", host, port))


# -- PRECONFIG: the environment ------------------------------------------------------------


def test_lower_case_wins_and_upper_case_counts_alone() -> None:
    env = parse_environment(
        {"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:2", "HTTPS_PROXY": "up:3"}
    )
    assert env.http == http("low", 1)
    assert env.https == http("up", 3)  # (no scheme: an HTTP proxy)


def test_all_proxy_serves_the_scheme_without_its_own() -> None:
    env = parse_environment({"ALL_PROXY": "socks5h://s:1080", "https_proxy": "http://h:3128"})
    assert env.http == Route(ProxyEntry("socks5h", "s", 1080))
    assert env.https == http("h", 3128)


def test_a_proxy_url_keeps_its_login_and_unknown_schemes_are_ignored() -> None:
    route = parse_proxy_url("http://us%40er:p%3Ass@proxy.example:8080/")
    assert route is not None
    assert (route.proxy, route.user, route.password) == (
        ProxyEntry("http", "proxy.example", 8080),
        "us@er",
        "p:ss",
    )
    assert "p:ss" not in repr(route)
    assert parse_proxy_url("socks4://s:1080") is None
    assert parse_proxy_url("") is None
    assert parse_proxy_url("http://[::1]:3128") == Route(ProxyEntry("http", "::1", 3128))


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("example.com", "example.com", 80, True),
        ("example.com", "www.example.com", 80, True),
        (".example.com", "www.example.com", 80, True),
        ("*.example.com", "a.b.example.com", 80, True),
        ("example.com", "badexample.com", 80, False),
        ("*", "anything", 80, True),
        ("10.0.0.0/8, 127.0.0.1", "10.1.2.3", 80, True),
        ("10.0.0.0/8 127.0.0.1", "127.0.0.1", 80, True),
        ("10.0.0.0/8", "11.0.0.1", 80, False),
        ("host:8080", "host", 8080, True),
        ("host:8080", "host", 80, False),
        ("::1", "[::1]", 80, True),
        ("", "example.com", 80, False),
    ],
)
def test_no_proxy_reads_as_curl_does(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert parse_no_proxy(no_proxy).matches(host, port) is bypassed


def test_routes_of_the_environment_skip_what_no_proxy_names() -> None:
    env = parse_environment({"http_proxy": "p:1", "no_proxy": "direct.example"})
    assert env.routes("http", "direct.example", 80) is DIRECT
    assert env.routes("http", "other.example", 80) == (http("p", 1),)
    assert env.routes("https", "other.example", 443) is DIRECT  # no https proxy


# -- the modes -----------------------------------------------------------------------------


def options(**kw: object) -> RequestOptions:
    return RequestOptions(job_id="{job}", **kw)  # type: ignore[arg-type]


def test_a_job_without_settings_under_a_daemon_without_proxies_is_the_constant() -> None:
    assert Proxies().fixed("http://h/f", options()) is DIRECT
    assert Proxies().fixed("http://h/f", options(proxy_environment={})) is DIRECT


def test_preconfig_takes_the_jobs_environment_then_the_daemons() -> None:
    proxies = Proxies(parse_environment({"http_proxy": "http://daemon:1"}))
    assert proxies.fixed("http://h/f", options()) == (http("daemon", 1),)
    job_env = options(proxy_environment={"HTTP_PROXY": "http://caller:2"})
    assert proxies.fixed("http://h/f", job_env) == (http("caller", 2),)
    # an environment that names no proxy leaves it to the daemon's settings
    assert proxies.fixed("http://h/f", options(proxy_environment={"LANG": "C"})) == (http("daemon", 1),)


def test_the_proxy_table_wins_over_the_daemons_environment() -> None:
    table = {"http": "http://table:1", "https": "", "no_proxy": "skip.example"}
    proxies = Proxies.of(table, {"http_proxy": "http://environ:2"})
    assert proxies.fixed("http://h/f", options()) == (http("table", 1),)
    assert proxies.fixed("http://skip.example/f", options()) is DIRECT
    assert Proxies.of({"http": ""}, {"http_proxy": "http://environ:2"}).daemon == parse_environment(
        {"http_proxy": "http://environ:2"}
    )
    assert Proxies.of({}, {}).daemon == EnvProxies()


def test_no_proxy_goes_direct_whatever_the_daemon_has() -> None:
    proxies = Proxies(parse_environment({"all_proxy": "http://daemon:1"}))
    assert proxies.fixed("http://h/f", options(proxy_usage=ProxyUsage.NO_PROXY)) is DIRECT


def test_override_lists_in_order_per_scheme_unless_bypassed() -> None:
    mode = {"proxy_usage": ProxyUsage.OVERRIDE}
    o = options(**mode, proxy_list="http=only-http:1 a:2;socks5://s:3", proxy_bypass_list="<local>;*.corp")
    proxies = Proxies()
    assert proxies.fixed("http://h.example/f", o) == (
        Route(ProxyEntry("http", "only-http", 1, "http")),
        http("a", 2),
        Route(ProxyEntry("socks5", "s", 3)),
    )
    assert proxies.fixed("https://h.example/f", o) == (http("a", 2), Route(ProxyEntry("socks5", "s", 3)))
    assert proxies.fixed("http://localhost:8080/f", o) is DIRECT  # <local>: no dot
    assert proxies.fixed("http://x.corp/f", o) is DIRECT


def test_autodetect_asks_the_pac_script() -> None:
    assert Proxies().fixed("http://h/f", options(proxy_usage=ProxyUsage.AUTODETECT)) is None


def test_the_socks_login_is_the_basic_proxy_credential() -> None:
    creds = (
        Credential(AuthTarget.SERVER, AuthScheme.BASIC, "srv", Secret("no")),
        Credential(AuthTarget.PROXY, AuthScheme.BASIC, "px", Secret("pw")),
    )
    o = options(credentials=creds)
    assert o.proxy_login() == ("px", "pw")
    assert o.partition.startswith("{job}/")  # (its connections are its own)
    assert "pw" not in o.partition
    other = options(
        credentials=(*creds[:1], Credential(AuthTarget.PROXY, AuthScheme.BASIC, "px", Secret("new")))
    )
    assert other.partition != o.partition  # (a changed password opens new connections)
    assert options().partition == ""


# -- PAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "routes"),
    [
        ("DIRECT", DIRECT),
        ("PROXY a:1; DIRECT", (http("a", 1), Route())),
        ("  proxy a:1 ;; SOCKS5 s:1080", (http("a", 1), Route(ProxyEntry("socks5", "s", 1080)))),
        (
            "SOCKS s:9; HTTPS t:443",
            (Route(ProxyEntry("socks5", "s", 9)), Route(ProxyEntry("https", "t", 443))),
        ),
        ("HTTP h:8", (http("h", 8),)),
        ("SOCKS4 old:1; PROXY ok:2", (http("ok", 2),)),
        ("PROXY", DIRECT),
        ("garbage here; PROXY bad host:1", DIRECT),
        ("", DIRECT),
    ],
)
def test_pac_answers_read_in_order(answer: str, routes: tuple[Route, ...]) -> None:
    assert parse_pac_result(answer) == routes


RUNAWAY = """
function FindProxyForURL(url, host) {
    if (host == "loop") { while (true) {} }
    if (host == "slow") { var t = Date.now(); while (Date.now() - t < 3000) {} return "PROXY slow:1"; }
    if (host == "env") { return "PROXY " + Object.keys(process.env).length + ":1"; }
    if (host == "require") { return typeof require == "undefined" ? "DIRECT" : "PROXY leak:1"; }
    return "PROXY p:" + (shExpMatch(host, "*.example") ? 1 : 2);
}
"""


async def test_a_runaway_pac_script_is_stopped_and_the_worker_replaced() -> None:
    evaluator = PacEvaluator(time_limit_s=3.0)  # (the limit covers a worker's start: ~0.3 s idle)
    try:
        assert await evaluator.find(RUNAWAY, "http://a.example/", "a.example") == "PROXY p:1"
        started = time.monotonic()
        with pytest.raises(PacFailed, match="within 3 s"):
            await evaluator.find(RUNAWAY, "http://loop/", "loop")
        assert time.monotonic() - started < 10
        assert await evaluator.find(RUNAWAY, "http://b/", "b") == "PROXY p:2"
        assert evaluator.started == 2
    finally:
        await evaluator.close()


async def test_a_question_given_up_half_way_never_answers_the_next_one() -> None:
    """A job's task cancelled while the script runs (Suspend, Cancel): the next question
    gets its own answer, not the one left in the pipe."""
    evaluator = PacEvaluator(time_limit_s=10.0)
    try:
        assert await evaluator.find(RUNAWAY, "http://a.example/", "a.example") == "PROXY p:1"
        asked = asyncio.create_task(evaluator.find(RUNAWAY, "http://slow/", "slow"))
        sha = hashlib.sha256(RUNAWAY.encode()).hexdigest()
        # the question is sent: the script is running it
        await eventually(lambda: evaluator._lock.locked() and sha in evaluator._loaded, step_s=0.001)
        assert not asked.done()
        asked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asked
        assert await evaluator.find(RUNAWAY, "http://b/", "b") == "PROXY p:2"
        assert await evaluator.find(RUNAWAY, "http://c.example/", "c.example") == "PROXY p:1"
    finally:
        await evaluator.close()


async def test_the_pac_sandbox_has_no_environment_and_no_module_loader() -> None:
    evaluator = PacEvaluator(time_limit_s=5.0)
    try:
        assert await evaluator.find(RUNAWAY, "http://env/", "env") == "PROXY 0:1"
        assert await evaluator.find(RUNAWAY, "http://require/", "require") == "DIRECT"
        with pytest.raises(PacFailed, match="PAC script failed"):
            await evaluator.find("function FindProxyForURL(", "http://x/", "x")
    finally:
        await evaluator.close()


async def _no_fetch(url: str) -> str:
    raise AssertionError(f"nothing to fetch over HTTP: {url}")


async def test_a_pac_file_routes_and_a_missing_one_goes_direct(tmp_path: Path) -> None:
    script = tmp_path / "proxy.pac"
    script.write_text(RUNAWAY)
    evaluator = PacEvaluator(time_limit_s=5.0)
    try:
        pac = PacRoutes(_no_fetch, evaluator, script.as_uri())
        assert await pac.routes("http://a.example/f") == (http("p", 1),)
        assert await pac.routes("http://other/f") == (http("p", 2),)
        assert pac.fetched == 1  # the script is kept
        missing = PacRoutes(_no_fetch, evaluator, (tmp_path / "none.pac").as_uri())
        assert await missing.routes("http://a.example/f") is DIRECT
    finally:
        await evaluator.close()


async def test_wpad_without_a_dns_domain_goes_direct() -> None:
    evaluator = PacEvaluator()
    pac = PacRoutes(_no_fetch, evaluator, fqdn=lambda: "dotless")
    assert await pac.routes("http://a.example/f") is DIRECT
    assert evaluator.started == 0


async def test_wpad_asks_the_domains_wpad_host() -> None:
    asked: list[str] = []

    async def fetch(url: str) -> str:
        asked.append(url)
        return 'function FindProxyForURL(u, h) { return "PROXY w:8"; }'

    evaluator = PacEvaluator()
    try:
        pac = PacRoutes(fetch, evaluator, fqdn=lambda: "box.corp.example")
        assert await pac.routes("http://a/f") == (http("w", 8),)
        assert asked == ["http://wpad.corp.example/wpad.dat"]
    finally:
        await evaluator.close()


# -- configuration -------------------------------------------------------------------------


def test_the_proxy_table_of_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "openbits.toml"
    path.write_text(
        '[openbits]\nmax_files_per_job = 3\n\n[proxy]\nhttp = "http://p:1"\npac_url = "file:///x.pac"\n'
    )
    config = Config.load(str(path))
    assert (config.proxy_http, config.proxy_pac_url, config.max_files_per_job) == (
        "http://p:1",
        "file:///x.pac",
        3,
    )
    path.write_text('[proxy]\nhttp = "http://p:1"\nftp = "x"\n')
    with pytest.raises(ValueError, match="ftp"):
        Config.load(str(path))


ORPHAN = """
import asyncio, sys
from openbits.transfer.pacworker import PacEvaluator

async def main():
    evaluator = PacEvaluator(time_limit_s=600)
    task = asyncio.create_task(evaluator.find(sys.argv[1], "http://loop/", "loop"))
    while evaluator._proc is None:
        await asyncio.sleep(0.01)
    print(evaluator._proc.pid, flush=True)
    await task

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # (a zombie nobody reaps yet)
    except FileNotFoundError:
        return True


def test_the_pac_worker_dies_with_the_daemon_even_in_a_runaway_script() -> None:
    daemon = subprocess.Popen([sys.executable, "-c", ORPHAN, RUNAWAY], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        worker = int(daemon.stdout.readline())
        wait_until(lambda: _cpu_ticks(worker) > 0, 10, what="the worker to run the script")
        daemon.kill()
    finally:
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    wait_until(lambda: _gone(worker), 10, what="the worker to die with its daemon")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


#: a PAC script that tells whether it was shown what follows the host (it could send it out
#: in a name it resolves: dnsResolve(...))
PEEKING = """
function FindProxyForURL(url, host) {
    if (url.indexOf("hunter2") >= 0 || url.indexOf("sesame") >= 0) return "PROXY seen:1";
    return "DIRECT";
}
"""


async def test_a_pac_script_is_not_shown_https_paths_nor_userinfo(tmp_path: Path) -> None:
    script = tmp_path / "peek.pac"
    script.write_text(PEEKING)
    evaluator = PacEvaluator(time_limit_s=5.0)
    try:
        pac = PacRoutes(_no_fetch, evaluator, script.as_uri())
        assert await pac.routes("https://h.example/f?token=sesame") == DIRECT
        assert await pac.routes("http://alice:hunter2@h.example/f") == DIRECT
    finally:
        await evaluator.close()


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError("no Uid line")


@pytest.mark.skipif(os.geteuid() != 0, reason="the worker of a root daemon")
async def test_the_pac_worker_of_a_root_daemon_never_runs_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when ``nobody`` cannot reach the daemon's Python (a venv in a directory only root
    may enter, as pytest's 0700 tmp directory is), the worker evaluates scripts as nobody."""
    assert os.stat(tmp_path.parent).st_mode & 0o077 == 0  # (nobody cannot enter it)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
    evaluator = PacEvaluator(time_limit_s=10.0)
    try:
        assert await evaluator.find(RUNAWAY, "http://a.example/", "a.example") == "PROXY p:1"
        assert evaluator._proc is not None
        assert _uids(evaluator._proc.pid) == [65534] * 4  # real, effective, saved, file system
    finally:
        await evaluator.close()
