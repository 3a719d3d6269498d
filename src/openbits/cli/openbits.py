"""`openbits`: the command line, verbs after the BitsTransfer cmdlets.

Exit codes: 0 success; 1 a BITS error (the HRESULT and its name are printed);
2 bad usage; 3 no daemon answers; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from openbits.client import Client, DaemonUnavailable, StreamEvent
from openbits.errors import BitsError, HResult, hresult_name
from openbits.model import JobPriority, JobState

P = ParamSpec("P")
R = TypeVar("R")

EXIT_BITS_ERROR = 1
EXIT_NO_DAEMON = 3
EXIT_INTERRUPTED = 130

PRIORITIES = {p.name.lower(): int(p) for p in JobPriority}
END_STATES = {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}


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
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)

    return wrapper


def parse_priority(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lower() in PRIORITIES:
        return PRIORITIES[value.lower()]
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}: use foreground, high, normal, low or 0-3")


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


def state_name(value: int) -> str:
    try:
        return JobState(value).name
    except ValueError:
        return str(value)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def format_bytes(n: int) -> str:
    if n == 0xFFFFFFFFFFFFFFFF:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def print_table(jobs: list[dict[str, Any]]) -> None:
    rows = [("JOBID", "NAME", "STATE", "PRIORITY", "FILES", "BYTES")]
    for j in jobs:
        rows.append(
            (
                j["JobId"],
                j["DisplayName"],
                state_name(j["State"]),
                JobPriority(j["Priority"]).name
                if j["Priority"] in PRIORITIES.values()
                else str(j["Priority"]),
                f"{j['FilesTransferred']}/{j['FilesTotal']}",
                f"{format_bytes(j['BytesTransferred'])} / {format_bytes(j['BytesTotal'])}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_job(job: dict[str, Any]) -> None:
    fields = [
        ("JobId", job["JobId"]),
        ("DisplayName", job["DisplayName"]),
        ("Description", job["Description"]),
        ("State", state_name(job["State"])),
        ("Priority", str(job["Priority"])),
        ("Owner", job["Owner"]),
        ("Files", f"{job['FilesTransferred']} of {job['FilesTotal']} transferred"),
        ("Bytes", f"{job['BytesTransferred']} of {format_bytes(job['BytesTotal'])}"),
        ("TransientErrorCount", str(job["TransientErrorCount"])),
        ("MinimumRetryDelay", f"{job['MinimumRetryDelay']} s"),
        ("NoProgressTimeout", f"{job['NoProgressTimeout']} s"),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    for i, f in enumerate(job["Files"]):
        done = "done" if f["Completed"] else f"{f['BytesTransferred']}/{format_bytes(f['BytesTotal'])}"
        click.echo(f"File {i}: {f['RemoteUrl']} -> {f['LocalFile']} ({done})")


socket_option = click.option(
    "--socket",
    "socket_path",
    envvar="OPENBITS_SOCKET",
    help="The daemon's Unix socket (env OPENBITS_SOCKET).",
)


class Context:
    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket_path)
        return self._client


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@socket_option
@click.version_option(package_name="openbits")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None) -> None:
    """openbits: background file transfers that survive anything.

    A daemon (`openbits serve`) keeps a persistent queue of BITS jobs and moves
    their files over HTTP(S) or from local paths; these commands manage it.
    JOB is a JobId ({GUID}, any case, braces optional) or the display name of
    exactly one of your jobs.

    \b
    Exit codes: 0 success, 1 BITS error (HRESULT and name printed),
    2 bad usage, 3 no daemon, 130 interrupted.
    """
    ctx.obj = Context(socket_path)


@cli.command()
@click.argument("name", required=False, default="")
@click.option("--description", "-d", default=None, help="Job description (≤ 1024 characters).")
@click.option("--priority", "-p", default=None, help="foreground, high, normal (default) or low.")
@click.option(
    "--type", "job_type", default="download", type=click.Choice(["download", "upload", "upload-reply"])
)
@pass_ctx
@handled
def create(ctx: Context, name: str, description: str | None, priority: str | None, job_type: str) -> None:
    """Create an empty, suspended job and print its JobId."""
    params: dict[str, Any] = {"DisplayName": name}
    if description is not None:
        params["Description"] = description
    prio = parse_priority(priority)
    if prio is not None:
        params["Priority"] = prio
    params["Type"] = ["download", "upload", "upload-reply"].index(job_type)
    click.echo(ctx.client.create_job(**params))


@cli.command()
@click.argument("job")
@click.argument("url")
@click.argument("dest")
@pass_ctx
@handled
def add(ctx: Context, job: str, url: str, dest: str) -> None:
    """Add a file: URL (http, https, file:// or a path) to DEST."""
    ctx.client.add_file(job, source_url(url), absolute(dest))


def _state_command(name: str, code: int, doc: str) -> None:
    @cli.command(name=name, help=doc)
    @click.argument("job")
    @pass_ctx
    @handled
    def command(ctx: Context, job: str) -> None:
        result = ctx.client.set_job_state(job, code)
        if result:
            click.echo(f"{name}: 0x{result:08X} {hresult_name(result)}")


_state_command("cancel", 0, "Cancel a job and delete its temporary files.")
_state_command("complete", 1, "Complete a job: publish its transferred files.")
_state_command("resume", 2, "Resume (start) a job.")
_state_command("suspend", 3, "Suspend a job.")


@cli.command()
@click.argument("job", required=False)
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--include-finished", is_flag=True, help="Show an ACKNOWLEDGED or CANCELLED job.")
@click.option("--json", "as_json", is_flag=True, help="Print the BitsClientJob instance(s) as JSON.")
@click.option(
    "--watch", "-w", is_flag=True, help="Print each change as it happens (--json: one object a line)."
)
@pass_ctx
@handled
def get(
    ctx: Context, job: str | None, all_users: bool, include_finished: bool, as_json: bool, watch: bool
) -> None:
    """Show one job, or list your jobs; with --watch, follow their changes until Ctrl-C
    (or until the job is acknowledged or cancelled)."""
    if watch:
        _watch(ctx.client, job, all_users, as_json)
        return
    if job is None:
        jobs = ctx.client.list_jobs(all_users=all_users)
        if as_json:
            print_json(jobs)
        elif jobs:
            print_table(jobs)
        return
    instance = ctx.client.get_job(job, include_finished=include_finished)
    if as_json:
        print_json(instance)
    else:
        print_job(instance)


@cli.command()
@click.argument("wql")
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--json", "as_json", is_flag=True, help="Print the instances as JSON.")
@pass_ctx
@handled
def query(ctx: Context, wql: str, all_users: bool, as_json: bool) -> None:
    """Run a WQL query: SELECT * | p1, p2 FROM BitsClientJob [WHERE …].

    \b
    Examples:
      openbits query "SELECT JobId, DisplayName FROM BitsClientJob WHERE State = 4"
      openbits query "SELECT * FROM BitsClientJob WHERE DisplayName LIKE 'nightly%'" --json
    """
    rows = ctx.client.query(wql, all_users=all_users)
    if as_json:
        print_json(rows)
        return
    if not rows:
        return
    columns = list(rows[0])
    table = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@cli.command(name="set")
@click.argument("job")
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
@click.option("--json", "as_json", is_flag=True, help="Print the updated instance as JSON.")
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
    timeout) change all or nothing; the others follow, one method call each."""
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
    instance = ctx.client.set_properties(job, **props) if props else None
    for method, params in calls:
        ctx.client.invoke(job, method, **params)
    if as_json:
        print_json(ctx.client.get_job(job) if calls or instance is None else instance)


def notify_cmd_params(command: str) -> dict[str, Any]:
    """``"/abs/program args…"`` as SetNotifyCmdLine's parameters: the first word is the
    program, the whole line its command line (program first, as BITS has it)."""
    import shlex

    if not command.strip():
        return {"Program": None, "Parameters": None}
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--notify-cmd") from None
    return {"Program": words[0], "Parameters": command}


@cli.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handled
def error(ctx: Context, job: str, as_json: bool) -> None:
    """Show the error of a job in ERROR or TRANSIENT_ERROR."""
    info = ctx.client.get_error(job)
    if as_json:
        print_json(info)
        return
    click.echo(f"ErrorCode           0x{info['ErrorCode']:08X} {info['Name']}")
    click.echo(f"ErrorContext        {info['ErrorContext']} {info['ContextDescription']}")
    click.echo(f"ErrorDescription    {info['ErrorDescription']}")
    if "RemoteUrl" in info:
        click.echo(f"File                {info['RemoteUrl']} -> {info['LocalFile']}")


def _watch(client: Client, job: str | None, all_users: bool, as_json: bool) -> None:
    """``get --watch``: every event as it comes, resuming after the last one if the daemon
    ends the stream; Ctrl-C exits 130 without a word."""
    last: int | None = None
    try:
        while True:
            with client.events(last_event_id=last, job=job, all_users=all_users) as stream:
                for event in stream:
                    if as_json:
                        line = {"id": event.id, "event": event.event, "data": event.data}
                        click.echo(json.dumps(line, separators=(",", ":")))
                    else:
                        click.echo(_event_line(event))
                    if job is not None and event.event in ("JobCancelled", "JobAcknowledged"):
                        return
                last = stream.last_event_id
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _event_line(event: StreamEvent) -> str:
    stamp = time.strftime("%H:%M:%S")
    data = event.data
    if event.id is None or not isinstance(data, dict):
        return f"{stamp}  {event.event}  {json.dumps(data)}"
    files = f"{data.get('FilesTransferred')}/{data.get('FilesTotal')} files"
    size = f"{format_bytes(data.get('BytesTransferred', 0))} / {format_bytes(data.get('BytesTotal', 0))}"
    return (
        f"{stamp}  {event.id:>6}  {event.event:<16}  {data.get('JobId')}  {data.get('DisplayName')!r}  "
        f"{state_name(data.get('State', -1))}  {files}  {size}"
    )


def wait_for(
    client: Client,
    job: str,
    until: set[JobState],
    timeout: float | None,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Follows the job's events (``GET /events``) until it reaches one of ``until``;
    ``on_poll`` (a progress display) sees every change. A daemon without events is long
    polled instead."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        stream = client.events(job=job)  # subscribed before the state is read: no gap
    except BitsError as e:
        if e.hresult != HResult.E_NOTIMPL:
            raise
        return _long_poll(client, job, until, deadline, on_poll)
    try:
        instance = client.get_job(job, include_finished=True, files=False)
        while True:
            if on_poll is not None:
                on_poll(instance)
            if JobState(instance["State"]) in until:
                return instance
            if deadline is not None:
                stream.timeout = deadline - time.monotonic()
                if stream.timeout <= 0:
                    _timed_out(job, instance)
            try:
                event = next(stream)
            except TimeoutError:
                _timed_out(job, instance)
            except StopIteration:  # the daemon ended the stream: resume after the last event
                stream = client.events(job=job, last_event_id=stream.last_event_id)
                continue
            if isinstance(event.data, dict) and "State" in event.data:
                instance = event.data
            else:  # Reset: events were missed
                instance = client.get_job(job, include_finished=True, files=False)
    finally:
        stream.close()


def _timed_out(job: str, instance: dict[str, Any]) -> NoReturn:
    fail(f"timed out waiting for {job}: it is {state_name(instance['State'])}", EXIT_BITS_ERROR)


def _long_poll(
    client: Client,
    job: str,
    until: set[JobState],
    deadline: float | None,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Long polls (GetJob with WaitWhile): the daemon answers as soon as the job reaches
    one of ``until``; with ``on_poll`` (a progress display) at least every 0.25 s."""
    others = [s for s in JobState if s not in until]
    instance = client.get_job(job, include_finished=True, files=False)
    while True:
        if on_poll is not None:
            on_poll(instance)
        if JobState(instance["State"]) in until:
            return instance
        wait = 30.0 if on_poll is None else 0.25
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                _timed_out(job, instance)
            wait = min(wait, left)
        instance = client.get_job(
            job, include_finished=True, files=False, wait_while=others, wait_timeout=wait
        )


