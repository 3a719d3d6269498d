"""Server authentication (SPEC §7, issue 13 item 1) against the real Apache and MIT KDC of
tests/support: the Downloader, as the scheduler drives it, with ``RequestOptions`` carrying
the job's credentials.  Right password → the file; wrong → BG_E_HTTP_ERROR_401 (REMOTE_FILE);
Kerberos proven by the mechanism Apache logs; NTLM and Negotiate need their legs on one
connection (``GssapiConnectionBound On``); no Authorization before the 401."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import AuthScheme, AuthTarget, Credential, ErrorContext, JobFile, JobState, Secret
from openbits.store.sqlite import SqliteStore
from openbits.transfer.download import Downloader, Owner, RequestOptions
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import TLSContexts
from tests.support.apache import Apache
from tests.support.daemon import Daemon
from tests.support.kdc import PASSWORD, USER, Kdc
from tests.support.rawserver import RecordingProgress

BODY = b"served only to the job that proves who it is\n" * 100
WRONG = "not-the-password"
NAME = "auth.bin"


@pytest.fixture(scope="module")
def served(apache: Apache) -> str:
    (apache.www / NAME).write_bytes(BODY)
    return NAME


@pytest.fixture
async def downloader(apache: Apache, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Downloader]:
    """A Downloader over h1 as the daemon has it, trusting the Apache's test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(apache.ca_path))
    h1 = H1Client(connect_timeout_s=10, read_timeout_s=10, default_headers={"User-Agent": "openbits-test"})
    yield Downloader(h1, tls=TLSContexts())
    await h1.close()


