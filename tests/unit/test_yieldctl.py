"""The BackgroundYield delay controller (``transfer.yieldctl``) on a synthetic clock and
synthetic RTT series: no network, no sleeps."""

from __future__ import annotations

import pytest

from openbits.transfer.yieldctl import (
    BASE_BUCKET_S,
    BASE_HISTORY,
    FLOOR_FRACTION,
    INITIAL_SLOWDOWN_S,
    MAX_IDLE_PATHS,
    TARGET_BASE_FRACTION,
    TARGET_FLOOR_MS,
    DelayController,
    Politeness,
)

BASE_S = 0.020  # a 20 ms path
LINK_BPS = 25_000_000.0  # ~200 Mbit/s
STEP_S = 0.05  # one sample per 50 ms, as the sampler takes them


class Path:
    """A synthetic bottleneck: bytes arrive at min(pace, link), RTT = base + queue."""

    def __init__(self, controller: DelayController) -> None:
        self.c = controller
        self.now = 0.0

    def run(self, seconds: float, queue_s: float | None = None, base_s: float = BASE_S) -> None:
        """``seconds`` of samples; ``queue_s`` None: the queue is what the pace leaves (none
        below 80% of the link, then up to 200 ms at the link's rate)."""
        for _ in range(round(seconds / STEP_S)):
            rate = self.c.rate_bps
            arriving = min(rate if rate is not None else LINK_BPS, LINK_BPS)
            if queue_s is None:
                q = 0.0 if arriving < 0.8 * LINK_BPS else 0.2 * (arriving - 0.8 * LINK_BPS) / (0.2 * LINK_BPS)
            else:
                q = queue_s
            self.now += STEP_S
            self.c.on_bytes(int(arriving * STEP_S), self.now)
            self.c.on_rtt(base_s + q, self.now)


def test_quiet_path_stays_unpaced() -> None:
    c = DelayController()
    path = Path(c)
    path.run(30.0, queue_s=0.001)
    assert c.rate_bps is None and c.backoffs == 0
    assert c.queue_delay_s < 0.002


def test_backs_off_on_rising_delay_and_recovers_when_it_falls() -> None:
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(1.0, queue_s=0.0)
    assert c.rate_bps is None
    path.run(0.3, queue_s=0.150)  # another flow fills the queue: 150 ms over the base
    assert c.backoffs >= 1
    paced = c.rate_bps
    assert paced is not None and paced <= LINK_BPS / 2
    assert c.queue_delay_s == pytest.approx(0.150)
    path.run(3.0, queue_s=0.300)  # it stays: backs off once per RTT, down to the floor
    assert c.rate_bps == pytest.approx(c.floor_now_bps, rel=0.01)
    assert c.floor_now_bps == pytest.approx(FLOOR_FRACTION * LINK_BPS, rel=0.05)
    path.run(3.0, queue_s=0.0)  # the other flow left: grows again
    assert c.rate_bps is None or c.rate_bps > 0.5 * LINK_BPS


def test_a_shallow_queue_counts_as_competition() -> None:
    """A short path (1 ms) whose bottleneck holds only ~5 ms: far under yield_target_delay_ms,
    yet over the target the path allows (a fraction of its base, never under the floor)."""
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(1.0, queue_s=0.0, base_s=0.001)
    assert c.effective_target_s == pytest.approx(TARGET_FLOOR_MS / 1000)
    path.run(0.5, queue_s=0.005, base_s=0.001)
    assert c.backoffs >= 3 and c.rate_bps is not None and c.rate_bps < LINK_BPS / 8
    # a long path's target is a fraction of its base delay, the configured one at most
    far = DelayController(target_delay_ms=75)
    Path(far).run(1.0, queue_s=0.0, base_s=0.040)
    assert far.effective_target_s == pytest.approx(TARGET_BASE_FRACTION * 0.040)
    very_far = DelayController(target_delay_ms=75)
    Path(very_far).run(1.0, queue_s=0.0, base_s=0.400)
    assert very_far.effective_target_s == pytest.approx(0.075)


