"""The API's answers to illegal calls and bad input, through a real daemon process.

bits-spec §3.3 (which calls are legal where) and SPEC §2, §4, §6 (codes, HTTP
statuses, the error body, all-or-nothing, names case-insensitive on input).  Every
failing call is followed by a GET to show the daemon keeps serving.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from openbits.model import ErrorContext, JobState
from tests.support.daemon import CLASS, Daemon, UnixHTTP
from tests.support.faults import FaultServer, NoResponse
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

S_OK = 0
BG_S_PARTIAL_COMPLETE = 0x00200017
E_NOTIMPL = 0x80004001
E_ACCESSDENIED = 0x80070005
PATH_NOT_FOUND = 0x80070003
E_INVALIDARG = 0x80070057
BG_E_NOT_FOUND = 0x80200001
BG_E_EMPTY = 0x80200003
BG_E_ERROR_INFORMATION_UNAVAILABLE = 0x8020000F
BG_E_STRING_TOO_LONG = 0x80200021
BG_E_READ_ONLY_PROPERTY = 0x80200058
BG_E_HTTP_ERROR_404 = 0x80190194

#: Windows names of the codes whose spelling is pinned (SPEC §1: names as in bits-spec §2).
NAMES = {
    E_NOTIMPL: "E_NOTIMPL",
    E_ACCESSDENIED: "E_ACCESSDENIED",
    E_INVALIDARG: "E_INVALIDARG",
    BG_E_NOT_FOUND: "BG_E_NOT_FOUND",
    BG_E_EMPTY: "BG_E_EMPTY",
    BG_E_ERROR_INFORMATION_UNAVAILABLE: "BG_E_ERROR_INFORMATION_UNAVAILABLE",
    BG_E_STRING_TOO_LONG: "BG_E_STRING_TOO_LONG",
    BG_E_READ_ONLY_PROPERTY: "BG_E_READ_ONLY_PROPERTY",
}

#: HTTP status of each failing code (SPEC §6).
HTTP_STATUS = {
    E_NOTIMPL: 400,
    E_INVALIDARG: 400,
    PATH_NOT_FOUND: 400,
    BG_E_STRING_TOO_LONG: 400,
    BG_E_READ_ONLY_PROPERTY: 400,
    E_ACCESSDENIED: 403,
    BG_E_NOT_FOUND: 404,
    BG_E_EMPTY: 409,
    BG_E_ERROR_INFORMATION_UNAVAILABLE: 409,
}

#: Every property of SPEC §1's BitsClientJob table.
SPEC_PROPERTIES = (
    "JobId",
    "DisplayName",
    "Description",
    "Priority",
    "MinimumRetryDelay",
    "NoProgressTimeout",
    "Files",
    "JobCreationTime",
    "JobLastModificationTime",
    "JobCompletionTime",
    "BytesTotal",
    "BytesTransferred",
    "FilesTotal",
    "FilesTransferred",
    "TransientErrorCount",
    "State",
    "Owner",
)
FILE_PROPERTIES = ("RemoteUrl", "LocalFile", "BytesTotal", "BytesTransferred", "Completed")
BG_SIZE_UNKNOWN = 18446744073709551615
GUID = re.compile(r"^\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}$")
MIB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------------


def job_path(job: str, method: str | None = None) -> str:
    path = f"{CLASS}/{quote(job, safe='')}"
    return f"{path}/{method}" if method else path


def create(daemon: Daemon, **params: Any) -> str:
    status, body = daemon.api("POST", f"{CLASS}/CreateJob", params)
    assert status == 200, body
    assert body["ReturnValue"] == 0, body
    return str(body["JobId"])


def get(daemon: Daemon, job: str, include_finished: bool = False) -> dict[str, Any]:
    status, body = daemon.api("GET", job_path(job) + ("?IncludeFinished=true" if include_finished else ""))
    assert status == 200, body
    return dict(body)


def jobs(daemon: Daemon) -> list[dict[str, Any]]:
    status, body = daemon.api("GET", CLASS)
    assert status == 200, body
    assert isinstance(body, list), body
    return list(body)


def set_state(daemon: Daemon, job: str, value: int) -> tuple[int, Any]:
    return daemon.api("POST", job_path(job, "SetJobState"), {"JobState": value})


def stable(instance: dict[str, Any]) -> dict[str, Any]:
    """An instance without the fields that change on their own while a job is idle."""
    return {k: v for k, v in instance.items() if k != "JobLastModificationTime"}


def assert_error(
    daemon: Daemon,
    method: str,
    path: str,
    body: Any = None,
    *,
    code: int,
    raw: bytes | None = None,
) -> dict[str, Any]:
    """The call fails with ``code``, the SPEC §6 error body and status; the daemon still serves."""
    status, answer = daemon.api(method, path, body, raw=raw)
    what = f"{method} {path} {body if raw is None else raw[:80]!r}"
    assert isinstance(answer, dict), f"{what}: {status} {answer!r}"
    assert answer.get("ReturnValue") == code, f"{what}: expected 0x{code:08X}, got {status} {answer}"
    assert isinstance(answer["ReturnValue"], int)
    assert answer["ErrorCode"] == f"0x{code:08X}", answer
    if code in NAMES:
        assert answer["Name"] == NAMES[code], answer
    else:
        assert isinstance(answer["Name"], str) and answer["Name"], answer
    assert isinstance(answer["Message"], str) and answer["Message"], answer
    assert status == HTTP_STATUS[code], f"{what}: HTTP {status} for {answer}"
    assert_alive(daemon)
    return answer


def assert_alive(daemon: Daemon) -> None:
    status, body = daemon.api("GET", CLASS)
    assert status == 200 and isinstance(body, list), (status, body)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".BIT"))


# -- state rules (bits-spec §3.3) ------------------------------------------------------------


def test_resume_of_an_empty_job_is_bg_e_empty_and_the_job_stays_suspended(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="empty")
    answer = assert_error(daemon, "POST", job_path(job, "SetJobState"), {"JobState": 2}, code=BG_E_EMPTY)
    assert answer["ReturnValue"] == 2149580803
    assert get(daemon, job)["State"] == JobState.SUSPENDED


def test_get_error_outside_the_error_states_is_unavailable(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "apierr/geterror.bin", 1000, seed=2)
    fresh = create(daemon, DisplayName="fresh")
    assert_error(daemon, "POST", job_path(fresh, "GetError"), code=BG_E_ERROR_INFORMATION_UNAVAILABLE)

    done = create(
        daemon, RemoteUrl=f"{nginx.url}/apierr/geterror.bin", LocalFile=str(dest / "g.bin"), Priority=0
    )
    failed = create(
        daemon, RemoteUrl=f"{nginx.url}/apierr/absent.bin", LocalFile=str(dest / "a.bin"), Priority=0
    )
    daemon.wait_state(done, JobState.TRANSFERRED)
    assert_error(daemon, "POST", job_path(done, "GetError"), code=BG_E_ERROR_INFORMATION_UNAVAILABLE)

    # In ERROR GetError answers (SPEC §6 shape) ...
    daemon.wait_state(failed, JobState.ERROR)
    status, info = daemon.api("POST", job_path(failed, "GetError"))
    assert status == 200, info
    assert info["ReturnValue"] == 0
    assert info["ErrorCode"] == BG_E_HTTP_ERROR_404
    assert info["ErrorContext"] == ErrorContext.REMOTE_FILE
    assert info["Name"] == "BG_E_HTTP_ERROR_404"
    assert isinstance(info["ContextDescription"], str) and info["ContextDescription"]
    assert isinstance(info["ErrorDescription"], str) and info["ErrorDescription"]
    # ... and once suspended it is no longer in an error state.
    status, body = set_state(daemon, failed, 3)
    assert (status, body["ReturnValue"]) == (200, 0), body
    assert get(daemon, failed)["State"] == JobState.SUSPENDED
    assert_error(daemon, "POST", job_path(failed, "GetError"), code=BG_E_ERROR_INFORMATION_UNAVAILABLE)


def test_queued_job_get_error_resume_and_suspend(
    fault_server: FaultServer, daemon: Daemon, dest: Path
) -> None:
    # One background job runs at a time (SPEC §6): a job whose server never answers
    # holds the slot, so a second job of the same priority stays QUEUED.  fault_server
    # comes first so that it outlives the daemon: stopping it first would fail the
    # blocker just as the daemon gets SIGTERM, which can hang its shutdown (a src bug:
    # scheduler/run.py's asyncio.wait_for can swallow the cancel on Python 3.11).
    fault_server.routes["/hang"] = NoResponse()
    blocker = create(daemon, RemoteUrl=f"{fault_server.url}/hang", LocalFile=str(dest / "hang"))
    daemon.wait_state(blocker, {JobState.CONNECTING, JobState.TRANSFERRING})
    queued = create(daemon, RemoteUrl=f"{fault_server.url}/never", LocalFile=str(dest / "never"))
    assert get(daemon, queued)["State"] == JobState.QUEUED

    assert_error(daemon, "POST", job_path(queued, "GetError"), code=BG_E_ERROR_INFORMATION_UNAVAILABLE)
    status, body = set_state(daemon, queued, 2)
    assert (status, body["ReturnValue"]) == (200, S_OK), body
    assert get(daemon, queued)["State"] == JobState.QUEUED

    for _ in range(2):  # the second Suspend is a no-op that succeeds
        status, body = set_state(daemon, queued, 3)
        assert (status, body["ReturnValue"]) == (200, S_OK), body
        assert get(daemon, queued)["State"] == JobState.SUSPENDED


def test_suspend_of_a_suspended_job_succeeds(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="s")
    before = get(daemon, job)
    status, body = set_state(daemon, job, 3)
    assert (status, body["ReturnValue"]) == (200, S_OK), body
    after = get(daemon, job)
    assert after["State"] == JobState.SUSPENDED
    assert stable(after) == stable(before)


def test_every_call_on_a_finished_job_is_not_found(daemon: Daemon, dest: Path) -> None:
    cancelled = create(daemon, DisplayName="to-cancel")
    acknowledged = create(daemon, DisplayName="to-complete")
    status, body = set_state(daemon, cancelled, 0)
    assert (status, body["ReturnValue"]) == (200, S_OK), body
    status, body = set_state(daemon, acknowledged, 1)
    assert (status, body["ReturnValue"]) == (200, S_OK), body

    for job, final, name in (
        (cancelled, JobState.CANCELLED, "to-cancel"),
        (acknowledged, JobState.ACKNOWLEDGED, "to-complete"),
    ):
        assert_error(
            daemon,
            "POST",
            job_path(job, "AddFile"),
            {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(dest / "x")},
            code=BG_E_NOT_FOUND,
        )
        for value in (0, 1, 2, 3):  # a second Cancel or Complete too (SPEC §6)
            assert_error(
                daemon, "POST", job_path(job, "SetJobState"), {"JobState": value}, code=BG_E_NOT_FOUND
            )
        assert_error(daemon, "PATCH", job_path(job), {"DisplayName": "again"}, code=BG_E_NOT_FOUND)
        assert_error(daemon, "POST", job_path(job, "GetError"), code=BG_E_NOT_FOUND)
        assert_error(daemon, "GET", job_path(job), code=BG_E_NOT_FOUND)
        shown = get(daemon, job, include_finished=True)
        assert shown["State"] == final
        assert shown["JobId"] == job
        assert shown["DisplayName"] == name  # the refused PATCH changed nothing
        # lower-case JobId and the flag's name in another case work too
        status, body = daemon.api("GET", job_path(job.lower()) + "?includefinished=true")
        assert status == 200 and body["State"] == final, body

    assert [j["JobId"] for j in jobs(daemon)] == []


def test_unknown_job_is_not_found(daemon: Daemon, dest: Path) -> None:
    create(daemon, DisplayName="someone")
    for ref in (str(uuid.uuid4()), "{" + str(uuid.uuid4()).upper() + "}", "no such name"):
        assert_error(daemon, "GET", job_path(ref), code=BG_E_NOT_FOUND)
        assert_error(daemon, "PATCH", job_path(ref), {"Description": "x"}, code=BG_E_NOT_FOUND)
        assert_error(daemon, "POST", job_path(ref, "SetJobState"), {"JobState": 3}, code=BG_E_NOT_FOUND)
        assert_error(daemon, "POST", job_path(ref, "GetError"), code=BG_E_NOT_FOUND)
        assert_error(
            daemon,
            "POST",
            job_path(ref, "AddFile"),
            {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(dest / "x")},
            code=BG_E_NOT_FOUND,
        )


def test_complete_with_unfinished_files_is_partial(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "apierr/partial-ok.bin", 5000, seed=3)
    job = create(daemon, DisplayName="partial", Priority=0)
    for remote, local in (("partial-ok.bin", "ok.bin"), ("partial-missing.bin", "missing.bin")):
        status, body = daemon.api(
            "POST",
            job_path(job, "AddFile"),
            {"RemoteUrl": f"{nginx.url}/apierr/{remote}", "LocalFile": str(dest / local)},
        )
        assert status == 200, body
    status, body = set_state(daemon, job, 2)
    assert status == 200, body
    failed = daemon.wait_state(job, JobState.ERROR)
    assert [f["Completed"] for f in failed["Files"]] == [True, False]

    status, body = set_state(daemon, job, 1)
    assert status == 200, body
    assert body["ReturnValue"] == BG_S_PARTIAL_COMPLETE, body
    assert get(daemon, job, include_finished=True)["State"] == JobState.ACKNOWLEDGED
    assert sha256_file(dest / "ok.bin") == digest
    assert not (dest / "missing.bin").exists()
    assert temp_files(dest) == []

    # A suspended job whose file never transferred: Complete publishes nothing.
    never = create(
        daemon, RemoteUrl=f"{nginx.url}/apierr/partial-ok.bin", LocalFile=str(dest / "n"), Suspend=True
    )
    status, body = set_state(daemon, never, 1)
    assert (status, body["ReturnValue"]) == (200, BG_S_PARTIAL_COMPLETE), body
    assert get(daemon, never, include_finished=True)["State"] == JobState.ACKNOWLEDGED
    assert not (dest / "n").exists()
    assert temp_files(dest) == []


# -- bad input (SPEC §5, §6) -----------------------------------------------------------------


def test_relative_or_traversing_local_file_is_invalidarg(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, DisplayName="paths")
    url = "http://127.0.0.1:9/x"
    bad = [
        "x.bin",
        "relative/x.bin",
        "./x.bin",
        "../x.bin",
        f"{dest}/../x.bin",
        f"{dest}/sub/../x.bin",
        f"{dest}/./x",
    ]
    for local in bad:
        assert_error(
            daemon,
            "POST",
            job_path(job, "AddFile"),
            {"RemoteUrl": url, "LocalFile": local},
            code=E_INVALIDARG,
        )
        before = len(jobs(daemon))
        assert_error(
            daemon, "POST", f"{CLASS}/CreateJob", {"RemoteUrl": url, "LocalFile": local}, code=E_INVALIDARG
        )
        assert len(jobs(daemon)) == before
    # a directory, or a path naming no file, is no LocalFile either; nor is a second file for the same path
    for local in (str(dest), f"{dest}/"):
        assert_error(
            daemon,
            "POST",
            job_path(job, "AddFile"),
            {"RemoteUrl": url, "LocalFile": local},
            code=E_INVALIDARG,
        )
    assert get(daemon, job)["Files"] == []
    status, body = daemon.api(
        "POST", job_path(job, "AddFile"), {"RemoteUrl": url, "LocalFile": f"{dest}/once"}
    )
    assert status == 200, body
    assert_error(
        daemon,
        "POST",
        job_path(job, "AddFile"),
        {"RemoteUrl": url, "LocalFile": f"{dest}/once"},
        code=E_INVALIDARG,
    )
    assert [f["LocalFile"] for f in get(daemon, job)["Files"]] == [f"{dest}/once"]


def test_local_file_in_a_missing_directory_is_path_not_found(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, DisplayName="missing dir")
    body = {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(dest / "no" / "such" / "x.bin")}
    assert_error(daemon, "POST", job_path(job, "AddFile"), body, code=PATH_NOT_FOUND)
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", body, code=PATH_NOT_FOUND)
    assert [j["JobId"] for j in jobs(daemon)] == [job]
    assert get(daemon, job)["Files"] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory; needs a non-root daemon")
def test_local_file_in_a_read_only_directory_is_access_denied(daemon: Daemon, dest: Path) -> None:
    locked = dest / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        job = create(daemon, DisplayName="ro")
        body = {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(locked / "x.bin")}
        assert_error(daemon, "POST", job_path(job, "AddFile"), body, code=E_ACCESSDENIED)
        assert get(daemon, job)["Files"] == []
    finally:
        locked.chmod(0o755)


def test_unsupported_remote_urls_are_invalidarg(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, DisplayName="urls")
    urls = [
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1/x",
        "nonsense",
        "relative/path.bin",
        "",
        "http://",
        "http:///nohost",
        "http://127.0.0.1:99999/x",
        "http://[::1/x",
        "http://127.0.0.1/a b",
        "file://otherhost/etc/hostname",
        "javascript:alert(1)",
    ]
    for url in urls:
        assert_error(
            daemon,
            "POST",
            job_path(job, "AddFile"),
            {"RemoteUrl": url, "LocalFile": str(dest / "u.bin")},
            code=E_INVALIDARG,
        )
    assert get(daemon, job)["Files"] == []
    before = len(jobs(daemon))
    assert_error(
        daemon,
        "POST",
        f"{CLASS}/CreateJob",
        {"RemoteUrl": "ftp://127.0.0.1/x", "LocalFile": str(dest / "u.bin")},
        code=E_INVALIDARG,
    )
    assert len(jobs(daemon)) == before


def test_overlong_strings_are_bg_e_string_too_long(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="n" * 256, Description="d" * 1024)  # the limits themselves are fine
    assert get(daemon, job)["DisplayName"] == "n" * 256
    before = jobs(daemon)

    assert_error(daemon, "POST", f"{CLASS}/CreateJob", {"DisplayName": "x" * 257}, code=BG_E_STRING_TOO_LONG)
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", {"Description": "x" * 1025}, code=BG_E_STRING_TOO_LONG)
    assert jobs(daemon) == before

    assert_error(daemon, "PATCH", job_path(job), {"DisplayName": "x" * 257}, code=BG_E_STRING_TOO_LONG)
    assert_error(daemon, "PATCH", job_path(job), {"Description": "x" * 1025}, code=BG_E_STRING_TOO_LONG)
    assert jobs(daemon) == before


def test_unknown_enum_values_are_e_notimpl(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="enums")
    before = jobs(daemon)
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", {"Priority": 9}, code=E_NOTIMPL)
    assert jobs(daemon) == before
    assert_error(daemon, "PATCH", job_path(job), {"Priority": 9}, code=E_NOTIMPL)
    assert_error(daemon, "POST", job_path(job, "SetJobState"), {"JobState": 7}, code=E_NOTIMPL)
    assert jobs(daemon) == before


def test_wrong_number_values_are_invalidarg(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="numbers")
    before = jobs(daemon)
    for body in (
        {"MinimumRetryDelay": -1},
        {"MinimumRetryDelay": "60"},
        {"MinimumRetryDelay": 60.5},
        {"MinimumRetryDelay": True},
        {"MinimumRetryDelay": 2**32},
        {"NoProgressTimeout": -5},
        {"NoProgressTimeout": [1]},
        {"Priority": "1"},
        {"Priority": -1},
        {"DisplayName": 5},
        {"Description": {"a": 1}},
    ):
        assert_error(daemon, "PATCH", job_path(job), body, code=E_INVALIDARG)
    for body in ({"JobState": "2"}, {"JobState": -1}, {"JobState": None}, {}):
        assert_error(daemon, "POST", job_path(job, "SetJobState"), body, code=E_INVALIDARG)
    for body in ({"Priority": "1"}, {"Priority": -1}, {"DisplayName": 5}, {"Suspend": "yes"}):
        assert_error(daemon, "POST", f"{CLASS}/CreateJob", body, code=E_INVALIDARG)
    assert jobs(daemon) == before


def test_patch_of_a_read_only_property_changes_nothing(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="ro props")
    before = get(daemon, job)
    for body in (
        {"State": 0},
        {"JobId": "{00000000-0000-0000-0000-000000000000}"},
        {"BytesTotal": 5},
        {"state": 0},
        {"Owner": "mallory"},
        {"DisplayName": "changed", "State": 0},
    ):
        assert_error(daemon, "PATCH", job_path(job), body, code=BG_E_READ_ONLY_PROPERTY)
        assert stable(get(daemon, job)) == stable(before), body


def test_patch_is_all_or_nothing(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="atomic", Description="orig")
    before = get(daemon, job)
    for body, code in (
        ({"DisplayName": "changed", "Priority": 9}, E_NOTIMPL),
        ({"Priority": 9, "DisplayName": "changed"}, E_NOTIMPL),
        ({"Description": "changed", "MinimumRetryDelay": -1}, E_INVALIDARG),
        ({"MinimumRetryDelay": 30, "NoProgressTimeout": "x"}, E_INVALIDARG),
        ({"DisplayName": "changed", "Description": "x" * 1025}, BG_E_STRING_TOO_LONG),
        ({"DisplayName": "changed", "Bogus": 1}, E_INVALIDARG),
        ({"DisplayName": "changed", "MinimumRetryDelay": None}, E_INVALIDARG),
        ({"DisplayName": "a", "displayname": "b"}, E_INVALIDARG),
    ):
        assert_error(daemon, "PATCH", job_path(job), body, code=code)
        assert stable(get(daemon, job)) == stable(before), body


def test_patch_of_an_unknown_job_is_not_found_whatever_the_body(daemon: Daemon) -> None:
    missing = "{00000000-0000-0000-0000-000000000001}"
    assert_error(daemon, "PATCH", job_path(missing), {"State": 0}, code=0x80200001)


def test_malformed_json_bodies_are_invalidarg(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="json")
    before = jobs(daemon)
    targets = [
        ("POST", f"{CLASS}/CreateJob"),
        ("PATCH", job_path(job)),
        ("POST", job_path(job, "AddFile")),
        ("POST", job_path(job, "SetJobState")),
    ]
    for method, path in targets:
        for raw in (b"{", b'{"DisplayName": }', b"[1,2]", b'"text"', b"42", b'{"DisplayName": "\xff"}'):
            assert_error(daemon, method, path, raw=raw, code=E_INVALIDARG)
    assert jobs(daemon) == before

    # JSON null where an object is needed: accepted or refused, but cleanly, never a 500.
    for method, path in targets:
        status, answer = daemon.api(method, path, raw=b"null")
        assert status == 200 or 400 <= status < 500, (method, path, status, answer)
        assert_alive(daemon)


def test_deeply_nested_json_is_invalidarg_not_500(daemon: Daemon) -> None:
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", raw=b"[" * 100_000 + b"]" * 100_000, code=E_INVALIDARG)


def test_unknown_parameter_names_are_invalidarg(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, DisplayName="params")
    before = jobs(daemon)
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", {"DisplayName": "x", "Bogus": 1}, code=E_INVALIDARG)
    assert_error(
        daemon,
        "POST",
        job_path(job, "AddFile"),
        {"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(dest / "x"), "Extra": True},
        code=E_INVALIDARG,
    )
    assert_error(daemon, "POST", job_path(job, "SetJobState"), {"JobState": 3, "Force": 1}, code=E_INVALIDARG)
    assert_error(daemon, "POST", job_path(job, "GetError"), {"Verbose": True}, code=E_INVALIDARG)
    assert_error(daemon, "PATCH", job_path(job), {"Colour": "blue"}, code=E_INVALIDARG)
    assert jobs(daemon) == before


def test_body_over_one_mib_is_413(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="big")
    before = jobs(daemon)
    huge = {"DisplayName": "x" * (MIB + 1)}
    for method, path in (
        ("POST", f"{CLASS}/CreateJob"),
        ("PATCH", job_path(job)),
        ("POST", job_path(job, "AddFile")),
    ):
        status, answer = daemon.api(method, path, huge)
        assert status == 413, (method, path, status, answer)
        assert isinstance(answer["ReturnValue"], int) and answer["ReturnValue"] & 0x80000000, answer
        assert answer["ErrorCode"] == f"0x{answer['ReturnValue']:08X}", answer
        assert answer["Name"] and answer["Message"], answer
        assert_alive(daemon)
    assert jobs(daemon) == before


def chunked_post(daemon: Daemon, path: str, data: bytes) -> tuple[int, Any]:
    """POST with ``Transfer-Encoding: chunked`` (no Content-Length), in 64 KiB chunks."""
    conn = UnixHTTP(daemon.socket)
    try:
        chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
        conn.request(
            "POST", path, body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True
        )
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(payload) if payload else None


def test_valid_body_under_one_mib_is_read_whole(daemon: Daemon) -> None:
    raw = b'{"DisplayName": "padded"' + b" " * 900_000 + b"}"
    status, answer = daemon.api("POST", f"{CLASS}/CreateJob", raw=raw)
    assert status == 200, answer
    assert get(daemon, answer["JobId"])["DisplayName"] == "padded"


def test_chunked_body_over_one_mib_is_413(daemon: Daemon) -> None:
    before = jobs(daemon)
    status, answer = chunked_post(
        daemon, f"{CLASS}/CreateJob", b'{"DisplayName": "' + b"x" * (2 * MIB) + b'"}'
    )
    assert status == 413, answer
    assert_alive(daemon)
    assert jobs(daemon) == before


def test_unknown_method_is_400(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="methods")
    status, answer = daemon.api("POST", job_path(job, "Explode"), {})
    assert status == 400, answer
    assert answer["ErrorCode"].startswith("0x8") and answer["Name"] and answer["Message"], answer
    assert_alive(daemon)
    assert get(daemon, job)["State"] == JobState.SUSPENDED


def test_create_job_with_only_half_a_file_is_invalidarg(daemon: Daemon, dest: Path) -> None:
    before = jobs(daemon)
    assert_error(
        daemon, "POST", f"{CLASS}/CreateJob", {"RemoteUrl": "http://127.0.0.1:9/x"}, code=E_INVALIDARG
    )
    assert_error(daemon, "POST", f"{CLASS}/CreateJob", {"LocalFile": str(dest / "x")}, code=E_INVALIDARG)
    assert jobs(daemon) == before


def test_input_names_are_case_insensitive(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, displayname="lower", DESCRIPTION="upper", priority=1)
    instance = get(daemon, job)
    assert (instance["DisplayName"], instance["Description"], instance["Priority"]) == ("lower", "upper", 1)

    status, body = daemon.api(
        "POST", job_path(job, "AddFile"), {"remoteUrl": "http://127.0.0.1:9/a", "localFile": str(dest / "a")}
    )
    assert (status, body["ReturnValue"]) == (200, 0), body
    status, body = daemon.api(
        "POST",
        f"{CLASS}/CreateJob",
        {"remoteurl": "http://127.0.0.1:9/b", "LOCALFILE": str(dest / "b"), "suspend": True},
    )
    assert status == 200, body
    other = get(daemon, body["JobId"])
    assert other["State"] == JobState.SUSPENDED
    assert [(f["RemoteUrl"], f["LocalFile"]) for f in other["Files"]] == [
        ("http://127.0.0.1:9/b", str(dest / "b"))
    ]

    status, body = daemon.api("PATCH", job_path(job), {"minimumretrydelay": 30, "NOPROGRESSTIMEOUT": 60})
    assert status == 200, body
    status, body = daemon.api("POST", job_path(job, "SetJobState"), {"jobstate": 3})
    assert (status, body["ReturnValue"]) == (200, 0), body
    instance = get(daemon, job)
    assert (instance["MinimumRetryDelay"], instance["NoProgressTimeout"]) == (30, 60)
    assert [f["LocalFile"] for f in instance["Files"]] == [str(dest / "a")]


def test_minimum_retry_delay_floor_and_zero_no_progress_timeout(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="delays")
    for given, stored in ((0, 5), (1, 5), (4, 5), (5, 5), (6, 6), (3600, 3600)):
        status, body = daemon.api("PATCH", job_path(job), {"MinimumRetryDelay": given})
        assert status == 200, body
        assert body["MinimumRetryDelay"] == stored, (given, body)
        assert get(daemon, job)["MinimumRetryDelay"] == stored
    status, body = daemon.api("PATCH", job_path(job), {"NoProgressTimeout": 0})
    assert status == 200, body
    assert get(daemon, job)["NoProgressTimeout"] == 0


# -- CreateJob, lookup, enumeration ---------------------------------------------------------


def test_create_job_with_a_file_resumes_it_unless_suspend(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digest = make_file(nginx.www, "apierr/create-run.bin", 64 * 1024 + 3, seed=4)
    make_file(nginx.www, "apierr/create-held.bin", 1000, seed=5)
    held = create(
        daemon,
        RemoteUrl=f"{nginx.url}/apierr/create-held.bin",
        LocalFile=str(dest / "held.bin"),
        Suspend=True,
    )
    assert get(daemon, held)["State"] == JobState.SUSPENDED
    run = create(daemon, RemoteUrl=f"{nginx.url}/apierr/create-run.bin", LocalFile=str(dest / "run.bin"))
    assert get(daemon, run)["State"] != JobState.SUSPENDED
    daemon.wait_state(run, JobState.TRANSFERRED)
    status, body = set_state(daemon, run, 1)
    assert (status, body["ReturnValue"]) == (200, 0), body
    assert sha256_file(dest / "run.bin") == digest

    # The suspended job was passed over while the other one ran.
    instance = get(daemon, held)
    assert instance["State"] == JobState.SUSPENDED
    assert instance["BytesTransferred"] == 0
    assert not [r for r in nginx.requests() if r["uri"] == "/apierr/create-held.bin"]


def test_lookup_by_any_job_id_spelling_and_by_display_name(daemon: Daemon) -> None:
    job = create(daemon, DisplayName="my unique job")
    bare = job.strip("{}")
    for ref in (job, job.lower(), bare, bare.lower(), "my unique job"):
        instance = get(daemon, ref)
        assert instance["JobId"] == job, ref
        status, body = daemon.api("PATCH", job_path(ref), {"Description": ref})
        assert status == 200 and body["Description"] == ref, body

    twin_a = create(daemon, DisplayName="twin")
    twin_b = create(daemon, DisplayName="twin")
    assert_error(daemon, "GET", job_path("twin"), code=E_INVALIDARG)
    assert_error(daemon, "POST", job_path("twin", "SetJobState"), {"JobState": 0}, code=E_INVALIDARG)
    assert {get(daemon, twin_a)["State"], get(daemon, twin_b)["State"]} == {JobState.SUSPENDED}
    # Once one twin is gone the name is unique again.
    status, body = set_state(daemon, twin_a, 0)
    assert status == 200, body
    assert get(daemon, "twin")["JobId"] == twin_b


def test_enumeration_shape(daemon: Daemon, dest: Path) -> None:
    empty = create(daemon, DisplayName="empty one")
    with_file = create(
        daemon,
        DisplayName="with file",
        RemoteUrl="http://127.0.0.1:9/f.bin",
        LocalFile=str(dest / "f.bin"),
        Suspend=True,
    )
    listed = jobs(daemon)
    assert {j["JobId"] for j in listed} == {empty, with_file}
    me = pwd.getpwuid(os.geteuid()).pw_name
    for instance in listed:
        missing = [p for p in SPEC_PROPERTIES if p not in instance]
        assert not missing, missing
        assert GUID.match(instance["JobId"]), instance["JobId"]
        assert instance["Owner"] == me
        for name in SPEC_PROPERTIES:
            if name not in ("JobId", "DisplayName", "Description", "Owner", "Files"):
                value = instance[name]
                assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, (name, value)
        assert instance["JobCreationTime"] > 116_444_736_000_000_000  # FILETIME after 1970
        assert instance["JobCompletionTime"] == 0
        assert instance["State"] == JobState.SUSPENDED
        assert (instance["Priority"], instance["MinimumRetryDelay"], instance["NoProgressTimeout"]) == (
            2,
            600,
            1209600,
        )
        assert get(daemon, instance["JobId"]) == instance

    by_id = {j["JobId"]: j for j in listed}
    e = by_id[empty]
    assert (e["Files"], e["BytesTotal"], e["BytesTransferred"], e["FilesTotal"]) == ([], 0, 0, 0)
    f = by_id[with_file]
    assert f["FilesTotal"] == 1 and f["FilesTransferred"] == 0
    assert f["BytesTotal"] == BG_SIZE_UNKNOWN
    assert f["Files"] == [
        {
            "RemoteUrl": "http://127.0.0.1:9/f.bin",
            "LocalFile": str(dest / "f.bin"),
            "BytesTotal": BG_SIZE_UNKNOWN,
            "BytesTransferred": 0,
            "Completed": False,
            "RangeSupport": None,
        }
    ]
    assert set(f["Files"][0]) >= set(FILE_PROPERTIES)


def test_socket_is_owner_only(daemon: Daemon) -> None:
    mode = os.stat(daemon.socket).st_mode & 0o777
    assert mode == 0o600, oct(mode)


def test_add_file_set_adds_all_or_nothing(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = [make_file(nginx.www, f"set/{i}.bin", 5_000 + i, seed=110 + i) for i in range(3)]
    job = create(daemon, DisplayName="set")
    good = [{"RemoteUrl": f"{nginx.url}/set/{i}.bin", "LocalFile": str(dest / f"{i}.bin")} for i in range(3)]
    for files in (
        [*good[:2], {"RemoteUrl": "ftp://x/y", "LocalFile": str(dest / "z")}],
        [good[0], good[0]],
        [],
        "nope",
    ):
        assert_error(daemon, "POST", job_path(job, "AddFileSet"), {"Files": files}, code=E_INVALIDARG)
        assert get(daemon, job)["FilesTotal"] == 0, files
    status, body = daemon.api("POST", job_path(job, "AddFileSet"), {"Files": good})
    assert (status, body["ReturnValue"]) == (200, 0)
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)
    assert [sha256_file(dest / f"{i}.bin") for i in range(3)] == digests


def test_add_file_set_refuses_a_local_file_that_is_a_directory(daemon: Daemon, dest: Path) -> None:
    """Among many files for one directory (checked with one listing, not a stat each), a
    LocalFile naming a directory, or a symlink to one, is E_INVALIDARG and adds nothing; a
    regular file and a symlink to a file are taken."""
    (dest / "f0010").mkdir()
    (dest / "f0020").symlink_to(dest / "f0010")
    (dest / "f0030").write_bytes(b"old")
    (dest / "f0040").symlink_to(dest / "f0030")
    job = create(daemon, DisplayName="dir among many")
    files = [
        {"RemoteUrl": f"http://127.0.0.1:9/{i}", "LocalFile": str(dest / f"f{i:04d}")} for i in range(64)
    ]
    for bad in (10, 20):
        answer = assert_error(
            daemon, "POST", job_path(job, "AddFileSet"), {"Files": files}, code=E_INVALIDARG
        )
        assert "is a directory" in answer["Message"] and f"f{bad:04d}" in answer["Message"], answer
        assert get(daemon, job)["FilesTotal"] == 0
        files = [f for f in files if not f["LocalFile"].endswith(f"f{bad:04d}")]
    status, body = daemon.api("POST", job_path(job, "AddFileSet"), {"Files": files})
    assert (status, body["ReturnValue"]) == (200, 0), body
    assert get(daemon, job)["FilesTotal"] == 62


def test_get_can_leave_out_the_files_for_pollers(daemon: Daemon, dest: Path) -> None:
    job = create(daemon, DisplayName="lean")
    daemon.client.add_file(job, "http://127.0.0.1:9/f.bin", str(dest / "f.bin"))
    status, lean = daemon.api("GET", job_path(job) + "?Files=false")
    assert status == 200 and "Files" not in lean and lean["FilesTotal"] == 1
    assert "Files" in get(daemon, job)
    assert_error(daemon, "GET", job_path(job) + "?Files=maybe", code=E_INVALIDARG)


def test_a_malformed_notify_url_is_e_invalidarg_not_an_internal_error(daemon: Daemon) -> None:
    """Found by tests/integration/test_api_fuzz.py: urlsplit's ValueError was a 500."""
    job = create(daemon, DisplayName="hook")
    for url in ("http://[x", "https://[::1/hook", "http://h:99999/", "http://h:0/"):
        assert_error(daemon, "POST", job_path(job, "SetNotifyUrl"), {"NotifyUrl": url}, code=E_INVALIDARG)
    assert get(daemon, job)["NotifyUrl"] is None