@pytest.fixture
def kerberos(kdc: Kdc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kdc:
    """The daemon's environment inside the realm (its krb5.conf), with an empty ticket cache."""
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ccache'}")
    return kdc


def server(scheme: AuthScheme, user: str | None = USER, password: str | None = PASSWORD) -> Credential:
    return Credential(AuthTarget.SERVER, scheme, user, Secret(password) if password is not None else None)


async def fetch(downloader: Downloader, url: str, tmp_path: Path, *credentials: Credential) -> bytes:
    """Download ``url`` as a job with ``credentials`` (into a new directory of ``tmp_path``);
    the bytes of its temporary file."""
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    file = JobFile(remote_url=url, local_file=str(where / "out.bin"), temp_name="BITauth.tmp")
    options = RequestOptions(job_id="{job-auth}", credentials=credentials)
    await downloader.download(file, Owner(os.getuid(), os.getgid()), RecordingProgress(), 2, options)
    return Path(file.temp_path).read_bytes()


async def refused(downloader: Downloader, url: str, tmp_path: Path, *credentials: Credential) -> BitsError:
    with pytest.raises(BitsError) as caught:
        await fetch(downloader, url, tmp_path, *credentials)
    error = caught.value
    assert error.hresult == HResult.BG_E_HTTP_ERROR_401
    assert error.context == ErrorContext.REMOTE_FILE
    assert not error.retried()
    for secret in (PASSWORD, WRONG):
        assert secret not in str(error)
    return error


def logged(apache: Apache, path: str) -> list[tuple[int, str | None, str | None]]:
    return [(r.status, r.user, r.mech) for r in apache.requests() if r.uri == path]


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
async def test_basic(
    apache: Apache,
    served: str,
    downloader: Downloader,
    tmp_path: Path,
    https: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = apache.origin_https_url if https else apache.origin_url
    path = f"/basic/{served}"
    before = len(logged(apache, path))
    with caplog.at_level(logging.WARNING, logger="openbits.transfer"):
        assert await fetch(downloader, base + path, tmp_path, server(AuthScheme.BASIC)) == BODY
    # nothing was sent before the server asked: a 401 without a user, then the 200 with one
    assert logged(apache, path)[before:] == [(401, None, None), (200, USER, None)]
    warned = [r.getMessage() for r in caplog.records if "Basic" in r.getMessage()]
    assert len(warned) == (0 if https else 1)
    assert all(PASSWORD not in text for text in caplog.messages)
    error = await refused(downloader, base + path, tmp_path, server(AuthScheme.BASIC, password=WRONG))
    assert "refused" in str(error)


async def test_basic_warning_once_per_job(
    apache: Apache, served: str, downloader: Downloader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{apache.origin_url}/basic/{served}"
    with caplog.at_level(logging.WARNING, logger="openbits.transfer"):
        for _ in range(3):
            assert await fetch(downloader, url, tmp_path, server(AuthScheme.BASIC)) == BODY
    assert len([m for m in caplog.messages if "Basic" in m]) == 1


async def test_digest(apache: Apache, served: str, downloader: Downloader, tmp_path: Path) -> None:
    path = f"/digest/{served}"
    # a Basic credential alone cannot answer Digest; with both, Digest answers
    error = await refused(downloader, apache.origin_url + path, tmp_path, server(AuthScheme.BASIC))
    assert "no server credential for the schemes the server offered (Digest)" in str(error)
    both = (server(AuthScheme.BASIC), server(AuthScheme.DIGEST))
    assert await fetch(downloader, apache.origin_url + path, tmp_path, *both) == BODY
    assert logged(apache, path)[-1] == (200, USER, None)
    await refused(downloader, apache.origin_url + path, tmp_path, server(AuthScheme.DIGEST, password=WRONG))


@pytest.mark.parametrize("user", [USER, f"OPENBITS\\{USER}"])
async def test_ntlm(apache: Apache, served: str, downloader: Downloader, tmp_path: Path, user: str) -> None:
    """NTLM's three legs share one connection (Apache binds the context to it), and the
    job's next file goes over that authenticated connection without a new handshake."""
    path = f"/ntlm/{served}"
    h1 = downloader.transport.h1
    assert h1 is not None
    before = len(logged(apache, path))
    for _ in range(2):
        assert (
            await fetch(downloader, apache.origin_url + path, tmp_path, server(AuthScheme.NTLM, user)) == BODY
        )
    entries = logged(apache, path)[before:]
    assert [status for status, _who, _mech in entries] == [401, 401, 200, 200]
    assert all(mech is not None and mech.endswith("NTLM") for _s, _w, mech in entries[2:])
    assert h1.connections_opened == 1
    await refused(downloader, apache.origin_url + path, tmp_path, server(AuthScheme.NTLM, user, WRONG))


async def test_ntlm_over_https_with_channel_bindings(
    apache: Apache, served: str, downloader: Downloader, tmp_path: Path
) -> None:
    """Over TLS the NTLM tokens carry the server certificate's channel binding."""
    path = f"/ntlm/{served}"
    assert await fetch(downloader, apache.origin_https_url + path, tmp_path, server(AuthScheme.NTLM)) == BODY
    assert logged(apache, path)[-1][0] == 200


async def test_negotiate_is_kerberos(
    apache: Apache, kerberos: Kdc, served: str, downloader: Downloader, tmp_path: Path
) -> None:
    path = f"/negotiate/{served}"
    for base in (apache.origin_url, apache.origin_https_url):
        creds = (server(AuthScheme.NEGOTIATE), server(AuthScheme.NTLM), server(AuthScheme.BASIC))
        assert await fetch(downloader, base + path, tmp_path, *creds) == BODY
        assert logged(apache, path)[-1] == (200, kerberos.principal, "Negotiate/krb5")
    error = await refused(
        downloader, apache.origin_url + path, tmp_path, server(AuthScheme.NEGOTIATE, password=WRONG)
    )
    assert "Negotiate" in str(error)


async def test_negotiate_with_the_default_credentials_uses_the_ticket_cache(
    apache: Apache,
    kerberos: Kdc,
    served: str,
    downloader: Downloader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SetCredentials with both names null: the owner's Kerberos ccache (KRB5CCNAME)."""
    path = f"/negotiate/{served}"
    no_names = server(AuthScheme.NEGOTIATE, None, None)
    await refused(downloader, apache.origin_url + path, tmp_path, no_names)  # no ticket yet
    env = kerberos.kinit(tmp_path / "ccache")
    monkeypatch.setenv("KRB5CCNAME", env["KRB5CCNAME"])
    assert await fetch(downloader, apache.origin_url + path, tmp_path, no_names) == BODY
    assert logged(apache, path)[-1] == (200, kerberos.principal, "Negotiate/krb5")


async def test_negotiate_falls_back_to_ntlm(
    apache: Apache, kerberos: Kdc, served: str, downloader: Downloader, tmp_path: Path
) -> None:
    """No service ticket for HTTP/127.0.0.1: SPNEGO goes on with NTLM, on the same connection."""
    url = f"http://127.0.0.1:{apache.port}/negotiate/{served}"
    assert await fetch(downloader, url, tmp_path, server(AuthScheme.NEGOTIATE)) == BODY
    status, _who, mech = logged(apache, f"/negotiate/{served}")[-1]
    assert status == 200 and mech == "Negotiate/NTLM"


async def test_a_lost_password_is_reported(
    apache: Apache, served: str, downloader: Downloader, tmp_path: Path
) -> None:
    lost = Credential(AuthTarget.SERVER, AuthScheme.BASIC, USER, None, missing=True)
    error = await refused(downloader, f"{apache.origin_url}/basic/{served}", tmp_path, lost)
    assert "lost" in str(error) and "key file" in str(error)


async def test_proxy_credentials_do_not_answer_a_server(
    apache: Apache, served: str, downloader: Downloader, tmp_path: Path
) -> None:
    proxy = Credential(AuthTarget.PROXY, AuthScheme.BASIC, USER, Secret(PASSWORD))
    await refused(downloader, f"{apache.origin_url}/basic/{served}", tmp_path, proxy)


# -- the real daemon -------------------------------------------------------------------------


def with_credential(state_dir: Path, job_id: str, credential: Credential) -> None:
    """What SetCredentials will do, written through the store while the daemon is stopped."""
    store = SqliteStore(str(state_dir / "jobs.sqlite"))
    try:
        job = store.load_job(job_id)
        assert job is not None
        job.credentials[(credential.target, credential.scheme)] = credential
        store.save_job(job)
    finally:
        store.close()


@pytest.mark.parametrize("password", [PASSWORD, WRONG], ids=["right", "wrong"])
def test_daemon_job_with_server_credentials(
    apache: Apache, served: str, tmp_path: Path, dest: Path, password: str
) -> None:
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        job_id = daemon.client.create_job("auth").job_id
        daemon.client.add_file(job_id, f"{apache.origin_url}/digest/{served}", str(dest / "out.bin"))
    finally:
        daemon.stop()
    with_credential(daemon.state_dir, job_id, server(AuthScheme.DIGEST, password=password))
    daemon.start()
    try:
        daemon.client.resume(job_id)
        if password == PASSWORD:
            daemon.wait_state(job_id, JobState.TRANSFERRED)
            daemon.client.complete(job_id)
            assert (dest / "out.bin").read_bytes() == BODY
        else:
            daemon.wait_state(job_id, JobState.ERROR)
            error = daemon.client.get_error(job_id)
            assert (error.hresult, error.context) == (HResult.BG_E_HTTP_ERROR_401, ErrorContext.REMOTE_FILE)
            assert "refused" in error.error_description
        instance = json.dumps(daemon.job(job_id))
        assert '"UserName": "alice"' in instance and password not in instance
    finally:
        daemon.stop()
    for leftover in daemon.state_dir.iterdir():  # the store, its WAL, the log: never the password
        if leftover.is_file():
            assert password.encode() not in leftover.read_bytes(), leftover.name
