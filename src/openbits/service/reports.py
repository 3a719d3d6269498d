"""What the scheduler tells the service: the transfers' progress and the state changes
the scheduling rules make.  These are the daemon's own changes: they stand even when the
store cannot take them (``LiveJobs._change(own=True)``, ``_save``), but TRANSFERRED,
which is shown only once stored."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

from openbits import states
from openbits.errors import BitsError, HResult
from openbits.model import ErrorContext, Job, JobError, JobFile, JobState
from openbits.scheduler.policy import retry_delay_s
from openbits.service.changes import LiveJobs
from openbits.states import Event

log = logging.getLogger("openbits.service")


class Reports(LiveJobs):
    def job_started(self, job: Job) -> None:
        with self._change(job, "connecting", own=True):
            self._enter(job, states.next_state(job.state, Event.START))

    def job_connected(self, job: Job) -> None:
        if job.state is JobState.CONNECTING:
            with self._change(job, "transferring", own=True):
                self._enter(job, states.next_state(job.state, Event.CONNECTED))

    def file_checkpoint(self, job: Job, file: JobFile, offset: int) -> None:
        """``offset`` bytes of ``file`` are durable on disk: record them."""
        if job.state.is_final:
            return
        progressed = offset > file.bytes_transferred
        if progressed:
            self.counters.bytes_transferred += offset - file.bytes_transferred
        file.bytes_transferred = offset
        if progressed:
            job.no_progress_since_ns = 0
            job.errors_in_a_row = 0
            job.modified_ns = self.clock.now_ns()
        self._save(job, (file,))
        if progressed:
            self._announce(job, "progress")  # (events coalesce it: api/events.py)

    def upload_checkpoint(self, job: Job, file: JobFile, offset: int) -> None:
        """An upload's acknowledged ``offset`` and its session (``job.upload``, with the
        reply's progress) moved: one store write.  The offset may move back (the server
        lost bytes, or a new session): only progress counts as progress."""
        if job.state.is_final:
            return
        progressed = offset > file.bytes_transferred
        if progressed:
            self.counters.bytes_transferred += offset - file.bytes_transferred
            job.no_progress_since_ns = 0
            job.errors_in_a_row = 0
            job.modified_ns = self.clock.now_ns()
        file.bytes_transferred = offset
        file.completed = job.upload is not None and job.upload.fragments_done
        self._save(job, (file,))
        self._announce(job, "progress" if progressed else "upload checkpoint")

    def reply_progress(self, job: Job, offset: int) -> None:
        """``offset`` bytes of an upload-reply job's reply are durable (ReplyProgress)."""
        if job.state.is_final:
            return
        job.reply_bytes_transferred = offset
        self._save(job)
        self._announce(job, "progress")

    def file_redirected(self, job: Job, file: JobFile, url: str) -> None:
        """ALLOW_REPORT: the final URL of a redirect becomes the file's RemoteUrl."""
        if job.state.is_final:
            return
        with self._change(job, "file redirected", (file,), own=True):
            file.remote_url = url

    def file_restarted(self, job: Job, file: JobFile) -> None:
        """The remote content changed: the file starts again from byte 0."""
        file.bytes_transferred = 0
        file.completed = False
        file.segments = None
        self._save(job, (file,))

    def file_done(self, job: Job, file: JobFile, size: int) -> None:
        """All ``size`` bytes are durable: the last checkpoint and the completion, one commit."""
        self.files_done(job, ((file, size),), "file transferred")

    def files_done(
        self, job: Job, files: Iterable[tuple[JobFile, int]], what: str = "files transferred"
    ) -> None:
        """Durable files completed (several at once: one commit)."""
        if job.state.is_final:
            return
        done = []
        counters = self.counters
        for file, size in files:
            counters.bytes_transferred += max(0, size - file.bytes_transferred)
            counters.files_transferred += 1
            file.bytes_transferred = file.bytes_total = size
            file.completed = True
            file.segments = None  # (whole: no segment left to resume)
            done.append(file)
        job.no_progress_since_ns = 0
        job.errors_in_a_row = 0
        job.modified_ns = self.clock.now_ns()
        self._save(job, done)
        self._announce(job, what)

    def job_transferred(self, job: Job) -> None:
        """Every file is durable.  TRANSFERRED is shown only once the store has it (Complete
        publishes on its word): a failed commit is a transient error of the job's instead."""
        if job.state not in (*states.RUNNING_STATES, JobState.QUEUED):
            return
        with self._change(job, "transferred"):
            self._enter(job, states.next_state(job.state, Event.ALL_FILES_DONE))
            job.transferred_ns = self.clock.now_ns()
            job.error = None

    def job_preempted(self, job: Job) -> None:
        """Its transfer was stopped (a higher priority, the end of its time slice, a verb):
        back to the queue at its checkpoint."""
        if job.state in states.RUNNING_STATES:
            with self._change(job, "preempted", own=True):
                self._enter(job, states.next_state(job.state, Event.PREEMPTED))

    def job_failed(self, job: Job, error: BitsError, file_index: int | None) -> None:
        if job.state not in states.RUNNING_STATES:
            return
        now = self.clock.now_ns()
        transient = error.transient and job.no_progress_timeout_s > 0
        with self._change(job, "transient error" if transient else "error", own=True):
            job.error = JobError(error.hresult, error.context, error.message, file_index)
            if transient:
                self._retry_later(job, error, now)
            else:
                self.counters.errors += 1
                self._enter(job, states.next_state(job.state, Event.FATAL_FAILURE))
        log.info("job %s: %s", job.job_id, error)

    def _retry_later(self, job: Job, error: BitsError, now: int) -> None:
        """TRANSIENT_ERROR until the retry delay has passed (or ERROR at NoProgressTimeout)."""
        if not job.no_progress_since_ns:
            job.no_progress_since_ns = now
        job.transient_error_count += 1
        job.errors_in_a_row += 1
        self.counters.transient_errors += 1
        delay_s = retry_delay_s(
            job.minimum_retry_delay_s,
            job.errors_in_a_row,
            retry_after_s=error.retry_after_s,
            backoff=self.config.retry_backoff,
            backoff_max_s=self.config.retry_backoff_max_s,
            jitter=random.uniform(-1.0, 1.0),
        )
        job.retry_at_ns = now + int(delay_s * 10**9)
        self._enter(job, states.next_state(job.state, Event.TRANSIENT_FAILURE))
        if now - job.no_progress_since_ns >= job.no_progress_timeout_s * 10**9:
            self._enter(job, states.next_state(job.state, Event.NO_PROGRESS_TIMEOUT))

    def retry_due(self, job: Job) -> None:
        if job.state is JobState.TRANSIENT_ERROR:
            with self._change(job, "retrying", own=True):
                self._enter(job, states.next_state(job.state, Event.RETRY_DUE))
                job.retry_at_ns = 0

    def blocked_by_policy(self, job: Job) -> None:
        """Its bandwidth limit is 0 now (BITS group policy): TRANSIENT_ERROR with
        BG_E_BLOCKED_BY_POLICY until the limit lifts. Not a failure of the job: it neither
        counts as a transient error nor runs down NoProgressTimeout."""
        if job.state is not JobState.QUEUED and job.state not in states.RUNNING_STATES:
            return
        with self._change(job, "blocked by policy", own=True):
            job.error = JobError(
                int(HResult.BG_E_BLOCKED_BY_POLICY),
                ErrorContext.GENERAL_QUEUE_MANAGER,
                "the bandwidth limit for this priority is 0 now; the job waits until it is raised",
            )
            job.retry_at_ns = 2**62  # retried when the limit lifts, not by the clock
            self._enter(job, states.next_state(job.state, Event.BLOCKED_BY_POLICY))

    def download_time_exceeded(self, job: Job) -> None:
        """MaximumDownloadTime ran out while the job was connecting or transferring."""
        if job.state in states.RUNNING_STATES:
            with self._change(job, "maximum download time exceeded", own=True):
                job.error = JobError(
                    int(HResult.BG_E_MAXDOWNLOAD_TIMEOUT),
                    ErrorContext.GENERAL_QUEUE_MANAGER,
                    f"the job spent more than its MaximumDownloadTime ({job.maximum_download_time_s} s) "
                    "transferring",
                )
                self._enter(job, states.next_state(job.state, Event.FATAL_FAILURE))

    def no_progress_timeout(self, job: Job) -> None:
        if job.state is JobState.TRANSIENT_ERROR:
            with self._change(job, "no progress", own=True):
                self._enter(job, states.next_state(job.state, Event.NO_PROGRESS_TIMEOUT))

    def notification_done(self, job: Job, due_ns: int, ok: bool) -> None:
        """The notification due at ``due_ns`` ran: done, or (it failed) due again after
        MinimumRetryDelay while the job stays where it is.  Nothing changes when the job
        moved on or was re-armed meanwhile."""
        if job.notify_due_ns != due_ns or self.jobs.get(job.job_id) is not job:
            return
        job.notify_due_ns = 0 if ok else self.clock.now_ns() + job.minimum_retry_delay_s * 10**9
        self._save(job)  # (not a change of the job's own: its modification time stays)
        self._announce(job, "notified" if ok else "notification failed")
