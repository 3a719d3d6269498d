"""Unit tests of the pure parsers of openbits.transfer.http."""

from __future__ import annotations

import math
import time

import pytest

from openbits.errors import HResult, HttpStatusError, TransferError
from openbits.model import ErrorContext
from openbits.transfer import http
from openbits.transfer.http import (
    invalid_response,
    parse_content_range,
    parse_retry_after,
    parse_unsatisfied_range,
    status_error,
)

# -- Content-Range ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/100", (0, 99, 100)),
        ("bytes 100-199/1000", (100, 199, 1000)),
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 5-5/*", (5, 5, None)),
        ("bytes 0-99/*", (0, 99, None)),
        ("Bytes 1-2/3", (1, 2, 3)),
        ("  bytes 1-2/3  ", (1, 2, 3)),
        ("bytes 0-1099511627775/1099511627776", (0, 2**40 - 1, 2**40)),
    ],
)
def test_parse_content_range_valid(value: str, expected: tuple[int, int, int | None]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes 5-4/100",  # end < start
        "bytes 0-100/100",  # end == total
        "bytes 0-200/100",  # end > total
        "bytes */100",  # unsatisfied-range form
        "bytes 0-99",
        "bytes 0-/100",
        "bytes -5/100",
        "bytes -1-5/100",
        "bytes 0-99/-1",
        "bytes 0x0-0x10/100",
        "items 0-99/100",
        "0-99/100",
        "bytes=0-99/100",
        "bytes 0-99/100, 200-299/100",
        "bytes 0-99/100 trailing",
        "garbage",
    ],
)
def test_parse_content_range_garbage_is_none(value: str | None) -> None:
    assert parse_content_range(value) is None


def test_parse_content_range_rejects_non_ascii_digits() -> None:
    assert parse_content_range("bytes \u0660-\u0669/\u0661\u0660") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bytes */1234", 1234), ("bytes */0", 0), ("BYTES */5", 5), (" bytes */7 ", 7)],
)
def test_parse_unsatisfied_range(value: str, expected: int) -> None:
    assert parse_unsatisfied_range(value) == expected


@pytest.mark.parametrize("value", [None, "", "bytes 0-1/2", "bytes */", "bytes */*", "bytes */-1", "*/5"])
def test_parse_unsatisfied_range_garbage_is_none(value: str | None) -> None:
    assert parse_unsatisfied_range(value) is None


# -- Retry-After -----------------------------------------------------------------------------

FIXED_NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: FIXED_NOW)


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("120", 120.0), (" 30 ", 30.0), ("007", 7.0)])
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.usefixtures("frozen_time")
def test_parse_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT") == pytest.approx(120.0)


@pytest.mark.usefixtures("frozen_time")
def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "12abc", "Wed, 99 Foo 2015"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parse_retry_after_superscript_digit_is_none() -> None:
    assert parse_retry_after("\u00b2") is None


@pytest.mark.parametrize("value", ["9" * 400, "99999999999"], ids=["inf", "1e11-seconds"])
def test_parse_retry_after_huge_value_is_bounded(value: str) -> None:
    delay = parse_retry_after(value)
    assert delay is not None
    assert math.isfinite(delay)
    assert time.time_ns() + int(delay * 10**9) < 2**63


# -- status_error ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_status_error_transient(status: int) -> None:
    err = status_error(status, "Reason", None)
    assert isinstance(err, HttpStatusError)
    assert err.transient is True
    assert err.hresult == 0x80190000 + status
    assert err.context is ErrorContext.REMOTE_FILE
    assert int(err.context) == 5
    assert err.retry_after_s is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 407, 410, 416, 501, 505, 200, 302])
def test_status_error_fatal(status: int) -> None:
    err = status_error(status, None, "120")
    assert isinstance(err, HttpStatusError)
    assert err.transient is False
    assert err.hresult == 0x80190000 + status
    assert err.context is ErrorContext.REMOTE_FILE


def test_status_error_404_name_and_message() -> None:
    err = status_error(404, "Not Found", None)
    assert err.hresult == 0x80190194
    assert err.name == "BG_E_HTTP_ERROR_404"
    assert err.message == "the server answered HTTP 404 Not Found"


def test_status_error_message_without_reason() -> None:
    assert status_error(503, None, None).message == "the server answered HTTP 503"


def test_status_error_carries_retry_after_seconds() -> None:
    assert status_error(503, "Service Unavailable", "120").retry_after_s == 120.0
    assert status_error(429, "Too Many Requests", "7").retry_after_s == 7.0


@pytest.mark.usefixtures("frozen_time")
def test_status_error_carries_retry_after_date() -> None:
    err = status_error(503, None, "Wed, 21 Oct 2015 07:29:00 GMT")
    assert err.retry_after_s == pytest.approx(60.0)


def test_status_error_ignores_bad_retry_after() -> None:
    assert status_error(503, None, "later").retry_after_s is None


def test_invalid_response() -> None:
    err = invalid_response("Content-Range does not match the request")
    assert isinstance(err, TransferError)
    assert not err.transient
    assert err.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE
    assert err.context is ErrorContext.REMOTE_FILE


def test_user_agent_names_openbits() -> None:
    assert http.USER_AGENT.startswith("openbits/")
