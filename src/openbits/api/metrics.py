"""Prometheus metrics (``GET /metrics``, text exposition format 0.0.4).

Jobs by state and priority are the caller's own (an administrator sees every user's); the
counters are the daemon's since it started, for every user: they carry no names, URLs or paths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from openbits import __version__
from openbits.caller import Caller
from openbits.model import Job, JobPriority, JobState
from openbits.service import Service

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(service: Service, caller: Caller, throttled_s: float) -> str:
    """The exposition text for ``caller``; ``throttled_s``: seconds transfers waited on the
    bandwidth limits."""
    jobs: Iterable[Job] = service.jobs.values()
    if not caller.is_admin:
        jobs = (j for j in jobs if j.owner_uid == caller.uid)
    by = Counter((j.state, j.priority) for j in jobs)
    by.update(service.finished_counts(None if caller.is_admin else caller.uid))  # (kept in the store)
    c = service.counters
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    metric(
        "openbits_jobs",
        "gauge",
        "Jobs by state and priority (the caller's own; an administrator's: all).",
        (
            (f'{{state="{state.name}",priority="{priority.name}"}}', by[(state, priority)])
            for state in JobState
            for priority in JobPriority
        ),
    )
    metric(
        "openbits_bytes_transferred_total",
        "counter",
        "Bytes made durable in temporary files by transfers since the daemon started.",
        [("", c.bytes_transferred)],
    )
    metric(
        "openbits_files_transferred_total",
        "counter",
        "Files transferred whole since the daemon started.",
        [("", c.files_transferred)],
    )
    metric(
        "openbits_transient_errors_total",
        "counter",
        "Transient errors of jobs (TRANSIENT_ERROR, retried) since the daemon started.",
        [("", c.transient_errors)],
    )
    metric(
        "openbits_errors_total",
        "counter",
        "Errors that put a job in ERROR since the daemon started.",
        [("", c.errors)],
    )
    metric(
        "openbits_throttled_seconds_total",
        "counter",
        "Seconds transfers waited on the bandwidth limits since the daemon started.",
        [("", throttled_s)],
    )
    metric("openbits_build_info", "gauge", "The daemon's version.", [(f'{{version="{__version__}"}}', 1)])
    metric(
        "openbits_start_time_seconds", "gauge", "When the daemon started (Unix time).", [("", c.started_s)]
    )
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
