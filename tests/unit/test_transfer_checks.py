"""Unit tests of openbits.transfer.checks: what an HTTP answer means for the file it continues.

No I/O: a response head is a status, headers and a length (``head`` below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from openbits.errors import BitsError, HResult, HttpStatusError
from openbits.model import BG_LENGTH_TO_EOF, ErrorContext, JobFile
from openbits.transfer import checks
from openbits.transfer.checks import RESTART, Accepted

ETAG = '"5f-abc"'
MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass
class Head:
    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    content_length: int | None = None
    reason: str | None = None


def head(status: int, length: int | None = None, **headers: str) -> Head:
    return Head(status, CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items()), length)


def file(**kw: object) -> JobFile:
    return JobFile("http://h/f", "/d/f", **kw)  # type: ignore[arg-type]


def invalid(call: object) -> BitsError:
    assert callable(call)
    with pytest.raises(BitsError) as info:
        call()
    assert info.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE
    assert info.value.context is ErrorContext.REMOTE_FILE
    return info.value


# -- accept -----------------------------------------------------------------------------------


def test_a_first_200_is_the_whole_file() -> None:
    assert checks.accept(head(200, 10), file(), 0) == Accepted(0, 10, whole=True)


def test_a_200_to_a_resumed_request_starts_the_file_again() -> None:
    assert checks.accept(head(200, None), file(etag=ETAG), 500) == Accepted(0, None, whole=True)


def test_a_206_resuming_the_same_file_goes_on_from_the_offset() -> None:
    resp = head(206, 500, Content_Range="bytes 500-999/1000", ETag=ETAG)
    assert checks.accept(resp, file(etag=ETAG, bytes_total=1000), 500) == Accepted(500, 1000)


@pytest.mark.parametrize(
    "content_range",
    [None, "bytes 400-999/1000", "bytes 500-998/1000", "bytes 500-999/*", "nonsense"],
)
def test_a_206_that_is_not_the_rest_of_the_file_is_invalid(content_range: str | None) -> None:
    headers = {} if content_range is None else {"Content_Range": content_range}
    invalid(lambda: checks.accept(head(206, None, **headers), file(), 500))


def test_a_206_of_another_size_or_content_is_invalid() -> None:
    resp = head(206, None, Content_Range="bytes 500-1099/1100")
    invalid(lambda: checks.accept(resp, file(bytes_total=1000), 500))
    resp = head(206, None, Content_Range="bytes 500-999/1000", ETag='"other"')
    invalid(lambda: checks.accept(resp, file(etag=ETAG), 500))
    resp = head(206, 400, Content_Range="bytes 500-999/1000")
    invalid(lambda: checks.accept(resp, file(), 500))  # Content-Length disagrees


def test_a_206_without_a_range_asked_is_invalid() -> None:
    invalid(lambda: checks.accept(head(206, 10, Content_Range="bytes 0-9/10"), file(), 0))


def test_a_416_at_the_end_of_the_file_means_every_byte_is_here() -> None:
    resp = head(416, None, Content_Range="bytes */1000")
    assert checks.accept(resp, file(), 1000) == Accepted(1000, 1000)


def test_a_416_for_a_file_that_shrank_restarts_it() -> None:
    assert checks.accept(head(416, None, Content_Range="bytes */700"), file(), 1000) is RESTART
    assert checks.accept(head(416), file(), 1000) is RESTART


def test_other_statuses_are_http_errors_transient_as_spec_says() -> None:
    with pytest.raises(BitsError) as info:
        checks.accept(head(404), file(), 0)
    assert info.value.hresult == HResult.BG_E_HTTP_ERROR_404
    with pytest.raises(HttpStatusError) as transient:
        checks.accept(head(503, None, Retry_After="7"), file(), 0)
    assert transient.value.retry_after_s == 7.0


# -- validators and range support -------------------------------------------------------------


def test_if_range_prefers_a_strong_etag_over_last_modified() -> None:
    assert checks.if_range(file(etag=ETAG, last_modified=MODIFIED)) == ETAG
    assert checks.if_range(file(etag='W/"weak"', last_modified=MODIFIED)) == MODIFIED
    assert checks.if_range(file()) is None


def test_same_content_compares_the_etag_else_last_modified() -> None:
    assert checks.same_content(head(200, None, ETag=ETAG), file(etag=ETAG))
    assert not checks.same_content(head(200, None, ETag='"new"'), file(etag=ETAG))
    assert checks.same_content(head(200, None, Last_Modified=MODIFIED), file(last_modified=MODIFIED))
    assert not checks.same_content(head(200), file(last_modified=MODIFIED))


def test_check_same_content_refuses_a_part_of_a_changed_file() -> None:
    checks.check_same_content(head(206, None, ETag=ETAG), file(etag=ETAG))
    invalid(
        lambda: checks.check_same_content(head(206, None, Last_Modified="x"), file(last_modified=MODIFIED))
    )


@pytest.mark.parametrize(
    ("resp", "offset", "expected"),
    [
        (head(206, 5), 5, True),
        (head(200, 10, ETag=ETAG), 5, False),  # same content, whole: Range ignored
        (head(200, None), 0, False),  # no length
        (head(200, 10, Accept_Ranges="none"), 0, False),
        (head(200, 10, Accept_Ranges="bytes"), 0, True),
        (head(200, 10), 0, None),
    ],
)
def test_range_support(resp: Head, offset: int, expected: bool | None) -> None:
    assert checks.range_support(resp, file(etag=ETAG), offset) is expected


# -- ranges -----------------------------------------------------------------------------------


def test_piece_end_is_the_last_byte_asked_for() -> None:
    resp = head(206, None, Content_Range="bytes 10-19/100")
    assert checks.piece_end(resp, "bytes=10-19", 10, 5, 15) == 19
    resp = head(206, None, Content_Range="bytes 10-99/100")
    assert checks.piece_end(resp, "bytes=10-", 10, 10, BG_LENGTH_TO_EOF) == 99


def test_piece_end_refuses_another_piece() -> None:
    invalid(lambda: checks.piece_end(head(206, None, Content_Range="bytes 11-19/100"), "r", 10, 10, 10))
    invalid(lambda: checks.piece_end(head(206, None, Content_Range="bytes 10-18/100"), "r", 10, 10, 10))
    invalid(lambda: checks.piece_end(head(206, None, Content_Range="bytes 10-19/*"), "r", 10, 10, 10))


def test_a_range_past_the_end_of_the_file_is_an_invalid_range() -> None:
    with pytest.raises(BitsError) as info:
        checks.piece_end(head(206, None, Content_Range="bytes 90-99/100"), "r", 90, 90, 20)
    assert info.value.hresult == HResult.BG_E_INVALID_RANGE


def test_range_refused() -> None:
    assert checks.range_refused(head(416), 7).hresult == HResult.BG_E_INVALID_RANGE
    assert checks.range_refused(head(500), 7).hresult == HResult.BG_E_HTTP_ERROR_500


def test_header_text_never_keeps_set_cookie_and_is_bounded() -> None:
    resp = head(200, None, ETag=ETAG, Set_Cookie="session=secret")
    assert checks.header_text(resp) == f"ETag: {ETAG}\r\n"
    big = head(200, None, X_Big="x" * 40_000)
    assert len(checks.header_text(big)) == checks.RESPONSE_HEADERS_MAX
