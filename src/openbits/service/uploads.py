"""The service side of upload and upload-reply jobs (SPEC §8, bits-spec §6): the one file of
an upload and its source read with the owner's rights, ReplyFileName, GetReplyData, and the
reply published at Complete.  The protocol itself runs in the scheduler (transfer/upload)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any

from openbits import states
from openbits.caller import Caller, primary_gid
from openbits.errors import (
    AccessDenied,
    BitsError,
    CallError,
    HResult,
    InvalidArgument,
    InvalidState,
    NoRoomForWork,
    NotImplementedValue,
    ReplyTooLarge,
    TooManyFiles,
)
from openbits.model import (
    LOCAL_FILE_MAX,
    REPLY_DATA_MAX_BYTES,
    Job,
    JobFile,
    JobState,
    JobType,
    UploadState,
)
from openbits.service.changes import reply_temp_path
from openbits.service.params import Params, validate_local_file, validate_remote_url
from openbits.service.reports import Reports
from openbits.transfer import files as fs
from openbits.transfer import handover

log = logging.getLogger("openbits.service")

#: the states GetReplyData answers in (BITS: TRANSFERRED, and after Complete)
_REPLY_READABLE = frozenset({JobState.TRANSFERRED, JobState.ACKNOWLEDGED})


def default_reply_file_name(job_id: str, source: str) -> str:
    """ReplyFileName when none was set: ``<the source's directory>/<JobId>.reply``."""
    return os.path.join(os.path.dirname(source), f"{job_id}.reply")


