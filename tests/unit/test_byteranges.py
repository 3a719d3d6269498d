"""Unit tests of openbits.transfer.byteranges: the multipart/byteranges body parser.

Bodies are built by ``serialize`` below; events are compared after ``collapse``, which merges each
part's Data events, so that tests do not depend on how the body was chunked.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbits.transfer.byteranges import (
    ByteRangesError,
    ByteRangesParser,
    Data,
    Part,
    boundary_from_content_type,
)

B = b"3d6b6a416f9b5"


def serialize(
    boundary: bytes,
    parts: Sequence[tuple[int, bytes, int | None]],
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    eol: bytes = b"\r\n",
    content_type: bool = True,
) -> bytes:
    """A multipart/byteranges body carrying ``parts``: (start, data, total or None) each.
    ``eol`` ends the header lines; the delimiter after a part's body is always CRLF."""
    out = bytearray(preamble)
    after_body = False
    for start, data, total in parts:
        if after_body:
            out += b"\r\n"
        elif out:
            out += eol
        out += b"--" + boundary + eol
        if content_type:
            out += b"Content-Type: application/octet-stream" + eol
        total_text = b"*" if total is None else str(total).encode()
        out += b"Content-Range: bytes %d-%d/%s" % (start, start + len(data) - 1, total_text) + eol
        out += eol + data
        after_body = True
    out += b"\r\n--" + boundary + b"--" + epilogue
    return bytes(out)


def collapse(events: list[Part | Data]) -> list[tuple[int, int, int | None, bytes]]:
    """(start, end, total, body) per part, with the Data events of each part joined."""
    result: list[tuple[int, int, int | None, bytes]] = []
    body = bytearray()
    current: Part | None = None
    for event in events:
        if isinstance(event, Part):
            if current is not None:
                result.append((current.start, current.end, current.total, bytes(body)))
            current, body = event, bytearray()
        else:
            assert current is not None, "Data before any Part"
            assert isinstance(event.data, bytes)
            assert event.data, "empty Data event"
            body += event.data
    if current is not None:
        result.append((current.start, current.end, current.total, bytes(body)))
    return result


def parse(body: bytes, boundary: bytes = B, chunks: list[int] | None = None) -> list[Part | Data]:
    """Feed ``body`` (split at the ``chunks`` offsets, if given), finish, return all events."""
    parser = ByteRangesParser(boundary)
    cuts = [0, *sorted(chunks or []), len(body)]
    events: list[Part | Data] = []
    for a, b in itertools.pairwise(cuts):
        events += parser.feed(body[a:b])
    parser.finish()
    assert parser.done
    return events


def parse_error(body: bytes, *, boundary: bytes = B, max_header_bytes: int = 16384) -> str:
    """The ByteRangesError that feeding ``body`` (whole, then byte by byte) and finishing raises."""
    messages = []
    for step in (len(body) or 1, 1):
        parser = ByteRangesParser(boundary, max_header_bytes)
        with pytest.raises(ByteRangesError) as info:
            for i in range(0, len(body), step):
                parser.feed(body[i : i + step])
            parser.finish()
        messages.append(str(info.value))
    # The offset in the message must not depend on the chunking.
    assert messages[0] == messages[1]
    return messages[0]


TWO_PARTS = [(0, b"0123456789", 100), (50, b"abcdef", 100)]


# -- boundary_from_content_type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("multipart/byteranges; boundary=3d6b6a416f9b5", b"3d6b6a416f9b5"),
        ("multipart/byteranges;boundary=abc", b"abc"),
        ("Multipart/ByteRanges; BOUNDARY=abc", b"abc"),
        ('multipart/byteranges; boundary="abc"', b"abc"),
        ('multipart/byteranges; boundary="a b:c?d=e,f"', b"a b:c?d=e,f"),
        ('multipart/byteranges; boundary="a\\bc"', b"abc"),
        ("multipart/byteranges; charset=x; boundary=abc; foo=bar", b"abc"),
        ('multipart/byteranges; foo="x;boundary=no"; boundary=yes', b"yes"),
        ("  multipart/byteranges ; boundary=abc ;", b"abc"),
        ("multipart/byteranges;; boundary=abc", b"abc"),
        ("multipart/byteranges; boundary=" + "x" * 70, b"x" * 70),
        ("multipart/byteranges; boundary=THIS_STRING_SEPARATES", b"THIS_STRING_SEPARATES"),
        (None, None),
        ("", None),
        ("multipart/byteranges", None),
        ("multipart/byteranges; charset=x", None),
        ("multipart/mixed; boundary=abc", None),
        ("application/octet-stream", None),
        ("multipart/byteranges; boundary=", None),
        ('multipart/byteranges; boundary=""', None),
        ("multipart/byteranges; boundary=" + "x" * 71, None),
        ('multipart/byteranges; boundary="abc "', None),  # may not end in a space
        ('multipart/byteranges; boundary="a*c"', None),  # '*' is not a bchar
        ('multipart/byteranges; boundary="abc', None),  # unterminated quoted-string
        ("multipart/byteranges; boundary=a b", None),
        ("multipart/byteranges; boundary=abc; boundary=abc", None),  # ambiguous
        ("multipart/byteranges; boundary=é", None),
        ("multipart/byteranges boundary=abc", None),
        ("multipart/byteranges; boundary=abc junk", None),
    ],
)
def test_boundary_from_content_type(value: str | None, expected: bytes | None) -> None:
    assert boundary_from_content_type(value) == expected


