"""The service-wide policy: bandwidth limits, their weekly schedule, and scheduling knobs.

Defaults come from the config file; an administrator changes them at run time through
``BitsServicePolicy`` (the service persists the changes, the scheduler applies them at
once, without restarting transfers).  Pure data and validation: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from openbits.config import Config
from openbits.errors import InvalidArgument, ReadOnlyProperty
from openbits.transfer.schedule import Schedule, TimetableError, format_rate, parse_rate

#: WMI-style property name -> (attribute, kind)
PROPERTIES: dict[str, tuple[str, str]] = {
    "MaxBandwidth": ("max_bandwidth", "rate"),
    "BandwidthSchedule": ("bandwidth_schedule", "schedule"),
    "HighPriorityBandwidth": ("high_bandwidth", "rate"),
    "NormalPriorityBandwidth": ("normal_bandwidth", "rate"),
    "LowPriorityBandwidth": ("low_bandwidth", "rate"),
    "ForegroundLimited": ("foreground_limited", "bool"),
    "WorkHours": ("work_hours", "work_hours"),
    "WorkBandwidth": ("work_bandwidth", "rate"),
    "NonWorkBandwidth": ("non_work_bandwidth", "rate"),
    "MaxConcurrentBackgroundJobs": ("max_background", "count"),
    "TimeSlice": ("time_slice_s", "seconds"),
    "MaxConnectionsPerJob": ("max_connections_per_job", "connections"),
    "BackgroundYield": ("background_yield", "priorities"),
    "YieldTargetDelayMs": ("yield_target_delay_ms", "delay_ms"),
}
#: BG_JOB_PRIORITY names, as BackgroundYield lists them
PRIORITY_NAMES = ("FOREGROUND", "HIGH", "NORMAL", "LOW")
READ_ONLY = ("CurrentBandwidthLimit", "CurrentBandwidthLimitText")


def rate_value(name: str, value: Any) -> int | None:
    """Bytes/s from JSON: an integer, a rate string ("10M", "off") or null (unlimited)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be bytes per second, a rate like '10M', or null")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{name} must not be negative")
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return parse_rate(value.strip())
        except TimetableError as e:  # one rate, not a timetable: say so, and what a rate is
            raise InvalidArgument(f"{name}: {value.strip()!r} is not a bandwidth: {e.reason}") from None
    raise InvalidArgument(f"{name} must be bytes per second, a rate like '10M', or null")


