"""`openbits`: the command line, verbs after the BitsTransfer cmdlets.

Every instance method of the daemon has a command; every command whose output a script
reads takes ``--json``. ``openbits --help`` is laid out as a man page (``cli/manpage.py``);
what is drawn lives in ``cli/render.py``. rich is imported only by the two displays that
need a terminal (``watch``'s live table and ``transfer``'s progress bar).

Exit codes: 0 success; 1 a BITS error (the HRESULT and its name are printed);
2 bad usage; 3 no daemon answers; 130 interrupted; 141 stdout closed by its reader.

The commands live in one module per command group, as the man page lists them: jobs.py,
files.py, transfer.py, uploads.py, watch.py, service.py and store.py; options.py holds what they share
(the context, ``--socket``, ``--json``, JOB and the value parsers), exits.py the error →
exit-code mapping, hints.py what a waiting person is told. This module is the group; it
imports a command's module when that command runs (``COMMAND_MODULES``), all of them for
the help and completion: a command's start-up pays for its own module alone.
"""

from __future__ import annotations

import gc
import importlib
from typing import Any

import click

from openbits import __version__
from openbits.cli.manpage import ManGroup
from openbits.cli.openbits.options import Context

#: every command by the module (of this package) whose COMMANDS holds it
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(
        (
            "create",
            "get",
            "set",
            "resume",
            "suspend",
            "complete",
            "cancel",
            "wait",
            "error",
            "take-ownership",
        ),
        "jobs",
    ),
    **dict.fromkeys(
        ("add", "add-set", "add-ranges", "files", "set-remote-name", "replace-prefix", "headers"), "files"
    ),
    **dict.fromkeys(("transfer", "credentials", "proxy", "cert"), "transfer"),
    **dict.fromkeys(("upload", "reply"), "uploads"),
    **dict.fromkeys(("watch", "query"), "watch"),
    **dict.fromkeys(("serve", "policy", "token", "completion", "version"), "service"),
    "store": "store",
    "upload-server": "uploadserver",
}


class LazyGroup(ManGroup):
    """The group whose commands' modules are imported when a command is asked for."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            self._load(module)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_all()
        return super().list_commands(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._load_all()
        super().format_commands(ctx, formatter)

    def _load_all(self) -> None:
        for module in dict.fromkeys(COMMAND_MODULES.values()):
            self._load(module)

    def _load(self, module: str) -> None:
        for command in importlib.import_module(f"openbits.cli.openbits.{module}").COMMANDS:
            if command.name not in self.commands:
                self.add_command(command)


# -- the group -------------------------------------------------------------------------------------

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--socket",
    "socket_path",
    envvar="OPENBITS_SOCKET",
    metavar="PATH",
    help="The daemon's Unix socket (env OPENBITS_SOCKET; default $XDG_RUNTIME_DIR/openbits/openbits.sock).",
)
@click.option(
    "--url",
    metavar="URL",
    default=None,
    help="The daemon's TCP listener, https://HOST:PORT (env OPENBITS_URL); wins over --socket.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A file holding the bearer token for --url (else env OPENBITS_TOKEN).",
)
@click.option(
    "--cacert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA certificates (PEM) to check an https daemon against (env OPENBITS_CACERT).",
)
# (the version itself, not package_name: importlib.metadata would cost ~15 ms and the email package)
@click.version_option(__version__, message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    socket_path: str | None,
    url: str | None,
    token_file: str | None,
    cacert: str | None,
) -> None:
    """openbits - background file transfers that survive anything.

    openbits is the Background Intelligent Transfer Service of Windows, for Linux. A daemon
    (openbits serve) keeps a persistent queue of jobs, each a list of files to download over
    HTTP(S) or copy from local or mounted file systems, and moves them in the background: it
    resumes after any interruption (network, crash, kill -9, reboot), retries transient
    errors, shares bandwidth by priority and schedule, and publishes a job's files atomically
    only when you complete it. These commands manage your jobs through the daemon's API, with
    BITS' names: states (SUSPENDED, QUEUED, TRANSFERRING, TRANSFERRED, ERROR, …), properties
    and HRESULTs (0x80200003 BG_E_EMPTY, …).

    JOB is a JobId ({GUID}, any case, braces optional) or the display name of exactly one of
    your jobs. A job is created SUSPENDED: add files, resume it, wait, then complete it (or
    cancel it). 'openbits transfer' does all of that in one go.

    Another machine's daemon (openbits serve --listen with --tls-cert) is reached with
    --url https://HOST:PORT and a token from its 'openbits token create' (--token-file or
    OPENBITS_TOKEN; never on the command line), checked against --cacert when its
    certificate is not signed by a CA the system trusts.
    """
    ctx.obj = Context(socket_path, url, token_file, cacert)  # (a command's own --socket may replace it)


def main() -> None:
    """The command, then an exit that skips the interpreter's last cyclic garbage collection
    (``gc.freeze``): walking every object the command's modules made took ~7 of the ~10 ms
    between a one-shot ``transfer``'s last answer and its exit, work nobody waits for (files
    and sockets are closed by their owners; atexit still runs)."""
    try:
        cli(prog_name="openbits")
    finally:
        gc.freeze()