def test_backs_off_when_its_arrival_rate_drops_under_competition() -> None:
    """No RTT change at all (a path whose RTT the kernel cannot show), but the job's own
    arrival rate halves while the reader waits for data: someone else takes the link."""
    c = DelayController()
    now = 0.0
    c.on_bytes(0, now)
    for _ in range(20):  # 2 s at 25 MB/s, waiting 30% of the time
        now += 0.1
        c.on_bytes(int(LINK_BPS * 0.1), now, waited_s=0.03)
    assert c.rate_bps is None and c.backoffs == 0
    for _ in range(5):  # another flow arrives: 10 MB/s is all that comes
        now += 0.1
        c.on_bytes(1_000_000, now, waited_s=0.06)
    assert c.drop_backoffs >= 1 and c.rate_bps is not None and c.rate_bps < 0.5 * LINK_BPS


def test_a_busy_reader_is_not_competition() -> None:
    """The same drop, but the reader never waited for data (its disk was slow): no backoff."""
    c = DelayController()
    now = 0.0
    c.on_bytes(0, now)
    for _ in range(20):
        now += 0.1
        c.on_bytes(int(LINK_BPS * 0.1), now, waited_s=0.03)
    for _ in range(5):
        now += 0.1
        c.on_bytes(1_000_000, now, waited_s=0.0)
    assert c.backoffs == 0 and c.rate_bps is None


def test_a_window_limited_competitor_at_the_target_still_wins() -> None:
    """Another flow that builds no more queue than the target (its receive window is small)
    but halves this one's arrival rate: a queue of half the target while moving under
    SHARE_RATIO of its best is someone else's queue, so it backs off."""
    c = DelayController()
    now = 0.0
    c.on_bytes(0, now)
    for _ in range(40):  # 2 s alone at the link's rate, 1 ms over a 1 ms base: its own queue
        now += STEP_S
        c.on_bytes(int(LINK_BPS * STEP_S), now)
        c.on_rtt(0.002, now)
    shares = c.share_backoffs
    for _ in range(20):  # 1 s sharing: half the rate, the queue at the 2 ms target exactly
        now += STEP_S
        c.on_bytes(int(LINK_BPS / 2 * STEP_S), now)
        c.on_rtt(0.003, now)
    assert c.share_backoffs > shares
    assert c.rate_bps is not None and c.rate_bps < LINK_BPS / 8


def test_alone_a_small_overshoot_trims_rather_than_halves() -> None:
    c = DelayController()
    path = Path(c)
    path.run(1.0, queue_s=0.0, base_s=0.001)
    path.run(0.2, queue_s=0.0024, base_s=0.001)  # 0.4 ms over the 2 ms target, rate unchanged
    assert c.backoffs >= 1 and c.share_backoffs == 0
    assert c.rate_bps is not None and c.rate_bps >= 0.8 * LINK_BPS


def test_slowdown_measures_the_base_under_its_own_queue() -> None:
    """A transfer that builds its own standing queue from the start takes it for the base;
    the initial slowdown drains it and finds the real base (LEDBAT++)."""
    c = DelayController(target_delay_ms=75)
    now = 0.0
    own_queue_s = 0.004
    while now < INITIAL_SLOWDOWN_S + 1.0:
        now += STEP_S
        slowing = c.rate_bps is not None and c.rate_bps < LINK_BPS / 4
        c.on_bytes(int(LINK_BPS * STEP_S), now)
        c.on_rtt(0.001 + (0.0 if slowing else own_queue_s), now)
    assert c.slowdowns == 1
    assert c.base_delay_s == pytest.approx(0.001)
    assert c.backoffs >= 1  # its own 4 ms queue, once seen as such, is over the 2 ms target


def test_one_off_spike_is_ignored() -> None:
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(2.0, queue_s=0.0)
    path.c.on_rtt(BASE_S + 0.5, path.now + 0.01)  # one late sample
    path.run(2.0, queue_s=0.0)
    assert c.backoffs == 0 and c.rate_bps is None


def test_holds_delay_near_target_against_its_own_queue() -> None:
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(1.0, queue_s=0.0)  # the path's own delay, seen before the queue builds
    path.run(60.0)  # then the pace itself fills the queue above 80% of the link
    assert c.backoffs >= 1
    assert c.rate_bps is not None and c.rate_bps < LINK_BPS
    assert c.queue_delay_s <= 0.075 + 0.05


