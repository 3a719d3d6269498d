"""`openbits`: the command line, verbs after the BitsTransfer cmdlets.

Every instance method of the daemon has a command; every command whose output a script
reads takes ``--json``. ``openbits --help`` is laid out as a man page (``cli/manpage.py``);
what is drawn lives in ``cli/render.py``. rich is imported only by the two displays that
need a terminal (``watch``'s live table and ``transfer``'s progress bar).

Exit codes: 0 success; 1 a BITS error (the HRESULT and its name are printed);
2 bad usage; 3 no daemon answers; 130 interrupted; 141 stdout closed by its reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from functools import wraps
from typing import IO, TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from openbits.cli import pipe, render
from openbits.cli.manpage import ManGroup
from openbits.cli.render import print_json
from openbits.client import Client, DaemonUnavailable, StreamEvent
from openbits.errors import BitsError, HResult, hresult_name
from openbits.model import BG_LENGTH_TO_EOF, JobPriority, JobState

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from openbits.jobs import BitsJob

P = ParamSpec("P")
R = TypeVar("R")

EXIT_BITS_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_INTERRUPTED = 130

PRIORITIES = {p.name.lower(): int(p) for p in JobPriority}
END_STATES = {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
SUCCESS_STATES = {JobState.TRANSFERRED, JobState.ACKNOWLEDGED}

#: SetJobState codes (bits-spec §1.3)
CANCEL, COMPLETE, RESUME, SUSPEND = 0, 1, 2, 3
#: SetCredentials' WMI encodings (bits-spec §1.3: zero-based, unlike the COM ones)
TARGETS = ("server", "proxy")
SCHEMES = ("basic", "digest", "ntlm", "negotiate", "passport")
#: BG_JOB_PROXY_USAGE (bits-spec §2.8)
PROXY_USAGES = ("preconfig", "no-proxy", "override", "autodetect")
#: BG_CERT_STORE_LOCATION (bits-spec §2.7)
STORE_LOCATIONS = (
    "current-user",
    "local-machine",
    "current-service",
    "services",
    "users",
    "current-user-group-policy",
    "local-machine-group-policy",
    "local-machine-enterprise",
)

# -- failures ----------------------------------------------------------------------------------


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
        except (ConnectionError, PermissionError, TimeoutError) as e:
            fail(f"cannot talk to the openbits daemon: {e}", EXIT_NO_DAEMON)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)

    return wrapper


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
    """``URL DEST`` a line (shell-style quoting for names with spaces); blank lines and
    lines starting with ``#`` are skipped. DEST is relative to the current directory."""
    files = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            words = shlex.split(stripped)
        except ValueError as e:
            raise click.UsageError(f"{where}, line {number}: {e}") from None
        if len(words) != 2:
            raise click.UsageError(f"{where}, line {number}: expected 'URL DEST', got {stripped!r}")
        files.append({"RemoteUrl": source_url(words[0]), "LocalFile": absolute(words[1])})
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


def read_password(prompt: str) -> str:
    """From a hidden prompt on a terminal, else the first line of stdin; never from argv."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True, default="", show_default=False))
    return sys.stdin.readline().rstrip("\r\n")


# -- context, options ------------------------------------------------------------------------------


class Context:
    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket_path)
        return self._client


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


# -- the group --------------------------------------------------------------------------------------

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=ManGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--socket",
    "socket_path",
    envvar="OPENBITS_SOCKET",
    metavar="PATH",
    help="The daemon's Unix socket (env OPENBITS_SOCKET; default $XDG_RUNTIME_DIR/openbits/openbits.sock).",
)
@click.version_option(package_name="openbits", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None) -> None:
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
    """
    ctx.obj = Context(socket_path)  # (a command's own --socket may replace it)


# -- jobs ---------------------------------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False, default="")
@click.option("--description", "-d", default=None, help="Job description (≤ 1024 characters).")
@click.option("--priority", "-p", default=None, help="foreground, high, normal (default) or low.")
@click.option(
    "--type", "job_type", default="download", type=click.Choice(["download", "upload", "upload-reply"])
)
@json_option('the answer ({"ReturnValue": 0, "JobId": …})')
@socket_option
@pass_ctx
@handled
def create(
    ctx: Context, name: str, description: str | None, priority: str | None, job_type: str, as_json: bool
) -> None:
    """Create an empty, suspended job and print its JobId.

    The job holds no file yet: add files with 'add', 'add-set' or 'add-ranges', then
    'resume' it. NAME is its display name (it need not be unique, but a unique one can stand
    for the JobId in the other commands).

    \b
    Example:
      JOB=$(openbits create nightly --priority low)
    """
    job_types = ["download", "upload", "upload-reply"]
    job = ctx.client.create_job(
        name, description=description, priority=parse_priority(priority), job_type=job_types.index(job_type)
    ).job_id
    if as_json:
        print_json({"ReturnValue": 0, "JobId": job})
    else:
        click.echo(job)


def _state_command(name: str, code: int, doc: str) -> None:
    @cli.command(name=name, help=doc)
    @job_argument()
    @json_option('the answer ({"ReturnValue": …})')
    @socket_option
    @pass_ctx
    @handled
    def command(ctx: Context, job: str, as_json: bool) -> None:
        unfinished = _unfinished_files(ctx.client, job) if code == COMPLETE else []
        result = ctx.client.invoke(job, "SetJobState", JobState=code)
        value = int(result.get("ReturnValue", 0))
        if as_json:
            print_json(result)
        elif value:
            click.echo(f"{name}: 0x{value:08X} {hresult_name(value)}")
        if value == HResult.BG_S_PARTIAL_COMPLETE and not as_json:
            for local in unfinished:
                click.echo(f"discarded (not transferred): {local}", err=True)


def _unfinished_files(client: Client, job: str) -> list[str]:
    """The files a Complete now would discard (BG_S_PARTIAL_COMPLETE): those not transferred."""
    return [f.local_file for f in client.get_job(job).files if not f.completed]


