"""Fuzzing of the HTTP response parsing: openbits.transfer.http (Content-Range, 416 ranges,
proxies from the environment), openbits.model.parse_custom_headers, and openbits.transfer.h1
(``parse_head``, ``framing``, and the real ``H1Client`` reading heads and bodies, chunked
or not, that a raw asyncio server on 127.0.0.1 sends).

Properties: no exception but the module's own (None for "malformed" where that is the
contract, ValueError for custom headers, H1Error subclasses for h1); what a formatter writes
parses back; a parsed Content-Range is consistent (start <= end < total).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from openbits.model import RESERVED_HEADERS, parse_custom_headers
from openbits.transfer.h1 import BadResponse, H1Client, H1Error
from openbits.transfer.h1head import framing, parse_head
from openbits.transfer.http import env_proxy_for, parse_content_range, parse_unsatisfied_range
from tests.fuzz.conftest import FUZZ

# -- Content-Range ----------------------------------------------------------------------------

RANGE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("bytes BYTES0123456789-/* \t\r\n²٣"), max_size=40),
    st.builds(
        "{}{} {}-{}/{}{}".format,
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["bytes", "BYTES", "Bytes", "byte", "bits"]),
        st.integers(-5, 2**70).map(str),
        st.integers(-5, 2**70).map(str),
        st.one_of(st.just("*"), st.integers(-5, 2**70).map(str)),
        st.sampled_from(["", " ", "\r\n", "x"]),
    ),
)


@FUZZ
@given(st.one_of(st.none(), RANGE_TEXT))
def test_a_parsed_content_range_is_consistent(value: str | None) -> None:
    parsed = parse_content_range(value)
    if parsed is None:
        return
    start, end, total = parsed
    assert 0 <= start <= end
    assert total is None or end < total


@FUZZ
@given(
    st.integers(0, 2**64),
    st.integers(0, 2**64),
    st.one_of(st.none(), st.integers(1, 2**64)),
    st.sampled_from(["bytes", "BYTES", "Bytes"]),
    st.sampled_from(["", " ", "\t "]),
)
def test_content_range_round_trip(start: int, length: int, total: int | None, unit: str, pad: str) -> None:
    end = start + length
    text = f"{pad}{unit} {start}-{end}/{'*' if total is None else total}{pad}"
    expected = (start, end, total) if total is None or end < total else None
    assert parse_content_range(text) == expected


@FUZZ
@given(st.one_of(st.none(), RANGE_TEXT, st.integers(0, 2**64).map("bytes */{}".format)))
def test_unsatisfied_range_is_a_size_or_none(value: str | None) -> None:
    total = parse_unsatisfied_range(value)
    assert total is None or total >= 0


@FUZZ
@given(st.integers(0, 2**64), st.sampled_from(["bytes", "BYTES"]), st.sampled_from(["", " "]))
def test_unsatisfied_range_round_trip(total: int, unit: str, pad: str) -> None:
    assert parse_unsatisfied_range(f"{pad}{unit} */{total}{pad}") == total


# -- proxies from the environment -------------------------------------------------------------

URL_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(
        "{}://{}{}".format,
        st.sampled_from(["http", "HTTPS", "ftp", ""]),
        st.text(alphabet=st.sampled_from("ab.[]:@%-0123456789é/ "), max_size=20),
        st.sampled_from(["", "/", "/p?q#f", ":", ":99999"]),
    ),
)
ENV = st.dictionaries(
    st.sampled_from(["http", "https", "no", "ftp"]),
    st.one_of(st.sampled_from(["http://proxy:3128", "*", "a.example,.b", "[::1]", ""]), st.text(max_size=15)),
)


@FUZZ
@given(ENV, URL_TEXT)
def test_env_proxy_for_never_raises(env: dict[str, str], url: str) -> None:
    proxy = env_proxy_for(url, env)
    assert proxy is None or proxy in env.values()


def test_env_proxy_for_a_malformed_url_is_none() -> None:
    """Regression: an unbalanced IPv6 bracket made urlsplit raise ValueError."""
    proxies = {"http": "http://proxy:3128"}
    assert env_proxy_for("http://[::1/f", proxies) is None
    assert env_proxy_for("http://host/f", proxies) == "http://proxy:3128"


# -- custom headers ---------------------------------------------------------------------------

NAME = st.from_regex(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}\Z").filter(
    lambda n: n.lower() not in RESERVED_HEADERS
)
VALUE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=30
).map(lambda v: v.strip(" \t"))


@FUZZ
@given(st.one_of(st.text(max_size=80), st.text(alphabet=st.sampled_from("Ab:- \t\r\n\x00é"), max_size=40)))
def test_custom_headers_give_pairs_or_value_error(text: str) -> None:
    try:
        pairs = parse_custom_headers(text)
    except ValueError:
        return
    assert text.endswith("\r\n")
    for name, value in pairs:
        assert name and name.lower() not in RESERVED_HEADERS
        assert not any(c in value for c in "\r\n\x00")


@FUZZ
@given(st.lists(st.tuples(NAME, VALUE), min_size=1, max_size=6), st.sampled_from([":", ": ", ":\t "]))
def test_custom_headers_round_trip(pairs: list[tuple[str, str]], sep: str) -> None:
    assert parse_custom_headers("".join(f"{n}{sep}{v}\r\n" for n, v in pairs)) == pairs


# -- h1: the head and the framing -------------------------------------------------------------

HEAD_BYTES = st.one_of(
    st.binary(max_size=120),
    st.lists(
        st.sampled_from(
            [
                b"HTTP/1.1 ",
                b"HTTP/1.0 ",
                b"200",
                b"1\xb20",
                b"99",
                b"600",
                b" OK",
                b"\r\n",
                b"\n",
                b"\r",
                b"Content-Length: 5",
                b"X:y",
                b" folded",
                b"\t",
                b":",
                b"bad line",
                b"\xff\xfe",
                b"\x00",
            ]
        ),
        max_size=12,
    ).map(b"".join),
)
TOKEN = st.from_regex(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}\Z")
FIELD_VALUE = st.binary(max_size=20).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t").decode("latin-1")
)


@FUZZ
@given(HEAD_BYTES)
def test_parse_head_gives_a_head_or_bad_response(head: bytes) -> None:
    try:
        status, _reason, headers, _http11 = parse_head(head)
    except BadResponse:
        return
    assert 100 <= status <= 599
    for name in headers:
        assert name and ":" not in name


@FUZZ
@given(
    st.integers(100, 599),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
    st.lists(st.tuples(TOKEN, FIELD_VALUE), max_size=8),
    st.sampled_from(["\r\n", "\n"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.sampled_from(["", " ", "\t"]),
)
def test_parse_head_round_trip(
    status: int, reason: str, fields: list[tuple[str, str]], eol: str, version: str, pad: str
) -> None:
    head = f"{version} {status} {reason}" + "".join(f"{eol}{n}:{pad}{v}{pad}" for n, v in fields)
    got_status, got_reason, headers, http11 = parse_head(head.encode("latin-1"))
    assert (got_status, got_reason, http11) == (status, reason, version == "HTTP/1.1")
    assert list(headers.items()) == fields


def test_parse_head_refuses_a_status_code_of_non_ascii_digits() -> None:
    """Regression: '1²0' passed the digit check and the range check, then int() raised ValueError."""
    for code in (b"1\xb20", b"2\xb90", b"\xb2\xb2\xb2"):
        with pytest.raises(BadResponse):
            parse_head(b"HTTP/1.1 " + code + b" OK\r\nContent-Length: 0")


@FUZZ
@given(
    st.integers(0, 999),
    st.lists(
        st.tuples(
            st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding", "X"]),
            st.one_of(
                FIELD_VALUE,
                st.sampled_from(
                    ["chunked", "gzip, chunked", "chunked, gzip", "5", "5, 5", "5,6", "-1", "²", ""]
                ),
                st.integers(0, 10**21).map(str),
            ),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_framing_is_a_mode_or_bad_response(status: int, fields: list[tuple[str, str]], head: bool) -> None:
    try:
        mode, length = framing(status, CIMultiDict(fields), head)
    except BadResponse:
        return
    assert mode in ("length", "chunked", "close")
    assert length >= 0 and (mode == "length" or length == 0)
    assert length < 10**19


# -- h1: the real client against a raw server -------------------------------------------------


async def _exchange(response: bytes, *, close: bool) -> tuple[int, bytes] | H1Error:
    """GET from a server that answers ``response`` (then closes, or half-closes when
    ``close``): (status, body) as the client read them, or the H1Error it raised."""

    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            if not close:
                writer.write_eof()
                await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:  # (also when cancelled: the server's end of the connection is closed)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H1Client(connect_timeout_s=5.0, read_timeout_s=5.0, read_bytes=64, splice=False)
    try:
        async with client.get(f"http://127.0.0.1:{port}/f", {}) as resp:
            body = bytearray()
            for _ in range(len(response) + 2):  # every read but the last returns a byte at least
                data = await resp.content.read()
                if not data:
                    break
                body += data
            else:
                raise AssertionError("the body never ended")
            return resp.status, bytes(body)
    except H1Error as e:
        return e
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)  # (3.11 does not wait for them)


def _chunked(body: bytes, cuts: list[int], ext: str, trailers: list[tuple[str, str]], hexcase: str) -> bytes:
    out = bytearray()
    points = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    for a, b in itertools.pairwise(points):
        if b > a:
            size = f"{b - a:x}" if hexcase == "lower" else f"{b - a:X}"
            out += f"{size}{ext}\r\n".encode() + body[a:b] + b"\r\n"
    out += f"0{ext}\r\n".encode()
    out += "".join(f"{n}: {v}\r\n" for n, v in trailers).encode("latin-1") + b"\r\n"
    return bytes(out)


@FUZZ
@given(
    st.binary(max_size=300),
    st.sampled_from(["length", "chunked", "close"]),
    st.lists(st.integers(0, 400), max_size=6),
    st.sampled_from(["", ";a=b", " ; x"]),
    st.lists(st.tuples(TOKEN, FIELD_VALUE), max_size=2),
    st.sampled_from(["lower", "upper"]),
    st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]),
)
def test_h1_reads_every_well_framed_body(
    body: bytes,
    framing: str,
    cuts: list[int],
    ext: str,
    trailers: list[tuple[str, str]],
    hexcase: str,
    interim: bytes,
) -> None:
    if framing == "length":
        head, payload = f"Content-Length: {len(body)}\r\n", body
    elif framing == "chunked":
        head, payload = "Transfer-Encoding: chunked\r\n", _chunked(body, cuts, ext, trailers, hexcase)
    else:
        head, payload = "Connection: close\r\n", body
    response = interim + f"HTTP/1.1 200 OK\r\n{head}\r\n".encode() + payload
    assert asyncio.run(_exchange(response, close=framing == "close")) == (200, body)


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, cut, insert in edits:
        at = pos % (len(out) + 1)
        out[at : at + cut] = insert
    return bytes(out)


WELL_FORMED = st.builds(
    lambda body, cuts: [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"HTTP/1.1 206 Partial\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, cuts, "", [], "lower"),
        b"HTTP/1.0 200 OK\r\n\r\n" + body,
    ],
    st.binary(max_size=40),
    st.lists(st.integers(0, 40), max_size=3),
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(
            WELL_FORMED.flatmap(st.sampled_from),
            st.lists(
                st.tuples(
                    st.integers(0, 300),
                    st.integers(0, 3),
                    st.sampled_from(
                        [
                            b"",
                            b"\r",
                            b"\n",
                            b"\r\n",
                            b"0",
                            b"f",
                            b"ffffffffffffffffff",
                            b";",
                            b" ",
                            b"\x00",
                            b"\xb2",
                            b"-1",
                            b"Content-Length: 3\r\n",
                            b"Transfer-Encoding: gzip\r\n",
                            b"HTTP/1.1 100 Continue\r\n\r\n",
                        ]
                    ),
                ),
                max_size=4,
            ),
        ).map(lambda t: _mutate(*t)),
    ),
    st.booleans(),
)
def test_h1_any_response_is_a_response_or_an_h1_error(response: bytes, close: bool) -> None:
    result = asyncio.run(_exchange(response, close=close))
    if isinstance(result, H1Error):
        return
    status, body = result
    assert 200 <= status <= 599
    assert len(body) <= len(response)
