"""The TCP listener (``openbits serve --listen``): bearer tokens issued over the Unix
socket, every TCP request authenticated, tokens never shown again, revocation at once."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon, start_listening
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    d, port = start_listening(tmp_path / "state")
    try:
        yield d, port
    finally:
        d.stop()


def tcp(port: int, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else None, resp.headers
    finally:
        conn.close()


def new_token(daemon: Daemon, description: str = "test") -> tuple[str, str]:
    status, body = daemon.api("POST", "/tokens", {"Description": description})
    assert status == 200, body
    assert body["Token"].startswith("obt_") and body["Description"] == description
    return str(body["TokenId"]), str(body["Token"])


def test_requests_on_tcp_need_a_valid_bearer_token(tcp_daemon: tuple[Daemon, int]) -> None:
    daemon, port = tcp_daemon
    for token in (None, "obt_not-a-token", "garbage"):
        status, body, headers = tcp(port, "GET", CLASS, token)
        assert status == 401, (token, body)
        assert body["ErrorCode"] == "0x80070005" and body["Name"] == "E_ACCESSDENIED"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    _, token = new_token(daemon)
    status, body, _ = tcp(port, "GET", CLASS, token)
    assert status == 200 and body == []
    # the token acts as the user who asked for it
    status, body, _ = tcp(port, "POST", f"{CLASS}/CreateJob", token, {"DisplayName": "over tcp"})
    assert status == 200, body
    job = daemon.job(body["JobId"])
    assert job["Owner"] == daemon.client.get_job(job["JobId"]).owner
    assert [j.job_id for j in daemon.client.list_jobs()] == [job["JobId"]]
    # the whole API is there, errors included
    status, body, _ = tcp(port, "GET", f"{CLASS}/{{00000000-0000-0000-0000-000000000000}}", token)
    assert status == 404 and body["Name"] == "BG_E_NOT_FOUND"
    assert token not in daemon.log()


def test_tokens_are_managed_over_the_unix_socket_only_and_never_shown_again(
    tcp_daemon: tuple[Daemon, int],
) -> None:
    daemon, port = tcp_daemon
    token_id, token = new_token(daemon, "ci runner")
    for method, path, body in (
        ("POST", "/tokens", {}),
        ("GET", "/tokens", None),
        ("DELETE", f"/tokens/{token_id}", None),
    ):
        status, answer, _ = tcp(port, method, path, token, body)
        assert status == 403 and answer["Name"] == "E_ACCESSDENIED", (method, answer)
    status, listed = daemon.api("GET", "/tokens")
    assert status == 200
    assert [t["TokenId"] for t in listed] == [token_id]
    assert listed[0]["Description"] == "ci runner"
    assert token not in json.dumps(listed)
    for stored in daemon.state_dir.iterdir():  # the store, its WAL, the log: a hash only
        if stored.is_file():
            assert token.encode() not in stored.read_bytes(), stored
    # revoked: refused at once
    status, answer = daemon.api("DELETE", f"/tokens/{token_id}")
    assert status == 200 and answer["ReturnValue"] == 0
    assert tcp(port, "GET", CLASS, token)[0] == 401
    assert daemon.api("DELETE", f"/tokens/{token_id}")[0] == 404
    assert daemon.api("GET", "/tokens")[1] == []


def test_tokens_survive_a_restart_and_have_limits(tmp_path: Path) -> None:
    daemon, port = start_listening(tmp_path / "state", {"max_tokens_per_user": 2})
    try:
        _, token = new_token(daemon)
        new_token(daemon)
        status, body = daemon.api("POST", "/tokens", {"Description": "third"})
        assert status == 409, body
        assert daemon.api("POST", "/tokens", {"Description": "x" * 300})[0] == 400
        assert daemon.api("POST", "/tokens", {"Nope": 1})[0] == 400
        daemon.kill()
        daemon.start()
        assert tcp(port, "GET", CLASS, token)[0] == 200
    finally:
        daemon.stop()


def test_a_transfer_and_its_events_over_tcp(tcp_daemon: tuple[Daemon, int], nginx: Nginx, dest: Path) -> None:
    daemon, port = tcp_daemon
    _, token = new_token(daemon)
    make_file(nginx.www, "tcp.bin", 100_000)
    status, body, _ = tcp(
        port,
        "POST",
        f"{CLASS}/CreateJob",
        token,
        {"RemoteUrl": f"{nginx.url}/tcp.bin", "LocalFile": str(dest / "tcp.bin"), "Suspend": False},
    )
    assert status == 200, body
    job_id = body["JobId"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "GET", f"/events?Job={job_id}&Types=JobTransferred", headers={"Authorization": f"Bearer {token}"}
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        seen: list[str] = []
        while "event: JobTransferred" not in seen:
            raw = resp.fp.readline()
            assert raw, f"the stream ended before JobTransferred: {seen}"
            seen.append(raw.decode().rstrip("\r\n"))
    finally:
        conn.close()
    assert daemon.job(job_id)["State"] in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
    status, body, _ = tcp(port, "POST", f"{CLASS}/{job_id}/SetJobState", token, {"JobState": 1})
    assert status == 200 and (dest / "tcp.bin").stat().st_size == 100_000


@pytest.mark.parametrize("listen", ["localhost:80", "127.0.0.1", "127.0.0.1:99999", "[::1:80"])
def test_a_bad_listen_setting_stops_the_daemon_with_a_clear_message(tmp_path: Path, listen: str) -> None:
    result = serve_with_listen(tmp_path, listen)
    assert result.returncode != 0
    assert "listen" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_start_up_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve_with_listen(tmp_path, f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "openbits" / "openbits.sock").exists(), "the socket is removed again"


def serve_with_listen(tmp_path: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """``openbits serve`` with ``listen`` in its config, expected to refuse to start."""
    config = tmp_path / "c.toml"
    config.write_text(f"listen = {json.dumps(listen)}\n")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "openbits",
            "serve",
            "--state-dir",
            str(tmp_path / "s"),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path)),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_token_acts_as_the_user_who_asked_for_it_and_no_one_else(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from tests.integration.test_users import api, as_nobody

    shared = Path(tempfile.mkdtemp(prefix="openbits-tcp-"))
    shared.chmod(0o755)
    daemon, port = start_listening(tmp_path / "state", {"socket_mode": 0o666}, socket=str(shared / "ob.sock"))
    try:
        sock = daemon.socket
        status, issued = as_nobody(lambda: api(sock, "POST", "/tokens", {"Description": "nb"}))
        assert status == 200
        token = issued["Token"]
        root_job = daemon.client.create_job("root's").job_id
        status, body, _ = tcp(port, "POST", f"{CLASS}/CreateJob", token, {"DisplayName": "nobody's"})
        assert status == 200
        assert daemon.job(body["JobId"])["Owner"] == "nobody"
        assert [j["JobId"] for j in tcp(port, "GET", CLASS, token)[1]] == [body["JobId"]]
        assert tcp(port, "GET", f"{CLASS}/{root_job}", token)[0] == 404
        assert tcp(port, "GET", f"{CLASS}?AllUsers=true", token)[0] == 403
        # root sees nobody's token (without the token) and may revoke it
        listed = daemon.api("GET", "/tokens?AllUsers=true")[1]
        assert [(t["Owner"], t["Description"]) for t in listed] == [("nobody", "nb")]
        assert as_nobody(lambda: api(sock, "GET", "/tokens?AllUsers=true"))[0] == 403
        assert daemon.api("DELETE", f"/tokens/{issued['TokenId']}")[0] == 200
        assert tcp(port, "GET", CLASS, token)[0] == 401
    finally:
        daemon.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_the_cli_manages_tokens_and_serve_listen_starts_the_listener(tmp_path: Path) -> None:
    # (the socket answers only once the listener is up)
    daemon, port = start_listening(tmp_path / "s", on_command_line=True, socket=str(tmp_path / "ob.sock"))
    try:

        def cli(*args: str) -> str:
            return daemon.cli(*args, check=True).stdout

        token = cli("token", "create", "--description", "from the cli").strip()
        assert token.startswith("obt_") and "\n" not in token
        assert tcp(port, "GET", CLASS, token)[0] == 200
        listed = json.loads(cli("token", "list", "--json"))
        assert [t["Description"] for t in listed] == ["from the cli"]
        assert token not in cli("token", "list")
        cli("token", "revoke", listed[0]["TokenId"])
        assert tcp(port, "GET", CLASS, token)[0] == 401
        assert cli("token", "list").strip() == "no tokens"
    finally:
        assert daemon.stop() == 0


def test_a_revoked_token_ends_its_open_event_stream(tcp_daemon: tuple[Daemon, int]) -> None:
    daemon, port = tcp_daemon
    token_id, token = new_token(daemon)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/events", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"retry:")  # the stream is open (subscribed)
        assert daemon.api("DELETE", f"/tokens/{token_id}")[0] == 200
        # the token's user changes a job: a stream of a revoked token must not show it
        job = daemon.client.create_job("after the revocation").job_id
        # the stream ends at the next thing it would send (keep-alives come every 15 s,
        # so without an end the read times out: a failure, never a hang)
        conn.sock.settimeout(10)
        seen = b""
        while line := resp.readline():
            seen += line
            assert job.encode() not in seen, "a revoked token's stream went on"
    finally:
        conn.close()


def test_an_unauthenticated_tcp_request_is_refused_before_its_body_is_read(
    tcp_daemon: tuple[Daemon, int],
) -> None:
    daemon, port = tcp_daemon
    for path, body in (
        ("/root/microsoft/bits/Query", {"Query": "SELECT * FROM BitsClientJob WHERE ((("}),
        (f"{CLASS}/CreateJob", {"DisplayName": 7}),
        ("/version", None),
    ):
        status, answer, headers = tcp(port, "POST" if body else "GET", path, None, body)
        assert status == 401, (path, answer)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert daemon.api("GET", "/version")[0] == 200  # (the Unix socket needs no token)
