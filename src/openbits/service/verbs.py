"""The verbs of the BITS object model: CreateJob, AddFile*, SetJobState, GetError, PATCH,
find and enumerate, and the service policy (BitsServicePolicy)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from openbits import states
from openbits.caller import Caller, primary_gid
from openbits.errors import (
    CONTEXT_DESCRIPTIONS,
    AccessDenied,
    BitsError,
    ErrorInformationUnavailable,
    HResult,
    InvalidArgument,
    InvalidState,
    NotFound,
    NotImplementedValue,
    ReadOnlyProperty,
    StringTooLong,
    TooManyFilesInJob,
    TooManyJobsPerMachine,
    TooManyJobsPerUser,
    hresult_message,
    hresult_name,
)
from openbits.model import (
    ALL_PROPERTIES,
    BG_LENGTH_TO_EOF,
    DESCRIPTION_MAX,
    DISPLAY_NAME_MAX,
    LOCAL_FILE_MAX,
    MAX_CONNECTIONS_RANGE,
    MINIMUM_RETRY_DELAY_FLOOR_S,
    REMOTE_URL_MAX,
    WRITABLE_PROPERTIES,
    Job,
    JobFile,
    JobPriority,
    JobState,
    JobType,
    SetJobStateCode,
    canonical_job_id,
    new_job_id,
)
from openbits.redaction import redact_url
from openbits.service.changes import arm_notification
from openbits.service.params import (
    DIGEST_MAX,
    Params,
    enum_value,
    file_entry,
    file_pair,
    validate_digest,
    validate_local_file,
    validate_proxy_environment,
    validate_ranges,
    validate_remote_url,
)
from openbits.service.publish import publish_files
from openbits.service.uploads import Uploads, default_reply_file_name
from openbits.transfer import files as fs
from openbits.transfer.owner import user_exists

log = logging.getLogger("openbits.service")


class Verbs(Uploads):
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
        return _owners_named([job])[0]

    def enumerate(self, caller: Caller, *, all_users: bool = False) -> list[Job]:
        if all_users and not caller.is_admin:
            raise AccessDenied("only administrators may list all users' jobs")
        return _owners_named([j for j in self.jobs.values() if all_users or j.owner_uid == caller.uid])

    def finished_counts(self, owner_uid: int | None = None) -> dict[tuple[JobState, JobPriority], int]:
        """The finished jobs kept, by state and priority (of one owner, or all)."""
        return {
            (JobState(s), JobPriority(p)): n for (s, p), n in self.store.count_finished(owner_uid).items()
        }

    # -- CreateJob and AddFile* ------------------------------------------------------------

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
                "ProxyEnvironment",
                "Digest",
            ),
        )
        display_name = p.string("DisplayName", DISPLAY_NAME_MAX, default="") or ""
        description = p.string("Description", DESCRIPTION_MAX, default="") or ""
        job_type = enum_value(JobType, "job type", p.uint("Type", default=0) or 0)
        service_account = p.uint("ServiceAccount", default=2)
        if service_account not in (0, 1, 2):
            raise NotImplementedValue(f"{service_account} is not a valid ServiceAccount")
        priority = enum_value(JobPriority, "priority", p.uint("Priority", default=2) or 0)
        suspend = p.boolean("Suspend", default=False)
        remote = p.string("RemoteUrl", REMOTE_URL_MAX)
        local = p.string("LocalFile", LOCAL_FILE_MAX)
        if (remote is None) != (local is None):
            raise InvalidArgument("RemoteUrl and LocalFile must be given together")
        digest = validate_digest(p.string("Digest", DIGEST_MAX))
        if digest is not None and (remote is None or job_type is not JobType.DOWNLOAD):
            raise InvalidArgument("Digest is for a download job's file: give RemoteUrl and LocalFile")
        # PRECONFIG's first choice: the caller's proxy variables (SPEC §7), sealed at rest
        proxy_environment = validate_proxy_environment(p.value("ProxyEnvironment"))
        self._check_job_limits(caller)
        self._check_room()
        uploading = job_type is not JobType.DOWNLOAD
        destinations = [local] if local and not uploading else []
        checked = await self._destinations_checked(caller.uid, caller.gid, destinations)
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
            proxy_environment=proxy_environment,
        )
        if remote is not None and local is not None and uploading:
            file, job.upload = await self._upload_file(job, remote, local, caller.gid)
            job.files.append(file)
            if job_type is JobType.UPLOAD_REPLY:
                job.reply_file_name = default_reply_file_name(job.job_id, file.local_file)
        elif remote is not None and local is not None:
            job.files.append(self._new_file(caller, job, remote, local, 0, set(), checked))
            job.files[0].digest = digest
        if job.files and not suspend:
            self._enter(job, states.resume(job.state, len(job.files)))
        self.store.add_job(job)
        self.jobs[job.job_id] = job
        self._index(job)
        self._announce(job, "created")
        self.runner.wake()
        return job

    def _check_job_limits(self, caller: Caller) -> None:
        if caller.is_admin:
            return
        live = self.jobs.values()
        if len(live) >= self.config.max_jobs_per_machine:
            raise TooManyJobsPerMachine(
                f"the machine already has {len(live)} jobs (limit {self.config.max_jobs_per_machine})"
            )
        mine = sum(1 for j in live if j.owner_uid == caller.uid)
        if mine >= self.config.max_jobs_per_user:
            raise TooManyJobsPerUser(
                f"{caller.user} already has {mine} jobs (limit {self.config.max_jobs_per_user})"
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
        names: fs.DirectoryNames | None = None,
    ) -> JobFile:
        """A new file for ``job`` after ``pending`` others being added with it; ``taken`` holds
        the LocalFiles of the job and of those (the new one is added to it), ``checked`` the
        destination directories already checked in this call, ``names`` which of its
        LocalFiles are directories."""
        remote = validate_remote_url(remote, self.known_origins)
        local = validate_local_file(local)
        count = len(job.files) + pending
        if count >= self.config.max_files_per_job:
            raise TooManyFilesInJob(
                f"the job already has {count} files (limit {self.config.max_files_per_job})"
            )
        if local in taken:
            raise InvalidArgument(f"the job already has a file for {local}")
        taken.add(local)
        gid = caller.gid if caller.uid == job.owner_uid else primary_gid(job.owner_uid)
        fs.check_destination(self.owners, local, job.owner_uid, gid, checked, names)
        return JobFile(remote_url=remote, local_file=local, temp_name=fs.temp_name_for(job.job_id, count))

    async def _destinations_checked(self, uid: int, gid: int | None, locals_: list[str]) -> set[str]:
        """The directories of ``locals_`` where ``uid`` may create files, checked in a thread
        when that takes his helper (a slow one then stalls no one else).  Those that fail are
        left out: ``_new_file`` checks them again, in order, and raises their error."""
        checked: set[str] = set()
        if self.owners.acts_in_process(uid):
            return checked  # (checked by _new_file, quickly)

        def check() -> None:
            names = fs.DirectoryNames(locals_)
            for local in locals_:
                with contextlib.suppress(BitsError):
                    fs.check_destination(self.owners, validate_local_file(local), uid, gid, checked, names)

        await asyncio.to_thread(check)
        return checked

    async def _add_checked(
        self,
        caller: Caller,
        job_ref: str,
        pairs: list[tuple[str, str]],
        ranges: list[tuple[int, int]] | None = None,
        digests: list[str | None] | None = None,
    ) -> Job:
        """``_add_files`` after the destinations were checked off the loop for the job's owner
        (used only if the job still has that owner: TakeOwnership may come in between).
        An upload job takes its one file (``_add_upload``)."""
        job = self.find(caller, job_ref)
        if job.job_type is not JobType.DOWNLOAD:
            if digests is not None and any(digests):
                raise InvalidArgument("Digest is for the files of download jobs")
            return await self._add_upload(caller, job, pairs)
        owner_uid = job.owner_uid
        gid = caller.gid if caller.uid == owner_uid else primary_gid(owner_uid)
        checked = await self._destinations_checked(owner_uid, gid, [local for _, local in pairs])
        return self._add_files(caller, job_ref, pairs, ranges, (owner_uid, checked), digests)

    async def add_file(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        remote, local, digest = file_entry(raw, "AddFile")
        return await self._add_checked(caller, job_ref, [(remote, local)], None, [digest])

    async def add_file_set(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """AddFileSet (COM): several files in one call, all or none, one commit."""
        files = Params(raw, ("Files",)).value("Files")
        if not isinstance(files, list) or not files:
            raise InvalidArgument(
                'AddFileSet needs "Files": a non-empty array of {RemoteUrl, LocalFile[, Digest]}'
            )
        entries = [file_entry(f, "AddFileSet") for f in files]
        return await self._add_checked(
            caller, job_ref, [(r, lf) for r, lf, _ in entries], None, [d for _, _, d in entries]
        )

    async def add_file_with_ranges(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """AddFileWithRanges: pieces of a remote file, written one after the other (bits-spec §5.4);
        download jobs only (E_NOTIMPL for uploads, as BITS)."""
        if self.find(caller, job_ref).job_type is not JobType.DOWNLOAD:
            raise NotImplementedValue("AddFileWithRanges is for download jobs (E_NOTIMPL, as BITS)")
        p = Params(raw, ("RemoteUrl", "LocalFile", "Ranges", "Digest"))
        remote, local = file_pair(
            {"RemoteUrl": p.value("RemoteUrl"), "LocalFile": p.value("LocalFile")}, "AddFileWithRanges"
        )
        digest = validate_digest(p.string("Digest", DIGEST_MAX))
        ranges = validate_ranges(p.value("Ranges"), self.config.max_ranges_per_file)
        if fs.local_source_path(remote) is not None:
            raise InvalidArgument("ranges need an HTTP or HTTPS source")
        return await self._add_checked(caller, job_ref, [(remote, local)], ranges, [digest])

    def _add_files(
        self,
        caller: Caller,
        job_ref: str,
        pairs: list[tuple[str, str]],
        ranges: list[tuple[int, int]] | None = None,
        prechecked: tuple[int, set[str]] | None = None,
        digests: list[str | None] | None = None,
    ) -> Job:
        job = self.find(caller, job_ref)
        new_state = states.add_file(job.state)
        self._check_room()
        added: list[JobFile] = []
        taken = {f.local_file for f in job.files}
        checked = prechecked[1] if prechecked is not None and prechecked[0] == job.owner_uid else set()
        names = fs.DirectoryNames(local for _, local in pairs)
        for remote, local in pairs:
            added.append(self._new_file(caller, job, remote, local, len(added), taken, checked, names))
        for f, digest in zip(added, digests or (), strict=False):
            f.digest = digest
        if ranges is not None:
            added[0].ranges = ranges
            if all(n != BG_LENGTH_TO_EOF for _, n in ranges):
                added[0].bytes_total = sum(n for _, n in ranges)
        with self._change(job, "files added", added=added):
            job.files.extend(added)
            self._enter(job, new_state)
        return job

    # -- SetJobState ---------------------------------------------------------------------------

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
        with self._change(job, "resumed"):
            self._enter(job, new_state)
            job.error = None
            job.retry_at_ns = 0
            job.no_progress_since_ns = 0
            job.download_time_ns = 0  # MaximumDownloadTime counts from the last Resume
            job.errors_in_a_row = 0
        return 0

    async def suspend(self, job: Job) -> int:
        new_state = states.suspend(job.state)
        if new_state is job.state:
            return 0
        with self._change(job, "suspended"):
            self._enter(job, new_state)
        await self.runner.stop(job.job_id)
        return 0

    async def cancel(self, job: Job) -> int:
        with self._change(job, "cancelled"):
            self._enter(job, states.cancel(job.state))
            job.finished_ns = self.clock.now_ns()
        await self.runner.stop(job.job_id)
        paths = [f.temp_path for f in job.files if not f.published]
        if job.job_type is not JobType.DOWNLOAD:
            paths = self._cancel_upload(job)
        ok = await self._remove_all(job, paths)
        return 0 if ok else int(HResult.BG_S_UNABLE_TO_DELETE_FILES)

    async def complete(self, job: Job) -> int:
        new_state = states.complete(job.state, job.job_type)
        if job.job_id in self.completing:
            raise InvalidState(f"the job {job.job_id} is being completed already")
        self.completing.add(job.job_id)  # (no transfer of it restarts while this awaits)
        try:
            return await self._complete(job, new_state)
        finally:
            self.completing.discard(job.job_id)
            self.runner.wake()

    async def _complete(self, job: Job, new_state: JobState) -> int:
        await self.runner.stop(job.job_id)
        if job.state.is_final:  # cancelled while we waited
            raise NotFound(f"the job {job.job_id} is {job.state.name}")
        self.job_preempted(job)  # (stopped: back in the queue rather than look running)
        await self.store.durable()  # (TRANSFERRED survives power loss before a file is renamed)
        if job.state.is_final:
            raise NotFound(f"the job {job.job_id} is {job.state.name}")
        try:
            if job.job_type is JobType.DOWNLOAD:
                dropped, directories = await publish_files(self.owners, job, self.published_mode)
                await self._fsync_dirs(job, directories)
            else:  # (an upload is on the server once TRANSFERRED: only a reply to publish)
                self._publish_reply(job)
                dropped = []
        except BitsError:
            # Renamed files stay published (a fact, recorded if the store can); the job keeps
            # its state (bits-spec §3.2) and the caller hears of the failed rename.
            self._save(job, job.files)
            self._announce(job, "complete failed")
            self.runner.wake()
            raise
        if job.state.is_final:  # (cancelled while the files were renamed or synced: published stay)
            raise NotFound(f"the job {job.job_id} is {job.state.name}")
        with self._change(job, "acknowledged"):
            self._enter(job, new_state)
            job.finished_ns = self.clock.now_ns()
            # (the file rows are not rewritten: in an ACKNOWLEDGED job every completed file
            # is published and every other one dropped, whatever their ``published`` says)
        await self._remove_all(job, dropped)  # (a crash before this: recover() removes them)
        return int(HResult.BG_S_PARTIAL_COMPLETE) if dropped else 0

    async def _fsync_dirs(self, job: Job, directories: set[str]) -> None:
        """The renames made durable before Complete answers: one fsync per directory, in a
        worker thread (an fsync on the loop would hold up every other caller)."""

        def sync() -> None:
            for directory in sorted(directories):
                fs.fsync_dir(self.owners, job.owner_uid, None, directory)

        if directories:
            await asyncio.to_thread(sync)

    async def inactive(self, job: Job) -> None:
        """(The scheduler's report) No activity for the job inactivity timeout: BITS cancels
        the job and its files."""
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

    # -- GetError, PATCH and the setters ---------------------------------------------------------

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
        if "MaxConnections" in p:
            connections = p.uint("MaxConnections")
            if connections not in MAX_CONNECTIONS_RANGE:
                first, last = MAX_CONNECTIONS_RANGE[0], MAX_CONNECTIONS_RANGE[-1]
                raise InvalidArgument(f"MaxConnections must be {first} to {last}")
            changes["max_connections"] = connections
        if not changes:
            return job
        with self._change(job, "properties changed"):
            if "minimum_retry_delay_s" in changes and job.state is JobState.TRANSIENT_ERROR:
                # SPEC §6: changing the delay reschedules the pending retry.
                failed_at = job.retry_at_ns - job.minimum_retry_delay_s * 10**9
                job.retry_at_ns = failed_at + changes["minimum_retry_delay_s"] * 10**9
            for attr, value in changes.items():
                setattr(job, attr, value)
        return job

    def _set_property(self, caller: Caller, job_ref: str, attr: str, value: Any) -> dict[str, Any]:
        """An extension setter: legal while the job is not finished; committed at once."""
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        with self._change(job, f"{attr} changed"):
            setattr(job, attr, value)
        return {"ReturnValue": 0}

    def _set_notify(self, caller: Caller, job_ref: str, **changes: Any) -> dict[str, Any]:
        """Change what notifies the job's owner; set while the job is TRANSFERRED or in
        ERROR, it runs at once (as BITS runs a command line set after the event)."""
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        with self._change(job, "notification changed"):
            for attr, value in changes.items():
                setattr(job, attr, value)
            arm_notification(job, self.clock.now_ns())
        return {"ReturnValue": 0}

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
            url = validate_remote_url(url, self.known_origins)
            if (fs.local_source_path(url) is None) != (fs.local_source_path(file.remote_url) is None):
                raise InvalidArgument(f"{url} is not the same kind of source as {file.remote_url}")
            checked.append((file, url))
        if not checked:
            return
        await self.runner.stop(job.job_id)
        self.job_preempted(job)  # (stopped: back in the queue rather than look running)
        with self._change(job, "remote names changed", [f for f, _ in checked]):
            for file, url in checked:
                file.remote_url = url

    # -- the service policy (BitsServicePolicy) --------------------------------------------

    def get_policy(self) -> dict[str, Any]:
        return self.policy.to_cim(datetime.fromtimestamp(self.clock.now_ns() / 1e9))

    def set_policy(self, caller: Caller, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Change bandwidth and scheduling settings at run time (administrators only)."""
        if not caller.is_admin:
            raise AccessDenied("only administrators may change the service policy")
        if not isinstance(raw, Mapping):
            raise InvalidArgument("the request body must be a JSON object")
        policy, persisted = self.policy.with_changes(raw)
        if persisted:
            self.store.save_settings(persisted)
            self.policy = policy
            log.info("service policy changed by %s: %s", caller.user, ", ".join(sorted(persisted)))
            self.runner.wake()
        return self.get_policy()


def _owners_named(jobs: list[Job]) -> list[Job]:
    """``jobs``, each whose owner no longer exists showing the owner's numeric uid (SPEC §7
    Users: enumeration goes on, ``Owner`` is the uid); one look-up per distinct owner."""
    gone: dict[int, bool] = {}
    for job in jobs:
        uid = job.owner_uid
        if uid not in gone:
            gone[uid] = not user_exists(uid)
        if gone[uid]:
            job.owner = str(uid)
    return jobs
