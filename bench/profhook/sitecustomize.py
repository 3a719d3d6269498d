"""Loaded by a daemon started with PYTHONPATH=bench/profhook (see bench/profile_small.py).

SIGUSR1 starts a cProfile of the main thread (the event loop's), SIGUSR2 stops it and writes
the stats to $OPENBITS_PROFILE_OUT (the fetch worker, which inherits the hook, to
$OPENBITS_PROFILE_OUT.worker): deterministic call counts, whatever the CPU speed does.
"""

import cProfile
import os
import signal
import sys

_state: dict[str, cProfile.Profile] = {}


def _start(_signum: int, _frame: object) -> None:
    prof = cProfile.Profile()
    _state["p"] = prof
    prof.enable()


def _stop(_signum: int, _frame: object) -> None:
    prof = _state.pop("p", None)
    if prof is not None:
        prof.disable()
        out = os.environ["OPENBITS_PROFILE_OUT"]
        if "fetchworker" in sys.argv[0]:
            out += ".worker"  # (the fetch worker inherits the hook: its own file)
        prof.dump_stats(out + ".part")
        os.replace(out + ".part", out)


if os.environ.get("OPENBITS_PROFILE_OUT"):
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
