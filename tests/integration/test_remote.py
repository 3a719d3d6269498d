"""Remote management (SPEC §7): the TCP listener over HTTPS (a trustme certificate), reached
by our clients, `requests`, curl and both CLIs; token scopes (read, submit, admin) that cap
the user's rights; expiry; one 401 for every invalid token; an address that keeps
presenting invalid tokens answered 429; plain HTTP refused on a non-loopback address."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from openbits import AsyncClient, Client
from openbits.config import Config
from openbits.daemon import listener_tls, parse_listen
from openbits.errors import AccessDenied
from openbits.model import JobState, unix_ns_from_filetime
from tests.support.daemon import CLASS, Daemon, start_listening, wait_until
from tests.support.nginx import free_port

POLICY = "/root/microsoft/bits/BitsServicePolicy"
QUERY = "/root/microsoft/bits/Query"
try:
    NOBODY: pwd.struct_passwd | None = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None
AS_ROOT = os.geteuid() == 0 and NOBODY is not None


@dataclass
class Remote:
    """A daemon serving HTTPS on 127.0.0.1:``port`` with a certificate of the CA in ``ca``."""

    daemon: Daemon
    port: int
    ca: Path
    cert: Path
    key: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def token(self, scope: str | None = None, expires_after_s: int | None = None) -> str:
        answer = self.daemon.client.create_token("test", scope=scope, expires_after_s=expires_after_s)
        return str(answer["Token"])

    def call(
        self,
        method: str,
        path: str,
        token: str | None,
        body: Any = None,
        source: str = "127.0.0.1",
    ) -> tuple[int, Any, http.client.HTTPMessage]:
        """One HTTPS request from ``source`` (any 127/8 address): (status, JSON, headers)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=30, context=context, source_address=(source, 0)
        )
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        decoded = (
            json.loads(payload)
            if payload and resp.headers.get_content_type() == "application/json"
            else payload
        )
        return resp.status, decoded, resp.headers


def write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A trustme CA, and a certificate of it for 127.0.0.1 and localhost: (ca, cert, key)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(paths[0]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(paths[2]))
    paths[2].chmod(0o600)
    return paths


