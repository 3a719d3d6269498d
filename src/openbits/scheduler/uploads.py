"""The scheduler's runner of upload and upload-reply jobs (SPEC §8): one job's run of
``transfer.upload.Uploader``, bound to the service as downloads are (``run._FileProgress``).

The acknowledged offset and the session (``job.upload``) are stored together, one store
write each (``JobQueue.upload_checkpoint``): at once when a restart must find them (a new
session, the last Ack, the reply, the close), else at most every
``checkpoint_interval_s``, and at the end of the run whatever ended it.  Errors, retries
and NoProgressTimeout are the downloads' (``job_failed``, ``job_transferred``).
Cancel-Session (``cancel_session``) runs in a task of its own, bounded in time (the
uploader sends it again at a 5xx within that time); its failure is only logged: the job is
cancelled whatever the server says.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from typing import Protocol

from openbits.caller import primary_gid
from openbits.errors import BitsError, InternalError, OwnerUnknown
from openbits.model import Job, JobFile, JobType
from openbits.transfer.files import reply_temp_name
from openbits.transfer.options import RequestOptions
from openbits.transfer.owner import user_exists
from openbits.transfer.routing import Owner
from openbits.transfer.upload import Reply, Uploader

log = logging.getLogger("openbits.scheduler")

#: how long a Cancel-Session may take before it is given up (and logged)
CANCEL_SESSION_TIMEOUT_S = 15.0


class JobQueue(Protocol):
    """What the upload runner reports to the service (part of ``run.JobQueue``)."""

    def job_connected(self, job: Job) -> None: ...

    def job_transferred(self, job: Job) -> None: ...

    def job_failed(self, job: Job, error: BitsError, file_index: int | None) -> None: ...

    def upload_checkpoint(self, job: Job, file: JobFile, offset: int) -> None: ...

    def reply_progress(self, job: Job, offset: int) -> None: ...


class _UploadProgress:
    """Binds an upload's reports to the service: the offset and session, at the pace of
    checkpoints (``urgent`` ones at once)."""

    __slots__ = ("file", "interval_s", "job", "last_s", "pending", "service")

    def __init__(self, service: JobQueue, job: Job, file: JobFile, interval_s: float) -> None:
        self.service, self.job, self.file, self.interval_s = service, job, file, interval_s
        self.last_s = time.monotonic()
        self.pending: int | None = None

    def connected(self) -> None:
        self.service.job_connected(self.job)

    def saved(self, offset: int, *, urgent: bool) -> None:
        now = time.monotonic()
        if urgent or now - self.last_s >= self.interval_s:
            self.pending = None
            self.last_s = now
            self.service.upload_checkpoint(self.job, self.file, offset)
        else:
            self.pending = offset

    def reply_done(self, size: int) -> None:
        self.job.reply_bytes_total = self.job.reply_bytes_transferred = size
        self.saved(self.pending if self.pending is not None else self.file.bytes_transferred, urgent=True)

    def flush(self) -> None:
        """The end of a run: the last offset not yet stored is."""
        if self.pending is not None:
            self.saved(self.pending, urgent=True)


class _ReplyProgress:
    """Binds the reply's download (``fetch.Progress``) to the job's ReplyProgress."""

    __slots__ = ("job", "service")

    def __init__(self, service: JobQueue, job: Job) -> None:
        self.service, self.job = service, job

    def connected(self) -> None:
        pass

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        self.job.reply_bytes_total = total
        self.job.reply_bytes_transferred = 0

    def checkpoint(self, offset: int) -> None:
        self.service.reply_progress(self.job, offset)

    def redirected(self, url: str) -> None:
        pass  # (the reply's URL is the server's, not the job's RemoteUrl)

    def responded(self, range_support: bool | None, headers: str) -> None:
        pass


def reply_file_name(job: Job) -> str:
    """ReplyFileName, or its default (AddFile sets it): ``<source's directory>/<JobId>.reply``."""
    if job.reply_file_name:
        return job.reply_file_name
    return os.path.join(os.path.dirname(job.files[0].local_file), f"{job.job_id}.reply")


class UploadRunner:
    """Runs upload jobs (``Scheduler._run_job`` hands them over) and cancels their sessions."""

    def __init__(self, service: JobQueue, uploader: Uploader, checkpoint_interval_s: float) -> None:
        self.service, self.uploader = service, uploader
        self.checkpoint_interval_s = checkpoint_interval_s
        self._cancels: set[asyncio.Task[None]] = set()

    async def run(self, job: Job) -> None:
        """One run of an upload job, to TRANSFERRED (the session closed) or its error."""
        service = self.service
        index: int | None = 0
        progress: _UploadProgress | None = None
        try:
            if not user_exists(job.owner_uid):
                index = None
                raise OwnerUnknown(f"the job's owner (uid {job.owner_uid}) no longer exists")
            if job.upload is None or len(job.files) != 1:
                index = None
                raise InternalError("an upload job without its one file and its session")
            file = job.files[0]
            owner = Owner(job.owner_uid, primary_gid(job.owner_uid))
            progress = _UploadProgress(service, job, file, self.checkpoint_interval_s)
            reply = None
            if job.job_type is JobType.UPLOAD_REPLY:
                temp_name = job.upload.reply_temp_name or reply_temp_name(job.job_id)  # (a new owner's)
                reply = Reply(reply_file_name(job), temp_name, _ReplyProgress(service, job))
            options = RequestOptions.of(job)
            await self.uploader.upload(
                file,
                job.upload,
                owner,
                progress,
                lambda: int(job.priority),  # (as it is at each slice sent: SetPriority may change it)
                options,
                reply,
            )
            progress.flush()
            service.job_transferred(job)
        except BitsError as e:
            if progress is not None:
                progress.flush()
            service.job_failed(job, e, index)
        except asyncio.CancelledError:
            if progress is not None:
                progress.flush()
            raise
        except Exception as e:  # a bug in one transfer never takes the daemon down
            log.exception("upload job %s failed unexpectedly", job.job_id)
            service.job_failed(job, InternalError(f"internal error: {e!r}"), index)
        finally:
            self.uploader.downloader.job_ended(job.job_id)

    def cancel_session(self, job: Job) -> None:
        """Send Cancel-Session for the job's open session in a task of its own (returns at
        once); the job's state is the service's, whatever the server answers."""
        state = job.upload
        if state is None or state.session_id is None or state.closed or not job.files:
            return
        # (copies: the job may leave memory, or change, while the packet is on its way)
        file, state = copy.copy(job.files[0]), copy.copy(state)
        options = RequestOptions.of(job)
        job_id, uid = job.job_id, job.owner_uid

        async def cancel() -> None:
            try:
                owner = Owner(uid, primary_gid(uid))
                async with asyncio.timeout(CANCEL_SESSION_TIMEOUT_S):
                    await self.uploader.cancel_session(file, state, owner, options)
            except (BitsError, TimeoutError) as e:
                log.warning("job %s: Cancel-Session failed: %s", job_id, e)
            except Exception:
                log.exception("job %s: Cancel-Session failed unexpectedly", job_id)
            else:
                log.info("job %s: upload session cancelled", job_id)

        task = asyncio.get_running_loop().create_task(cancel(), name=f"cancel-session {job_id}")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
