"""Unit tests of openbits.transfer.uploadflow: the BITS upload protocol without I/O (what
to send next, what an Ack means, the fragment size)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from openbits.errors import BitsError, HResult, HttpStatusError
from openbits.model import UPLOAD_FRAGMENT_START_BYTES, ErrorContext, UploadState
from openbits.transfer.uploadflow import (
    FRAGMENT_MAX_BYTES,
    FRAGMENT_MIN_BYTES,
    PROTOCOL,
    Ack,
    Advance,
    FragmentSizer,
    Kind,
    NewSession,
    Opened,
    Packet,
    ServerError,
    Shrink,
    interpret,
    next_packet,
)

URL = "http://127.0.0.1:8080/up/file.bin"
MiB = 1024 * 1024


def ack(status: int, reason: str = "", **headers: str) -> Ack:
    return Ack(status, reason, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


def fragment(start: int, length: int, total: int) -> Packet:
    return Packet(Kind.FRAGMENT, start, length, total)


# -- next_packet ----------------------------------------------------------------------------


def test_a_run_starts_with_ping_then_creates_a_session() -> None:
    state = UploadState(source_size=10)
    assert next_packet(state, 0, 10, MiB, pinged=False, reply=False).kind is Kind.PING
    assert next_packet(state, 0, 10, MiB, pinged=True, reply=False).kind is Kind.CREATE_SESSION


def test_fragments_go_from_the_acknowledged_offset_at_the_fragment_size() -> None:
    state = UploadState(source_size=3 * MiB, session_id="{s}")
    assert next_packet(state, 0, 3 * MiB, MiB, pinged=True, reply=False) == fragment(0, MiB, 3 * MiB)
    last = next_packet(state, 2 * MiB + 5, 3 * MiB, MiB, pinged=True, reply=False)
    assert last == fragment(2 * MiB + 5, MiB - 5, 3 * MiB)
    assert last.content_range == f"bytes {2 * MiB + 5}-{3 * MiB - 1}/{3 * MiB}"


def test_an_empty_source_is_one_empty_fragment() -> None:
    state = UploadState(source_size=0, session_id="s")
    packet = next_packet(state, 0, 0, MiB, pinged=True, reply=False)
    assert packet == fragment(0, 0, 0)
    assert packet.content_range == "bytes */0"


@pytest.mark.parametrize("done", [False, True])
def test_every_byte_in_but_no_reply_named_sends_the_final_byte_again(done: bool) -> None:
    """(as after a crash between checkpoints; ``done``: a state an older version stored)"""
    state = UploadState(source_size=30, session_id="s", fragments_done=done)
    packet = next_packet(state, 30, 30, MiB, pinged=True, reply=True)
    assert packet == fragment(29, 1, 30) and packet.content_range == "bytes 29-29/30"
    empty = UploadState(source_size=0, session_id="s", fragments_done=done)
    assert next_packet(empty, 0, 0, MiB, pinged=True, reply=True).content_range == "bytes */0"


def test_after_the_fragments_the_reply_then_close_then_done() -> None:
    state = UploadState(source_size=1, session_id="s", fragments_done=True, reply_url="http://x/r")
    assert next_packet(state, 1, 1, MiB, pinged=True, reply=True).kind is Kind.FETCH_REPLY
    assert next_packet(state, 1, 1, MiB, pinged=True, reply=False).kind is Kind.CLOSE_SESSION
    state.reply_done = True
    assert next_packet(state, 1, 1, MiB, pinged=True, reply=True).kind is Kind.CLOSE_SESSION
    state.closed = True
    assert next_packet(state, 1, 1, MiB, pinged=False, reply=True).kind is Kind.DONE


# -- interpret ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_create_session_opens_the_session_the_server_names(status: int) -> None:
    outcome = interpret(
        Packet(Kind.CREATE_SESSION),
        ack(status, bits_session_id="opaque-ID 1", bits_protocol=PROTOCOL.upper(), bits_host_id="h2"),
        URL,
        reply=False,
    )
    assert outcome == Opened("opaque-ID 1", "h2")


def test_header_names_are_matched_case_insensitively_even_in_a_plain_dict() -> None:
    answer = Ack(200, "", {"bits-session-id": "{x}"})
    assert interpret(Packet(Kind.CREATE_SESSION), answer, URL, reply=False) == Opened("{x}", None)


def test_create_session_without_a_session_id_is_an_invalid_response() -> None:
    with pytest.raises(BitsError) as e:
        interpret(Packet(Kind.CREATE_SESSION), ack(200), URL, reply=False)
    assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE


def test_create_session_with_another_protocol_is_refused() -> None:
    with pytest.raises(BitsError):
        interpret(
            Packet(Kind.CREATE_SESSION), ack(200, bits_session_id="s", bits_protocol="{0}"), URL, reply=False
        )


@pytest.mark.parametrize("status", [200, 416])
@pytest.mark.parametrize("received", [0, 50, 150])
def test_a_fragment_ack_moves_the_offset_either_way(status: int, received: int) -> None:
    outcome = interpret(
        fragment(100, 100, 300), ack(status, bits_received_content_range=str(received)), URL, reply=False
    )
    assert outcome == Advance(received)


def test_a_200_without_received_range_acknowledges_the_fragment() -> None:
    assert interpret(fragment(100, 100, 300), ack(200), URL, reply=False) == Advance(200)


def test_a_416_without_received_range_is_an_invalid_response() -> None:
    with pytest.raises(BitsError):
        interpret(fragment(0, 10, 30), ack(416), URL, reply=False)


@pytest.mark.parametrize("value", ["x", "-1", "301"])
def test_an_impossible_offset_is_an_invalid_response(value: str) -> None:
    with pytest.raises(BitsError) as e:
        interpret(fragment(0, 10, 300), ack(200, bits_received_content_range=value), URL, reply=False)
    assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE


def test_error_headers_are_ignored_on_a_2xx() -> None:
    outcome = interpret(
        fragment(0, 10, 30),
        ack(200, bits_received_content_range="10", bits_error_code="0x80070005"),
        URL,
        reply=False,
    )
    assert outcome == Advance(10)


def test_the_last_ack_of_an_upload_reply_names_the_reply_resolved_against_the_url() -> None:
    outcome = interpret(
        fragment(0, 30, 30), ack(200, bits_received_content_range="30", bits_reply_url="r/1"), URL, reply=True
    )
    assert outcome == Advance(30, "http://127.0.0.1:8080/up/r/1")


@pytest.mark.parametrize("status", [200, 416])
def test_the_last_ack_of_an_upload_reply_without_reply_url_names_none(status: int) -> None:
    """(the uploader then sends the final byte again, and fails if that names none either)"""
    answer = ack(status, bits_received_content_range="30")
    assert interpret(fragment(0, 10, 30), answer, URL, reply=True) == Advance(30, None)
    named = ack(status, bits_received_content_range="30", bits_reply_url="http://h/r")
    assert interpret(fragment(0, 10, 30), named, URL, reply=True) == Advance(30, "http://h/r")
    # (not the last fragment, or not upload-reply: no reply asked)
    assert interpret(fragment(0, 10, 30), ack(200), URL, reply=True) == Advance(10)
    assert interpret(fragment(0, 30, 30), ack(200), URL, reply=False) == Advance(30)


@pytest.mark.parametrize("value", ["file:///etc/passwd", "ftp://127.0.0.1/r", "data:,x", "http://[::1/r"])
def test_a_reply_url_that_is_not_http_is_an_invalid_response(value: str) -> None:
    with pytest.raises(BitsError) as e:
        interpret(fragment(0, 30, 30), ack(200, bits_reply_url=value), URL, reply=True)
    assert e.value.hresult == HResult.BG_E_INVALID_SERVER_RESPONSE


def test_413_shrinks_the_fragment() -> None:
    outcome = interpret(fragment(0, MiB, 4 * MiB), ack(413), URL, reply=False)
    assert isinstance(outcome, Shrink)
    assert outcome.error.hresult == HResult.BG_E_HTTP_ERROR_413


@pytest.mark.parametrize(
    ("headers", "hresult", "context"),
    [
        (
            {"bits_error_code": "0x80200020", "bits_error_context": "0x5"},
            0x80200020,
            ErrorContext.REMOTE_FILE,
        ),
        (
            {"bits_error_code": "0x80004005", "bits_error_context": "0x7"},
            0x80004005,
            ErrorContext.REMOTE_APPLICATION,
        ),
        ({"bits_error_context": "0x7"}, HResult.BG_E_HTTP_ERROR_413, ErrorContext.REMOTE_APPLICATION),
    ],
)
def test_a_413_of_the_application_or_too_large_is_the_jobs_error(
    headers: dict[str, str], hresult: int, context: ErrorContext
) -> None:
    """No shorter fragment gets past them: no shrinking through the fragment sizes."""
    with pytest.raises(BitsError) as e:
        interpret(fragment(0, MiB, 4 * MiB), ack(413, **headers), URL, reply=False)
    assert (e.value.hresult, e.value.context) == (hresult, context)


@pytest.mark.parametrize("header", ["BITS-Error-Code", "bits-error"])
@pytest.mark.parametrize("kind", [Kind.FRAGMENT, Kind.CLOSE_SESSION, Kind.PING])
def test_session_not_found_starts_a_new_session(kind: Kind, header: str) -> None:
    answer = Ack(500, "", CIMultiDict({header: "0x8020001F"}))
    assert interpret(Packet(kind, 0, 1, 2), answer, URL, reply=False) == NewSession()


def test_session_not_found_to_cancel_is_an_error_not_a_new_session() -> None:
    with pytest.raises(BitsError):
        interpret(Packet(Kind.CANCEL_SESSION), ack(500, bits_error_code="8020001F"), URL, reply=False)


def test_a_server_code_is_the_error_with_its_context() -> None:
    with pytest.raises(ServerError) as e:
        interpret(
            Packet(Kind.CREATE_SESSION),
            ack(403, bits_error_code="0x80070005", bits_error_context="0x7"),
            URL,
            reply=False,
        )
    assert e.value.hresult == HResult.E_ACCESSDENIED
    assert e.value.context is ErrorContext.REMOTE_APPLICATION
    assert not e.value.transient  # (403: fatal, as for downloads)


def test_a_server_code_on_a_5xx_is_transient_with_context_remote_file() -> None:
    with pytest.raises(ServerError) as e:
        interpret(
            fragment(0, 1, 2), ack(503, bits_error_code="80004005", bits_error_context="5"), URL, reply=False
        )
    assert e.value.hresult == 0x80004005
    assert e.value.context is ErrorContext.REMOTE_FILE
    assert e.value.transient


@pytest.mark.parametrize(("status", "transient"), [(404, False), (500, True), (503, True), (400, False)])
def test_without_a_code_the_status_maps_as_for_downloads(status: int, transient: bool) -> None:
    with pytest.raises(HttpStatusError) as e:
        interpret(Packet(Kind.CLOSE_SESSION), ack(status), URL, reply=False)
    assert e.value.hresult == 0x80190000 + status
    assert e.value.transient is transient


def test_ping_and_close_acks_move_nothing() -> None:
    assert interpret(Packet(Kind.PING), ack(200), URL, reply=False) == Advance()
    assert interpret(Packet(Kind.CLOSE_SESSION), ack(200), URL, reply=False) == Advance()


# -- FragmentSizer --------------------------------------------------------------------------


def test_fragments_grow_while_fast_up_to_the_cap() -> None:
    sizer = FragmentSizer()
    assert sizer.bytes == UPLOAD_FRAGMENT_START_BYTES
    sizer.acknowledged(sizer.bytes, 0.1)
    assert sizer.bytes == 2 * UPLOAD_FRAGMENT_START_BYTES
    sizer.acknowledged(sizer.bytes, 5.0)  # slow: stays
    assert sizer.bytes == 2 * UPLOAD_FRAGMENT_START_BYTES
    sizer.acknowledged(10, 0.1)  # a short (last) fragment says nothing
    assert sizer.bytes == 2 * UPLOAD_FRAGMENT_START_BYTES
    for _ in range(20):
        sizer.acknowledged(sizer.bytes, 0.1)
    assert sizer.bytes == FRAGMENT_MAX_BYTES


def test_a_413_halves_the_fragments_and_they_never_grow_back_past_it() -> None:
    sizer = FragmentSizer(4 * MiB)
    assert sizer.refused(4 * MiB)
    assert sizer.bytes == 2 * MiB
    sizer.acknowledged(sizer.bytes, 0.1)
    assert sizer.bytes == 2 * MiB
    while sizer.refused(sizer.bytes):
        pass
    assert sizer.bytes == FRAGMENT_MIN_BYTES
    assert not sizer.refused(FRAGMENT_MIN_BYTES)
