"""The authenticating test servers really authenticate (smoke tests of tests/support).

curl (or pyspnego, where curl cannot) against each mode of Apache, squid and microsocks:
the right password passes, a wrong one is refused (401 by an origin, 407 by a proxy, the
SOCKS handshake by microsocks), and Kerberos is proven by the mechanism Apache reports.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.support.apache import Apache
from tests.support.authclient import curl, spnego_fetch
from tests.support.kdc import PASSWORD, USER, Kdc
from tests.support.socks import Microsocks
from tests.support.squid import Squid

WRONG = "not-the-password"
BODY = "served through authentication\n"


@pytest.fixture(scope="module")
def served(apache: Apache) -> str:
    """A file every location serves; its name."""
    (apache.www / "smoke.txt").write_text(BODY)
    return "smoke.txt"


def tls_context(apache: Apache) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(apache.ca_path))


# -- origin server ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic", "digest"])
@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_origin_basic_and_digest(apache: Apache, served: str, scheme: str, https: bool) -> None:
    base = apache.origin_https_url if https else apache.origin_url
    url = f"{base}/{scheme}/{served}"
    tls = ["--cacert", str(apache.ca_path)]
    assert curl(url, *tls, f"--{scheme}", "-u", f"{USER}:{PASSWORD}").http == 200
    assert curl(url, *tls, f"--{scheme}", "-u", f"{USER}:{WRONG}").http == 401
    assert curl(url, *tls).http == 401
    assert curl(f"{base}/{served}", *tls).http == 200, "the unprotected prefix needs nothing"


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_origin_negotiate_is_kerberos_with_a_ticket(
    apache: Apache, kdc: Kdc, served: str, tmp_path: Path, https: bool
) -> None:
    base = apache.origin_https_url if https else apache.origin_url
    url = f"{base}/negotiate/{served}"
    env = kdc.kinit(tmp_path / "ccache")
    result = curl(url, "--cacert", str(apache.ca_path), "--negotiate", "-u", ":", env=env)
    assert result.http == 200
    assert "X-GSS-Mech: Negotiate/krb5" in result.headers, "Kerberos, not the NTLM fallback"
    logged = [r for r in apache.requests() if r.uri == f"/negotiate/{served}" and r.status == 200]
    assert logged[-1].user == kdc.principal and logged[-1].mech == "Negotiate/krb5"
    no_ticket = {**env, "KRB5CCNAME": f"FILE:{tmp_path / 'empty-ccache'}"}
    assert curl(url, "--cacert", str(apache.ca_path), "--negotiate", "-u", ":", env=no_ticket).http == 401


def test_origin_negotiate_from_a_password_with_pyspnego(
    apache: Apache, kdc: Kdc, served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon will do: pyspnego gets the ticket itself from the password (the
    krb5 module is installed), so the negotiated protocol is Kerberos."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'ccache'}")
    for protocol in ("kerberos", "negotiate"):
        answer = spnego_fetch(
            apache.port,
            "GET",
            f"/negotiate/{served}",
            scheme="Negotiate",
            protocol=protocol,
            user=USER,
            password=PASSWORD,
        )
        assert (answer.status, answer.mech, answer.protocol) == (200, "Negotiate/krb5", "kerberos")


def test_origin_negotiate_falls_back_to_ntlm_without_kerberos(
    apache: Apache, served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client outside the realm (no krb5.conf for it) falls back to NTLM inside SPNEGO."""
    (tmp_path / "krb5.conf").write_text("[libdefaults]\n    dns_lookup_kdc = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(tmp_path / "krb5.conf"))
    answer = spnego_fetch(
        apache.port,
        "GET",
        f"/negotiate/{served}",
        scheme="Negotiate",
        protocol="negotiate",
        user=USER,
        password=PASSWORD,
    )
    assert (answer.status, answer.protocol) == (200, "ntlm")
    assert answer.mech is not None and answer.mech.endswith("NTLM")
    wrong = spnego_fetch(
        apache.port,
        "GET",
        f"/negotiate/{served}",
        scheme="Negotiate",
        protocol="negotiate",
        user=USER,
        password=WRONG,
    )
    assert wrong.status == 401


@pytest.mark.parametrize("user", [USER, f"OPENBITS\\{USER}"])
def test_origin_ntlm(apache: Apache, served: str, user: str) -> None:
    offered = curl(f"{apache.origin_url}/ntlm/{served}").headers
    assert "WWW-Authenticate: NTLM" in offered
    right = spnego_fetch(
        apache.port, "GET", f"/ntlm/{served}", scheme="NTLM", protocol="ntlm", user=user, password=PASSWORD
    )
    assert (right.status, right.mech, right.legs) == (200, "NTLM/NTLM", 2)
    wrong = spnego_fetch(
        apache.port, "GET", f"/ntlm/{served}", scheme="NTLM", protocol="ntlm", user=user, password=WRONG
    )
    assert wrong.status == 401


# -- Apache as proxy ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic", "digest"])
def test_apache_proxy_basic_and_digest(apache: Apache, served: str, scheme: str) -> None:
    proxy = ["-x", apache.proxy_urls[scheme], f"--proxy-{scheme}"]
    http_url = f"{apache.origin_url}/{served}"
    assert curl(http_url, *proxy, "-U", f"{USER}:{PASSWORD}").http == 200
    assert curl(http_url, *proxy, "-U", f"{USER}:{WRONG}").http == 407
    https_url = f"{apache.origin_https_url}/{served}"
    tunnel = ["-p", "--cacert", str(apache.ca_path)]
    assert curl(https_url, *proxy, *tunnel, "-U", f"{USER}:{PASSWORD}").http == 200
    assert curl(https_url, *proxy, *tunnel, "-U", f"{USER}:{WRONG}").connect == 407
    assert {r.status for r in apache.requests() if r.port == apache.proxy_ports[scheme]} >= {200, 407}


def test_apache_proxy_negotiate_is_kerberos(apache: Apache, kdc: Kdc, served: str, tmp_path: Path) -> None:
    env = kdc.kinit(tmp_path / "ccache")
    proxy = ["-x", apache.proxy_urls["negotiate"], "--proxy-negotiate", "-U", ":"]
    assert curl(f"{apache.origin_url}/{served}", *proxy, env=env).http == 200
    tunnel = ["-p", "--cacert", str(apache.ca_path)]
    assert curl(f"{apache.origin_https_url}/{served}", *proxy, *tunnel, env=env).http == 200
    port = apache.proxy_ports["negotiate"]
    mechs = {(r.method, r.mech) for r in apache.requests() if r.port == port and r.status == 200}
    assert {("GET", "Negotiate/krb5"), ("CONNECT", "Negotiate/krb5")} <= mechs
    no_ticket = {**env, "KRB5CCNAME": f"FILE:{tmp_path / 'empty-ccache'}"}
    assert curl(f"{apache.origin_url}/{served}", *proxy, env=no_ticket).http == 407


def test_apache_proxy_ntlm_get_and_connect(apache: Apache, served: str) -> None:
    port = apache.proxy_ports["ntlm"]
    target = f"{apache.origin_url}/{served}"

    def fetch(method: str, where: str, password: str, tls: ssl.SSLContext | None = None) -> int:
        return spnego_fetch(
            port,
            method,
            where,
            scheme="NTLM",
            protocol="ntlm",
            user=USER,
            password=password,
            proxy=True,
            tls_through=tls,
            tunnel_path=f"/{served}",
        ).status

    assert fetch("GET", target, PASSWORD) == 200
    assert fetch("GET", target, WRONG) == 407
    authority = f"localhost:{apache.https_port}"
    assert fetch("CONNECT", authority, PASSWORD, tls_context(apache)) == 200, "GET through the tunnel"
    assert fetch("CONNECT", authority, WRONG) == 407
    users = {(r.method, r.user) for r in apache.requests() if r.port == port and r.status == 200}
    assert {("GET", USER), ("CONNECT", USER)} <= users


# -- squid --------------------------------------------------------------------------------


def test_squid_without_auth(squid: Squid, apache: Apache, served: str) -> None:
    assert curl(f"{apache.origin_url}/{served}", "-x", squid.url).http == 200
    tunnel = ["-x", squid.url, "-p", "--cacert", str(apache.ca_path)]
    assert curl(f"{apache.origin_https_url}/{served}", *tunnel).http == 200
    assert {r.method for r in squid.requests()} >= {"GET", "CONNECT"}


@pytest.mark.parametrize("scheme", ["basic", "digest"])
def test_squid_with_auth(request: pytest.FixtureRequest, apache: Apache, served: str, scheme: str) -> None:
    squid: Squid = request.getfixturevalue(f"squid_{scheme}")
    proxy = ["-x", squid.url, f"--proxy-{scheme}"]
    offered = curl(f"{apache.origin_url}/{served}", "-x", squid.url)
    assert offered.http == 407
    assert f"Proxy-Authenticate: {scheme.capitalize()}" in offered.headers
    assert curl(f"{apache.origin_url}/{served}", *proxy, "-U", f"{USER}:{PASSWORD}").http == 200
    assert curl(f"{apache.origin_url}/{served}", *proxy, "-U", f"{USER}:{WRONG}").http == 407
    tunnel = [*proxy, "-p", "--cacert", str(apache.ca_path)]
    assert curl(f"{apache.origin_https_url}/{served}", *tunnel, "-U", f"{USER}:{PASSWORD}").http == 200
    assert curl(f"{apache.origin_https_url}/{served}", *tunnel, "-U", f"{USER}:{WRONG}").connect == 407
    assert {(r.method, r.user) for r in squid.requests() if r.status == 200} >= {
        ("GET", USER),
        ("CONNECT", USER),
    }


# -- SOCKS5 -------------------------------------------------------------------------------


def test_socks5_without_auth(socks5: Microsocks, apache: Apache, served: str) -> None:
    assert curl(f"{apache.origin_url}/{served}", "--socks5", socks5.address).http == 200
    https = ["--socks5-hostname", socks5.address, "--cacert", str(apache.ca_path)]
    assert curl(f"{apache.origin_https_url}/{served}", *https).http == 200


def test_socks5_with_auth(socks5_auth: Microsocks, apache: Apache, served: str) -> None:
    url = f"{apache.origin_url}/{served}"
    assert curl(url, "--socks5", socks5_auth.address, "--proxy-user", f"{USER}:{PASSWORD}").http == 200
    wrong = curl(url, "--socks5", socks5_auth.address, "--proxy-user", f"{USER}:{WRONG}")
    assert (wrong.http, wrong.exit_code) == (0, 97), "refused at the SOCKS handshake"
    anonymous = curl(url, "--socks5", socks5_auth.address)
    assert (anonymous.http, anonymous.exit_code) == (0, 97)
