"""The one-shot commands' run (``transfer`` for downloads, ``upload``): create the job, add
its files, resume it, follow it (progress bar, transient errors and their retries) and
complete it; on an error or Ctrl-C the job is cancelled and the command fails (exit 1, 130),
on a lost daemon it fails with EXIT_NO_DAEMON.  One place, so the commands never drift apart."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from openbits.cli import render
from openbits.cli.openbits.exits import EXIT_INTERRUPTED, EXIT_NO_DAEMON, fail
from openbits.cli.openbits.hints import _Hints, _retry_text
from openbits.cli.render import print_json
from openbits.client import Client, DaemonUnavailable, FilePairs
from openbits.errors import BitsError
from openbits.model import JobState

if TYPE_CHECKING:
    from openbits.jobs import BitsJob


def run_one_shot(
    client: Client,
    pairs: FilePairs,
    display_name: str,
    options: dict[str, Any],
    verb: str,
    *,
    is_async: bool,
    quiet: bool,
    no_retry: bool,
    timeout: float | None,
    as_json: bool,
) -> BitsJob | None:
    """One job of ``pairs`` (``client.transfer``), followed to its end; the final job
    (printed as JSON with ``as_json``), or None with ``is_async`` (its JobId printed at
    once).  The progress bar is drawn on a terminal unless ``quiet`` or ``as_json``.
    A failure is ``fail``ed as "``verb`` failed: ...", naming the job cancelled."""
    if is_async:
        job = client.transfer(pairs, display_name, wait=False, **options).job_id
        click.echo(render.json_line({"JobId": job}) if as_json else job)
        return None
    follower = Follower(client, not (quiet or as_json or not sys.stderr.isatty()), no_retry)
    try:
        final = client.transfer(pairs, display_name, progress=follower, timeout=timeout, **options)
    except KeyboardInterrupt:
        fail(f"interrupted; job {follower.job_id} cancelled", EXIT_INTERRUPTED)
    except (BitsError, TimeoutError, click.ClickException) as e:
        if not getattr(e, "__notes__", None) and follower.job_id is not None:
            e.add_note(f"job {follower.job_id} cancelled")
        fail(f"{verb} failed: {failure_text(e)}")
    except (DaemonUnavailable, ConnectionError) as e:
        fail(failure_text(e), EXIT_NO_DAEMON)
    finally:
        follower.close()
    if as_json:
        print_json(dict(final.raw))
    return final


class Follower:
    """What a one-shot command shows while it waits: the JobId once known, a progress bar on a
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
        console=Console(stderr=True),  # (beside the other words of the command; stdout: --json)
        transient=False,
    )


def failure_text(e: Exception) -> str:
    """The error, then its notes (which file failed; which job is left and how to finish it)."""
    text = f"error {e.hex} {e.name}: {e.message}" if isinstance(e, BitsError) else str(e)
    if isinstance(e, click.ClickException):
        text = e.format_message()
    return "; ".join([text, *getattr(e, "__notes__", ())])
