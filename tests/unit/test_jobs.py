"""openbits.jobs: the typed objects of the Python clients, built from the API's JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from openbits._wire import Endpoint as _Endpoint
from openbits.client import Client, wmi_name
from openbits.errors import HResult, NotFound, TransferError
from openbits.jobs import (
    BitsFile,
    BitsJob,
    JobClientCertificate,
    JobCredential,
    JobErrorInfo,
    JobEvent,
    NotifyCmdLine,
    ReplyProgress,
    datetime_from_filetime,
)
from openbits.model import (
    BG_SIZE_UNKNOWN,
    AuthScheme,
    AuthTarget,
    CertStoreLocation,
    ClientCertificate,
    Credential,
    ErrorContext,
    Job,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
    Secret,
    SecurityFlags,
    filetime_from_unix_ns,
    new_job_id,
)

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 10**9 + 123456 * 1000


def sample(**changes: Any) -> dict[str, Any]:
    """An instance as the daemon sends it (model.Job.to_cim), through JSON."""
    job = Job(
        job_id=new_job_id(),
        owner="alice",
        owner_uid=1000,
        display_name="nightly",
        description="the nightly build",
        priority=JobPriority.HIGH,
        state=JobState.TRANSFERRING,
        minimum_retry_delay_s=60,
        no_progress_timeout_s=3600,
        notify_flags=int(NotifyFlags.JOB_ERROR),
        created_ns=T0_NS,
        modified_ns=T0_NS + 10**9,
        transient_error_count=2,
        maximum_download_time_s=600,
        custom_headers="Authorization: Bearer s3cret\r\n",
        security_flags=int(SecurityFlags.IGNORE_UNKNOWN_CA),
        notify_program="/usr/bin/logger",
        notify_parameters="logger -t bits done",
        notify_url="https://hooks.example/T0/secret",
        files=[
            JobFile(
                "https://example.org/a.iso", "/srv/a.iso", 1000, 1000, completed=True, range_support=True
            ),
            JobFile("https://example.org/b.iso", "/srv/b.iso", 3000, 500, ranges=[(0, 10), (100, 20)]),
        ],
    )
    for name, value in changes.items():
        setattr(job, name, value)
    data: dict[str, Any] = json.loads(json.dumps(job.to_cim()))
    return data


def test_from_cim_gives_every_property_its_type() -> None:
    raw = sample()
    job = BitsJob.from_cim(raw)
    assert job.job_id == raw["JobId"]
    assert (job.display_name, job.description, job.owner) == ("nightly", "the nightly build", "alice")
    assert job.priority is JobPriority.HIGH and job.state is JobState.TRANSFERRING
    assert job.job_type is JobType.DOWNLOAD
    assert (job.bytes_total, job.bytes_transferred) == (4000, 1500)
    assert (job.files_total, job.files_transferred, job.transient_error_count) == (2, 1, 2)
    assert (job.minimum_retry_delay, job.no_progress_timeout, job.maximum_download_time) == (60, 3600, 600)
    assert job.notify_flags == NotifyFlags.JOB_ERROR and isinstance(job.notify_flags, NotifyFlags)
    assert job.notify_cmd_line == NotifyCmdLine("/usr/bin/logger", "logger -t bits done")
    assert job.notify_url == "https://hooks.example/***"
    assert job.custom_headers == "Authorization: Bearer s3cret\r\n"
    assert job.security_flags == SecurityFlags.IGNORE_UNKNOWN_CA
    assert job.credentials == () and job.client_certificate is None
    assert job.reply_file_name is None and job.reply_progress is None  # (a download)
    assert (job.proxy_usage, job.proxy_list, job.proxy_bypass_list) == (ProxyUsage.PRECONFIG, None, None)
    assert job.creation_time == T0
    assert job.modification_time == datetime(2025, 3, 4, 5, 6, 8, 123456, tzinfo=UTC)
    assert job.completion_time is None  # a FILETIME of 0
    assert job.files == (
        BitsFile("https://example.org/a.iso", "/srv/a.iso", 1000, 1000, True, None, True),
        BitsFile("https://example.org/b.iso", "/srv/b.iso", 3000, 500, False, ((0, 10), (100, 20)), None),
    )
    assert job.raw is raw and job.files[1].raw is raw["Files"][1]
    assert job.progress == pytest.approx(1500 / 4000)
    assert not job.done


def test_datetimes_are_aware_utc_and_zero_is_none() -> None:
    assert datetime_from_filetime(0) is None
    assert datetime_from_filetime(filetime_from_unix_ns(T0_NS)) == T0
    when = datetime_from_filetime(filetime_from_unix_ns(T0_NS))
    assert when is not None and when.tzinfo is not None and when.utcoffset() is not None
    raw = sample(transferred_ns=T0_NS + 5 * 10**9, state=JobState.TRANSFERRED)
    assert BitsJob.from_cim(raw).completion_time == datetime(2025, 3, 4, 5, 6, 12, 123456, tzinfo=UTC)


def test_unknown_keys_are_ignored_and_kept_in_raw() -> None:
    raw = sample()
    newer = json.loads(json.dumps(raw))  # a newer daemon's instance: more keys
    newer["SomethingNew"] = {"x": 1}
    newer["Files"][0]["Hash"] = "abc"
    job = BitsJob.from_cim(newer)
    assert job == BitsJob.from_cim(raw)
    assert job.raw["SomethingNew"] == {"x": 1} and job.files[0].raw["Hash"] == "abc"


def test_missing_optional_keys_take_the_defaults_and_job_id_is_required() -> None:
    job = BitsJob.from_cim({"JobId": "{00000000-0000-0000-0000-000000000001}", "State": 4})
    assert job.state is JobState.ERROR
    assert job.priority is JobPriority.NORMAL and job.files == () and job.creation_time is None
    assert job.custom_headers is None and job.notify_cmd_line is None and job.progress is None
    assert job.done
    raw = sample()
    del raw["Files"], raw["CustomHeaders"]  # GetJob with Files=false; an event
    partial = BitsJob.from_cim(raw)
    assert partial.files == () and partial.files_total == 2 and partial.custom_headers is None
    with pytest.raises(ValueError, match="JobId"):
        BitsJob.from_cim({"State": 0})


def test_unknown_sizes_are_none_and_progress_follows() -> None:
    raw = sample()
    raw["BytesTotal"] = BG_SIZE_UNKNOWN
    raw["Files"][1]["BytesTotal"] = BG_SIZE_UNKNOWN
    job = BitsJob.from_cim(raw)
    assert job.bytes_total is None and job.progress is None and job.files[1].bytes_total is None
    empty = BitsJob.from_cim(sample(files=[]))
    assert (empty.bytes_total, empty.progress) == (0, None)
    zero = BitsJob.from_cim(sample(files=[JobFile("https://e/x", "/srv/x", 0, 0, completed=True)]))
    assert zero.progress == 1.0


@pytest.mark.parametrize(
    ("state", "done"),
    [
        (s, s in {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED})
        for s in JobState
    ],
)
def test_done(state: JobState, done: bool) -> None:
    assert BitsJob.from_cim(sample(state=state)).done is done


def test_frozen_hashable_and_repr_hides_custom_headers() -> None:
    job = BitsJob.from_cim(sample())
    assert hash(job) == hash(BitsJob.from_cim(dict(job.raw)))
    with pytest.raises(AttributeError):
        job.state = JobState.ERROR  # type: ignore[misc]
    assert "s3cret" not in repr(job) and "custom_headers" not in repr(job)


def test_job_error_info_rebuilds_its_exception() -> None:
    raw = {
        "ReturnValue": 0,
        "ErrorContext": 5,
        "ErrorCode": 0x80190194,
        "ContextDescription": "The error occurred while processing the remote file.",
        "ErrorDescription": "the server returned HTTP status 404",
        "Name": "BG_E_HTTP_ERROR_404",
        "RemoteUrl": "https://example.org/x",
        "LocalFile": "/srv/x",
    }
    info = JobErrorInfo.from_cim(raw)
    assert (info.hresult, info.hex, info.name) == (0x80190194, "0x80190194", "BG_E_HTTP_ERROR_404")
    assert info.context is ErrorContext.REMOTE_FILE and info.remote_url == "https://example.org/x"
    error = info.exception()
    assert error.hresult == 0x80190194 and error.context is ErrorContext.REMOTE_FILE
    assert error.message == "the server returned HTTP status 404"
    not_found = JobErrorInfo.from_cim({"ErrorCode": int(HResult.BG_E_NOT_FOUND), "ErrorContext": 2})
    assert isinstance(not_found.exception(), NotFound) and not_found.name == "BG_E_NOT_FOUND"
    assert not isinstance(not_found.exception(), TransferError)


def test_job_event_from_sse() -> None:
    raw = sample()
    event = JobEvent.from_sse(41, "JobModification", raw)
    assert (event.id, event.type) == (41, "JobModification")
    assert event.job == BitsJob.from_cim(raw) and event.data is raw
    reset = JobEvent.from_sse(None, "Reset", {"LastEventId": 1, "OldestEventId": 70})
    assert reset.job is None and reset.data["OldestEventId"] == 70


def test_snake_case_names_map_to_the_wmi_names() -> None:
    assert wmi_name("display_name") == "DisplayName"
    assert wmi_name("minimum_retry_delay") == "MinimumRetryDelay"
    assert wmi_name("DisplayName") == "DisplayName"
    assert wmi_name("max_bandwidth") == "MaxBandwidth"
    assert wmi_name("description") == "Description"


def test_where_a_client_finds_the_daemon_and_the_token_stays_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBITS_SOCKET", raising=False)
    monkeypatch.setenv("OPENBITS_URL", "http://127.0.0.1:8765/")
    monkeypatch.setenv("OPENBITS_TOKEN", "obt_very-secret")
    ep = _Endpoint.resolve(None, None, None)
    assert (ep.socket, ep.url, ep.token) == (None, "http://127.0.0.1:8765", "obt_very-secret")
    assert ep.headers() == {"Authorization": "Bearer obt_very-secret"}
    client = Client()
    assert "obt_very-secret" not in repr(client) and "obt_very-secret" not in repr(ep)
    assert client.url == "http://127.0.0.1:8765" and client.socket is None
    assert Client("/run/x.sock").socket == "/run/x.sock"  # an explicit socket wins
    monkeypatch.setenv("OPENBITS_SOCKET", "/run/y.sock")
    assert Client().socket == "/run/y.sock"  # $OPENBITS_SOCKET before $OPENBITS_URL
    assert Client(url="https://[::1]:9/bits", token="t").url == "https://[::1]:9/bits"
    assert _Endpoint.resolve("/run/z.sock", None, "t").headers() == {}  # no token on the socket
    with pytest.raises(ValueError, match="http"):
        Client(url="ftp://host/")
    with pytest.raises(ValueError) as e:
        Client(url="gopher://user:pw@host:1/")
    assert "pw" not in str(e.value)


def test_the_reply_of_an_upload_reply_job_is_typed() -> None:
    unknown = BitsJob.from_cim(sample(job_type=JobType.UPLOAD_REPLY, reply_file_name="/srv/a.reply"))
    assert unknown.job_type is JobType.UPLOAD_REPLY and unknown.reply_file_name == "/srv/a.reply"
    assert unknown.reply_progress == ReplyProgress(None, 0)  # (BG_SIZE_UNKNOWN: None)
    known = BitsJob.from_cim(
        sample(job_type=JobType.UPLOAD_REPLY, reply_bytes_total=90, reply_bytes_transferred=40)
    )
    assert known.reply_progress == ReplyProgress(90, 40) and known.reply_file_name is None


def test_the_identity_properties_are_typed_and_carry_no_password() -> None:
    raw = sample(
        credentials={
            (AuthTarget.SERVER, AuthScheme.BASIC): Credential(
                AuthTarget.SERVER, AuthScheme.BASIC, "alice", Secret("pw-never-shown")
            ),
            (AuthTarget.PROXY, AuthScheme.NEGOTIATE): Credential(
                AuthTarget.PROXY, AuthScheme.NEGOTIATE, None, None
            ),
        },
        proxy_usage=ProxyUsage.OVERRIDE,
        proxy_list="http://proxy:3128",
        proxy_bypass_list="<local>",
        client_certificate=ClientCertificate(CertStoreLocation.LOCAL_MACHINE, "MY", "ab" * 20, "CN=client"),
    )
    job = BitsJob.from_cim(raw)
    assert job.credentials == (
        JobCredential(AuthTarget.SERVER, AuthScheme.BASIC, "alice"),
        JobCredential(AuthTarget.PROXY, AuthScheme.NEGOTIATE, None),
    )
    assert isinstance(job.credentials[0].scheme, AuthScheme)
    assert (job.proxy_usage, job.proxy_list, job.proxy_bypass_list) == (
        ProxyUsage.OVERRIDE,
        "http://proxy:3128",
        "<local>",
    )
    assert job.client_certificate == JobClientCertificate(
        CertStoreLocation.LOCAL_MACHINE, "MY", "ab" * 20, "CN=client"
    )
    assert "pw-never-shown" not in repr(job) + json.dumps(raw)
