"""The client core's flows, written once for both clients: resolve a display name,
follow a job (its events, else the WaitWhile long poll), start and transfer, cancel
quietly.

A flow is a generator that yields what it needs done and receives the outcome, as httpx
drives its auth flows: :class:`~openbits._wire.Call` (one API request: its JSON answer is
sent back, its BitsError thrown in), :class:`Subscribe` (open the job's event stream;
E_NOTIMPL from a daemon without events is thrown in), :class:`NextEvent` (the next
JobEvent; TimeoutError thrown in) and :class:`Report` (call the ``progress`` callback).
``Client`` (http.client) and ``AsyncClient`` (aiohttp) each drive them with a
:class:`FlowRun` in one small loop.  No I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from openbits._wire import (
    CANCEL,
    COMPLETE,
    RESUME,
    WAIT_UNTIL,
    Call,
    FilePairs,
    JobOptions,
    Progress,
    TransferOptions,
    bits_job,
    create_call,
    error_info,
    file_pairs,
    get_job_call,
    invoke_call,
    job_failed,
    job_path,
    not_transferred,
    patch_call,
    state_call,
    timed_out,
)
from openbits.errors import BitsError, HResult
from openbits.model import JobState, canonical_job_id

if TYPE_CHECKING:
    from openbits.jobs import BitsJob

T = TypeVar("T")

# -- the flows --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Open the events of ``job`` (reconnecting); BitsError E_NOTIMPL from a daemon without."""

    job: str


@dataclass(frozen=True, slots=True)
class NextEvent:
    """The next JobEvent of the subscription; TimeoutError after ``timeout`` seconds."""

    timeout: float | None


@dataclass(frozen=True, slots=True)
class Report:
    """Show the job to the caller's ``progress`` callback."""

    job: BitsJob


Step = Call | Subscribe | NextEvent | Report
Flow = Generator[Step, Any, T]


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def poll_s(progress: Progress | None) -> float:
    """How often a daemon without events is asked: often enough for a progress display."""
    return 30.0 if progress is None else 0.5


def resolve(ref: str) -> Flow[str]:
    """The JobId of ``ref``: a JobId as it is, a display name looked up as every command
    looks it up (among the jobs not finished: a name is never matched against the hidden
    ACKNOWLEDGED and CANCELLED ones)."""
    try:
        return canonical_job_id(ref)
    except ValueError:
        found = yield get_job_call(ref, files=False)
        return str(found["JobId"])


def get_job(job_id: str) -> Flow[BitsJob]:
    return bits_job((yield get_job_call(job_id, include_finished=True)))


def follow(
    ref: str, until: Collection[JobState], deadline: float | None, poll_s: float = 30.0
) -> Flow[BitsJob]:
    """Report the job after each change until it is in one of ``until``: the job then.
    It follows the job's events (subscribed before the state is read: no change is
    missed); a daemon without events is long polled (every ``poll_s`` seconds at most)."""
    job_id = yield from resolve(ref)
    try:
        yield Subscribe(job_id)
    except BitsError as e:
        if e.hresult != HResult.E_NOTIMPL:
            raise
        return (yield from _long_poll(job_id, until, deadline, poll_s))
    current = yield from get_job(job_id)
    fresh = True  # (read with GetJob: complete, with its Files and CustomHeaders)
    while True:
        yield Report(current)
        if current.state in until:
            break
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise timed_out(ref, current.state)
        try:
            event = yield NextEvent(timeout)
        except TimeoutError:
            raise timed_out(ref, current.state) from None
        if event.job is not None:
            current, fresh = event.job, False
        else:  # Reset: events were missed
            current, fresh = (yield from get_job(job_id)), True
    if fresh:
        return current
    latest = yield from get_job(job_id)
    return latest if latest.state in until else current


