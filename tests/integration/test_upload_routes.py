"""Uploads go everywhere downloads go (``routing.Requester``): through a real squid in
absolute form (with Basic proxy credentials: after the Ping's 407, every packet carries
them), through SOCKS5 with a login, and to a server that asks for Basic credentials (up front only
to the origin that asked)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openbits.model import AuthScheme, AuthTarget, Credential, JobFile, ProxyUsage, Secret, UploadState
from openbits.transfer.auth import basic_value
from openbits.transfer.download import Owner, RequestOptions
from openbits.transfer.upload import Uploader
from tests.support.apache import NTLM_DOMAIN, Apache
from tests.support.bitsserver import BitsServer, UploadRecorder, bits_server, uploader_client
from tests.support.kdc import PASSWORD, USER
from tests.support.socks import Microsocks
from tests.support.squid import Squid

MiB = 1024 * 1024


@pytest.fixture
async def uploader() -> AsyncIterator[Uploader]:
    async with uploader_client(read_timeout_s=10) as u:
        yield u


async def upload(uploader: Uploader, url: str, tmp_path: Path, **settings: object) -> bytes:
    data = os.urandom(2 * MiB + 3)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    st = path.stat()
    state = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    file = JobFile(url, str(path), bytes_total=len(data))
    options = RequestOptions(job_id="{upload-route}", **settings)  # type: ignore[arg-type]
    await uploader.upload(file, state, Owner(os.geteuid(), os.getegid()), UploadRecorder(file), 2, options)
    assert state.closed
    return data


def proxy_login() -> tuple[Credential, ...]:
    return (Credential(AuthTarget.PROXY, AuthScheme.BASIC, USER, Secret(PASSWORD)),)


async def test_an_upload_through_squid_in_absolute_form(
    uploader: Uploader, squid: Squid, tmp_path: Path
) -> None:
    async with bits_server() as server:
        data = await upload(
            uploader, f"{server.url}/p/a.bin", tmp_path, proxy_usage=ProxyUsage.OVERRIDE, proxy_list=squid.url
        )
        assert server.uploads["/p/a.bin"] == data and server.bytes_resent == 0
    assert any(r.method == "BITS_POST" for r in squid.requests())


async def test_an_upload_through_squid_with_basic_proxy_credentials(
    uploader: Uploader, squid_basic: Squid, tmp_path: Path
) -> None:
    async with bits_server() as server:
        data = await upload(
            uploader,
            f"{server.url}/p/b.bin",
            tmp_path,
            proxy_usage=ProxyUsage.OVERRIDE,
            proxy_list=squid_basic.url,
            credentials=proxy_login(),
        )
        assert server.uploads["/p/b.bin"] == data
    requests = [r for r in squid_basic.requests() if r.url.endswith("/p/b.bin")]
    assert any(r.user == USER for r in requests)
    # (the Ping met the 407; Basic went with every packet after it: no fragment sent twice)
    assert [r.status for r in requests].count(407) == 1


async def test_an_upload_through_socks5_with_a_login(
    uploader: Uploader, socks5_auth: Microsocks, tmp_path: Path
) -> None:
    async with bits_server() as server:
        data = await upload(
            uploader,
            f"{server.url}/s.bin",
            tmp_path,
            proxy_usage=ProxyUsage.OVERRIDE,
            proxy_list=socks5_auth.url,
            credentials=proxy_login(),
        )
        assert server.uploads["/s.bin"] == data


async def test_an_upload_to_a_server_asking_for_basic(uploader: Uploader, tmp_path: Path) -> None:
    async with bits_server(BitsServer(basic=basic_value(USER, PASSWORD))) as server:
        login = (Credential(AuthTarget.SERVER, AuthScheme.BASIC, USER, Secret(PASSWORD)),)
        data = await upload(uploader, f"{server.url}/b.bin", tmp_path, credentials=login)
        assert server.uploads["/b.bin"] == data
        assert server.bytes_resent == 0
        # (the Ping met the 401; Basic went with every packet after it)
        assert server.unauthorized == 1


async def test_basic_goes_up_front_only_to_the_origin_that_asked_for_it(
    uploader: Uploader, tmp_path: Path
) -> None:
    """The BITS-Host-Id host is another origin: it gets the job's Basic credentials when it
    asks (its own 401), never up front because the first host took them."""
    async with bits_server(BitsServer(basic=basic_value(USER, PASSWORD))) as server:
        server.host_id = "localhost"
        login = (Credential(AuthTarget.SERVER, AuthScheme.BASIC, USER, Secret(PASSWORD)),)
        data = await upload(uploader, f"{server.url}/h.bin", tmp_path, credentials=login)
        assert server.uploads["/h.bin"] == data
        # (the Ping's 401 at 127.0.0.1, the first Fragment's at localhost)
        assert server.unauthorized == 2
        later = [h for k, h in server.packets if k in ("fragment", "close-session")]
        assert later and all(h["Host"].startswith("localhost:") for h in later)


async def test_an_upload_through_an_ntlm_proxy(uploader: Uploader, apache: Apache, tmp_path: Path) -> None:
    """NTLM authenticates the connection: its legs follow each other on one, a fragment's
    body included."""
    ntlm = (Credential(AuthTarget.PROXY, AuthScheme.NTLM, f"{NTLM_DOMAIN}\\{USER}", Secret(PASSWORD)),)
    async with bits_server() as server:
        data = await upload(
            uploader,
            f"{server.url}/n.bin",
            tmp_path,
            proxy_usage=ProxyUsage.OVERRIDE,
            proxy_list=apache.proxy_urls["ntlm"],
            credentials=ntlm,
        )
        assert server.uploads["/n.bin"] == data