class Uploads(Reports):
    """The verbs' layer of what only upload and upload-reply jobs have (``Verbs`` builds on
    it and calls it from CreateJob, AddFile*, Complete and Cancel)."""

    def find(self, caller: Caller, ref: str, *, include_finished: bool = False) -> Job:
        """A job the caller may see, by JobId or DisplayName (``Verbs.find``)."""
        raise NotImplementedError

    # -- AddFile of an upload job ------------------------------------------------------------

    def _upload_pair(self, remote: str, local: str) -> tuple[str, str]:
        """An upload's RemoteUrl (HTTP or HTTPS only: E_INVALIDARG else) and its source."""
        remote = validate_remote_url(remote, self.known_origins)
        if fs.local_source_path(remote) is not None:
            raise InvalidArgument(f"an upload goes to an http:// or https:// URL, not {remote}")
        return remote, validate_local_file(local)

    async def _source_state(self, uid: int, gid: int | None, source: str) -> UploadState:
        """Open the source with the owner's rights (off the loop: it may take his helper);
        its size and mtime as AddFile found them.  A missing source answers
        HRESULT_FILE_NOT_FOUND (or PATH_NOT_FOUND), one he may not read E_ACCESSDENIED."""

        def look() -> os.stat_result:
            fd = self.owners.open_source(uid, gid, source)
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)

        try:
            st = await asyncio.to_thread(look)
        except OSError as e:
            raise _source_error(e, source) from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"the upload source {source} is not a regular file")
        return UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)

    async def _upload_file(
        self, job: Job, remote: str, local: str, gid: int | None
    ) -> tuple[JobFile, UploadState]:
        """The one file of an upload job and its UploadState (the source stat'ed now)."""
        if job.files:
            raise TooManyFiles("an upload job has exactly one file")
        remote, local = self._upload_pair(remote, local)
        upload = await self._source_state(job.owner_uid, gid, local)
        return JobFile(remote_url=remote, local_file=local, bytes_total=upload.source_size), upload

    async def _add_upload(self, caller: Caller, job: Job, pairs: list[tuple[str, str]]) -> Job:
        """AddFile / AddFileSet of an upload job: one file, all or nothing."""
        states.add_file(job.state)
        if job.files or len(pairs) != 1:
            raise TooManyFiles("an upload job has exactly one file")
        gid = caller.gid if caller.uid == job.owner_uid else primary_gid(job.owner_uid)
        owner_uid = job.owner_uid
        file, upload = await self._upload_file(job, *pairs[0], gid)
        job = self.find(caller, job.job_id)  # (it may have moved on meanwhile)
        if job.owner_uid != owner_uid:  # (the source was read as the owner before)
            raise InvalidState(f"the job {job.job_id} changed owner meanwhile; add the file again")
        new_state = states.add_file(job.state)
        if job.files:
            raise TooManyFiles("an upload job has exactly one file")
        self._check_room()
        with self._change(job, "files added", added=[file]):
            job.files.append(file)
            job.upload = upload
            if job.job_type is JobType.UPLOAD_REPLY and not job.reply_file_name:
                job.reply_file_name = default_reply_file_name(job.job_id, file.local_file)
            self._enter(job, new_state)
        return job

    def _check_room(self) -> None:
        """New work is refused while the store's file system has less free than
        ``state_reserve_mb``: that room is kept for the progress of the jobs accepted
        already, so that none of them is stopped by a new one.  (A write that fails for
        another reason fails its own call: StoreWriteFailed.)"""
        reserve = self.config.state_reserve_mb * 1024 * 1024
        where = self.config.state_dir
        try:
            st = os.statvfs(where)
        except OSError:
            free = reserve
        else:
            free = st.f_bavail * st.f_frsize
        if free < reserve:
            raise NoRoomForWork(
                f"the state directory {where} has {free / 2**20:.1f} MiB free, under the "
                f"{self.config.state_reserve_mb} MiB kept for the jobs already accepted "
                "(state_reserve_mb): free space there to add work; nothing accepted is lost"
            )

    # -- ReplyFileName and GetReplyData ------------------------------------------------------

    def _reply_job(self, caller: Caller, job_ref: str, *, include_finished: bool = False) -> Job:
        job = self.find(caller, job_ref, include_finished=include_finished)
        if job.job_type is not JobType.UPLOAD_REPLY:
            raise NotImplementedValue("only upload-reply jobs have a reply (E_NOTIMPL, as BITS)")
        return job

    async def set_reply_file_name(self, caller: Caller, job_ref: str, raw: Mapping[str, Any] | None) -> Job:
        """SetReplyFileName: an absolute path whose directory the owner may write in (checked
        as a download's destination is).  A running transfer is stopped and goes back to the
        queue (as SetRemoteName does), so its next run fetches the reply beside the new name;
        a reply fetched in part beside the old name is removed (fetched again, from 0).
        Refused (BG_E_INVALID_STATE) once the reply is whole: it is beside the old name."""
        name = Params(raw, ("ReplyFileName",)).string("ReplyFileName", LOCAL_FILE_MAX)
        if not name:
            raise InvalidArgument("SetReplyFileName needs ReplyFileName, an absolute path")
        name = validate_local_file(name)
        job = self._reply_job(caller, job_ref)
        uid = job.owner_uid
        gid = caller.gid if caller.uid == uid else primary_gid(uid)
        await asyncio.to_thread(fs.check_destination, self.owners, name, uid, gid)
        job = self._reply_job(caller, job_ref)  # (it may have moved on meanwhile)
        _check_reply_movable(job)
        if job.owner_uid != uid:  # (the directory was checked as the owner before)
            raise InvalidState(f"the job {job.job_id} changed owner meanwhile; set the name again")
        if job.state in states.RUNNING_STATES:
            await self.runner.stop(job.job_id)  # (its run holds the reply's location)
            self.job_preempted(job)  # (stopped: back in the queue rather than look running)
            _check_reply_movable(job)  # (the reply may have come in meanwhile)
        old_temp = reply_temp_path(job)
        with self._change(job, "reply file name changed"):
            job.reply_file_name = name
        if old_temp is not None and old_temp != reply_temp_path(job):
            await self._remove_all(job, [old_temp])  # (a part fetched there: not orphaned)
        return job

    async def get_reply_data(self, caller: Caller, job_ref: str) -> dict[str, Any]:
        """GetReplyData: the reply, base64, read with the owner's rights from its temporary
        file (TRANSFERRED) or ReplyFileName (after Complete).  E_NOTIMPL but for upload-reply
        jobs, BG_E_INVALID_STATE before TRANSFERRED, BG_E_TOO_LARGE above 1 MiB (its size is
        in the message); an empty reply (the server application sent none) is 0 bytes."""
        job = self._reply_job(caller, job_ref, include_finished=True)
        if job.state not in _REPLY_READABLE:
            raise InvalidState(f"the reply is there once the job is TRANSFERRED; it is {job.state.name}")
        path = reply_temp_path(job) if job.state is JobState.TRANSFERRED else job.reply_file_name
        if path is None or job.upload is None or not job.upload.reply_done:
            return {"ReturnValue": 0, "ReplyData": "", "ReplySize": 0}
        data = await asyncio.to_thread(self._read_reply, job.owner_uid, path)
        return {"ReturnValue": 0, "ReplyData": base64.b64encode(data).decode("ascii"), "ReplySize": len(data)}

    def _read_reply(self, uid: int, path: str) -> bytes:
        try:
            fd = self.owners.open_source(uid, None, path)
        except OSError as e:
            raise _source_error(e, path, "the reply") from None
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > REPLY_DATA_MAX_BYTES:
                raise ReplyTooLarge(
                    f"the reply has {size} bytes, over the {REPLY_DATA_MAX_BYTES} GetReplyData returns: "
                    f"read {path} after Complete"
                )
            data = f.read(REPLY_DATA_MAX_BYTES + 1)
        if len(data) > REPLY_DATA_MAX_BYTES:
            raise ReplyTooLarge(f"the reply has over {REPLY_DATA_MAX_BYTES} bytes")
        return data

    # -- TakeOwnership, Complete and Cancel -----------------------------------------------------

    async def _check_upload_source(self, job: Job, uid: int, gid: int | None) -> None:
        """TakeOwnership of an upload job (its transfer stopped: it ran with the old owner's
        rights): the upload goes on in its session, from the server's offset, but the new
        owner must read the source, else BG_E_NEW_OWNER_NO_FILE_ACCESS, nothing changed."""
        for f in job.files:
            try:
                await self._source_state(uid, gid, f.local_file)
            except CallError as e:
                raise AccessDenied(
                    f"the new owner cannot read the upload source: {e.message}",
                    hresult=HResult.BG_E_NEW_OWNER_NO_FILE_ACCESS,
                ) from None

    @staticmethod
    def _reply_move(job: Job) -> handover.Move | None:
        """TakeOwnership of an upload-reply job: its reply's temporary file, copied into a new
        one of the new owner (``transfer.handover``, as a download's) when the reply is whole;
        else only a new name, unforeseeable, for the next run to fetch it under (the old
        owner's part is removed).  None for other jobs (and before ReplyFileName is known)."""
        temp = reply_temp_path(job)
        if temp is None:
            return None
        done = job.upload is not None and job.upload.reply_done
        return handover.Move(
            old_path=temp,
            new_path=os.path.join(os.path.dirname(temp), fs.fresh_temp_name()),
            length=job.reply_bytes_total or 0,
            needed=done,
        )

    @staticmethod
    def _take_reply(job: Job, move: handover.Move) -> None:
        """In TakeOwnership's change: the reply's temporary file is the new owner's copy; a
        reply whose copy could not be made (the old owner's file gone or not his) is fetched
        again (lost if the session is closed already: GetReplyData then answers none)."""
        if job.upload is None:
            return
        upload = dataclasses.replace(job.upload, reply_temp_name=os.path.basename(move.new_path))
        if upload.reply_done and not move.kept:
            upload.reply_done = False
            job.reply_bytes_transferred = 0
            log.warning("job %s: the old owner's reply could not be copied; it is fetched again", job.job_id)
        job.upload = upload  # (a new object: a change put back restores the old one)

    # -- Complete and Cancel ------------------------------------------------------------------

    def _publish_reply(self, job: Job) -> None:
        """Complete of an upload-reply job: its reply's temporary file becomes ReplyFileName,
        renamed durably as the owner (an upload job has nothing to publish: its file is on
        the server).  Done again after a crash between the rename and the commit: the
        temporary file gone and ReplyFileName there count as published."""
        temp = reply_temp_path(job)
        name = job.reply_file_name
        if temp is None or name is None or job.upload is None or not job.upload.reply_done:
            return
        uid = job.owner_uid
        try:
            fs.publish(self.owners, uid, None, temp, name, None, self.published_mode)
        except BitsError:
            if fs.exists(self.owners, uid, None, temp) or not fs.exists(self.owners, uid, None, name):
                raise
        fs.fsync_dir(self.owners, uid, None, os.path.dirname(name))

    def _cancel_upload(self, job: Job) -> list[str | None]:
        """Cancel of an upload job, after its transfer stopped: Cancel-Session for an open
        session (the runner's, in a task of its own); the files to remove (the reply's)."""
        upload = job.upload
        if upload is not None and upload.session_id is not None and not upload.closed:
            self.runner.cancel_upload(job)
        return [reply_temp_path(job)]


