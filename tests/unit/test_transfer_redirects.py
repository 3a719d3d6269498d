"""Unit tests of openbits.transfer.redirects: whether and where a redirect is followed."""

from __future__ import annotations

import pytest
import yarl

from openbits.errors import BitsError, HResult
from openbits.model import ErrorContext, SecurityFlags
from openbits.transfer.redirects import REDIRECT_STATUSES, next_url, reported

SILENT = 0  # REDIRECT_POLICY_ALLOW_SILENT
REPORT = int(SecurityFlags.REDIRECT_POLICY_ALLOW_REPORT)
DISALLOW = int(SecurityFlags.REDIRECT_POLICY_DISALLOW)
HTTPS_TO_HTTP = int(SecurityFlags.REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP)


def follow(status: int, location: str | None, url: str = "http://a/x/f", flags: int = SILENT) -> str | None:
    return next_url(status, location, yarl.URL(url), url, flags)


def refused(status: int, location: str, url: str = "http://a/x/f", flags: int = SILENT) -> BitsError:
    with pytest.raises(BitsError) as info:
        follow(status, location, url, flags)
    return info.value


@pytest.mark.parametrize("status", sorted(REDIRECT_STATUSES))
def test_a_redirect_is_followed_relative_to_the_url_that_answered(status: int) -> None:
    assert follow(status, "../y/g") == "http://a/y/g"
    assert follow(status, "https://b/z") == "https://b/z"


@pytest.mark.parametrize("status", [200, 206, 304, 404])
def test_other_statuses_are_the_answer(status: int) -> None:
    assert follow(status, "http://b/") is None


def test_a_redirect_without_location_is_the_answer() -> None:
    assert follow(302, None) is None
    assert follow(302, "") is None


def test_disallow_refuses_every_redirect_with_its_status() -> None:
    err = refused(301, "http://b/", flags=DISALLOW)
    assert err.hresult == HResult.BG_E_HTTP_ERROR_301
    assert err.context is ErrorContext.REMOTE_FILE


def test_https_to_http_only_when_allowed() -> None:
    assert refused(302, "http://b/", url="https://a/f").hresult == HResult.BG_E_HTTP_ERROR_302
    assert follow(302, "http://b/", url="https://a/f", flags=SILENT | HTTPS_TO_HTTP) == "http://b/"


def test_only_http_and_https_targets() -> None:
    assert refused(307, "ftp://b/f").hresult == HResult.BG_E_HTTP_ERROR_307
    assert refused(307, "file:///etc/passwd").hresult == HResult.BG_E_HTTP_ERROR_307


def test_a_malformed_location_is_an_invalid_server_response() -> None:
    err = refused(302, "http://[::1")
    assert err.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE


def test_only_allow_report_reports_the_final_url() -> None:
    assert reported(REPORT)
    assert reported(REPORT | HTTPS_TO_HTTP)
    assert not reported(SILENT)
    assert not reported(DISALLOW)
