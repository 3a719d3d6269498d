"""The job commands: create, get, set, the state changes (resume, suspend, complete, cancel),
error, wait and take-ownership."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from openbits.cli import render
from openbits.cli.openbits.exits import EXIT_BITS_ERROR, fail, handled
from openbits.cli.openbits.hints import _Hints
from openbits.cli.openbits.options import (
    Context,
    job_argument,
    json_option,
    parse_priority,
    pass_ctx,
    socket_option,
)
from openbits.cli.openbits.watch import SUCCESS_STATES, _watch_events
from openbits.cli.render import print_json
from openbits.client import Client
from openbits.errors import HResult, hresult_name

#: SetJobState codes (bits-spec §1.3)
CANCEL, COMPLETE, RESUME, SUSPEND = 0, 1, 2, 3


@click.command()
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
    for the JobId in the other commands). --type upload or upload-reply makes a job that
    sends one local file to a BITS upload server ('add JOB URL FILE'; see 'upload', 'reply').

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


def _state_command(name: str, code: int, doc: str) -> click.Command:
    @click.command(name=name, help=doc)
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

    return command


def _unfinished_files(client: Client, job: str) -> list[str]:
    """The files a Complete now would discard (BG_S_PARTIAL_COMPLETE): those not transferred."""
    return [f.local_file for f in client.get_job(job).files if not f.completed]


cancel = _state_command(
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
complete = _state_command(
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
resume = _state_command(
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
suspend = _state_command(
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


@click.command()
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


@click.command(name="set")
@job_argument()
@click.option("--display-name", default=None)
@click.option("--description", default=None)
@click.option("--priority", default=None, help="foreground, high, normal or low.")
@click.option("--minimum-retry-delay", type=int, default=None, help="Seconds (at least 5).")
@click.option("--no-progress-timeout", type=int, default=None, help="Seconds; 0 = every error is fatal.")
@click.option("--max-download-time", type=int, default=None, help="Seconds of transfer before ERROR.")
@click.option(
    "--max-connections",
    type=click.IntRange(1, 32),
    default=None,
    help="Connections at once (files, or ranges of a big file), 1-32 (4 for foreground, else 1).",
)
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
    max_connections: int | None,
    custom_headers: tuple[str, ...],
    security_flags: int | None,
    notify_flags: int | None,
    notify_cmd: str | None,
    notify_url: str | None,
    as_json: bool,
) -> None:
    """Change a job's properties.

    The read/write properties (name, description, priority, retry delay, no-progress
    timeout, max connections) change all or nothing; the others follow, one method call each
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
    if max_connections is not None:
        props["MaxConnections"] = max_connections
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


@click.command()
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


@click.command()
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


@click.command(name="take-ownership")
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


COMMANDS = (create, get, set_, resume, suspend, complete, cancel, wait, error, take_ownership)
