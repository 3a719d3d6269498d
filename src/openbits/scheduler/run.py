"""The scheduler's loop: applies ``policy.plan`` to the live jobs and runs transfers.

One task per running job, all in one TaskGroup.  Deadlines (retries, timeouts)
live in the jobs (and so in the store); the loop sleeps until the earliest one
or until the service wakes it.  A failing job never takes the daemon down.

The scheduler sees the service through ``JobQueue`` alone; ``Transfers`` (the running
tasks and the wake-up) is created first and handed to both, so the daemon wires them
in one pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from openbits.caller import primary_gid
from openbits.clock import Clock
from openbits.config import Config
from openbits.errors import BitsError, HResult, InternalError, OwnerUnknown
from openbits.model import Job, JobFile, JobType
from openbits.outlast import waited_through
from openbits.policy import ServicePolicy
from openbits.scheduler import policy
from openbits.scheduler.atonce import FilesAtOnce, SharedBatch
from openbits.scheduler.uploads import UploadRunner
from openbits.transfer import offload
from openbits.transfer.download import Downloader, Fetched, Owner, RequestOptions
from openbits.transfer.files import temp_name_for
from openbits.transfer.owner import user_exists
from openbits.transfer.sink import SyncBatch
from openbits.transfer.throttle import Throttle
from openbits.transfer.upload import Uploader

log = logging.getLogger("openbits.scheduler")

PURGE_INTERVAL_NS = 3600 * 10**9
BLOCKED_BY_POLICY = int(HResult.BG_E_BLOCKED_BY_POLICY)
#: a job's files move on several connections at once (up to MaxConnections) only once one
#: of them is known to be at least this long: smaller files go faster, and cheaper, one after
#: the other on one connection with their requests sent ahead (bench_small: 2,000 x 16 KiB)
AT_ONCE_MIN_BYTES = 1024 * 1024
#: a job with at least this many small files left shares them with the fetch worker (a
#: process on another core: ``transfer/offload.py``), when it has two connections or more
OFFLOAD_MIN_FILES = 128
#: files after the current one whose requests the downloader may send ahead
PIPELINE_LOOKAHEAD = 16


class JobQueue(Protocol):
    """What the scheduler needs of the service (``service.Service``): the jobs to plan
    over, the rules and the clock, and where to report what transfers and rules did."""

    @property
    def clock(self) -> Clock: ...

    @property
    def policy(self) -> ServicePolicy: ...

    def jobs_to_plan(self, every: bool) -> Iterable[Job]: ...

    def purge_finished(self) -> int | None: ...

    def job_started(self, job: Job) -> None: ...

    def job_connected(self, job: Job) -> None: ...

    def job_preempted(self, job: Job) -> None: ...

    def job_transferred(self, job: Job) -> None: ...

    def job_failed(self, job: Job, error: BitsError, file_index: int | None) -> None: ...

    def retry_due(self, job: Job) -> None: ...

    def blocked_by_policy(self, job: Job) -> None: ...

    def download_time_exceeded(self, job: Job) -> None: ...

    def no_progress_timeout(self, job: Job) -> None: ...

    async def inactive(self, job: Job) -> None: ...

    def file_checkpoint(self, job: Job, file: JobFile, offset: int) -> None: ...

    def file_redirected(self, job: Job, file: JobFile, url: str) -> None: ...

    def file_restarted(self, job: Job, file: JobFile) -> None: ...

    def file_done(self, job: Job, file: JobFile, size: int) -> None: ...

    def files_done(self, job: Job, files: Iterable[tuple[JobFile, int]]) -> None: ...

    def upload_checkpoint(self, job: Job, file: JobFile, offset: int) -> None: ...

    def reply_progress(self, job: Job, offset: int) -> None: ...


class Transfers:
    """The transfer task of each running job, and the scheduler's wake-up.  The service
    wakes the scheduler and stops transfers through it (its ``Runner``)."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        #: the runner of upload jobs (the scheduler sets it): Cancel-Session goes through it
        self.uploads: UploadRunner | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def woken(self) -> bool:
        """Woken since ``clear_wake``: the next tick is due at once."""
        return self._wake.is_set()

    def clear_wake(self) -> None:
        """Forget the wake-ups so far (the tick that follows sees what they announced)."""
        self._wake.clear()

    async def sleep(self, timeout_s: float | None) -> None:
        """Until woken, or ``timeout_s`` has passed (None: no deadline)."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
        # that shuts the scheduler down when the wait finishes in the same loop step.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    def start(self, group: asyncio.TaskGroup, job_id: str, run: Coroutine[Any, Any, None]) -> None:
        task = group.create_task(run, name=f"job {job_id}")
        self.running[job_id] = task
        task.add_done_callback(functools.partial(self._done, job_id))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        """A job's task ended: the job may start again.  A done callback, not the task's own
        ``finally``: a task cancelled before it first ran (pre-empted in the tick right after
        the one that started it) never runs its body, and would hold its job back for ever."""
        if self.running.get(job_id) is task:
            del self.running[job_id]
        self.wake()

    def cancel(self, job_id: str) -> None:
        """Stop a job's transfer without waiting (its state is the service's to set)."""
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()

    def cancel_upload(self, job: Job) -> None:
        """Cancel-Session of a cancelled upload job's open session, in a task of its own:
        returns at once (the service calls it once the transfer was stopped)."""
        if self.uploads is None:
            log.warning("job %s: no upload runner to send its Cancel-Session", job.job_id)
            return
        self.uploads.cancel_session(job)

    async def stop(self, job_id: str) -> None:
        """Stop a job's transfer and wait until its task has let go of its files."""
        task = self.running.get(job_id)
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])


