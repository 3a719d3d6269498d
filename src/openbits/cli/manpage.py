"""`openbits --help` as a man page: the commands in sections, then EXIT STATUS, ENVIRONMENT,
FILES, EXAMPLES and SEE ALSO.

A command joins a section through :data:`SECTIONS`; one that is in none of them is listed
under "Other commands", so a new command always shows up.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

#: (heading, command names in the order shown)
SECTIONS: list[tuple[str, list[str]]] = [
    (
        "JOB COMMANDS",
        [
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
        ],
    ),
    (
        "FILE COMMANDS",
        ["add", "add-set", "add-ranges", "files", "set-remote-name", "replace-prefix", "headers"],
    ),
    ("TRANSFER COMMANDS", ["transfer", "upload", "reply", "credentials", "proxy", "cert"]),
    ("WATCH AND QUERY", ["watch", "query"]),
    # ("token": a command to come; a name without a command is skipped)
    ("DAEMON AND SHELL", ["serve", "upload-server", "store", "policy", "token", "completion", "version"]),
]

EXIT_STATUS: list[tuple[str, str]] = [
    ("0", "Success (for wait and transfer: the job is TRANSFERRED or ACKNOWLEDGED)."),
    (
        "1",
        "A BITS error: the HRESULT (0x8…) and its name are printed on stderr, e.g. "
        "'error 0x80200003 BG_E_EMPTY: …'; also a job that ends in ERROR or CANCELLED under "
        "wait, transfer or watch --until-done, and a wait --timeout that runs out.",
    ),
    ("2", "Bad usage: an unknown command or option, a missing or malformed argument."),
    ("3", "No daemon answers on the socket (start one with 'openbits serve')."),
    ("130", "Interrupted (Ctrl-C). An interrupted transfer cancels its job."),
    ("141", "The reader of stdout went away (openbits get | head -1); nothing is printed."),
]

ENVIRONMENT: list[tuple[str, str]] = [
    ("OPENBITS_SOCKET", "The daemon's socket, as --socket gives it (the option wins)."),
    (
        "XDG_RUNTIME_DIR",
        "The default socket is $XDG_RUNTIME_DIR/openbits/openbits.sock.",
    ),
    (
        "XDG_STATE_HOME",
        "The default state directory of serve is $XDG_STATE_HOME/openbits "
        "(else ~/.local/state/openbits); without XDG_RUNTIME_DIR the socket is in it.",
    ),
    ("OPENBITS_LOG_LEVEL", "The daemon's log level (DEBUG, INFO, WARNING; default INFO)."),
    ("NO_COLOR", "Set: the live displays (watch, transfer) draw without colour."),
    ("_OPENBITS_COMPLETE", "Used by shell completion; see 'openbits completion --help'."),
]

FILES: list[tuple[str, str]] = [
    ("$XDG_RUNTIME_DIR/openbits/openbits.sock", "The daemon's Unix socket (mode 0600)."),
    ("~/.local/state/openbits/", "The state directory ($XDG_STATE_HOME/openbits): serve --state-dir."),
    ("<state-dir>/jobs.sqlite", "The persistent job queue (SQLite, WAL)."),
    ("<state-dir>/openbits.sock", "The socket when XDG_RUNTIME_DIR is not set."),
    ("openbits.toml", "Settings of serve, read only when given: serve --config FILE."),
]

EXAMPLES: list[tuple[str, str]] = [
    ("openbits serve &", "Start the daemon (foreground; SIGTERM or SIGINT stop it)."),
    ("openbits transfer https://host/big.iso ~/big.iso", "Download one file with a progress bar."),
    ("JOB=$(openbits create nightly)", "A suspended job; its JobId is printed."),
    ("openbits add nightly https://host/a.tar /srv/a.tar", "Add a file (JOB: JobId or name)."),
    ("openbits add-set nightly list.txt", "Add the 'URL DEST' lines of list.txt (all or none)."),
    ("openbits resume nightly && openbits wait nightly", "Start it and wait for the end."),
    ("openbits complete nightly", "Publish the files (they appear only now)."),
    ("openbits watch", "A live table of your jobs."),
    ('openbits query "SELECT JobId FROM BitsClientJob WHERE State = 4"', "WQL."),
    ("openbits get --json | jq '.[].State'", "Every command a script reads has --json."),
    ('eval "$(openbits completion bash)"', "Shell completion for this shell."),
]

SEE_ALSO = (
    "bitsadmin /? (the same daemon with Windows bitsadmin's switches), "
    "'openbits COMMAND --help', README.md (the API, configuration)."
)


class ManGroup(click.Group):
    """A click group whose help reads like a man page."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = [name for _, names in SECTIONS for name in names]
        known = [n for n in order if n in self.commands]
        return known + sorted(n for n in self.commands if n not in order)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sectioned = {name for _, names in SECTIONS for name in names}
        sections = [*SECTIONS, ("OTHER COMMANDS", sorted(n for n in self.commands if n not in sectioned))]
        width = max((len(n) for n in self.commands), default=0)  # one column for every section
        listed: set[str] = set()
        for title, names in sections:
            rows: list[tuple[str, str]] = []
            for name in names:
                command = self.get_command(ctx, name)
                if command is None or command.hidden or name in listed:
                    continue
                listed.add(name)
                limit = formatter.width - formatter.current_indent - width - 4
                rows.append((name.ljust(width), command.get_short_help_str(limit=limit)))
            if rows:
                _section(formatter, title, rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _section(formatter, "EXIT STATUS", EXIT_STATUS)
        _section(formatter, "ENVIRONMENT", ENVIRONMENT)
        _section(formatter, "FILES", FILES, stacked=True)
        _section(formatter, "EXAMPLES", EXAMPLES, stacked=True)
        formatter.write_paragraph()
        formatter.write("SEE ALSO\n")
        with formatter.indentation():
            formatter.write_text(SEE_ALSO)


def _section(
    formatter: click.HelpFormatter, title: str, rows: Sequence[tuple[str, str]], stacked: bool = False
) -> None:
    """A man-page section: the heading flush left in capitals, then its entries indented;
    ``stacked``: each term on a line of its own with its text below (long terms)."""
    formatter.write_paragraph()
    formatter.write(f"{title}\n")
    with formatter.indentation():
        if not stacked:
            formatter.write_dl(rows, col_max=20)
            return
        for term, text in rows:
            formatter.write(f"{'':>{formatter.current_indent}}{term}\n")
            with formatter.indentation():
                formatter.write_text(text)
