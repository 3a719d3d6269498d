"""The identity methods through the Python clients (Client, AsyncClient) and the proxy
environment every way of creating a job sends (SPEC §7), against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openbits import AsyncClient, AuthScheme, AuthTarget, BitsError, CertStoreLocation, Client, ProxyUsage
from openbits.errors import HResult, InvalidArgument, NotImplementedValue
from openbits.jobs import JobCredential
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import Daemon, start_listening

PROXY_ENV = {"https_proxy": "http://user:pw-env-77@proxy.example:3128", "NO_PROXY": "localhost,.internal"}


def _stored_environments(daemon: Daemon) -> dict[str, dict[str, str] | None]:
    """Each job's proxy environment as the daemon stored it (read once it has stopped)."""
    daemon.stop()
    store = SqliteStore(str(daemon.state_dir / "jobs.sqlite"))
    try:
        return {j.display_name: j.proxy_environment for j in store.load_jobs()}
    finally:
        store.close()


def test_the_client_calls_the_identity_methods_with_typed_values(daemon: Daemon) -> None:
    client = daemon.client
    job = client.create_job("typed").job_id
    client.set_credentials(job, AuthTarget.SERVER, AuthScheme.BASIC, "alice", "pw-1")
    client.set_credentials(job, AuthTarget.PROXY, AuthScheme.NTLM)  # the default credentials
    assert client.get_job(job).credentials == (
        JobCredential(AuthTarget.SERVER, AuthScheme.BASIC, "alice"),
        JobCredential(AuthTarget.PROXY, AuthScheme.NTLM, None),
    )
    assert client.remove_credentials(job, AuthTarget.PROXY, AuthScheme.NTLM) is True
    assert client.remove_credentials(job, AuthTarget.PROXY, AuthScheme.NTLM) is False  # S_FALSE
    with pytest.raises(BitsError) as info:
        client.set_credentials(job, 7, AuthScheme.BASIC, "a", "b")
    assert info.value.hresult == HResult.BG_E_INVALID_AUTH_TARGET
    with pytest.raises(BitsError) as failed:
        client.set_credentials(job, AuthTarget.SERVER, 9, "a", "b")
    assert failed.value.hresult == HResult.BG_E_INVALID_AUTH_SCHEME
    with pytest.raises(NotImplementedValue):
        client.set_credentials(job, AuthTarget.SERVER, AuthScheme.PASSPORT, "a", "b")

    client.set_proxy_settings(job, ProxyUsage.OVERRIDE, ["http://p1:3128", "socks5://p2:1080"], "<local>")
    seen = client.get_job(job)
    assert (seen.proxy_usage, seen.proxy_list, seen.proxy_bypass_list) == (
        ProxyUsage.OVERRIDE,
        "http://p1:3128 socks5://p2:1080",
        "<local>",
    )
    with pytest.raises(BitsError) as too_large:
        client.set_proxy_settings(job, ProxyUsage.OVERRIDE, "p:1 " * 9000)
    assert too_large.value.name == "BG_E_PROXY_LIST_TOO_LARGE"
    client.set_proxy_settings(job, ProxyUsage.AUTODETECT)
    assert client.get_job(job).proxy_usage is ProxyUsage.AUTODETECT

    # the certificate calls are plumbed (the methods are the certs helper's: built or E_NOTIMPL)
    with pytest.raises(ValueError):
        client.set_client_certificate_by_id(job, CertStoreLocation.CURRENT_USER, "MY", "not hex")
    for call in (
        lambda: client.set_client_certificate_by_id(job, CertStoreLocation.CURRENT_USER, "MY", "ab" * 20),
        lambda: client.set_client_certificate_by_name(job, CertStoreLocation.LOCAL_MACHINE, "MY", "CN=c"),
        lambda: client.remove_client_certificate(job),
    ):
        try:
            call()
        except BitsError as e:
            assert e.name in ("E_NOTIMPL", "CRYPT_E_NOT_FOUND", "0x80092004"), e


async def test_the_async_client_calls_them_too(daemon: Daemon) -> None:
    async with AsyncClient(daemon.socket) as client:
        job = (await client.create_job("async", proxy_environment=None)).job_id
        await client.set_credentials(job, AuthTarget.PROXY, AuthScheme.DIGEST, "bob", "pw-2")
        assert (await client.get_job(job)).credentials == (
            JobCredential(AuthTarget.PROXY, AuthScheme.DIGEST, "bob"),
        )
        assert await client.remove_credentials(job, AuthTarget.PROXY, AuthScheme.DIGEST) is True
        assert await client.remove_credentials(job, AuthTarget.PROXY, AuthScheme.DIGEST) is False
        await client.set_proxy_settings(job, ProxyUsage.NO_PROXY)
        assert (await client.get_job(job)).proxy_usage is ProxyUsage.NO_PROXY
        with pytest.raises(InvalidArgument):
            await client.set_proxy_settings(job, ProxyUsage.NO_PROXY, "p:1")  # lists: OVERRIDE only
        with pytest.raises(ValueError):
            await client.set_client_certificate_by_id(job, 0, "MY", "zz")


def test_every_way_of_creating_a_job_sends_the_callers_proxy_environment(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in PROXY_ENV.items():
        monkeypatch.setenv(name, value)
    with Client(daemon.socket) as client:
        client.create_job("client")
        client.create_job("explicit", proxy_environment={"http_proxy": "http://other:8080"})
        client.create_job("none", proxy_environment=None)
    env = dict(os.environ, OPENBITS_SOCKET=daemon.socket)
    for module, args in (
        ("openbits", ["create", "cli"]),
        ("openbits.cli.bitsadmin", ["/create", "bitsadmin"]),
    ):
        subprocess.run(
            [sys.executable, "-m", module, *args], env=env, check=True, capture_output=True, timeout=60
        )
    quiet = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    subprocess.run([sys.executable, "-m", "openbits", "create", "quiet"], env=quiet, check=True, timeout=60)

    expected = {"https_proxy": PROXY_ENV["https_proxy"], "no_proxy": PROXY_ENV["NO_PROXY"]}
    assert _stored_environments(daemon) == {
        "client": expected,
        "explicit": {"http_proxy": "http://other:8080"},
        "none": None,
        "cli": expected,
        "bitsadmin": expected,
        "quiet": None,
    }
    store_bytes = b"".join(p.read_bytes() for p in Path(daemon.state_dir).iterdir() if p.is_file())
    assert b"pw-env-77" not in store_bytes, "sealed at rest"


def test_a_daemon_over_tcp_is_not_sent_this_machines_proxy_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("https_proxy", PROXY_ENV["https_proxy"])
    daemon, port = start_listening(tmp_path / "state")
    try:
        token = daemon.client.create_token("identity")["Token"]
        with Client(url=f"http://127.0.0.1:{port}", token=token) as remote:
            remote.create_job("remote")
            remote.create_job("asked", proxy_environment={"http_proxy": "http://chosen:3128"})
        daemon.client.create_job("local")
    finally:
        environments = _stored_environments(daemon)
    assert environments == {
        "remote": None,
        "asked": {"http_proxy": "http://chosen:3128"},
        "local": {"https_proxy": PROXY_ENV["https_proxy"]},
    }
