"""The one place that applies BITS semantics.

Every WMI verb is a method here: it validates the call, checks ownership, applies
the state machine (``states``), commits to the store, and wakes the scheduler.
The scheduler reports what transfers observe through the ``job_*``/``file_*``
methods, which go through the same state machine.  Everything runs on the
daemon's event loop; mutations are synchronous between awaits, so no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import os
import random
import re
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from openbits import states
from openbits.caller import Caller, primary_gid
from openbits.clock import Clock
from openbits.config import Config
from openbits.errors import (
    CONTEXT_DESCRIPTIONS,
    AccessDenied,
    BitsError,
    ErrorInformationUnavailable,
    HResult,
    InvalidArgument,
    InvalidState,
    LimitExceeded,
    NotFound,
    NotImplementedValue,
    ReadOnlyProperty,
    StringTooLong,
    hresult_message,
    hresult_name,
)
from openbits.model import (
    ALL_PROPERTIES,
    BG_LENGTH_TO_EOF,
    CUSTOM_HEADERS_MAX,
    DEFAULT_MAXIMUM_DOWNLOAD_TIME_S,
    DESCRIPTION_MAX,
    DISPLAY_NAME_MAX,
    LOCAL_FILE_MAX,
    MINIMUM_RETRY_DELAY_FLOOR_S,
    REDIRECT_POLICY_MASK,
    REMOTE_URL_MAX,
    UINT32_MAX,
    WRITABLE_PROPERTIES,
    ErrorContext,
    Job,
    JobError,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    SecurityFlags,
    SetJobStateCode,
    canonical_job_id,
    new_job_id,
    parse_custom_headers,
    redact_url,
)
from openbits.policy import ServicePolicy
from openbits.scheduler.policy import retry_delay_s
from openbits.states import Event
from openbits.store import JobStore, StoreWriteFailed
from openbits.transfer import files as fs

log = logging.getLogger("openbits.service")

_CONTROL = re.compile(r"[\x00-\x20\x7f]")

#: SetNotifyCmdLine's limits (bits-spec §4.2: MAX_PATH and 4,000 characters)
NOTIFY_PROGRAM_MAX = 260
NOTIFY_PARAMETERS_MAX = 4000
#: every defined notify flag (bits-spec §2.9); others are E_NOTIMPL
NOTIFY_FLAGS_ALL = 0x3F
#: the states whose entry runs the notification command line and webhook, by the flag
#: that asks for it (modification and file events are for callbacks and GET /events)
NOTIFY_ON = {JobState.TRANSFERRED: NotifyFlags.JOB_TRANSFERRED, JobState.ERROR: NotifyFlags.JOB_ERROR}


class Runner(Protocol):
    """What the service needs from the scheduler."""

    def wake(self) -> None: ...

    async def stop(self, job_id: str) -> None: ...


class _NullRunner:
    def wake(self) -> None:
        pass

    async def stop(self, job_id: str) -> None:
        pass


class Params:
    """Method parameters matched case-insensitively (SPEC §6), typed on the way out."""

    def __init__(self, raw: Mapping[str, Any] | None, allowed: Iterable[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidArgument("the request body must be a JSON object")
        self._names = {n.lower(): n for n in allowed}
        self._values: dict[str, Any] = {}
        for key, value in raw.items():
            name = self._names.get(str(key).lower())
            if name is None:
                raise InvalidArgument(
                    f"unknown parameter {key!r}; expected one of: {', '.join(self._names.values())}"
                )
            if name in self._values:
                raise InvalidArgument(f"{name} is given twice")
            self._values[name] = value

    def __contains__(self, name: str) -> bool:
        return self._values.get(name) is not None

    def value(self, name: str) -> Any:
        """The raw JSON value (None when absent)."""
        return self._values.get(name)

    def string(self, name: str, limit: int, *, default: str | None = None) -> str | None:
        value = self._values.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string")
        if "\x00" in value:
            raise InvalidArgument(f"{name} must not contain NUL characters")
        if len(value) > limit:
            raise StringTooLong(f"{name} is longer than {limit} characters")
        return value

    def uint(self, name: str, *, maximum: int = UINT32_MAX, default: int | None = None) -> int | None:
        value = self._values.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"{name} must be an unsigned integer")
        if value < 0 or value > maximum:
            raise InvalidArgument(f"{name} must be between 0 and {maximum}")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._values.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name} must be true or false")
        return value


def enum_value(enum: type[Any], name: str, value: int) -> Any:
    """An enum member, or E_NOTIMPL for an unknown value (SPEC §6)."""
    try:
        return enum(value)
    except ValueError:
        raise NotImplementedValue(f"{value} is not a valid {name}") from None


#: "scheme://host:port" parts of HTTP(S) URLs already found valid
_GOOD_ORIGINS: set[str] = set()


def validate_remote_url(url: str) -> str:
    """http(s)://, file:// or an absolute path (SPEC §3); E_INVALIDARG otherwise."""
    if not url:
        raise InvalidArgument("RemoteUrl must not be empty")
    if url.startswith("/"):
        return url
    if _CONTROL.search(url):
        raise InvalidArgument("RemoteUrl must not contain spaces or control characters")
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3) if scheme_end > 0 else -1
    if path_start > 0 and url[:path_start] in _GOOD_ORIGINS:
        return url  # (AddFileSet: thousands of URLs on one server)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidArgument(f"RemoteUrl is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidArgument("RemoteUrl has no host name")
        if port == 0:
            raise InvalidArgument("RemoteUrl has an invalid port")
        if path_start > 0 and len(_GOOD_ORIGINS) < 1024:
            _GOOD_ORIGINS.add(url[:path_start])
        return url
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument("file:// URLs must name a local path (file:///path)")
        if not parts.path.startswith("/"):
            raise InvalidArgument("file:// URLs must hold an absolute path")
        return url
    if not scheme:
        raise InvalidArgument("RemoteUrl must be an http://, https:// or file:// URL or an absolute path")
    raise InvalidArgument(f"the URL scheme {scheme!r} is not supported (http, https, file)")


