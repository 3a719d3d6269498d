"""Unit tests of the pure helpers of openbits.service.params: URL/path validation, Params, enum_value."""

from __future__ import annotations

from typing import Any

import pytest

from openbits.errors import (
    BitsError,
    HResult,
    InvalidArgument,
    NotImplementedValue,
    StringTooLong,
)
from openbits.model import LOCAL_FILE_MAX, JobPriority, JobType, SetJobStateCode
from openbits.service.params import Params, enum_value, file_entry, validate_local_file, validate_remote_url

# -- validate_remote_url ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/file.iso",
        "https://example.com/file.iso",
        "HTTPS://EXAMPLE.COM/FILE",
        "http://example.com",
        "http://example.com:8080/a?b=c&d=e#frag",
        "http://example.com:/a",
        "http://user:pw@example.com/a",
        "http://127.0.0.1/a",
        "https://[::1]:8443/a",
        "http://example.com/%20space",
        "file:///tmp/source.bin",
        "file://localhost/tmp/source.bin",
        "/srv/data/source.bin",
        "/path with spaces/file",
    ],
)
def test_validate_remote_url_accepts(url: str) -> None:
    assert validate_remote_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/a",
        "smb://server/share/a",
        "gopher://example.com/",
        "mailto:a@example.com",
        "data:text/plain,hi",
        "relative/path",
        "./relative",
        "file.txt",
        "example.com/a",
        "C:\\Windows\\file.txt",
        "http://exa mple.com/a",
        "http://example.com/a b",
        " http://example.com/a",
        "http://example.com/a\n",
        "http://example.com/\ta",
        "http://example.com/\x00",
        "http://example.com/\x7f",
        "http://example.com:99999/a",
        "http://example.com:-1/a",
        "http://example.com:abc/a",
        "http://example.com:0/a",
        "http:///path",
        "http://",
        "https://:443/a",
        "http:/example.com/a",
        "http://[::1/a",
        "file://remotehost/tmp/a",
        "file:relative/a",
    ],
)
def test_validate_remote_url_rejects(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_remote_url(url)
    assert info.value.hresult == HResult.E_INVALIDARG


# -- validate_local_file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tmp/file", "/tmp/file"),
        ("/tmp/dir/file.iso", "/tmp/dir/file.iso"),
        ("/tmp//file", "/tmp/file"),
        ("/tmp/.hidden", "/tmp/.hidden"),
        ("/tmp/..file", "/tmp/..file"),
        ("/tmp/a b", "/tmp/a b"),
    ],
)
def test_validate_local_file_accepts(path: str, expected: str) -> None:
    assert validate_local_file(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "file",
        "tmp/file",
        "./file",
        "../file",
        "~/file",
        "/tmp/../etc/passwd",
        "/tmp/..",
        "/tmp/./file",
        "/tmp/.",
        "/tmp/dir/",
        "/",
    ],
)
def test_validate_local_file_rejects(path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_local_file(path)
    assert info.value.hresult == HResult.E_INVALIDARG


def test_validate_local_file_overlong_path() -> None:
    path = "/" + "/".join(["d" * 200] * 25)
    assert len(path) > LOCAL_FILE_MAX
    with pytest.raises(StringTooLong) as info:
        validate_local_file(path)
    assert info.value.hresult == HResult.BG_E_STRING_TOO_LONG


def test_validate_local_file_at_the_length_limit() -> None:
    path = ""
    while len(path) + 100 <= LOCAL_FILE_MAX - 10:
        path += "/" + "d" * 99
    path += "/" + "f" * (LOCAL_FILE_MAX - len(path) - 1)
    assert len(path) == LOCAL_FILE_MAX
    assert validate_local_file(path) == path


def test_validate_local_file_overlong_name() -> None:
    with pytest.raises(StringTooLong):
        validate_local_file("/tmp/" + "n" * 256)
    assert validate_local_file("/tmp/" + "n" * 255) == "/tmp/" + "n" * 255


def test_validate_local_file_name_limit_counts_bytes() -> None:
    with pytest.raises(StringTooLong):
        validate_local_file("/tmp/" + "é" * 128)  # 256 bytes in UTF-8


# -- Params ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["RemoteUrl", "remoteurl", "REMOTEURL", "remoteUrl"])
def test_params_names_are_case_insensitive(key: str) -> None:
    p = Params({key: "http://h/a"}, ("RemoteUrl", "LocalFile"))
    assert p.string("RemoteUrl", 100) == "http://h/a"
    assert "RemoteUrl" in p
    assert "LocalFile" not in p


def test_params_unknown_name_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="Bogus"):
        Params({"Bogus": 1}, ("RemoteUrl",))


@pytest.mark.parametrize("raw", [[1, 2], "text", 5, True], ids=["list", "str", "int", "bool"])
def test_params_body_must_be_an_object(raw: Any) -> None:
    with pytest.raises(InvalidArgument):
        Params(raw, ("RemoteUrl",))


def test_params_none_body_is_empty() -> None:
    p = Params(None, ("Priority",))
    assert p.uint("Priority", default=2) == 2
    assert "Priority" not in p


def test_params_null_value_is_absent() -> None:
    p = Params({"Priority": None}, ("Priority",))
    assert "Priority" not in p
    assert p.uint("Priority", default=7) == 7


# string


def test_params_string_ok_and_at_limit() -> None:
    p = Params({"DisplayName": "x" * 256}, ("DisplayName",))
    assert p.string("DisplayName", 256) == "x" * 256


def test_params_string_over_limit_is_string_too_long() -> None:
    p = Params({"DisplayName": "x" * 257}, ("DisplayName",))
    with pytest.raises(StringTooLong) as info:
        p.string("DisplayName", 256)
    assert info.value.hresult == HResult.BG_E_STRING_TOO_LONG


