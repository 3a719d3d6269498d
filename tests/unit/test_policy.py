"""Unit tests of openbits.scheduler.policy.plan: pure scheduling decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbits.model import JobPriority, JobState
from openbits.scheduler.policy import JobView, no_progress_deadline_ns, plan

NOW = 1_700_000_000 * 10**9
SEC = 10**9
P = JobPriority
S = JobState


def view(
    job_id: str,
    state: JobState = S.QUEUED,
    priority: JobPriority = P.NORMAL,
    seq: int = 0,
    *,
    retry_at_ns: int = 0,
    no_progress_since_ns: int = 0,
    no_progress_timeout_s: int = 1_209_600,
) -> JobView:
    return JobView(
        job_id=job_id,
        state=state,
        priority=priority,
        seq=seq,
        retry_at_ns=retry_at_ns,
        no_progress_since_ns=no_progress_since_ns,
        no_progress_timeout_s=no_progress_timeout_s,
    )


def test_empty_plan() -> None:
    result = plan([], NOW, max_background=1)
    assert result.start == []
    assert result.preempt == []
    assert result.retry == []
    assert result.timeout == []
    assert result.wake_at_ns is None


# -- foreground ------------------------------------------------------------------------------


def test_foreground_jobs_all_start() -> None:
    jobs = [view(f"f{i}", priority=P.FOREGROUND, seq=i) for i in range(5)]
    result = plan(jobs, NOW, max_background=1)
    assert sorted(result.start) == ["f0", "f1", "f2", "f3", "f4"]
    assert result.preempt == []


def test_foreground_jobs_do_not_use_background_slots() -> None:
    jobs = [
        view("f1", priority=P.FOREGROUND, seq=1),
        view("f2", S.TRANSFERRING, priority=P.FOREGROUND, seq=2),
        view("b1", priority=P.LOW, seq=3),
    ]
    result = plan(jobs, NOW, max_background=1)
    assert sorted(result.start) == ["b1", "f1"]
    assert result.preempt == []


def test_running_foreground_job_is_neither_started_nor_preempted() -> None:
    jobs = [view("f", S.CONNECTING, priority=P.FOREGROUND, seq=1)]
    result = plan(jobs, NOW, max_background=0)
    assert result.start == []
    assert result.preempt == []


def test_foreground_jobs_start_even_with_zero_background_slots() -> None:
    jobs = [view("f", priority=P.FOREGROUND), view("b", priority=P.HIGH)]
    result = plan(jobs, NOW, max_background=0)
    assert result.start == ["f"]


# -- background ordering ---------------------------------------------------------------------


def test_background_limited_to_max_background() -> None:
    jobs = [view(f"n{i}", priority=P.NORMAL, seq=i) for i in range(5)]
    assert plan(jobs, NOW, max_background=1).start == ["n0"]
    assert plan(jobs, NOW, max_background=3).start == ["n0", "n1", "n2"]


def test_background_by_priority_high_normal_low() -> None:
    jobs = [
        view("low", priority=P.LOW, seq=1),
        view("normal", priority=P.NORMAL, seq=2),
        view("high", priority=P.HIGH, seq=3),
    ]
    assert plan(jobs, NOW, max_background=1).start == ["high"]
    assert plan(jobs, NOW, max_background=2).start == ["high", "normal"]
    assert plan(jobs, NOW, max_background=3).start == ["high", "normal", "low"]


def test_creation_order_breaks_ties_within_a_priority() -> None:
    jobs = [view("c", seq=30), view("a", seq=10), view("b", seq=20)]
    assert plan(jobs, NOW, max_background=2).start == ["a", "b"]


def test_running_job_keeps_its_slot_over_an_equal_priority_queued_job() -> None:
    jobs = [view("queued-older", seq=1), view("running-newer", S.TRANSFERRING, seq=2)]
    result = plan(jobs, NOW, max_background=1)
    assert result.start == []
    assert result.preempt == []


def test_connecting_job_also_keeps_its_slot() -> None:
    jobs = [view("queued", seq=1), view("connecting", S.CONNECTING, seq=2)]
    result = plan(jobs, NOW, max_background=1)
    assert result.start == []
    assert result.preempt == []


def test_higher_priority_queued_job_preempts_a_lower_running_one() -> None:
    jobs = [view("running-low", S.TRANSFERRING, P.LOW, seq=1), view("queued-high", S.QUEUED, P.HIGH, seq=2)]
    result = plan(jobs, NOW, max_background=1)
    assert result.start == ["queued-high"]
    assert result.preempt == ["running-low"]


def test_lower_priority_queued_job_does_not_preempt() -> None:
    jobs = [view("running-high", S.TRANSFERRING, P.HIGH, seq=2), view("queued-low", S.QUEUED, P.LOW, 1)]
    result = plan(jobs, NOW, max_background=1)
    assert result.start == []
    assert result.preempt == []


def test_excess_running_jobs_are_preempted_when_slots_shrink() -> None:
    jobs = [view(f"r{i}", S.TRANSFERRING, seq=i) for i in range(3)]
    result = plan(jobs, NOW, max_background=1)
    assert result.start == []
    assert result.preempt == ["r1", "r2"]


# -- ignored states --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [S.SUSPENDED, S.ERROR, S.TRANSFERRED, S.ACKNOWLEDGED, S.CANCELLED],
    ids=lambda s: s.name,
)
@pytest.mark.parametrize("priority", [P.FOREGROUND, P.NORMAL], ids=lambda p: p.name)
def test_non_runnable_states_are_ignored(state: JobState, priority: JobPriority) -> None:
    result = plan([view("x", state, priority, retry_at_ns=NOW - SEC, no_progress_since_ns=1)], NOW, 1)
    assert result.start == []
    assert result.preempt == []
    assert result.retry == []
    assert result.timeout == []
    assert result.wake_at_ns is None


def test_ignored_jobs_do_not_take_a_slot() -> None:
    jobs = [view("s", S.SUSPENDED, P.HIGH, seq=1), view("e", S.ERROR, P.HIGH, seq=2), view("q", seq=3)]
    assert plan(jobs, NOW, max_background=1).start == ["q"]


# -- transient errors: retry, timeout, wake --------------------------------------------------


def test_due_retry_is_retried_and_runnable() -> None:
    job = view("t", S.TRANSIENT_ERROR, retry_at_ns=NOW - SEC, no_progress_since_ns=NOW - 60 * SEC)
    result = plan([job], NOW, max_background=1)
    assert result.retry == ["t"]
    assert result.start == ["t"]
    assert result.timeout == []


def test_retry_exactly_at_now_is_due() -> None:
    job = view("t", S.TRANSIENT_ERROR, retry_at_ns=NOW)
    result = plan([job], NOW, max_background=1)
    assert result.retry == ["t"]


def test_due_retry_competes_for_a_slot_by_priority() -> None:
    jobs = [
        view("t-low", S.TRANSIENT_ERROR, P.LOW, seq=1, retry_at_ns=NOW - SEC),
        view("q-high", S.QUEUED, P.HIGH, seq=2),
    ]
    result = plan(jobs, NOW, max_background=1)
    assert result.retry == ["t-low"]
    assert result.start == ["q-high"]


def test_future_retry_waits_and_sets_wake() -> None:
    job = view("t", S.TRANSIENT_ERROR, retry_at_ns=NOW + 30 * SEC)
    result = plan([job], NOW, max_background=1)
    assert result.retry == []
    assert result.start == []
    assert result.wake_at_ns == NOW + 30 * SEC


def test_no_progress_deadline_passed_times_out_instead_of_retrying() -> None:
    job = view(
        "t",
        S.TRANSIENT_ERROR,
        retry_at_ns=NOW - SEC,
        no_progress_since_ns=NOW - 100 * SEC,
        no_progress_timeout_s=50,
    )
    result = plan([job], NOW, max_background=1)
    assert result.timeout == ["t"]
    assert result.retry == []
    assert result.start == []


def test_no_progress_deadline_exactly_now_times_out() -> None:
    job = view(
        "t",
        S.TRANSIENT_ERROR,
        retry_at_ns=NOW + SEC,
        no_progress_since_ns=NOW - 50 * SEC,
        no_progress_timeout_s=50,
    )
    assert plan([job], NOW, max_background=1).timeout == ["t"]


def test_deadline_passed_before_future_retry_times_out() -> None:
    job = view(
        "t",
        S.TRANSIENT_ERROR,
        retry_at_ns=NOW + 600 * SEC,
        no_progress_since_ns=NOW - 100 * SEC,
        no_progress_timeout_s=10,
    )
    result = plan([job], NOW, max_background=1)
    assert result.timeout == ["t"]
    assert result.wake_at_ns is None


def test_wake_is_the_deadline_when_it_comes_before_the_retry() -> None:
    job = view(
        "t",
        S.TRANSIENT_ERROR,
        retry_at_ns=NOW + 600 * SEC,
        no_progress_since_ns=NOW - 10 * SEC,
        no_progress_timeout_s=30,
    )
    result = plan([job], NOW, max_background=1)
    assert result.timeout == []
    assert result.wake_at_ns == NOW + 20 * SEC


def test_wake_is_the_earliest_future_event_of_all_jobs() -> None:
    jobs = [
        view("a", S.TRANSIENT_ERROR, retry_at_ns=NOW + 90 * SEC),
        view("b", S.TRANSIENT_ERROR, retry_at_ns=NOW + 40 * SEC),
        view("c", S.TRANSIENT_ERROR, retry_at_ns=NOW + 70 * SEC),
        view("d", S.TRANSIENT_ERROR, retry_at_ns=NOW - SEC),  # due now: not a wake time
    ]
    result = plan(jobs, NOW, max_background=1)
    assert result.wake_at_ns == NOW + 40 * SEC
    assert result.retry == ["d"]


def test_no_deadline_without_no_progress_since() -> None:
    job = view("t", S.TRANSIENT_ERROR, retry_at_ns=NOW + SEC, no_progress_since_ns=0, no_progress_timeout_s=0)
    assert no_progress_deadline_ns(job) is None
    assert plan([job], NOW, 1).timeout == []


def test_deadline_only_for_transient_error() -> None:
    job = view("q", S.QUEUED, no_progress_since_ns=NOW - 100 * SEC, no_progress_timeout_s=1)
    assert no_progress_deadline_ns(job) is None
    assert plan([job], NOW, 1).timeout == []


def test_deadline_value() -> None:
    job = view("t", S.TRANSIENT_ERROR, no_progress_since_ns=NOW, no_progress_timeout_s=14)
    assert no_progress_deadline_ns(job) == NOW + 14 * SEC


# -- properties ------------------------------------------------------------------------------

_views = st.builds(
    view,
    job_id=st.uuids().map(str),
    state=st.sampled_from(JobState),
    priority=st.sampled_from(JobPriority),
    seq=st.integers(min_value=0, max_value=1000),
    retry_at_ns=st.integers(min_value=NOW - 100 * SEC, max_value=NOW + 100 * SEC),
    no_progress_since_ns=st.one_of(st.just(0), st.integers(min_value=NOW - 100 * SEC, max_value=NOW)),
    no_progress_timeout_s=st.integers(min_value=0, max_value=200),
)


@given(st.lists(_views, max_size=12, unique_by=lambda v: v.job_id), st.integers(min_value=0, max_value=4))
def test_plan_invariants(jobs: list[JobView], max_background: int) -> None:
    result = plan(jobs, NOW, max_background)
    by_id = {j.job_id: j for j in jobs}
    running = {j.job_id for j in jobs if j.state in (S.CONNECTING, S.TRANSFERRING)}
    # no job is listed twice or in conflicting lists
    assert len(result.start) == len(set(result.start))
    assert not set(result.start) & set(result.preempt)
    assert not set(result.retry) & set(result.timeout)
    # only runnable jobs start; only running ones are pre-empted
    for job_id in result.start:
        assert by_id[job_id].state in (S.QUEUED, S.TRANSIENT_ERROR)
        assert job_id not in running
    for job_id in result.preempt:
        assert job_id in running
        assert by_id[job_id].priority is not P.FOREGROUND
    for job_id in result.retry + result.timeout:
        assert by_id[job_id].state is S.TRANSIENT_ERROR
    # the background slots are never over-filled
    background_after = (running - set(result.preempt)) | set(result.start)
    background_after = {j for j in background_after if by_id[j].priority is not P.FOREGROUND}
    assert len(background_after) <= max_background
    # every queued foreground job starts
    for job in jobs:
        if job.state is S.QUEUED and job.priority is P.FOREGROUND:
            assert job.job_id in result.start
    # wake time is in the future
    if result.wake_at_ns is not None:
        assert result.wake_at_ns > NOW


# -- round robin, MaximumDownloadTime, inactivity ---------------------------------------------


def running(
    job_id: str, started_s_ago: float, priority: JobPriority = P.NORMAL, seq: int = 0, **kw: int
) -> JobView:
    return JobView(job_id, S.TRANSFERRING, priority, seq, run_started_ns=NOW - int(started_s_ago * SEC), **kw)


def queued(job_id: str, since_s_ago: float, priority: JobPriority = P.NORMAL, seq: int = 0) -> JobView:
    return JobView(job_id, S.QUEUED, priority, seq, queued_ns=NOW - int(since_s_ago * SEC))


def test_a_running_job_keeps_its_slot_inside_its_time_slice_and_wakes_at_its_end() -> None:
    result = plan([running("r", 10), queued("q", 5, seq=1)], NOW, 1, time_slice_s=60)
    assert result.start == [] and result.preempt == []
    assert result.wake_at_ns == NOW + 50 * SEC


def test_when_the_slice_ends_a_waiting_job_of_the_same_priority_takes_its_turn() -> None:
    result = plan([running("r", 61), queued("q", 5, seq=1)], NOW, 1, time_slice_s=60)
    assert result.start == ["q"] and result.preempt == ["r"]


def test_a_job_that_arrives_after_the_slice_ended_still_gets_a_turn() -> None:
    result = plan([running("r", 600), queued("q", 0.5, seq=1)], NOW, 1, time_slice_s=60)
    assert result.start == ["q"] and result.preempt == ["r"]


def test_an_expired_slice_with_nobody_waiting_keeps_running() -> None:
    result = plan([running("r", 600)], NOW, 1, time_slice_s=60)
    assert result.start == [] and result.preempt == []
    assert result.wake_at_ns is None


def test_round_robin_serves_the_longest_waiting_first() -> None:
    jobs = [running("r", 61), queued("late", 1, seq=1), queued("early", 30, seq=2)]
    assert plan(jobs, NOW, 1, time_slice_s=60).start == ["early"]


def test_a_lower_priority_waiting_job_does_not_end_a_slice() -> None:
    jobs = [running("r", 600, P.HIGH), queued("low", 100, P.LOW, seq=1)]
    result = plan(jobs, NOW, 1, time_slice_s=60)
    assert result.start == [] and result.preempt == []


def test_maximum_download_time_counts_earlier_runs() -> None:
    job = running("r", 30, maximum_download_time_s=100, download_time_ns=70 * SEC)
    assert plan([job], NOW, 1).download_timeout == ["r"]
    job = running("r", 30, maximum_download_time_s=100, download_time_ns=60 * SEC)
    result = plan([job], NOW, 1)
    assert result.download_timeout == []
    assert result.wake_at_ns == NOW + 10 * SEC


def test_maximum_download_time_zero_means_no_limit() -> None:
    job = running("r", 10**6, maximum_download_time_s=0, download_time_ns=10**18)
    assert plan([job], NOW, 1).download_timeout == []


def test_inactive_jobs_are_reported_and_running_ones_never() -> None:
    old = NOW - 91 * 86400 * SEC
    jobs = [
        JobView("idle", S.SUSPENDED, P.NORMAL, 0, modified_ns=old),
        JobView("err", S.ERROR, P.NORMAL, 1, modified_ns=old),
        JobView("fresh", S.SUSPENDED, P.NORMAL, 2, modified_ns=NOW),
        running("busy", 10, seq=3, modified_ns=old),
    ]
    result = plan(jobs, NOW, 1, inactivity_timeout_s=90 * 86400)
    assert sorted(result.inactive) == ["err", "idle"]
    assert result.wake_at_ns == NOW + 90 * 86400 * SEC


def test_retry_delay_is_minimum_retry_delay_as_in_bits() -> None:
    from openbits.scheduler.policy import retry_delay_s

    assert [retry_delay_s(600, n) for n in (1, 2, 10)] == [600, 600, 600]
    assert retry_delay_s(5, 3, retry_after_s=120) == 120, "Retry-After is honoured"


def test_retry_backoff_doubles_with_jitter_under_a_cap_and_above_the_floor() -> None:
    from openbits.scheduler.policy import retry_delay_s

    assert retry_delay_s(10, 1, backoff=True) == 10
    assert retry_delay_s(10, 2, backoff=True) == 20
    assert retry_delay_s(10, 4, backoff=True) == 80
    assert retry_delay_s(10, 50, backoff=True, backoff_max_s=300) == 300
    assert retry_delay_s(10, 4, backoff=True, jitter=1.0) == pytest.approx(96)
    assert retry_delay_s(10, 4, backoff=True, jitter=-1.0) == pytest.approx(64)
    assert retry_delay_s(10, 2, backoff=True, jitter=-1.0) == 16
    assert retry_delay_s(100, 9, backoff=True, backoff_max_s=50) == 100, "MinimumRetryDelay is the floor"


def test_a_blocked_priority_waits_in_transient_error_and_is_retried_when_the_limit_lifts() -> None:
    jobs = [
        queued("q", 1, seq=0),
        running("r", 1, seq=1),
        JobView("t", S.TRANSIENT_ERROR, P.NORMAL, 2, retry_at_ns=2**62, blocked_by_policy=True),
        queued("fg", 1, P.FOREGROUND, seq=3),
    ]
    blocked = plan(jobs, NOW, 2, blocked=frozenset({2}))
    assert sorted(blocked.block) == ["q", "r"] and blocked.retry == [] and blocked.start == ["fg"]
    lifted = plan(jobs[2:3], NOW, 2)
    assert lifted.retry == ["t"] and lifted.start == ["t"]