@pytest.mark.parametrize("boundary", [b"", b"x" * 71, b"ab\r\ncd", b"abc ", b"a*b", "abc"])
def test_parser_rejects_an_invalid_boundary(boundary: bytes) -> None:
    with pytest.raises(ValueError, match="boundary"):
        ByteRangesParser(boundary)


def test_parser_rejects_a_non_positive_header_limit() -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        ByteRangesParser(B, max_header_bytes=0)


# -- well-formed bodies ------------------------------------------------------------------------


def test_one_part() -> None:
    body = serialize(B, [(10, b"hello", 1000)])
    events = parse(body)
    assert events == [Part(10, 14, 1000), Data(b"hello")]
    assert events[0] == Part(10, 14, 1000) and Part(10, 14, 1000).length == 5


@pytest.mark.parametrize("count", [1, 2, 3, 10])
def test_several_parts(count: int) -> None:
    parts = [(i * 100, bytes([65 + i]) * (i + 1), 5000) for i in range(count)]
    assert collapse(parse(serialize(B, parts))) == [
        (start, start + len(data) - 1, total, data) for start, data, total in parts
    ]


def test_a_literal_rfc_9110_example() -> None:
    body = (
        b"--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 500-999/8000\r\n"
        b"\r\n" + b"a" * 500 + b"\r\n"
        b"--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: application/pdf\r\n"
        b"Content-Range: bytes 7000-7999/8000\r\n"
        b"\r\n" + b"b" * 1000 + b"\r\n"
        b"--THIS_STRING_SEPARATES--\r\n"
    )
    boundary = boundary_from_content_type("multipart/byteranges; boundary=THIS_STRING_SEPARATES")
    assert boundary is not None
    assert collapse(parse(body, boundary)) == [(500, 999, 8000, b"a" * 500), (7000, 7999, 8000, b"b" * 1000)]


def test_quoted_boundary_with_specials() -> None:
    boundary = boundary_from_content_type('multipart/byteranges; boundary="sep: (a/b) = c?"')
    assert boundary == b"sep: (a/b) = c?"
    assert collapse(parse(serialize(boundary, TWO_PARTS), boundary)) == [
        (0, 9, 100, b"0123456789"),
        (50, 55, 100, b"abcdef"),
    ]


def test_preamble_and_epilogue_are_ignored() -> None:
    preamble = b"This is a preamble.\r\n--" + B + b"X is not a delimiter\r\n--" + B[:-1] + b"\r\n"
    epilogue = b"\r\nepilogue --" + B + b"\r\nContent-Range: bytes 0-0/1\r\n\r\nx"
    body = serialize(B, TWO_PARTS, preamble=preamble, epilogue=epilogue)
    assert collapse(parse(body)) == [(0, 9, 100, b"0123456789"), (50, 55, 100, b"abcdef")]


def test_leading_crlf_as_sent_by_nginx_and_apache() -> None:
    body = b"\r\n" + serialize(B, TWO_PARTS)
    assert len(collapse(parse(body))) == 2


def test_lf_only_line_ends() -> None:
    body = serialize(B, TWO_PARTS, eol=b"\n", preamble=b"pre\n")
    assert body.count(b"\r") == 2  # only before the delimiters after the bodies
    assert collapse(parse(body)) == [(0, 9, 100, b"0123456789"), (50, 55, 100, b"abcdef")]


def test_mixed_line_ends_and_transport_padding() -> None:
    body = (
        b"--" + B + b" \t\n"
        b"content-range:bytes 0-2/*\r\n"
        b"X-Other:  whatever\n"
        b"\r\n"
        b"abc\r\n--" + B + b"\t\r\n"
        b"CONTENT-RANGE: BYTES 3-3/*\n"
        b"\n"
        b"d\r\n--" + B + b"--"
    )
    assert collapse(parse(body)) == [(0, 2, None, b"abc"), (3, 3, None, b"d")]


