"""Pure scheduling decisions: no I/O, no clock of its own, tested without servers.

``plan`` looks at every job's state and deadlines and says which jobs to start,
which to pre-empt, which retries are due, which jobs ran out of NoProgressTimeout
or MaximumDownloadTime, which were inactive too long, and when to look again.
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
    run_started_ns: int = 0  # entered CONNECTING; 0 when not running
    queued_ns: int = 0  # entered QUEUED; 0 when unknown (after a restart)
    maximum_download_time_s: int = 0  # 0: no limit
    download_time_ns: int = 0  # running time before the current run
    modified_ns: int = 0  # last activity
    blocked_by_policy: bool = False  # in TRANSIENT_ERROR because its bandwidth limit is 0


@dataclass(slots=True)
class Plan:
    start: list[str] = field(default_factory=list)
    preempt: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    timeout: list[str] = field(default_factory=list)  # NoProgressTimeout: TRANSIENT_ERROR -> ERROR
    download_timeout: list[str] = field(default_factory=list)  # MaximumDownloadTime -> ERROR
    inactive: list[str] = field(default_factory=list)  # job inactivity timeout -> CANCELLED
    block: list[str] = field(default_factory=list)  # limit 0 -> TRANSIENT_ERROR, BLOCKED_BY_POLICY
    wake_at_ns: int | None = None


RUNNING = (JobState.CONNECTING, JobState.TRANSFERRING)
_S = 10**9


def no_progress_deadline_ns(job: JobView) -> int | None:
    if job.state is not JobState.TRANSIENT_ERROR or not job.no_progress_since_ns:
        return None
    return job.no_progress_since_ns + job.no_progress_timeout_s * _S


def download_deadline_ns(job: JobView) -> int | None:
    if job.state not in RUNNING or not job.maximum_download_time_s or not job.run_started_ns:
        return None
    return job.run_started_ns + job.maximum_download_time_s * _S - job.download_time_ns


def plan(
    jobs: Iterable[JobView],
    now_ns: int,
    max_background: int = 1,
    *,
    time_slice_s: float = 60.0,
    inactivity_timeout_s: int = 0,
    blocked: frozenset[int] = frozenset(),
) -> Plan:
    """Decide what happens next.

    FOREGROUND jobs all run.  Background jobs run by priority (HIGH > NORMAL > LOW), at
    most ``max_background`` at once.  Within a priority it is round robin: a running job
    keeps its slot until its time slice ends *and* a job of the same priority waits;
    then it goes back to the queue behind the jobs that waited.  A higher priority job
    takes a slot from a lower one at once.  ``inactivity_timeout_s`` 0 means never.
    Priorities in ``blocked`` have a bandwidth limit of 0 now: their jobs wait in
    TRANSIENT_ERROR (BG_E_BLOCKED_BY_POLICY) and are retried when the limit lifts.
    """
    slice_ns = int(time_slice_s * _S)
    result = Plan()
    wake: list[int] = []
    # (job, running, order): order is when the job became a candidate for a slot
    candidates: list[tuple[JobView, bool, int]] = []
    for job in jobs:
        if job.state.is_final:
            continue
        if inactivity_timeout_s and job.state not in RUNNING:
            inactive_at = job.modified_ns + inactivity_timeout_s * _S
            if inactive_at <= now_ns:
                result.inactive.append(job.job_id)
                continue
            wake.append(inactive_at)
        if int(job.priority) in blocked:
            if job.state is JobState.QUEUED or job.state in RUNNING:
                result.block.append(job.job_id)
            if job.state is not JobState.TRANSIENT_ERROR or job.blocked_by_policy:
                continue
        elif job.state is JobState.TRANSIENT_ERROR and job.blocked_by_policy:
            result.retry.append(job.job_id)  # the limit lifted
            candidates.append((job, False, now_ns))
            continue
        if job.state is JobState.TRANSIENT_ERROR:
            deadline = no_progress_deadline_ns(job)
            if deadline is not None and deadline <= now_ns:
                result.timeout.append(job.job_id)
            elif job.retry_at_ns <= now_ns:
                result.retry.append(job.job_id)
                candidates.append((job, False, now_ns))
            else:
                wake.append(job.retry_at_ns)
                if deadline is not None:
                    wake.append(deadline)
        elif job.state is JobState.QUEUED:
            candidates.append((job, False, job.queued_ns))
        elif job.state in RUNNING:
            deadline = download_deadline_ns(job)
            if deadline is not None:
                if deadline <= now_ns:
                    result.download_timeout.append(job.job_id)
                    continue
                wake.append(deadline)
            candidates.append((job, True, job.run_started_ns))

    _admit(candidates, now_ns, max_background, slice_ns, result, wake)
    result.wake_at_ns = min(wake) if wake else None
    return result


def _admit(
    candidates: list[tuple[JobView, bool, int]],
    now_ns: int,
    max_background: int,
    slice_ns: int,
    result: Plan,
    wake: list[int],
) -> None:
    """Which of the candidates (job, running, order) hold a slot: every FOREGROUND job;
    background ones by priority, then inside-their-slice first, then in the order they
    became candidates, at most ``max_background``; a running job past the line is pre-empted."""
    background: list[tuple[tuple[int, int, int, int], JobView, bool]] = []
    for job, running, order in candidates:
        if job.priority is JobPriority.FOREGROUND:
            if not running:
                result.start.append(job.job_id)
            continue
        # A running job whose start is unknown (0) is taken to be inside its slice.
        slice_end = job.run_started_ns + slice_ns if job.run_started_ns else now_ns + slice_ns
        if running and slice_end > now_ns:
            key = (int(job.priority), 0, order, job.seq)  # inside its slice: keeps the slot
        elif running:
            key = (int(job.priority), 1, now_ns, job.seq)  # slice over: to the back of the line
        else:
            key = (int(job.priority), 1, order, job.seq)
        background.append((key, job, running))
    background.sort(key=lambda item: item[0])

    waiting = {int(job.priority) for _, job, running in background if not running}
    for index, (_, job, running) in enumerate(background):
        if index < max_background:
            if not running:
                result.start.append(job.job_id)
            elif int(job.priority) in waiting and job.run_started_ns + slice_ns > now_ns:
                wake.append(job.run_started_ns + slice_ns)  # look again when the slice ends
        elif running:
            result.preempt.append(job.job_id)


def retry_delay_s(
    minimum_s: float,
    attempt: int,
    *,
    retry_after_s: float | None = None,
    backoff: bool = False,
    backoff_max_s: float = 3600.0,
    jitter: float = 0.0,
) -> float:
    """Seconds to wait before retrying after the ``attempt``-th transient error in a row.

    BITS waits MinimumRetryDelay every time.  With ``backoff`` (an extension) the delay
    doubles per attempt up to ``backoff_max_s``, spread by ``jitter`` (-1..1, ±20 %) so
    many jobs failing together do not retry together; MinimumRetryDelay stays the floor and
    a server's Retry-After is always honoured.
    """
    delay = float(minimum_s)
    if backoff and attempt > 1:
        grown = minimum_s * 2.0 ** min(attempt - 1, 32)
        delay = max(minimum_s, min(backoff_max_s, grown) * (1.0 + 0.2 * max(-1.0, min(1.0, jitter))))
    return max(delay, retry_after_s or 0.0)