def start_remote(state: Path, shared: Path, **config: Any) -> Remote:
    ca, cert, key = write_tls(state.parent)
    settings = {"tls_cert": str(cert), "tls_key": str(key), **config}
    if AS_ROOT:  # other users reach the socket (each still told apart by SO_PEERCRED)
        settings["socket_mode"] = 0o666
    daemon, port = start_listening(state, settings, socket=str(shared / "ob.sock"))
    return Remote(daemon, port, ca, cert, key)


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A world-reachable directory for the socket (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="openbits-remote-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[Remote]:
    r = start_remote(tmp_path_factory.mktemp("remote") / "state", shared)
    try:
        yield r
    finally:
        r.daemon.stop()


def as_nobody_on(remote: Remote, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A call over the Unix socket as the user nobody."""
    from tests.integration.test_users import api, as_nobody

    sock = remote.daemon.socket
    result: tuple[int, Any] = as_nobody(lambda: api(sock, method, path, body))
    return result


# -- HTTPS ---------------------------------------------------------------------------------------


def test_the_https_listener_serves_our_clients_requests_and_curl(remote: Remote) -> None:
    token = remote.token("submit")
    with Client(url=remote.url, token=token, cacert=str(remote.ca)) as client:
        job = client.create_job("over https")
        assert job.job_id in {j.job_id for j in client.list_jobs()}
        assert token not in repr(client)
    answer = requests.get(
        f"{remote.url}{CLASS}/{job.job_id}",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(remote.ca),
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["DisplayName"] == "over https"
    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run(
            [
                curl,
                "-sS",
                "--cacert",
                str(remote.ca),
                "-H",
                f"Authorization: Bearer {token}",
                f"{remote.url}{CLASS}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert job.job_id in {j["JobId"] for j in json.loads(out.stdout)}
    # the certificate is checked: without the CA (not in the system's trust) nothing is sent
    with Client(url=remote.url, token=token) as untrusting, pytest.raises(ssl.SSLCertVerificationError):
        untrusting.list_jobs()
    # and the listener speaks TLS only: a plain-HTTP request gets no API answer
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn = http.client.HTTPConnection("127.0.0.1", remote.port, timeout=10)
        try:
            conn.request("GET", CLASS, headers={"Authorization": f"Bearer {token}"})
            conn.getresponse().read()
        finally:
            conn.close()


async def test_the_async_client_over_https(remote: Remote) -> None:
    token = remote.token("submit")
    async with AsyncClient(url=remote.url, token=token, cacert=str(remote.ca)) as client:
        job = await client.create_job("async over https")
        assert job.job_id in {j.job_id for j in await client.list_jobs()}
    async with AsyncClient(url=remote.url, token=token) as untrusting:  # the system's trust only
        with pytest.raises(ssl.SSLCertVerificationError) as refused:  # (aiohttp: a subclass)
            await untrusting.list_jobs()
        assert "certificate verify failed" in str(refused.value), repr(refused.value)
        assert token not in str(refused.value)


def test_both_clis_reach_the_https_listener(remote: Remote, tmp_path: Path) -> None:
    token = remote.token("read")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    job = remote.daemon.client.create_job("seen by the clis").job_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBITS_")}

    def run(
        *args: str, module: str = "openbits", extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            env={**env, **(extra or {})},
            timeout=60,
            check=False,
        )

    where = ("--url", remote.url, "--token-file", str(token_file))
    listed = run(*where, "--cacert", str(remote.ca), "get", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job in {j["JobId"] for j in json.loads(listed.stdout)}
    untrusted = run(*where, "get")
    assert untrusted.returncode == 3 and "TLS" in untrusted.stderr and "Traceback" not in untrusted.stderr
    refused = run(*where, "--cacert", str(remote.ca), "suspend", job)  # a read token
    assert refused.returncode == 1 and "E_ACCESSDENIED" in refused.stderr
    bitsadmin_env = {"OPENBITS_URL": remote.url, "OPENBITS_TOKEN": token, "OPENBITS_CACERT": str(remote.ca)}
    listed = run("/list", module="openbits.cli.bitsadmin", extra=bitsadmin_env)
    assert listed.returncode == 0 and job in listed.stdout, listed.stderr
    for result in (listed, refused):
        assert token not in result.stdout + result.stderr


# -- scopes --------------------------------------------------------------------------------------


def test_a_read_token_reads_and_changes_nothing(remote: Remote) -> None:
    owner = remote.daemon.client
    job = owner.create_job("read me").job_id
    token = remote.token("read")
    assert remote.call("GET", CLASS, token)[0] == 200
    status, body, _ = remote.call("GET", f"{CLASS}/{job}", token)
    assert status == 200 and body["DisplayName"] == "read me"
    status, body, _ = remote.call(
        "POST", QUERY, token, {"Query": f"SELECT JobId FROM BitsClientJob WHERE JobId = '{job}'"}
    )
    assert status == 200 and body == [{"JobId": job}]
    assert remote.call("GET", POLICY, token)[0] == 200
    assert remote.call("GET", "/metrics", token)[0] == 200
    assert remote.call("POST", f"{CLASS}/{job}/GetError", token, {})[0] != 403  # a Get* method
    with Client(url=remote.url, token=token, cacert=str(remote.ca)) as reader:
        stream = reader.job_events(job=job, timeout=20)
        owner.set_properties(job, description="seen by a reader")
        event = next(stream)
        assert event.job is not None and event.job.description == "seen by a reader"
        stream.close()
    before = owner.get_job(job).raw
    for method, path, body in (
        ("POST", f"{CLASS}/CreateJob", {"DisplayName": "no"}),
        ("PATCH", f"{CLASS}/{job}", {"Description": "changed"}),
        ("POST", f"{CLASS}/{job}/SetJobState", {"JobState": 0}),  # cancel
        ("POST", f"{CLASS}/{job}/AddFile", {"RemoteUrl": "http://127.0.0.1:1/a", "LocalFile": "/tmp/a"}),
        ("PATCH", POLICY, {"MaxConcurrentBackgroundJobs": 3}),
        ("POST", "/tokens", {}),
    ):
        status, answer, _ = remote.call(method, path, token, body)
        assert status == 403, (method, path, answer)
        assert answer["ErrorCode"] == "0x80070005" and answer["Name"] == "E_ACCESSDENIED"
    after = owner.get_job(job).raw
    assert {k: v for k, v in after.items() if k != "ModificationTime"} == {
        k: v for k, v in before.items() if k != "ModificationTime"
    }
    assert owner.policy()["MaxConcurrentBackgroundJobs"] != 3


def test_a_submit_token_manages_its_users_own_jobs_only(remote: Remote) -> None:
    token = remote.token("submit")
    status, body, _ = remote.call("POST", f"{CLASS}/CreateJob", token, {"DisplayName": "mine"})
    assert status == 200, body
    mine = body["JobId"]
    assert remote.call("PATCH", f"{CLASS}/{mine}", token, {"Description": "set"})[1]["Description"] == "set"
    assert remote.call("POST", f"{CLASS}/{mine}/SetJobState", token, {"JobState": 0})[0] == 200  # cancel
    assert remote.daemon.job(mine)["State"] == JobState.CANCELLED
    # root is an administrator, but a submit token of his is not: no policy, no other users
    status, answer, _ = remote.call("PATCH", POLICY, token, {"MaxConcurrentBackgroundJobs": 3})
    assert status == 403 and answer["Name"] == "E_ACCESSDENIED"
    assert remote.call("GET", f"{CLASS}?AllUsers=true", token)[0] == 403
    if not AS_ROOT:
        pytest.skip("another user's job needs root (to act as nobody)")
    status, body = as_nobody_on(remote, "POST", f"{CLASS}/CreateJob", {"DisplayName": "nobody's"})
    assert status == 200, body
    theirs = body["JobId"]
    for method, path, payload in (
        ("GET", f"{CLASS}/{theirs}", None),
        ("PATCH", f"{CLASS}/{theirs}", {"Description": "not yours"}),
        ("POST", f"{CLASS}/{theirs}/SetJobState", {"JobState": 0}),
    ):
        assert remote.call(method, path, token, payload)[0] == 404, (method, path)
    assert remote.daemon.job(theirs)["State"] == JobState.SUSPENDED
    # root's admin token is root: other users' jobs and the policy
    admin = remote.token("admin")
    assert remote.call("GET", f"{CLASS}/{theirs}", admin)[0] == 200
    assert theirs in {j["JobId"] for j in remote.call("GET", f"{CLASS}?AllUsers=true", admin)[1]}
    status, answer, _ = remote.call("PATCH", POLICY, admin, {"MaxConcurrentBackgroundJobs": 2})
    assert status == 200 and answer["MaxConcurrentBackgroundJobs"] == 2
    # nobody's admin token is nobody: a scope never widens a user's rights
    status, issued = as_nobody_on(remote, "POST", "/tokens", {"Scope": "admin"})
    assert status == 200 and issued["Scope"] == "admin"
    assert remote.call("GET", f"{CLASS}?AllUsers=true", issued["Token"])[0] == 403
    assert remote.call("PATCH", POLICY, issued["Token"], {"MaxConcurrentBackgroundJobs": 3})[0] == 403
    assert remote.call("GET", f"{CLASS}/{mine}", issued["Token"])[0] == 404


# -- invalid tokens ------------------------------------------------------------------------------


def test_unknown_revoked_expired_and_altered_tokens_get_one_answer(remote: Remote) -> None:
    client = remote.daemon.client
    expiring = client.create_token("short", scope="read", expires_after_s=1)
    assert expiring["Scope"] == "read" and expiring["ExpirationTime"] > expiring["CreationTime"]
    assert remote.call("GET", CLASS, expiring["Token"])[0] == 200
    revoked = client.create_token("revoked", scope="admin")
    client.revoke_token(revoked["TokenId"])
    valid = remote.token("read")
    wait_until(lambda: remote.call("GET", CLASS, expiring["Token"])[0] == 401, 10, "the token's expiry")
    answers = {
        name: remote.call("GET", CLASS, presented)
        for name, presented in (
            ("expired", expiring["Token"]),
            ("revoked", revoked["Token"]),
            ("unknown", "obt_" + "A" * 43),
            ("altered", valid[:-1] + ("A" if valid[-1] != "A" else "B")),
            ("garbage", "not a token at all"),
        )
    }
    shapes = {
        (status, json.dumps(body, sort_keys=True), headers["WWW-Authenticate"])
        for status, body, headers in answers.values()
    }
    assert len(shapes) == 1, answers
    status, body, _ = next(iter(answers.values()))
    assert status == 401 and body["Name"] == "E_ACCESSDENIED"
    assert "nobody" not in body["Message"] and "root" not in body["Message"]
    # an expired token is gone from the list; the others show their scope and expiry
    listed = {t["TokenId"]: t for t in client.tokens()}
    assert expiring["TokenId"] not in listed and revoked["TokenId"] not in listed
    assert all(t["Scope"] in ("read", "submit", "admin") and "ExpirationTime" in t for t in listed.values())


def test_token_create_takes_a_scope_and_an_expiry_and_list_shows_them(remote: Remote) -> None:
    created = remote.daemon.cli("token", "create", "--scope", "read", "--expires", "7d", "--json", check=True)
    issued = json.loads(created.stdout)
    assert issued["Scope"] == "read"
    lifetime_s = (
        unix_ns_from_filetime(issued["ExpirationTime"]) - unix_ns_from_filetime(issued["CreationTime"])
    ) / 1e9
    assert lifetime_s == pytest.approx(7 * 86400, abs=1)
    table = remote.daemon.cli("token", "list", check=True).stdout
    row = next(line for line in table.splitlines() if issued["TokenId"] in line)
    assert " read " in row and "never" not in row
    assert issued["Token"] not in table
    bad = remote.daemon.cli("token", "create", "--expires", "soon")
    assert bad.returncode == 2 and "--expires" in bad.stderr
    assert remote.daemon.api("POST", "/tokens", {"Scope": "root"})[0] == 400
    assert remote.daemon.api("POST", "/tokens", {"ExpiresAfter": 0})[0] == 400
    assert remote.daemon.cli("token", "revoke", issued["TokenId"]).returncode == 0


def test_an_address_that_keeps_presenting_invalid_tokens_is_answered_429(tmp_path: Path) -> None:
    shared_dir = Path(tempfile.mkdtemp(prefix="openbits-remote-"))
    shared_dir.chmod(0o755)
    # a long first shut-out: the test cannot be slower than it (no timing in the asserts)
    remote = start_remote(
        tmp_path / "state",
        shared_dir,
        token_failures_free=3,
        token_failure_delay_s=60.0,
        token_failure_delay_max_s=120.0,
    )
    try:
        good = remote.token("read")
        guesser = "127.0.0.2"
        statuses = [remote.call("GET", CLASS, f"obt_guess{i}", source=guesser)[0] for i in range(4)]
        assert statuses == [401, 401, 401, 401]  # the fourth failure shuts the address out
        for presented in ("obt_guess5", good):  # even a good token: it is not looked at
            status, body, headers = remote.call("GET", CLASS, presented, source=guesser)
            assert status == 429 and body["Name"] == "E_ACCESSDENIED", body
            assert 1 <= int(headers["Retry-After"]) <= 60
        assert remote.call("GET", CLASS, good)[0] == 200  # another address is not slowed
        text = metrics_text(remote)
        assert "openbits_auth_failures_total 4" in text and "openbits_auth_refused_total 2" in text
    finally:
        remote.daemon.stop()
        shutil.rmtree(shared_dir, ignore_errors=True)


def metrics_text(remote: Remote) -> str:
    from tests.support.daemon import UnixHTTP

    conn = UnixHTTP(remote.daemon.socket)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


# -- where plain HTTP is refused -----------------------------------------------------------------


def serve(tmp_path: Path, *flags: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    """``openbits serve`` with ``flags`` and ``settings`` in its config, expected to refuse."""
    config = tmp_path / "c.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
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
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path)),
        check=False,
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:8765", "[::]:8765", "10.1.2.3:8765"])
def test_plain_http_on_a_non_loopback_address_is_refused(tmp_path: Path, listen: str) -> None:
    result = serve(tmp_path, listen=listen)
    assert result.returncode == 1, result.stderr
    assert "not a loopback address" in result.stderr and "--insecure-listen" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "jobs.sqlite").exists()  # refused before anything was opened
    flagged = serve(tmp_path, "--listen", listen)
    assert flagged.returncode == 1 and "not a loopback address" in flagged.stderr, flagged.stderr


def test_tls_settings_that_do_not_hold_together_are_refused(tmp_path: Path) -> None:
    _ca, cert, key = write_tls(tmp_path)
    port = free_port()
    for settings, said in (
        ({"listen": f"127.0.0.1:{port}", "tls_cert": str(cert)}, "go together"),
        ({"tls_cert": str(cert), "tls_key": str(key)}, "set listen"),
        ({"listen": f"127.0.0.1:{port}", "tls_cert": str(key), "tls_key": str(key)}, "cannot load tls_cert"),
    ):
        result = serve(tmp_path, **settings)
        assert result.returncode == 1 and said in result.stderr, (settings, result.stderr)
        assert "Traceback" not in result.stderr
    flagged = serve(tmp_path, "--listen", f"127.0.0.1:{port}", "--tls-key", str(key))
    assert flagged.returncode == 1 and "go together" in flagged.stderr, flagged.stderr


def test_insecure_listen_is_the_explicit_opt_in(tmp_path: Path) -> None:
    """The rule itself (a daemon is not started on 0.0.0.0 here: no traffic off loopback)."""
    at = parse_listen("0.0.0.0:8765")
    with pytest.raises(ValueError, match="not a loopback"):
        listener_tls(Config(state_dir=str(tmp_path), listen="0.0.0.0:8765"), at)
    assert (
        listener_tls(Config(state_dir=str(tmp_path), listen="0.0.0.0:8765", insecure_listen=True), at) is None
    )
    assert (
        listener_tls(Config(state_dir=str(tmp_path), listen="127.0.0.1:8765"), parse_listen("127.0.0.1:8765"))
        is None
    )
    _ca, cert, key = write_tls(tmp_path)
    tls = Config(state_dir=str(tmp_path), listen="0.0.0.0:8765", tls_cert=str(cert), tls_key=str(key))
    assert isinstance(listener_tls(tls, at), ssl.SSLContext)


def test_a_refused_token_never_reaches_the_log(remote: Remote) -> None:
    token = remote.token("read")
    assert remote.call("GET", CLASS, token + "x")[0] == 401
    with (
        Client(url=remote.url, token=token + "x", cacert=str(remote.ca)) as refused,
        pytest.raises(AccessDenied),
    ):
        refused.list_jobs()
    assert token not in remote.daemon.log()
