"""Waiting for a condition on the event loop: polled against a deadline, never a sleep
taken as synchronisation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.005) -> None:
    """Poll ``condition`` on the loop until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(step_s)
