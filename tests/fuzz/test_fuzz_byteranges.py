"""Fuzzing of the multipart/byteranges parser with bodies that are not well formed.

tests/unit/test_byteranges.py already checks that any chunking of a well-formed body gives
the same events; here arbitrary and mutated bodies must end in events or ByteRangesError
(never another exception), and every Part announced is consistent.
"""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import given
from hypothesis import strategies as st

from openbits.transfer.byteranges import ByteRangesError, ByteRangesParser, Data, Part
from tests.fuzz.conftest import FUZZ

B = b"sep"
PIECES = [
    b"--sep",
    b"--sep--",
    b"\r\n",
    b"\n",
    b"\r",
    b"Content-Range: bytes 0-4/10",
    b"Content-Range: bytes 5-9/*",
    b"Content-Range: bytes 9-0/10",
    b"Content-Range: bytes \xb2-3/4",
    b"Content-Type: a/b",
    b" folded",
    b"abcde",
    b"--se",
    b"-",
    b":",
    b"\x00",
    b"99999999999999999999999",
]


@FUZZ
@given(
    st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(PIECES), max_size=25).map(b"".join)),
    st.lists(st.integers(0, 300), max_size=5),
)
def test_any_body_gives_events_or_byteranges_error(body: bytes, cuts: list[int]) -> None:
    parser = ByteRangesParser(B, max_header_bytes=256)
    points = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    events: list[Part | Data] = []
    with contextlib.suppress(ByteRangesError):
        for a, b in itertools.pairwise(points):
            events += parser.feed(body[a:b])
        parser.finish()
    current: Part | None = None
    got = 0
    for event in events:
        if isinstance(event, Part):
            assert 0 <= event.start <= event.end
            assert event.total is None or event.end < event.total
            current, got = event, 0
        else:
            assert current is not None and event.data
            got += len(event.data)
            assert got <= current.length
