"""Finished jobs (ACKNOWLEDGED, CANCELLED) leave the service's memory once stored: memory holds
the live queue only, however many jobs went through (the soak's RSS stays flat). They stay
readable from the store with IncludeFinished for finished_retention_s, then are deleted.
On a Service without a daemon, with a real SQLite store and a clock moved by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openbits.api import metrics
from openbits.caller import Caller
from openbits.clock import ManualClock
from openbits.config import Config
from openbits.errors import BitsError
from openbits.model import JobPriority, JobState
from openbits.service import Service
from openbits.store.sqlite import SqliteStore

ALICE = Caller("alice", 4001, 4001)
BOB = Caller("bob", 4002, 4002)


def _service(tmp_path: Path, clock: ManualClock) -> Service:
    config = Config(state_dir=str(tmp_path), finished_retention_s=3600)
    service = Service(SqliteStore(config.db_path), config, clock=clock)
    service.recover()
    return service


def test_a_finished_job_leaves_memory_and_is_read_from_the_store(tmp_path: Path) -> None:
    clock = ManualClock()
    service = _service(tmp_path, clock)

    async def run() -> tuple[str, str]:
        gone = (await service.create_job(ALICE, {"DisplayName": "gone", "Priority": 1})).job_id
        kept = (await service.create_job(ALICE, {"DisplayName": "kept"})).job_id
        await service.set_job_state(ALICE, gone, {"JobState": 0})  # cancel
        return gone, kept

    gone, kept = asyncio.run(run())
    assert set(service.jobs) == {kept}, "only the live queue is in memory"
    assert [j.job_id for j in service.enumerate(ALICE)] == [kept]
    with pytest.raises(BitsError) as e:
        service.find(ALICE, gone)
    assert e.value.name == "BG_E_NOT_FOUND"
    for ref in (gone, gone.lower().strip("{}"), "gone"):
        job = service.find(ALICE, ref, include_finished=True)
        assert (job.job_id, job.state, job.priority) == (gone, JobState.CANCELLED, JobPriority.HIGH)
    with pytest.raises(BitsError):
        service.find(BOB, gone, include_finished=True)  # still nobody else's
    assert service.finished_counts() == {(JobState.CANCELLED, JobPriority.HIGH): 1}
    assert service.finished_counts(BOB.uid) == {}
    text = metrics.render(service, ALICE, 0.0)
    assert 'openbits_jobs{state="CANCELLED",priority="HIGH"} 1' in text

    # a restart loads the live queue alone; the finished job is still readable
    service = _service(tmp_path, clock)
    assert set(service.jobs) == {kept}
    assert service.find(ALICE, gone, include_finished=True).state is JobState.CANCELLED

    # past the retention period it is deleted
    clock.advance(3599)
    assert (
        service.purge_finished()
        == service.find(ALICE, gone, include_finished=True).finished_ns + 3600 * 10**9
    )
    clock.advance(1)
    assert service.purge_finished() is None
    with pytest.raises(BitsError):
        service.find(ALICE, gone, include_finished=True)
    assert service.finished_counts() == {}
    assert set(service.jobs) == {kept}


def test_a_long_poll_on_a_finished_job_answers_at_once_and_leaves_no_waiter(tmp_path: Path) -> None:
    service = _service(tmp_path, ManualClock())

    async def run() -> None:
        job_id = (await service.create_job(ALICE, {"DisplayName": "done"})).job_id
        await service.set_job_state(ALICE, job_id, {"JobState": 0})  # cancel
        finished = service.find(ALICE, job_id, include_finished=True)
        async with asyncio.timeout(5):  # (it would wait the whole 30 s)
            await service.wait_while(finished, frozenset({JobState.CANCELLED}), 30)

    asyncio.run(run())
    assert service._waiters == {}
