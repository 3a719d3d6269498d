"""The fetch worker's throttle (``transfer/fetchworker.py``): the daemon hands the worker only
jobs whose priority is neither limited nor yielding, so the worker's own throttle must never
pace a body; a default throttle would (NORMAL yields by default), with controllers the daemon
never sees in ``/metrics`` nor drops when the job ends."""

from __future__ import annotations

from openbits.model import JobPriority
from openbits.transfer.fetchworker import unpaced_throttle
from openbits.transfer.throttle import Throttle


def test_the_workers_throttle_neither_limits_nor_yields_on_any_priority() -> None:
    assert Throttle().politeness.yields(int(JobPriority.NORMAL)), "a default throttle would yield"
    throttle = unpaced_throttle()
    for priority in JobPriority:
        assert not throttle.politeness.yields(int(priority)), priority
        assert not throttle.is_limited(int(priority)), priority
