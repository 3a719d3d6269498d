"""The service policy and the scheduler applying bandwidth limits, under an injected clock."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from openbits.caller import Caller
from openbits.clock import ManualClock
from openbits.config import Config
from openbits.errors import AccessDenied, InvalidArgument, ReadOnlyProperty
from openbits.policy import ServicePolicy
from openbits.scheduler.run import Scheduler
from openbits.service import Service
from openbits.store.sqlite import SqliteStore
from openbits.transfer.throttle import Throttle

MONDAY_0759 = datetime(2026, 11, 23, 7, 59, 59)  # a Monday, local time
ROOT = Caller("root", 0, 0, is_admin=True)
ALICE = Caller("alice", 1000, 1000)


def make(tmp_path: Path, clock: ManualClock, **config: object) -> tuple[Service, Scheduler, Throttle]:
    cfg = Config(state_dir=str(tmp_path), socket=str(tmp_path / "s"), **config)  # type: ignore[arg-type]
    service = Service(SqliteStore(cfg.db_path), cfg, clock)
    throttle = Throttle()
    scheduler = Scheduler(service, cfg, None, throttle, sync_threads=None)  # type: ignore[arg-type]
    return service, scheduler, throttle


def at(when: datetime) -> ManualClock:
    return ManualClock(int(when.timestamp() * 1e9))


def test_the_schedule_switches_limits_exactly_at_a_window_edge(tmp_path: Path) -> None:
    clock = at(MONDAY_0759)
    _, scheduler, throttle = make(tmp_path, clock, bandwidth_schedule="Mon-08:00,1M Mon-18:00,off")
    wake = scheduler.apply_bandwidth(clock.now_ns())
    assert throttle.global_bps is None, "before 08:00 the 18:00 'off' entry applies"
    assert wake == int(datetime(2026, 11, 23, 8, 0).timestamp() * 1e9), "wake exactly at the edge"
    clock.advance(1)
    wake = scheduler.apply_bandwidth(clock.now_ns())
    assert throttle.global_bps == 1024 * 1024
    assert wake == int(datetime(2026, 11, 23, 18, 0).timestamp() * 1e9)
    clock.advance(10 * 3600)
    scheduler.apply_bandwidth(clock.now_ns())
    assert throttle.global_bps is None


def test_config_limits_reach_the_throttle_and_foreground_is_exempt(tmp_path: Path) -> None:
    clock = at(MONDAY_0759)
    _, scheduler, throttle = make(
        tmp_path, clock, bandwidth_limit="10M", low_priority_bandwidth="512k", high_priority_bandwidth=""
    )
    assert scheduler.apply_bandwidth(clock.now_ns()) is None
    assert throttle.global_bps == 10 * 1024 * 1024
    assert throttle.per_priority[3] == 512 * 1024 and throttle.per_priority[1] is None
    assert not throttle.is_limited(0) and throttle.is_limited(2)


def test_policy_changes_are_admin_only_validated_all_or_nothing_and_persisted(tmp_path: Path) -> None:
    clock = at(MONDAY_0759)
    service, scheduler, throttle = make(tmp_path, clock)
    with pytest.raises(AccessDenied):
        service.set_policy(ALICE, {"MaxBandwidth": "1M"})
    with pytest.raises(InvalidArgument, match="BandwidthSchedule"):
        service.set_policy(ROOT, {"MaxBandwidth": "1M", "BandwidthSchedule": "Mon-25:00,1M"})
    with pytest.raises(ReadOnlyProperty):
        service.set_policy(ROOT, {"CurrentBandwidthLimit": 5})
    with pytest.raises(InvalidArgument):
        service.set_policy(ROOT, {"MaxConcurrentBackgroundJobs": 0})
    assert service.get_policy()["MaxBandwidth"] is None, "a failed change changes nothing"
    shown = service.set_policy(ROOT, {"maxbandwidth": "2M", "MaxConcurrentBackgroundJobs": 3})
    assert shown["MaxBandwidth"] == shown["CurrentBandwidthLimit"] == 2 * 1024 * 1024
    scheduler.apply_bandwidth(clock.now_ns())
    assert throttle.global_bps == 2 * 1024 * 1024
    service.store.close()
    reopened, _, _ = make(tmp_path, clock)
    assert reopened.policy.max_bandwidth == 2 * 1024 * 1024, "run-time changes survive a restart"
    assert reopened.policy.max_background == 3


def test_bad_bandwidth_settings_in_the_config_are_refused() -> None:
    with pytest.raises(ValueError, match="bandwidth_limit"):
        ServicePolicy.from_config(Config(state_dir="/x", socket="/x/s", bandwidth_limit="fast"))


def test_bits_work_hours_switch_limits_at_their_edges(tmp_path: Path) -> None:
    clock = at(MONDAY_0759)
    service, scheduler, throttle = make(
        tmp_path, clock, work_hours="Mon-Fri 08-17", work_bandwidth="1M", non_work_bandwidth="off"
    )
    assert scheduler.apply_bandwidth(clock.now_ns()) == int(datetime(2026, 11, 23, 8).timestamp() * 1e9)
    assert throttle.global_bps is None
    clock.advance(1)
    assert scheduler.apply_bandwidth(clock.now_ns()) == int(datetime(2026, 11, 23, 17).timestamp() * 1e9)
    assert throttle.global_bps == 1024 * 1024
    assert service.policy.global_limit_at(datetime(2026, 11, 28, 12, 0)) is None, "the weekend is not work"
    shown = service.set_policy(ROOT, {"WorkHours": "Sat-Sun 10:00-12:00", "WorkBandwidth": 0})
    assert shown["WorkHours"] == "Sat-Sun 10:00-12:00"
    assert service.policy.global_limit_at(datetime(2026, 11, 28, 11, 0)) == 0
    with pytest.raises(InvalidArgument, match="WorkHours"):
        service.set_policy(ROOT, {"WorkHours": "Mon-Fri 17-08"})


def test_background_yield_defaults_changes_and_persistence(tmp_path: Path) -> None:
    clock = at(MONDAY_0759)
    service, scheduler, throttle = make(tmp_path, clock)
    shown = service.get_policy()
    assert (shown["BackgroundYield"], shown["YieldTargetDelayMs"]) == ("HIGH,NORMAL,LOW", 75.0)
    scheduler.apply_bandwidth(clock.now_ns())
    assert [throttle.politeness.yields(p) for p in range(4)] == [False, True, True, True]
    with pytest.raises(InvalidArgument, match="BackgroundYield"):
        service.set_policy(ROOT, {"BackgroundYield": "NORMAL,URGENT"})
    with pytest.raises(InvalidArgument, match="YieldTargetDelayMs"):
        service.set_policy(ROOT, {"YieldTargetDelayMs": 0})
    running = throttle.politeness.start("job", 1000, 3)
    shown = service.set_policy(ROOT, {"BackgroundYield": ["low", "FOREGROUND"], "YieldTargetDelayMs": 40})
    assert (shown["BackgroundYield"], shown["YieldTargetDelayMs"]) == ("FOREGROUND,LOW", 40.0)
    scheduler.apply_bandwidth(clock.now_ns())
    assert [throttle.politeness.yields(p) for p in range(4)] == [True, False, False, True]
    assert running.controller.target_s == pytest.approx(0.040), "a running transfer follows at once"
    service.store.close()
    reopened, _, _ = make(tmp_path, clock)
    assert reopened.policy.background_yield == frozenset({0, 3})
    assert reopened.policy.yield_target_delay_ms == 40.0
    none = ServicePolicy.from_config(Config(state_dir="/x", socket="/x/s", background_yield=""))
    assert none.yielding() == {0: False, 1: False, 2: False, 3: False}
    with pytest.raises(ValueError, match="yield_target_delay_ms"):
        ServicePolicy.from_config(Config(state_dir="/x", socket="/x/s", yield_target_delay_ms=-1.0))
