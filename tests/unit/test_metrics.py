"""api.metrics.render: scoping of the job gauges, exposition format."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from openbits.api import metrics
from openbits.caller import Caller
from openbits.config import Config
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from openbits.transfer.offload import Stats
from openbits.transfer.yieldctl import Politeness


def _service(tmp_path: Path) -> Service:
    config = Config(state_dir=str(tmp_path))
    return Service(SqliteStore(config.db_path), config)


def test_a_user_sees_only_their_jobs_and_an_administrator_all(tmp_path: Path) -> None:
    service = _service(tmp_path)
    alice = Caller("alice", 4001, 4001)
    bob = Caller("bob", 4002, 4002)
    admin = Caller("root", 0, 0, is_admin=True)

    async def create() -> None:
        await service.create_job(alice, {"DisplayName": "a"})
        await service.create_job(alice, {"DisplayName": "b"})
        await service.create_job(bob, {"DisplayName": "c"})

    asyncio.run(create())
    line = 'openbits_jobs{state="SUSPENDED",priority="NORMAL"} '
    assert line + "2\n" in metrics.render(service, alice, 0.0)
    assert line + "1\n" in metrics.render(service, bob, 0.0)
    assert line + "3\n" in metrics.render(service, admin, 1.5)
    assert "openbits_throttled_seconds_total 1.5\n" in metrics.render(service, admin, 1.5)


def test_every_sample_has_help_and_type(tmp_path: Path) -> None:
    text = metrics.render(_service(tmp_path), Caller("alice", 4001, 4001), 0.0)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for name in names:
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text, name
    assert text.endswith("\n")


def test_the_start_time_is_the_services_not_the_imports(tmp_path: Path) -> None:
    before = time.time()
    text = metrics.render(_service(tmp_path), Caller("alice", 4001, 4001), 0.0)
    (line,) = (line for line in text.splitlines() if line.startswith("openbits_start_time_seconds "))
    assert before <= float(line.split()[1]) <= time.time()


def test_background_yield_controllers_are_shown_per_job_to_their_owner(tmp_path: Path) -> None:
    service = _service(tmp_path)
    politeness = Politeness()
    paced = politeness.start("{A}", 4001, 2)
    paced.controller.on_rtt(0.020, 0.0)
    paced.controller.on_bytes(0, 0.0)
    paced.controller.on_bytes(1_000_000, 0.1)
    for i in range(4):
        paced.controller.on_rtt(0.120, 1.0 + i / 100)  # 100 ms over the base: backs off
    politeness.start("{B}", 4002, 3)  # bob's, unpaced
    running = list(politeness.running.values())
    alice = metrics.render(service, Caller("alice", 4001, 4001), 0.0, running)
    assert 'openbits_yield_added_delay_ms{job="{A}",priority="NORMAL"} 100\n' in alice
    # (the rate it receives at: 1 MB in 0.1 s; the pace it holds itself to: half of that)
    assert 'openbits_yield_rate_bytes_per_second{job="{A}",priority="NORMAL"} 10000000\n' in alice
    assert 'openbits_yield_pace_bytes_per_second{job="{A}",priority="NORMAL"} 5000000\n' in alice
    assert "{B}" not in alice
    admin = metrics.render(service, Caller("root", 0, 0, is_admin=True), 0.0, running)
    assert 'openbits_yield_pace_bytes_per_second{job="{B}",priority="LOW"} +Inf\n' in admin
    assert 'openbits_yield_rate_bytes_per_second{job="{B}",priority="LOW"} 0\n' in admin


def test_the_fetch_worker_metrics_are_its_stats_and_zero_without_one() -> None:
    text = metrics.fetch_worker(Stats(running=True, lanes=2, files_done=7, handed_back=1, started=3, lost=1))
    for line in (
        "openbits_fetch_worker_running 1",
        "openbits_fetch_worker_lanes 2",
        "openbits_fetch_worker_files_total 7",
        "openbits_fetch_worker_handed_back_total 1",
        "openbits_fetch_worker_starts_total 3",
        "openbits_fetch_worker_lost_total 1",
        "# TYPE openbits_fetch_worker_lanes gauge",
        "# TYPE openbits_fetch_worker_lost_total counter",
    ):
        assert line + "\n" in text
    assert "openbits_fetch_worker_running 0\n" in metrics.fetch_worker(Stats())
