"""Issue 13's acceptance end to end: one real daemon process, jobs configured only through
the public interfaces (`openbits credentials|proxy` and `bitsadmin` as subprocesses, the
Python Client for the rest), real servers (Apache origin and forward proxies with Basic,
Digest, NTLM and Negotiate; squid with Basic; microsocks with username/password; a PAC
script served by nginx) and a real KDC for Kerberos.

Each scheme for server and proxy targets over HTTP and HTTPS (CONNECT); a wrong password ends
in ERROR 0x80190191 / 0x80190197; Kerberos is proven by the mechanism Apache logs;
RemoveCredentials then a retry on a 401 ends in ERROR; SOCKS5 with and without credentials;
a bitsadmin script using AUTODETECT runs unchanged; a proxy's 407 and the server's 401 for the
same file; PRECONFIG (the creator's environment), NO_PROXY and OVERRIDE's failover; and, last,
the passwords are nowhere: not in the store, its WAL, the daemon's log, `--json`, events or
error texts.

One daemon for the module (started once); its jobs are FOREGROUND, so they run at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.model import JobPriority, JobState
from tests.support.apache import Apache
from tests.support.daemon import Daemon
from tests.support.fixtures import make_file, sha256_file
from tests.support.kdc import PASSWORD, USER, Kdc
from tests.support.nginx import REFUSED_PORT, Nginx
from tests.support.process import HOST
from tests.support.socks import Microsocks
from tests.support.squid import Squid

#: a wrong password, unique: found anywhere, it is a leak too
WRONG = "wr0ng-Pa55-e2e-61c9"
E_401 = 0x80190191  # BG_E_HTTP_ERROR_401
E_407 = 0x80190197  # BG_E_HTTP_ERROR_407
DONE = {JobState.TRANSFERRED, JobState.ERROR}


# -- the daemon and the ways in -------------------------------------------------------------


@pytest.fixture(scope="module")
def outputs() -> list[str]:
    """Everything the interfaces answered in this module: the last test greps it."""
    return []


@pytest.fixture(scope="module")
def e2e(
    tmp_path_factory: pytest.TempPathFactory, kdc: Kdc, apache: Apache, nginx: Nginx, squid_basic: Squid
) -> Iterator[Daemon]:
    """The daemon: Kerberos from the password alone (KRB5_CONFIG, no ticket cache), Apache's
    CA trusted, and a PAC script (for AUTODETECT) that sends ``localhost`` through squid_basic
    and everything else DIRECT."""
    work = tmp_path_factory.mktemp("identity-e2e")
    (nginx.www / "e2e").mkdir(exist_ok=True)
    (nginx.www / "e2e" / "route.pac").write_text(
        "function FindProxyForURL(url, host) {\n"
        f'    if (host == "localhost") return "PROXY {HOST}:{squid_basic.port}";\n'
        '    return "DIRECT";\n}\n'
    )
    env = {
        **kdc.client_env(),
        "KRB5CCNAME": f"FILE:{work / 'no-ccache'}",
        "SSL_CERT_FILE": str(apache.ca_path),
    }
    daemon = Daemon(work / "state", config={"proxy_pac_url": f"{nginx.url}/e2e/route.pac"}, env=env)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _run(daemon: Daemon, *args: str, prog: str = "openbits", stdin: str | None = None) -> str:
    """One CLI command as a subprocess (``stdin``: what it reads); its output. It must succeed."""
    module = "openbits" if prog == "openbits" else "openbits.cli.bitsadmin"
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def _credentials(daemon: Daemon, job: str, target: str, scheme: str, password: str) -> str:
    """`openbits credentials set JOB --target T --scheme S --user alice --password-stdin`."""
    return _run(
        daemon,
        *("credentials", "set", job, "--target", target, "--scheme", scheme),
        *("--user", USER, "--password-stdin"),
        stdin=password + "\n",
    )


def _job(daemon: Daemon, name: str, files: list[tuple[str, Path]]) -> str:
    """A FOREGROUND job with ``files``, suspended, sent no proxy environment."""
    client = daemon.client
    job = client.create_job(name, priority=JobPriority.FOREGROUND, proxy_environment=None).job_id
    for url, local in files:
        client.add_file(job, url, str(local))
    return job


def _transferred(daemon: Daemon, job: str) -> None:
    state = daemon.wait_state(job, DONE)["State"]
    if state != JobState.TRANSFERRED:
        raise AssertionError(f"{job} ended in ERROR: {daemon.client.get_error(job).raw}")
    daemon.client.complete(job)


def _failed(daemon: Daemon, job: str, hresult: int, outputs: list[str]) -> None:
    """``job`` ends in ERROR with ``hresult``; its error text (CLI and API) joins ``outputs``."""
    state = daemon.wait_state(job, DONE)["State"]
    assert state == JobState.ERROR, f"{job} transferred, though it should have failed"
    error = daemon.client.get_error(job)
    assert error.hresult == hresult, error.raw
    outputs += [json.dumps(error.raw), _run(daemon, "error", job)]


# -- 1. server credentials, each scheme ---------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "https"),
    [
        *(("basic", False), ("digest", False), ("ntlm", False), ("negotiate", False)),
        *(("basic", True), ("negotiate", True), ("ntlm", True)),
    ],
    ids=lambda v: ("https" if v else "http") if isinstance(v, bool) else v,
)
def test_server_credentials_of_each_scheme(
    e2e: Daemon, apache: Apache, dest: Path, outputs: list[str], scheme: str, https: bool
) -> None:
    name = f"e2e-server-{scheme}-{int(https)}.bin"
    digest = make_file(apache.www, name, 64_000, seed=1300 + len(scheme) + https)
    url = apache.url(scheme, name, https=https)
    right = _job(e2e, f"server {scheme}", [(url, dest / "right.bin")])
    wrong = _job(e2e, f"server {scheme} wrong", [(url, dest / "wrong.bin")])
    outputs.append(_credentials(e2e, right, "server", scheme, PASSWORD))
    outputs.append(_credentials(e2e, wrong, "server", scheme, WRONG))
    e2e.client.resume(right)
    e2e.client.resume(wrong)
    _transferred(e2e, right)
    assert sha256_file(dest / "right.bin") == digest
    _failed(e2e, wrong, E_401, outputs)

    served = [r for r in apache.requests() if r.uri == f"/{scheme}/{name}" and r.status == 200]
    assert served and served[-1].user is not None and USER in served[-1].user
    if scheme == "negotiate":
        assert served[-1].mech == "Negotiate/krb5", "Kerberos, not the NTLM fallback"


def test_negotiate_falls_back_to_ntlm_where_the_server_offers_only_ntlm(
    e2e: Daemon, apache: Apache, dest: Path, outputs: list[str]
) -> None:
    """A Negotiate credential on /ntlm/ (SPNEGO with NTLMSSP alone, as IIS without Kerberos)."""
    digest = make_file(apache.www, "e2e-fallback.bin", 16_000, seed=1350)
    job = _job(e2e, "fallback", [(apache.url("ntlm", "e2e-fallback.bin"), dest / "fallback.bin")])
    outputs.append(_credentials(e2e, job, "server", "negotiate", PASSWORD))
    e2e.client.resume(job)
    _transferred(e2e, job)
    assert sha256_file(dest / "fallback.bin") == digest
    [served] = [r for r in apache.requests() if r.uri == "/ntlm/e2e-fallback.bin" and r.status == 200]
    assert served.mech is not None and served.mech.endswith("/NTLM"), served


@pytest.mark.parametrize("scheme", ["digest", "ntlm", "negotiate"])
def test_a_job_of_several_large_files_behind_authentication(
    e2e: Daemon, apache: Apache, dest: Path, outputs: list[str], scheme: str
) -> None:
    """Each file is its own exchange (a new handshake where the connection is new), and the
    bodies are large enough to take the plain-HTTP fast path (splice)."""
    sizes = (3_000_000, 1, 700_000)
    names = [f"e2e-many-{scheme}-{i}.bin" for i in range(len(sizes))]
    digests = [
        make_file(apache.www, n, size, seed=1360 + i)
        for i, (n, size) in enumerate(zip(names, sizes, strict=True))
    ]
    job = _job(e2e, f"many {scheme}", [(apache.url(scheme, n), dest / n) for n in names])
    outputs.append(_credentials(e2e, job, "server", scheme, PASSWORD))
    e2e.client.resume(job)
    _transferred(e2e, job)
    assert [sha256_file(dest / n) for n in names] == digests


# -- 2. proxy credentials: OVERRIDE through bitsadmin ---------------------------------------------


@pytest.mark.parametrize("proxy", ["basic", "digest", "ntlm", "negotiate", "squid-basic"])
def test_proxy_credentials_of_each_scheme_through_bitsadmin(
    request: pytest.FixtureRequest, e2e: Daemon, apache: Apache, dest: Path, outputs: list[str], proxy: str
) -> None:
    squid: Squid | None = request.getfixturevalue("squid_basic") if proxy.startswith("squid") else None
    proxy_url = squid.url if squid is not None else apache.proxy_urls[proxy]
    scheme = "BASIC" if squid is not None else proxy.upper()
    names = {kind: f"e2e-proxy-{proxy}-{kind}.bin" for kind in ("http", "https", "local")}
    digests = {
        kind: make_file(apache.www, name, 32_000, seed=1400 + len(kind)) for kind, name in names.items()
    }
    files = {
        "http": f"http://{HOST}:{apache.port}/{names['http']}",  # through the proxy
        "https": f"https://{HOST}:{apache.https_port}/{names['https']}",  # CONNECT
        "local": apache.url(None, names["local"]),  # localhost: no dot, <local> bypasses it
    }
    right = _job(e2e, f"proxy {proxy}", [(url, dest / f"{kind}.bin") for kind, url in files.items()])
    wrong = _job(e2e, f"proxy {proxy} wrong", [(files["http"], dest / "wrong.bin")])
    for job, password in ((right, PASSWORD), (wrong, WRONG)):
        said = _run(e2e, "/setproxysettings", job, "OVERRIDE", proxy_url, "<local>", prog="bitsadmin")
        assert "Proxy usage set to OVERRIDE." in said
        said = _run(e2e, "/setcredentials", job, "PROXY", scheme, USER, "*", prog="bitsadmin", stdin=password)
        assert said.strip() == "OK."
        outputs.append(said)
        _run(e2e, "/resume", job, prog="bitsadmin")
    _transferred(e2e, right)
    for kind in files:
        assert sha256_file(dest / f"{kind}.bin") == digests[kind], kind
    _failed(e2e, wrong, E_407, outputs)

    # (a proxy logs a tunnel once it closes: the daemon keeps it open, so its 407 is what shows)
    tunnel = f"{HOST}:{apache.https_port}"
    if squid is not None:
        seen = [(r.method, r.url, r.status, r.user) for r in squid.requests()]
        assert ("GET", files["http"], 200, USER) in seen
        assert ("CONNECT", tunnel) in [s[:2] for s in seen], "HTTPS went through CONNECT"
        assert not [r for r in squid.requests() if names["local"] in r.url], "<local> is bypassed"
        return
    port = apache.proxy_ports[proxy]
    log = apache.requests()
    through = [r for r in log if r.port == port]
    [get] = [r for r in through if (r.method, r.uri, r.status) == ("GET", files["http"], 200)]
    assert get.user is not None and USER in get.user
    assert ("CONNECT", tunnel) in [(r.method, r.uri) for r in through], "HTTPS went through CONNECT"
    assert [r.port for r in log if r.uri == f"/{names['local']}"] == [apache.port], "<local> went direct"
    if proxy == "negotiate":
        assert get.mech == "Negotiate/krb5", "Kerberos, not the NTLM fallback"


# -- 3. RemoveCredentials, then a retry on a 401 ------------------------------------------------


def test_removed_credentials_are_not_sent_on_the_retry(
    e2e: Daemon, apache: Apache, dest: Path, outputs: list[str]
) -> None:
    digest = make_file(apache.www, "e2e-removed.bin", 20_000, seed=1500)
    job = _job(e2e, "removed", [(apache.url("basic", "e2e-removed.bin"), dest / "removed.bin")])
    outputs.append(_credentials(e2e, job, "server", "basic", PASSWORD))
    removed = _run(e2e, "/removecredentials", job, "SERVER", "BASIC", prog="bitsadmin")
    assert removed.strip() == "OK."
    e2e.client.resume(job)
    _failed(e2e, job, E_401, outputs)
    # the same job, given them again and resumed: they were what it lacked
    outputs.append(_credentials(e2e, job, "server", "basic", PASSWORD))
    e2e.client.resume(job)
    _transferred(e2e, job)
    assert sha256_file(dest / "removed.bin") == digest


# -- 4. SOCKS5 with username and password -------------------------------------------------------


def test_socks5_with_proxy_credentials(
    e2e: Daemon, apache: Apache, socks5_auth: Microsocks, dest: Path, outputs: list[str]
) -> None:
    names = {"http": "e2e-socks.bin", "https": "e2e-socks-tls.bin"}
    digests = {
        kind: make_file(apache.www, name, 24_000, seed=1600 + len(kind)) for kind, name in names.items()
    }
    files = {
        "http": f"http://{HOST}:{apache.port}/{names['http']}",
        "https": f"https://{HOST}:{apache.https_port}/{names['https']}",
    }
    right = _job(e2e, "socks", [(url, dest / f"{kind}.bin") for kind, url in files.items()])
    none = _job(e2e, "socks none", [(files["http"], dest / "none.bin")])
    wrong = _job(e2e, "socks wrong", [(files["http"], dest / "wrong.bin")])
    for job in (right, none, wrong):
        _run(e2e, "proxy", job, "override", "--list", socks5_auth.url)
    outputs.append(_credentials(e2e, right, "proxy", "basic", PASSWORD))
    outputs.append(_credentials(e2e, wrong, "proxy", "basic", WRONG))
    for job in (right, none, wrong):
        e2e.client.resume(job)
    _transferred(e2e, right)
    for kind in files:
        assert sha256_file(dest / f"{kind}.bin") == digests[kind], kind
    _failed(e2e, none, E_407, outputs)
    _failed(e2e, wrong, E_407, outputs)


# -- 5. a bitsadmin script as Windows admins write it, with AUTODETECT ----------------------------

#: (the one change a shell needs that cmd.exe does not: the ``*`` quoted, not a glob)
SCRIPT = """\
set -eu
bitsadmin /create e2e-autodetect
bitsadmin /addfile e2e-autodetect "$PROXIED_URL" "$DEST/proxied.bin"
bitsadmin /addfile e2e-autodetect "$DIRECT_URL" "$DEST/direct.bin"
bitsadmin /setproxysettings e2e-autodetect AUTODETECT
bitsadmin /setcredentials e2e-autodetect PROXY BASIC alice '*'
bitsadmin /resume e2e-autodetect
n=0
while :; do
    state=$(bitsadmin /rawreturn /getstate e2e-autodetect)
    case "$state" in
        TRANSFERRED) break ;;
        ERROR) bitsadmin /geterror e2e-autodetect; exit 2 ;;
    esac
    n=$((n + 1)); [ "$n" -lt 300 ] || exit 3
