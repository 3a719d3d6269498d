"""Waiting for work that must not be cut short, through any cancellation of the waiter.

A thread's fdatasync or splice, or a settling batch's commit, must be seen to its end even
when the task that started it is cancelled (a Suspend, a pre-emption, a Complete that stops
the job): what it made durable is then recorded before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["waited_through"]


async def waited_through(future: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait until ``future`` is done, whatever cancellations of the caller come meanwhile
    (``future`` itself is never cancelled by them); the last that came, for the caller to
    raise once it has done what must follow ``future``, or None."""
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as e:
            cancelled = e
    return cancelled
