"""Downloads against real nginx and an in-process fault server, through a real daemon.

Covers resume after SIGKILL, content changing between interruption and resume,
HTTP errors, connection failures, servers that close mid-body or ignore Range,
lying servers, and local (file://) sources.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from openbits.model import ErrorContext, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import (
    CloseMidBody,
    FaultServer,
    IgnoreRange,
    Sequence,
    Serve,
    Stall,
    Status,
    WrongContentRange,
)
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import REFUSED_PORT, Nginx

MiB = 1024 * 1024


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".BIT") and p.name.endswith(".tmp")]


def start_job(daemon: Daemon, url: str, local: Path, **props: object) -> str:
    client = daemon.client
    job = client.create_job(local.name).job_id
    if props:
        client.set_properties(job, **props)
    client.add_file(job, url, str(local))
    client.resume(job)
    return job


def test_sigkill_mid_download_resumes_with_range(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    size = 6 * MiB + 123
    digest = make_file(nginx.www, "kill/big.bin", size, seed=11)
    url = f"{nginx.url}/slow/kill/big.bin"  # 1 MB/s: the daemon is killed mid-body
    local = dest / "big.bin"
    job = start_job(daemon, url, local)
    wait_until(lambda: daemon.job(job)["BytesTransferred"] >= 2 * MiB, 20, "2 MiB checkpointed")
    daemon.kill()
    assert temp_files(dest), "the temporary file survives the kill"
    assert not local.exists()

    daemon.start()
    instance = daemon.job(job)
    assert instance["State"] in (
        JobState.QUEUED,
        JobState.CONNECTING,
        JobState.TRANSFERRING,
        JobState.TRANSFERRED,
    )
    assert instance["BytesTransferred"] >= 2 * MiB, "no checkpointed byte is lost across SIGKILL"
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    assert daemon.client.complete(job) == 0
    assert sha256_file(local) == digest
    assert not temp_files(dest)
    ranges = [r for r in nginx.requests() if r["uri"] == "/slow/kill/big.bin" and r["range"]]
    assert ranges, "the resumed request carried a Range header"
    start = int(ranges[-1]["range"].split("=")[1].split("-")[0])
    assert start >= 2 * MiB
    assert ranges[-1]["if_range"], "the resumed request carried If-Range"
    assert ranges[-1]["status"] == 206


def test_content_changed_between_interruption_and_resume(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    size = 5 * MiB
    make_file(nginx.www, "change/file.bin", size, seed=1)
    url = f"{nginx.url}/slow/change/file.bin"
    local = dest / "file.bin"
    job = start_job(daemon, url, local)
    wait_until(lambda: daemon.job(job)["BytesTransferred"] >= MiB, 20, "1 MiB checkpointed")
    daemon.kill()

    new_digest = make_file(nginx.www, "change/file.bin", size, seed=2)  # same size, new content
    future = time.time() + 100
    os.utime(nginx.www / "change/file.bin", (future, future))  # new ETag and Last-Modified

    daemon.start()
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    assert daemon.client.complete(job) == 0
    assert sha256_file(local) == new_digest
    assert abs(local.stat().st_mtime - future) < 2, "the server's Last-Modified becomes the mtime"
    resumed = [r for r in nginx.requests() if r["uri"] == "/slow/change/file.bin" and r["if_range"]]
    assert resumed and resumed[-1]["status"] == 200, "a stale If-Range gets the whole new file"


def test_suspend_change_resume_restarts_from_zero(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    # 16 MiB at 1 MB/s: the old version is still far from done when it is suspended, even
    # on a loaded machine (with 4 MiB it once finished first, and a file that is complete
    # before the change is rightly kept)
    make_file(nginx.www, "suspend/f.bin", 16 * MiB, seed=3)
    local = dest / "f.bin"
    job = start_job(daemon, f"{nginx.url}/slow/suspend/f.bin", local)
    wait_until(lambda: daemon.job(job)["BytesTransferred"] >= MiB, 20, "1 MiB checkpointed")
    daemon.client.suspend(job)
    suspended = daemon.job(job)
    assert suspended["State"] == JobState.SUSPENDED
    assert suspended["FilesTransferred"] == 0 and suspended["BytesTransferred"] < 16 * MiB
    digest = make_file(nginx.www, "suspend/f.bin", 3 * MiB, seed=4)  # a different size too
    daemon.client.resume(job)
    done = daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    assert done["BytesTotal"] == 3 * MiB
    daemon.client.complete(job)
    assert sha256_file(local) == digest


def test_404_is_fatal_with_remote_file_context(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    job = start_job(daemon, f"{nginx.url}/does/not/exist.bin", dest / "x.bin")
    daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x80190194
    assert err.name == "BG_E_HTTP_ERROR_404"
    assert err.context is ErrorContext.REMOTE_FILE
    assert err.raw["ReturnValue"] == 0
    assert err.context_description and err.error_description
    assert daemon.job(job)["TransientErrorCount"] == 0


def test_connection_refused_is_transient_then_error_after_no_progress_timeout(
    daemon: Daemon, dest: Path
) -> None:
    url = f"http://127.0.0.1:{REFUSED_PORT}/file.bin"
    job = start_job(daemon, url, dest / "x.bin", NoProgressTimeout=2)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x8020002D  # BG_E_CONNECT_FAILURE
    assert err.context is ErrorContext.GENERAL_TRANSPORT
    assert daemon.job(job)["TransientErrorCount"] == 1
    # MinimumRetryDelay (>= 5 s) is longer than NoProgressTimeout: ERROR without retry.
    daemon.wait_state(job, JobState.ERROR, timeout=10)
    assert daemon.client.get_error(job).hresult == 0x8020002D


def test_no_progress_timeout_zero_makes_every_error_fatal(daemon: Daemon, dest: Path) -> None:
    job = start_job(daemon, f"http://127.0.0.1:{REFUSED_PORT}/f", dest / "x.bin", NoProgressTimeout=0)
    daemon.wait_state(job, JobState.ERROR)
    assert daemon.job(job)["TransientErrorCount"] == 0


def test_transient_error_is_retried_after_minimum_retry_delay(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(5).randbytes(300_000)
    fault_server.routes["/f"] = Sequence(Status(503, headers={"Retry-After": "1"}), Serve(data))
    local = dest / "f.bin"
    job = start_job(daemon, f"{fault_server.url}/f", local, MinimumRetryDelay=5)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x801901F7  # BG_E_HTTP_ERROR_503
    assert err.context is ErrorContext.REMOTE_FILE
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=15)  # retried on its own
    assert daemon.job(job)["TransientErrorCount"] == 1
    daemon.client.complete(job)
    assert local.read_bytes() == data


def test_server_closing_mid_body_is_transient_and_resume_continues(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(6).randbytes(2 * MiB)
    fault_server.routes["/f"] = CloseMidBody(data, after=MiB + 7)
    local = dest / "f.bin"
    job = start_job(daemon, f"{fault_server.url}/f", local)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x8020002E  # BG_E_CONNECTION_CLOSED
    assert err.context is ErrorContext.GENERAL_TRANSPORT
    instance = daemon.job(job)
    assert instance["TransientErrorCount"] == 1
    assert instance["BytesTransferred"] == MiB + 7, "bytes that arrived are kept"
    daemon.client.resume(job)  # retry at once instead of after MinimumRetryDelay
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert local.read_bytes() == data
    ranged = [r for r in fault_server.requests if "range" in r["headers"]]
    assert ranged and ranged[-1]["headers"]["range"] == f"bytes={MiB + 7}-"


def test_200_answer_to_a_ranged_request_restarts_the_file(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(7).randbytes(MiB)
    fault_server.routes["/f"] = Sequence(CloseMidBody(data, after=400_000), IgnoreRange(data))
    local = dest / "f.bin"
    job = start_job(daemon, f"{fault_server.url}/f", local)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    daemon.client.resume(job)
    done = daemon.wait_state(job, JobState.TRANSFERRED)
    assert done["BytesTransferred"] == MiB
    daemon.client.complete(job)
    assert local.read_bytes() == data, "a 200 body is never appended to the partial file"


def test_wrong_content_range_is_an_invalid_server_response(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(8).randbytes(MiB)
    fault_server.routes["/f"] = Sequence(CloseMidBody(data, after=300_000), WrongContentRange(data))
    local = dest / "f.bin"
    job = start_job(daemon, f"{fault_server.url}/f", local)
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x8020001B  # BG_E_INVALID_SERVER_RESPONSE
    assert err.context is ErrorContext.REMOTE_FILE
    assert not local.exists()
    daemon.client.cancel(job)
    assert not temp_files(dest), "Cancel deletes the temporary files"


def test_several_files_in_order_and_https(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = [make_file(nginx.www, f"multi/{i}.bin", 100_000 * (i + 1), seed=20 + i) for i in range(3)]
    client = daemon.client
    job = client.create_job("multi").job_id
    for i in range(3):
        client.add_file(job, f"{nginx.url}/multi/{i}.bin", str(dest / f"{i}.bin"))
    client.add_file(job, "file://" + str(nginx.www / "multi/0.bin"), str(dest / "local0.bin"))
    client.add_file(job, str(nginx.www / "multi/1.bin"), str(dest / "local1.bin"))
    client.resume(job)
    done = daemon.wait_state(job, JobState.TRANSFERRED)
    assert done["FilesTransferred"] == done["FilesTotal"] == 5
    assert all(f["Completed"] for f in done["Files"])
    assert client.complete(job) == 0
    for i in range(3):
        assert sha256_file(dest / f"{i}.bin") == digests[i]
    assert sha256_file(dest / "local0.bin") == digests[0]
    assert sha256_file(dest / "local1.bin") == digests[1]


def test_https_with_an_untrusted_certificate_is_an_error(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "tls/f.bin", 1000, seed=9)
    job = start_job(daemon, f"{nginx.https_url}/tls/f.bin", dest / "f.bin")
    daemon.wait_state(job, JobState.ERROR)
    assert daemon.client.get_error(job).hresult == 0x8020003C  # BG_E_TRUST_FAILURE


def test_https_download_with_a_trusted_ca(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "tls/ok.bin", 500_000, seed=10)
    d = Daemon(tmp_path / "state-tls")
    os.environ["SSL_CERT_FILE"] = str(nginx.ca_path)
    try:
        d.start()
    finally:
        del os.environ["SSL_CERT_FILE"]
    try:
        job = start_job(d, f"{nginx.https_url}/tls/ok.bin", dest / "ok.bin")
        d.wait_state(job, JobState.TRANSFERRED)
        d.client.complete(job)
        assert sha256_file(dest / "ok.bin") == digest
    finally:
        d.stop()


def test_missing_local_source_is_an_error(daemon: Daemon, dest: Path, tmp_path: Path) -> None:
    job = start_job(daemon, str(tmp_path / "nope.bin"), dest / "x.bin")
    daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert err.hresult == 0x80070002
    assert err.context is ErrorContext.REMOTE_FILE


def test_cancel_mid_transfer_deletes_temporary_files(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "cancel/f.bin", 4 * MiB, seed=12)
    job = start_job(daemon, f"{nginx.url}/slow/cancel/f.bin", dest / "f.bin")
    wait_until(lambda: temp_files(dest), 10, "a temporary file")
    assert daemon.client.cancel(job) == 0
    assert not temp_files(dest)
    assert not (dest / "f.bin").exists()
    assert daemon.job(job)["State"] == JobState.CANCELLED


def test_sigterm_stops_cleanly_and_jobs_survive(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "term/f.bin", 3 * MiB, seed=13)
    job = start_job(daemon, f"{nginx.url}/slow/term/f.bin", dest / "f.bin")
    wait_until(lambda: daemon.job(job)["BytesTransferred"] > 0, 10, "progress")
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
    daemon.start()
    daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)


@pytest.mark.parametrize("size", [0, 1])
def test_tiny_files(daemon: Daemon, nginx: Nginx, dest: Path, size: int) -> None:
    make_file(nginx.www, f"tiny/{size}.bin", size)
    job = start_job(daemon, f"{nginx.url}/tiny/{size}.bin", dest / "t.bin")
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert (dest / "t.bin").stat().st_size == size


def test_password_in_url_is_used_but_never_shown(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "secret14.bin", 10_000, seed=14)
    host = nginx.url.split("://", 1)[1]
    job = start_job(daemon, f"http://alice:s3cret@{host}/basic/secret14.bin", dest / "s.bin")
    bad = start_job(daemon, f"http://alice:wrong-s3cret@{host}/basic/secret14.bin", dest / "bad.bin")
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.wait_state(bad, JobState.ERROR)
    assert daemon.client.get_error(bad).hresult == 0x80190191  # BG_E_HTTP_ERROR_401
    shown = daemon.cli("get", job, "--json").stdout + daemon.cli("error", bad, "--json").stdout
    assert "alice:***@" in shown
    daemon.client.complete(job)
    assert sha256_file(dest / "s.bin") == digest
    assert "s3cret" not in shown + daemon.log()


def test_a_second_daemon_on_the_same_state_dir_or_socket_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    def serve(state_dir: Path, sock: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "openbits", "serve", "--state-dir", str(state_dir), "--socket", sock]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    same_dir = serve(daemon.state_dir, str(tmp_path / "other.sock"))
    assert same_dir.returncode == 1
    assert "another openbits daemon is using the state directory" in same_dir.stderr
    same_socket = serve(tmp_path / "other-state", daemon.socket)
    assert same_socket.returncode == 1
    assert "another openbits daemon is already serving" in same_socket.stderr
    assert daemon.client.list_jobs() == [], "the first daemon still serves"


def test_a_stalled_body_is_a_transient_timeout_keeping_its_bytes(
    tmp_path: Path, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(15).randbytes(MiB)
    fault_server.routes["/f"] = Stall(data, after=300_000, only_first=True)
    d = Daemon(tmp_path / "state-stall", config={"read_timeout_s": 1.0})
    d.start()
    try:
        job = start_job(d, f"{fault_server.url}/f", dest / "f.bin")
        d.wait_state(job, JobState.TRANSIENT_ERROR, timeout=15)
        err = d.client.get_error(job)
        assert (err.hresult, err.context) == (0x8020003B, 6)  # BG_E_TIMEOUT, transport
        assert d.job(job)["BytesTransferred"] == 300_000
        d.client.resume(job)
        d.wait_state(job, JobState.TRANSFERRED)
        d.client.complete(job)
        assert (dest / "f.bin").read_bytes() == data
    finally:
        d.stop()


def test_a_connection_reset_mid_body_is_transient(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    data = random.Random(16).randbytes(2 * MiB)
    fault_server.routes["/f"] = CloseMidBody(data, after=MiB, abortive=True)
    job = start_job(daemon, f"{fault_server.url}/f", dest / "f.bin")
    daemon.wait_state(job, JobState.TRANSIENT_ERROR)
    err = daemon.client.get_error(job)
    assert err.context is ErrorContext.GENERAL_TRANSPORT, err
    assert err.hresult == 0x8020002E, err  # BG_E_CONNECTION_CLOSED
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert (dest / "f.bin").read_bytes() == data


def test_range_support_and_response_headers_are_kept_per_file(
    daemon: Daemon, nginx: Nginx, fault_server: FaultServer, dest: Path
) -> None:
    make_file(nginx.www, "rs/f.bin", 50_000, seed=150)
    data = random.Random(151).randbytes(400_000)
    fault_server.routes["/ignores"] = Sequence(CloseMidBody(data, after=100_000), IgnoreRange(data))
    fault_server.routes["/nolength"] = Serve(data, content_length=False, headers={"Set-Cookie": "sid=secret"})
    ranged = start_job(daemon, f"{nginx.url}/rs/f.bin", dest / "ranged.bin")
    ignores = start_job(daemon, f"{fault_server.url}/ignores", dest / "ignores.bin")
    nolength = start_job(daemon, f"{fault_server.url}/nolength", dest / "nolength.bin")
    daemon.wait_state(ignores, JobState.TRANSIENT_ERROR)
    daemon.client.resume(ignores)
    for job in (ranged, ignores, nolength):
        daemon.wait_state(job, JobState.TRANSFERRED)
    support = [daemon.job(j)["Files"][0]["RangeSupport"] for j in (ranged, ignores, nolength)]
    assert support == [True, False, False]
    headers = daemon.client.invoke(nolength, "GetResponseHeaders", LocalFile=str(dest / "nolength.bin"))
    assert "sid=secret" not in headers["ResponseHeaders"], "Set-Cookie is never kept"
    headers = daemon.client.invoke(ranged, "GetResponseHeaders", LocalFile=str(dest / "ranged.bin"))
    assert "Content-Length: 50000" in headers["ResponseHeaders"]


class _LyingServe(Serve):
    """Answers 206 to any If-Range, even after its content changed."""

    def if_range_ok(self, req: Any) -> bool:
        return True


class _EndlessBody(Serve):
    """Sends Content-Length bytes and then keeps talking."""

    async def respond(self, req: Any, conn: Any) -> bool:
        await conn.send_head(200, {"Content-Length": str(len(self.data)), "ETag": '"endless"'})
        await conn.send_body(self.data + b"GARBAGE" * 100_000)
        return False


def test_lying_servers_never_leave_a_wrong_local_file(
    daemon: Daemon, fault_server: FaultServer, dest: Path
) -> None:
    old = random.Random(160).randbytes(MiB)
    new = random.Random(161).randbytes(MiB)
    lying = _LyingServe(new, etag='"v2"')
    fault_server.routes["/changed"] = Sequence(CloseMidBody(old, after=300_000, etag='"v1"'), lying)
    fault_server.routes["/endless"] = _EndlessBody(old)
    changed = start_job(daemon, f"{fault_server.url}/changed", dest / "changed.bin")
    endless = start_job(daemon, f"{fault_server.url}/endless", dest / "endless.bin")
    daemon.wait_state(changed, JobState.TRANSIENT_ERROR)
    daemon.client.resume(changed)
    daemon.wait_state(changed, JobState.ERROR)
    err = daemon.client.get_error(changed)
    assert (err.hresult, err.context) == (0x8020001B, 5)  # BG_E_INVALID_SERVER_RESPONSE
    daemon.wait_state(endless, JobState.TRANSFERRED)
    daemon.client.complete(endless)
    assert (dest / "endless.bin").read_bytes() == old, "bytes past Content-Length are not the file's"
    assert not (dest / "changed.bin").exists()


def test_destination_removed_mid_transfer_is_a_local_file_error(
    daemon: Daemon, nginx: Nginx, tmp_path: Path
) -> None:
    import shutil

    # 16 MiB at 1 MB/s: still far from done when its directory goes, even on a loaded
    # machine (4 MiB once finished first: nginx sends a second's worth at once)
    make_file(nginx.www, "rmdir/f.bin", 16 * MiB, seed=170)
    where = tmp_path / "vanishing"
    where.mkdir()
    job = start_job(daemon, f"{nginx.url}/slow/rmdir/f.bin", where / "f.bin")
    wait_until(lambda: daemon.job(job)["BytesTransferred"] > 0, 10, "progress")
    shutil.rmtree(where)
    assert daemon.job(job)["FilesTransferred"] == 0
    daemon.wait_state(job, JobState.ERROR)
    err = daemon.client.get_error(job)
    assert (err.hresult, err.context) == (0x80070003, 4)  # path not found, LOCAL_FILE
    daemon.client.resume(job)  # still gone: the same clear error, no crash
    daemon.wait_state(job, JobState.ERROR)
    assert daemon.client.get_error(job).context is ErrorContext.LOCAL_FILE


def test_a_transferred_file_stays_owner_only_until_complete(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    # SPEC §3: a TRANSFERRED job's bytes are readable by no one but the owner until Complete
    make_file(nginx.www, "mode/file.bin", 300_000, seed=5)
    modified = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    os.utime(nginx.www / "mode/file.bin", (modified, modified))
    local = dest / "file.bin"
    job = start_job(daemon, f"{nginx.url}/mode/file.bin", local)
    daemon.wait_state(job, JobState.TRANSFERRED)
    (temp,) = temp_files(dest)
    assert temp.stat().st_mode & 0o777 == 0o600, "owner-only until Complete"
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert daemon.client.complete(job) == 0
    assert not temp.exists()
    assert local.stat().st_mode & 0o777 == 0o666 & ~old_umask  # 0644 under umask 022
    assert local.stat().st_mtime == modified, "the server's Last-Modified becomes the mtime"