def test_a_bare_lf_after_a_body_is_refused() -> None:
    # a part one byte short would otherwise pass, the delimiter's CR taken as its last byte
    good = serialize(B, [(0, b"abc", 10)])
    short = good.replace(b"abc\r\n--", b"ab\r\n--")
    with pytest.raises(ByteRangesError):
        parse(short)
    with pytest.raises(ByteRangesError):
        parse(good.replace(b"abc\r\n--", b"abc\n--"))


def test_unknown_total() -> None:
    body = serialize(B, [(0, b"xy", None), (7, b"z", None)])
    assert parse(body) == [Part(0, 1, None), Data(b"xy"), Part(7, 7, None), Data(b"z")]


def test_folded_header_line() -> None:
    body = b"--" + B + b"\r\nContent-Range:\r\n bytes 0-0/1\r\n\r\nx\r\n--" + B + b"--"
    assert collapse(parse(body)) == [(0, 0, 1, b"x")]


def test_body_containing_the_boundary_is_not_split() -> None:
    nasty = b"\r\n--" + B + b"\r\nContent-Range: bytes 0-0/1\r\n\r\n\r\n--" + B + b"--\r\n"
    parts = [(0, nasty, None), (1000, b"--" + B, None), (2000, b"\n--" + B + b"--", None)]
    body = serialize(B, parts)
    assert collapse(parse(body)) == [(s, s + len(d) - 1, t, d) for s, d, t in parts]
    assert collapse(parse(body, chunks=list(range(1, len(body))))) == collapse(parse(body))


def test_every_single_split_point_gives_the_same_events() -> None:
    body = serialize(B, TWO_PARTS, preamble=b"pre\r\n", epilogue=b"\r\npost")
    expected = collapse(parse(body))
    for cut in range(len(body) + 1):
        assert collapse(parse(body, chunks=[cut])) == expected


def test_one_byte_at_a_time() -> None:
    body = serialize(B, TWO_PARTS)
    parser = ByteRangesParser(B)
    events: list[Part | Data] = []
    for i in range(len(body)):
        assert not parser.done
        events += parser.feed(body[i : i + 1])
    assert parser.done
    parser.finish()
    assert collapse(events) == [(0, 9, 100, b"0123456789"), (50, 55, 100, b"abcdef")]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    body = serialize(B, [*TWO_PARTS, (80, b"\r\n--" + B + b"--", 100)], preamble=b"p\r\n", epilogue=b"e")
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    assert collapse(parse(body, chunks=cuts)) == collapse(parse(body))


