"""Prometheus metrics (``GET /metrics``, text exposition format 0.0.4).

Jobs by state and priority are the caller's own (an administrator sees every user's); the
counters are the daemon's since it started, for every user: they carry no names, URLs or paths.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from openbits import __version__
from openbits.caller import Caller
from openbits.model import Job, JobPriority, JobState
from openbits.service import Service
from openbits.transfer.offload import Stats
from openbits.transfer.yieldctl import Running

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(service: Service, caller: Caller, throttled_s: float, yielding: Iterable[Running] = ()) -> str:
    """The exposition text for ``caller``; ``throttled_s``: seconds transfers waited on the
    bandwidth limits; ``yielding``: the BackgroundYield controllers of the running transfers."""
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
    polite = _yielding(yielding, caller)
    metric(
        "openbits_yield_added_delay_ms",
        "gauge",
        "Queueing delay (ms) each running BackgroundYield job is estimated to add on its path.",
        ((labels, delay_ms) for labels, (delay_ms, _, _) in polite.items()),
    )
    metric(
        "openbits_yield_rate_bytes_per_second",
        "gauge",
        "The rate (bytes/s) each running BackgroundYield job receives at now (its controller's estimate).",
        ((labels, rate) for labels, (_, rate, _) in polite.items()),
    )
    metric(
        "openbits_yield_pace_bytes_per_second",
        "gauge",
        "The pace (bytes/s) each running BackgroundYield job holds itself to; +Inf: not paced.",
        ((labels, pace) for labels, (_, _, pace) in polite.items()),
    )
    metric("openbits_build_info", "gauge", "The daemon's version.", [(f'{{version="{__version__}"}}', 1)])
    metric(
        "openbits_start_time_seconds", "gauge", "When the daemon started (Unix time).", [("", c.started_s)]
    )
    return "\n".join(out) + "\n"


def fetch_worker(stats: Stats) -> str:
    """The fetch worker's metrics (``transfer/offload.py``; all zero when the daemon has
    none): whether one runs, its lanes open, and since the daemon started its files done and
    handed back, and the workers started and lost."""
    lines: list[str] = []
    for name, kind, help_text, value in (
        (
            "openbits_fetch_worker_running",
            "gauge",
            "Whether a fetch worker process is running (1) or not (0).",
            int(stats.running),
        ),
        (
            "openbits_fetch_worker_lanes",
            "gauge",
            "Lanes (runs of a job's small files) open in the fetch worker.",
            stats.lanes,
        ),
        (
            "openbits_fetch_worker_files_total",
            "counter",
            "Files the fetch worker reported fetched since the daemon started.",
            stats.files_done,
        ),
        (
            "openbits_fetch_worker_handed_back_total",
            "counter",
            "Files the fetch worker handed back to the daemon (announced too big) since the daemon started.",
            stats.handed_back,
        ),
        (
            "openbits_fetch_worker_starts_total",
            "counter",
            "Fetch worker processes started since the daemon started.",
            stats.started,
        ),
        (
            "openbits_fetch_worker_lost_total",
            "counter",
            "Fetch worker processes lost (died or killed while in use) since the daemon started.",
            stats.lost,
        ),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"


def _yielding(running: Iterable[Running], caller: Caller) -> dict[str, tuple[float, float, float]]:
    """Per job (the caller's own; an administrator's: all), over its controllers (one per
    remote host): the largest added delay in ms, the sum of the rates it receives at, and the
    sum of its paces (+Inf when one is unpaced)."""
    out: dict[str, tuple[float, float, float]] = {}
    for one in running:
        if not caller.is_admin and one.owner_uid != caller.uid:
            continue
        labels = f'{{job="{one.job_id}",priority="{JobPriority(one.priority).name}"}}'
        controller = one.controller
        delay_ms = controller.queue_delay_s * 1000.0
        rate = controller.arrival_bps or 0.0
        pace = math.inf if controller.rate_bps is None else controller.rate_bps
        if labels in out:
            before = out[labels]
            delay_ms, rate, pace = max(delay_ms, before[0]), rate + before[1], pace + before[2]
        out[labels] = (round(delay_ms, 3), round(rate), pace if math.isinf(pace) else round(pace))
    return out


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