class _FileProgress:
    """Binds a downloader's reports for one file to the service."""

    __slots__ = ("file", "job", "service")

    def __init__(self, service: JobQueue, job: Job, file: JobFile) -> None:
        self.service, self.job, self.file = service, job, file

    def connected(self) -> None:
        self.service.job_connected(self.job)

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        f = self.file
        f.bytes_total, f.etag, f.last_modified = total, etag, last_modified
        f.segments = None  # (from byte 0: one stream, until the transfer splits it again)
        if f.bytes_transferred or f.completed:
            self.service.file_restarted(self.job, f)  # committed before new bytes land
        # a first start needs no commit: the validators go with the first checkpoint

    def checkpoint(self, offset: int) -> None:
        self.service.file_checkpoint(self.job, self.file, offset)

    def redirected(self, url: str) -> None:
        self.service.file_redirected(self.job, self.file, url)

    def responded(self, range_support: bool | None, headers: str) -> None:
        # kept in memory; the next commit of the file (checkpoint or completion) stores them
        self.file.range_support = range_support
        self.file.response_headers = headers


class _Offload:
    """The fetch worker as one job's run uses it (``atonce.Remote``)."""

    __slots__ = ("job", "options", "owner", "scheduler")

    def __init__(self, scheduler: Scheduler, job: Job, owner: Owner) -> None:
        self.scheduler, self.job, self.owner = scheduler, job, owner
        self.options = RequestOptions.of(job)

    def eligible(self, files: Sequence[JobFile], *, extending: bool) -> bool:
        s, job = self.scheduler, self.job
        options = RequestOptions.of(job)  # (as they are now: SetCredentials etc. do not stop a job)
        if extending and options != self.options:
            return False
        self.options = options
        if not self.unpaced():
            return False
        proxies = s.downloader.transport.proxies
        return all(offload.eligible(f, options, proxies) for f in files)

    def unpaced(self) -> bool:
        throttle, priority = self.scheduler.throttle, int(self.job.priority)
        return not (throttle.is_limited(priority) or throttle.politeness.yields(priority))

    async def open(self, files: Sequence[tuple[int, JobFile]]) -> offload.Lane:
        worker = self.scheduler.fetch_worker
        if worker is None:
            raise offload.WorkerLost("no fetch worker")
        job = self.job
        self._named(files)
        return await worker.open(job.job_id, self.options, int(job.priority), self.owner, files)

    def extend(self, lane: offload.Lane, files: Sequence[tuple[int, JobFile]]) -> None:
        self._named(files)
        lane.extend(files)

    def _named(self, files: Sequence[tuple[int, JobFile]]) -> None:
        for index, file in files:
            if file.temp_name is None:  # (as ``Scheduler._fetch``)
                file.temp_name = temp_name_for(self.job.job_id, index)

    def progress(self, file: JobFile) -> _FileProgress:
        return _FileProgress(self.scheduler.service, self.job, file)