@pytest.mark.parametrize(
    "value", [1, 1.5, True, ["a"], {"a": 1}], ids=["int", "float", "bool", "list", "dict"]
)
def test_params_string_wrong_type(value: Any) -> None:
    p = Params({"DisplayName": value}, ("DisplayName",))
    with pytest.raises(InvalidArgument):
        p.string("DisplayName", 256)


def test_params_string_rejects_nul() -> None:
    p = Params({"DisplayName": "a\x00b"}, ("DisplayName",))
    with pytest.raises(InvalidArgument):
        p.string("DisplayName", 256)


def test_params_string_default() -> None:
    p = Params({}, ("DisplayName",))
    assert p.string("DisplayName", 256) is None
    assert p.string("DisplayName", 256, default="") == ""


# uint


@pytest.mark.parametrize("value", [0, 1, 600, 0xFFFFFFFF])
def test_params_uint_ok(value: int) -> None:
    assert Params({"N": value}, ("N",)).uint("N") == value


@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
def test_params_uint_bool_is_not_an_int(value: bool) -> None:
    with pytest.raises(InvalidArgument):
        Params({"N": value}, ("N",)).uint("N")


@pytest.mark.parametrize(
    "value", [1.0, 1.5, "5", [5], {"n": 5}], ids=["float-int", "float", "str", "list", "dict"]
)
def test_params_uint_wrong_type(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        Params({"N": value}, ("N",)).uint("N")


@pytest.mark.parametrize("value", [-1, -(2**40)])
def test_params_uint_negative(value: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        Params({"N": value}, ("N",)).uint("N")
    assert info.value.hresult == HResult.E_INVALIDARG


def test_params_uint_over_uint32() -> None:
    with pytest.raises(InvalidArgument):
        Params({"N": 0x1_0000_0000}, ("N",)).uint("N")


def test_params_uint_custom_maximum() -> None:
    p = Params({"N": 11}, ("N",))
    with pytest.raises(InvalidArgument):
        p.uint("N", maximum=10)
    assert p.uint("N", maximum=11) == 11


# boolean


@pytest.mark.parametrize("value", [True, False])
def test_params_boolean_ok(value: bool) -> None:
    assert Params({"Suspend": value}, ("Suspend",)).boolean("Suspend", default=not value) is value


@pytest.mark.parametrize(
    "value", [0, 1, "true", "false", None], ids=["0", "1", "str-true", "str-false", "null"]
)
def test_params_boolean_wrong_type_or_default(value: Any) -> None:
    p = Params({"Suspend": value}, ("Suspend",))
    if value is None:
        assert p.boolean("Suspend", default=True) is True
    else:
        with pytest.raises(InvalidArgument):
            p.boolean("Suspend", default=False)


# -- enum_value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enum", "value", "expected"),
    [
        (JobPriority, 0, JobPriority.FOREGROUND),
        (JobPriority, 3, JobPriority.LOW),
        (JobType, 2, JobType.UPLOAD_REPLY),
        (SetJobStateCode, 3, SetJobStateCode.SUSPEND),
    ],
)
def test_enum_value_ok(enum: type[Any], value: int, expected: Any) -> None:
    assert enum_value(enum, "x", value) is expected


@pytest.mark.parametrize(
    ("enum", "value"),
    [(JobPriority, 4), (JobPriority, 9), (JobType, 3), (SetJobStateCode, 7), (SetJobStateCode, 0xFFFFFFFF)],
)
def test_enum_value_out_of_range_is_e_notimpl(enum: type[Any], value: int) -> None:
    with pytest.raises(NotImplementedValue) as info:
        enum_value(enum, "x", value)
    assert info.value.hresult == 0x80004001


def test_the_origins_found_valid_are_kept_by_the_caller_not_the_module() -> None:
    seen: set[str] = set()
    assert validate_remote_url("http://h:81/a", seen) == "http://h:81/a"
    assert validate_remote_url("http://h:81/b", seen) == "http://h:81/b"
    assert seen == {"http://h:81"}
    validate_remote_url("http://other/a")  # none given: nothing is kept anywhere
    assert seen == {"http://h:81"}
    with pytest.raises(InvalidArgument):
        validate_remote_url("http://h:0/a", seen)


# -- file_entry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"RemoteUrl": "http://h/a", "LocalFile": "/t/a"},
        {"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "Digest": None},
        {"remoteurl": "http://h/a", "LOCALFILE": "/t/a"},
    ],
)
def test_file_entry_takes_plain_entries(raw: dict[str, Any]) -> None:
    assert file_entry(raw, "AddFileSet") == ("http://h/a", "/t/a", None)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"RemoteUrl": "http://h/a"}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "LocalFile": None}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "LocalFile": 7}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "LocalFile": "/t/\x00"}, HResult.E_INVALIDARG),
        (
            {"RemoteUrl": "http://h/a", "LocalFile": "/t/" + "a" * LOCAL_FILE_MAX},
            HResult.BG_E_STRING_TOO_LONG,
        ),
        ({"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "Other": 1}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "Digest": "sha256:xyz"}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "LocalFile": "/t/a", "Digest": 5}, HResult.E_INVALIDARG),
        ({"RemoteUrl": "http://h/a", "remoteurl": "http://h/b"}, HResult.E_INVALIDARG),
        (["http://h/a", "/t/a"], HResult.E_INVALIDARG),
    ],
)
def test_file_entry_refuses_what_params_refuses(raw: Any, code: HResult) -> None:
    with pytest.raises(BitsError) as e:
        file_entry(raw, "AddFileSet")
    assert e.value.hresult == code
