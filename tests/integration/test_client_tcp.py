"""The Python clients over TCP: ``openbits serve`` with ``listen = "127.0.0.1:PORT"``, a
bearer token issued over the Unix socket (``POST /tokens``), then Client(url=, token=) and
AsyncClient(url=, token=).  The token never shows in a repr or an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import AsyncClient, Client, JobState
from openbits.errors import AccessDenied, HResult, NotFound
from tests.support.daemon import Daemon, start_listening
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str, str]]:
    """A daemon also listening on TCP, and (its URL, a token of the current user)."""
    daemon, port = start_listening(tmp_path / "state")
    try:
        body = daemon.client.create_token("test")
        assert body["Token"] and body["TokenId"]
        assert [t["TokenId"] for t in daemon.client.tokens()] == [body["TokenId"]]
        yield daemon, f"http://127.0.0.1:{port}", body["Token"]
    finally:
        daemon.stop()


def test_sync_client_over_tcp(tcp_daemon: tuple[Daemon, str, str], nginx: Nginx, tmp_path: Path) -> None:
    daemon, url, token = tcp_daemon
    digest = make_file(nginx.www, "tcp/sync.bin", 100 * 1024, seed=601)
    dest = tmp_path / "out"
    dest.mkdir()
    with Client(url=url, token=token) as client:
        assert token not in repr(client)
        job = client.create_job("over tcp")
        assert job.owner == daemon.client.get_job(job.job_id).owner  # the token acts as its user
        assert job.job_id in {j.job_id for j in client.list_jobs()}
        events = client.job_events(job=job.job_id, timeout=20)
        client.set_properties(job.job_id, description="seen")
        event = next(events)
        assert event.job is not None and event.job.description == "seen"
        events.close()
        done = client.transfer({f"{nginx.url}/tcp/sync.bin": str(dest / "sync.bin")})
        assert done.state is JobState.ACKNOWLEDGED and sha256_file(dest / "sync.bin") == digest
        with pytest.raises(NotFound):
            client.get_job("no such job")

    for bad in ("obt_not-a-token", ""):
        with Client(url=url, token=bad) as refused, pytest.raises(AccessDenied) as e:
            refused.list_jobs()
        assert e.value.hresult == HResult.E_ACCESSDENIED
        assert bad == "" or bad not in str(e.value)
    with Client(url=url, token=token + "x") as refused, pytest.raises(AccessDenied) as e:
        refused.list_jobs()
    assert token not in str(e.value) and token not in repr(e.value)


def test_environment_variables_choose_tcp(
    tcp_daemon: tuple[Daemon, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _daemon, url, token = tcp_daemon
    monkeypatch.delenv("OPENBITS_SOCKET", raising=False)
    monkeypatch.setenv("OPENBITS_URL", url)
    monkeypatch.setenv("OPENBITS_TOKEN", token)
    client = Client()
    assert client.url == url and client.socket is None
    assert client.create_job("from the environment").display_name == "from the environment"
    client.close()


async def test_async_client_over_tcp(
    tcp_daemon: tuple[Daemon, str, str], nginx: Nginx, tmp_path: Path
) -> None:
    _daemon, url, token = tcp_daemon
    digest = make_file(nginx.www, "tcp/async.bin", 100 * 1024, seed=602)
    dest = tmp_path / "out"
    dest.mkdir()
    async with AsyncClient(socket=_daemon.socket) as local:  # tokens: over the Unix socket
        spare = await local.create_token("spare")
        assert spare["TokenId"] in {t["TokenId"] for t in await local.tokens()}
        await local.revoke_token(spare["TokenId"])
        assert spare["TokenId"] not in {t["TokenId"] for t in await local.tokens()}
    async with AsyncClient(url=url, token=token) as client:
        assert token not in repr(client)
        job = await client.create_job("async over tcp")
        assert job.job_id in {j.job_id for j in await client.list_jobs()}
        async with client.job_events(job=job.job_id, timeout=20) as events:
            await client.set_properties(job.job_id, description="seen")
            event = await events.__anext__()
            assert event.job is not None and event.job.description == "seen"
        done = await client.transfer({f"{nginx.url}/tcp/async.bin": str(dest / "async.bin")})
        assert done.state is JobState.ACKNOWLEDGED and sha256_file(dest / "async.bin") == digest
    async with AsyncClient(url=url, token="obt_wrong") as wrong:
        with pytest.raises(AccessDenied) as e:
            await wrong.list_jobs()
        assert e.value.hresult == HResult.E_ACCESSDENIED and token not in str(e.value)