_state_command(
    "cancel",
    CANCEL,
    """Cancel a job and delete its temporary files.

    The job goes to CANCELLED and leaves the list; the files it transferred so far are
    deleted, files it already published are not touched (Remove-BitsTransfer).

    \b
    Example:
      openbits cancel nightly
    """,
)
_state_command(
    "complete",
    COMPLETE,
    """Complete a job: publish its transferred files.

    Every transferred file is moved to its destination name at once (fsync, then an atomic
    rename) and the job is ACKNOWLEDGED. A job whose files are not all transferred answers
    BG_S_PARTIAL_COMPLETE (printed) and publishes those that are; the others are discarded
    (their partial downloads deleted), each named on stderr.

    \b
    Example:
      openbits wait nightly && openbits complete nightly
    """,
)
_state_command(
    "resume",
    RESUME,
    """Resume (start) a job.

    A SUSPENDED job is queued and transfers when the scheduler gives it its turn; a job in
    ERROR or TRANSIENT_ERROR is retried at once. A job without files answers BG_E_EMPTY.

    \b
    Example:
      openbits resume nightly
    """,
)
_state_command(
    "suspend",
    SUSPEND,
    """Suspend a job.

    The transfer stops at once; the bytes already on disk are kept and the job resumes from
    them later.

    \b
    Example:
      openbits suspend nightly
    """,
)


@cli.command()
@job_argument(required=False)
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--include-finished", is_flag=True, help="Show an ACKNOWLEDGED or CANCELLED job.")
@click.option("--where", default=None, metavar="COND", help='A WQL condition, e.g. "State = 4".')
@json_option("the BitsClientJob instance(s)")
@click.option(
    "--watch", "-w", is_flag=True, help="Print each change as it happens (--json: one object a line)."
)
@socket_option
@pass_ctx
@handled
def get(
    ctx: Context,
    job: str | None,
    all_users: bool,
    include_finished: bool,
    where: str | None,
    as_json: bool,
    watch: bool,
) -> None:
    """Show one job, or list your jobs.

    Without JOB, a table of your jobs (--json: an array of instances); with JOB, its
    properties and files (--json: the instance, exactly as the API has it). With --watch,
    every change as a line until Ctrl-C, or until JOB is acknowledged or cancelled
    (Get-BitsTransfer).

    \b
    Example:
      openbits get --json | jq -r '.[] | select(.State == 4) | .JobId'
    """
    if watch:
        _watch_events(ctx.client, None if job is None else ctx.client.resolve(job), all_users, as_json)
        return
    if job is None:
        jobs = [j.raw for j in ctx.client.list_jobs(all_users=all_users, where=where)]
        if as_json:
            print_json(jobs)
        else:
            render.print_table(jobs, empty="no jobs match" if where else "no jobs")
        return
    if where is not None:
        raise click.UsageError("--where lists jobs: give it without JOB")
    instance = ctx.client.get_job(job, include_finished=include_finished).raw
    if as_json:
        print_json(instance)
    else:
        render.print_job(instance)


@cli.command(name="set")
@job_argument()
@click.option("--display-name", default=None)
@click.option("--description", default=None)
@click.option("--priority", default=None, help="foreground, high, normal or low.")
@click.option("--minimum-retry-delay", type=int, default=None, help="Seconds (at least 5).")
@click.option("--no-progress-timeout", type=int, default=None, help="Seconds; 0 = every error is fatal.")
@click.option("--max-download-time", type=int, default=None, help="Seconds of transfer before ERROR.")
@click.option(
    "--custom-header",
    "custom_headers",
    multiple=True,
    help='"Name: value" sent with every request (repeat it; "" clears them).',
)
@click.option("--security-flags", type=int, default=None, help="BG_SSL_* and redirect-policy bits.")
@click.option("--notify-flags", type=int, default=None, help="1 transferred, 2 error, 4 none (default 3).")
@click.option(
    "--notify-cmd",
    default=None,
    help='Run this command line as you on TRANSFERRED/ERROR: "/abs/program args…" ("" removes it).',
)
@click.option(
    "--notify-url",
    default=None,
    help='POST the job as JSON to this URL on TRANSFERRED/ERROR ("" removes it).',
)
@json_option("the updated instance")
@socket_option
@pass_ctx
@handled
def set_(
    ctx: Context,
    job: str,
    display_name: str | None,
    description: str | None,
    priority: str | None,
    minimum_retry_delay: int | None,
    no_progress_timeout: int | None,
    max_download_time: int | None,
    custom_headers: tuple[str, ...],
    security_flags: int | None,
    notify_flags: int | None,
    notify_cmd: str | None,
    notify_url: str | None,
    as_json: bool,
) -> None:
    """Change a job's properties.

    The read/write properties (name, description, priority, retry delay, no-progress
    timeout) change all or nothing; the others follow, one method call each
    (Set-BitsTransfer).

    \b
    Example:
      openbits set nightly --priority low --notify-cmd "/usr/bin/logger -t openbits done"
    """
    props: dict[str, Any] = {}
    if display_name is not None:
        props["DisplayName"] = display_name
    if description is not None:
        props["Description"] = description
    prio = parse_priority(priority)
    if prio is not None:
        props["Priority"] = prio
    if minimum_retry_delay is not None:
        props["MinimumRetryDelay"] = minimum_retry_delay
    if no_progress_timeout is not None:
        props["NoProgressTimeout"] = no_progress_timeout
    calls: list[tuple[str, dict[str, Any]]] = []
    if max_download_time is not None:
        calls.append(("SetMaximumDownloadTime", {"MaximumDownloadTime": max_download_time}))
    if custom_headers:
        text = "".join(f"{h}\r\n" for h in custom_headers if h)
        calls.append(("SetCustomHeaders", {"CustomHeaders": text or None}))
    if security_flags is not None:
        calls.append(("SetSecurityFlags", {"SecurityFlags": security_flags}))
    if notify_flags is not None:
        calls.append(("SetNotifyFlags", {"NotifyFlags": notify_flags}))
    if notify_cmd is not None:
        calls.append(("SetNotifyCmdLine", notify_cmd_params(notify_cmd)))
    if notify_url is not None:
        calls.append(("SetNotifyUrl", {"NotifyUrl": notify_url or None}))
    if not props and not calls:
        raise click.UsageError("nothing to set: give at least one option")
    instance = ctx.client.set_properties(job, **props).raw if props else None
    for method, params in calls:
        ctx.client.invoke(job, method, **params)
    if as_json:
        print_json(ctx.client.get_job(job).raw if calls or instance is None else instance)


def notify_cmd_params(command: str) -> dict[str, Any]:
    """``"/abs/program args…"`` as SetNotifyCmdLine's parameters: the first word is the
    program, the whole line its command line (program first, as BITS has it)."""
    if not command.strip():
        return {"Program": None, "Parameters": None}
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--notify-cmd") from None
    return {"Program": words[0], "Parameters": command}


