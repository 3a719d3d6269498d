"""The scheduling rules, on the service and the scheduler in this process (tests/support/
driver.py): a real store and downloader, a clock moved by hand, no daemon and no sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from openbits.errors import HResult
from openbits.model import JobPriority, JobState
from tests.support.driver import ME, REFUSED_URL, Driver

S = 10**9


def source(tmp_path: Path, name: str = "src.bin", size: int = 4096) -> str:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * (size // 256))
    return str(path)


def test_a_higher_priority_takes_the_slot_at_once_and_the_other_resumes_after(tmp_path: Path) -> None:
    async def run() -> None:
        async with Driver(tmp_path) as d:
            src = source(tmp_path)
            low = await d.job(src, priority=JobPriority.LOW)
            d.tick()
            assert low.state is JobState.CONNECTING
            high = await d.job(src, priority=JobPriority.HIGH)
            d.tick()
            assert (high.state, low.state) == (JobState.CONNECTING, JobState.QUEUED), "pre-empted"
            await d.settle()
            assert (high.state, low.state) == (JobState.TRANSFERRED, JobState.TRANSFERRED)
            assert high.transferred_ns <= low.transferred_ns

    asyncio.run(run())


def test_same_priority_is_round_robin_after_the_time_slice(tmp_path: Path) -> None:
    async def run() -> None:
        async with Driver(tmp_path) as d:
            src = source(tmp_path)
            first, second = await d.job(src), await d.job(src)
            started = d.clock.now_ns()
            d.tick()
            assert (first.state, second.state) == (JobState.CONNECTING, JobState.QUEUED)
            slice_ns = int(d.service.policy.time_slice_s * S)
            d.advance_to(started + slice_ns - 1)
            d.tick()
            assert (first.state, second.state) == (JobState.CONNECTING, JobState.QUEUED), "inside its slice"
            d.advance_to(started + slice_ns)
            d.tick()
            assert (first.state, second.state) == (JobState.QUEUED, JobState.CONNECTING), "its turn is over"
            await d.settle()
            assert (first.state, second.state) == (JobState.TRANSFERRED, JobState.TRANSFERRED)

    asyncio.run(run())


def test_a_transient_error_is_retried_after_minimum_retry_delay_and_not_before(tmp_path: Path) -> None:
    async def run() -> None:
        async with Driver(tmp_path) as d:
            job = await d.job(REFUSED_URL)
            d.service.patch(ME, job.job_id, {"MinimumRetryDelay": 30})
            failed_at = d.clock.now_ns()
            await d.settle()
            assert job.state is JobState.TRANSIENT_ERROR
            assert job.error is not None and job.error.hresult != HResult.E_FAIL
            assert (job.retry_at_ns, job.transient_error_count) == (failed_at + 30 * S, 1)
            d.advance_to(job.retry_at_ns - 1)
            await d.settle()
            assert (job.state, job.transient_error_count) == (JobState.TRANSIENT_ERROR, 1), "not yet"
            d.advance_to(job.retry_at_ns)
            await d.settle()
            assert (job.state, job.transient_error_count) == (JobState.TRANSIENT_ERROR, 2), "tried again"
            assert job.retry_at_ns == failed_at + 60 * S

    asyncio.run(run())


def test_no_progress_for_no_progress_timeout_is_an_error(tmp_path: Path) -> None:
    async def run() -> None:
        async with Driver(tmp_path) as d:
            job = await d.job(REFUSED_URL)
            d.service.patch(ME, job.job_id, {"MinimumRetryDelay": 30, "NoProgressTimeout": 50})
            first_failure = d.clock.now_ns()
            await d.settle()
            d.advance_to(job.retry_at_ns)
            await d.settle()
            assert (job.state, job.transient_error_count) == (JobState.TRANSIENT_ERROR, 2)
            deadline = await d.settle()
            assert deadline == first_failure + 50 * S, "the scheduler wakes at the timeout, before the retry"
            d.advance_to(deadline)
            await d.settle()
            assert job.state is JobState.ERROR
            assert job.error is not None and job.error.hresult != HResult.E_FAIL, "the last error is kept"
            assert d.store.load_job(job.job_id).state is JobState.ERROR  # type: ignore[union-attr]

    asyncio.run(run())


def test_without_no_progress_timeout_a_transient_error_is_an_error_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        async with Driver(tmp_path) as d:
            job = await d.job(REFUSED_URL)
            d.service.patch(ME, job.job_id, {"NoProgressTimeout": 0})
            await d.settle()
            assert (job.state, job.transient_error_count) == (JobState.ERROR, 0)

    asyncio.run(run())