def _file_pair(raw: Any, method: str) -> tuple[str, str]:
    p = Params(raw, ("RemoteUrl", "LocalFile"))
    remote = p.string("RemoteUrl", REMOTE_URL_MAX)
    local = p.string("LocalFile", LOCAL_FILE_MAX)
    if remote is None or local is None:
        raise InvalidArgument(f"{method} needs RemoteUrl and LocalFile")
    return remote, local


def validate_ranges(value: Any, limit: int) -> list[tuple[int, int]]:
    """[{InitialOffset, Length}, ...] -> [(offset, length)]: non-empty, at most ``limit``,
    lengths > 0 (BG_LENGTH_TO_EOF runs to the end), no two overlapping."""
    if not isinstance(value, list) or not value:
        raise InvalidArgument("Ranges must be a non-empty array of {InitialOffset, Length}")
    if len(value) > limit:
        raise LimitExceeded(
            f"{len(value)} ranges; a file may have {limit}", hresult=HResult.BG_E_TOO_MANY_RANGES_IN_FILE
        )
    ranges: list[tuple[int, int]] = []
    for item in value:
        p = Params(item, ("InitialOffset", "Length"))
        offset = p.uint("InitialOffset", maximum=BG_LENGTH_TO_EOF - 1)
        length = p.uint("Length", maximum=BG_LENGTH_TO_EOF)
        if offset is None or length is None:
            raise InvalidArgument("each range needs InitialOffset and Length")
        if length == 0:
            raise BitsError("a range of length 0", hresult=HResult.BG_E_INVALID_RANGE)
        ranges.append((offset, length))
    ordered = sorted(ranges)
    for (a, n), (b, _) in itertools.pairwise(ordered):
        if n == BG_LENGTH_TO_EOF or a + n > b:
            raise BitsError("two ranges overlap", hresult=HResult.BG_E_OVERLAPPING_RANGES)
    return ranges


def check_security_flags(flags: int) -> None:
    """Known bits only, one redirect policy; CRL checking is refused (no CRL fetching yet)."""
    known = 0
    for flag in SecurityFlags:
        known |= int(flag)
    if flags & ~known:
        raise NotImplementedValue(f"SecurityFlags 0x{flags:X} has unknown bits")
    if flags & REDIRECT_POLICY_MASK not in (0, 0x100, 0x200):
        raise NotImplementedValue(f"0x{flags & REDIRECT_POLICY_MASK:X} is not a redirect policy")
    if flags & SecurityFlags.ENABLE_CRL_CHECK:
        raise NotImplementedValue("certificate revocation (CRL) checking is not supported yet")


def validate_local_file(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"LocalFile must be an absolute path, not {path!r}")
    if len(path) > LOCAL_FILE_MAX:
        raise StringTooLong(f"LocalFile is longer than {LOCAL_FILE_MAX} characters")
    segments = path.split("/")
    if ".." in segments or "." in segments:
        raise InvalidArgument("LocalFile must not contain '.' or '..' components")
    name = segments[-1]
    if not name:
        raise InvalidArgument("LocalFile must name a file, not a directory")
    if len(name.encode()) > 255:
        raise StringTooLong("the file name in LocalFile is longer than 255 bytes")
    return os.path.normpath(path)


@dataclass(slots=True)
class Counters:
    """What the transfers did since the daemon started (``GET /metrics``)."""

    bytes_transferred: int = 0
    files_transferred: int = 0
    transient_errors: int = 0
    errors: int = 0


