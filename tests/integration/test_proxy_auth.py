"""Proxy authentication (SPEC §7): a job's proxy credentials (Target PROXY) answer the 407 of
real authenticating proxies (Apache's forward proxy with Basic, Digest, NTLM and Negotiate,
squid with Basic and Digest), for plain HTTP (GET in absolute form) and HTTPS (CONNECT); a
wrong password ends in BG_E_HTTP_ERROR_407 (0x80190197), context REMOTE_FILE."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import AuthScheme, AuthTarget, Credential, ErrorContext, JobFile, ProxyUsage, Secret
from openbits.transfer.download import Downloader, Owner, RequestOptions
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import TLSContexts
from tests.support.apache import Apache
from tests.support.kdc import PASSWORD, USER, Kdc
from tests.support.rawserver import RecordingProgress
from tests.support.squid import Squid

WRONG = "not-the-password"
SCHEMES = {
    "basic": AuthScheme.BASIC,
    "digest": AuthScheme.DIGEST,
    "ntlm": AuthScheme.NTLM,
    "negotiate": AuthScheme.NEGOTIATE,
}


@pytest.fixture
async def downloader(apache: Apache, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Downloader]:
    monkeypatch.setenv("SSL_CERT_FILE", str(apache.ca_path))
    h1 = H1Client(connect_timeout_s=10, read_timeout_s=10)
    yield Downloader(h1, tls=TLSContexts())
    await h1.close()


@pytest.fixture
def kerberos(kdc: Kdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kdc:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ccache'}")
    return kdc


async def fetch(
    downloader: Downloader,
    url: str,
    proxy: str,
    tmp_path: Path,
    scheme: AuthScheme,
    password: str,
    server: Credential | None = None,
) -> bytes:
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    file = JobFile(remote_url=url, local_file=str(where / "out.bin"), temp_name="BITproxy.tmp")
    credential = Credential(AuthTarget.PROXY, scheme, USER, Secret(password))
    options = RequestOptions(
        job_id="{job-proxy-auth}",
        credentials=(credential,) if server is None else (credential, server),
        proxy_usage=ProxyUsage.OVERRIDE,
        proxy_list=proxy,
    )
    await downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2, options)
    return Path(file.temp_path or "").read_bytes()


@pytest.mark.parametrize("https", [False, True], ids=["http", "https-connect"])
@pytest.mark.parametrize("name", list(SCHEMES))
async def test_apache_proxy_schemes(
    apache: Apache, kerberos: Kdc, downloader: Downloader, tmp_path: Path, name: str, https: bool
) -> None:
    url = apache.url(None, https=https)
    proxy = apache.proxy_urls[name]
    body = await fetch(downloader, url, proxy, tmp_path, SCHEMES[name], PASSWORD)
    assert body == (apache.www / "hello.txt").read_bytes()
    port = apache.proxy_ports[name]
    mine = [r for r in apache.requests() if r.port == port and r.status in (200,)]
    assert mine and mine[-1].user is not None and USER in mine[-1].user
    if name == "negotiate":
        assert mine[-1].mech == "Negotiate/krb5"  # Kerberos, not the NTLM fallback
    with pytest.raises(BitsError) as caught:
        await fetch(downloader, url, proxy, tmp_path, SCHEMES[name], WRONG)
    assert caught.value.hresult == HResult.BG_E_HTTP_ERROR_407
    assert caught.value.context == ErrorContext.REMOTE_FILE
    assert PASSWORD not in str(caught.value) and WRONG not in str(caught.value)


@pytest.mark.parametrize("name", ["basic", "ntlm"])
async def test_a_proxy_407_then_a_server_401_are_answered_in_one_exchange(
    apache: Apache, kerberos: Kdc, downloader: Downloader, tmp_path: Path, name: str
) -> None:
    """An absolute-form GET meets the proxy's 407, then the origin's 401 (Basic): both are
    answered in one exchange, the proxy's header sent again with the server's (the 401's leg
    without it would meet the 407 again: BG_E_HTTP_ERROR_407)."""
    server = Credential(AuthTarget.SERVER, AuthScheme.BASIC, USER, Secret(PASSWORD))
    proxy = apache.proxy_urls[name]
    url = apache.url("basic")
    body = await fetch(downloader, url, proxy, tmp_path, SCHEMES[name], PASSWORD, server)
    assert body == (apache.www / "hello.txt").read_bytes()
    port = apache.proxy_ports[name]
    mine = [r for r in apache.requests() if r.port == port and r.status == 200]
    assert mine and mine[-1].user is not None and USER in mine[-1].user
    origin = [r for r in apache.requests() if r.uri.startswith("/basic/") and r.status == 200]
    assert origin and origin[-1].user == USER


@pytest.mark.parametrize("kind", ["basic", "digest"])
async def test_squid_proxy(
    request: pytest.FixtureRequest, apache: Apache, downloader: Downloader, tmp_path: Path, kind: str
) -> None:
    squid: Squid = request.getfixturevalue(f"squid_{kind}")
    for https in (False, True):
        body = await fetch(
            downloader, apache.url(None, https=https), squid.url, tmp_path, SCHEMES[kind], PASSWORD
        )
        assert body == (apache.www / "hello.txt").read_bytes()
    with pytest.raises(BitsError) as caught:
        await fetch(downloader, apache.url(None), squid.url, tmp_path, SCHEMES[kind], WRONG)
    assert caught.value.hresult == HResult.BG_E_HTTP_ERROR_407


async def test_server_and_proxy_credentials_together(
    request: pytest.FixtureRequest, apache: Apache, downloader: Downloader, tmp_path: Path
) -> None:
    squid: Squid = request.getfixturevalue("squid_basic")
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    file = JobFile(remote_url=apache.url("basic"), local_file=str(where / "out.bin"), temp_name="BITboth.tmp")
    options = RequestOptions(
        job_id="{job-proxy-and-server}",
        credentials=(
            Credential(AuthTarget.PROXY, AuthScheme.BASIC, USER, Secret(PASSWORD)),
            Credential(AuthTarget.SERVER, AuthScheme.BASIC, USER, Secret(PASSWORD)),
        ),
        proxy_usage=ProxyUsage.OVERRIDE,
        proxy_list=squid.url,
    )
    await downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2, options)
    assert Path(file.temp_path or "").read_bytes() == (apache.www / "hello.txt").read_bytes()
