"""Unit tests of openbits.transfer.throttle and .schedule: token buckets, the throttle and weekly schedules.

Everything runs on simulated time: a fake monotonic clock and a fake ``sleep`` that advances it,
so nothing here really sleeps.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbits.transfer.schedule import (
    Schedule,
    TimetableError,
    format_rate,
    kbps_to_bytes_per_second,
    parse_rate,
)
from openbits.transfer.throttle import (
    FOREGROUND,
    HIGH,
    LOW,
    MIN_BURST_BYTES,
    NORMAL,
    Throttle,
    TokenBucket,
)

KIB = 1024
MIB = 1024 * 1024
CHUNK = 256 * KIB


class FakeClock:
    """Monotonic seconds that only move when told to; ``sleep`` moves them."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class StuckSleep:
    """A sleep that records its delay and never returns by itself (only a wake-up ends it)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.Event().wait()


async def no_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected sleep({seconds})")


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def move_for(bucket: TokenBucket, clock: FakeClock, seconds: float, chunk: int = CHUNK) -> int:
    """Acquire chunks until ``seconds`` of fake time have passed; count the bytes granted in time."""
    deadline = clock.now + seconds
    moved = 0
    while True:
        await bucket.acquire(chunk, sleep=clock.sleep)
        if clock.now > deadline:
            return moved
        moved += chunk


# ------------------------------------------------------------------------------ TokenBucket


async def test_accuracy_100_mb_in_10_s_at_10_mb_per_s() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10_000_000, clock=clock)
    moved = await move_for(bucket, clock, 10.0)
    assert moved == pytest.approx(100_000_000, rel=0.01)


@pytest.mark.parametrize("rate", [64 * KIB, 1_000_000, 10 * MIB, 123_456_789])
@pytest.mark.parametrize("chunk", [1, 1000, CHUNK, 4 * MIB])
async def test_accuracy_many_rates_and_chunks(rate: int, chunk: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock)
    seconds = max(10.0, 200 * chunk / rate)  # long enough for the chunk size not to matter
    if rate * seconds / chunk > 20_000:
        seconds = 20_000 * chunk / rate  # keep the number of iterations reasonable
    moved = await move_for(bucket, clock, seconds, chunk)
    assert moved == pytest.approx(rate * seconds, rel=0.01)


def test_unlimited_never_waits() -> None:
    bucket = TokenBucket(None, clock=FakeClock())
    assert bucket.rate is None
    assert bucket.reserve(10**12) == 0.0
    assert bucket.reserve(0) == 0.0


async def test_unlimited_acquire_does_not_sleep() -> None:
    bucket = TokenBucket(None, clock=FakeClock())
    await bucket.acquire(10**12, sleep=no_sleep)


def test_starts_empty_and_reservations_queue_up() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=5000, clock=clock)
    assert bucket.reserve(500) == pytest.approx(0.5)
    assert bucket.reserve(500) == pytest.approx(1.0)  # behind the first one
    assert bucket.balance == pytest.approx(-1000)
    clock.advance(1.0)
    assert bucket.balance == pytest.approx(0.0)
    assert bucket.reserve(0) == 0.0


def test_default_burst() -> None:
    assert TokenBucket(1_000_000, clock=FakeClock()).burst == 250_000
    assert TokenBucket(1000, clock=FakeClock()).burst == MIN_BURST_BYTES
    assert TokenBucket(1000, burst=10, clock=FakeClock()).burst == 10
    bucket = TokenBucket(1000, clock=FakeClock())
    bucket.set_rate(4_000_000)
    assert bucket.burst == 1_000_000  # a derived burst follows the rate


def test_burst_after_idle() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, clock=clock)
    clock.advance(60.0)  # idle for a minute: the allowance saved is capped at the burst
    assert bucket.balance == pytest.approx(250_000)
    assert bucket.reserve(250_000) == 0.0
    assert bucket.reserve(100_000) == pytest.approx(0.1)


def test_chunk_larger_than_burst_just_waits_longer() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock)
    clock.advance(10)
    assert bucket.reserve(5100) == pytest.approx(5.0)


async def test_rate_change_mid_stream_keeps_accuracy() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, clock=clock)
    first = await move_for(bucket, clock, 5.0, 64 * KIB)
    bucket.set_rate(4_000_000)
    second = await move_for(bucket, clock, 5.0, 64 * KIB)
    bucket.set_rate(500_000)
    third = await move_for(bucket, clock, 5.0, 64 * KIB)
    assert first == pytest.approx(5_000_000, rel=0.01)
    assert second == pytest.approx(20_000_000, rel=0.01)
    assert third == pytest.approx(2_500_000, rel=0.01)


async def test_raising_the_rate_wakes_a_waiter_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    sleep = StuckSleep()
    task = asyncio.create_task(bucket.acquire(10_000, sleep=sleep))
    await settle()
    assert sleep.delays == [pytest.approx(10.0)]
    clock.advance(2.0)  # 2000 of the 10000 bytes are paid at the old rate
    bucket.set_rate(8000)
    await settle()
    assert sleep.delays[-1] == pytest.approx(1.0)  # the other 8000 at the new rate
    assert not task.done()
    clock.advance(1.0)
    bucket.set_rate(8000)  # any change wakes the waiter to look again
    await settle()
    assert task.done()
    await task


async def test_lowering_the_rate_keeps_the_order_of_waiters() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    sleep = StuckSleep()
    done: list[str] = []

    async def take(name: str, n: int) -> None:
        await bucket.acquire(n, sleep=sleep)
        done.append(name)

    first = asyncio.create_task(take("first", 1000))
    second = asyncio.create_task(take("second", 1000))
    await settle()
    bucket.set_rate(500)
    await settle()
    assert sorted(sleep.delays[-2:]) == [pytest.approx(2.0), pytest.approx(4.0)]
    clock.advance(2.0)
    bucket.set_rate(500)
    await settle()
    assert done == ["first"]
    clock.advance(2.0)
    bucket.set_rate(500)
    await settle()
    assert done == ["first", "second"]
    await asyncio.gather(first, second)


async def test_zero_rate_pauses_until_raised() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0, clock=clock)
    assert bucket.reserve(1) == math.inf
    task = asyncio.create_task(bucket.acquire(1000, sleep=clock.sleep))
    await settle()
    clock.advance(3600.0)
    await settle()
    assert not task.done()
    assert clock.sleeps == []  # paused waiters wait for a change, not for a time
    bucket.set_rate(1000)
    await asyncio.wait_for(task, timeout=5)
    # the reserve(1) above and the 1000 bytes, paid at the new rate from the moment it was set
    assert clock.now == pytest.approx(1000.0 + 3600.0 + 1.001)


async def test_pause_and_resume_mid_stream() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, clock=clock)
    await move_for(bucket, clock, 1.0)
    bucket.set_rate(0)
    task = asyncio.create_task(bucket.acquire(CHUNK, sleep=clock.sleep))
    await settle()
    assert not task.done()
    bucket.set_rate(None)
    await asyncio.wait_for(task, timeout=5)


async def test_cancelled_waiter_gives_its_tokens_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    task = asyncio.create_task(bucket.acquire(100_000, sleep=StuckSleep()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bucket.balance == pytest.approx(0.0)
    assert bucket.reserve(1000) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [-1, -0.5, math.nan])
def test_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate)
    bucket = TokenBucket(1)
    with pytest.raises(ValueError, match="rate"):
        bucket.set_rate(rate)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1000, burst=0)
    bucket = TokenBucket(1000, clock=FakeClock())
    with pytest.raises(ValueError, match="byte count"):
        bucket.reserve(-1)
    assert TokenBucket(math.inf).rate is None


# --------------------------------------------------------------------------------- Throttle


async def timed_acquire(throttle: Throttle, clock: FakeClock, priority: int, n: int) -> float:
    start = clock.now
    await throttle.acquire(priority, n, sleep=clock.sleep)
    return clock.now - start


async def test_throttle_waits_for_the_slowest_bucket() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1_000_000, per_priority={NORMAL: 250_000}, clock=clock)
    assert await timed_acquire(throttle, clock, NORMAL, 1_000_000) == pytest.approx(4.0)
    # HIGH has no limit of its own: only the global one, which refilled during those 4 s
    clock.advance(10)
    throttle.global_bucket.set_rate(1_000_000)
    assert await timed_acquire(throttle, clock, HIGH, 1_250_000) == pytest.approx(1.0)


async def test_throttle_waits_max_not_sum() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1_000_000, per_priority={LOW: 500_000}, clock=clock)
    assert await timed_acquire(throttle, clock, LOW, 1_000_000) == pytest.approx(2.0)


async def test_global_limit_counts_every_background_priority() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1_000_000, clock=clock)
    assert throttle.reserve(HIGH, 1_000_000) == pytest.approx(1.0)
    assert throttle.reserve(LOW, 1_000_000) == pytest.approx(2.0)


async def test_foreground_is_exempt_unless_configured() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1, per_priority={FOREGROUND: 1}, clock=clock)
    assert not throttle.is_limited(FOREGROUND)
    await throttle.acquire(FOREGROUND, 10**9, sleep=no_sleep)
    assert throttle.reserve(FOREGROUND, 10**9) == 0.0
    throttle.set_limits(foreground_limited=True)
    assert throttle.foreground_limited
    assert throttle.is_limited(FOREGROUND)
    assert throttle.reserve(FOREGROUND, 100) == pytest.approx(100.0)


async def test_throttle_unlimited_by_default() -> None:
    throttle = Throttle(clock=FakeClock())
    for priority in (FOREGROUND, HIGH, NORMAL, LOW):
        assert not throttle.is_limited(priority)
        await throttle.acquire(priority, 10**12, sleep=no_sleep)


async def test_set_limits_at_run_time() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1000, per_priority={NORMAL: 500}, clock=clock)
    throttle.set_limits(per_priority={LOW: 100})
    assert throttle.global_bps == 1000
    assert throttle.per_priority == {FOREGROUND: None, HIGH: None, NORMAL: 500, LOW: 100}
    throttle.set_limits(global_bps=None, per_priority={NORMAL: None})
    assert throttle.global_bps is None
    assert throttle.per_priority[NORMAL] is None
    assert not throttle.is_limited(NORMAL)
    assert throttle.is_limited(LOW)
    throttle.set_limits(global_bps=0)
    assert throttle.reserve(HIGH, 1) == math.inf


async def test_set_limits_wakes_a_paused_transfer() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=0, clock=clock)
    task = asyncio.create_task(throttle.acquire(NORMAL, 5000, sleep=clock.sleep))
    await settle()
    assert not task.done()
    throttle.set_limits(global_bps=1000)
    await asyncio.wait_for(task, timeout=5)
    assert clock.now == pytest.approx(1005.0)


async def test_cancelled_throttle_waiter_refunds_every_bucket() -> None:
    clock = FakeClock()
    throttle = Throttle(global_bps=1000, per_priority={NORMAL: 1000}, clock=clock)
    task = asyncio.create_task(throttle.acquire(NORMAL, 50_000, sleep=StuckSleep()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert throttle.global_bucket.balance == pytest.approx(0.0)
    assert throttle.bucket(NORMAL).balance == pytest.approx(0.0)


def test_throttle_rejects_bad_input_without_changing_anything() -> None:
    throttle = Throttle(global_bps=1000, clock=FakeClock())
    with pytest.raises(ValueError, match="priority"):
        throttle.reserve(4, 1)
    with pytest.raises(ValueError, match="priority"):
        Throttle(per_priority={7: 1})
    with pytest.raises(ValueError, match="rate"):
        throttle.set_limits(global_bps=5, per_priority={NORMAL: -1})
    assert throttle.global_bps == 1000
    with pytest.raises(ValueError, match="priority"):
        throttle.set_limits(global_bps=5, per_priority={-1: 1})
    assert throttle.global_bps == 1000


# ---------------------------------------------------------------------------- rate parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512 * KIB),  # a bare number is KiB/s, as in rclone
        ("512k", 512 * KIB),
        ("512K", 512 * KIB),
        ("512KiB", 512 * KIB),
        ("512ki", 512 * KIB),
        ("100B", 100),
        ("100b", 100),
        ("10M", 10 * MIB),
        ("1G", 1024 * MIB),
        ("2T", 2 * 1024**4),
        ("1P", 1024**5),
        ("0.625M", 655_360),
        (".5K", 512),
        ("1.", KIB),
        ("0.4B", 1),  # never rounded down to a pause
        ("0", 0),  # paused (rclone: unlimited)
        ("0M", 0),
        ("off", None),
        ("OFF", None),
        (" 10M ", 10 * MIB),
    ],
)
def test_parse_rate(text: str, expected: int | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("", 0),
        ("fast", 0),
        ("-5", 0),
        ("1e3", 1),
        ("10X", 2),
        ("10Mb", 2),  # bits are not bytes
        ("10MB", 2),
        ("10M:1M", 3),
        ("nan", 0),
        ("inf", 0),
        ("١٢", 0),  # non-ASCII digits
        ("9" * 41, 0),
        ("99999999999P", 0),
    ],
)
def test_parse_rate_errors(text: str, position: int) -> None:
    with pytest.raises(TimetableError) as caught:
        parse_rate(text)
    assert caught.value.position == position
    assert f"position {position}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@given(st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)))
def test_format_rate_round_trips(rate: int | None) -> None:
    assert parse_rate(format_rate(rate)) == rate


def test_kbps_to_bytes_per_second() -> None:
    assert kbps_to_bytes_per_second(1000) == 125_000
    assert kbps_to_bytes_per_second(0) == 0
    assert kbps_to_bytes_per_second(1) == 250  # below 2 Kbps acts as 2 Kbps


# ------------------------------------------------------------------------------- schedules

# 2024-01-01 is a Monday.
MON = datetime(2024, 1, 1)


def at(day: int, hour: int, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    """A time in the week of MON; day 0 is Monday, 7 the next Monday."""
    return MON + timedelta(days=day, hours=hour, minutes=minute, seconds=second, microseconds=microsecond)


DAILY = "08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off"
WEEKLY = "Mon-00:00,512 Fri-23:59,10M Sat-10:00,1M Sun-20:00,off"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(2, 7, 59), None),  # since 23:00 the day before, across midnight
        (at(2, 0, 0), None),
        (at(2, 8, 0), 512 * KIB),
        (at(2, 11, 59, 59, 999_999), 512 * KIB),
        (at(2, 12, 0), 10 * MIB),
        (at(2, 13, 30), 512 * KIB),
        (at(2, 18, 0), 30 * MIB),
        (at(2, 22, 59), 30 * MIB),
        (at(2, 23, 0), None),
        (at(0, 3, 0), None),  # Monday early morning: Sunday 23:00 carries over the week wrap
        (at(6, 23, 59), None),
    ],
)
def test_daily_timetable(when: datetime, expected: int | None) -> None:
    assert Schedule.parse(DAILY).limit_at(when) == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(0, 0, 0), 512 * KIB),
        (at(2, 12, 0), 512 * KIB),
        (at(4, 23, 58), 512 * KIB),
        (at(4, 23, 59), 10 * MIB),
        (at(5, 9, 59), 10 * MIB),
        (at(5, 10, 0), MIB),
        (at(6, 19, 59), MIB),
        (at(6, 20, 0), None),
        (at(6, 23, 59, 59), None),
        (at(7, 0, 0), 512 * KIB),  # the next week
    ],
)
def test_weekly_timetable(when: datetime, expected: int | None) -> None:
    assert Schedule.parse(WEEKLY).limit_at(when) == expected


def test_week_wrap_before_the_first_entry() -> None:
    schedule = Schedule.parse("Wed-12:00,1M Fri-18:00,2M")
    assert schedule.limit_at(at(0, 0)) == 2 * MIB  # from last Friday 18:00
    assert schedule.limit_at(at(2, 11, 59)) == 2 * MIB
    assert schedule.limit_at(at(2, 12)) == MIB
    assert schedule.next_change_after(at(5, 0)) == at(9, 12)  # next week's Wednesday


def test_entries_without_weekday_apply_every_day() -> None:
    # the equivalence given in rclone's documentation
    short = Schedule.parse("Mon-00:00,512 12:00,1M Sun-20:00,off")
    long = Schedule.parse(
        "Mon-00:00,512 Mon-12:00,1M Tue-12:00,1M Wed-12:00,1M Thu-12:00,1M "
        "Fri-12:00,1M Sat-12:00,1M Sun-12:00,1M Sun-20:00,off"
    )
    assert short == long
    assert hash(short) == hash(long)
    assert short.limit_at(at(0, 11, 59)) == 512 * KIB
    assert short.limit_at(at(3, 1)) == MIB


def test_separators_names_and_case() -> None:
    spaced = Schedule.parse(WEEKLY)
    assert Schedule.parse(WEEKLY.replace(" ", ";")) == spaced
    assert Schedule.parse("  monday-00:00,512;; FRIDAY-23:59,10m\tsat-10:00,1m\nSuNdAy-20:00,Off ") == spaced
    assert Schedule.parse("8:00,1M 18:00,off") == Schedule.parse("08:00,1M 18:00,off")


def test_later_entry_wins_on_the_same_minute() -> None:
    schedule = Schedule.parse("12:00,1M Mon-12:00,2M")
    assert schedule.limit_at(at(0, 12)) == 2 * MIB
    assert schedule.limit_at(at(1, 12)) == MIB


def test_constant_schedule() -> None:
    schedule = Schedule.parse("10M")
    assert schedule.is_constant
    assert schedule == Schedule.constant(10 * MIB)
    assert schedule.limit_at(at(3, 4, 5)) == 10 * MIB
    assert schedule.next_change_after(at(3, 4, 5)) == at(10, 4, 5)
    assert Schedule.parse("off").limit_at(at(0, 0)) is None
    assert Schedule.parse("0").limit_at(at(0, 0)) == 0
    # entries that all give the same limit are a constant schedule too
    assert Schedule.parse("08:00,1M 18:00,1024K").is_constant


def test_str_is_canonical_and_parses_back() -> None:
    schedule = Schedule.parse(WEEKLY)
    assert str(schedule) == "Mon-00:00,512K Fri-23:59,10M Sat-10:00,1M Sun-20:00,off"
    assert Schedule.parse(str(schedule)) == schedule
    assert repr(schedule) == f"Schedule.parse({str(schedule)!r})"
    assert str(Schedule.parse("1000B")) == "1000B"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(2, 8, 0), at(2, 12, 0)),  # exactly at an edge: the following one
        (at(2, 7, 59, 59, 999_999), at(2, 8, 0)),  # a microsecond before an edge
        (at(2, 8, 0, 0, 1), at(2, 12, 0)),
        (at(2, 12, 30), at(2, 13, 0)),
        (at(2, 23, 0), at(3, 8, 0)),  # across midnight
        (at(6, 23, 0), at(7, 8, 0)),  # across the week wrap
        (at(6, 23, 59, 59), at(7, 8, 0)),
        (at(0, 0, 0), at(0, 8, 0)),
    ],
)
def test_next_change_after(when: datetime, expected: datetime) -> None:
    assert Schedule.parse(DAILY).next_change_after(when) == expected


def test_next_change_skips_entries_that_do_not_change_the_limit() -> None:
    schedule = Schedule.parse("Mon-00:00,512 12:00,1M Sun-20:00,off")
    assert schedule.next_change_after(at(0, 12)) == at(6, 20)  # not Tuesday 12:00
    assert schedule.next_change_after(at(6, 20)) == at(7, 0)


def test_next_change_keeps_the_timezone() -> None:
    tz = timezone(timedelta(hours=2))
    when = at(2, 9).replace(tzinfo=tz)
    edge = Schedule.parse(DAILY).next_change_after(when)
    assert edge == at(2, 12).replace(tzinfo=tz)
    assert edge.tzinfo is tz


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("", 0),
        ("   ;  ", 0),
        ("08:00", 5),
        ("Mon-08:00", 9),
        ("08:00,512k 12:00", 11),
        ("08:00,512k 25:00,1M", 11),
        ("08:00,512k Mon-10:60,1M", 18),
        ("Xyz-10:00,1M", 0),
        ("Mon-10:00,1M Tues-11:00,2M", 13),
        ("10:00,1X", 7),
        ("10:00,10M:1M", 9),
        ("10:00,1M,2M", 8),
        ("10:00,", 6),
        (",1M", 0),
        ("10.00,1M", 0),
        ("1000:00,1M", 0),
        ("10:0,1M", 0),
        ("Mon-Tue-10:00,1M", 0),
        ("10:00,1M 11:00,1e6", 16),
        ("10:00,1M 11:00,2M3", 17),
        ("10M 20M", 0),
    ],
)
def test_malformed_timetables(text: str, position: int) -> None:
    with pytest.raises(TimetableError) as caught:
        Schedule.parse(text)
    assert caught.value.position == position
    assert f"position {position}" in str(caught.value)


TIMETABLE_ALPHABET = "0123456789:,;-. \tMonTueWedThuFriSatSunKkMmGgBbiOoFfxX"


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text(alphabet=TIMETABLE_ALPHABET)))
def test_parser_raises_only_value_error(text: str) -> None:
    try:
        schedule = Schedule.parse(text)
    except TimetableError as error:  # a ValueError; anything else fails the test
        assert 0 <= error.position <= len(text)
        return
    assert Schedule.parse(str(schedule)) == schedule


limits = st.one_of(st.none(), st.integers(min_value=0, max_value=2**40))
entry_lists = st.lists(st.tuples(st.integers(min_value=0, max_value=10079), limits), min_size=1, max_size=12)
datetimes = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


def reference_limit(entries: list[tuple[int, int | None]], when: datetime) -> int | None:
    """The limit by brute force: walk back minute by minute, round the week, to an entry."""
    table = dict(entries)
    minute = when.weekday() * 1440 + when.hour * 60 + when.minute
    for back in range(10080):
        candidate = (minute - back) % 10080
        if candidate in table:
            return table[candidate]
    raise AssertionError("no entry")


@given(entry_lists, datetimes)
def test_limit_at_matches_brute_force(entries: list[tuple[int, int | None]], when: datetime) -> None:
    assert Schedule(entries).limit_at(when) == reference_limit(entries, when)


@given(entry_lists, datetimes)
def test_next_change_after_is_the_next_edge(entries: list[tuple[int, int | None]], when: datetime) -> None:
    schedule = Schedule(entries)
    edge = schedule.next_change_after(when)
    assert edge > when
    assert edge - when <= timedelta(weeks=1)
    if schedule.is_constant:
        return
    assert edge.second == 0
    assert edge.microsecond == 0
    assert schedule.limit_at(edge) != schedule.limit_at(when)
    assert schedule.limit_at(edge - timedelta(microseconds=1)) == schedule.limit_at(when)


@given(entry_lists)
def test_str_round_trips(entries: list[tuple[int, int | None]]) -> None:
    schedule = Schedule(entries)
    assert Schedule.parse(str(schedule)) == schedule


def test_schedule_constructor_rejects_bad_entries() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Schedule([])
    with pytest.raises(ValueError, match="minute of week"):
        Schedule([(10080, 1)])
    with pytest.raises(ValueError, match="limit"):
        Schedule([(0, -1)])


# ------------------------------------------------------------------------ BITS work schedule


def test_bits_work_and_non_work_hours() -> None:
    schedule = Schedule.bits(work_bps=125_000, other_bps=None)  # Mon-Fri 08-17 by default
    assert schedule.limit_at(at(0, 7, 59)) is None
    assert schedule.limit_at(at(0, 8)) == 125_000
    assert schedule.limit_at(at(0, 16, 59, 59)) == 125_000
    assert schedule.limit_at(at(0, 17)) is None
    assert schedule.limit_at(at(4, 12)) == 125_000  # Friday
    assert schedule.limit_at(at(5, 12)) is None  # Saturday
    assert schedule.limit_at(at(6, 12)) is None  # Sunday
    assert schedule.next_change_after(at(0, 8)) == at(0, 17)
    assert schedule.next_change_after(at(4, 17)) == at(7, 8)  # Friday evening → Monday
    assert schedule == Schedule.parse(
        "Mon-08:00,125000B Mon-17:00,off Tue-08:00,125000B Tue-17:00,off Wed-08:00,125000B "
        "Wed-17:00,off Thu-08:00,125000B Thu-17:00,off Fri-08:00,125000B Fri-17:00,off"
    )


def test_bits_custom_days_and_whole_day_windows() -> None:
    schedule = Schedule.bits(work_days={5, 6}, work_start=0, work_end=24, work_bps=0, other_bps=MIB)
    assert schedule.limit_at(at(4, 23, 59)) == MIB
    assert schedule.limit_at(at(5, 0)) == 0  # paused all weekend
    assert schedule.limit_at(at(6, 12)) == 0
    assert schedule.limit_at(at(6, 23, 59)) == 0
    assert schedule.limit_at(at(7, 0)) == MIB
    assert schedule.next_change_after(at(5, 0)) == at(7, 0)  # Saturday 24:00 = Sunday 00:00 is no edge


def test_bits_without_work_days_is_constant() -> None:
    schedule = Schedule.bits(work_days=(), work_bps=1, other_bps=2)
    assert schedule.is_constant
    assert schedule.limit_at(at(1, 10)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"work_days": {7}}, "work days"),
        ({"work_days": {-1}}, "work days"),
        ({"work_start": 24}, "work_start"),
        ({"work_end": 25}, "work_end"),
        ({"work_end": 0}, "work_end"),
        ({"work_start": 17, "work_end": 8}, "before"),
        ({"work_start": 9, "work_end": 9}, "before"),
        ({"work_bps": -1}, "limit"),
    ],
)
def test_bits_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"work_bps": 1000, "other_bps": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        Schedule.bits(**arguments)  # type: ignore[arg-type]