class Service:
    def __init__(self, store: JobStore, config: Config, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock or Clock()
        self.runner: Runner = _NullRunner()
        self.jobs: dict[str, Job] = {}
        #: the jobs the scheduler must look at on every tick (QUEUED, CONNECTING,
        #: TRANSFERRING, TRANSIENT_ERROR): a tick costs O(active), not O(all jobs)
        self.active: dict[str, Job] = {}
        #: raises ValueError for a bad bandwidth setting in the config
        self.policy = ServicePolicy.from_config(config).with_persisted(store.load_settings())
        #: observers of every committed change, ``(job, what)``: a verb's or a state
        #: change's name, or "progress" for a checkpoint (the event log: api/events.py)
        self.listeners: list[Callable[[Job, str], None]] = []
        self._waiters: dict[str, asyncio.Event] = {}  # job id -> set at its next change
        self.counters = Counters()
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
                self._persist(job)
            elif job.state is JobState.CANCELLED:
                for f in job.files:
                    if not f.published:
                        fs.remove_quietly(f.temp_path)
            elif job.state is JobState.ACKNOWLEDGED:
                for f in job.files:
                    if not f.published and not f.completed:
                        fs.remove_quietly(f.temp_path)
        self.purge_finished()

    def purge_finished(self) -> int | None:
        """Delete finished jobs past the retention period; the next purge time (ns)."""
        keep_ns = self.config.finished_retention_s * 10**9
        try:
            self.store.delete_finished(self.clock.now_ns() - keep_ns)
        except StoreWriteFailed as e:
            log.warning("cannot forget finished jobs yet: %s", e)
        oldest = self.store.oldest_finished_ns()
        return None if oldest is None else oldest + keep_ns

    # -- lookup ---------------------------------------------------------------------------

    def _visible(self, caller: Caller, job: Job) -> bool:
        return caller.is_admin or job.owner_uid == caller.uid

    def find(self, caller: Caller, ref: str, *, include_finished: bool = False) -> Job:
        """A job by JobId (any case, braces optional) or by a unique DisplayName."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a JobId or display name is required")
        job: Job | None = None
        try:
            job_id = canonical_job_id(ref)
        except ValueError:
            matches = [j for j in self.jobs.values() if j.display_name == ref and j.owner_uid == caller.uid]
            if include_finished:
                matches += self.store.finished_named(ref, caller.uid)
            if len(matches) > 1:
                raise InvalidArgument(f"{len(matches)} jobs are named {ref!r}; use the JobId") from None
            job = matches[0] if matches else None
        else:
            job = self.jobs.get(job_id)
            if job is None and include_finished:
                job = self.store.load_job(job_id)
        if job is None or not self._visible(caller, job):
            raise NotFound(f"no job {ref}")
        if job.state.is_final and not include_finished:
            raise NotFound(f"the job {job.job_id} is {job.state.name}")
        return job

    def enumerate(self, caller: Caller, *, all_users: bool = False) -> list[Job]:
        if all_users and not caller.is_admin:
            raise AccessDenied("only administrators may list all users' jobs")
        return [j for j in self.jobs.values() if all_users or j.owner_uid == caller.uid]

    def finished_counts(self, owner_uid: int | None = None) -> dict[tuple[JobState, JobPriority], int]:
        """The finished jobs kept, by state and priority (of one owner, or all)."""
        return {
            (JobState(s), JobPriority(p)): n for (s, p), n in self.store.count_finished(owner_uid).items()
        }

    # -- verbs ----------------------------------------------------------------------------

    async def create_job(self, caller: Caller, raw: Mapping[str, Any] | None) -> Job:
        p = Params(
            raw,
            (
                "DisplayName",
                "RemoteUrl",
                "LocalFile",
                "ServiceAccount",
                "Type",
                "Suspend",
                "Description",
                "Priority",
            ),
        )
        display_name = p.string("DisplayName", DISPLAY_NAME_MAX, default="") or ""
        description = p.string("Description", DESCRIPTION_MAX, default="") or ""
        job_type = enum_value(JobType, "job type", p.uint("Type", default=0) or 0)
        if job_type is not JobType.DOWNLOAD:
            raise NotImplementedValue("upload jobs are not supported yet")
        service_account = p.uint("ServiceAccount", default=2)
        if service_account not in (0, 1, 2):
            raise NotImplementedValue(f"{service_account} is not a valid ServiceAccount")
        priority = enum_value(JobPriority, "priority", p.uint("Priority", default=2) or 0)
        suspend = p.boolean("Suspend", default=False)
        remote = p.string("RemoteUrl", REMOTE_URL_MAX)
        local = p.string("LocalFile", LOCAL_FILE_MAX)
        if (remote is None) != (local is None):
            raise InvalidArgument("RemoteUrl and LocalFile must be given together")
        self._check_job_limits(caller)
        self._check_room()
        now = self.clock.now_ns()
        job = Job(
            job_id=new_job_id(),
            owner=caller.user,
            owner_uid=caller.uid,
            display_name=display_name,
            description=description,
            job_type=job_type,
            priority=priority,
            created_ns=now,
            modified_ns=now,
        )
        if remote is not None and local is not None:
            job.files.append(self._new_file(caller, job, remote, local, 0, set()))
            if not suspend:
                self._enter(job, states.resume(job.state, len(job.files)))
        try:
            self.store.add_job(job)
        except StoreWriteFailed as e:
            raise self.store_error(e) from e
        self.jobs[job.job_id] = job
        self._index(job)
        self._changed(job, "created")
        return job

    def _check_room(self) -> None:
        """New work is refused while the store's file system has less free than
        ``state_reserve_mb``: that room is kept for the progress of the jobs accepted
        already, so that none of them is stopped by a new one.  (A write that fails for
        another reason fails its own call: ``store_error``.)"""
        reserve = self.config.state_reserve_mb * 1024 * 1024
        where = self.config.state_dir
        try:
            st = os.statvfs(where)
        except OSError:
            free = reserve
        else:
            free = st.f_bavail * st.f_frsize
        if free < reserve:
            raise BitsError(
                f"the state directory {where} has {free / 2**20:.1f} MiB free, under the "
                f"{self.config.state_reserve_mb} MiB kept for the jobs already accepted "
                "(state_reserve_mb): free space there to add work; nothing accepted is lost",
                hresult=HResult.HRESULT_DISK_FULL,
            )

    def _check_job_limits(self, caller: Caller) -> None:
        if caller.is_admin:
            return
        live = self.jobs.values()
        if len(live) >= self.config.max_jobs_per_machine:
            raise LimitExceeded(
                f"the machine already has {len(live)} jobs (limit {self.config.max_jobs_per_machine})",
                hresult=HResult.BG_E_TOO_MANY_JOBS_PER_MACHINE,
            )
        mine = sum(1 for j in live if j.owner_uid == caller.uid)
        if mine >= self.config.max_jobs_per_user:
            raise LimitExceeded(
                f"{caller.user} already has {mine} jobs (limit {self.config.max_jobs_per_user})",
                hresult=HResult.BG_E_TOO_MANY_JOBS_PER_USER,
            )

    def _new_file(
        self,
        caller: Caller,
        job: Job,
        remote: str,
        local: str,
        pending: int,
        taken: set[str],
        checked: set[str] | None = None,
    ) -> JobFile:
        """A new file for ``job`` after ``pending`` others being added with it; ``taken`` holds
        the LocalFiles of the job and of those (the new one is added to it), ``checked`` the
        destination directories already checked in this call."""
        remote = validate_remote_url(remote)
        local = validate_local_file(local)
        count = len(job.files) + pending
        if count >= self.config.max_files_per_job:
            raise LimitExceeded(
                f"the job already has {count} files (limit {self.config.max_files_per_job})",
                hresult=HResult.BG_E_TOO_MANY_FILES_IN_JOB,
            )
        if local in taken:
            raise InvalidArgument(f"the job already has a file for {local}")
        taken.add(local)
        gid = caller.gid if caller.uid == job.owner_uid else primary_gid(job.owner_uid)
        fs.check_destination(local, job.owner_uid, gid, checked)
        return JobFile(remote_url=remote, local_file=local, temp_name=fs.temp_name_for(job.job_id, count))

    async def add_file(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        return self._add_files(caller, job_ref, [_file_pair(raw, "AddFile")])

    async def add_file_set(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """AddFileSet (COM): several files in one call, all or none, one commit."""
        files = Params(raw, ("Files",)).value("Files")
        if not isinstance(files, list) or not files:
            raise InvalidArgument('AddFileSet needs "Files": a non-empty array of {RemoteUrl, LocalFile}')
        return self._add_files(caller, job_ref, [_file_pair(f, "AddFileSet") for f in files])

    async def add_file_with_ranges(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """AddFileWithRanges: pieces of a remote file, written one after the other (bits-spec §5.4)."""
        p = Params(raw, ("RemoteUrl", "LocalFile", "Ranges"))
        remote, local = _file_pair(
            {"RemoteUrl": p.value("RemoteUrl"), "LocalFile": p.value("LocalFile")}, "AddFileWithRanges"
        )
        ranges = validate_ranges(p.value("Ranges"), self.config.max_ranges_per_file)
        if fs.local_source_path(remote) is not None:
            raise InvalidArgument("ranges need an HTTP or HTTPS source")
        return self._add_files(caller, job_ref, [(remote, local)], ranges)

    def _add_files(
        self,
        caller: Caller,
        job_ref: str,
        pairs: list[tuple[str, str]],
        ranges: list[tuple[int, int]] | None = None,
    ) -> Job:
        job = self.find(caller, job_ref)
        new_state = states.add_file(job.state)
        self._check_room()
        added: list[JobFile] = []
        taken = {f.local_file for f in job.files}
        checked: set[str] = set()
        for remote, local in pairs:
            added.append(self._new_file(caller, job, remote, local, len(added), taken, checked))
        if ranges is not None:
            added[0].ranges = ranges
            if all(n != BG_LENGTH_TO_EOF for _, n in ranges):
                added[0].bytes_total = sum(n for _, n in ranges)
        before = copy.copy(job)
        job.files.extend(added)
        self._enter(job, new_state)
        self._touch(job)
        try:
            self.store.add_files(job, added)
        except BaseException as e:
            del job.files[len(job.files) - len(added) :]
            self._put_back(job, before)
            if isinstance(e, StoreWriteFailed):
                raise self.store_error(e) from e
            raise
        self._changed(job, "files added")
        return job

    async def set_job_state(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> int:
        p = Params(raw, ("JobState",))
        value = p.uint("JobState", maximum=0xFFFF)
        if value is None:
            raise InvalidArgument("SetJobState needs JobState (0 cancel, 1 complete, 2 resume, 3 suspend)")
        code = enum_value(SetJobStateCode, "JobState", value)
        job = self.find(caller, job_ref)
        if code is SetJobStateCode.RESUME:
            return self.resume(job)
        if code is SetJobStateCode.SUSPEND:
            return await self.suspend(job)
        if code is SetJobStateCode.CANCEL:
            return await self.cancel(job)
        return await self.complete(job)

    def resume(self, job: Job) -> int:
        new_state = states.resume(job.state, len(job.files))
        if new_state is job.state:
            return 0
        before = copy.copy(job)
        self._enter(job, new_state)
        job.error = None
        job.retry_at_ns = 0
        job.no_progress_since_ns = 0
        job.download_time_ns = 0  # MaximumDownloadTime counts from the last Resume
        job.errors_in_a_row = 0
        self._commit(job, "resumed", before=before)
        return 0

    async def suspend(self, job: Job) -> int:
        new_state = states.suspend(job.state)
        if new_state is job.state:
            return 0
        before = copy.copy(job)
        self._enter(job, new_state)
        self._commit(job, "suspended", before=before)
        await self.runner.stop(job.job_id)
        return 0

    async def cancel(self, job: Job) -> int:
        before = copy.copy(job)
        self._enter(job, states.cancel(job.state))
        job.finished_ns = self.clock.now_ns()
        self._commit(job, "cancelled", before=before)
        await self.runner.stop(job.job_id)
        ok = True
        for f in job.files:
            if not f.published:
                ok = fs.remove_quietly(f.temp_path) and ok
        return 0 if ok else int(HResult.BG_S_UNABLE_TO_DELETE_FILES)

    async def complete(self, job: Job) -> int:
        new_state = states.complete(job.state, job.job_type)
        await self.runner.stop(job.job_id)
        if job.state.is_final:  # cancelled while we waited
            raise NotFound(f"the job {job.job_id} is {job.state.name}")
        self._requeue_stopped(job)
        dropped: list[str | None] = []  # temporary files of files not transferred: removed once stored
        directories: set[str] = set()
        try:
            for f in job.files:
                if f.published:
                    continue
                temp = f.temp_path
                if f.completed and temp is not None:
                    try:
                        fs.publish(temp, f.local_file, fs.http_date_to_unix(f.last_modified))
                        directories.add(os.path.dirname(f.local_file))
                    except BitsError:
                        if os.path.exists(temp) or not os.path.exists(f.local_file):
                            raise
                        # renamed already, by a Complete that crashed before its commit
                    f.published = True
                else:
                    dropped.append(temp)
            for directory in sorted(directories):  # the renames are durable before we answer
                with fs.translating(f"cannot sync {directory}"):
                    fs.fsync_dir(directory)
        except BitsError:
            # Renamed files stay published (a fact, recorded if the store can); the job keeps
            # its state (bits-spec §3.2) and the caller hears of the failed rename.
            self._persist(job, job.files)
            self._changed(job, "complete failed")
            raise
        before = copy.copy(job)
        self._enter(job, new_state)
        job.finished_ns = self.clock.now_ns()
        # (the file rows are not rewritten: in an ACKNOWLEDGED job every completed file is
        # published and every other one dropped, whatever their ``published`` flag says)
        self._commit(job, "acknowledged", before=before)
        for temp in dropped:  # (a crash before this: recover() removes them)
            fs.remove_quietly(temp)
        return int(HResult.BG_S_PARTIAL_COMPLETE) if dropped else 0

    def _requeue_stopped(self, job: Job) -> None:
        """A transfer a verb stopped goes back to the queue rather than look running: the
        daemon's own change, which stands even if the verb's commit is then refused."""
        if job.state in states.RUNNING_STATES:
            self._enter(job, states.next_state(job.state, Event.PREEMPTED))
            self._record(job, "preempted")

    async def _set_remote_urls(self, job: Job, changes: dict[int, str]) -> None:
        """SetRemoteName / ReplaceRemotePrefix: new URLs of the same kind (a local path stays a
        local path, HTTP(S) stays HTTP(S)), all validated before any changes; a running
        transfer stops and goes back to the queue so the new URL is used."""
        states.check_call(states.Call.SET_PROPERTY, job.state)
        if job.job_type is not JobType.DOWNLOAD:
            raise NotImplementedValue("upload jobs cannot change their remote names")
        by_id = {id(f): f for f in job.files}
        checked: list[tuple[JobFile, str]] = []
        for key, url in changes.items():
            file = by_id[key]
            if len(url) > REMOTE_URL_MAX:
                raise StringTooLong(f"the new RemoteUrl is longer than {REMOTE_URL_MAX} characters")
            url = validate_remote_url(url)
            if (fs.local_source_path(url) is None) != (fs.local_source_path(file.remote_url) is None):
                raise InvalidArgument(f"{url} is not the same kind of source as {file.remote_url}")
            checked.append((file, url))
        if not checked:
            return
        await self.runner.stop(job.job_id)
        self._requeue_stopped(job)
        before = copy.copy(job)
        old_urls = [file.remote_url for file, _ in checked]
        for file, url in checked:
            file.remote_url = url
        try:
            self._commit(job, "remote names changed", files=[f for f, _ in checked], before=before)
        except BitsError:
            for (file, _), url in zip(checked, old_urls, strict=True):
                file.remote_url = url
            raise

    def get_error(self, caller: Caller, job_ref: str) -> dict[str, Any]:
        job = self.find(caller, job_ref)
        states.check_call(states.Call.GET_ERROR, job.state)
        err = job.error
        if err is None:
            raise ErrorInformationUnavailable("the job has no error information")
        result: dict[str, Any] = {
            "ReturnValue": 0,
            "ErrorContext": int(err.context),
            "ErrorCode": err.hresult,
            "ContextDescription": CONTEXT_DESCRIPTIONS.get(err.context, ""),
            "ErrorDescription": err.message or hresult_message(err.hresult),
            "Name": hresult_name(err.hresult),
        }
        if err.file_index is not None and err.file_index < len(job.files):
            f = job.files[err.file_index]
            result["RemoteUrl"] = redact_url(f.remote_url)
            result["LocalFile"] = f.local_file
        return result

    def patch(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """Set read/write properties, all or nothing (SPEC §6)."""
        job = self.find(caller, job_ref)
        if not isinstance(raw, Mapping):
            raise InvalidArgument("the request body must be a JSON object")
        known = {n.lower(): n for n in ALL_PROPERTIES}
        writable = {n.lower(): n for n in WRITABLE_PROPERTIES}
        for key in raw:
            k = str(key).lower()
            if k not in writable:
                if k in known:
                    raise ReadOnlyProperty(f"{known[k]} is read-only")
                raise InvalidArgument(f"unknown property {key!r}")
            if raw[key] is None:
                raise InvalidArgument(f"{key} cannot be null")
        states.check_call(states.Call.SET_PROPERTY, job.state)
        p = Params(raw, WRITABLE_PROPERTIES)
        changes: dict[str, Any] = {}
        if "DisplayName" in p:
            changes["display_name"] = p.string("DisplayName", DISPLAY_NAME_MAX)
        if "Description" in p:
            changes["description"] = p.string("Description", DESCRIPTION_MAX)
        if "Priority" in p:
            changes["priority"] = enum_value(JobPriority, "priority", p.uint("Priority") or 0)
        if "MinimumRetryDelay" in p:
            delay = p.uint("MinimumRetryDelay") or 0
            changes["minimum_retry_delay_s"] = max(delay, MINIMUM_RETRY_DELAY_FLOOR_S)
        if "NoProgressTimeout" in p:
            changes["no_progress_timeout_s"] = p.uint("NoProgressTimeout")
        if not changes:
            return job
        before = copy.copy(job)
        if "minimum_retry_delay_s" in changes and job.state is JobState.TRANSIENT_ERROR:
            # SPEC §6: changing the delay reschedules the pending retry.
            failed_at = job.retry_at_ns - job.minimum_retry_delay_s * 10**9
            job.retry_at_ns = failed_at + changes["minimum_retry_delay_s"] * 10**9
        for attr, value in changes.items():
            setattr(job, attr, value)
        self._commit(job, "properties changed", before=before)
        return job

    async def invoke(
        self, caller: Caller, job_ref: str, method: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """An instance method by its WMI name (case-insensitive)."""
        handler = _METHODS.get(method.lower())
        if handler is not None:
            return await handler(self, caller, job_ref, raw)
        if method.lower() in _NOT_YET:
            raise NotImplementedValue(f"{_NOT_YET[method.lower()]} is not implemented yet")
        raise InvalidArgument(f"BitsClientJob has no method {method!r}")

    # -- the instance methods, by their WMI names ---------------------------------------------

    async def _m_set_job_state(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        return {"ReturnValue": await self.set_job_state(caller, job_ref, raw)}

    async def _m_get_error(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        Params(raw, ("LanguageId",))
        return self.get_error(caller, job_ref)

    async def _m_set_maximum_download_time(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        seconds = Params(raw, ("MaximumDownloadTime",)).uint("MaximumDownloadTime")
        value = DEFAULT_MAXIMUM_DOWNLOAD_TIME_S if seconds is None else seconds  # null: the default
        return self._set_property(caller, job_ref, "maximum_download_time_s", value)

    async def _m_set_custom_headers(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        text = Params(raw, ("CustomHeaders",)).string("CustomHeaders", CUSTOM_HEADERS_MAX)
        if text:
            try:
                parse_custom_headers(text)
            except ValueError as e:
                raise InvalidArgument(f"CustomHeaders: {e}") from None
        return self._set_property(caller, job_ref, "custom_headers", text or None)

    async def _m_take_ownership(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """An administrator makes a job theirs (bits-spec §5.9): it runs with their identity
        from now on, and what was the old owner's goes with it (custom headers, the
        notification command line and webhook; credentials and certificates once built)."""
        Params(raw, ())
        if not caller.is_admin:
            raise AccessDenied("only administrators may take ownership of a job")
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        previous, before = job.owner, copy.copy(job)
        job.owner, job.owner_uid = caller.user, caller.uid
        job.custom_headers = None
        job.notify_program = job.notify_parameters = job.notify_url = None
        _arm_notification(job, self.clock.now_ns())
        self._commit(job, "ownership taken", before=before)
        log.info("job %s: %s took ownership from %s", job.job_id, caller.user, previous)
        return {"ReturnValue": 0}

    async def _m_make_custom_headers_write_only(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """From now on the job's CustomHeaders are sent but never read back (BITS 10.3); it
        cannot be undone, and headers set later are write-only too."""
        Params(raw, ())
        return self._set_property(caller, job_ref, "custom_headers_write_only", True)

    async def _m_set_security_flags(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        flags = Params(raw, ("SecurityFlags",)).uint("SecurityFlags") or 0
        check_security_flags(flags)
        return self._set_property(caller, job_ref, "security_flags", flags)

    async def _m_set_remote_name(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        p = Params(raw, ("LocalFile", "RemoteUrl"))
        local = p.string("LocalFile", LOCAL_FILE_MAX)
        remote = p.string("RemoteUrl", REMOTE_URL_MAX)
        if local is None or remote is None:
            raise InvalidArgument("SetRemoteName needs LocalFile and RemoteUrl")
        job = self.find(caller, job_ref)
        await self._set_remote_urls(job, {id(_file_named(job, local)): remote})
        return {"ReturnValue": 0}

    async def _m_replace_remote_prefix(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        p = Params(raw, ("OldPrefix", "NewPrefix"))
        old = p.string("OldPrefix", REMOTE_URL_MAX)
        new = p.string("NewPrefix", REMOTE_URL_MAX)
        if not old or new is None:
            raise InvalidArgument("ReplaceRemotePrefix needs OldPrefix and NewPrefix")
        job = self.find(caller, job_ref)
        changes = {
            id(f): new + f.remote_url[len(old) :]
            for f in job.files
            if not f.completed and f.remote_url.lower().startswith(old.lower())
        }
        await self._set_remote_urls(job, changes)
        return {"ReturnValue": 0, "FilesChanged": len(changes)}

    async def _m_get_response_headers(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        local = Params(raw, ("LocalFile",)).string("LocalFile", LOCAL_FILE_MAX)
        file = _file_named(self.find(caller, job_ref), local)
        return {"ReturnValue": 0, "ResponseHeaders": file.response_headers}

    async def _m_set_notify_flags(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        flags = Params(raw, ("NotifyFlags",)).uint("NotifyFlags")
        if flags is None:
            flags = int(NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR)  # null: the default
        if flags & ~NOTIFY_FLAGS_ALL:
            raise NotImplementedValue(f"NotifyFlags {flags:#x} has undefined bits")
        return self._set_notify(caller, job_ref, notify_flags=flags)

    async def _m_set_notify_cmd_line(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """``{"Program", "Parameters"}``: run ``Program`` (an absolute path, no shell, no
        variable expansion) with the command line ``Parameters`` (program first, split as
        a POSIX shell would split words) when the job is TRANSFERRED or in ERROR; both
        null removes it (bits-spec §5.8)."""
        p = Params(raw, ("Program", "Parameters"))
        program = p.string("Program", NOTIFY_PROGRAM_MAX)
        parameters = p.string("Parameters", NOTIFY_PARAMETERS_MAX)
        if program is None:
            if parameters is not None:
                raise InvalidArgument("SetNotifyCmdLine: Parameters without a Program")
        else:
            if not os.path.isabs(program):
                raise InvalidArgument(f"SetNotifyCmdLine: the Program must be an absolute path: {program!r}")
            if parameters is not None:
                try:
                    words = shlex.split(parameters)
                except ValueError as e:
                    raise InvalidArgument(f"SetNotifyCmdLine: Parameters: {e}") from None
                if not words:
                    parameters = None
            # the program runs as the job's owner: only the owner (or root) chooses it; an
            # administrator takes ownership first (BITS runs it as the user who set it)
            if caller.uid not in (self.find(caller, job_ref).owner_uid, 0):
                raise AccessDenied("only the job's owner may set its notification command line")
        return self._set_notify(caller, job_ref, notify_program=program, notify_parameters=parameters)

    async def _m_set_notify_url(
        self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """``{"NotifyUrl": "https://…"}`` (extension): POST the job as JSON to this URL
        when it is TRANSFERRED or in ERROR, as the command line runs; null removes it."""
        url = Params(raw, ("NotifyUrl",)).string("NotifyUrl", REMOTE_URL_MAX)
        if url:
            try:
                parts = urlsplit(url)
                port = parts.port  # (raises for a port out of range)
            except ValueError as e:
                raise InvalidArgument(f"NotifyUrl is not a valid URL: {e}") from None
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
                raise InvalidArgument("NotifyUrl must be an http:// or https:// URL with a host")
            if _CONTROL.search(url):
                raise InvalidArgument("NotifyUrl must not contain spaces or control characters")
        return self._set_notify(caller, job_ref, notify_url=url or None)

    def _set_notify(self, caller: Caller, job_ref: str, **changes: Any) -> dict[str, Any]:
        """Change what notifies the job's owner; set while the job is TRANSFERRED or in
        ERROR, it runs at once (as BITS runs a command line set after the event)."""
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        before = copy.copy(job)
        for attr, value in changes.items():
            setattr(job, attr, value)
        _arm_notification(job, self.clock.now_ns())
        self._commit(job, "notification changed", before=before)
        return {"ReturnValue": 0}

    def notification_done(self, job: Job, due_ns: int, ok: bool) -> None:
        """The notification due at ``due_ns`` ran: done, or (it failed) due again after
        MinimumRetryDelay while the job stays where it is.  Nothing changes when the job
        moved on or was re-armed meanwhile."""
        if job.notify_due_ns != due_ns or self.jobs.get(job.job_id) is not job:
            return
        job.notify_due_ns = 0 if ok else self.clock.now_ns() + job.minimum_retry_delay_s * 10**9
        self._persist(job)  # (not a change of the job's own: its modification time stays)
        self._notify(job, "notified" if ok else "notification failed")

    def _set_property(self, caller: Caller, job_ref: str, attr: str, value: Any) -> dict[str, Any]:
        """An extension setter: legal while the job is not finished; committed at once."""
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        before = copy.copy(job)
        setattr(job, attr, value)
        self._commit(job, f"{attr} changed", before=before)
        return {"ReturnValue": 0}

    # -- the service policy (BitsServicePolicy) --------------------------------------------

    def get_policy(self) -> dict[str, Any]:
        from datetime import datetime

        return self.policy.to_cim(datetime.fromtimestamp(self.clock.now_ns() / 1e9))

    def set_policy(self, caller: Caller, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Change bandwidth and scheduling settings at run time (administrators only)."""
        if not caller.is_admin:
            raise AccessDenied("only administrators may change the service policy")
        if not isinstance(raw, Mapping):
            raise InvalidArgument("the request body must be a JSON object")
        policy, persisted = self.policy.with_changes(raw)
        if persisted:
            try:
                self.store.save_settings(persisted)
            except StoreWriteFailed as e:
                raise self.store_error(e) from e
            self.policy = policy
            log.info("service policy changed by %s: %s", caller.user, ", ".join(sorted(persisted)))
            self.runner.wake()
        return self.get_policy()

    # -- what the scheduler reports ---------------------------------------------------------

    def job_started(self, job: Job) -> None:
        self._enter(job, states.next_state(job.state, Event.START))
        self._record(job, "connecting")

    def job_connected(self, job: Job) -> None:
        if job.state is JobState.CONNECTING:
            self._enter(job, states.next_state(job.state, Event.CONNECTED))
            self._record(job, "transferring")

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
        self._persist(job, (file,))
        if progressed:
            self._notify(job, "progress")  # (events coalesce it: api/events.py)

    def file_redirected(self, job: Job, file: JobFile, url: str) -> None:
        """ALLOW_REPORT: the final URL of a redirect becomes the file's RemoteUrl."""
        if job.state.is_final:
            return
        file.remote_url = url
        self._record(job, "file redirected", files=(file,))

    def file_restarted(self, job: Job, file: JobFile) -> None:
        """The remote content changed: the file starts again from byte 0."""
        file.bytes_transferred = 0
        file.completed = False
        self._persist(job, (file,))

    def file_done(self, job: Job, file: JobFile, size: int) -> None:
        """All ``size`` bytes are durable: the last checkpoint and the completion, one commit."""
        if job.state.is_final:
            return
        self.counters.bytes_transferred += max(0, size - file.bytes_transferred)
        self.counters.files_transferred += 1
        file.bytes_transferred = size
        file.completed = True
        file.bytes_total = size
        job.no_progress_since_ns = 0
        job.errors_in_a_row = 0
        job.modified_ns = self.clock.now_ns()
        self._persist(job, (file,))
        self._notify(job, "file transferred")

    def files_done(self, job: Job, files: Iterable[tuple[JobFile, int]]) -> None:
        """Several durable files completed at once: one commit."""
        if job.state.is_final:
            return
        done = []
        counters = self.counters
        for file, size in files:
            counters.bytes_transferred += max(0, size - file.bytes_transferred)
            counters.files_transferred += 1
            file.bytes_transferred = file.bytes_total = size
            file.completed = True
            done.append(file)
        job.no_progress_since_ns = 0
        job.errors_in_a_row = 0
        job.modified_ns = self.clock.now_ns()
        self._persist(job, done)
        self._notify(job, "files transferred")

    def job_transferred(self, job: Job) -> None:
        """Every file is durable.  TRANSFERRED is shown only once the store has it (Complete
        publishes on its word): a failed commit is a transient error of the job's instead."""
        if job.state not in (*states.RUNNING_STATES, JobState.QUEUED):
            return
        before = copy.copy(job)
        self._enter(job, states.next_state(job.state, Event.ALL_FILES_DONE))
        job.transferred_ns = self.clock.now_ns()
        job.error = None
        self._commit(job, "transferred", before=before)

    def job_preempted(self, job: Job) -> None:
        if job.state in states.RUNNING_STATES:
            self._enter(job, states.next_state(job.state, Event.PREEMPTED))
            self._record(job, "preempted")

    def job_failed(self, job: Job, error: BitsError, file_index: int | None) -> None:
        if job.state not in states.RUNNING_STATES:
            return
        now = self.clock.now_ns()
        job.error = JobError(error.hresult, error.context, error.message, file_index)
        if error.transient and job.no_progress_timeout_s > 0:
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
            self._record(job, "transient error")
        else:
            self.counters.errors += 1
            self._enter(job, states.next_state(job.state, Event.FATAL_FAILURE))
            self._record(job, "error")
        log.info("job %s: %s", job.job_id, error)

    def retry_due(self, job: Job) -> None:
        if job.state is JobState.TRANSIENT_ERROR:
            self._enter(job, states.next_state(job.state, Event.RETRY_DUE))
            job.retry_at_ns = 0
            self._record(job, "retrying")

    def blocked_by_policy(self, job: Job) -> None:
        """Its bandwidth limit is 0 now (BITS group policy): TRANSIENT_ERROR with
        BG_E_BLOCKED_BY_POLICY until the limit lifts. Not a failure of the job: it neither
        counts as a transient error nor runs down NoProgressTimeout."""
        if job.state is not JobState.QUEUED and job.state not in states.RUNNING_STATES:
            return
        job.error = JobError(
            int(HResult.BG_E_BLOCKED_BY_POLICY),
            ErrorContext.GENERAL_QUEUE_MANAGER,
            "the bandwidth limit for this priority is 0 now; the job waits until it is raised",
        )
        job.retry_at_ns = 2**62  # retried when the limit lifts, not by the clock
        self._enter(job, states.next_state(job.state, Event.BLOCKED_BY_POLICY))
        self._record(job, "blocked by policy")

    def download_time_exceeded(self, job: Job) -> None:
        """MaximumDownloadTime ran out while the job was connecting or transferring."""
        if job.state in states.RUNNING_STATES:
            job.error = JobError(
                int(HResult.BG_E_MAXDOWNLOAD_TIMEOUT),
                ErrorContext.GENERAL_QUEUE_MANAGER,
                f"the job spent more than its MaximumDownloadTime ({job.maximum_download_time_s} s) "
                "transferring",
            )
            self._enter(job, states.next_state(job.state, Event.FATAL_FAILURE))
            self._record(job, "maximum download time exceeded")

    async def inactive(self, job: Job) -> None:
        """No activity for the job inactivity timeout: BITS cancels the job and its files."""
        if not job.state.is_final:
            log.info(
                "job %s: cancelled after %d s without activity",
                job.job_id,
                self.config.job_inactivity_timeout_s,
            )
            try:
                await self.cancel(job)
            except BitsError as e:  # (a full store: the next scan tries again)
                log.warning("job %s: cannot cancel it yet: %s", job.job_id, e)

    def no_progress_timeout(self, job: Job) -> None:
        if job.state is JobState.TRANSIENT_ERROR:
            self._enter(job, states.next_state(job.state, Event.NO_PROGRESS_TIMEOUT))
            self._record(job, "no progress")

    # -- plumbing ---------------------------------------------------------------------------

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
        _arm_notification(job, now)
        if job.job_id in self.jobs:
            self._index(job)

    def _index(self, job: Job) -> None:
        if job.state in states.ACTION_STATES:
            self.active[job.job_id] = job
        else:
            self.active.pop(job.job_id, None)

    def _touch(self, job: Job) -> None:
        job.modified_ns = self.clock.now_ns()

    def _commit(self, job: Job, what: str, files: Iterable[JobFile] = (), before: Job | None = None) -> None:
        """Record a change a caller asked for; it is answered only once it is stored.  When
        the store cannot take it (a full disk), the job is put back as it was ``before``
        and the caller gets the store's error: nothing is acknowledged that is not stored."""
        self._touch(job)
        try:
            self._save(job, files)
        except StoreWriteFailed as e:
            if before is not None:
                self._put_back(job, before)
            job.unsaved = True
            raise self.store_error(e) from e
        self._changed(job, what)
        if job.state.is_final:  # stored: it lives on in the store alone (``find``)
            self.jobs.pop(job.job_id, None)

    def _put_back(self, job: Job, before: Job) -> None:
        """Undo a change in memory: every field of the job as it was ``before`` (a shallow
        copy), but its files list (the verbs that change it undo that themselves)."""
        for name in _JOB_FIELDS:
            setattr(job, name, getattr(before, name))
        self._index(job)

    def _record(self, job: Job, what: str, files: Iterable[JobFile] = ()) -> None:
        """Record a change of the daemon's own (the transfer's progress): it stands even when
        the store cannot take it; the store keeps the last state it had, as after a crash,
        and the next write that succeeds catches up."""
        self._touch(job)
        self._persist(job, files)
        self._changed(job, what)

    def _persist(self, job: Job, files: Iterable[JobFile] = ()) -> bool:
        try:
            self._save(job, files)
        except StoreWriteFailed as e:
            job.unsaved = True
            if not self.store_failing:
                log.error("%s; the jobs go on, and the store catches up at its next write that succeeds", e)
            self.store_failing = True
            return False
        return True

    def _save(self, job: Job, files: Iterable[JobFile]) -> None:
        self.store.save_job(job, job.files if job.unsaved else files)
        job.unsaved = False
        if self.store_failing:
            self.store_failing = False
            log.warning("the job store records changes again")

    def store_error(self, e: StoreWriteFailed) -> BitsError:
        """What a caller is told when the store cannot record its call."""
        if e.full:
            return BitsError(
                f"{e}; free space in {self.config.state_dir} (nothing already accepted is lost)",
                hresult=HResult.HRESULT_DISK_FULL,
                transient=True,
            )
        return BitsError(str(e), hresult=HResult.E_FAIL, transient=True)

    def _changed(self, job: Job, what: str) -> None:
        self._notify(job, what)
        self.runner.wake()

    async def wait_while(self, job: Job, states: frozenset[JobState], timeout_s: float) -> None:
        """Return once ``job`` is in none of ``states``, or after ``timeout_s`` (a long poll:
        a client learns of a state change at once, without polling)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while job.state in states and job.job_id in self.jobs:  # (a finished job never changes)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            event = self._waiters.get(job.job_id)
            if event is None:
                event = self._waiters[job.job_id] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    def _notify(self, job: Job, what: str) -> None:
        event = self._waiters.pop(job.job_id, None)
        if event is not None:
            event.set()
        for listener in self.listeners:
            try:
                listener(job, what)
            except Exception:  # a listener never breaks a verb
                log.exception("listener failed")


#: a Job's fields but its files (what a failed commit puts back; the files are the verbs')
_JOB_FIELDS = tuple(f for f in Job.__slots__ if f != "files")


def _arm_notification(job: Job, now_ns: int) -> None:
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


def _file_named(job: Job, local: str | None) -> JobFile:
    file = next((f for f in job.files if f.local_file == local), None)
    if file is None:
        raise BitsError(f"the job has no file {local}", hresult=HResult.BG_E_FILE_NOT_FOUND)
    return file


_Raw = Mapping[str, Any] | None
_Method = Callable[[Service, Caller, str, _Raw], Awaitable[dict[str, Any]]]


def _returns_ok(verb: Callable[[Service, Caller, str, _Raw], Awaitable[Job]]) -> _Method:
    """A verb that answers the job, as a WMI method that answers ReturnValue 0."""

    async def call(service: Service, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        await verb(service, caller, job_ref, raw)
        return {"ReturnValue": 0}

    return call


_METHODS: dict[str, _Method] = {
    "addfile": _returns_ok(Service.add_file),
    "addfileset": _returns_ok(Service.add_file_set),
    "addfilewithranges": _returns_ok(Service.add_file_with_ranges),
    "setjobstate": Service._m_set_job_state,
    "geterror": Service._m_get_error,
    "setmaximumdownloadtime": Service._m_set_maximum_download_time,
    "setcustomheaders": Service._m_set_custom_headers,
    "setsecurityflags": Service._m_set_security_flags,
    "setremotename": Service._m_set_remote_name,
    "replaceremoteprefix": Service._m_replace_remote_prefix,
    "getresponseheaders": Service._m_get_response_headers,
    "setnotifyflags": Service._m_set_notify_flags,
    "setnotifycmdline": Service._m_set_notify_cmd_line,
    "setnotifyurl": Service._m_set_notify_url,
    "makecustomheaderswriteonly": Service._m_make_custom_headers_write_only,
    "takeownership": Service._m_take_ownership,
}

_NOT_YET = {
    m.lower(): m
    for m in (
        "SetCredentials",
        "RemoveCredentials",
        "SetClientCertificateById",
        "SetClientCertificateByName",
        "RemoveClientCertificate",
        "SetProxySettings",
        "GetReplyData",
        "SetReplyFileName",
    )
}

__all__ = ["ErrorContext", "InvalidState", "Params", "Service"]
