"""api/guard.py: the per-address count of invalid bearer tokens, on a manual clock."""

from __future__ import annotations

from openbits.api.guard import FailureGuard


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_the_shut_out_doubles_up_to_its_cap_and_ends() -> None:
    clock = Clock()
    guard = FailureGuard(free_failures=2, base_delay_s=0.5, max_delay_s=2.0, clock=clock)
    guard.failed("192.0.2.1")
    guard.failed("192.0.2.1")
    assert guard.wait_s("192.0.2.1") == 0  # the free failures
    waits = []
    for _ in range(4):
        guard.failed("192.0.2.1")
        waits.append(guard.wait_s("192.0.2.1"))
        clock.now_s += waits[-1]  # (its wait over: the next failure counts)
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert guard.wait_s("192.0.2.1") == 0
    assert guard.wait_s("192.0.2.2") == 0  # another address was never slowed
    assert guard.failures_total == 6 and guard.refused_total == 4


def test_a_count_is_forgotten_a_while_after_the_last_failure() -> None:
    clock = Clock()
    guard = FailureGuard(free_failures=1, forget_s=60, clock=clock)
    guard.failed("192.0.2.1")
    clock.now_s += 61
    guard.failed("192.0.2.1")  # the first of a new count: free again
    assert guard.wait_s("192.0.2.1") == 0


def test_memory_is_bounded_and_an_ipv6_host_counts_by_its_64() -> None:
    guard = FailureGuard(max_addresses=100, clock=Clock())
    for i in range(1000):
        guard.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(guard) == 100
    assert FailureGuard.key("2001:db8::1") == FailureGuard.key("2001:db8::ffff:1") == "2001:db8::/64"
    assert FailureGuard.key("::ffff:192.0.2.1") == "192.0.2.1"
    assert FailureGuard.key(None) == ""
