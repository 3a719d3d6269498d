"""The loop probe's stalls (``bench/loopprobe/sitecustomize.py``'s JSON), grouped by where the
daemon's event loop thread was while they lasted (bench_latency.py --probe)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: the source tree's prefix in a probe frame ("FILE:LINE FUNC")
SRC_DIR = str(Path(__file__).resolve().parent.parent.parent / "src") + "/"


def short(frame: str) -> str:
    """A probe frame ("FILE:LINE FUNC") with the source tree's or site-packages' prefix cut."""
    if frame.startswith(SRC_DIR):
        return frame[len(SRC_DIR) :]
    _head, sep, rest = frame.partition("site-packages/")
    if sep:
        return rest
    return frame.replace(sys.base_prefix + "/lib/", "")


def stall_sites(stalls: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The stalls grouped by where the main thread was: each stall goes to the innermost frame
    most often sampled during it (``caller``: the innermost openbits frame in another file,
    e.g. the verb behind a store commit); the ``top`` sites by total stalled time."""
    by_site: dict[tuple[str, str], list[float]] = {}
    kernel: dict[tuple[str, str], Counter[str]] = {}
    sched: Counter[tuple[str, str, str]] = Counter()  # (site, caller, "cpu"|"wait") -> ns
    for stall in stalls:
        samples = [x for x in stall["stacks"] if x["py"]]
        if samples:
            inner = Counter(x["py"][0] for x in samples).most_common(1)[0][0]
            stack = next(x["py"] for x in samples if x["py"][0] == inner)
            where = inner.rsplit(":", 1)[0]
            ours = next((f for f in stack if f.startswith(SRC_DIR) and not f.startswith(where)), "")
            key = (short(inner), short(ours))
            kernel.setdefault(key, Counter()).update(x["k"] for x in samples if x["py"][0] == inner)
            timed = [x["sched"] for x in samples if len(x.get("sched", ())) == 2]
            if len(timed) >= 2:
                sched[(*key, "cpu")] += timed[-1][0] - timed[0][0]
                sched[(*key, "wait")] += timed[-1][1] - timed[0][1]
        else:
            key = ("(ended before the watchdog sampled it)", "")
        by_site.setdefault(key, []).append(stall["late_ms"])
    ranked = sorted(by_site.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [
        {
            "site": site,
            "caller": caller,
            "count": len(ms),
            "total_ms": sum(ms),
            "max_ms": max(ms),
            "kernel": kernel.get((site, caller), Counter()).most_common(2),
            # over the sampled spans of its stalls: the loop thread on a CPU / waiting for one
            "sampled_cpu_ms": sched[(site, caller, "cpu")] / 1e6,
            "sampled_runqueue_ms": sched[(site, caller, "wait")] / 1e6,
        }
        for (site, caller), ms in ranked
    ]