@cli.command()
@job_argument()
@json_option("the GetError answer")
@socket_option
@pass_ctx
@handled
def error(ctx: Context, job: str, as_json: bool) -> None:
    """Show the error of a job in ERROR or TRANSIENT_ERROR.

    The HRESULT and its name, the context it happened in (5: the remote file, 4: the local
    file, …), their descriptions, and the file concerned. A job without an error answers
    BG_E_ERROR_INFORMATION_UNAVAILABLE.

    \b
    Example:
      openbits error nightly --json | jq .ErrorCode
    """
    info = ctx.client.invoke(job, "GetError")
    if as_json:
        print_json(info)
    else:
        render.print_error(info)


@cli.command()
@job_argument()
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 1).")
@json_option("the final instance")
@socket_option
@pass_ctx
@handled
def wait(ctx: Context, job: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job is TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED.

    Prints the final state (--json: the instance). Exits 0 for TRANSFERRED or ACKNOWLEDGED,
    1 otherwise. It follows the daemon's events, so it returns as soon as the job ends.
    A SUSPENDED job, or one in TRANSIENT_ERROR, is waited through, with a word on stderr.

    \b
    Example:
      openbits resume nightly && openbits wait nightly && openbits complete nightly
    """
    try:
        final = ctx.client.wait(job, timeout, progress=_Hints(ctx.client))
    except TimeoutError as e:
        fail(str(e))
    if as_json:
        print_json(ctx.client.get_job(final.job_id, include_finished=True).raw)
    else:
        click.echo(final.state.name)
    if final.state not in SUCCESS_STATES:
        sys.exit(EXIT_BITS_ERROR)


@cli.command(name="take-ownership")
@job_argument()
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def take_ownership(ctx: Context, job: str, as_json: bool) -> None:
    """Make you the owner of another user's job (administrators).

    The job then runs with your identity and credentials (bitsadmin /takeownership,
    Set-BitsTransfer -SetOwnerToCurrentUser); its custom headers and notifications go.

    \b
    Example:
      sudo openbits take-ownership {5C2A1E24-3E0F-4B0A-9E57-1D8D0A6F5B11}
    """
    result = ctx.client.invoke(job, "TakeOwnership")
    if as_json:
        print_json(result)


# -- files --------------------------------------------------------------------------------------------


def _answered(result: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    if as_json:
        print_json(result)
    elif text:
        click.echo(text)


@cli.command()
@job_argument()
@click.argument("url")
@click.argument("dest")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add(ctx: Context, job: str, url: str, dest: str, as_json: bool) -> None:
    """Add a file: URL (http, https, file:// or a path) to DEST.

    DEST is a local path (relative to the current directory); its directory must exist. The
    file appears there only when the job is completed (Add-BitsFile).

    \b
    Example:
      openbits add nightly https://example.com/a.tar /srv/a.tar
    """
    _answered(ctx.client.invoke(job, "AddFile", RemoteUrl=source_url(url), LocalFile=absolute(dest)), as_json)


@cli.command(name="add-set")
@job_argument()
@click.argument("file", metavar="FILE|-", type=click.File("r"))
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add_set(ctx: Context, job: str, file: IO[str], as_json: bool) -> None:
    """Add the files listed in FILE (or stdin): all of them or none.

    One 'URL DEST' pair a line, as bitsadmin /addfileset reads them; blank lines and lines
    starting with # are skipped; quote a name that has spaces. The files are added in one
    AddFileSet call, so a bad line or a refused file adds nothing.

    \b
    Example:
      printf '%s\\n' "https://host/a.iso a.iso" "https://host/b.iso b.iso" | openbits add-set nightly -
    """
    where = "stdin" if file.name == "<stdin>" else file.name
    files = parse_file_set(file.read(), where)
    result = ctx.client.invoke(job, "AddFileSet", Files=files)
    _answered(result, as_json)


@cli.command(name="add-ranges")
@job_argument()
@click.argument("url")
@click.argument("dest")
@click.argument("ranges")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def add_ranges(ctx: Context, job: str, url: str, dest: str, ranges: str, as_json: bool) -> None:
    """Add byte ranges of a remote file as one local file.

    RANGES is OFFSET:LENGTH,… (a LENGTH of eof runs to the end of the file). The ranges
    are downloaded one after the other into DEST, which holds only them (AddFileWithRanges,
    bitsadmin /addfilewithranges). HTTP and HTTPS only; ranges must not overlap.

    \b
    Example:
      openbits add-ranges nightly https://host/disk.img head+tail.bin 0:512,1048576:eof
    """
    result = ctx.client.invoke(
        job,
        "AddFileWithRanges",
        RemoteUrl=source_url(url),
        LocalFile=absolute(dest),
        Ranges=parse_ranges(ranges),
    )
    _answered(result, as_json)


@cli.command()
@job_argument()
@click.option("--include-finished", is_flag=True, help="Also for an ACKNOWLEDGED or CANCELLED job.")
@json_option("the Files array (BitsClientFile instances)")
@socket_option
@pass_ctx
@handled
def files(ctx: Context, job: str, include_finished: bool, as_json: bool) -> None:
    """List a job's files: progress, bytes, remote URL and local file.

    One row a file, in the job's order (bitsadmin /listfiles); a file of ranges shows them
    after its URL.

    \b
    Example:
      openbits files nightly
    """
    instance = ctx.client.get_job(job, include_finished=include_finished).raw
    listed = instance.get("Files") or []
    if as_json:
        print_json(listed)
    elif listed:
        render.print_files(listed)


@cli.command(name="set-remote-name")
@job_argument()
@click.argument("local")
@click.argument("url")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def set_remote_name(ctx: Context, job: str, local: str, url: str, as_json: bool) -> None:
    """Change the URL a file of the job comes from.

    LOCAL names the file by its local path (relative to the current directory). The file
    goes on from where it is when the new URL serves the same content (SetRemoteName).

    \b
    Example:
      openbits set-remote-name nightly /srv/a.tar https://mirror.example.com/a.tar
    """
    result = ctx.client.invoke(job, "SetRemoteName", LocalFile=absolute(local), RemoteUrl=source_url(url))
    _answered(result, as_json)


@cli.command(name="replace-prefix")
@job_argument()
@click.argument("old")
@click.argument("new")
@json_option('the answer ({"ReturnValue": 0, "FilesChanged": N})')
@socket_option
@pass_ctx
@handled
def replace_prefix(ctx: Context, job: str, old: str, new: str, as_json: bool) -> None:
    """Point the job's URLs that start with OLD at NEW instead.

    Every file not yet transferred whose URL starts with OLD (any case) gets NEW instead
    (bitsadmin /replaceremoteprefix). Prints how many files changed.

    \b
    Example:
      openbits replace-prefix nightly http://old.example.com https://new.example.com
    """
    result = ctx.client.invoke(job, "ReplaceRemotePrefix", OldPrefix=old, NewPrefix=new)
    count = int(result.get("FilesChanged", 0))
    _answered(result, as_json, f"{count} file{'s' if count != 1 else ''} changed")


@cli.command()
@job_argument()
@click.option("--file", "local", default=None, metavar="LOCAL", help="The file (its local path).")
@json_option('the answer ({"ReturnValue": 0, "ResponseHeaders": "…"})')
@socket_option
@pass_ctx
@handled
def headers(ctx: Context, job: str, local: str | None, as_json: bool) -> None:
    """Show the HTTP response headers a file of the job last received.

    --file names the file by its local path; a job of one file needs none. Nothing is
    printed but "no response received yet" before one came (GetResponseHeaders; --json: null).

    \b
    Example:
      openbits headers nightly --file /srv/a.tar | grep -i etag
    """
    if local is None:
        listed = ctx.client.get_job(job).files
        if len(listed) != 1:
            raise click.UsageError(f"the job has {len(listed)} files: name one with --file LOCAL")
        local = listed[0].local_file
    else:
        local = absolute(local)
    result = ctx.client.invoke(job, "GetResponseHeaders", LocalFile=local)
    if as_json:
        print_json(result)
        return
    text = result.get("ResponseHeaders")
    click.echo(str(text).replace("\r\n", "\n").rstrip("\n") if text else "no response received yet")


# -- transfer options: credentials, proxy, certificate -----------------------------------------------


@cli.command()
@job_argument()
@click.option("--target", type=BitsChoice(TARGETS), default="server", show_default=True)
@click.option("--scheme", type=BitsChoice(SCHEMES), default="basic", show_default=True)
@click.option(
    "--user",
    default=None,
    help="User name; the password is asked for (or read from stdin). Without it: the "
    "implicit credentials (ntlm, negotiate).",
)
@click.option("--remove", is_flag=True, help="Remove the credentials of TARGET and SCHEME instead.")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def credentials(
    ctx: Context, job: str, target: str, scheme: str, user: str | None, remove: bool, as_json: bool
) -> None:
    """Set (or --remove) the credentials a job gives a server or proxy.

    The password is never taken from the command line: it is asked for, without echo, on a
    terminal, or read from the first line of stdin (SetCredentials, RemoveCredentials). Not
    built yet: the daemon answers E_NOTIMPL.

    \b
    Example:
      openbits credentials nightly --scheme basic --user alice < ~/.secrets/alice
    """
    t, s = TARGETS.index(target), SCHEMES.index(scheme)
    if remove:
        if user is not None:
            raise click.UsageError("--remove takes no --user")
        result = ctx.client.invoke(job, "RemoveCredentials", Target=t, Scheme=s)
    else:
        password = read_password(f"Password for {user}") if user is not None else None
        result = ctx.client.invoke(
            job, "SetCredentials", Target=t, Scheme=s, UserName=user, Password=password
        )
    _answered(result, as_json)


@cli.command()
@job_argument()
@click.argument("usage", type=BitsChoice(PROXY_USAGES))
@click.option("--list", "proxies", default=None, metavar="PROXIES", help="Proxies (override).")
@click.option("--bypass", default=None, metavar="HOSTS", help="Hosts reached directly (override).")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def proxy(ctx: Context, job: str, usage: str, proxies: str | None, bypass: str | None, as_json: bool) -> None:
    """Choose how a job reaches servers (its proxy settings).

    USAGE is preconfig, no-proxy, override or autodetect (or bitsadmin's NO_PROXY, …, any
    case). preconfig (the default) uses the
    daemon's proxy environment; no-proxy goes direct; override uses --list (proxies, comma
    or space separated) and --bypass (hosts reached directly); autodetect detects per file
    (SetProxySettings). Not built yet: the daemon answers E_NOTIMPL.

    \b
    Example:
      openbits proxy nightly override --list http://proxy:3128 --bypass "<local>"
    """
    if usage != "override" and (proxies is not None or bypass is not None):
        raise click.UsageError("--list and --bypass go with override only")
    params: dict[str, Any] = {"ProxyUsage": PROXY_USAGES.index(usage)}
    if usage == "override":
        if not proxies:
            raise click.UsageError("override needs --list")
        params["ProxyList"] = " ".join(p for p in proxies.replace(",", " ").split() if p)
        params["ProxyBypassList"] = bypass or None
    _answered(ctx.client.invoke(job, "SetProxySettings", **params), as_json)


@cli.command()
@job_argument()
@click.option(
    "--store-location",
    type=BitsChoice(STORE_LOCATIONS),
    default="current-user",
    show_default=True,
    help="The certificate store location.",
)
@click.option("--store", "store_name", default="MY", show_default=True, help="The store name.")
@click.option("--hash", "cert_hash", default=None, metavar="HEX", help="The certificate's SHA-1 hash.")
@click.option("--subject", default=None, help="The certificate's subject name.")
@click.option("--remove", is_flag=True, help="Remove the job's client certificate.")
@json_option("the answer")
@socket_option
@pass_ctx
@handled
def cert(
    ctx: Context,
    job: str,
    store_location: str,
    store_name: str,
    cert_hash: str | None,
    subject: str | None,
    remove: bool,
    as_json: bool,
) -> None:
    """Set (or --remove) the client certificate a job shows HTTPS servers.

    The certificate is found in a store by its SHA-1 hash or its subject name
    (SetClientCertificateById, SetClientCertificateByName, RemoveClientCertificate). Not
    built yet: the daemon answers E_NOTIMPL.

    \b
    Example:
      openbits cert nightly --store MY --subject "CN=backup client"
    """
    if sum((cert_hash is not None, subject is not None, remove)) != 1:
        raise click.UsageError("give exactly one of --hash, --subject and --remove")
    location = STORE_LOCATIONS.index(store_location)
    if remove:
        result = ctx.client.invoke(job, "RemoveClientCertificate")
    elif cert_hash is not None:
        try:
            digest = list(bytes.fromhex(cert_hash.removeprefix("0x").replace(":", "")))
        except ValueError:
            raise click.BadParameter(f"{cert_hash!r} is not hexadecimal", param_hint="--hash") from None
        result = ctx.client.invoke(
            job, "SetClientCertificateById", CertStoreLocation=location, StoreName=store_name, CertHash=digest
        )
    else:
        result = ctx.client.invoke(
            job,
            "SetClientCertificateByName",
            CertStoreLocation=location,
            StoreName=store_name,
            SubjectName=subject,
        )
    _answered(result, as_json)


# -- waiting and following --------------------------------------------------------------------------


def _waiting_hint(job: BitsJob) -> str | None:
    """What a person waiting on a job that will not move on by itself should know."""
    if job.state is JobState.SUSPENDED:
        return (
            f"{job.job_id} is SUSPENDED: it waits until someone resumes it "
            f"(openbits resume {job.job_id}); Ctrl-C stops waiting"
        )
    return None


class _Hints:
    """Says once, on stderr, why a job does not move (SUSPENDED, a transient error)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._said: tuple[Any, ...] | None = None

    def __call__(self, job: BitsJob) -> None:
        key: tuple[Any, ...] = (job.state, job.transient_error_count)
        if key == self._said:
            return
        text = _waiting_hint(job) or (_retry_text(self.client, job) if _retrying(job) else None)
        if text is not None:
            self._said = key
            click.echo(f"openbits: {text}", err=True)


def _retrying(job: BitsJob) -> bool:
    return job.state is JobState.TRANSIENT_ERROR


def _retry_text(client: Client, job: BitsJob) -> str:
    """Why the job is in TRANSIENT_ERROR and when the daemon tries again."""
    try:
        info = client.get_error(job.job_id)
        reason = f"{info.name}: {info.error_description}"
    except BitsError as e:
        reason = e.name
    when = ""
    if job.modification_time is not None:
        retry = job.modification_time.timestamp() + job.minimum_retry_delay
        when = f"; next try at {time.strftime('%H:%M:%S', time.localtime(retry))}"
    return f"{job.job_id} is in TRANSIENT_ERROR ({reason}){when}"


def _watch_events(client: Client, job: str | None, all_users: bool, as_json: bool) -> None:
    """``get --watch``: every event as it comes, resuming after the last one if the daemon
    ends the stream; Ctrl-C exits 130 without a word."""
    last: int | None = None
    try:
        while True:
            with client.events(last_event_id=last, job=job, all_users=all_users) as stream:
                for event in stream:
                    click.echo(_event_text(event, as_json))
                    if job is not None and event.event in ("JobCancelled", "JobAcknowledged"):
                        return
                last = stream.last_event_id
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _event_text(event: StreamEvent, as_json: bool) -> str:
    if as_json:
        return render.json_line({"id": event.id, "event": event.event, "data": event.data})
    return render.event_line(event.id, event.event, event.data)


@cli.command()
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option(
    "--until-done",
    "until",
    default=None,
    metavar="JOB",
    shell_complete=complete_job,
    help="End when JOB is TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED (exit status as wait).",
)
@click.option("--json", "as_json", is_flag=True, help="One change a line, as JSON (never a table).")
@socket_option
@pass_ctx
@handled
def watch(ctx: Context, all_users: bool, until: str | None, as_json: bool) -> None:
    """A live table of your jobs, redrawn as they change; Ctrl-C ends it.

    On a terminal, a table of your jobs (state, priority, files, bytes, rate, time left; a
    progress bar from 110 columns on) redrawn at every change the daemon sends (its event
    stream: no polling). ID is the JobId's shortest unique prefix, as git shortens hashes
    (the whole JobId from 160 columns on, and with --json). When stdout is not a
    terminal, or with --json, one line a change instead: time, event id and type, JobId,
    name, state, files and bytes (--json: {"id", "event", "data"}). Ctrl-C exits 130
    without a word.

    \b
    Example:
      openbits watch --until-done nightly > nightly.log
    """
    client = ctx.client
    try:
        _watch_jobs(client, all_users, until, as_json)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _watch_jobs(client: Client, all_users: bool, until: str | None, as_json: bool) -> None:
    target: str | None = None
    if until is not None:
        target = client.resolve(until)
    stream = client.events(all_users=all_users)  # subscribed before the list is read: no gap
    try:
        jobs = {j.job_id: dict(j.raw) for j in client.list_jobs(all_users=all_users)}
        if target is not None:
            instance = client.get_job(target, include_finished=True, files=False)
            if instance.state in END_STATES:
                _watch_ended(client, target, instance.raw)
                return
        table = sys.stdout.isatty() and not as_json
        display = _LiveJobs(jobs, all_users) if table else None
        try:
            while True:
                try:
                    event = next(stream)
                except StopIteration:  # the daemon ended the stream: resume after its last event
                    stream = client.events(all_users=all_users, last_event_id=stream.last_event_id)
                    continue
                data = event.data
                if event.id is None or not isinstance(data, dict) or "JobId" not in data:  # Reset
                    jobs = {j.job_id: dict(j.raw) for j in client.list_jobs(all_users=all_users)}
                    data = None
                elif event.event in ("JobCancelled", "JobAcknowledged"):
                    jobs.pop(str(data["JobId"]), None)
                else:
                    jobs[str(data["JobId"])] = data
                if display is not None:
                    display.draw(jobs)
                else:
                    click.echo(_event_text(event, as_json))
                if (
                    target is not None
                    and isinstance(data, dict)
                    and data["JobId"] == target
                    and JobState(data["State"]) in END_STATES
                ):
                    if display is not None:
                        display.close()
                        display = None
                    _watch_ended(client, target, data)
                    return
        finally:
            if display is not None:
                display.close()
    finally:
        stream.close()


def _watch_ended(client: Client, job: str, instance: Mapping[str, Any]) -> None:
    state = JobState(instance["State"])
    if state in SUCCESS_STATES:
        return
    if state is JobState.ERROR:
        err = client.invoke(job, "GetError")
        fail(f"{job} is in ERROR: error 0x{err['ErrorCode']:08X} {err['Name']}: {err['ErrorDescription']}")
    fail(f"{job} is {state.name}")


class _LiveJobs:
    """The live table of ``watch`` on a terminal (rich's Live, redrawn at each change)."""

    def __init__(self, jobs: dict[str, dict[str, Any]], all_users: bool) -> None:
        from rich.live import Live

        self._title = "openbits watch" + (" --all-users" if all_users else "")
        self._rates = render.Rates()
        self._live = Live(self._table(jobs), auto_refresh=False, redirect_stderr=False)
        self._live.start(refresh=True)

    def _table(self, jobs: dict[str, dict[str, Any]]) -> Any:
        title = f"{self._title}  {time.strftime('%H:%M:%S')}  (Ctrl-C ends)"
        return render.live_table(jobs, title, self._rates)

    def draw(self, jobs: dict[str, dict[str, Any]]) -> None:
        self._live.update(self._table(jobs), refresh=True)

    def close(self) -> None:
        self._live.stop()


@cli.command()
@click.argument("wql")
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@json_option("the instances")
@socket_option
@pass_ctx
@handled
def query(ctx: Context, wql: str, all_users: bool, as_json: bool) -> None:
    """Run a WQL query: SELECT * | p1, p2 FROM BitsClientJob [WHERE …].

    WHERE takes = <> != < <= > >=, LIKE ('%' and '_'), IS [NOT] NULL, AND, OR, NOT and
    parentheses; keywords and property names in any case; State, Priority and JobType by
    name or number. Exactly the selected properties are printed, as a table in the order
    given (select JobId too to tell the jobs apart); --json prints them as objects.

    \b
    Examples:
      openbits query "SELECT JobId, DisplayName FROM BitsClientJob WHERE State = 'ERROR'"
      openbits query "SELECT * FROM BitsClientJob WHERE DisplayName LIKE 'nightly%'" --json
    """
    rows = ctx.client.query(wql, all_users=all_users)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no instances match")
        return
    columns = list(rows[0])
    render.print_rows([columns] + [[render.cell(r.get(c)) for c in columns] for r in rows])


# -- transfer --------------------------------------------------------------------------------------


def _url_name(source: str) -> str:
    """The last path segment of a URL (or a path), as curl -O names its file: '' if none."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(source).path if "://" in source else source
    name = os.path.basename(unquote(path))
    return "" if name in ("", ".", "..") else name


def _destinations(sources: list[str], dest: str | None) -> list[tuple[str, str]]:
    if dest is None:  # (one SOURCE, no DEST: its own name, here)
        name = _url_name(sources[0])
        if not name:
            raise click.UsageError(f"{sources[0]} has no file name to save it under: give a DEST")
        return [(source_url(sources[0]), absolute(name))]
    dest = absolute(dest)
    if len(sources) > 1 or os.path.isdir(dest) or dest.endswith("/"):
        if not os.path.isdir(dest):
            raise click.UsageError(f"{dest} is not a directory (needed for several sources)")
        return [(source_url(s), os.path.join(dest, _url_name(s) or "index.html")) for s in sources]
    return [(source_url(sources[0]), dest)]


def _one_shot_name(pairs: list[tuple[str, str]]) -> str:
    """A one-shot job is named after its files: ``a.iso``, ``a.iso (+2 more)``."""
    first = os.path.basename(pairs[0][1])
    return first if len(pairs) == 1 else f"{first} (+{len(pairs) - 1} more)"


class _Follower:
    """What ``transfer`` shows while it waits: the JobId once known, a progress bar on a
    terminal (state, file count and name), why a transient error holds it up and when it
    is retried; with ``no_retry`` a transient error ends the transfer."""

    def __init__(self, client: Client, bar: bool, no_retry: bool) -> None:
        self.job_id: str | None = None
        self._hints = _Hints(client)
        self._no_retry = no_retry
        self._bar: Any = _progress_bar() if bar else None
        self._task: Any = None

    def __call__(self, job: BitsJob) -> None:
        self.job_id = job.job_id
        if self._no_retry and job.state is JobState.TRANSIENT_ERROR:
            raise click.ClickException(_retry_text(self._hints.client, job) + "; not retried (--no-retry)")
        if self._bar is not None:
            self._draw(job)
        if job.state is not JobState.SUSPENDED:
            self._hints(job)

    def _draw(self, job: BitsJob) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("transfer", total=None, state="QUEUED", file="")
        busy = next((f for f in job.files if not f.completed), None)
        count = f"{min(job.files_transferred + 1, job.files_total)}/{job.files_total}"
        self._bar.update(
            self._task,
            completed=job.bytes_transferred,
            total=job.bytes_total,
            state=job.state.name,
            file=f"{count} {os.path.basename(busy.local_file)}" if busy else f"{job.files_total} files",
        )

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()


def _progress_bar() -> Any:
    from rich.console import Console
    from rich.progress import Progress

    return Progress(
        *render.transfer_columns(),
        console=Console(stderr=True),  # (beside the other words of transfer; stdout: --json)
        transient=False,
    )


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="SOURCE... [DEST]")
@click.option("--name", default=None, help="The job's display name (default: after its files).")
@click.option("--priority", "-p", default="foreground", help="Priority (default foreground).")
@click.option("--async", "is_async", is_flag=True, help="Start the job and print its JobId; don't wait.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--no-retry", is_flag=True, help="Fail at the first transient error (exit 1), not retry it.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Give up after SECONDS.")
@json_option("the final instance")
@socket_option
@pass_ctx
@handled
def transfer(
    ctx: Context,
    args: tuple[str, ...],
    name: str | None,
    priority: str,
    is_async: bool,
    quiet: bool,
    no_retry: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Download SOURCE to DEST (or several SOURCEs into directory DEST).

    Creates a job, adds the files, resumes it, shows progress, and completes it when every
    byte is there (Start-BitsTransfer). Without DEST, one SOURCE is saved under its own
    name in the current directory (as curl -O). A transient error (a server down) is
    retried, as BITS does, and said on stderr with the time of the next try; --no-retry
    fails at once, --timeout gives up after SECONDS. On an error the job is cancelled (as
    bitsadmin /transfer does) and the exit code is 1; Ctrl-C cancels it too (exit 130).

    \b
    Example:
      openbits transfer https://host/a.iso https://host/b.iso ~/isos/
    """
    sources, dest = (list(args), None) if len(args) == 1 else (list(args[:-1]), args[-1])
    pairs = _destinations(sources, dest)
    client = ctx.client
    options: dict[str, Any] = {"priority": parse_priority(priority)}
    if is_async:
        job = client.transfer(pairs, name or _one_shot_name(pairs), wait=False, **options).job_id
        click.echo(render.json_line({"JobId": job}) if as_json else job)
        return
    follower = _Follower(client, not (quiet or as_json or not sys.stderr.isatty()), no_retry)
    try:
        final = client.transfer(
            pairs, name or _one_shot_name(pairs), progress=follower, timeout=timeout, **options
        )
    except KeyboardInterrupt:
        fail(f"interrupted; job {follower.job_id} cancelled", EXIT_INTERRUPTED)
    except (BitsError, TimeoutError, click.ClickException) as e:
        if not getattr(e, "__notes__", None):
            e.add_note(f"job {follower.job_id} cancelled")
        fail(f"transfer failed: {_failure_text(e)}")
    except (DaemonUnavailable, ConnectionError) as e:
        fail(f"{_failure_text(e)}", EXIT_NO_DAEMON)
    finally:
        follower.close()
    if as_json:
        print_json(dict(final.raw))
    elif not quiet:
        click.echo("Transfer complete.", err=True)


def _failure_text(e: Exception) -> str:
    """The error, then its notes (which file failed; which job is left and how to finish it)."""
    text = f"error {e.hex} {e.name}: {e.message}" if isinstance(e, BitsError) else str(e)
    if isinstance(e, click.ClickException):
        text = e.format_message()
    return "; ".join([text, *getattr(e, "__notes__", ())])


# -- the daemon and the shell ---------------------------------------------------------------------


@cli.command()
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Where the job store lives."
)
@click.option("--socket", "socket_path", default=None, metavar="PATH", help="The Unix socket to serve on.")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="A TOML file."
)
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the API over TCP (e.g. 127.0.0.1:8765); callers there need a bearer token.",
)
def serve(
    state_dir: str | None, socket_path: str | None, config_path: str | None, listen: str | None
) -> None:
    """Run the daemon in the foreground (SIGTERM or SIGINT stop it cleanly).

    The job store is SQLite in the state directory (default $XDG_STATE_HOME/openbits, else
    ~/.local/state/openbits); the socket is $XDG_RUNTIME_DIR/openbits/openbits.sock (else in
    the state directory), mode 0600. The TOML file holds the settings of README
    "Configuration" (bandwidth limits and schedule, retries, limits).

    With --listen (or listen = "HOST:PORT" in the file) the API is served over TCP too;
    every request there needs "Authorization: Bearer <token>" ('openbits token create').

    \b
    Example:
      openbits serve --config ~/.config/openbits.toml &
      openbits serve --listen 127.0.0.1:8765 &
    """
    from openbits.config import Config
    from openbits.daemon import run

    try:
        config = Config.load(
            config_path,
            state_dir=os.path.abspath(state_dir) if state_dir else None,
            socket=os.path.abspath(socket_path) if socket_path else None,
            listen=listen,
        )
    except (OSError, ValueError, TypeError) as e:
        fail(f"bad configuration: {e}", EXIT_USAGE)
    sys.exit(run(config))