def schedule_value(name: str, value: Any) -> Schedule | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a timetable string or null")
    try:
        return Schedule.parse(value)
    except TimetableError as e:
        raise InvalidArgument(f"{name}: {e}") from None


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    max_bandwidth: int | None = None
    bandwidth_schedule: Schedule | None = None
    high_bandwidth: int | None = None
    normal_bandwidth: int | None = None
    low_bandwidth: int | None = None
    foreground_limited: bool = False
    #: BITS group-policy form: "Mon-Fri 08-17" with one limit inside, another outside
    work_hours: str | None = None
    work_bandwidth: int | None = None
    non_work_bandwidth: int | None = None
    max_background: int = 1
    time_slice_s: float = 60.0
    #: the cap on every job's MaxConnections (SPEC §9)
    max_connections_per_job: int = 32
    #: BackgroundYield: the priorities (0-3) that yield to other traffic (transfer.yieldctl)
    background_yield: frozenset[int] = frozenset({1, 2, 3})
    yield_target_delay_ms: float = 75.0
    overrides: frozenset[str] = field(default=frozenset())  # properties set at run time

    @classmethod
    def from_config(cls, config: Config) -> ServicePolicy:
        """Raises ValueError naming the bad setting."""
        try:
            return cls(
                max_bandwidth=rate_value("bandwidth_limit", config.bandwidth_limit),
                bandwidth_schedule=schedule_value("bandwidth_schedule", config.bandwidth_schedule),
                high_bandwidth=rate_value("high_priority_bandwidth", config.high_priority_bandwidth),
                normal_bandwidth=rate_value("normal_priority_bandwidth", config.normal_priority_bandwidth),
                low_bandwidth=rate_value("low_priority_bandwidth", config.low_priority_bandwidth),
                foreground_limited=config.foreground_limited,
                work_hours=work_hours_value("work_hours", config.work_hours),
                work_bandwidth=rate_value("work_bandwidth", config.work_bandwidth),
                non_work_bandwidth=rate_value("non_work_bandwidth", config.non_work_bandwidth),
                max_background=config.max_concurrent_background_jobs,
                time_slice_s=config.time_slice_s,
                max_connections_per_job=_convert(
                    "max_connections_per_job", "connections", config.max_connections_per_job
                ),
                background_yield=priorities_value("background_yield", config.background_yield),
                yield_target_delay_ms=delay_ms_value("yield_target_delay_ms", config.yield_target_delay_ms),
            )
        except InvalidArgument as e:
            raise ValueError(e.message) from None

    def with_changes(self, raw: Mapping[str, Any]) -> tuple[ServicePolicy, dict[str, str]]:
        """The policy after a PATCH, and the changes as JSON text to persist.

        All or nothing: the first bad property raises and nothing is returned.
        """
        names = {n.lower(): n for n in PROPERTIES}
        read_only = {n.lower(): n for n in READ_ONLY}
        changes: dict[str, Any] = {}
        persisted: dict[str, str] = {}
        for key, value in raw.items():
            k = str(key).lower()
            if k in read_only:
                raise ReadOnlyProperty(f"{read_only[k]} is read-only")
            if k not in names:
                raise InvalidArgument(f"unknown policy property {key!r}")
            name = names[k]
            attr, kind = PROPERTIES[name]
            changes[attr] = _convert(name, kind, value)
            persisted[name] = json.dumps(value)
        policy = replace(self, overrides=self.overrides | frozenset(persisted), **changes)
        return policy, persisted

    def with_persisted(self, settings: Mapping[str, str]) -> ServicePolicy:
        """Apply the run-time changes saved in the store (unknown keys are ignored)."""
        raw = {k: json.loads(v) for k, v in settings.items() if k in PROPERTIES}
        return self.with_changes(raw)[0] if raw else self

    def schedule(self) -> Schedule | None:
        """The weekly schedule in force: BandwidthSchedule, else the work-hours form."""
        if self.bandwidth_schedule is not None:
            return self.bandwidth_schedule
        if self.work_hours is not None:
            return _work_schedule(self.work_hours, self.work_bandwidth, self.non_work_bandwidth)
        return None

    def global_limit_at(self, when: datetime) -> int | None:
        schedule = self.schedule()
        return schedule.limit_at(when) if schedule is not None else self.max_bandwidth

    def per_priority(self) -> dict[int, int | None]:
        return {1: self.high_bandwidth, 2: self.normal_bandwidth, 3: self.low_bandwidth}

    def yielding(self) -> dict[int, bool]:
        """BackgroundYield by priority (0-3)."""
        return {p: p in self.background_yield for p in range(len(PRIORITY_NAMES))}

    def to_cim(self, now: datetime) -> dict[str, Any]:
        return {
            "MaxBandwidth": self.max_bandwidth,
            "BandwidthSchedule": None if self.bandwidth_schedule is None else str(self.bandwidth_schedule),
            "HighPriorityBandwidth": self.high_bandwidth,
            "NormalPriorityBandwidth": self.normal_bandwidth,
            "LowPriorityBandwidth": self.low_bandwidth,
            "ForegroundLimited": self.foreground_limited,
            "WorkHours": self.work_hours,
            "WorkBandwidth": self.work_bandwidth,
            "NonWorkBandwidth": self.non_work_bandwidth,
            "MaxConcurrentBackgroundJobs": self.max_background,
            "TimeSlice": self.time_slice_s,
            "MaxConnectionsPerJob": self.max_connections_per_job,
            "BackgroundYield": ",".join(PRIORITY_NAMES[p] for p in sorted(self.background_yield)),
            "YieldTargetDelayMs": self.yield_target_delay_ms,
            "CurrentBandwidthLimit": self.global_limit_at(now),
            "CurrentBandwidthLimitText": format_rate(self.global_limit_at(now)),
        }


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WORK_HOURS = re.compile(
    r"\s*([A-Za-z]{3})(?:-([A-Za-z]{3}))?\s+(\d{1,2})(?::00)?-(\d{1,2})(?::00)?\s*", re.ASCII
)


