"""A reader that went away: ``openbits get | head -1`` closes our stdout, and the next write
raises BrokenPipeError, which is a ConnectionError like a daemon that hung up. Both CLIs ask
here which one it was, and leave quietly, as cat or grep do, when it was their own stdout.

The standard library only: bitsadmin imports it and starts without click.
"""

from __future__ import annotations

import os
import select

#: the exit status of a command whose reader went away (``… | head -1``): the shell's for a
#: tool ended by SIGPIPE (128 + 13), so ``set -o pipefail`` sees what it sees of cat or grep
EXIT_STDOUT_CLOSED = 141
STDOUT = 1


def stdout_closed() -> bool:
    """True when stdout is a pipe (or socket) that nobody reads any more: a BrokenPipeError
    then came from our own output, not from the daemon's socket."""
    try:
        poller = select.poll()
        poller.register(STDOUT, select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def leave_quietly() -> int:
    """Point stdout at /dev/null (so the interpreter's last flush does not complain
    either) and give the exit status to leave with."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, STDOUT)
    os.close(null)
    return EXIT_STDOUT_CLOSED