def test_samples_taken_while_the_sender_paused_are_dropped() -> None:
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(2.0, queue_s=0.0)
    for i in range(20):  # 200 ms RTT, but the receiver waited 150 ms for data: a pause
        c.on_rtt(BASE_S + 0.2, path.now + i * STEP_S, idle_s=0.150)
    assert c.ignored == 20 and c.backoffs == 0 and c.rate_bps is None
    for i in range(20):  # the same RTT with data flowing: a queue
        c.on_rtt(BASE_S + 0.2, path.now + 1 + i * STEP_S, idle_s=0.001)
    assert c.backoffs >= 1


def test_base_delay_follows_a_path_change() -> None:
    c = DelayController(target_delay_ms=75)
    path = Path(c)
    path.run(5.0, queue_s=0.0, base_s=0.020)
    assert c.base_delay_s == pytest.approx(0.020)
    # the route changes to a 60 ms path: first seen as queueing delay...
    path.run(2.0, queue_s=0.0, base_s=0.060)
    assert c.queue_delay_s == pytest.approx(0.040)
    # ...until the old minimum ages out of the history
    path.run(BASE_BUCKET_S * BASE_HISTORY + 60.0, queue_s=0.0, base_s=0.060)
    assert c.base_delay_s == pytest.approx(0.060)
    assert c.queue_delay_s == pytest.approx(0.0)
    # a shorter path is followed at once
    path.run(1.0, queue_s=0.0, base_s=0.010)
    assert c.base_delay_s == pytest.approx(0.010)


def test_ceiling_and_floor() -> None:
    c = DelayController(target_delay_ms=50, floor_bps=100_000, ceiling_bps=1_000_000)
    path = Path(c)
    assert c.rate_bps == 1_000_000
    path.run(10.0, queue_s=0.0)
    assert c.rate_bps == 1_000_000
    path.run(30.0, queue_s=1.0)
    assert c.rate_bps == 100_000
    with pytest.raises(ValueError):
        DelayController(target_delay_ms=0)


def test_politeness_defaults_and_runtime_target() -> None:
    p = Politeness()
    assert [p.yields(prio) for prio in (0, 1, 2, 3)] == [False, True, True, True]
    one = p.start("job", 1000, 2)
    p.configure({2: False}, target_delay_ms=40)
    assert not p.yields(2) and one.controller.target_s == pytest.approx(0.040)
    p.stop(one)
    assert not p.running


def test_the_next_file_of_a_job_still_yields_to_a_competitor_already_there() -> None:
    # (review19b) a controller per body lost what the job learnt of its path at each file
    p = Politeness()
    first = p.start("job", 1000, 2)
    path = Path(first.controller)
    path.run(1.0, queue_s=0.0)  # alone: the path's base is 20 ms
    path.run(1.0, queue_s=0.150)  # a competitor's queue: the file backs off
    assert first.controller.rate_bps is not None
    p.stop(first)  # the file ends; the competitor stays
    second = p.start("job", 1000, 2)  # the job's next file, on the same path
    c = second.controller
    now = path.now
    c.on_bytes(0, now)
    for _ in range(round(1.5 / STEP_S)):  # its first 1.5 s: half the link, the queue stands
        now += STEP_S
        c.on_bytes(int(LINK_BPS / 2 * STEP_S), now, waited_s=0.2 * STEP_S)
        c.on_rtt(BASE_S + 0.150, now)
    assert c.rate_bps is not None, "the next file takes the competitor's queue for its base"


def test_a_controller_per_job_and_host_kept_between_bodies_and_dropped_with_the_job() -> None:
    p = Politeness()
    a, b = p.start("job", 1000, 2, "10.0.0.1"), p.start("job", 1000, 2, "10.0.0.1")  # two segments
    other = p.start("job", 1000, 2, "10.0.0.2")
    assert a is b and a.bodies == 2 and other is not a and len(p.running) == 2
    p.stop(a)
    p.stop(b)
    p.stop(other)
    assert not p.running  # (not shown in /metrics between files)
    assert p.start("job", 1000, 3, "10.0.0.1") is a and a.priority == 3
    p.stop(a)
    p.forget("job")
    assert p.start("job", 1000, 2, "10.0.0.1") is not a
    for i in range(MAX_IDLE_PATHS + 10):  # jobs whose end was never told: still bounded
        p.stop(p.start(f"job{i}", 1000, 2))
    assert len(p._paths) <= MAX_IDLE_PATHS + 1