def parse_work_hours(text: str) -> tuple[tuple[int, ...], int, int]:
    """ "Mon-Fri 08-17" (or "08:00-17:00") -> (weekdays, start hour, end hour); ValueError."""
    m = _WORK_HOURS.fullmatch(text)
    if m is None:
        raise ValueError(f"work hours look like 'Mon-Fri 08-17', not {text!r}")
    first, last = (d.lower() if d else None for d in (m.group(1), m.group(2)))
    if first not in _DAYS or (last is not None and last not in _DAYS):
        raise ValueError(f"unknown weekday in {text!r}")
    a = _DAYS.index(first)
    b = _DAYS.index(last) if last is not None else a
    days = tuple(range(a, b + 1)) if a <= b else (*range(a, 7), *range(0, b + 1))
    start, end = int(m.group(3)), int(m.group(4))
    if not 0 <= start < end <= 24:
        raise ValueError(f"work hours must run forwards within a day: {text!r}")
    return days, start, end


def work_hours_value(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string like 'Mon-Fri 08-17' or null")
    try:
        parse_work_hours(value)
    except ValueError as e:
        raise InvalidArgument(f"{name}: {e}") from None
    return value.strip()


@functools.lru_cache(maxsize=8)
def _work_schedule(work_hours: str, work_bps: int | None, other_bps: int | None) -> Schedule:
    days, start, end = parse_work_hours(work_hours)
    return Schedule.bits(
        work_days=days, work_start=start, work_end=end, work_bps=work_bps, other_bps=other_bps
    )


def priorities_value(name: str, value: Any) -> frozenset[int]:
    """BackgroundYield from JSON: "HIGH,NORMAL,LOW" (any case, commas or spaces; "" or "none":
    none) or a list of those names."""
    if isinstance(value, str):
        words = [w for w in re.split(r"[\s,]+", value.strip()) if w]
        words = [] if [w.lower() for w in words] == ["none"] else words
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = value
    else:
        raise InvalidArgument(f"{name} must list priorities, like 'HIGH,NORMAL,LOW' (or '' for none)")
    out = set()
    for word in words:
        if word.upper() not in PRIORITY_NAMES:
            raise InvalidArgument(f"{name}: {word!r} is not a priority ({', '.join(PRIORITY_NAMES)})")
        out.add(PRIORITY_NAMES.index(word.upper()))
    return frozenset(out)


def delay_ms_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 10000:
        raise InvalidArgument(f"{name} must be a number of milliseconds from 1 to 10000")
    return float(value)


def _convert(name: str, kind: str, value: Any) -> Any:
    if kind == "priorities":
        return priorities_value(name, value)
    if kind == "delay_ms":
        return delay_ms_value(name, value)
    if kind == "rate":
        return rate_value(name, value)
    if kind == "schedule":
        return schedule_value(name, value)
    if kind == "work_hours":
        return work_hours_value(name, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name} must be true or false")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidArgument(f"{name} must be an integer from 1 to 1000")
        return value
    if kind == "connections":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise InvalidArgument(f"{name} must be an integer from 1 to 32")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= value <= 86400:
        raise InvalidArgument(f"{name} must be a number of seconds from 0.1 to 86400")
    return float(value)
