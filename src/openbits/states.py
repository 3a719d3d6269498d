"""The BITS job state machine as data (bits-spec §3.2-3.3).

``TRANSITIONS`` maps (state, event) to the next state.  ``ILLEGAL`` maps a call to
the states in which it fails and the HRESULT it fails with.  The functions at the
bottom are what the service calls; they raise :class:`BitsError` or return the
next state, and change nothing themselves.
"""

from __future__ import annotations

from enum import Enum

from openbits.errors import (
    EmptyJob,
    ErrorInformationUnavailable,
    HResult,
    InvalidState,
)
from openbits.model import JobState, JobType

S = JobState
ACTION_STATES = frozenset({S.QUEUED, S.CONNECTING, S.TRANSFERRING, S.TRANSIENT_ERROR})
FINAL_STATES = frozenset({S.ACKNOWLEDGED, S.CANCELLED})
NON_FINAL_STATES = frozenset(JobState) - FINAL_STATES
RUNNING_STATES = frozenset({S.CONNECTING, S.TRANSFERRING})


class Event(Enum):
    """What happens to a job: a client's call or the scheduler's observation."""

    RESUME = "resume"
    SUSPEND = "suspend"
    CANCEL = "cancel"
    COMPLETE = "complete"
    ADD_FILE = "add_file"
    START = "start"  # the scheduler gives the job its turn
    CONNECTED = "connected"  # a connection to the server succeeded
    TRANSIENT_FAILURE = "transient_failure"
    FATAL_FAILURE = "fatal_failure"
    ALL_FILES_DONE = "all_files_done"
    PREEMPTED = "preempted"  # time slice ended or a higher priority job arrived
    RETRY_DUE = "retry_due"  # MinimumRetryDelay elapsed
    NO_PROGRESS_TIMEOUT = "no_progress_timeout"
    BLOCKED_BY_POLICY = "blocked_by_policy"  # the job's bandwidth limit is 0 now


def _table() -> dict[tuple[JobState, Event], JobState]:
    t: dict[tuple[JobState, Event], JobState] = {}
    for s in NON_FINAL_STATES:
        t[(s, Event.CANCEL)] = S.CANCELLED
        t[(s, Event.COMPLETE)] = S.ACKNOWLEDGED  # download jobs; uploads need TRANSFERRED
        t[(s, Event.ADD_FILE)] = s
        t[(s, Event.SUSPEND)] = S.SUSPENDED
    # A TRANSFERRED job that receives a file goes back to the queue (LC: allowed).
    t[(S.TRANSFERRED, Event.ADD_FILE)] = S.QUEUED
    t[(S.SUSPENDED, Event.RESUME)] = S.QUEUED
    t[(S.ERROR, Event.RESUME)] = S.QUEUED
    t[(S.TRANSIENT_ERROR, Event.RESUME)] = S.QUEUED
    for s in (S.QUEUED, S.CONNECTING, S.TRANSFERRING, S.TRANSFERRED):
        t[(s, Event.RESUME)] = s
    t[(S.QUEUED, Event.START)] = S.CONNECTING
    t[(S.CONNECTING, Event.CONNECTED)] = S.TRANSFERRING
    t[(S.TRANSFERRING, Event.CONNECTED)] = S.TRANSFERRING
    for s in RUNNING_STATES:
        t[(s, Event.TRANSIENT_FAILURE)] = S.TRANSIENT_ERROR
        t[(s, Event.FATAL_FAILURE)] = S.ERROR
        t[(s, Event.ALL_FILES_DONE)] = S.TRANSFERRED
        t[(s, Event.PREEMPTED)] = S.QUEUED
    # A job whose files are all done when it is started (e.g. after AddFile of an
    # empty file) goes straight to TRANSFERRED.
    t[(S.QUEUED, Event.ALL_FILES_DONE)] = S.TRANSFERRED
    # bits-spec §3.2: a bandwidth policy of 0 puts background jobs in TRANSIENT_ERROR
    for s in (S.QUEUED, *RUNNING_STATES):
        t[(s, Event.BLOCKED_BY_POLICY)] = S.TRANSIENT_ERROR
    t[(S.TRANSIENT_ERROR, Event.RETRY_DUE)] = S.QUEUED
    t[(S.TRANSIENT_ERROR, Event.NO_PROGRESS_TIMEOUT)] = S.ERROR
    return t


TRANSITIONS: dict[tuple[JobState, Event], JobState] = _table()


class Call(Enum):
    """Client calls whose legality depends on the state (bits-spec §3.3)."""

    SUSPEND = "Suspend"
    RESUME = "Resume"
    CANCEL = "Cancel"
    COMPLETE = "Complete"
    ADD_FILE = "AddFile"
    SET_PROPERTY = "SetProperty"  # SetPriority, SetDescription, SetDisplayName, ...
    GET_ERROR = "GetError"


#: call -> (states where it is illegal, HRESULT it returns there)
ILLEGAL: dict[Call, tuple[frozenset[JobState], int]] = {
    Call.SUSPEND: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.RESUME: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.CANCEL: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.COMPLETE: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.ADD_FILE: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.SET_PROPERTY: (FINAL_STATES, HResult.BG_E_INVALID_STATE),
    Call.GET_ERROR: (
        frozenset(JobState) - {S.ERROR, S.TRANSIENT_ERROR},
        HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE,
    ),
}

#: Complete of an upload or upload-reply job is legal only in TRANSFERRED.
UPLOAD_COMPLETE_ILLEGAL = frozenset(JobState) - {S.TRANSFERRED}


def check_call(call: Call, state: JobState, job_type: JobType = JobType.DOWNLOAD) -> None:
    """Raise the documented error if ``call`` is illegal in ``state``."""
    illegal, code = ILLEGAL[call]
    if call is Call.COMPLETE and job_type is not JobType.DOWNLOAD:
        illegal = UPLOAD_COMPLETE_ILLEGAL
    if state in illegal:
        if code == HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE:
            raise ErrorInformationUnavailable(f"the job is {state.name}, not in an error state")
        raise InvalidState(f"{call.value} is not allowed while the job is {state.name}")


def next_state(state: JobState, event: Event) -> JobState:
    """The state after ``event``; InvalidState when the table has no such edge."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidState(f"no transition from {state.name} on {event.value}") from None


def resume(state: JobState, file_count: int) -> JobState:
    check_call(Call.RESUME, state)
    if file_count == 0:
        raise EmptyJob("the job has no files; add a file before resuming it")
    return next_state(state, Event.RESUME)


def suspend(state: JobState) -> JobState:
    check_call(Call.SUSPEND, state)
    return next_state(state, Event.SUSPEND)


def cancel(state: JobState) -> JobState:
    check_call(Call.CANCEL, state)
    return next_state(state, Event.CANCEL)


def complete(state: JobState, job_type: JobType = JobType.DOWNLOAD) -> JobState:
    check_call(Call.COMPLETE, state, job_type)
    return next_state(state, Event.COMPLETE)


def add_file(state: JobState) -> JobState:
    check_call(Call.ADD_FILE, state)
    return next_state(state, Event.ADD_FILE)