done
bitsadmin /complete e2e-autodetect
"""


def test_a_bitsadmin_script_with_autodetect_runs_unchanged(
    e2e: Daemon, apache: Apache, nginx: Nginx, squid_basic: Squid, dest: Path, outputs: list[str]
) -> None:
    proxied = make_file(apache.www, "e2e-pac.bin", 30_000, seed=1700)
    direct = make_file(nginx.www, "e2e/pac-direct.bin", 30_000, seed=1701)
    proxied_url = apache.url(None, "e2e-pac.bin")  # localhost: the PAC says squid_basic
    direct_url = f"{nginx.url}/e2e/pac-direct.bin"  # 127.0.0.1: the PAC says DIRECT
    assert "localhost" not in direct_url
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OPENBITS_SOCKET": e2e.socket,
        "PROXIED_URL": proxied_url,
        "DIRECT_URL": direct_url,
        "DEST": str(dest),
    }
    script = dest.parent / "download.sh"
    script.write_text(SCRIPT)
    result = subprocess.run(
        ["bash", str(script)], input=PASSWORD + "\n", capture_output=True, text=True, env=env, timeout=120
    )
    outputs.append(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout, result.stderr, e2e.log()[-3000:])
    assert "Proxy usage set to AUTODETECT." in result.stdout
    assert sha256_file(dest / "proxied.bin") == proxied
    assert sha256_file(dest / "direct.bin") == direct
    routed = [(r.method, r.url, r.status, r.user) for r in squid_basic.requests()]
    assert ("GET", proxied_url, 200, USER) in routed, routed
    assert not [r for r in routed if "pac-direct" in r[1]], "the PAC sent 127.0.0.1 DIRECT"


# -- 6. a proxy's 407, then the server's 401 for the same file ------------------------------------


@pytest.mark.parametrize(
    ("proxy", "scheme", "https"),
    [
        *(
            ("squid-basic", "basic", False),
            ("squid-basic", "ntlm", False),
            ("squid-basic", "negotiate", False),
        ),
        *(("squid-basic", "ntlm", True), ("squid-basic", "negotiate", True)),
        *(("digest", "digest", False), ("ntlm", "basic", False), ("negotiate", "basic", False)),
        *(("basic", "negotiate", True), ("squid-digest", "basic", False)),
        *(("negotiate", "negotiate", True), ("ntlm", "ntlm", True)),
    ],
    ids=lambda v: ("https" if v else "http") if isinstance(v, bool) else v,
)
def test_server_credentials_through_an_authenticating_proxy(
    request: pytest.FixtureRequest,
    e2e: Daemon,
    apache: Apache,
    dest: Path,
    outputs: list[str],
    proxy: str,
    scheme: str,
    https: bool,
) -> None:
    """A proxy's 407, then the origin's 401, for one file: both answered, the proxy's
    credential sent with each of the server's legs (absolute form: the proxy reads each
    request), or once for the CONNECT tunnel the server's legs go through."""
    squid: Squid | None = request.getfixturevalue(proxy.replace("-", "_")) if "squid" in proxy else None
    proxy_url = squid.url if squid is not None else apache.proxy_urls[proxy]
    proxy_scheme = proxy.removeprefix("squid-")
    name = f"e2e-both-{proxy}-{scheme}-{int(https)}.bin"
    digest = make_file(apache.www, name, 40_000, seed=1800 + len(scheme) + https)
    job = _job(e2e, f"both {proxy} {scheme}", [(apache.url(scheme, name, https=https), dest / "both.bin")])
    _run(e2e, "proxy", job, "override", "--list", proxy_url)
    outputs.append(_credentials(e2e, job, "proxy", proxy_scheme, PASSWORD))
    outputs.append(_credentials(e2e, job, "server", scheme, PASSWORD))
    e2e.client.resume(job)
    _transferred(e2e, job)
    assert sha256_file(dest / "both.bin") == digest
    origin = apache.https_port if https else apache.port
    [served] = [
        r for r in apache.requests() if (r.uri, r.status, r.port) == (f"/{scheme}/{name}", 200, origin)
    ]
    assert served.user is not None and USER in served.user
    if scheme == "negotiate":
        assert served.mech == "Negotiate/krb5"


