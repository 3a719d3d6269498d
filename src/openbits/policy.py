"""The service-wide policy: bandwidth limits, their weekly schedule, and scheduling knobs.

Defaults come from the config file; an administrator changes them at run time through
``BitsServicePolicy`` (the service persists the changes, the scheduler applies them at
once, without restarting transfers).  Pure data and validation: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from openbits.config import Config
from openbits.errors import InvalidArgument, ReadOnlyProperty
from openbits.transfer.throttle import Schedule, TimetableError, format_rate, parse_rate

#: WMI-style property name -> (attribute, kind)
PROPERTIES: dict[str, tuple[str, str]] = {
    "MaxBandwidth": ("max_bandwidth", "rate"),
    "BandwidthSchedule": ("bandwidth_schedule", "schedule"),
    "HighPriorityBandwidth": ("high_bandwidth", "rate"),
    "NormalPriorityBandwidth": ("normal_bandwidth", "rate"),
    "LowPriorityBandwidth": ("low_bandwidth", "rate"),
    "ForegroundLimited": ("foreground_limited", "bool"),
    "MaxConcurrentBackgroundJobs": ("max_background", "count"),
    "TimeSlice": ("time_slice_s", "seconds"),
}
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
        except TimetableError as e:
            raise InvalidArgument(f"{name}: {e}") from None
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
    max_background: int = 1
    time_slice_s: float = 60.0
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
                max_background=config.max_concurrent_background_jobs,
                time_slice_s=config.time_slice_s,
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

    def global_limit_at(self, when: datetime) -> int | None:
        if self.bandwidth_schedule is not None:
            return self.bandwidth_schedule.limit_at(when)
        return self.max_bandwidth

    def per_priority(self) -> dict[int, int | None]:
        return {1: self.high_bandwidth, 2: self.normal_bandwidth, 3: self.low_bandwidth}

    def to_cim(self, now: datetime) -> dict[str, Any]:
        return {
            "MaxBandwidth": self.max_bandwidth,
            "BandwidthSchedule": None if self.bandwidth_schedule is None else str(self.bandwidth_schedule),
            "HighPriorityBandwidth": self.high_bandwidth,
            "NormalPriorityBandwidth": self.normal_bandwidth,
            "LowPriorityBandwidth": self.low_bandwidth,
            "ForegroundLimited": self.foreground_limited,
            "MaxConcurrentBackgroundJobs": self.max_background,
            "TimeSlice": self.time_slice_s,
            "CurrentBandwidthLimit": self.global_limit_at(now),
            "CurrentBandwidthLimitText": format_rate(self.global_limit_at(now)),
        }


def _convert(name: str, kind: str, value: Any) -> Any:
    if kind == "rate":
        return rate_value(name, value)
    if kind == "schedule":
        return schedule_value(name, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name} must be true or false")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidArgument(f"{name} must be an integer from 1 to 1000")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= value <= 86400:
        raise InvalidArgument(f"{name} must be a number of seconds from 0.1 to 86400")
    return float(value)
