"""Unit tests of openbits.errors: HRESULT values, names, HTTP mapping and the BitsError tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openbits import errors
from openbits.errors import (
    MESSAGES,
    TRANSIENT_HTTP_STATUSES,
    AccessDenied,
    BitsError,
    CallError,
    CertificateNotFound,
    ClientCertificateUnavailable,
    ConnectError,
    DigestMismatch,
    DiskFull,
    EmptyJob,
    ErrorInformationUnavailable,
    FileNotInJob,
    HResult,
    HttpStatusError,
    InternalError,
    InvalidArgument,
    InvalidRange,
    InvalidResponse,
    InvalidState,
    InvalidUrl,
    LimitExceeded,
    LocalFileError,
    NameResolutionError,
    NetworkError,
    NoPrivateKey,
    NoRoomForWork,
    NotFound,
    NotImplementedValue,
    OverlappingRanges,
    OwnerUnknown,
    PathNotFound,
    RangeNotSupported,
    RangeOutsideFile,
    ReadOnlyProperty,
    RemoteFileError,
    ReplyTooLarge,
    RequestTooLarge,
    SourceFileError,
    SourceUnavailable,
    StoreFull,
    StoreWriteFailed,
    StringTooLong,
    Timeout,
    TLSError,
    TooManyFiles,
    TooManyFilesInJob,
    TooManyJobsPerMachine,
    TooManyJobsPerUser,
    TooManyRangesInFile,
    TransferError,
    UnknownNetworkError,
    UntrustedCertificate,
    api_http_status,
    hresult_message,
    hresult_name,
    http_status_hresult,
    is_success,
)
from openbits.model import ErrorContext

#: the shared reference beside the checkout (CI lays a copy there), else the workplace's
_SPEC_PLACES = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "bits-spec.md",
    Path("/work/shared/reference/bits-spec.md"),
)
BITS_SPEC = next((p for p in _SPEC_PLACES if p.exists()), _SPEC_PLACES[-1])
# A table row: | 0x80200001 | BG_E_NOT_FOUND | ...  (cells may be wrapped in **bold**)
_ROW = re.compile(r"^\|\s*\**(0x[0-9A-Fa-f]{8})\**\s*\|\s*\**([A-Z][A-Z0-9_]+)\**")
# The HTTP statuses that have a named BG_E_HTTP_ERROR_xxx constant (bits-spec §2.12).
NAMED_HTTP_STATUSES = [
    *(100, 101, 200, 201, 202, 203, 204, 205, 206),
    *(300, 301, 302, 303, 304, 305, 307),
    *range(400, 418),
    449,
    *range(500, 506),
]


def spec_hresults() -> list[tuple[int, str]]:
    """(value, name) for every row of the tables of bits-spec §2.11."""
    text = BITS_SPEC.read_text(encoding="utf-8")
    start = text.index("### 2.11")
    end = text.index("### 2.12", start)
    rows = []
    for line in text[start:end].splitlines():
        m = _ROW.match(line)
        if m:
            rows.append((int(m.group(1), 16), m.group(2)))
    return rows


@pytest.mark.skipif(not BITS_SPEC.exists(), reason="bits-spec.md is not available")
def test_every_hresult_of_bits_spec_2_11_is_present_with_its_value() -> None:
    rows = spec_hresults()
    assert len(rows) > 100, "the table parser found too few rows"
    missing = [name for _, name in rows if name not in HResult.__members__]
    assert not missing, f"missing HRESULTs: {missing}"
    wrong = [(name, f"0x{value:08X}", HResult[name].hex) for value, name in rows if HResult[name] != value]
    assert not wrong, f"wrong values: {wrong}"


@pytest.mark.skipif(not BITS_SPEC.exists(), reason="bits-spec.md is not available")
def test_every_bits_spec_hresult_has_a_message() -> None:
    for value, name in spec_hresults():
        assert value in MESSAGES, name
        assert MESSAGES[value], name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S_OK", 0x00000000),
        ("E_FAIL", 0x80004005),
        ("E_INVALIDARG", 0x80070057),
        ("E_ACCESSDENIED", 0x80070005),
        ("E_NOTIMPL", 0x80004001),
        ("HRESULT_PATH_NOT_FOUND", 0x80070003),
        ("HRESULT_DISK_FULL", 0x80070070),
        ("WBEM_E_INVALID_QUERY", 0x80041017),
        ("BG_E_NOT_FOUND", 0x80200001),
        ("BG_E_INVALID_STATE", 0x80200002),
        ("BG_E_EMPTY", 0x80200003),
        ("BG_E_ERROR_INFORMATION_UNAVAILABLE", 0x8020000F),
        ("BG_E_STRING_TOO_LONG", 0x80200021),
        ("BG_E_READ_ONLY_PROPERTY", 0x80200058),
        ("BG_E_INVALID_SERVER_RESPONSE", 0x8020001B),
        ("BG_S_PARTIAL_COMPLETE", 0x00200017),
    ],
)
def test_well_known_hresult_values(name: str, value: int) -> None:
    assert HResult[name] == value


def test_hresult_values_are_unique() -> None:
    values = [int(m) for m in HResult.__members__.values()]
    assert len(values) == len(set(values)), "two HResult names share a value (an alias)"


def test_every_hresult_has_a_message() -> None:
    assert {int(h) for h in HResult} == set(MESSAGES)


def test_hresult_hex_property() -> None:
    assert HResult.BG_E_NOT_FOUND.hex == "0x80200001"
    assert HResult.S_OK.hex == "0x00000000"


# -- HTTP statuses (bits-spec §2.12) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "hresult"),
    [(404, 0x80190194), (416, 0x801901A0), (503, 0x801901F7), (100, 0x80190064), (429, 0x801901AD)],
)
def test_http_status_hresult(status: int, hresult: int) -> None:
    assert http_status_hresult(status) == hresult


@pytest.mark.parametrize("status", NAMED_HTTP_STATUSES)
def test_named_http_error_constants(status: int) -> None:
    member = HResult[f"BG_E_HTTP_ERROR_{status}"]
    assert member == 0x80190000 + status
    assert hresult_name(member) == f"BG_E_HTTP_ERROR_{status}"


@pytest.mark.parametrize("status", [306, 418, 429, 451, 506, 599])
def test_hresult_name_of_unnamed_http_statuses(status: int) -> None:
    assert hresult_name(http_status_hresult(status)) == f"BG_E_HTTP_ERROR_{status}"
    assert str(status) in hresult_message(http_status_hresult(status))


def test_hresult_name_of_unknown_code_is_hex() -> None:
    assert hresult_name(0x8000FFFF) == "0x8000FFFF"
    assert hresult_name(0x12345678) == "0x12345678"


def test_hresult_name_accepts_signed_values() -> None:
    # 0x80200002 read as a signed 32-bit HRESULT
    assert hresult_name(0x80200002 - 2**32) == "BG_E_INVALID_STATE"


def test_hresult_message_of_unknown_code() -> None:
    assert hresult_message(0x8000FFFF) == "unknown error"
    assert hresult_message(HResult.BG_E_NOT_FOUND) == "job not found"


@pytest.mark.parametrize(
    ("code", "success"),
    [(0, True), (HResult.BG_S_PARTIAL_COMPLETE, True), (HResult.E_FAIL, False), (0x80190194, False)],
)
def test_is_success(code: int, success: bool) -> None:
    assert is_success(code) is success


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 506, 507, 599])
def test_transient_http_statuses(status: int) -> None:
    assert status in TRANSIENT_HTTP_STATUSES


@pytest.mark.parametrize(
    "status", [200, 206, 301, 304, 400, 401, 403, 404, 407, 410, 411, 416, 428, 430, 501, 505, 600]
)
def test_fatal_http_statuses(status: int) -> None:
    assert status not in TRANSIENT_HTTP_STATUSES


def test_transient_http_statuses_exact_set() -> None:
    assert frozenset({408, 409, 429, *range(500, 600)} - {501, 505}) == TRANSIENT_HTTP_STATUSES


# -- API status mapping (SPEC §6) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("hresult", "status"),
    [
        (HResult.E_INVALIDARG, 400),
        (HResult.E_NOTIMPL, 400),
        (HResult.BG_E_STRING_TOO_LONG, 400),
        (HResult.WBEM_E_INVALID_QUERY, 400),
        (HResult.HRESULT_PATH_NOT_FOUND, 400),
        (HResult.BG_E_READ_ONLY_PROPERTY, 400),
        (HResult.E_ACCESSDENIED, 403),
        (HResult.BG_E_NOT_FOUND, 404),
        (HResult.BG_E_INVALID_STATE, 409),
        (HResult.BG_E_EMPTY, 409),
        (HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE, 409),
        (HResult.BG_E_TOO_MANY_JOBS_PER_USER, 409),
        (HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE, 409),
        (HResult.BG_E_TOO_MANY_FILES_IN_JOB, 409),
        (HResult.BG_E_TOO_MANY_FILES, 409),
        (HResult.HRESULT_REQUEST_TOO_LARGE, 413),
        (HResult.E_FAIL, 500),
    ],
    ids=lambda v: v.name if isinstance(v, HResult) else str(v),
)
def test_api_http_status(hresult: HResult, status: int) -> None:
    assert api_http_status(hresult) == status


def test_api_http_status_accepts_signed_values() -> None:
    assert api_http_status(int(HResult.BG_E_NOT_FOUND) - 2**32) == 404


# -- BitsError -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hresult", "cls"),
    [
        (HResult.E_INVALIDARG, InvalidArgument),
        (HResult.E_NOTIMPL, NotImplementedValue),
        (HResult.E_ACCESSDENIED, AccessDenied),
        (HResult.CRYPT_E_NOT_FOUND, CertificateNotFound),
        (HResult.NTE_NO_KEY, NoPrivateKey),
        (HResult.HRESULT_PATH_NOT_FOUND, PathNotFound),
        (HResult.BG_E_STRING_TOO_LONG, StringTooLong),
        (HResult.BG_E_READ_ONLY_PROPERTY, ReadOnlyProperty),
        (HResult.BG_E_NOT_FOUND, NotFound),
        (HResult.BG_E_INVALID_STATE, InvalidState),
        (HResult.BG_E_EMPTY, EmptyJob),
        (HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE, ErrorInformationUnavailable),
        (HResult.BG_E_TOO_MANY_JOBS_PER_USER, LimitExceeded),
        (HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE, LimitExceeded),
        (HResult.BG_E_TOO_MANY_FILES_IN_JOB, LimitExceeded),
        (HResult.HRESULT_REQUEST_TOO_LARGE, RequestTooLarge),
        (HResult.BG_E_TOO_LARGE, ReplyTooLarge),
        (HResult.BG_E_TOO_MANY_FILES, LimitExceeded),
    ],
    ids=lambda v: v.name if isinstance(v, HResult) else v.__name__,
)
def test_from_hresult_rebuilds_the_subclass(hresult: HResult, cls: type[BitsError]) -> None:
    err = BitsError.from_hresult(int(hresult), "boom", ErrorContext.LOCAL_FILE)
    assert type(err) is cls
    assert err.hresult == hresult
    assert err.name == hresult.name
    assert err.message == "boom"
    assert err.context is ErrorContext.LOCAL_FILE


def test_from_hresult_of_unmapped_code_is_plain_bits_error() -> None:
    err = BitsError.from_hresult(0x80190194)
    assert type(err) is BitsError
    assert err.hresult == 0x80190194
    assert err.name == "BG_E_HTTP_ERROR_404"
    assert err.context is ErrorContext.NONE
    assert err.message == "the server returned HTTP status 404"


def test_from_hresult_accepts_signed_values() -> None:
    err = BitsError.from_hresult(int(HResult.BG_E_INVALID_STATE) - 2**32)
    assert type(err) is InvalidState
    assert err.hresult == 0x80200002


@pytest.mark.parametrize(
    ("cls", "hresult"),
    [
        (BitsError, HResult.E_FAIL),
        (InvalidArgument, HResult.E_INVALIDARG),
        (NotImplementedValue, HResult.E_NOTIMPL),
        (AccessDenied, HResult.E_ACCESSDENIED),
        (PathNotFound, HResult.HRESULT_PATH_NOT_FOUND),
        (StringTooLong, HResult.BG_E_STRING_TOO_LONG),
        (NotFound, HResult.BG_E_NOT_FOUND),
        (InvalidState, HResult.BG_E_INVALID_STATE),
        (EmptyJob, HResult.BG_E_EMPTY),
        (ErrorInformationUnavailable, HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE),
        (RequestTooLarge, HResult.HRESULT_REQUEST_TOO_LARGE),
    ],
    ids=lambda v: v.name if isinstance(v, HResult) else v.__name__,
)
def test_subclass_default_hresults(cls: type[BitsError], hresult: HResult) -> None:
    err = cls()
    assert err.hresult == hresult
    assert err.message == MESSAGES[hresult]
    assert err.context is ErrorContext.GENERAL_QUEUE_MANAGER
    assert not err.transient


def test_bits_error_str_and_hex() -> None:
    err = InvalidState("Resume is not allowed")
    assert err.hex == "0x80200002"
    assert str(err) == "0x80200002 BG_E_INVALID_STATE: Resume is not allowed"


def test_retry_after_is_carried() -> None:
    assert HttpStatusError(hresult=http_status_hresult(503), retry_after_s=12.5).retry_after_s == 12.5
    assert BitsError().retry_after_s is None


# -- the tree: every class's HRESULT, context, transience and API status ---------------------

GQM, TRANSPORT, REMOTE, LOCAL = (
    ErrorContext.GENERAL_QUEUE_MANAGER,
    ErrorContext.GENERAL_TRANSPORT,
    ErrorContext.REMOTE_FILE,
    ErrorContext.LOCAL_FILE,
)

#: (class, its family, HRESULT, context, transient, the API's HTTP status)
TREE: list[tuple[type[BitsError], type[BitsError], int, ErrorContext, bool, int]] = [
    (BitsError, BitsError, HResult.E_FAIL, GQM, False, 500),
    (CallError, BitsError, HResult.E_FAIL, GQM, False, 500),
    (InvalidArgument, CallError, HResult.E_INVALIDARG, GQM, False, 400),
    (InvalidRange, CallError, HResult.BG_E_INVALID_RANGE, GQM, False, 400),
    (OverlappingRanges, CallError, HResult.BG_E_OVERLAPPING_RANGES, GQM, False, 400),
    (NotImplementedValue, CallError, HResult.E_NOTIMPL, GQM, False, 400),
    (AccessDenied, CallError, HResult.E_ACCESSDENIED, GQM, False, 403),
    (PathNotFound, CallError, HResult.HRESULT_PATH_NOT_FOUND, GQM, False, 400),
    (StringTooLong, CallError, HResult.BG_E_STRING_TOO_LONG, GQM, False, 400),
    (ReadOnlyProperty, CallError, HResult.BG_E_READ_ONLY_PROPERTY, GQM, False, 400),
    (NotFound, CallError, HResult.BG_E_NOT_FOUND, GQM, False, 404),
    (FileNotInJob, CallError, HResult.BG_E_FILE_NOT_FOUND, GQM, False, 400),
    (InvalidState, CallError, HResult.BG_E_INVALID_STATE, GQM, False, 409),
    (EmptyJob, CallError, HResult.BG_E_EMPTY, GQM, False, 409),
    (ErrorInformationUnavailable, CallError, HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE, GQM, False, 409),
    (LimitExceeded, CallError, HResult.BG_E_TOO_MANY_JOBS_PER_USER, GQM, False, 409),
    (TooManyJobsPerUser, LimitExceeded, HResult.BG_E_TOO_MANY_JOBS_PER_USER, GQM, False, 409),
    (TooManyJobsPerMachine, LimitExceeded, HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE, GQM, False, 409),
    (TooManyFilesInJob, LimitExceeded, HResult.BG_E_TOO_MANY_FILES_IN_JOB, GQM, False, 409),
    (TooManyFiles, LimitExceeded, HResult.BG_E_TOO_MANY_FILES, GQM, False, 409),
    (TooManyRangesInFile, LimitExceeded, HResult.BG_E_TOO_MANY_RANGES_IN_FILE, GQM, False, 400),
    (RequestTooLarge, CallError, HResult.HRESULT_REQUEST_TOO_LARGE, GQM, False, 413),
    (ReplyTooLarge, CallError, HResult.BG_E_TOO_LARGE, GQM, False, 400),
    (NoRoomForWork, CallError, HResult.HRESULT_DISK_FULL, GQM, False, 507),
    (CertificateNotFound, CallError, HResult.CRYPT_E_NOT_FOUND, GQM, False, 400),
    (NoPrivateKey, CallError, HResult.NTE_NO_KEY, GQM, False, 400),
    (TransferError, BitsError, HResult.E_FAIL, GQM, False, 500),
    (OwnerUnknown, TransferError, HResult.E_ACCESSDENIED, GQM, False, 403),
    (NetworkError, TransferError, HResult.BG_E_CONNECTION_CLOSED, TRANSPORT, True, 400),
    (ConnectError, NetworkError, HResult.BG_E_CONNECT_FAILURE, TRANSPORT, True, 400),
    (NameResolutionError, NetworkError, HResult.BG_E_NAME_RESOLUTION_FAILURE, TRANSPORT, True, 400),
    (TLSError, NetworkError, HResult.BG_E_SECURE_CHANNEL_FAILURE, TRANSPORT, True, 400),
    (Timeout, NetworkError, HResult.BG_E_TIMEOUT, TRANSPORT, True, 400),
    (UnknownNetworkError, NetworkError, HResult.BG_E_UNKNOWN_ERROR, TRANSPORT, True, 400),
    (RemoteFileError, TransferError, HResult.BG_E_INVALID_SERVER_RESPONSE, REMOTE, False, 400),
    (InvalidResponse, RemoteFileError, HResult.BG_E_INVALID_SERVER_RESPONSE, REMOTE, False, 400),
    (DigestMismatch, RemoteFileError, HResult.BG_E_VALIDATION_FAILED, REMOTE, False, 400),
    (UntrustedCertificate, RemoteFileError, HResult.BG_E_TRUST_FAILURE, REMOTE, False, 400),
    (InvalidUrl, RemoteFileError, HResult.E_INVALIDARG, REMOTE, False, 400),
    (RangeNotSupported, RemoteFileError, HResult.BG_E_INSUFFICIENT_RANGE_SUPPORT, REMOTE, False, 400),
    (RangeOutsideFile, RemoteFileError, HResult.BG_E_INVALID_RANGE, REMOTE, False, 400),
    (SourceFileError, RemoteFileError, HResult.E_FAIL, REMOTE, False, 500),
    (SourceUnavailable, SourceFileError, HResult.E_FAIL, REMOTE, True, 500),
    (LocalFileError, TransferError, HResult.E_FAIL, LOCAL, False, 500),
    (DiskFull, LocalFileError, HResult.HRESULT_DISK_FULL, LOCAL, True, 507),
    (ClientCertificateUnavailable, TransferError, HResult.CRYPT_E_NOT_FOUND, TRANSPORT, False, 400),
    (InternalError, BitsError, HResult.E_FAIL, ErrorContext.UNKNOWN, False, 500),
    (StoreWriteFailed, InternalError, HResult.E_FAIL, GQM, True, 500),
    (StoreFull, StoreWriteFailed, HResult.HRESULT_DISK_FULL, GQM, True, 507),
]


@pytest.mark.parametrize(
    ("cls", "family", "hresult", "context", "transient", "status"),
    TREE,
    ids=lambda v: getattr(v, "__name__", "") or None,
)
def test_every_class_of_the_tree(
    cls: type[BitsError],
    family: type[BitsError],
    hresult: int,
    context: ErrorContext,
    transient: bool,
    status: int,
) -> None:
    err = cls("why")
    assert cls.__bases__ == (family,) or cls is BitsError
    assert (err.hresult, err.context, err.transient, err.message) == (hresult, context, transient, "why")
    assert type(err).transient is transient  # on the class, not chosen per instance
    assert api_http_status(err.hresult) == status


def test_the_tree_is_every_bits_error_of_the_module() -> None:
    every = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BitsError)}
    assert every == {row[0] for row in TREE} | {HttpStatusError}


def test_the_docstring_draws_every_class() -> None:
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__ or ""))
    assert drawn == {row[0].__name__ for row in TREE} - {BitsError.__name__} | {"HttpStatusError"}


@pytest.mark.parametrize("status", [*NAMED_HTTP_STATUSES, 429, 599])
def test_http_status_error_is_transient_as_spec_says(status: int) -> None:
    err = HttpStatusError("x", hresult=http_status_hresult(status))
    assert isinstance(err, RemoteFileError)
    assert err.context is REMOTE and err.hresult == http_status_hresult(status)
    assert err.transient is (status in TRANSIENT_HTTP_STATUSES)


def test_a_family_keeps_the_code_and_context_given() -> None:
    err = LocalFileError("x", hresult=HResult.E_ACCESSDENIED, context=REMOTE)
    assert (err.hresult, err.context, err.transient) == (HResult.E_ACCESSDENIED, REMOTE, False)
    assert DiskFull(context=REMOTE).transient is True


@pytest.mark.parametrize(
    "cls",
    [row[0] for row in TREE if row[0] in errors._BY_HRESULT.values() and row[0] is not LimitExceeded],
    ids=lambda c: c.__name__,
)
def test_from_hresult_round_trips_a_call_error(cls: type[BitsError]) -> None:
    sent = cls("why")
    back = BitsError.from_hresult(sent.hresult - 2**32, sent.message, sent.context)
    assert type(back) is cls
    assert (back.hresult, back.message, back.context) == (sent.hresult, "why", sent.context)


@pytest.mark.parametrize(
    "cls", [TooManyJobsPerUser, TooManyJobsPerMachine, TooManyFilesInJob, TooManyFiles, TooManyRangesInFile]
)
def test_from_hresult_rebuilds_a_limit_as_its_family(cls: type[BitsError]) -> None:
    back = BitsError.from_hresult(cls().hresult)
    assert type(back) is LimitExceeded and back.hresult == cls().hresult


@pytest.mark.parametrize("cls", [ConnectError, DiskFull, StoreFull, NoRoomForWork, InvalidResponse])
def test_from_hresult_of_a_transfer_or_disk_code_is_plain(cls: type[BitsError]) -> None:
    assert type(BitsError.from_hresult(cls().hresult)) is BitsError


def test_from_hresult_of_e_fail_is_an_internal_error() -> None:
    back = BitsError.from_hresult(HResult.E_FAIL, "boom")
    assert type(back) is InternalError and back.hex == "0x80004005" and back.message == "boom"


def test_every_description_reads_as_a_message() -> None:
    """GetError shows these when an error has no text of its own: none may be a note copied
    from the reference (cut off, or naming its sources)."""
    for code, text in MESSAGES.items():
        assert text.count("(") == text.count(")"), (hex(code), text)
        assert not re.search(r"MSG\d|§|→", text), (hex(code), text)