@cli.command()
@click.argument("job")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handled
def wait(ctx: Context, job: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job is TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED.

    Exits 0 for TRANSFERRED or ACKNOWLEDGED, 1 otherwise.
    """
    instance = wait_for(ctx.client, job, END_STATES, timeout)
    if as_json:
        print_json(ctx.client.get_job(job, include_finished=True))
    else:
        click.echo(state_name(instance["State"]))
    if JobState(instance["State"]) not in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
        sys.exit(EXIT_BITS_ERROR)


def _destinations(sources: list[str], dest: str) -> list[tuple[str, str]]:
    dest = absolute(dest)
    if len(sources) > 1 or os.path.isdir(dest) or dest.endswith("/"):
        if not os.path.isdir(dest):
            raise click.UsageError(f"{dest} is not a directory (needed for several sources)")
        pairs = []
        for s in sources:
            name = os.path.basename(s.rstrip("/").split("?")[0].split("#")[0]) or "index.html"
            pairs.append((source_url(s), os.path.join(dest, name)))
        return pairs
    return [(source_url(sources[0]), dest)]


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="SOURCE... DEST")
@click.option("--name", default="openbits transfer", help="The job's display name.")
@click.option("--priority", "-p", default="foreground", help="Priority (default foreground).")
@click.option("--async", "is_async", is_flag=True, help="Start the job and print its JobId; don't wait.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the final instance as JSON.")
@pass_ctx
@handled
def transfer(
    ctx: Context, args: tuple[str, ...], name: str, priority: str, is_async: bool, quiet: bool, as_json: bool
) -> None:
    """Download SOURCE to DEST (or several SOURCEs into directory DEST).

    Creates a job, adds the files, resumes it, shows progress, and completes it
    when every byte is there.  On an error the job is cancelled (as
    `bitsadmin /transfer` does) and the exit code is 1.
    """
    if len(args) < 2:
        raise click.UsageError("give at least one SOURCE and a DEST")
    pairs = _destinations(list(args[:-1]), args[-1])
    client = ctx.client
    job = client.create_job(DisplayName=name, Priority=parse_priority(priority))
    try:
        client.add_file_set(job, pairs)
        client.resume(job)
    except BaseException:
        client.cancel(job)
        raise
    if is_async:
        click.echo(job)
        return
    try:
        instance = _follow(client, job, quiet or as_json or not sys.stderr.isatty())
    except KeyboardInterrupt:
        client.cancel(job)
        fail(f"interrupted; job {job} cancelled", EXIT_INTERRUPTED)
    if instance["State"] != JobState.TRANSFERRED:
        err = client.get_error(job)
        client.cancel(job)
        fail(
            f"transfer failed: error 0x{err['ErrorCode']:08X} {err['Name']}: {err['ErrorDescription']} "
            f"(context {err['ErrorContext']}: {err['ContextDescription']}); job {job} cancelled"
        )
    result = client.complete(job)
    instance = client.get_job(job, include_finished=True)
    if as_json:
        print_json(instance)
    elif result:
        click.echo(f"Transfer partly complete: 0x{result:08X} {hresult_name(result)}", err=True)
    elif not quiet:
        click.echo("Transfer complete.", err=True)


def _follow(client: Client, job: str, quiet: bool) -> dict[str, Any]:
    until = {JobState.TRANSFERRED, JobState.ERROR, JobState.CANCELLED, JobState.ACKNOWLEDGED}
    if quiet:
        return wait_for(client, job, until, None)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.fields[state]:<15}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("transfer", total=None, state="QUEUED")

        def update(instance: dict[str, Any]) -> None:
            total = instance["BytesTotal"]
            progress.update(
                task,
                completed=instance["BytesTransferred"],
                total=None if total == 0xFFFFFFFFFFFFFFFF else total,
                state=state_name(instance["State"]),
            )

        return wait_for(client, job, until, None, on_poll=update)


@cli.command()
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Where the job store lives."
)
@click.option("--socket", "socket_path", default=None, help="The Unix socket to serve on.")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None, help="A TOML file."
)
def serve(state_dir: str | None, socket_path: str | None, config_path: str | None) -> None:
    """Run the daemon in the foreground (SIGTERM or SIGINT stop it cleanly)."""
    from openbits.config import Config
    from openbits.daemon import run

    try:
        config = Config.load(
            config_path,
            state_dir=os.path.abspath(state_dir) if state_dir else None,
            socket=os.path.abspath(socket_path) if socket_path else None,
        )
    except (OSError, ValueError, TypeError) as e:
        fail(f"bad configuration: {e}", 2)
    sys.exit(run(config))


def main() -> None:
    cli(prog_name="openbits")


if __name__ == "__main__":
    main()
