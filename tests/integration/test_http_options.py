"""Per-job HTTP options: SetCustomHeaders and SetSecurityFlags (redirect policy, TLS)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon
from tests.support.faults import FaultServer, Serve, Status
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx


def job_with(daemon: Daemon, url: str, local: Path, **methods: dict[str, Any]) -> str:
    client = daemon.client
    job = client.create_job(local.name).job_id
    for method, params in methods.items():
        client.invoke(job, method, **params)
    client.add_file(job, url, str(local))
    client.resume(job)
    return job


def test_custom_headers_are_sent_and_round_trip(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(100).randbytes(50_000)
    fault_server.routes["/f"] = Serve(data)
    headers = "X-Token: abc123\r\nX-Other: two words\r\n"
    job = job_with(
        daemon, f"{fault_server.url}/f", dest / "f.bin", SetCustomHeaders={"CustomHeaders": headers}
    )
    assert daemon.job(job)["CustomHeaders"] == headers, "byte for byte, trailing CR LF included"
    daemon.wait_state(job, JobState.TRANSFERRED)
    sent = fault_server.requests[-1]["headers"]
    assert sent["x-token"] == "abc123" and sent["x-other"] == "two words"
    daemon.client.invoke(job, "SetCustomHeaders", CustomHeaders=None)  # allowed in TRANSFERRED
    assert daemon.job(job)["CustomHeaders"] is None
    daemon.client.complete(job)
    assert (dest / "f.bin").read_bytes() == data


def test_write_only_custom_headers_are_sent_but_never_shown(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(101).randbytes(20_000)
    fault_server.routes["/w"] = Serve(data)
    job = daemon.client.create_job("write-only").job_id
    daemon.client.invoke(job, "SetCustomHeaders", CustomHeaders="Authorization: Bearer s3cr3t\r\n")
    daemon.client.invoke(job, "MakeCustomHeadersWriteOnly")
    assert "CustomHeaders" not in daemon.job(job), "omitted once write-only (SPEC §1)"
    # later headers are write-only too, and it cannot be undone; WQL sees NULL
    daemon.client.invoke(job, "SetCustomHeaders", CustomHeaders="Authorization: Bearer n3w\r\n")
    assert "CustomHeaders" not in daemon.job(job)
    assert daemon.client.query(
        f"SELECT JobId FROM BitsClientJob WHERE CustomHeaders IS NULL AND JobId = '{job}'"
    )
    daemon.client.add_file(job, f"{fault_server.url}/w", str(dest / "w.bin"))
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    assert fault_server.requests[-1]["headers"]["authorization"] == "Bearer n3w"
    daemon.stop()
    daemon.start()  # persisted
    assert "CustomHeaders" not in daemon.job(job)
    assert "n3w" not in daemon.cli("get", job, "--json", check=True).stdout
    daemon.client.complete(job)


def test_bad_custom_headers_and_security_flags_are_refused(daemon: Daemon) -> None:
    job = daemon.client.create_job("bad").job_id
    for params, name in (
        ({"CustomHeaders": "X-A: 1"}, "E_INVALIDARG"),  # no CR LF
        ({"CustomHeaders": "Range: bytes=0-\r\n"}, "E_INVALIDARG"),  # the transfer's own header
        ({"CustomHeaders": "Bad Name: x\r\n"}, "E_INVALIDARG"),
        ({"CustomHeaders": "X: " + "a" * 16_400 + "\r\n"}, "BG_E_STRING_TOO_LONG"),
    ):
        status, body = daemon.api("POST", f"{CLASS}/{job}/SetCustomHeaders", params)
        assert (status, body["Name"]) == (400, name), params
    for flags in (0x1, 0x4000, 0x300):  # CRL checking, unknown bit, no such redirect policy
        status, body = daemon.api("POST", f"{CLASS}/{job}/SetSecurityFlags", {"SecurityFlags": flags})
        assert (status, body["Name"]) == (400, "E_NOTIMPL"), flags
    assert daemon.job(job)["SecurityFlags"] == 0 and daemon.job(job)["CustomHeaders"] is None


def test_redirect_policies(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "redir/f.bin", 30_000, seed=101)
    url = f"{nginx.url}/redirect/redir/f.bin"
    silent = job_with(daemon, url, dest / "silent.bin")
    report = job_with(daemon, url, dest / "report.bin", SetSecurityFlags={"SecurityFlags": 0x100})
    refuse = job_with(daemon, url, dest / "refuse.bin", SetSecurityFlags={"SecurityFlags": 0x200})
    daemon.wait_state(silent, JobState.TRANSFERRED)
    daemon.wait_state(report, JobState.TRANSFERRED)
    daemon.wait_state(refuse, JobState.ERROR)
    assert daemon.job(silent)["Files"][0]["RemoteUrl"] == url, "ALLOW_SILENT keeps the RemoteUrl"
    assert daemon.job(report)["Files"][0]["RemoteUrl"] == f"{nginx.url}/redir/f.bin", "ALLOW_REPORT rewrites"
    err = daemon.client.get_error(refuse)
    assert (err.hresult, err.context) == (0x8019012E, 5)  # BG_E_HTTP_ERROR_302
    for job, name in ((silent, "silent.bin"), (report, "report.bin")):
        daemon.client.complete(job)
        assert sha256_file(dest / name) == digest


def test_tls_ignore_flags_and_https_to_http(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "tlsflags/f.bin", 20_000, seed=102)
    secure = f"{nginx.https_url}/tlsflags/f.bin"
    downgrade = f"{nginx.https_url}/to-http/tlsflags/f.bin"
    cn_only = job_with(daemon, secure, dest / "cn.bin", SetSecurityFlags={"SecurityFlags": 0x2})
    any_ca = job_with(daemon, secure, dest / "ca.bin", SetSecurityFlags={"SecurityFlags": 0x8})
    no_downgrade = job_with(daemon, downgrade, dest / "down1.bin", SetSecurityFlags={"SecurityFlags": 0x8})
    downgrade_ok = job_with(daemon, downgrade, dest / "down2.bin", SetSecurityFlags={"SecurityFlags": 0x808})
    daemon.wait_state(cn_only, JobState.ERROR)
    assert daemon.client.get_error(cn_only).hresult == 0x8020003C, "the CA is still checked"
    daemon.wait_state(any_ca, JobState.TRANSFERRED)
    daemon.wait_state(no_downgrade, JobState.ERROR)
    assert daemon.client.get_error(no_downgrade).hresult == 0x8019012E
    daemon.wait_state(downgrade_ok, JobState.TRANSFERRED)
    for job, name in ((any_ca, "ca.bin"), (downgrade_ok, "down2.bin")):
        daemon.client.complete(job)
        assert sha256_file(dest / name) == digest


def test_set_remote_name_and_replace_remote_prefix_repair_a_job(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    digests = [make_file(nginx.www, f"moved/{i}.bin", 10_000 + i, seed=130 + i) for i in range(3)]
    client = daemon.client
    job = client.create_job("moved").job_id
    client.add_file_set(job, [(f"{nginx.url}/gone/{i}.bin", str(dest / f"{i}.bin")) for i in range(3)])
    client.resume(job)
    daemon.wait_state(job, JobState.ERROR)  # 404
    status, body = daemon.api(
        "POST", f"{CLASS}/{job}/SetRemoteName", {"LocalFile": str(dest / "nope.bin"), "RemoteUrl": nginx.url}
    )
    assert (status, body["Name"]) == (400, "BG_E_FILE_NOT_FOUND")
    status, body = daemon.api(
        "POST",
        f"{CLASS}/{job}/SetRemoteName",
        {"LocalFile": str(dest / "0.bin"), "RemoteUrl": "/etc/hostname"},
    )
    assert (status, body["Name"]) == (400, "E_INVALIDARG"), "a URL cannot become a local path"
    client.invoke(job, "SetRemoteName", LocalFile=str(dest / "0.bin"), RemoteUrl=f"{nginx.url}/moved/0.bin")
    result = client.invoke(
        job, "ReplaceRemotePrefix", OldPrefix=f"{nginx.url}/gone/", NewPrefix=f"{nginx.url}/moved/"
    )
    assert result["FilesChanged"] == 2
    assert [f["RemoteUrl"] for f in daemon.job(job)["Files"]] == [
        f"{nginx.url}/moved/{i}.bin" for i in range(3)
    ]
    client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    client.complete(job)
    assert [sha256_file(dest / f"{i}.bin") for i in range(3)] == digests


def test_a_redirect_to_a_malformed_url_is_an_invalid_server_response(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    fault_server.routes["/bad-redirect"] = Status(302, headers={"Location": "http://[::1/f"})
    job = job_with(daemon, f"{fault_server.url}/bad-redirect", dest / "r.bin")
    daemon.wait_state(job, JobState.ERROR)
    error = daemon.client.get_error(job)
    assert error.name == "BG_E_INVALID_SERVER_RESPONSE", error  # (found by fuzzing; was E_FAIL)
    assert not (dest / "r.bin").exists()
