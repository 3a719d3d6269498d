"""Pure scheduling decisions: no I/O, no clock of its own, tested without servers.

``plan`` looks at every job's state and deadlines and says which jobs to start,
which to pre-empt, which retries are due, which jobs ran out of NoProgressTimeout,
and when to look again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openbits.model import JobPriority, JobState


@dataclass(frozen=True, slots=True)
class JobView:
    job_id: str
    state: JobState
    priority: JobPriority
    seq: int  # creation order
    retry_at_ns: int = 0
    no_progress_since_ns: int = 0
    no_progress_timeout_s: int = 0


@dataclass(slots=True)
class Plan:
    start: list[str] = field(default_factory=list)
    preempt: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    timeout: list[str] = field(default_factory=list)
    wake_at_ns: int | None = None


RUNNING = (JobState.CONNECTING, JobState.TRANSFERRING)


def no_progress_deadline_ns(job: JobView) -> int | None:
    if job.state is not JobState.TRANSIENT_ERROR or not job.no_progress_since_ns:
        return None
    return job.no_progress_since_ns + job.no_progress_timeout_s * 10**9


def plan(jobs: Iterable[JobView], now_ns: int, max_background: int) -> Plan:
    """Decide what happens next.

    FOREGROUND jobs all run.  Background jobs run by priority (HIGH > NORMAL > LOW),
    at most ``max_background`` at once; within a priority a running job keeps its
    place over a queued one, then creation order decides.
    """
    result = Plan()
    runnable: list[tuple[JobView, bool]] = []
    wake: list[int] = []
    for job in jobs:
        if job.state is JobState.TRANSIENT_ERROR:
            deadline = no_progress_deadline_ns(job)
            if deadline is not None and deadline <= now_ns:
                result.timeout.append(job.job_id)
            elif job.retry_at_ns <= now_ns:
                result.retry.append(job.job_id)
                runnable.append((job, False))
            else:
                wake.append(job.retry_at_ns)
                if deadline is not None:
                    wake.append(deadline)
        elif job.state is JobState.QUEUED:
            runnable.append((job, False))
        elif job.state in RUNNING:
            runnable.append((job, True))

    background: list[tuple[JobView, bool]] = []
    for job, running in runnable:
        if job.priority is JobPriority.FOREGROUND:
            if not running:
                result.start.append(job.job_id)
        else:
            background.append((job, running))
    background.sort(key=lambda item: (int(item[0].priority), not item[1], item[0].seq))
    for index, (job, running) in enumerate(background):
        if index < max_background:
            if not running:
                result.start.append(job.job_id)
        elif running:
            result.preempt.append(job.job_id)
    result.wake_at_ns = min(wake) if wake else None
    return result
