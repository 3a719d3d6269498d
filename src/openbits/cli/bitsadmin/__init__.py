"""`bitsadmin`: Windows' bitsadmin switches that map to openbits features, same wording.

Argument order, state spellings and output lines are those of bitsadmin (bits-spec §7.1; the
sample output of Microsoft's "bitsadmin examples" page), so scripts written for it run unchanged:
``/create`` prints ``Created job {GUID}.``, ``/list`` prints ``{GUID} 'name' STATE f / F b / B``
and ``Listed N job(s).``, ``/transfer`` ends with ``Transfer complete.``, ``/rawreturn`` prints the
bare value of ``/create`` and ``/get*`` without a newline.

Exit codes: 0 success; 1 a BITS error (``Unable to … - 0x8… NAME: message`` on stderr) or bad
usage (the usage text on stderr), as bitsadmin exits 1 for both; 3 no daemon answers;
130 a ``/transfer`` interrupted with Ctrl-C (its job is cancelled); 141, quietly, when the
reader of stdout went away (``bitsadmin /list | head -1``). ``/monitor`` ends with
Ctrl-C and exits 0.

Switches whose daemon method is not built yet still parse their arguments exactly and call the
method; the daemon answers E_NOTIMPL and bitsadmin prints that error. Passwords given to
``/setcredentials`` are never printed; ``*`` (or ``-``) for the password reads it from stdin
(asked for without echo on a terminal) so that it is not on the command line.

Start-up stays fast: the standard library and openbits.client only.

The switches live in one module per kind: verbs.py (the job verbs), transfer.py (/TRANSFER),
getters.py (/GET*) and setters.py (/SET* and the other one-call methods), each with its own
table, joined here into SWITCHES; context.py holds what a switch is given (the client, the
output), parsing.py and formatting.py bitsadmin's arguments and wording, usage.py its usage.
"""

from __future__ import annotations

import ssl
import sys
from typing import NoReturn

from openbits.cli import pipe
from openbits.cli.bitsadmin import getters, setters, transfer, verbs
from openbits.cli.bitsadmin.context import Ctx, Handler, Out, _Failed
from openbits.cli.bitsadmin.usage import USAGE, Usage, switch_usage
from openbits.client import Client, DaemonUnavailable
from openbits.errors import BitsError


def _help(ctx: Ctx, args: list[str]) -> int:
    ctx.out.stream.write(USAGE)
    return 0


SWITCHES: dict[str, Handler] = {
    **verbs.SWITCHES,
    **transfer.SWITCHES,
    **getters.SWITCHES,
    **setters.SWITCHES,
    "/HELP": _help,
    "/?": _help,
}


# -- main -------------------------------------------------------------------------------------


def _usage(reason: str | None = None, name: str | None = None) -> int:
    """Bad usage: the reason, then the usage of the switch (of all switches for an unknown one)."""
    if reason:
        print(reason, file=sys.stderr)
    if name is None:
        print(USAGE.split("\n", 1)[1], file=sys.stderr, end="")  # (no banner)
    else:
        print("USAGE: BITSADMIN [/RAWRETURN] [/WRAP | /NOWRAP] command", file=sys.stderr)
        print(switch_usage(name), file=sys.stderr, end="")
    return 1


def _failed(action: str, err: BitsError) -> int:
    print(f"{action} - 0x{err.hresult:08x} {err.name}: {err.message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


def run(args: list[str]) -> int:
    out = Out()
    if args and args[0].upper() == "/RAWRETURN":
        out.raw, args = True, args[1:]
    if args and args[0].upper() in ("/WRAP", "/NOWRAP"):
        out.wrap, args = args[0].upper() == "/WRAP", args[1:]
    if not args:
        return _usage()
    name, rest = args[0].upper(), args[1:]
    handler = SWITCHES.get(name)
    if handler is None:
        return _usage("Invalid command")
    if handler is _help:
        out.stream.write(USAGE)
        return 0
    try:
        with Client() as client:
            return handler(Ctx(client, out), rest)
    except Usage as e:
        return _usage(str(e), name)
    except _Failed as e:
        return _failed(e.action, e.error)
    except BitsError as e:
        return _failed("Unable to complete the operation", e)
    except DaemonUnavailable as e:
        print(str(e), file=sys.stderr)
        return 3
    except ssl.SSLError as e:  # an https daemon (OPENBITS_URL) whose certificate is not trusted
        print(f"TLS with the openbits daemon failed: {e.reason or e} (OPENBITS_CACERT?)", file=sys.stderr)
        return 3
    except BrokenPipeError:
        if not pipe.stdout_closed():
            raise
        return pipe.leave_quietly()  # `bitsadmin /list | head -1`: the reader is gone
    except KeyboardInterrupt:
        return 130
    finally:
        out.flush()
