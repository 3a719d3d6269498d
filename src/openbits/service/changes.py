"""The live jobs and how a change of one is saved and announced.

Every change of a job goes through ``LiveJobs._change``: the verb makes it inside the
``with`` block, and at its end the job is saved to the store and the change announced
(to long polls, the event log, the notifier) and the scheduler woken.  A caller's change
is answered only once it is stored: when the store refuses it (a full disk), the job is
put back as it was and the caller gets the store's own error (StoreWriteFailed, StoreFull).  The
daemon's own changes (``own=True``: progress, retries, state changes the transfers
report) stand even so: the job is marked ``unsaved``, the store keeps an earlier valid
state, as after a crash, and the next write that succeeds saves every file row of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from openbits import states
from openbits.clock import Clock
from openbits.config import Config
from openbits.errors import StoreWriteFailed
from openbits.model import Job, JobFile, JobState, JobType, NotifyFlags
from openbits.policy import ServicePolicy
from openbits.states import Event
from openbits.store import JobStore
from openbits.transfer import files as fs
from openbits.transfer.owner import Owners

log = logging.getLogger("openbits.service")

#: the states whose entry runs the notification command line and webhook, by the flag
#: that asks for it (modification and file events are for callbacks and GET /events)
NOTIFY_ON = {JobState.TRANSFERRED: NotifyFlags.JOB_TRANSFERRED, JobState.ERROR: NotifyFlags.JOB_ERROR}


def reply_temp_path(job: Job) -> str | None:
    """Where an upload-reply job's reply is written until Complete: beside ReplyFileName,
    ``files.reply_temp_name`` or the name a new owner's copy took (``UploadState.reply_temp_name``);
    None for other jobs, and before ReplyFileName is known."""
    if job.job_type is not JobType.UPLOAD_REPLY or not job.reply_file_name:
        return None
    name = job.upload.reply_temp_name if job.upload is not None else None
    return os.path.join(os.path.dirname(job.reply_file_name), name or fs.reply_temp_name(job.job_id))


class Runner(Protocol):
    """What the service needs of whatever runs the transfers (``scheduler.run.Transfers``)."""

    def wake(self) -> None: ...

    async def stop(self, job_id: str) -> None: ...

    def cancel_upload(self, job: Job) -> None:
        """Tell the upload server to drop the job's open session (Cancel-Session), in a
        task of its own with a short deadline: returns at once; a failure is only logged."""
        ...


class _NoRunner:
    def wake(self) -> None:
        pass

    async def stop(self, job_id: str) -> None:
        pass

    def cancel_upload(self, job: Job) -> None:
        pass


@dataclass(slots=True)
class Counters:
    """What the transfers did since the daemon started (``GET /metrics``), and when it
    started (Unix time)."""

    started_s: float
    bytes_transferred: int = 0
    files_transferred: int = 0
    transient_errors: int = 0
    errors: int = 0


class LiveJobs:
    """The jobs not finished, in memory and written through to the store."""

    def __init__(
        self,
        store: JobStore,
        config: Config,
        clock: Clock | None = None,
        runner: Runner | None = None,
        *,
        published_mode: int | None = None,
        owners: Owners | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock or Clock()
        self.runner: Runner = runner or _NoRunner()
        #: the mode Complete gives the files it publishes (``fs.published_mode``, read now if
        #: not given: 0666 less the daemon's umask)
        self.published_mode = fs.published_mode() if published_mode is None else published_mode
        #: every file-system action of a job runs with its owner's rights through these
        #: (in-process for a daemon that is not root; the owner's helper for a root one)
        self.owners = owners if owners is not None else Owners()
        self.jobs: dict[str, Job] = {}
        #: the jobs the scheduler must look at on every tick (QUEUED, CONNECTING,
        #: TRANSFERRING, TRANSIENT_ERROR): a tick costs O(active), not O(all jobs)
        self.active: dict[str, Job] = {}
        #: the jobs whose ownership is being taken (``wmi._m_take_ownership``): no transfer
        #: of them starts while their files are copied to the new owner
        self.taking: set[str] = set()
        #: the jobs a Complete is publishing (``verbs.complete``): none restarts meanwhile
        self.completing: set[str] = set()
        #: raises ValueError for a bad bandwidth setting in the config
        self.policy = ServicePolicy.from_config(config).with_persisted(store.load_settings())
        #: observers of every change announced, ``(job, what)``: a verb's or a state
        #: change's name, or "progress" for a checkpoint (the event log: api/events.py)
        self.listeners: list[Callable[[Job, str], None]] = []
        self._waiters: dict[str, asyncio.Event] = {}  # job id -> set at its next change
        self._polls_ended = False  # shutdown: long polls answer at once (``end_long_polls``)
        self.counters = Counters(started_s=self.clock.now_ns() / 1e9)
        #: the "scheme://host:port" of HTTP(S) RemoteUrls already found valid (params.py)
        self.known_origins: set[str] = set()
        self.store_failing = False  # the last job write failed (logged once, and when it heals)

    # -- start-up -------------------------------------------------------------------------

    def recover(self) -> None:
        """Load the jobs not finished; jobs that were running go back to QUEUED, at their
        checkpoint. Finished jobs stay in the store alone (``find`` reads them there), so
        memory holds the live queue only, however many jobs went through."""
        for job in self.store.load_jobs():
            if not job.state.is_final:
                self.jobs[job.job_id] = job
                self._index(job)
            if job.state in states.RUNNING_STATES:
                self._enter(job, states.next_state(job.state, Event.PREEMPTED))
                self._save(job)
                self._announce(job, "recovered")  # (a stream resumed by Last-Event-ID sees it)
            elif job.state is JobState.CANCELLED:
                for f in job.files:
                    if not f.published:
                        self._remove(job, f.temp_path)
                self._remove(job, reply_temp_path(job))
            elif job.state is JobState.ACKNOWLEDGED:
                for f in job.files:
                    if not f.published and not f.completed:
                        self._remove(job, f.temp_path)
        self.purge_finished()

    def _remove(self, job: Job, path: str | None) -> bool:
        """Remove a file of ``job`` with its owner's rights; True when it is gone."""
        return fs.remove_quietly(self.owners, job.owner_uid, None, path)

    async def _remove_all(self, job: Job, paths: list[str | None]) -> bool:
        """Remove files of ``job`` with its owner's rights (in a thread when that takes his
        helper: a slow one stalls no one else); True when all are gone."""

        def remove() -> bool:
            return all([self._remove(job, p) for p in paths])

        if self.owners.acts_in_process(job.owner_uid):
            return remove()
        return await asyncio.to_thread(remove)

    def purge_finished(self) -> int | None:
        """Delete finished jobs past the retention period; the next purge time (ns)."""
        keep_ns = self.config.finished_retention_s * 10**9
        try:
            self.store.delete_finished(self.clock.now_ns() - keep_ns)
        except StoreWriteFailed as e:
            log.warning("cannot forget finished jobs yet: %s", e)
        oldest = self.store.oldest_finished_ns()
        return None if oldest is None else oldest + keep_ns

    # -- what the scheduler plans over (scheduler.run.JobQueue) --------------------------------

    def jobs_to_plan(self, every: bool) -> Iterable[Job]:
        """The active jobs, or (``every``: for the inactivity timeout) all not finished."""
        held = self.taking | self.completing if self.taking or self.completing else frozenset()
        if every:
            return (j for j in self.jobs.values() if not j.state.is_final and j.job_id not in held)
        if held:
            return (j for j in self.active.values() if j.job_id not in held)
        return self.active.values()

    # -- state ----------------------------------------------------------------------------

    def _enter(self, job: Job, state: JobState) -> None:
        """Change the state, keeping the scheduling clocks: time spent running counts
        toward MaximumDownloadTime, and QUEUED jobs take their turn in arrival order."""
        if state is job.state:
            return
        now = self.clock.now_ns()
        if job.state in states.RUNNING_STATES and state not in states.RUNNING_STATES:
            if job.run_started_ns:
                job.download_time_ns += max(0, now - job.run_started_ns)
            job.run_started_ns = 0
        elif state in states.RUNNING_STATES and job.state not in states.RUNNING_STATES:
            job.run_started_ns = now
        if state is JobState.QUEUED:
            job.queued_ns = now
        job.state = state
        arm_notification(job, now)
        if job.job_id in self.jobs:
            self._index(job)

    def _index(self, job: Job) -> None:
        if job.state in states.ACTION_STATES:
            self.active[job.job_id] = job
        else:
            self.active.pop(job.job_id, None)

    # -- save and announce -----------------------------------------------------------------

    @contextlib.contextmanager
    def _change(
        self,
        job: Job,
        what: str,
        files: Sequence[JobFile] = (),
        *,
        added: Sequence[JobFile] = (),
        own: bool = False,
    ) -> Iterator[None]:
        """A change of ``job`` (and of its ``files``) made in the ``with`` block, or the new
        ``added`` files appended to it there: saved, announced as ``what``, the scheduler
        woken.  A caller's change is put back (job fields, ``files``, the files list) when
        the block raises or the store refuses it, and the store's error raised again; the
        daemon's own change (``own``) stands (``_save``)."""
        if own:
            yield
            job.modified_ns = self.clock.now_ns()
            self._save(job, files)
        else:
            before = copy.copy(job)
            files_before = [copy.copy(f) for f in files]
            count = len(job.files)
            try:
                yield
                job.modified_ns = self.clock.now_ns()
                self._save(job, files, added=added, strict=True)
            except BaseException as e:
                for name in _JOB_FIELDS:
                    setattr(job, name, getattr(before, name))
                for file, saved in zip(files, files_before, strict=True):
                    for name in _FILE_FIELDS:
                        setattr(file, name, getattr(saved, name))
                del job.files[count:]
                self._index(job)
                if isinstance(e, StoreWriteFailed):
                    job.unsaved = True  # (the next write saves every file row)
                raise
        self._announce(job, what)
        self.runner.wake()
        if job.state.is_final:  # stored: it lives on in the store alone (``find``)
            self.jobs.pop(job.job_id, None)

    def _save(
        self, job: Job, files: Iterable[JobFile] = (), *, added: Sequence[JobFile] = (), strict: bool = False
    ) -> None:
        """Write the job's row and ``files`` (every file of an ``unsaved`` job), or insert the
        ``added`` files with the job's row.  When the store refuses: ``strict``, its
        StoreWriteFailed is raised (``_change`` puts the caller's change back); else the
        change stands, the job is marked ``unsaved`` and the failure logged once."""
        try:
            if added:  # (an unsaved job stays so: its other rows are not written)
                self.store.add_files(job, added)
                return
            self.store.save_job(job, job.files if job.unsaved else files)
        except StoreWriteFailed as e:
            if strict:
                raise
            job.unsaved = True
            if not self.store_failing:
                log.error("%s; the jobs go on, and the store catches up at its next write that succeeds", e)
            self.store_failing = True
            return
        job.unsaved = False
        if self.store_failing:
            self.store_failing = False
            log.warning("the job store records changes again")

    def _announce(self, job: Job, what: str) -> None:
        """Tell the long polls waiting on ``job`` and every listener of the change ``what``."""
        event = self._waiters.pop(job.job_id, None)
        if event is not None:
            event.set()
        for listener in self.listeners:
            try:
                listener(job, what)
            except Exception:  # a listener never breaks a verb
                log.exception("listener failed")

    def end_long_polls(self) -> None:
        """Shutdown: every long poll answers now, and any asked from now on at once (the
        daemon stops without waiting out their WaitTimeouts)."""
        self._polls_ended = True
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    async def wait_while(self, job: Job, states: frozenset[JobState], timeout_s: float) -> None:
        """Return once ``job`` is in none of ``states``, or after ``timeout_s`` (a long poll:
        a client learns of a state change at once, without polling), or at shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while job.state in states and job.job_id in self.jobs:  # (a finished job never changes)
            if self._polls_ended:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            event = self._waiters.get(job.job_id)
            if event is None:
                event = self._waiters[job.job_id] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()


#: a Job's fields but its files (what a refused change puts back; the files list is cut
#: back to its length, and the files the change named are put back field by field)
_JOB_FIELDS = tuple(f for f in Job.__slots__ if f != "files")
_FILE_FIELDS = JobFile.__slots__


def arm_notification(job: Job, now_ns: int) -> None:
    """Due now when the job is in a state its notify flags ask to hear of and it has a
    command line or a webhook; nothing pending otherwise (a job that left TRANSFERRED or
    ERROR is not notified of it any more, as BITS stops rerunning the program)."""
    flag = NOTIFY_ON.get(job.state)
    wanted = (
        flag is not None
        and job.notify_flags & flag
        and not job.notify_flags & NotifyFlags.DISABLE
        and (job.notify_program is not None or job.notify_url is not None)
    )
    job.notify_due_ns = now_ns if wanted else 0