def test_body_chunks_are_passed_through_without_copying() -> None:
    mib = 1 << 20
    size = 8 * mib
    head = b"--" + B + b"\r\nContent-Range: bytes 0-%d/*\r\n\r\n" % (size - 1)
    parser = ByteRangesParser(B)
    assert parser.feed(head) == [Part(0, size - 1, None)]
    total = 0
    for i in range(size // mib):
        chunk = bytes([i]) * mib
        events = parser.feed(chunk)
        assert len(events) == 1 and isinstance(events[0], Data)
        assert events[0].data is chunk  # the very object fed: no copy, no scan
        total += len(events[0].data)
    assert total == size
    assert parser.feed(b"\r\n--" + B + b"--\r\n") == []
    assert parser.done
    parser.finish()


def test_non_bytes_chunks_give_bytes_data() -> None:
    body = serialize(B, TWO_PARTS)
    parser = ByteRangesParser(B)
    events = parser.feed(bytearray(body[:70])) + parser.feed(memoryview(body)[70:])  # type: ignore[arg-type]
    parser.finish()
    assert all(type(event.data) is bytes for event in events if isinstance(event, Data))
    assert collapse(events) == [(0, 9, 100, b"0123456789"), (50, 55, 100, b"abcdef")]


def test_feeding_after_done_and_finishing_twice_are_harmless() -> None:
    parser = ByteRangesParser(B)
    parser.feed(serialize(B, TWO_PARTS))
    assert parser.done
    assert parser.feed(b"--" + B + b"\r\nContent-Range: nonsense\r\n\r\n") == []
    assert parser.feed(b"") == []
    parser.finish()
    parser.finish()


def test_header_block_up_to_the_limit_is_accepted() -> None:
    header = b"Content-Range: bytes 0-0/1\r\nX: " + b"y" * 100 + b"\r\n\r\n"
    body = b"--" + B + b"\r\n" + header + b"x\r\n--" + B + b"--"
    parser = ByteRangesParser(B, max_header_bytes=len(header))
    events = parser.feed(body)
    parser.finish()
    assert collapse(events) == [(0, 0, 1, b"x")]


# -- malformed bodies --------------------------------------------------------------------------


def part(content_range: bytes, body: bytes = b"x") -> bytes:
    return b"--" + B + b"\r\nContent-Range: " + content_range + b"\r\n\r\n" + body + b"\r\n--" + B + b"--"


def test_missing_content_range() -> None:
    body = b"--" + B + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + B + b"--"
    blank_line = body.index(b"\r\n\r\n") + 2
    message = parse_error(body)
    assert "no Content-Range" in message and f"at byte {blank_line}" in message


@pytest.mark.parametrize(
    "content_range",
    [
        b"bytes 5-3/10",  # start > end
        b"bytes 0-10/10",  # end beyond the complete length
        b"bytes 0-0/0",
        b"items 0-0/1",
        b"bytes 0-0",
        b"bytes */10",
        b"bytes=0-0/1",
        b"bytes -1-0/1",
        b"bytes +0-0/1",
        b"bytes 0-+0/1",
        b"bytes 0_0-0/1",
        b"bytes 0 - 0/1",
        b"bytes 0-0/1 junk",
        b"bytes 0-0/1,2-2/3",
        "bytes ０-0/1".encode(),  # a fullwidth digit
        b"bytes 0-" + b"9" * 20 + b"/*",
        b"bytes 0-" + b"9" * 5000 + b"/*",  # would trip int()'s digit limit
        b"",
    ],
)
def test_bad_content_range(content_range: bytes) -> None:
    message = parse_error(part(content_range))
    assert "Content-Range" in message and "part 1" in message


def test_duplicate_content_range() -> None:
    headers = b"Content-Range: bytes 0-0/1\r\ncontent-range: bytes 0-0/1\r\n\r\n"
    body = b"--" + B + b"\r\n" + headers + b"x\r\n--" + B + b"--"
    assert "several Content-Range" in parse_error(body)


def test_inconsistent_totals() -> None:
    body = serialize(B, [(0, b"a", 10), (5, b"b", None), (7, b"c", 11)])
    assert "complete length is 11" in parse_error(body)


@pytest.mark.parametrize(
    "header", [b"no colon here", b": empty name", b"bad name: x", b" leading continuation"]
)
def test_malformed_header_lines(header: bytes) -> None:
    body = b"--" + B + b"\r\n" + header + b"\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--" + B + b"--"
    assert "part 1" in parse_error(body)


def test_part_shorter_than_announced() -> None:
    body = part(b"bytes 0-9/100", b"0123456") + b"\r\n"  # 7 bytes where 10 were announced
    message = parse_error(body)
    assert "not followed by a delimiter" in message and "bytes 0-9" in message
    assert message.endswith(f"at byte {body.index(b'0123456') + 10}")


def test_part_longer_than_announced() -> None:
    body = part(b"bytes 0-1/100", b"0123")
    assert "not followed by a delimiter" in parse_error(body)


def test_delimiter_with_a_different_boundary() -> None:
    body = serialize(B, TWO_PARTS).replace(b"\r\n--" + B + b"\r\n", b"\r\n--" + B[:-1] + b"X\r\n")
    assert "not followed by a delimiter" in parse_error(body)


@pytest.mark.parametrize("after", [b"X\r\n", b"-x", b"\rx", b" -- \r\n"])
def test_junk_after_the_boundary(after: bytes) -> None:
    body = part(b"bytes 0-0/1")[:-2] + after
    assert "followed by neither" in parse_error(body) or "bare CR" in parse_error(body)


@pytest.mark.parametrize("cut", [0, 5, 20, 40, 47, 48, 50, 51, 53, 55, 60, 62])
def test_truncated_body(cut: int) -> None:
    body = serialize(B, [(0, b"0123456789", 100)])
    assert cut < len(body) - 1
    message = parse_error(body[:cut])
    assert message.startswith(f"body ended at byte {cut} ")


def test_truncated_inside_a_body_says_how_much_is_missing() -> None:
    body = serialize(B, [(0, b"0123456789", 100)])
    message = parse_error(body[: body.index(b"0123") + 4])
    assert "6 of its 10 bytes are missing" in message


def test_missing_closing_delimiter() -> None:
    body = serialize(B, TWO_PARTS)[: -len(B) - 6]
    assert body.endswith(b"abcdef")
    assert "closing delimiter" in parse_error(body + b"\r\n")
    assert "closing delimiter" in parse_error(body + b"\r\n--" + B)
    assert "closing delimiter" in parse_error(body + b"\r\n--" + B + b"-")
    assert "headers of part 3" in parse_error(body + b"\r\n--" + B + b"\r\n")


def test_no_delimiter_at_all() -> None:
    assert "before the first delimiter" in parse_error(b"")
    assert "before the first delimiter" in parse_error(b"hello\r\n--other\r\n")


def test_closing_delimiter_before_any_part() -> None:
    assert "before any part" in parse_error(b"\r\n--" + B + b"--\r\n")


def test_oversized_headers() -> None:
    body = b"--" + B + b"\r\nContent-Range: bytes 0-0/1\r\nX-Filler: " + b"y" * 200 + b"\r\n\r\nx"
    message = parse_error(body, max_header_bytes=100)
    assert "headers of part 1 starting at byte 17 exceed max_header_bytes=100" in message


def test_oversized_header_line_without_end_is_bounded() -> None:
    parser = ByteRangesParser(B, max_header_bytes=1000)
    parser.feed(b"--" + B + b"\r\nX: ")
    with pytest.raises(ByteRangesError, match="exceed max_header_bytes"):
        for _ in range(2000):
            parser.feed(b"y")


def test_oversized_preamble_and_padding() -> None:
    assert "preamble" in parse_error(b"z" * 200 + serialize(B, TWO_PARTS), max_header_bytes=100)
    padded = b"--" + B + b" " * 200 + b"\r\n"
    assert "preamble" in parse_error(padded, max_header_bytes=100)
    body = serialize(B, TWO_PARTS).replace(b"\r\n--" + B + b"\r\n", b"\r\n--" + B + b" " * 200 + b"\r\n")
    assert "transport padding" in parse_error(body, max_header_bytes=100)


def test_the_parser_is_spent_after_an_error() -> None:
    parser = ByteRangesParser(B)
    with pytest.raises(ByteRangesError) as first:
        parser.feed(part(b"bytes 1-0/5"))
    with pytest.raises(ByteRangesError) as again:
        parser.feed(b"more")
    assert again.value is first.value
    with pytest.raises(ByteRangesError):
        parser.finish()


def test_error_messages_carry_a_byte_offset() -> None:
    message = parse_error(part(b"bytes 1-0/5"))
    assert re.search(r"at byte \d+$", message)


# -- properties --------------------------------------------------------------------------------

boundaries = st.text(alphabet="0123456789abcdefXYZ'()+_,-./:=? ", min_size=1, max_size=70).filter(
    lambda b: not b.endswith(" ")
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes, int | None]]]:
    """A boundary and random parts (start, data, total)."""
    boundary = draw(boundaries).encode()
    total = draw(st.none() | st.integers(10_000, 10**12))
    parts = draw(
        st.lists(
            st.tuples(st.integers(0, 9_000), st.binary(min_size=1, max_size=64)),
            min_size=1,
            max_size=5,
        )
    )
    return boundary, [(start, data, total) for start, data in parts]