def _long_poll(
    job_id: str, until: Collection[JobState], deadline: float | None, poll_s: float
) -> Flow[BitsJob]:
    others = [s for s in JobState if s not in until]
    current = yield from get_job(job_id)
    while True:
        yield Report(current)
        if current.state in until:
            return current
        wait = poll_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise timed_out(job_id, current.state)
            wait = min(wait, left)
        current = bits_job(
            (yield get_job_call(job_id, include_finished=True, wait_while=others, wait_timeout=wait))
        )


def cancel_quietly(job_id: str) -> Flow[bool]:
    """Cancel, whatever happens (the job may be gone, the daemon too): whether it was."""
    try:
        yield state_call(job_id, CANCEL)
    except Exception:
        return False
    return True


@dataclass(frozen=True, slots=True)
class TransferSpec:
    """What ``transfer()`` creates: the job's files and properties."""

    files: list[dict[str, str]]
    display_name: str
    job: JobOptions
    #: an upload-reply job's ReplyFileName (None: the daemon's default)
    reply_file_name: str | None = None
    #: MaxConnections (SPEC §9; None: the default by priority)
    max_connections: int | None = None

    @staticmethod
    def of(files: FilePairs, display_name: str, options: TransferOptions) -> TransferSpec:
        job: JobOptions = {"description": options.get("description"), "priority": options.get("priority")}
        job["job_type"] = options.get("job_type")
        return TransferSpec(
            file_pairs(files),
            display_name,
            job,
            options.get("reply_file_name"),
            options.get("max_connections"),
        )


def start(spec: TransferSpec) -> Flow[str]:
    """Create the job, add its files, resume it: its JobId.  A failing step cancels it."""
    if not spec.files:
        raise ValueError("transfer() needs at least one (remote_url, local_file) pair")
    job_id = str((yield create_call(spec.display_name, **spec.job))["JobId"])
    try:
        if spec.reply_file_name is not None:
            yield invoke_call(job_id, "SetReplyFileName", ReplyFileName=spec.reply_file_name)
        if spec.max_connections is not None:
            yield patch_call(job_path(job_id), {"MaxConnections": spec.max_connections})
        yield invoke_call(job_id, "AddFileSet", Files=spec.files)
        yield state_call(job_id, RESUME)
    except GeneratorExit:
        raise
    except BaseException:
        yield from cancel_quietly(job_id)
        raise
    return job_id


def transfer(spec: TransferSpec, deadline: float | None, poll_s: float = 30.0) -> Flow[BitsJob]:
    """Start, follow, complete: the ACKNOWLEDGED job, its files in place.  On any failure
    (the job's own error, a timeout, an interruption) the job is cancelled, or, when the
    daemon cannot be told, the error says which job is left and how to finish it."""
    job_id = yield from start(spec)
    try:
        job = yield from follow(job_id, WAIT_UNTIL, deadline, poll_s)
        if job.state is JobState.ERROR:
            raise job_failed(error_info((yield invoke_call(job_id, "GetError"))), job_id)
        if job.state is not JobState.TRANSFERRED:
            raise not_transferred(job)
        yield state_call(job_id, COMPLETE)
    except GeneratorExit:
        raise
    except BaseException as e:
        if not (yield from cancel_quietly(job_id)):
            e.add_note(
                f"job {job_id} is left as it was: once the daemon answers, "
                f"`openbits wait {job_id}`, then `openbits complete {job_id}` (or cancel it)"
            )
        raise
    final = yield from get_job(job_id)
    yield Report(final)
    return final


class FlowRun(Generic[T]):
    """One run of a flow, for a driver: ``step()`` the next thing to do (None once the
    flow has returned its ``result``), then ``answer(value)`` or ``fail(error)``."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._outcome: tuple[bool, Any] = (True, None)
        self.result: T

    def step(self) -> Step | None:
        (ok, value), self._outcome = self._outcome, (True, None)
        try:
            return self._flow.send(value) if ok else self._flow.throw(value)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def answer(self, value: Any) -> None:
        self._outcome = (True, value)

    def fail(self, error: BaseException) -> None:
        self._outcome = (False, error)
