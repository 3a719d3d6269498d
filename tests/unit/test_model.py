"""Unit tests of openbits.model: enumerations, FILETIME, JobIds, byte totals and the CIM shape."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbits.errors import BitsError
from openbits.model import (
    ALL_PROPERTIES,
    BG_SIZE_UNKNOWN,
    DEFAULT_NOTIFY_FLAGS,
    FILETIME_UNIX_EPOCH,
    ErrorContext,
    Job,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
    SetJobStateCode,
    canonical_job_id,
    filetime_from_unix_ns,
    new_job_id,
    unix_ns_from_filetime,
)
from openbits.redaction import redact_webhook
from openbits.service.params import validate_local_file

GUID = "{0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0}"


def make_job(**kwargs: object) -> Job:
    defaults: dict[str, object] = {"job_id": GUID, "owner": "alice", "owner_uid": 1000}
    defaults.update(kwargs)
    return Job(**defaults)  # type: ignore[arg-type]


# -- enumerations (bits-spec §2) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (JobState.QUEUED, 0),
        (JobState.CONNECTING, 1),
        (JobState.TRANSFERRING, 2),
        (JobState.SUSPENDED, 3),
        (JobState.ERROR, 4),
        (JobState.TRANSIENT_ERROR, 5),
        (JobState.TRANSFERRED, 6),
        (JobState.ACKNOWLEDGED, 7),
        (JobState.CANCELLED, 8),
    ],
    ids=lambda v: v.name if isinstance(v, JobState) else str(v),
)
def test_job_state_values(member: JobState, value: int) -> None:
    assert int(member) == value


def test_job_state_has_exactly_nine_members() -> None:
    assert [int(s) for s in JobState] == list(range(9))


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (JobPriority.FOREGROUND, 0),
        (JobPriority.HIGH, 1),
        (JobPriority.NORMAL, 2),
        (JobPriority.LOW, 3),
    ],
)
def test_job_priority_values(member: JobPriority, value: int) -> None:
    assert int(member) == value


def test_job_priority_has_exactly_four_members() -> None:
    assert [int(p) for p in JobPriority] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("member", "value"),
    [(JobType.DOWNLOAD, 0), (JobType.UPLOAD, 1), (JobType.UPLOAD_REPLY, 2)],
)
def test_job_type_values(member: JobType, value: int) -> None:
    assert int(member) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NONE", 0),
        ("UNKNOWN", 1),
        ("GENERAL_QUEUE_MANAGER", 2),
        ("QUEUE_MANAGER_NOTIFICATION", 3),
        ("LOCAL_FILE", 4),
        ("REMOTE_FILE", 5),
        ("GENERAL_TRANSPORT", 6),
        ("REMOTE_APPLICATION", 7),
        ("SERVER_CERTIFICATE_CALLBACK", 8),
    ],
)
def test_error_context_values(name: str, value: int) -> None:
    assert int(ErrorContext[name]) == value


def test_error_context_has_exactly_nine_members() -> None:
    assert [int(c) for c in ErrorContext] == list(range(9))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOB_TRANSFERRED", 0x0001),
        ("JOB_ERROR", 0x0002),
        ("DISABLE", 0x0004),
        ("JOB_MODIFICATION", 0x0008),
        ("FILE_TRANSFERRED", 0x0010),
        ("FILE_RANGES_TRANSFERRED", 0x0020),
    ],
)
def test_notify_flag_values(name: str, value: int) -> None:
    assert int(NotifyFlags[name]) == value


def test_default_notify_flags_is_3() -> None:
    assert int(DEFAULT_NOTIFY_FLAGS) == 3
    assert make_job().notify_flags == 3


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (ProxyUsage.PRECONFIG, 0),
        (ProxyUsage.NO_PROXY, 1),
        (ProxyUsage.OVERRIDE, 2),
        (ProxyUsage.AUTODETECT, 3),
    ],
)
def test_proxy_usage_values(member: ProxyUsage, value: int) -> None:
    assert int(member) == value


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (SetJobStateCode.CANCEL, 0),
        (SetJobStateCode.COMPLETE, 1),
        (SetJobStateCode.RESUME, 2),
        (SetJobStateCode.SUSPEND, 3),
    ],
)
def test_set_job_state_codes(member: SetJobStateCode, value: int) -> None:
    assert int(member) == value


def test_bg_size_unknown_is_uint64_minus_one() -> None:
    assert BG_SIZE_UNKNOWN == 0xFFFFFFFFFFFFFFFF == 18446744073709551615


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.name)
def test_is_final_only_for_acknowledged_and_cancelled(state: JobState) -> None:
    assert state.is_final == (state in (JobState.ACKNOWLEDGED, JobState.CANCELLED))


@pytest.mark.parametrize("state", list(JobState), ids=lambda s: s.name)
def test_bitsadmin_name_spelling(state: JobState) -> None:
    expected = {
        JobState.QUEUED: "QUEUED",
        JobState.CONNECTING: "CONNECTING",
        JobState.TRANSFERRING: "TRANSFERRING",
        JobState.SUSPENDED: "SUSPENDED",
        JobState.ERROR: "ERROR",
        JobState.TRANSIENT_ERROR: "TRANSIENT_ERROR",
        JobState.TRANSFERRED: "TRANSFERRED",
        JobState.ACKNOWLEDGED: "ACKNOWLEDGED",
        JobState.CANCELLED: "CANCELED",  # bitsadmin spells it with one L
    }
    assert state.bitsadmin_name == expected[state]


# -- FILETIME (bits-spec §8) -----------------------------------------------------------------


def test_filetime_unix_epoch_constant() -> None:
    assert FILETIME_UNIX_EPOCH == 116444736000000000
    assert FILETIME_UNIX_EPOCH == 11_644_473_600 * 10_000_000


def test_filetime_of_one_unix_second() -> None:
    assert filetime_from_unix_ns(1_000_000_000) == FILETIME_UNIX_EPOCH + 10_000_000


def test_filetime_known_value() -> None:
    # 2023-11-14T22:13:20Z = Unix 1_700_000_000 s
    assert filetime_from_unix_ns(1_700_000_000 * 10**9) == 133_444_736_000_000_000


def test_filetime_zero_stays_zero_both_ways() -> None:
    assert filetime_from_unix_ns(0) == 0
    assert unix_ns_from_filetime(0) == 0


def test_filetime_truncates_below_100ns() -> None:
    assert filetime_from_unix_ns(1_000_000_099) == filetime_from_unix_ns(1_000_000_000)


@given(st.integers(min_value=1, max_value=2**62).map(lambda n: n * 100))
def test_filetime_round_trip(unix_ns: int) -> None:
    assert unix_ns_from_filetime(filetime_from_unix_ns(unix_ns)) == unix_ns


@given(st.integers(min_value=FILETIME_UNIX_EPOCH + 1, max_value=2**63))
def test_unix_ns_round_trip(filetime: int) -> None:
    assert filetime_from_unix_ns(unix_ns_from_filetime(filetime)) == filetime


# -- JobId -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0}",
        "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
        "{0f1E2d3C-4b5A-6978-8796-a5B4c3D2e1F0}",
        "  {0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}  ",
    ],
    ids=["canonical", "lower-braces", "lower-bare", "upper-bare", "mixed-case", "padded"],
)
def test_canonical_job_id_accepts_any_case_with_or_without_braces(text: str) -> None:
    assert canonical_job_id(text) == GUID


def test_canonical_job_id_from_uuid_object() -> None:
    assert canonical_job_id(uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")) == GUID


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-guid",
        "{}",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",  # 35 characters
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f00",  # 37 characters
        "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",  # unbalanced brace
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",  # unbalanced brace
        "{{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}}",
        "gf1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "zf1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "0f1e2d3c04b5a06978087960a5b4c3d2e1f0",  # hyphens replaced by digits
    ],
    ids=[
        "empty",
        "word",
        "empty-braces",
        "too-short",
        "too-long",
        "open-brace-only",
        "close-brace-only",
        "double-braces",
        "non-hex-g",
        "non-hex-z",
        "no-hyphens-36",
    ],
)
def test_canonical_job_id_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_job_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0----",  # hyphens in the wrong place
        "urn:0f1e2d3c4b5a69788796a5b4c3d2e1f0",  # URN prefix, no hyphens
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1_0",  # underscore digit separator
        "\uff100f1e2d3-4b5a-6978-8796-a5b4c3d2e1f0",  # full-width digit zero
    ],
    ids=["misplaced-hyphens", "urn-prefix", "underscore", "fullwidth-digit"],
)
def test_canonical_job_id_rejects_guid_lookalikes(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_job_id(text)


def test_new_job_id_is_canonical_and_unique() -> None:
    ids = {new_job_id() for _ in range(50)}
    assert len(ids) == 50
    for job_id in ids:
        assert canonical_job_id(job_id) == job_id
        assert job_id == job_id.upper()
        assert len(job_id) == 38


# -- byte totals -----------------------------------------------------------------------------


def test_bytes_total_is_zero_without_files() -> None:
    job = make_job()
    assert job.bytes_total == 0
    assert job.bytes_transferred == 0
    assert job.files_transferred == 0


def test_bytes_total_is_unknown_while_any_file_size_is_unknown() -> None:
    job = make_job(
        files=[
            JobFile("http://h/a", "/tmp/a", bytes_total=10, bytes_transferred=10, completed=True),
            JobFile("http://h/b", "/tmp/b", bytes_total=None),
            JobFile("http://h/c", "/tmp/c", bytes_total=5),
        ]
    )
    assert job.bytes_total == BG_SIZE_UNKNOWN


def test_bytes_total_is_the_sum_when_every_size_is_known() -> None:
    job = make_job(
        files=[
            JobFile("http://h/a", "/tmp/a", bytes_total=10, bytes_transferred=10, completed=True),
            JobFile("http://h/b", "/tmp/b", bytes_total=0, completed=True),
            JobFile("http://h/c", "/tmp/c", bytes_total=2**40, bytes_transferred=7),
        ]
    )
    assert job.bytes_total == 10 + 0 + 2**40
    assert job.bytes_transferred == 17
    assert job.files_transferred == 2


def test_file_temp_path_is_next_to_the_local_file() -> None:
    f = JobFile("http://h/a", "/srv/data/a.iso")
    assert f.temp_path is None
    f.temp_name = ".BIT0123ABCD.tmp"
    assert f.temp_path == "/srv/data/.BIT0123ABCD.tmp"


# -- CIM shape (SPEC §1) ---------------------------------------------------------------------

JOB_KEYS = {
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
    "JobType",
    "NotifyFlags",
    "MaximumDownloadTime",
    "CustomHeaders",
    "SecurityFlags",
    "NotifyCmdLine",
    "NotifyUrl",
    "Credentials",
    "ProxyUsage",
    "ProxyList",
    "ProxyBypassList",
    "ClientCertificate",
    "ReplyFileName",
    "ReplyProgress",
    "MaxConnections",
}
UINT_KEYS = JOB_KEYS - {
    "JobId",
    "DisplayName",
    "Description",
    "Files",
    "Owner",
    "CustomHeaders",
    "NotifyCmdLine",
    "NotifyUrl",
    "Credentials",
    "ProxyList",
    "ProxyBypassList",
    "ClientCertificate",
    "ReplyFileName",
    "ReplyProgress",
}


def sample_job() -> Job:
    return make_job(
        display_name="nightly",
        description="backup",
        job_type=JobType.UPLOAD,
        priority=JobPriority.HIGH,
        state=JobState.TRANSIENT_ERROR,
        minimum_retry_delay_s=60,
        no_progress_timeout_s=120,
        notify_flags=int(NotifyFlags.JOB_ERROR | NotifyFlags.FILE_TRANSFERRED),
        created_ns=1_700_000_000 * 10**9,
        modified_ns=1_700_000_001 * 10**9,
        transferred_ns=0,
        transient_error_count=4,
        files=[
            JobFile("http://h/a", "/tmp/a", bytes_total=100, bytes_transferred=100, completed=True),
            JobFile("https://h/b", "/tmp/b", bytes_total=None, bytes_transferred=3),
        ],
    )


def test_to_cim_has_exactly_the_wmi_keys() -> None:
    assert set(sample_job().to_cim()) == JOB_KEYS


def test_all_properties_lists_every_cim_key() -> None:
    assert set(ALL_PROPERTIES) == JOB_KEYS
    assert len(ALL_PROPERTIES) == len(JOB_KEYS)


def test_to_cim_values() -> None:
    cim = sample_job().to_cim()
    assert cim["JobId"] == GUID
    assert cim["DisplayName"] == "nightly"
    assert cim["Description"] == "backup"
    assert cim["Priority"] == JobPriority.HIGH
    assert cim["MinimumRetryDelay"] == 60
    assert cim["NoProgressTimeout"] == 120
    assert cim["JobCreationTime"] == 133_444_736_000_000_000
    assert cim["JobLastModificationTime"] == 133_444_736_010_000_000
    assert cim["JobCompletionTime"] == 0
    assert cim["BytesTotal"] == BG_SIZE_UNKNOWN
    assert cim["BytesTransferred"] == 103
    assert cim["FilesTotal"] == 2
    assert cim["FilesTransferred"] == 1
    assert cim["TransientErrorCount"] == 4
    assert cim["State"] == JobState.TRANSIENT_ERROR
    assert cim["Owner"] == "alice"
    assert cim["JobType"] == JobType.UPLOAD
    assert cim["NotifyFlags"] == 0x12


@pytest.mark.parametrize("key", sorted(UINT_KEYS))
def test_to_cim_uint_values_are_plain_ints(key: str) -> None:
    value = sample_job().to_cim()[key]
    assert type(value) is int, f"{key} is {type(value).__name__}"
    assert value >= 0


@pytest.mark.parametrize("key", ["JobId", "DisplayName", "Description", "Owner"])
def test_to_cim_string_values_are_str(key: str) -> None:
    assert type(sample_job().to_cim()[key]) is str


def test_to_cim_files_are_dicts_in_order() -> None:
    files = sample_job().to_cim()["Files"]
    assert isinstance(files, list)
    assert files == [
        {
            "RemoteUrl": "http://h/a",
            "LocalFile": "/tmp/a",
            "BytesTotal": 100,
            "BytesTransferred": 100,
            "Completed": True,
            "RangeSupport": None,
        },
        {
            "RemoteUrl": "https://h/b",
            "LocalFile": "/tmp/b",
            "BytesTotal": BG_SIZE_UNKNOWN,
            "BytesTransferred": 3,
            "Completed": False,
            "RangeSupport": None,
        },
    ]
    for f in files:
        assert type(f["BytesTotal"]) is int
        assert type(f["BytesTransferred"]) is int
        assert type(f["Completed"]) is bool


def test_to_cim_of_a_new_job() -> None:
    cim = make_job().to_cim()
    assert cim["State"] == JobState.SUSPENDED
    assert cim["Priority"] == JobPriority.NORMAL
    assert cim["MinimumRetryDelay"] == 600
    assert cim["NoProgressTimeout"] == 1_209_600
    assert cim["NotifyFlags"] == 3
    assert cim["Files"] == []
    assert cim["BytesTotal"] == 0
    assert cim["JobCompletionTime"] == 0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:s3cret@host/p", "http://alice:***@host/p"),
        ("https://alice:p@ss:w@rd@host:8443/x?y=1", "https://alice:***@host:8443/x?y=1"),
        ("http://alice@host/p", "http://alice@host/p"),
        ("http://host/p@q:r", "http://host/p@q:r"),
        ("/abs/path", "/abs/path"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    from openbits.redaction import redact_url

    assert redact_url(url) == shown
    assert JobFile(remote_url=url, local_file="/x").to_cim()["RemoteUrl"] == shown


def test_notification_settings_in_the_instance_never_show_a_webhooks_secret() -> None:
    job = sample_job()
    assert job.to_cim()["NotifyCmdLine"] is None and job.to_cim()["NotifyUrl"] is None
    job.notify_program, job.notify_parameters = "/usr/bin/logger", "logger -t bits done"
    job.notify_url = "https://user:pw@hooks.example:8443/services/T0/B1/SECRET?x=1"
    cim = job.to_cim()
    assert cim["NotifyCmdLine"] == {"Program": "/usr/bin/logger", "Parameters": "logger -t bits done"}
    assert cim["NotifyUrl"] == "https://hooks.example:8443/***"
    assert redact_webhook("http://127.0.0.1:9") == "http://127.0.0.1:9"
    assert redact_webhook("no scheme") == "***"


def test_the_enums_print_their_names_and_serialise_their_numbers() -> None:
    """print(job.state) shows TRANSFERRED (issue 12); the API, the store and :d keep numbers."""
    for member in (JobState.TRANSFERRED, JobPriority.HIGH, JobType.UPLOAD_REPLY, ErrorContext.LOCAL_FILE):
        assert str(member) == f"{member}" == member.name
        assert int(member) == member.value and f"{member:d}" == str(member.value)
    assert str(SetJobStateCode.RESUME) == "RESUME" and str(ProxyUsage.NO_PROXY) == "NO_PROXY"
    assert json.dumps({"State": JobState.TRANSFERRED}) == '{"State": 6}'
    job = make_job(state=JobState.ERROR)
    assert json.loads(json.dumps(job.to_cim()))["State"] == JobState.ERROR


def test_max_connections_defaults_by_priority_and_the_policy_caps_it() -> None:
    job = make_job(priority=JobPriority.FOREGROUND)
    assert job.effective_max_connections() == 4 and job.to_cim()["MaxConnections"] == 4
    assert job.effective_max_connections(cap=2) == 2
    for background in (JobPriority.HIGH, JobPriority.NORMAL, JobPriority.LOW):
        job.priority = background
        assert job.effective_max_connections() == 1, "BITS: one file at a time"
    job.max_connections = 16
    assert job.effective_max_connections() == 16 and job.to_cim()["MaxConnections"] == 16
    assert job.effective_max_connections(cap=8) == 8, "the instance shows what was set; the cap applies"
    assert job.to_cim()["MaxConnections"] == 16


@given(st.lists(st.sampled_from(["", "a", "b.c", "é", " "]), min_size=1, max_size=4), st.booleans())
def test_a_files_directory_is_os_path_dirname_of_its_local_file(names: list[str], doubled: bool) -> None:
    """``JobFile.directory`` (its last slash) agrees with ``os.path.dirname`` on every
    LocalFile that AddFile accepts, a leading ``//`` included."""
    try:
        local = validate_local_file(("//" if doubled else "/") + "/".join(names))
    except BitsError:
        return  # (not a LocalFile: an empty name, say)
    assert JobFile("http://h/x", local).directory == os.path.dirname(local)


@pytest.mark.parametrize("local", ["/f", "//f", "/a/f", "//a/f", "/a/b/f"])
def test_a_files_directory_of_known_paths(local: str) -> None:
    assert JobFile("http://h/x", local).directory == os.path.dirname(local)
