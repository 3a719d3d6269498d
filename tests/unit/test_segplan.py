"""segplan (pure): how a file is split, how a free connection steals half of the largest
segment left, what is durable, the store's form, and when an answer allows segments."""

from __future__ import annotations

import itertools

from openbits.transfer import segplan
from openbits.transfer.segplan import PIECE_BYTES, STEAL_MIN_BYTES

MiB = 1024 * 1024


def test_split_covers_the_file_in_equal_segments_of_at_least_a_piece() -> None:
    segments = segplan.split(64 * MiB + 5, 4)
    assert len(segments) == 4
    assert segments[0].start == 0 and segments[-1].end == 64 * MiB + 5
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))
    assert len(segplan.split(3 * PIECE_BYTES, 32)) == 3, "never less than a piece each"
    assert len(segplan.split(100, 4)) == 1


def test_steal_takes_a_waiting_segment_then_the_upper_half_of_the_largest() -> None:
    segments = segplan.split(16 * MiB, 2)
    first = segplan.steal(segments)
    assert first is not None and first == (segments[0], False)
    second = segplan.steal(segments)
    assert second is not None and second == (segments[1], False)
    segments[0].received = segments[0].written = segments[0].end  # the first one is done
    segments[1].received = segments[1].start + 2 * MiB
    taken = segplan.steal(segments)
    assert taken is not None
    piece, split = taken
    assert split and piece.busy
    assert piece.start == segments[1].end == 8 * MiB + 2 * MiB + 3 * MiB
    assert piece.end == 16 * MiB and piece.received == piece.done == piece.start
    assert segments.index(piece) == 2, "kept in file order"
    # nothing worth a connection: less than STEAL_MIN_BYTES left anywhere
    for s in segments:
        s.received = max(s.received, s.end - STEAL_MIN_BYTES + 1)
    assert segplan.steal(segments) is None


def test_durable_bytes_prefix_and_the_store_form_round_trip() -> None:
    segments = segplan.split(8 * MiB, 4)  # 2 MiB each
    segments[0].done = segments[0].written = 2 * MiB  # finished
    segments[1].done, segments[1].written = 3 * MiB, 3 * MiB + 10
    segments[2].written = 5 * MiB  # written, not durable
    assert segplan.durable_bytes(segments) == 3 * MiB
    assert segplan.prefix(segments) == 3 * MiB + 10, "gapless from byte 0"
    text = segplan.encode(segments)
    assert (
        text == f"[[0,{3 * MiB},{4 * MiB}],[{4 * MiB},{4 * MiB},{6 * MiB}],[{6 * MiB},{6 * MiB},{8 * MiB}]]"
    )
    back = segplan.decode(text, 8 * MiB)
    assert back is not None
    assert [(s.start, s.done, s.end) for s in back] == [
        (0, 3 * MiB, 4 * MiB),
        (4 * MiB, 4 * MiB, 6 * MiB),
        (6 * MiB, 6 * MiB, 8 * MiB),
    ]
    assert all(s.written == s.received == s.done for s in back), "resumed from the durable offsets"
    assert segplan.durable_bytes(back) == 3 * MiB
    assert segplan.last_durable(back) == 3 * MiB, "segments with nothing durable count for nothing"
    assert segplan.extent(text, 3 * MiB) == 3 * MiB and segplan.extent(None, 5) == 5
    assert segplan.extent("[[0,5,10],[10,15,20]]", 10) == 15


def test_decode_refuses_a_layout_that_does_not_cover_the_file() -> None:
    assert segplan.decode("[[0,5,10],[10,10,20]]", 20) is not None
    for bad in ("[[0,5,10],[11,11,20]]", "[[0,11,10]]", "[[0,5,10]]", "[]", "nope", '[["a"]]'):
        assert segplan.decode(bad, 20) is None, bad