class Scheduler:
    def __init__(
        self,
        service: JobQueue,
        config: Config,
        downloader: Downloader,
        throttle: Throttle | None = None,
        transfers: Transfers | None = None,
        *,
        sync_threads: concurrent.futures.Executor,
        fetch_worker: offload.FetchWorker | None = None,
    ) -> None:
        self.service = service
        self.fetch_worker = fetch_worker  # small files' second core (the daemon owns it)
        self.sync_threads = sync_threads  # the batch syncs' threads (the daemon owns them)
        self.config = config
        self.downloader = downloader
        self.throttle = throttle if throttle is not None else Throttle()
        self.transfers = transfers if transfers is not None else Transfers()
        self.uploads = UploadRunner(service, Uploader(downloader), config.checkpoint_interval_s)
        self.transfers.uploads = self.uploads
        self._applied: tuple[object, ...] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._next_purge_ns = 0
        self._next_scan_ns = 0

    async def run(self) -> None:
        clock = self.service.clock
        async with asyncio.TaskGroup() as group:
            self._group = group
            while True:
                self.transfers.clear_wake()
                wake_at = self._tick()
                await self.transfers.sleep(
                    None if wake_at is None else max(0.0, (wake_at - clock.now_ns()) / 1e9)
                )

    def _tick(self) -> int | None:
        service = self.service
        now = service.clock.now_ns()
        # Every tick looks at the active jobs; all jobs (for the inactivity timeout) only
        # now and then, so an API call costs the same with 10 jobs or 10,000.
        inactivity_s = self.config.job_inactivity_timeout_s
        scan_all = now >= self._next_scan_ns
        if scan_all:
            self._next_scan_ns = now + int(min(60.0, max(1.0, inactivity_s / 4)) * 1e9)
        jobs = {j.job_id: j for j in service.jobs_to_plan(every=scan_all)}
        views = [
            policy.JobView(
                j.job_id,
                j.state,
                j.priority,
                j.seq,
                retry_at_ns=j.retry_at_ns,
                no_progress_since_ns=j.no_progress_since_ns,
                no_progress_timeout_s=j.no_progress_timeout_s,
                run_started_ns=j.run_started_ns,
                queued_ns=j.queued_ns,
                maximum_download_time_s=j.maximum_download_time_s,
                download_time_ns=j.download_time_ns,
                modified_ns=j.modified_ns,
                blocked_by_policy=j.error is not None and j.error.hresult == BLOCKED_BY_POLICY,
            )
            for j in jobs.values()
        ]
        rules = service.policy
        limit_change_ns = self.apply_bandwidth(now)
        plan = policy.plan(
            views,
            now,
            rules.max_background,
            time_slice_s=rules.time_slice_s,
            inactivity_timeout_s=inactivity_s,
            blocked=self._blocked_priorities(),
        )
        assert self._group is not None
        for job_id in plan.inactive:
            self._group.create_task(service.inactive(jobs[job_id]))
        for job_id in plan.timeout:
            service.no_progress_timeout(jobs[job_id])
        for job_id in plan.block:
            self.transfers.cancel(job_id)
            service.blocked_by_policy(jobs[job_id])
        for job_id in plan.download_timeout:
            self.transfers.cancel(job_id)
            service.download_time_exceeded(jobs[job_id])
        for job_id in plan.retry:
            service.retry_due(jobs[job_id])
        for job_id in plan.preempt:
            self.transfers.cancel(job_id)
            service.job_preempted(jobs[job_id])
        for job_id in plan.start:
            if job_id in self.transfers.running:
                continue  # its previous task is still letting go
            job = jobs[job_id]
            service.job_started(job)
            self.transfers.start(self._group, job_id, self._run_job(job))
        if now >= self._next_purge_ns:
            service.purge_finished()
            self._next_purge_ns = now + PURGE_INTERVAL_NS
        deadlines = [
            d
            for d in (plan.wake_at_ns, self._next_purge_ns, self._next_scan_ns, limit_change_ns)
            if d is not None
        ]
        return min(deadlines)

    def _blocked_priorities(self) -> frozenset[int]:
        """Priorities whose bandwidth limit is 0 right now (FOREGROUND only if it is limited)."""
        throttle = self.throttle
        return frozenset(
            p
            for p in (0, 1, 2, 3)
            if throttle.is_limited(p) and (throttle.global_bps == 0 or throttle.bucket(p).rate == 0)
        )

    def apply_bandwidth(self, now_ns: int) -> int | None:
        """Set the throttle to the policy's limits for this instant (a change takes effect at
        once, without restarting transfers); the next instant the schedule changes them."""
        rules = self.service.policy
        now = datetime.fromtimestamp(now_ns / 1e9)
        self.throttle.politeness.configure(rules.yielding(), rules.yield_target_delay_ms)
        wanted = (rules.global_limit_at(now), tuple(rules.per_priority().items()), rules.foreground_limited)
        if wanted != self._applied:
            self.throttle.set_limits(
                global_bps=wanted[0],
                per_priority=rules.per_priority(),
                foreground_limited=rules.foreground_limited,
            )
            self._applied = wanted
            log.info("bandwidth limits now: global %s, per priority %s", wanted[0], rules.per_priority())
        schedule = rules.schedule()
        if schedule is None or schedule.is_constant:
            return None
        return int(schedule.next_change_after(now).timestamp() * 1e9)

    async def _run_job(self, job: Job) -> None:
        if job.job_type is not JobType.DOWNLOAD:
            await self.uploads.run(job)
            return
        service = self.service
        owner = Owner(job.owner_uid, primary_gid(job.owner_uid))
        batch = SyncBatch(
            self.sync_threads,
            functools.partial(service.files_done, job),
            functools.partial(self.downloader.open_sync_handle, owner),
        )
        index: int | None = 0
        at_once: FilesAtOnce | None = None
        try:
            if not user_exists(job.owner_uid):
                index = None  # (the job's error, no file's)
                raise OwnerUnknown(f"the job's owner (uid {job.owner_uid}) no longer exists")
            connections = job.effective_max_connections(service.policy.max_connections_per_job)
            big = any(f.bytes_total is not None and f.bytes_total >= AT_ONCE_MIN_BYTES for f in job.files)
            remote = None if big or connections < 2 else self._offload(job, owner)
            rounds_from: set[int] = set()  # where each round of files at once began
            while not job.state.is_final:  # one at a time, in order, the next requests sent ahead
                start = index or 0
                index = next((i for i in range(start, len(job.files)) if not job.files[i].completed), None)
                if index is None:
                    await batch.flush()
                    # (a file added while the last ones were synced is fetched too, not left
                    # out of a job that would then be TRANSFERRED without it)
                    index = next((i for i, f in enumerate(job.files) if not f.completed), None)
                    if index is None:
                        break
                    continue
                # (counted only when it matters: counting per file is quadratic in the files;
                # the files before ``index`` are committed or in the batch: not ones left)
                if index in rounds_from:  # (a round left its first file undone: not again)
                    break
                if remote is not None:  # (many small files: asked before the first one)
                    rounds_from.add(index)
                    # this loop's connection and the fetch worker's
                    at_once = FilesAtOnce(job, SharedBatch(batch), 2, first=index)
                    # (a big file found on the way may still go in segments, on the others)
                    fetch = functools.partial(self._fetch, job, owner, connections=max(1, connections - 1))
                    await at_once.run(fetch, service.file_done, remote)
                    await batch.flush()  # (its files committed before any is looked for again)
                    index = None
                    continue
                if connections > 1 and big and (left := _left(job.files, index)) > 1:
                    rounds_from.add(index)
                    # each file's task gets an equal share of the connections (segments.py)
                    share = max(1, connections // min(connections, left))
                    at_once = FilesAtOnce(job, SharedBatch(batch), connections, first=index)
                    fetch = functools.partial(self._fetch, job, owner, connections=share)
                    await at_once.run(fetch, service.file_done)
                    await batch.flush()
                    index = None
                    continue
                at_once = None  # (a file fails as itself: it is fetched here)
                size = await self._one(job, owner, batch, index, connections)
                big = big or size >= AT_ONCE_MIN_BYTES
                index += 1
            service.job_transferred(job)
        except BitsError as e:
            stopped = await _settled(batch)
            service.job_failed(job, e, index if at_once is None else at_once.failed_index)
            if stopped:  # (its stopper goes on from the error, as from any state)
                raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            await _settled(batch)
            raise
        except Exception as e:  # a bug in one transfer never takes the daemon down
            log.exception("job %s failed unexpectedly", job.job_id)
            service.job_failed(
                job,
                InternalError(f"internal error: {e!r}"),
                index if at_once is None else at_once.failed_index,
            )
        finally:
            batch.close()
            self.downloader.job_ended(job.job_id)

    async def _one(self, job: Job, owner: Owner, batch: SyncBatch, index: int, connections: int) -> int:
        """The job's file ``index`` on this loop, the next files' requests sent ahead; its
        size.  Committed at once when it is durable, else into the batch."""
        file = job.files[index]
        await batch.prepare(file.directory)
        upcoming = job.files[index + 1 : index + 1 + PIPELINE_LOOKAHEAD]
        fetched = await self._fetch(job, owner, index, upcoming, connections=connections)
        if fetched.durable:
            await batch.flush()
            self.service.file_done(job, file, fetched.size)
        else:
            batch.add(file, fetched.size)
            if batch.full():
                await batch.flush(wait=False)  # downloads go on while it syncs
            else:
                batch.poll()
        return fetched.size

    def _offload(self, job: Job, owner: Owner) -> _Offload | None:
        """The fetch worker for this job's small files, if it may have them: a worker is
        configured and usable, the owner's files are written in this process, and enough
        files are left (counted once, here)."""
        worker = self.fetch_worker
        if worker is None or not worker.usable():
            return None
        if not self.downloader.transport.owners.acts_in_process(job.owner_uid):
            return None
        left = [f for f in job.files if not f.completed]
        if len(left) < OFFLOAD_MIN_FILES:
            return None
        remote = _Offload(self, job, owner)
        # (a job it could never take, credentials say, keeps its one pipelined connection)
        return remote if remote.eligible(left[:1], extending=False) else None

    async def _fetch(
        self, job: Job, owner: Owner, index: int, upcoming: Sequence[JobFile] = (), *, connections: int = 1
    ) -> Fetched:
        """Download the job's file ``index`` (``upcoming``: the files whose requests may be
        sent ahead on its connection) on up to ``connections`` connections at once (a big
        file in segments: ``transfer/segments.py``)."""
        file = job.files[index]
        if file.temp_name is None:  # a file added before names were derived
            file.temp_name = temp_name_for(job.job_id, index)
        return await self.downloader.download(
            file,
            owner,
            _FileProgress(self.service, job, file),
            lambda: int(job.priority),  # (as it is at each read: SetPriority may change it mid-file)
            RequestOptions.of(job),
            defer_sync=True,
            upcoming=upcoming,
            connections=connections,
        )


async def _settled(batch: SyncBatch) -> bool:
    """``batch.settle()`` to its end, whatever cancellations come meanwhile (a Complete that
    stops a job being pre-empted must not cut its files' sync short: Complete would drop
    them); whether one came.  It never raises: it runs in the job task's error and cancel
    paths, where an exception would skip the job's own failure and end the scheduler's
    TaskGroup; a settle that fails (a bug) is logged, and the files it did not commit are
    fetched again."""
    settling = asyncio.ensure_future(batch.settle())
    cancelled = await waited_through(settling) is not None
    if not settling.cancelled() and (error := settling.exception()) is not None:
        log.error("finished files not settled; those not committed are fetched again", exc_info=error)
    return cancelled


def _left(files: Sequence[JobFile], first: int) -> int:
    """The files from ``first`` on that are not transferred yet."""
    return sum(1 for f in files[first:] if not f.completed)