# -- 7. the proxy usages a caller picks, against a real proxy ----------------------------------


def test_preconfig_no_proxy_and_override_failover_through_bitsadmin(
    e2e: Daemon, nginx: Nginx, squid: Squid, dest: Path
) -> None:
    """PRECONFIG follows the proxy environment of the `bitsadmin /create` that made the job;
    NO_PROXY goes direct despite it; OVERRIDE fails over from a refused proxy to the next."""
    urls = {kind: f"{nginx.url}/e2e/usage-{kind}.bin" for kind in ("preconfig", "no-proxy", "failover")}
    digests = {
        kind: make_file(nginx.www, f"e2e/usage-{kind}.bin", 16_000, seed=1900 + len(kind)) for kind in urls
    }
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(OPENBITS_SOCKET=e2e.socket, http_proxy=squid.url)
    jobs = {}
    for kind, url in urls.items():
        created = subprocess.run(
            [sys.executable, "-m", "openbits.cli.bitsadmin", "/rawreturn", "/create", f"usage {kind}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        jobs[kind] = created.stdout.strip()
        _run(e2e, "/addfile", jobs[kind], url, str(dest / f"{kind}.bin"), prog="bitsadmin")
        _run(e2e, "/setpriority", jobs[kind], "FOREGROUND", prog="bitsadmin")
    _run(e2e, "/setproxysettings", jobs["no-proxy"], "NO_PROXY", prog="bitsadmin")
    refused = f"http://{HOST}:{REFUSED_PORT}"
    chain = f"{refused},{squid.url}"
    _run(e2e, "/setproxysettings", jobs["failover"], "OVERRIDE", chain, "NULL", prog="bitsadmin")
    shown = _run(e2e, "/getproxylist", jobs["failover"], prog="bitsadmin")
    assert refused.removeprefix("http://") in shown, shown
    for job in jobs.values():
        _run(e2e, "/resume", job, prog="bitsadmin")
    for kind, job in jobs.items():
        _transferred(e2e, job)
        assert sha256_file(dest / f"{kind}.bin") == digests[kind], kind
    routed = [r.url for r in squid.requests() if r.status == 200]
    assert urls["preconfig"] in routed, "PRECONFIG: the creator's http_proxy"
    assert urls["failover"] in routed, "OVERRIDE: the second proxy, after the refused first"
    assert urls["no-proxy"] not in routed, "NO_PROXY: direct"


# -- 8. the passwords are nowhere (last: it reads what the others left) ---------------------------


def test_the_passwords_appear_nowhere(e2e: Daemon, outputs: list[str]) -> None:
    assert outputs, "the tests above ran (alone, this one proves little)"
    texts = list(outputs)
    for args, prog in (
        (("get", "--json"), "openbits"),
        (("query", "SELECT * FROM BitsClientJob", "--json"), "openbits"),
        (("/list", "/verbose"), "bitsadmin"),
    ):
        texts.append(_run(e2e, *args, prog=prog))
    kinds = set()
    stream = e2e.client.events(last_event_id=0, timeout=1)
    try:
        for event in stream:  # every event kept, then quiet: TimeoutError
            kinds.add(event.event)
            texts.append(json.dumps(event.data))
    except TimeoutError:
        pass
    finally:
        stream.close()
    assert {"JobTransferred", "JobError", "JobModification"} <= kinds, kinds
    for number, text in enumerate(texts):
        for secret in (PASSWORD, WRONG):
            assert secret not in text, f"a password is in output {number}: {text[:300]}"

    def files_hold_no_password() -> None:
        for path in e2e.state_dir.iterdir():
            if path.is_file() and not path.name.endswith(".key"):
                data = path.read_bytes()
                for secret in (PASSWORD, WRONG):
                    assert secret.encode() not in data, f"a password is in {path}"

    assert any(p.name.endswith("-wal") for p in e2e.state_dir.iterdir())
    files_hold_no_password()
    e2e.stop()  # (the module's last test: the store and log once the daemon has let go)
    files_hold_no_password()
