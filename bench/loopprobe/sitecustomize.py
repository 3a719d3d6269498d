"""Loaded by a daemon started with PYTHONPATH=bench/loopprobe (see bench/bench_latency.py --probe).

With $OPENBITS_LOOP_PROBE set (a path), the main thread's event loop gets a probe when it starts:

* a timer every 1 ms (``call_later``) that records how late it ran: the loop's lateness, which
  is what a request arriving at that moment waits before the loop even reads it;
* a watchdog thread that wakes every 1 ms and, while the timer is more than
  $OPENBITS_LOOP_PROBE_MS (default 5) late, samples the main thread's Python stack
  (``sys._current_frames``) and, from /proc, the thread's scheduler state and kernel stack
  (readable as root: which kernel function a blocking system call waits in) and its CPU
  and run-queue times (``schedstat``): where the loop is while it stalls.  A stall in a C
  call that keeps the GIL is sampled only when it ends (a system call such as ``os.splice``
  or ``os.fsync`` releases it: the stack shows its line);
* every stall (the timer's lateness above the threshold) with its samples, and a histogram of
  every lateness, written as JSON to $OPENBITS_LOOP_PROBE every second and when the loop stops.

$OPENBITS_LOOP_SLOW_MS (optional) also sets the loop's ``slow_callback_duration``: with
PYTHONASYNCIODEBUG=1 asyncio then logs every callback slower than that ("Executing … took").

The probe costs about 1,000 wake-ups a second of the loop and of the watchdog: a diagnostic,
not for the measured runs (bench_latency.py reports which run had it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

TICK_S = 0.001
#: lateness histogram bucket edges, ms (the last bucket is "above the last edge")
EDGES_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
MAX_STALLS = 5000
MAX_SAMPLES_PER_STALL = 50
FRAMES_KEPT = 14


class Probe:
    """The timer, the watchdog thread and the file they write (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out: str, threshold_s: float) -> None:
        self.loop = loop
        self.out = out
        self.threshold_s = threshold_s
        self.main_id = threading.get_ident()
        self.task = f"/proc/self/task/{threading.get_native_id()}"
        self.last_tick = time.monotonic()
        self.buckets = [0] * (len(EDGES_MS) + 1)
        self.ticks = 0
        self.stalls: list[dict[str, Any]] = []
        #: stall (its last good tick) -> samples: {"py": frames, innermost first; "k": kernel}
        self.samples: dict[float, list[dict[str, Any]]] = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, name="loopprobe", daemon=True)

    def start(self) -> None:
        self.last_tick = time.monotonic()
        self.loop.call_later(TICK_S, self._tick, self.last_tick + TICK_S)
        self.thread.start()

    def _tick(self, expected: float) -> None:
        now = time.monotonic()
        late = max(0.0, now - expected)
        ms = late * 1000
        i = 0
        while i < len(EDGES_MS) and ms > EDGES_MS[i]:
            i += 1
        self.buckets[i] += 1
        self.ticks += 1
        if late > self.threshold_s:
            with self.lock:
                stacks = self.samples.pop(self.last_tick, [])
                if len(self.stalls) < MAX_STALLS:
                    self.stalls.append({"t": expected, "late_ms": ms, "stacks": stacks})
        self.last_tick = now
        if not self.stop_event.is_set():
            self.loop.call_later(TICK_S, self._tick, now + TICK_S)

    def _watch(self) -> None:
        next_write = time.monotonic() + 1.0
        while not self.stop_event.wait(TICK_S):
            now = time.monotonic()
            start = self.last_tick
            if now - start > TICK_S + self.threshold_s:
                frame = sys._current_frames().get(self.main_id)
                if frame is not None:
                    stack = []
                    while frame is not None and len(stack) < FRAMES_KEPT:
                        code = frame.f_code
                        stack.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
                        frame = frame.f_back
                    sample = {"py": stack, "k": self.kernel_state(), "sched": self.schedstat()}
                    with self.lock:
                        got = self.samples.setdefault(start, [])
                        if len(got) < MAX_SAMPLES_PER_STALL:
                            got.append(sample)
                        else:  # (the last sample always kept: the span covers the stall)
                            got[-1] = sample
            if now >= next_write:
                self.write()
                next_write = now + 1.0

    def kernel_state(self) -> str:
        """The main thread's scheduler state (R running, S sleeping, D in uninterruptible
        wait) and its innermost kernel functions, e.g. "D folio_wait_bit<ext4_…"; "" when
        /proc does not say."""
        try:
            with open(f"{self.task}/stat", encoding="ascii") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            with open(f"{self.task}/stack", encoding="ascii") as fh:
                fns = [ln.split("] ", 1)[-1].split("+", 1)[0] for ln in fh.read().splitlines()]
        except (OSError, IndexError):
            return ""
        return f"{state} {'<'.join(fns[:6])}".rstrip()

    def schedstat(self) -> list[int]:
        """The main thread's time on a CPU and waiting for one, ns (``/proc/…/schedstat``):
        between two samples of a stall they say whether it computed or waited its turn."""
        try:
            with open(f"{self.task}/schedstat", encoding="ascii") as fh:
                return [int(x) for x in fh.read().split()[:2]]
        except (OSError, ValueError):
            return []

    def write(self) -> None:
        with self.lock:
            doc = {
                "pid": os.getpid(),
                "threshold_ms": self.threshold_s * 1000,
                "tick_ms": TICK_S * 1000,
                "ticks": self.ticks,
                "edges_ms": EDGES_MS,
                "buckets": list(self.buckets),
                "stalls": list(self.stalls),
            }
            text = json.dumps(doc)
        tmp = self.out + ".part"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.out)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        self.write()


def _install(out: str) -> None:
    original = asyncio.BaseEventLoop.run_forever
    threshold_s = float(os.environ.get("OPENBITS_LOOP_PROBE_MS", "5")) / 1000
    slow_ms = os.environ.get("OPENBITS_LOOP_SLOW_MS")
    started: list[Probe] = []

    def run_forever(self: asyncio.BaseEventLoop) -> None:
        if started or threading.current_thread() is not threading.main_thread():
            return original(self)
        if slow_ms:
            self.slow_callback_duration = float(slow_ms) / 1000
        probe = Probe(self, out, threshold_s)
        started.append(probe)
        probe.start()
        try:
            return original(self)
        finally:
            probe.stop()

    asyncio.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign]


if os.environ.get("OPENBITS_LOOP_PROBE"):
    _install(os.environ["OPENBITS_LOOP_PROBE"])