def _check_reply_movable(job: Job) -> None:
    """SetReplyFileName is refused (BG_E_INVALID_STATE) in the states no property may
    change in, and once the reply is whole beside the old name (TRANSFERRED or not)."""
    states.check_call(states.Call.SET_PROPERTY, job.state)
    if job.state is JobState.TRANSFERRED or (job.upload is not None and job.upload.reply_done):
        raise InvalidState("the reply is already fetched beside the ReplyFileName set before")


def _source_error(e: OSError, path: str, what: str = "the upload source") -> BitsError:
    """AddFile's answer for a source the owner cannot open (bits-spec §3.3, AddFile), and
    GetReplyData's for the reply (``what`` names the file).  A directory is E_INVALIDARG, as
    every local name of a call (SPEC §7: bad input; ``files.check_destination`` too)."""
    if e.errno == errno.ENOENT:
        return CallError(f"{what} {path} does not exist", hresult=HResult.HRESULT_FILE_NOT_FOUND)
    if e.errno == errno.ENOTDIR:
        return CallError(f"{what} {path} does not exist", hresult=HResult.HRESULT_PATH_NOT_FOUND)
    if e.errno == errno.EISDIR:
        return InvalidArgument(f"{what} {path} is a directory")
    if e.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
        return AccessDenied(f"the job owner may not read {what} {path}")
    return fs.local_error(e, f"cannot open {what} {path}")