def test_an_answer_allows_segments_only_with_ranges_a_strong_validator_and_size() -> None:
    ok = {"Accept-Ranges": "bytes", "ETag": '"abc"'}
    size = 64 * MiB
    assert segplan.connections_for(200, ok, size, 4, 8 * MiB) == 4
    assert segplan.connections_for(200, ok, size, 1, 8 * MiB) == 1, "MaxConnections 1"
    assert segplan.connections_for(200, ok, 7 * MiB, 4, 8 * MiB) == 1, "below segment_min_bytes"
    assert segplan.connections_for(200, ok, None, 4, 8 * MiB) == 1, "size unknown"
    assert segplan.connections_for(206, ok, size, 4, 8 * MiB) == 1, "not a fresh answer"
    assert segplan.connections_for(200, {"ETag": '"abc"'}, size, 4, 8 * MiB) == 1, "no Accept-Ranges"
    weak = {"Accept-Ranges": "bytes", "ETag": 'W/"abc"', "Last-Modified": "x"}
    assert segplan.connections_for(200, weak, size, 4, 8 * MiB) == 1, "a weak ETag"
    modified = {"Accept-Ranges": "bytes", "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
    assert segplan.connections_for(200, modified, size, 4, 8 * MiB) == 4
    assert segplan.connections_for(200, {"Accept-Ranges": "bytes"}, size, 4, 8 * MiB) == 1, "no validator"
    gzip = {**ok, "Content-Encoding": "gzip"}
    assert segplan.connections_for(200, gzip, size, 4, 8 * MiB) == 1


def test_tail_helps_the_most_silent_segment_once_it_was_silent_long_enough() -> None:
    segments = segplan.split(16 * MiB, 4)  # 4 MiB each, all busy, under STEAL_MIN_BYTES left
    for i, s in enumerate(segments):
        s.busy, s.received, s.last_s = True, s.end - 1000 * (i + 1), 10.0 + i
    segments[3].received = segments[3].written = segments[3].end  # arrived in full: no help
    assert segplan.tail(segments, now_s=20.0) == (None, 0.0), "no answer began: none is silent"
    for s in segments:
        s.answered = True
    victim, wait_s = segplan.tail(segments, now_s=10.005, idle_s=0.015)
    assert victim is segments[0] and abs(wait_s - 0.01) < 1e-9, "not silent long enough yet"
    victim, wait_s = segplan.tail(segments, now_s=10.02, idle_s=0.015)
    assert victim is segments[0] and wait_s == 0
    taken = segplan.twin(victim, now_s=10.02)
    assert (taken.start, taken.end) == (victim.received, victim.end) and taken.busy
    assert taken not in segments, "a twin joins the file's list only when it wins"
    victim2, _ = segplan.tail(segments, now_s=20.0, idle_s=0.015)
    assert victim2 is segments[1], "one twin per segment"
    for s in segments[1:3]:
        s.twinned = True
    assert segplan.tail(segments, now_s=20.0) == (None, 0.0), "nothing left to help: the worker ends"


def test_settle_ends_the_victim_where_it_was_and_keeps_the_twins_bytes() -> None:
    segments = segplan.split(8 * MiB, 2)
    victim = segments[0]
    victim.busy, victim.received, victim.written = True, 4 * MiB - 5000, 4 * MiB - 6000
    taken = segplan.twin(victim, now_s=1.0)
    victim.received = 4 * MiB - 3000  # its connection brought more meanwhile
    taken.received = taken.written = taken.end  # the twin had it all first
    rest = segplan.settle(segments, victim, taken)
    assert rest is not None and not victim.twinned
    assert victim.end == rest.start == 4 * MiB - 3000 and rest.end == 4 * MiB
    assert rest.written == rest.end and rest.done == rest.start, "written, not yet durable"
    assert segments == [victim, rest, segments[2]]
    assert segplan.decode(segplan.encode(segments), 8 * MiB) is not None, "still tiles the file"
    # the victim had received every byte meanwhile: nothing to settle
    segments = segplan.split(8 * MiB, 2)
    taken = segplan.twin(segments[0], now_s=1.0)
    segments[0].received = segments[0].end
    assert segplan.settle(segments, segments[0], taken) is None and len(segments) == 2


def test_the_last_connection_tries_again_unless_a_retry_after_still_holds() -> None:
    last = segplan.LAST_RETRIES_S
    # three tries, a moment apart, up to a quarter more at random; none on one connection
    assert [segplan.last_retry_s(t, 4, 0.0, 0.0) for t in range(4)] == [*last, None]
    assert segplan.last_retry_s(0, 4, 0.0, 1.0) == last[0] * 1.25
    assert segplan.last_retry_s(0, 1, 0.0, 0.0) is None
    # a Retry-After with 0.8 s still to run stretches the first wait; one that ran out does not
    assert segplan.last_retry_s(0, 4, 0.8, 0.0) == 0.8
    assert segplan.last_retry_s(0, 4, -25.0, 0.0) == last[0]
    # one with more than the last wait still to run ends the tries: the job's retry waits it
    assert segplan.asked_holds(29.5) and segplan.last_retry_s(0, 4, 29.5, 0.0) is None
    assert not segplan.asked_holds(last[-1])