@settings(max_examples=200, deadline=None)
@given(
    bodies(),
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=20).filter(lambda p: b"\n" not in p) | st.just(b""),
    st.binary(max_size=20),
    st.booleans(),
    st.data(),
)
def test_round_trip(
    spec: tuple[bytes, list[tuple[int, bytes, int | None]]],
    eol: bytes,
    preamble: bytes,
    epilogue: bytes,
    ctype: bool,
    data: st.DataObject,
) -> None:
    boundary, parts = spec
    if preamble.startswith(b"--" + boundary):
        preamble = b""
    if preamble:
        preamble += eol
    body = serialize(boundary, parts, preamble=preamble, epilogue=epilogue, eol=eol, content_type=ctype)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    events = parse(body, boundary, chunks=cuts)
    assert collapse(events) == [(start, start + len(d) - 1, total, d) for start, d, total in parts]


fragments = st.sampled_from(
    [
        b"--" + B,
        b"--",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"Content-Range: bytes 0-3/10",
        b"Content-Range: bytes 2-2/*",
        b"content-range:bytes 0-0/1",
        b"X: y",
        b"abcd",
        b"\x00\xff",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=30) | fragments, max_size=20), st.data())
def test_arbitrary_input_only_raises_byteranges_error(pieces: list[bytes], data: st.DataObject) -> None:
    body = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    parser = ByteRangesParser(B, max_header_bytes=64)
    events: list[Part | Data] = []
    try:
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            events += parser.feed(body[a:b])
        parser.finish()
    except ByteRangesError:
        return
    # Whatever was accepted is consistent: every part got exactly its announced length.
    assert parser.done
    for start, end, _total, got in collapse(events):
        assert len(got) == end - start + 1
