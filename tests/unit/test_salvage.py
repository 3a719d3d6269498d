"""``sink.salvage`` (a one-stream body's error or cancel path): what arrived is synced and
checkpointed, with the ``fdatasync`` off the loop (issue 15 item 6), waited for even when the
task is cancelled again meanwhile.  A real file; the sync is held by a gate (our own seam,
``os.fdatasync`` as the sink calls it) to stand for a slow disk."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.transfer import sink as sink_module
from openbits.transfer.sink import Sink, salvage
from tests.support.polling import eventually

MiB = 1024 * 1024


class SlowDisk:
    """``os.fdatasync`` held until the test opens the gate (at most ``limit_s``: a sync run on
    the loop must fail the test, not hang it); ``holding`` while it waits."""

    def __init__(self, limit_s: float = 5.0) -> None:
        self.gate, self.holding = threading.Event(), threading.Event()
        self.limit_s = limit_s
        self.real = os.fdatasync
        self.synced: list[int] = []

    def fdatasync(self, fd: int) -> None:
        self.holding.set()
        try:
            self.gate.wait(self.limit_s)
            self.real(fd)
            self.synced.append(fd)
        finally:
            self.holding.clear()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowDisk]:
    slow = SlowDisk()
    monkeypatch.setattr(sink_module.os, "fdatasync", slow.fdatasync)
    yield slow
    slow.gate.set()


def _sink_with_unwritten_bytes(tmp_path: Path, n: int) -> Sink:
    fd = os.open(tmp_path / "t", os.O_RDWR | os.O_CREAT, 0o600)
    sink = Sink(fd, 0)
    sink.add(b"x" * n)  # (arrived, not yet written: salvage writes them first)
    return sink


async def test_the_loop_goes_on_while_a_salvage_syncs_and_the_checkpoint_follows_the_sync(
    tmp_path: Path, disk: SlowDisk
) -> None:
    sink = _sink_with_unwritten_bytes(tmp_path, 3 * MiB)
    checkpoints: list[int] = []
    ticks_while_held = 0

    async def probe() -> None:  # any other work of the daemon: API calls, other transfers
        nonlocal ticks_while_held
        while True:
            if disk.holding.is_set():
                ticks_while_held += 1
            await asyncio.sleep(0.001)

    probing = asyncio.create_task(probe())
    try:
        salvaging = asyncio.create_task(salvage(sink, checkpoints.append))
        await eventually(lambda: ticks_while_held >= 20, 3.0)  # (the loop ran while the sync was held)
        assert checkpoints == [], "checkpointed before the sync returned"
        assert not salvaging.done()
        disk.gate.set()
        await salvaging
    finally:
        probing.cancel()
        os.close(sink.fd)
    assert checkpoints == [3 * MiB]
    assert len(disk.synced) == 1 and disk.synced[0] != sink.fd, "not synced through a dup of the fd"
    assert os.path.getsize(tmp_path / "t") == 3 * MiB


async def test_a_salvage_cancelled_again_still_waits_for_its_sync_and_checkpoints(
    tmp_path: Path, disk: SlowDisk
) -> None:
    sink = _sink_with_unwritten_bytes(tmp_path, MiB)
    checkpoints: list[int] = []
    try:
        salvaging = asyncio.create_task(salvage(sink, checkpoints.append))
        await eventually(disk.holding.is_set, 3.0)
        salvaging.cancel()  # (a second stop: Cancel after a Suspend, the daemon's shutdown)
        await asyncio.sleep(0)  # (the cancellation is delivered: the task is still in its sync)
        assert not salvaging.done()
        disk.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await salvaging
    finally:
        os.close(sink.fd)
    assert checkpoints == [MiB], "the sync that ran was not recorded"