@cli.group(invoke_without_command=True)
@json_option("the BitsServicePolicy instance")
@socket_option
@click.pass_context
@handled
def policy(cctx: click.Context, as_json: bool) -> None:
    """Show the service policy: bandwidth limits, their schedule, scheduling.

    Prints the BitsServicePolicy instance: the limits per priority, the weekly schedule or
    work hours, the number of background jobs that run at once, the time slice, and the
    limit in force now. 'policy set' changes it (administrators).

    \b
    Example:
      openbits policy --json | jq .CurrentBandwidthLimitText
    """
    if cctx.invoked_subcommand is not None:
        return
    result = cctx.ensure_object(Context).client.policy()
    if as_json:
        print_json(result)
    else:
        render.print_policy(result)


@policy.command(name="set")
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option("the new BitsServicePolicy instance")
@socket_option
@pass_ctx
@handled
def policy_set(ctx: Context, settings: tuple[str, ...], as_json: bool) -> None:
    """Change the service policy (administrators): all the settings or none.

    KEY is a BitsServicePolicy property (MaxBandwidth, BandwidthSchedule, High-, Normal-,
    LowPriorityBandwidth, ForegroundLimited, WorkHours, WorkBandwidth, NonWorkBandwidth,
    MaxConcurrentBackgroundJobs, TimeSlice). VALUE is JSON when it parses (10, true, null)
    and a string otherwise: rates as 10M, 512k or off, the schedule as rclone's
    "Mon-08:00,1M Mon-18:00,off". The change applies at once, persists, and is printed.

    \b
    Example:
      sudo openbits policy set MaxBandwidth=10M "WorkHours=Mon-Fri 08-17" WorkBandwidth=1M
    """
    changes: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{setting!r}: use KEY=VALUE", param_hint="KEY=VALUE")
        changes[key.strip()] = policy_value(value)
    result = ctx.client.set_policy(**changes)
    if as_json:
        print_json(result)
    else:
        render.print_policy(result)


