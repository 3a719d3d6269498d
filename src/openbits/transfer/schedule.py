"""Weekly bandwidth schedules and the rate syntax they are written in.

* A **rate** or **limit** is in bytes per second (B/s), never bits. ``None`` means unlimited and
  ``0`` means paused, as for ``openbits.transfer.throttle``, which applies these limits.
* Schedules are weekly and read the wall-clock fields of the ``datetime`` they are given (pass
  local time, e.g. ``datetime.now()``, as rclone and BITS group policy do). Weekdays are numbered
  as in Python's ``datetime.weekday()``: Monday 0 … Sunday 6.

Nothing here does I/O: the scheduler asks ``Schedule.limit_at`` for the limit now and calls
``Throttle.set_limits`` again at the instant ``Schedule.next_change_after`` names.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Final

__all__ = [
    "Schedule",
    "TimetableError",
    "format_rate",
    "kbps_to_bytes_per_second",
    "parse_rate",
]

# ---------------------------------------------------------------------------------- rates

_MAX_RATE: Final = 2**63 - 1
_UNIT_LETTERS: Final = "bkmgtp"
_UNITS: Final[dict[str, int]] = {
    "": 1024,  # a bare number is KiB/s, as in rclone
    "b": 1,
    **{
        spelling: 1024**power
        for power, letter in enumerate(_UNIT_LETTERS[1:], start=1)
        for spelling in (letter, letter + "i", letter + "ib")
    },
}
_RATE_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([A-Za-z]*)", re.ASCII)
_MAX_DIGITS: Final = 40


class TimetableError(ValueError):
    """A malformed timetable or rate; ``position`` is the 0-based index of the bad part."""

    def __init__(self, reason: str, *, position: int, token: str) -> None:
        self.reason = reason
        self.position = position
        self.token = token
        super().__init__(f"invalid timetable at position {position} ({token!r}): {reason}")


def _parse_rate_at(text: str, position: int) -> int | None:
    if text.lower() == "off":
        return None
    if ":" in text:
        raise TimetableError(
            "separate upload:download limits are not supported; give one bandwidth",
            position=position + text.index(":"),
            token=text,
        )
    match = _RATE_RE.match(text)
    if match is None:
        raise TimetableError(
            "use a rate such as 100B, 512K, 10M or 1.5G (binary multiples of bytes), or off",
            position=position,
            token=text,
        )
    number, unit = match.group(1), match.group(2).lower()
    if len(number) > _MAX_DIGITS:
        raise TimetableError("number too long", position=position, token=text)
    multiplier = _UNITS.get(unit)
    if multiplier is None:
        hint = (
            "bit units are not supported (use B, K, M, G, T or P for bytes)"
            if unit.endswith("b") and unit[:1] in _UNIT_LETTERS[1:]
            else "units are B, K, M, G, T, P (binary multiples of bytes), optionally as Ki or KiB"
        )
        raise TimetableError(
            f"unknown unit {match.group(2)!r}: {hint}", position=position + len(number), token=text
        )
    if match.end() != len(text):
        raise TimetableError(
            "unexpected text after the bandwidth", position=position + match.end(), token=text
        )
    value = Fraction(number) * multiplier
    rate = math.floor(value + Fraction(1, 2))
    if value > 0 and rate == 0:
        rate = 1
    if rate > _MAX_RATE:
        raise TimetableError("bandwidth too large", position=position, token=text)
    return rate


def parse_rate(text: str) -> int | None:
    """Parse one rclone-style bandwidth into bytes per second (None = ``off`` = unlimited).

    A bare number is KiB/s (as in rclone); suffixes ``B``, ``K``, ``M``, ``G``, ``T``, ``P``
    (any case, optionally spelled ``Ki``/``KiB`` …) are binary multiples of bytes: ``512`` and
    ``512K`` are 524288 B/s, ``10M`` is 10485760 B/s, ``100B`` is 100 B/s. Decimals are allowed
    (``0.625M`` = 655360 B/s; results round to whole bytes, never down to 0). ``0`` means paused
    (unlike rclone, where 0 means no limit); ``off`` means unlimited. ``Mb``/``KB`` style units
    are rejected as ambiguous with bits. Raises ``TimetableError`` (a ``ValueError``).
    """
    stripped = text.strip()
    return _parse_rate_at(stripped, len(text) - len(text.lstrip()))


def format_rate(rate: int | None) -> str:
    """Format bytes per second in the timetable syntax (the inverse of ``parse_rate``)."""
    if rate is None:
        return "off"
    if rate == 0:
        return "0"
    for power in range(len(_UNIT_LETTERS) - 1, 0, -1):
        scale = 1024**power
        if rate % scale == 0:
            return f"{rate // scale}{_UNIT_LETTERS[power].upper()}"
    return f"{rate}B"


def kbps_to_bytes_per_second(kbps: int) -> int:
    """Convert a BITS group-policy bandwidth (kilobits/s, 1 Kbps = 1000 bit/s) to bytes/s.

    0 stays 0 (BITS blocks background transfers); other values below 2 Kbps act as 2 Kbps, as
    BITS documents (bits-spec §4.3).
    """
    _check_limit(kbps)
    if kbps == 0:
        return 0
    return max(kbps, 2) * 1000 // 8


# ------------------------------------------------------------------------------- schedules


MINUTES_PER_DAY: Final = 24 * 60
MINUTES_PER_WEEK: Final = 7 * MINUTES_PER_DAY
_DAY_ABBREVIATIONS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS: Final[dict[str, int]] = {
    **{name[:3].lower(): day for day, name in enumerate(_DAY_ABBREVIATIONS)},
    **{name: day for day, name in enumerate(_DAY_NAMES)},
}
_TOKEN_RE: Final = re.compile(r"[^\s;]+")
_WHEN_RE: Final = re.compile(r"(?:([^-]*)-)?([0-9]{1,2}):([0-9]{2})", re.ASCII)


def _minute_of_week(when: datetime) -> int:
    return when.weekday() * MINUTES_PER_DAY + when.hour * 60 + when.minute


def _parse_when(text: str, position: int) -> tuple[tuple[int, ...], int]:
    """``[WEEKDAY-]HH:MM`` → (days it applies to, minute of the day)."""
    match = _WHEN_RE.fullmatch(text)
    if match is None:
        raise TimetableError("expected a time as HH:MM or WEEKDAY-HH:MM", position=position, token=text)
    day_text = match.group(1)
    if day_text is None:
        days: tuple[int, ...] = tuple(range(7))
    else:
        day = _WEEKDAYS.get(day_text.lower())
        if day is None:
            raise TimetableError(
                "unknown weekday (use Mon … Sun or Monday … Sunday)", position=position, token=day_text
            )
        days = (day,)
    hour, minute = int(match.group(2)), int(match.group(3))
    if hour > 23:
        raise TimetableError("hour must be 00-23", position=position + match.start(2), token=match.group(2))
    if minute > 59:
        raise TimetableError("minute must be 00-59", position=position + match.start(3), token=match.group(3))
    return days, hour * 60 + minute


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"a limit must be an int (bytes per second) or None, not {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"a limit must be >= 0 bytes per second or None (unlimited), got {limit}")
    return limit


class Schedule:
    """A weekly bandwidth timetable: a limit in bytes/s (None = unlimited) for every minute.

    It is a step function over the week: each entry ``(minute_of_week, limit)`` (minute 0 is
    Monday 00:00, 10079 is Sunday 23:59) sets the limit from that minute until the next entry,
    and the last entry of the week carries on over the week wrap until the first one. The
    limit changes exactly at the start of an entry's minute.

    Build one with ``Schedule.parse`` (rclone's ``--bwlimit`` timetable syntax),
    ``Schedule.bits`` (BITS group policy: work days and hours) or ``Schedule.constant``.
    Schedules are immutable and compare equal when they give the same limit at every minute.
    """

    __slots__ = ("_limits", "_minutes")

    def __init__(self, entries: Iterable[tuple[int, int | None]]) -> None:
        """Build from ``(minute_of_week, bytes_per_second or None)``; a later duplicate wins."""
        table: dict[int, int | None] = {}
        for minute, limit in entries:
            if isinstance(minute, bool) or not isinstance(minute, int) or not 0 <= minute < MINUTES_PER_WEEK:
                raise ValueError(f"minute of week must be an int in 0-{MINUTES_PER_WEEK - 1}, got {minute!r}")
            table[minute] = _check_limit(limit)
        if not table:
            raise ValueError("a schedule needs at least one entry")
        ordered = sorted(table.items())
        # Keep only the minutes where the limit changes (cyclically), which makes the form canonical.
        changes = [(m, v) for i, (m, v) in enumerate(ordered) if v != ordered[i - 1][1]]
        if not changes:
            changes = [(0, ordered[0][1])]
        self._minutes: tuple[int, ...] = tuple(m for m, _ in changes)
        self._limits: tuple[int | None, ...] = tuple(v for _, v in changes)

    # ---------------------------------------------------------------------------- builders

    @classmethod
    def constant(cls, limit: int | None) -> Schedule:
        """The same limit (bytes/s, None unlimited, 0 paused) all week."""
        return cls([(0, limit)])

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse an rclone ``--bwlimit`` value: one bandwidth, or a timetable.

        A timetable is entries ``[WEEKDAY-]HH:MM,BANDWIDTH`` separated by spaces or semicolons,
        e.g. ``"08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off"`` or
        ``"Mon-00:00,512 Fri-23:59,10M Sat-10:00,1M Sun-20:00,off"``. WEEKDAY is a full English
        day name or its first three letters, any case; an entry without one applies to every day
        (as in rclone). HH:MM runs from 00:00 to 23:59. Each limit holds from its time until the
        next entry, wrapping round the week; when two entries name the same minute, the later
        one in the text wins. Bandwidths are as in ``parse_rate``: bare numbers are KiB/s,
        B/K/M/G/T/P are binary multiples of bytes, ``off`` = unlimited, ``0`` = paused (rclone
        would read 0 as unlimited). rclone's ``UP:DOWN`` pairs are not supported.

        Differences from rclone, where rclone's behaviour is an accident: before the first
        entry of the week the last entry *in time* applies (rclone takes the last one written),
        and weeks start on Monday rather than Sunday (which only matters for that accident).

        Raises ``TimetableError`` (a ``ValueError``) naming the 0-based position of the bad part.
        """
        tokens = [(match.start(), match.group()) for match in _TOKEN_RE.finditer(text)]
        if not tokens:
            raise TimetableError("empty timetable", position=0, token=text)
        if len(tokens) == 1 and "," not in tokens[0][1]:
            position, token = tokens[0]
            if _WHEN_RE.fullmatch(token):
                raise TimetableError(
                    "expected ',BANDWIDTH' after the time", position=position + len(token), token=token
                )
            return cls.constant(_parse_rate_at(token, position))
        entries: list[tuple[int, int | None]] = []
        for position, token in tokens:
            when, comma, bandwidth = token.partition(",")
            if not comma:
                raise TimetableError(
                    "expected an entry HH:MM,BANDWIDTH or WEEKDAY-HH:MM,BANDWIDTH",
                    position=position,
                    token=token,
                )
            if "," in bandwidth:
                raise TimetableError(
                    "an entry has exactly one ','",
                    position=position + len(when) + 1 + bandwidth.index(","),
                    token=token,
                )
            days, minute = _parse_when(when, position)
            limit = _parse_rate_at(bandwidth, position + len(when) + 1)
            entries.extend((day * MINUTES_PER_DAY + minute, limit) for day in days)
        return cls(entries)

    @classmethod
    def bits(
        cls,
        *,
        work_days: Iterable[int] = (0, 1, 2, 3, 4),
        work_start: int = 8,
        work_end: int = 17,
        work_bps: int | None,
        other_bps: int | None,
    ) -> Schedule:
        """The BITS group-policy shape: one limit in work hours, another outside them.

        ``work_days`` are weekdays (Monday 0 … Sunday 6); work hours run from ``work_start``
        (0-23) inclusive to ``work_end`` (1-24) exclusive on each work day, so the defaults are
        Monday-Friday 08:00-17:00 as in the BITS CSP defaults. Limits are bytes/s (None
        unlimited, 0 paused; see ``kbps_to_bytes_per_second`` for policy values in Kbps).
        """
        days = set()
        for day in work_days:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise ValueError(f"work days are ints 0 (Monday) to 6 (Sunday), got {day!r}")
            days.add(day)
        for name, hour, low, high in (("work_start", work_start, 0, 23), ("work_end", work_end, 1, 24)):
            if isinstance(hour, bool) or not isinstance(hour, int) or not low <= hour <= high:
                raise ValueError(f"{name} must be an int hour in {low}-{high}, got {hour!r}")
        if work_start >= work_end:
            raise ValueError(f"work_start ({work_start}) must be before work_end ({work_end})")
        _check_limit(work_bps)
        _check_limit(other_bps)
        if not days:
            return cls.constant(other_bps)
        # Ends first, so that a window ending at 24:00 never overrides the next day's start.
        ends = [((day * MINUTES_PER_DAY + work_end * 60) % MINUTES_PER_WEEK, other_bps) for day in days]
        starts = [(day * MINUTES_PER_DAY + work_start * 60, work_bps) for day in days]
        return cls(ends + starts)

    # ----------------------------------------------------------------------------- queries

    @property
    def entries(self) -> tuple[tuple[int, int | None], ...]:
        """The canonical change points ``(minute_of_week, limit)``; one entry if constant."""
        return tuple(zip(self._minutes, self._limits, strict=True))

    @property
    def is_constant(self) -> bool:
        """True when the limit is the same at every minute of the week."""
        return len(self._minutes) == 1

    def limit_at(self, when: datetime) -> int | None:
        """The limit in bytes/s (None = unlimited, 0 = paused) at wall-clock time ``when``."""
        index = bisect_right(self._minutes, _minute_of_week(when)) - 1
        return self._limits[index]  # index -1 wraps to the last entry of the previous week

    def next_change_after(self, when: datetime) -> datetime:
        """The first instant strictly after ``when`` at which ``limit_at`` gives another value.

        At an edge itself (e.g. exactly 08:00:00 in an 08:00 entry) the answer is the following
        edge. Entries that repeat the current limit are skipped. The result has ``when``'s
        tzinfo and is computed in wall-clock time (across a DST change it is the wall time of
        the edge). A constant schedule has no edge: the answer is then ``when`` plus one week,
        a harmless time to look again (check ``is_constant`` to avoid waking at all).
        """
        if self.is_constant:
            return when + timedelta(weeks=1)
        week_start = (when - timedelta(days=when.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0, fold=0
        )
        index = bisect_right(self._minutes, _minute_of_week(when))
        if index < len(self._minutes):
            return week_start + timedelta(minutes=self._minutes[index])
        return week_start + timedelta(weeks=1, minutes=self._minutes[0])

    # ------------------------------------------------------------------------ dunder methods

    def __str__(self) -> str:
        """The canonical timetable text; ``Schedule.parse(str(s)) == s``."""
        if self.is_constant:
            return format_rate(self._limits[0])
        parts = []
        for minute, limit in self.entries:
            day, rest = divmod(minute, MINUTES_PER_DAY)
            parts.append(f"{_DAY_ABBREVIATIONS[day]}-{rest // 60:02d}:{rest % 60:02d},{format_rate(limit)}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Schedule.parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._minutes == other._minutes and self._limits == other._limits

    def __hash__(self) -> int:
        return hash((self._minutes, self._limits))
