"""What the commands share: the context (the client, made on first use), ``--socket`` and
``--json``, JOB and its completion, and the parsers of command-line values."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from openbits.cli.render import print_json
from openbits.client import Client
from openbits.model import BG_LENGTH_TO_EOF, JobPriority

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


PRIORITIES = {p.name.lower(): int(p) for p in JobPriority}


# -- argument helpers -----------------------------------------------------------------------------


def parse_priority(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lower() in PRIORITIES:
        return PRIORITIES[value.lower()]
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}: use foreground, high, normal, low or 0-3")


class BitsChoice(click.Choice):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """One of our spellings (no-proxy, current-user), or bitsadmin's (NO_PROXY,
    CURRENT_USER): any case, '_' for '-'."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = value.lower().replace("_", "-")
        return super().convert(value, param, ctx)


def absolute(path: str) -> str:
    """Local paths given on the command line are relative to the caller's directory."""
    return os.path.abspath(os.path.expanduser(path))


def source_url(source: str) -> str:
    """A URL as given; an existing local path made absolute."""
    if "://" in source or source.startswith("/"):
        return source
    if os.path.exists(source):
        return absolute(source)
    return source


def parse_ranges(text: str) -> list[dict[str, int]]:
    """``offset:length[,offset:length…]``; a length of ``eof`` runs to the end of the file."""
    ranges = []
    for part in text.split(","):
        offset, sep, length = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            start = int(offset, 10)
            count = BG_LENGTH_TO_EOF if length.strip().lower() == "eof" else int(length, 10)
            if start < 0 or count < 0:
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"{part.strip()!r} is not a range: use OFFSET:LENGTH or OFFSET:eof (bytes, not negative)",
                param_hint="RANGES",
            ) from None
        ranges.append({"InitialOffset": start, "Length": count})
    return ranges


def parse_file_set(text: str, where: str) -> list[dict[str, str]]:
    """``URL DEST [DIGEST]`` a line (shell-style quoting for names with spaces); blank lines
    and lines starting with ``#`` are skipped. DEST is relative to the current directory."""
    files = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shlex.split(stripped)
        except ValueError as e:
            raise click.UsageError(f"{where}, line {number}: {e}") from None
        if len(words) not in (2, 3):
            raise click.UsageError(f"{where}, line {number}: expected 'URL DEST [DIGEST]', got {stripped!r}")
        entry = {"RemoteUrl": source_url(words[0]), "LocalFile": absolute(words[1])}
        if len(words) == 3:
            entry["Digest"] = words[2]
        files.append(entry)
    if not files:
        raise click.UsageError(f"{where}: no 'URL DEST' line")
    return files


def policy_value(text: str) -> Any:
    """A policy value from the command line: JSON when it parses (10, true, null), else the
    string as given (10M, off, "Mon-08:00,1M Mon-18:00,off")."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_password(prompt: str, from_stdin: bool = False) -> str:
    """From the first line of stdin (``from_stdin``), else from a prompt without echo on the
    terminal; never from argv.  Without a terminal it must come from stdin."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.UsageError(
            "no terminal to ask for the password on: give it on stdin with --password-stdin"
        )
    return str(click.prompt(prompt, hide_input=True, default="", show_default=False))


# -- context, options ------------------------------------------------------------------------------


class Context:
    """Where the commands find the daemon: the Unix socket, or ``url`` (``--url``: it wins
    over a socket) with the bearer token of ``token_file`` (else $OPENBITS_TOKEN) and the
    CA file ``cacert`` (else $OPENBITS_CACERT, else the system's trust)."""

    def __init__(
        self,
        socket_path: str | None = None,
        url: str | None = None,
        token_file: str | None = None,
        cacert: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.url = url
        self.token_file = token_file
        self.cacert = cacert
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            if self.url is None:
                self._client = Client(self.socket_path)
            else:
                self._client = Client(url=self.url, token=self._token(), cacert=self.cacert)
        return self._client

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            with open(self.token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as e:
            raise click.UsageError(f"cannot read --token-file {self.token_file}: {e.strerror or e}") from None
        if not token:
            raise click.UsageError(f"--token-file {self.token_file} holds no token")
        return token


pass_ctx = click.make_pass_decorator(Context)


def _socket_given(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.ensure_object(Context).socket_path = value
    return value


#: ``--socket`` after the command too (``openbits get --socket PATH``)
socket_option = click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    expose_value=False,
    callback=_socket_given,
    help="The daemon's Unix socket (as openbits --socket; env OPENBITS_SOCKET).",
)


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def json_option(what: str) -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def complete_job(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of JOB: your jobs' display names and JobIds (nothing without a daemon)."""
    from click.shell_completion import CompletionItem

    obj = ctx.find_object(Context)
    socket_path = obj.socket_path if obj is not None else ctx.find_root().params.get("socket_path")
    try:
        with Client(socket_path) as client:
            jobs = client.list_jobs()
    except Exception:
        return []
    items = []
    for job in jobs:
        for value in (job.display_name, job.job_id):
            if value and value.lower().startswith(incomplete.lower()):
                items.append(CompletionItem(value, help=job.state.name))
    return items


def job_argument(required: bool = True) -> Decorator:
    metavar = "JOB" if required else "[JOB]"
    return click.argument("job", required=required, metavar=metavar, shell_complete=complete_job)


def _answered(result: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    if as_json:
        print_json(result)
    elif text:
        click.echo(text)