@cli.group()
def token() -> None:
    """Bearer tokens for the daemon's TCP listener (openbits serve --listen).

    A token acts as you, with your rights, on the TCP listener until it is revoked. It is
    shown once, when it is created: the daemon keeps only its hash. Tokens are managed over
    the Unix socket only.

    \b
    Example:
      TOKEN=$(openbits token create --description "backup server")
      curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8765/root/microsoft/bits/BitsClientJob
    """


@token.command(name="create")
@click.option("--description", "-d", default="", help="What the token is for (≤ 256 characters).")
@json_option('{"TokenId", "Token", "Owner", "Description", "CreationTime"}')
@socket_option
@pass_ctx
@handled
def token_create(ctx: Context, description: str, as_json: bool) -> None:
    """Create a token and print it (only now: it cannot be shown again).

    Without --json only the token is printed, for a script to keep; its TokenId (to revoke
    it) is in 'openbits token list'.

    \b
    Example:
      openbits token create -d "ci runner" > ~/.config/openbits/token && chmod 600 ~/.config/openbits/token
    """
    result = ctx.client.create_token(description)
    if as_json:
        print_json(result)
    else:
        click.echo(result["Token"])


@token.command(name="list")
@click.option("--all-users", is_flag=True, help="Every user's tokens (administrators).")
@json_option("the tokens (never the tokens themselves)")
@socket_option
@pass_ctx
@handled
def token_list(ctx: Context, all_users: bool, as_json: bool) -> None:
    """List your tokens: id, owner, description, creation time (never the token).

    \b
    Example:
      openbits token list --json | jq -r '.[].TokenId'
    """
    result = ctx.client.tokens(all_users)
    if as_json:
        print_json(result)
        return
    render.print_tokens(result)


