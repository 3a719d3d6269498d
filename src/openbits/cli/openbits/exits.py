"""The error → exit-code mapping of every command: a BitsError, a missing daemon, a closed
stdout and Ctrl-C become a message on stderr and an exit code (the codes of ``openbits --help``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import NoReturn, ParamSpec, TypeVar

import click

from openbits._wire import DaemonUnavailable, tls_error
from openbits.cli import pipe
from openbits.errors import BitsError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_BITS_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BITS_ERROR) -> NoReturn:
    click.echo(f"openbits: {message}", err=True)
    sys.exit(code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn BitsError and a missing daemon into a message and an exit code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BitsError as e:
            fail(f"error {e.hex} {e.name}: {e.message}")
        except DaemonUnavailable as e:
            fail(str(e), EXIT_NO_DAEMON)
        except BrokenPipeError as e:
            if pipe.stdout_closed():  # `openbits get | head -1`: the reader is gone, not the daemon
                sys.exit(pipe.leave_quietly())
            fail(f"cannot talk to the openbits daemon: {e}", EXIT_NO_DAEMON)
        except OSError as e:
            if (tls := tls_error(e)) is not None:  # (first: an https daemon's certificate)
                fail(
                    f"TLS with the openbits daemon failed: {tls.reason or tls} (its CA: --cacert)",
                    EXIT_NO_DAEMON,
                )
            if isinstance(e, ConnectionError | PermissionError | TimeoutError):
                fail(f"cannot talk to the openbits daemon: {e}", EXIT_NO_DAEMON)
            raise
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)

    return wrapper
