"""The upload server's sans-I/O parts: packets, ranges, session ids, Acks, settings, URL paths."""

from __future__ import annotations

import pytest

from openbits.uploadserver import protocol
from openbits.uploadserver.config import ServerSettings
from openbits.uploadserver.paths import parse_target
from openbits.uploadserver.protocol import Packet, Range, UploadFailure


@pytest.mark.parametrize("value", ["Create-Session", "CREATE-SESSION", "create-session", " Create-Session "])
def test_packet_types_match_without_case(value: str) -> None:
    assert protocol.packet_type({"BITS-Packet-Type": value}) is Packet.CREATE_SESSION


def test_unknown_packet_is_400() -> None:
    with pytest.raises(UploadFailure) as e:
        protocol.packet_type({"BITS-Packet-Type": "Ack"})
    assert (e.value.status, e.value.hresult, e.value.context) == (400, 0x80070057, 0x5)


@pytest.mark.parametrize(
    "offered",
    [
        "{7df0354d-249b-430f-820d-3d2a9bef4931}",
        "{00000000-0000-0000-0000-000000000000} {7DF0354D-249B-430F-820D-3D2A9BEF4931}",
        "{00000000-0000-0000-0000-000000000000},{7df0354d-249b-430f-820d-3d2a9bef4931}",
    ],
)
def test_protocol_chosen_from_a_list(offered: str) -> None:
    assert protocol.choose_protocol({"BITS-Supported-Protocols": offered}) == protocol.PROTOCOL_GUID


def test_session_ids_are_upper_case_guids_and_only_guids_are_looked_up() -> None:
    new = protocol.new_session_id()
    assert new == new.upper() and new.startswith("{") and len(new) == 38
    assert protocol.session_id({"BITS-Session-Id": new.lower()}) == new
    for bad in ["", "../../etc/passwd", "{not-a-guid}", new + "x"]:
        with pytest.raises(UploadFailure) as e:
            protocol.session_id({"BITS-Session-Id": bad})
        assert (e.value.status, e.value.hresult) == (500, 0x8020001F)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Content-Range": "bytes 0-99/300", "Content-Length": "100"}, Range(0, 99, 300)),
        ({"Content-Range": "Bytes 100-299/300"}, Range(100, 299, 300)),
        ({"Content-Length": "0"}, None),
        ({"Content-Range": "bytes */0", "Content-Length": "0"}, None),
        ({"Content-Range": "bytes 0-0/0", "Content-Length": "0"}, None),
        ({"Content-Range": "bytes 0--1/0", "Content-Length": "0"}, None),
    ],
)
def test_fragment_ranges(headers: dict[str, str], expected: Range | None) -> None:
    assert protocol.fragment_range(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Range": "bytes 5-1/10"},
        {"Content-Range": "bytes 0-10/10"},
        {"Content-Range": "bytes 0-9"},
        {"Content-Range": "items 0-9/10"},
        {"Content-Range": "bytes 0-9/10", "Content-Length": "5"},
        {"Content-Length": "5"},
        {"Content-Range": "bytes 0-9/10", "Content-Length": "x"},
    ],
)
def test_malformed_ranges_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(UploadFailure) as e:
        protocol.fragment_range(headers)
    assert (e.value.status, e.value.hresult, e.value.context) == (400, 0x80070057, 0x5)


def test_acks() -> None:
    created = protocol.create_session_ack("{S}", host_id="farm-7.example", fallback_timeout_s=60)
    assert created["BITS-Host-Id"] == "farm-7.example"
    assert created["BITS-Host-Id-Fallback-Timeout"] == "60"
    assert "BITS-Host-Id" not in protocol.create_session_ack("{S}")
    assert protocol.fragment_ack(213) == {"BITS-Packet-Type": "Ack", "BITS-Received-Content-Range": "213"}
    failure = UploadFailure(416, 0, "behind", offset=100)
    assert protocol.error_ack(failure) == {
        "BITS-Packet-Type": "Ack",
        "BITS-Error-Code": "0x00000000",
        "BITS-Error-Context": "0x5",
        "BITS-Received-Content-Range": "100",
    }
    app_error = UploadFailure(500, 0x801901F4, "application", context=protocol.CONTEXT_REMOTE_APPLICATION)
    assert protocol.error_ack(app_error)["BITS-Error-Context"] == "0x7"


@pytest.mark.parametrize(
    ("raw", "parts", "name"),
    [
        ("/a/b/c.bin", ("a", "b"), "c.bin"),
        ("c.bin", (), "c.bin"),
        ("/sp%20ace.bin", (), "sp ace.bin"),
    ],
)
def test_targets(raw: str, parts: tuple[str, ...], name: str) -> None:
    target = parse_target(raw)
    assert (target.parts, target.name) == (parts, name)


@pytest.mark.parametrize(
    "raw",
    [
        "/../x",
        "/.bits-0A.part",
        "/a/./x",
        "/a//x",
        "/%2e%2e/x",
        "/a%2fb",
        "/x%00",
        "/" + "n" * 256,
        "/a/",
        "/",
        "/x" * 2100,
    ],
)
def test_bad_targets_are_400(raw: str) -> None:
    with pytest.raises(UploadFailure) as e:
        parse_target(raw)
    assert e.value.status == 400


def test_settings_deepest_directory_wins() -> None:
    settings = ServerSettings.from_mapping(
        "/srv",
        "/state",
        {
            "max_upload_bytes": 10,
            "directories": {"a": {"allow_overwrite": True}, "a/b": {"max_upload_bytes": 5}},
        },
    )
    assert settings.for_directory(()).max_upload_bytes == 10
    assert settings.for_directory(("a", "x")).allow_overwrite is True
    deep = settings.for_directory(("a", "b", "c"))
    assert (deep.max_upload_bytes, deep.allow_overwrite) == (5, False)  # over the top level, not over "a"


@pytest.mark.parametrize(
    "data",
    [
        {"max_upload_bytes": -1},
        {"notification_type": "by-value"},
        {"notification_type": "sometimes", "notification_url": "http://x/"},
        {"file_mode": "999"},
        {"no_such_key": 1},
        {"directories": {"../x": {}}},
        {"max_sessions_per_client": 0},
        {"host_id": "a\r\nX-Injected: 1"},
        {"max_reply_bytes": 0},
        {"owner": "no-such-user-openbits"},
        {"group": "no-such-group-openbits"},
        {"public_base_url": "ftp://uploads.example"},
        {"public_base_url": "https://uploads.example/sub/"},
        {"public_base_url": "https://user:pw@uploads.example"},
        {"public_base_url": "https://uploads.example/?q=1"},
        {"public_base_url": "/relative"},
    ],
)
def test_bad_settings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings.from_mapping("/srv", "/state", data)


def test_public_base_url_is_kept_as_an_origin() -> None:
    settings = ServerSettings.from_mapping("/srv", "/state", {"public_base_url": "https://Up.Example:8443/"})
    assert settings.public_base_url == "https://up.example:8443"


def test_owner_and_group_by_number_or_name() -> None:
    settings = ServerSettings.from_mapping("/srv", "/state", {"owner": "0", "group": "root"})
    assert (settings.defaults.owner_uid, settings.defaults.group_gid) == (0, 0)
