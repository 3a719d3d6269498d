"""What a person waiting on a job is told on stderr: why it does not move (SUSPENDED, a
transient error) and when the daemon tries again."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from openbits.client import Client
from openbits.errors import BitsError
from openbits.model import JobState

if TYPE_CHECKING:
    from openbits.jobs import BitsJob


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
