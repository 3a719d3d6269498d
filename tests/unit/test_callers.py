"""Who calls: a uid's admin membership, and how long the daemon may remember it."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid

import pytest

from openbits.api.peer import Callers
from openbits.caller import Caller


class Tick:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_whose_primary_group_is_the_admin_group_is_an_administrator() -> None:
    daemon = pwd.getpwnam("daemon")  # Debian: uid 1, primary group "daemon", no gr_mem
    assert Caller.from_uid(daemon.pw_uid, "daemon").is_admin
    assert not Caller.from_uid(daemon.pw_uid, "no-such-group-" + uuid.uuid4().hex[:8]).is_admin


def test_root_is_always_an_administrator() -> None:
    assert Caller.from_uid(0, "no-such-group").is_admin


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a group")
def test_a_group_change_is_seen_once_the_cache_entry_is_older_than_its_ttl() -> None:
    group = "obt" + uuid.uuid4().hex[:8]
    clock = Tick()
    callers = Callers(ttl_s=5.0, clock=clock)
    nobody = pwd.getpwnam("nobody").pw_uid
    subprocess.run(["groupadd", group], check=True)
    try:
        assert not callers.get(nobody, group).is_admin
        subprocess.run(["gpasswd", "-a", "nobody", group], check=True, capture_output=True)
        clock.now += 4.9
        assert not callers.get(nobody, group).is_admin, "remembered for ttl_s"
        clock.now += 0.2
        assert callers.get(nobody, group).is_admin, "read again after ttl_s"
    finally:
        subprocess.run(["groupdel", group], check=True)


def test_the_cache_stays_bounded() -> None:
    clock = Tick()
    callers = Callers(ttl_s=5.0, limit=4, clock=clock)
    for uid in range(4):
        callers.get(uid, "no-such-group")
    clock.now += 10
    for uid in range(4, 8):
        callers.get(uid, "no-such-group")
    assert len(callers._seen) <= 4