@token.command(name="revoke")
@click.argument("token_id", metavar="TOKEN_ID")
@json_option('{"ReturnValue": 0}')
@socket_option
@pass_ctx
@handled
def token_revoke(ctx: Context, token_id: str, as_json: bool) -> None:
    """Revoke a token (yours; an administrator: anyone's). It is refused at once.

    \b
    Example:
      openbits token revoke "{6F9619FF-8B86-D011-B42D-00C04FC964FF}"
    """
    result = ctx.client.revoke_token(token_id)
    if as_json:
        print_json(result)
    else:
        click.echo(f"revoked {token_id}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Commands, options, choices and your jobs' names complete. The script calls openbits
    with _OPENBITS_COMPLETE set (click's completion): source it from your shell's start-up
    file, or install it where your shell looks for completions.

    \b
    Examples:
      eval "$(openbits completion bash)"                   # in ~/.bashrc
      eval "$(openbits completion zsh)"                    # in ~/.zshrc
      openbits completion fish > ~/.config/fish/completions/openbits.fish
    """
    from click.shell_completion import get_completion_class

    from openbits.cli.completion import QuotingBashComplete

    cls = QuotingBashComplete if shell == "bash" else get_completion_class(shell)
    if cls is None:  # (click knows the three)
        raise click.BadParameter(shell, param_hint="SHELL")
    click.echo(cls(cli, {}, "openbits", "_OPENBITS_COMPLETE").source())


@cli.command()
@json_option('the versions ({"Version": "…", "DaemonVersion": "…" or null})')
@socket_option
@click.pass_context
def version(cctx: click.Context, as_json: bool) -> None:
    """Print the version of openbits, and of the daemon when one answers.

    \b
    Example:
      openbits version
    """
    from openbits import __version__
    from openbits.client import DaemonUnavailable

    daemon: str | None = None
    with contextlib.suppress(DaemonUnavailable, BitsError, OSError, ValueError):
        answer = cctx.ensure_object(Context).client.request("GET", "/version")
        daemon = str(answer["Version"]) if isinstance(answer, dict) else None
    if as_json:
        print_json({"Version": __version__, "DaemonVersion": daemon})
    else:
        click.echo(f"openbits {__version__}" + (f" (daemon {daemon})" if daemon else " (no daemon answers)"))


# -- the job store, without the daemon -------------------------------------------------------------


def _store_path(state_dir: str | None, config_path: str | None) -> tuple[str, str]:
    """(state directory, store file) as the daemon would find them."""
    from openbits.config import Config

    try:
        config = Config.load(config_path, state_dir=os.path.abspath(state_dir) if state_dir else None)
    except (OSError, ValueError, TypeError) as e:
        fail(f"bad configuration: {e}", EXIT_USAGE)
    return config.state_dir, config.db_path


def _store_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="The daemon's TOML file (for its state_dir).",
    )(fn)
    return click.option(
        "--state-dir", type=click.Path(file_okay=False), default=None, help="The daemon's state directory."
    )(fn)


def _print_report(report: Any, as_json: bool, what: str) -> None:
    if as_json:
        print_json(report.to_json())
        return
    counts = (
        f"{report.jobs} jobs, {report.files} files, {report.events} events" if report.jobs is not None else ""
    )
    if report.ok:
        click.echo(
            f"{what} {report.path}: ok (schema {report.schema_version}; {counts}; {report.size_bytes} bytes)"
        )
    else:
        click.echo(f"{what} {report.path}: DAMAGED", err=True)
        for problem in report.problems[:20]:
            click.echo(f"  {problem}", err=True)


@cli.group(name="store")
def store_group() -> None:
    """Check, back up and restore the job store (SQLite), with or without the daemon.

    The daemon checks its store at every start and refuses a damaged one, rather than start
    empty as BITS does: nothing is lost or rewritten. Then 'store check' shows the damage and
    'store restore BACKUP' puts a backup in place, keeping the damaged file aside. Take
    backups with 'store backup', safe while the daemon runs.

    \b
    Example:
      openbits store backup ~/openbits-$(date +%F).sqlite
      openbits store check
    """


@store_group.command(name="check")
@_store_options
@json_option("the report")
def store_check(state_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Run SQLite's full integrity check on the store (read-only); exit 1 if it is damaged.

    \b
    Example:
      openbits store check --state-dir /var/lib/openbits
    """
    from openbits.store import StoreError
    from openbits.store.maintenance import check

    _, path = _store_path(state_dir, config_path)
    try:
        report = check(path)
    except StoreError as e:
        fail(str(e))
    _print_report(report, as_json, "store")
    if not report.ok:
        sys.exit(EXIT_BITS_ERROR)


@store_group.command(name="backup")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@_store_options
@json_option("the report of the copy")
def store_backup(
    dest: str, force: bool, state_dir: str | None, config_path: str | None, as_json: bool
) -> None:
    """Copy the store to DEST: a consistent snapshot, safe while the daemon runs, checked.

    \b
    Example:
      openbits store backup /backup/openbits.sqlite --force
    """
    from openbits.store import StoreError
    from openbits.store.maintenance import backup

    _, path = _store_path(state_dir, config_path)
    try:
        report = backup(path, os.path.abspath(dest), force=force)
    except StoreError as e:
        fail(str(e))
    _print_report(report, as_json, "backup")


@store_group.command(name="restore")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@_store_options
@json_option('{"Restored": report, "KeptAside": [paths]}')
def store_restore(source: str, state_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Put the backup SOURCE in the store's place (stop the daemon first).

    SOURCE must pass the integrity check. The file it replaces, damaged or not, is moved
    aside with its WAL (jobs.sqlite.replaced-<time>), never deleted.

    \b
    Example:
      systemctl stop openbits && openbits store restore /backup/openbits.sqlite
    """
    from openbits.daemon import DaemonError, lock_state_dir
    from openbits.store import StoreError
    from openbits.store.maintenance import restore

    directory, path = _store_path(state_dir, config_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        lock = lock_state_dir(directory)
    except DaemonError:
        fail(f"a daemon is running on {directory}: stop it first")
    try:
        report, kept = restore(path, os.path.abspath(source))
    except StoreError as e:
        fail(str(e))
    finally:
        os.close(lock)
    if as_json:
        print_json({"Restored": report.to_json(), "KeptAside": kept})
        return
    _print_report(report, False, "restored")
    for aside in kept:
        click.echo(f"kept aside: {aside}")


def main() -> None:
    cli(prog_name="openbits")


if __name__ == "__main__":
    main()
