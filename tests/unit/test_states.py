"""Unit tests of openbits.states: one test per rule of bits-spec §3.2 (transitions) and §3.3 (legal calls)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbits import states
from openbits.errors import (
    BitsError,
    EmptyJob,
    ErrorInformationUnavailable,
    HResult,
    InvalidState,
)
from openbits.model import JobState, JobType
from openbits.states import (
    FINAL_STATES,
    NON_FINAL_STATES,
    TRANSITIONS,
    Call,
    Event,
    check_call,
    next_state,
)

S = JobState
E = Event
ALL_STATES = list(JobState)
NON_FINAL = sorted(NON_FINAL_STATES)
FINAL = sorted(FINAL_STATES)
UPLOAD_TYPES = [JobType.UPLOAD, JobType.UPLOAD_REPLY]


def _id(value: object) -> str:
    if isinstance(value, JobState | JobType):
        return value.name
    if isinstance(value, Event | Call):
        return value.name
    return str(value)


# -- state classes (bits-spec §3.1) ----------------------------------------------------------


def test_state_classes() -> None:
    assert frozenset({S.ACKNOWLEDGED, S.CANCELLED}) == FINAL_STATES
    assert frozenset(JobState) - FINAL_STATES == NON_FINAL_STATES
    assert frozenset({S.QUEUED, S.CONNECTING, S.TRANSFERRING, S.TRANSIENT_ERROR}) == states.ACTION_STATES
    assert frozenset({S.CONNECTING, S.TRANSFERRING}) == states.RUNNING_STATES


# -- transitions (bits-spec §3.2), one case per modelled row ---------------------------------

TRANSITION_RULES = [
    pytest.param(S.SUSPENDED, E.RESUME, S.QUEUED, id="SUSPENDED+Resume->QUEUED"),
    pytest.param(S.QUEUED, E.START, S.CONNECTING, id="QUEUED+scheduler-turn->CONNECTING"),
    pytest.param(S.CONNECTING, E.CONNECTED, S.TRANSFERRING, id="CONNECTING+connected->TRANSFERRING"),
    pytest.param(
        S.CONNECTING, E.TRANSIENT_FAILURE, S.TRANSIENT_ERROR, id="CONNECTING+connect-fails->TRANSIENT_ERROR"
    ),
    pytest.param(S.CONNECTING, E.FATAL_FAILURE, S.ERROR, id="CONNECTING+fatal->ERROR"),
    pytest.param(S.TRANSFERRING, E.PREEMPTED, S.QUEUED, id="TRANSFERRING+time-slice-ends->QUEUED"),
    pytest.param(S.CONNECTING, E.PREEMPTED, S.QUEUED, id="CONNECTING+preempted->QUEUED"),
    pytest.param(
        S.TRANSFERRING, E.ALL_FILES_DONE, S.TRANSFERRED, id="TRANSFERRING+last-file-done->TRANSFERRED"
    ),
    pytest.param(S.CONNECTING, E.ALL_FILES_DONE, S.TRANSFERRED, id="CONNECTING+last-file-done->TRANSFERRED"),
    pytest.param(S.QUEUED, E.ALL_FILES_DONE, S.TRANSFERRED, id="QUEUED+nothing-left->TRANSFERRED"),
    pytest.param(
        S.TRANSFERRING,
        E.TRANSIENT_FAILURE,
        S.TRANSIENT_ERROR,
        id="TRANSFERRING+recoverable-error->TRANSIENT_ERROR",
    ),
    pytest.param(S.TRANSFERRING, E.FATAL_FAILURE, S.ERROR, id="TRANSFERRING+fatal-error->ERROR"),
    pytest.param(S.TRANSFERRING, E.CONNECTED, S.TRANSFERRING, id="TRANSFERRING+reconnected->TRANSFERRING"),
    pytest.param(S.TRANSIENT_ERROR, E.RETRY_DUE, S.QUEUED, id="TRANSIENT_ERROR+MinimumRetryDelay->QUEUED"),
    pytest.param(
        S.TRANSIENT_ERROR, E.NO_PROGRESS_TIMEOUT, S.ERROR, id="TRANSIENT_ERROR+NoProgressTimeout->ERROR"
    ),
    pytest.param(S.TRANSIENT_ERROR, E.RESUME, S.QUEUED, id="TRANSIENT_ERROR+Resume->QUEUED"),
    pytest.param(S.ERROR, E.RESUME, S.QUEUED, id="ERROR+Resume->QUEUED"),
    pytest.param(S.QUEUED, E.RESUME, S.QUEUED, id="QUEUED+Resume->unchanged"),
    pytest.param(S.CONNECTING, E.RESUME, S.CONNECTING, id="CONNECTING+Resume->unchanged"),
    pytest.param(S.TRANSFERRING, E.RESUME, S.TRANSFERRING, id="TRANSFERRING+Resume->unchanged"),
    pytest.param(S.TRANSFERRED, E.COMPLETE, S.ACKNOWLEDGED, id="TRANSFERRED+Complete->ACKNOWLEDGED"),
    pytest.param(S.ERROR, E.COMPLETE, S.ACKNOWLEDGED, id="ERROR+Complete(download)->ACKNOWLEDGED"),
    pytest.param(S.TRANSFERRED, E.ADD_FILE, S.QUEUED, id="TRANSFERRED+AddFile->QUEUED"),
    pytest.param(S.SUSPENDED, E.SUSPEND, S.SUSPENDED, id="SUSPENDED+Suspend->no-op"),
]


@pytest.mark.parametrize(("state", "event", "expected"), TRANSITION_RULES)
def test_transition_rule(state: JobState, event: Event, expected: JobState) -> None:
    assert next_state(state, event) is expected


@pytest.mark.parametrize("state", NON_FINAL, ids=_id)
def test_rule_any_non_final_cancel_goes_to_cancelled(state: JobState) -> None:
    assert next_state(state, E.CANCEL) is S.CANCELLED
    assert states.cancel(state) is S.CANCELLED


@pytest.mark.parametrize("state", NON_FINAL, ids=_id)
def test_rule_any_non_final_download_complete_goes_to_acknowledged(state: JobState) -> None:
    assert next_state(state, E.COMPLETE) is S.ACKNOWLEDGED
    assert states.complete(state, JobType.DOWNLOAD) is S.ACKNOWLEDGED


@pytest.mark.parametrize("state", sorted(NON_FINAL_STATES - {S.TRANSFERRED}), ids=_id)
def test_rule_any_non_final_suspend_goes_to_suspended(state: JobState) -> None:
    assert next_state(state, E.SUSPEND) is S.SUSPENDED
    assert states.suspend(state) is S.SUSPENDED


def test_rule_transferred_suspend_goes_to_suspended() -> None:
    assert next_state(S.TRANSFERRED, E.SUSPEND) is S.SUSPENDED


@pytest.mark.parametrize("state", NON_FINAL, ids=_id)
def test_rule_add_file_is_legal_before_complete_or_cancel(state: JobState) -> None:
    expected = S.QUEUED if state is S.TRANSFERRED else state
    assert states.add_file(state) is expected


def test_rule_transferred_add_file_then_resume_is_queued() -> None:
    after_add = states.add_file(S.TRANSFERRED)
    assert states.resume(after_add, file_count=2) is S.QUEUED


@pytest.mark.parametrize("state", FINAL, ids=_id)
@pytest.mark.parametrize("event", list(Event), ids=_id)
def test_rule_final_states_have_no_outgoing_transitions(state: JobState, event: Event) -> None:
    assert (state, event) not in TRANSITIONS
    with pytest.raises(InvalidState) as info:
        next_state(state, event)
    assert info.value.hresult == HResult.BG_E_INVALID_STATE


@pytest.mark.parametrize(
    "event",
    [E.START, E.CONNECTED, E.TRANSIENT_FAILURE, E.FATAL_FAILURE, E.ALL_FILES_DONE, E.PREEMPTED, E.RETRY_DUE],
    ids=_id,
)
def test_rule_scheduler_events_never_move_a_suspended_job(event: Event) -> None:
    with pytest.raises(InvalidState):
        next_state(S.SUSPENDED, event)


@pytest.mark.parametrize("event", [E.START, E.RETRY_DUE, E.NO_PROGRESS_TIMEOUT], ids=_id)
def test_rule_scheduler_events_never_move_an_error_job(event: Event) -> None:
    with pytest.raises(InvalidState):
        next_state(S.ERROR, event)


@pytest.mark.parametrize("state", sorted(set(JobState) - {S.TRANSIENT_ERROR}), ids=_id)
def test_rule_retry_and_no_progress_timeout_only_from_transient_error(state: JobState) -> None:
    for event in (E.RETRY_DUE, E.NO_PROGRESS_TIMEOUT):
        with pytest.raises(InvalidState):
            next_state(state, event)


@pytest.mark.parametrize("state", sorted(set(JobState) - {S.QUEUED}), ids=_id)
def test_rule_only_queued_jobs_start(state: JobState) -> None:
    with pytest.raises(InvalidState):
        next_state(state, E.START)


@pytest.mark.parametrize("state", sorted(set(JobState) - states.RUNNING_STATES), ids=_id)
def test_rule_only_running_jobs_are_preempted_or_fail(state: JobState) -> None:
    for event in (E.PREEMPTED, E.TRANSIENT_FAILURE, E.FATAL_FAILURE):
        with pytest.raises(InvalidState):
            next_state(state, event)


def test_every_transition_targets_a_job_state() -> None:
    for (state, event), target in TRANSITIONS.items():
        assert isinstance(state, JobState)
        assert isinstance(event, Event)
        assert isinstance(target, JobState)
        assert not state.is_final


# -- resume / BG_E_EMPTY (bits-spec §3.2-3.3) ------------------------------------------------


@pytest.mark.parametrize("state", NON_FINAL, ids=_id)
def test_rule_resume_with_zero_files_is_bg_e_empty(state: JobState) -> None:
    with pytest.raises(EmptyJob) as info:
        states.resume(state, file_count=0)
    assert info.value.hresult == HResult.BG_E_EMPTY


def test_rule_resume_with_zero_files_changes_nothing() -> None:
    state = S.SUSPENDED
    with pytest.raises(EmptyJob):
        state = states.resume(state, file_count=0)
    assert state is S.SUSPENDED


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.SUSPENDED, S.QUEUED),
        (S.ERROR, S.QUEUED),
        (S.TRANSIENT_ERROR, S.QUEUED),
        (S.QUEUED, S.QUEUED),
        (S.CONNECTING, S.CONNECTING),
        (S.TRANSFERRING, S.TRANSFERRING),
        (S.TRANSFERRED, S.TRANSFERRED),
    ],
    ids=_id,
)
def test_rule_resume_with_files(state: JobState, expected: JobState) -> None:
    assert states.resume(state, file_count=1) is expected


@pytest.mark.parametrize("state", FINAL, ids=_id)
def test_rule_resume_of_final_job_is_invalid_state_even_without_files(state: JobState) -> None:
    with pytest.raises(InvalidState):
        states.resume(state, file_count=0)


# -- legal calls (bits-spec §3.3) ------------------------------------------------------------

STATE_CALLS = [Call.SUSPEND, Call.RESUME, Call.CANCEL, Call.COMPLETE, Call.ADD_FILE, Call.SET_PROPERTY]


@pytest.mark.parametrize("state", FINAL, ids=_id)
@pytest.mark.parametrize("call", STATE_CALLS, ids=_id)
def test_rule_every_call_in_a_final_state_is_bg_e_invalid_state(state: JobState, call: Call) -> None:
    with pytest.raises(InvalidState) as info:
        check_call(call, state)
    assert info.value.hresult == HResult.BG_E_INVALID_STATE


@pytest.mark.parametrize("state", FINAL, ids=_id)
@pytest.mark.parametrize(
    "action",
    [
        lambda s: states.resume(s, 1),
        states.suspend,
        states.cancel,
        states.complete,
        states.add_file,
        lambda s: states.complete(s, JobType.UPLOAD),
    ],
    ids=["resume", "suspend", "cancel", "complete", "add_file", "complete-upload"],
)
def test_rule_helpers_refuse_final_states(state: JobState, action: object) -> None:
    with pytest.raises(InvalidState):
        action(state)  # type: ignore[operator]


@pytest.mark.parametrize("state", NON_FINAL, ids=_id)
@pytest.mark.parametrize("call", STATE_CALLS, ids=_id)
def test_rule_every_call_is_legal_in_a_non_final_state(state: JobState, call: Call) -> None:
    check_call(call, state)


@pytest.mark.parametrize("job_type", UPLOAD_TYPES, ids=_id)
def test_rule_upload_complete_from_transferred_is_acknowledged(job_type: JobType) -> None:
    check_call(Call.COMPLETE, S.TRANSFERRED, job_type)
    assert states.complete(S.TRANSFERRED, job_type) is S.ACKNOWLEDGED


@pytest.mark.parametrize("job_type", UPLOAD_TYPES, ids=_id)
@pytest.mark.parametrize("state", sorted(set(JobState) - {S.TRANSFERRED}), ids=_id)
def test_rule_upload_complete_outside_transferred_is_invalid_state(
    state: JobState, job_type: JobType
) -> None:
    with pytest.raises(InvalidState) as info:
        states.complete(state, job_type)
    assert info.value.hresult == HResult.BG_E_INVALID_STATE


@pytest.mark.parametrize("state", [S.ERROR, S.TRANSIENT_ERROR], ids=_id)
def test_rule_get_error_is_legal_in_error_states(state: JobState) -> None:
    check_call(Call.GET_ERROR, state)


@pytest.mark.parametrize("state", sorted(set(JobState) - {S.ERROR, S.TRANSIENT_ERROR}), ids=_id)
def test_rule_get_error_outside_error_states_is_information_unavailable(state: JobState) -> None:
    with pytest.raises(ErrorInformationUnavailable) as info:
        check_call(Call.GET_ERROR, state)
    assert info.value.hresult == HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE


def test_illegal_table_covers_every_call() -> None:
    assert set(states.ILLEGAL) == set(Call)


# -- properties ------------------------------------------------------------------------------


@given(st.sampled_from(JobState), st.sampled_from(Event))
def test_next_state_returns_a_state_or_raises_invalid_state(state: JobState, event: Event) -> None:
    try:
        result = next_state(state, event)
    except InvalidState as e:
        assert e.hresult == HResult.BG_E_INVALID_STATE
        assert type(e) is InvalidState
    else:
        assert isinstance(result, JobState)
        assert not state.is_final


@given(st.sampled_from(sorted(FINAL_STATES)), st.lists(st.sampled_from(Event), max_size=20))
def test_final_states_never_leave(state: JobState, events: list[Event]) -> None:
    current = state
    for event in events:
        with contextlib.suppress(InvalidState):
            current = next_state(current, event)
    assert current is state


@given(st.sampled_from(JobState), st.lists(st.sampled_from(Event), max_size=30))
def test_any_event_sequence_stays_within_the_state_machine(start: JobState, events: list[Event]) -> None:
    current = start
    for event in events:
        before = current
        try:
            current = next_state(current, event)
        except BitsError as e:
            assert isinstance(e, InvalidState)
            assert current is before
        if before.is_final:
            assert current is before


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING])
def test_rule_a_zero_bandwidth_policy_puts_the_job_in_transient_error(state: JobState) -> None:
    from openbits.states import Event, next_state

    assert next_state(state, Event.BLOCKED_BY_POLICY) is JobState.TRANSIENT_ERROR
