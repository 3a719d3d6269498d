"""Following jobs: ``get --watch``'s event lines, ``watch`` (a live table on a terminal, lines
otherwise) and ``query`` (WQL)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import click

from openbits.cli import render
from openbits.cli.openbits.exits import EXIT_INTERRUPTED, fail, handled
from openbits.cli.openbits.options import Context, complete_job, json_option, pass_ctx, socket_option
from openbits.cli.render import print_json
from openbits.client import Client, StreamEvent
from openbits.model import JobState

END_STATES = {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
SUCCESS_STATES = {JobState.TRANSFERRED, JobState.ACKNOWLEDGED}


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


@click.command()
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


@click.command()
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


COMMANDS = (watch, query)
