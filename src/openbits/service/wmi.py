"""``Service``: the verbs, the scheduler's reports, and the instance methods of
BitsClientJob by their WMI names (``invoke``; the table of them is ``methods.py``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from openbits import states
from openbits.caller import Caller, primary_gid
from openbits.errors import (
    AccessDenied,
    BitsError,
    FileNotInJob,
    InvalidArgument,
    InvalidState,
    NotImplementedValue,
)
from openbits.model import (
    CUSTOM_HEADERS_MAX,
    DEFAULT_MAXIMUM_DOWNLOAD_TIME_S,
    LOCAL_FILE_MAX,
    REMOTE_URL_MAX,
    CertStoreLocation,
    ClientCertificate,
    Job,
    JobFile,
    JobState,
    JobType,
    NotifyFlags,
)
from openbits.service.changes import arm_notification
from openbits.service.methods import method
from openbits.service.params import (
    NOTIFY_FLAGS_ALL,
    NOTIFY_PARAMETERS_MAX,
    NOTIFY_PROGRAM_MAX,
    Params,
    auth_target_scheme,
    check_custom_headers,
    check_notify_url,
    check_security_flags,
    enum_value,
    validate_credential,
    validate_notify_cmd_line,
    validate_proxy_settings,
)
from openbits.service.verbs import Verbs
from openbits.transfer import certs, handover, segplan
from openbits.transfer import files as fs

log = logging.getLogger("openbits.service")

_Raw = Mapping[str, Any] | None


class Service(Verbs):
    """The one place that applies BITS semantics (see the package's docstring)."""

    async def invoke(self, caller: Caller, job_ref: str, name: str, raw: _Raw) -> dict[str, Any]:
        """An instance method by its WMI name (case-insensitive)."""
        found = method(name)
        if found is None:
            raise InvalidArgument(f"BitsClientJob has no method {name!r}")
        if not found.implemented:
            raise NotImplementedValue(f"{found.name} is not implemented yet")
        return await _HANDLERS[found.key](self, caller, job_ref, raw)

    async def _m_set_job_state(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        return {"ReturnValue": await self.set_job_state(caller, job_ref, raw)}

    async def _m_get_error(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        Params(raw, ("LanguageId",))
        return self.get_error(caller, job_ref)

    async def _m_set_maximum_download_time(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        seconds = Params(raw, ("MaximumDownloadTime",)).uint("MaximumDownloadTime")
        value = DEFAULT_MAXIMUM_DOWNLOAD_TIME_S if seconds is None else seconds  # null: the default
        return self._set_property(caller, job_ref, "maximum_download_time_s", value)

    async def _m_set_custom_headers(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        text = Params(raw, ("CustomHeaders",)).string("CustomHeaders", CUSTOM_HEADERS_MAX)
        check_custom_headers(text)
        return self._set_property(caller, job_ref, "custom_headers", text or None)

    async def _m_take_ownership(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """An administrator makes a job theirs (bits-spec §5.9): it runs with their identity
        from now on, and what was the old owner's goes with it (custom headers, the
        notification command line and webhook, credentials, the client certificate and the
        proxy environment sent with CreateJob).

        The job keeps its state and its bytes: a running transfer is stopped (it ran with
        the old owner's identity and helper) and goes back to the queue at its checkpoint,
        and the temporary files are copied into new ones of the new owner
        (``transfer.handover``; one that cannot be read as the old owner's starts again
        from byte 0), so he resumes, completes or cancels them as his own.  Refused,
        nothing changed, when he may not create files in a destination directory
        (BG_E_NEW_OWNER_NO_FILE_ACCESS)."""
        Params(raw, ())
        if not caller.is_admin:
            raise AccessDenied("only administrators may take ownership of a job")
        job = self.find(caller, job_ref)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        previous, previous_uid = job.owner, job.owner_uid
        moves: list[tuple[JobFile, handover.Move]] = []
        reply: handover.Move | None = None
        if previous_uid != caller.uid:
            moves, reply = await self._copy_files(job, caller)
        every = [m for _, m in moves] + ([reply] if reply is not None else [])
        try:
            with self._change(job, "ownership taken", [f for f, _ in moves]):
                job.owner, job.owner_uid = caller.user, caller.uid
                job.custom_headers = None
                job.notify_program = job.notify_parameters = job.notify_url = None
                job.credentials = {}
                job.client_certificate = None
                job.proxy_environment = None  # (the old owner's; PRECONFIG falls back to the daemon's)
                for file, move in moves:
                    file.temp_name = os.path.basename(move.new_path)
                    if not move.kept:
                        file.bytes_transferred, file.completed = 0, False
                        file.segments = None
                if reply is not None:
                    self._take_reply(job, reply)
                if job.state is JobState.TRANSFERRED and not all(f.completed for f in job.files):
                    self._enter(job, states.add_file(job.state))  # (a file to fetch again)
                arm_notification(job, self.clock.now_ns())
        except BitsError:  # (not stored: the job keeps the old owner's files)
            await asyncio.to_thread(handover.discard, self.owners, caller.uid, caller.gid, every)
            raise
        await asyncio.to_thread(handover.remove_old, self.owners, previous_uid, every)
        log.info("job %s: %s took ownership from %s", job.job_id, caller.user, previous)
        return {"ReturnValue": 0}

    async def _copy_files(
        self, job: Job, caller: Caller
    ) -> tuple[list[tuple[JobFile, handover.Move]], handover.Move | None]:
        """TakeOwnership's files (``handover.prepare``, in a worker thread): a download's
        temporary files, an upload-reply job's reply (``_reply_move``); the transfer stopped
        first, and no other started (``taking``) until they are copied.  Refused (the copies
        removed) if the job changed meanwhile."""
        old_uid = job.owner_uid
        if job.job_id in self.taking:
            raise InvalidState(f"the ownership of the job {job.job_id} is being taken already")
        self.taking.add(job.job_id)
        try:
            await self.runner.stop(job.job_id)
            self.job_preempted(job)
            states.check_call(states.Call.SET_PROPERTY, job.state)  # (cancelled meanwhile)
            if job.job_type is not JobType.DOWNLOAD:
                await self._check_upload_source(job, caller.uid, caller.gid)
            unpublished = [f for f in job.files if not f.published and job.job_type is JobType.DOWNLOAD]
            before = _taken_state(job, unpublished)
            moves = [
                handover.Move(
                    old_path=f.temp_path,
                    new_path=os.path.join(os.path.dirname(f.local_file), fs.fresh_temp_name()),
                    length=segplan.extent(f.segments, f.bytes_transferred),
                    needed=f.completed or f.bytes_transferred > 0,
                )
                for f in unpublished
            ]
            reply = self._reply_move(job)
            local_files = [f.local_file for f in unpublished]
            every = list(moves)
            if reply is not None and job.reply_file_name:
                local_files.append(job.reply_file_name)
                every.append(reply)
            await asyncio.to_thread(
                handover.prepare, self.owners, local_files, old_uid, caller.uid, caller.gid, every
            )
            if job.owner_uid != old_uid or job.state.is_final or _taken_state(job, unpublished) != before:
                await asyncio.to_thread(handover.discard, self.owners, caller.uid, caller.gid, every)
                states.check_call(states.Call.SET_PROPERTY, job.state)
                raise InvalidState(f"the job {job.job_id} changed while its ownership was taken; try again")
            return list(zip(unpublished, moves, strict=True)), reply
        finally:
            self.taking.discard(job.job_id)
            self.runner.wake()

    def _owned(self, caller: Caller, job_ref: str, what: str) -> Job:
        """The job of an identity method (SPEC §7): only its owner (or root) may call it,
        in any state but CANCELLED and ACKNOWLEDGED (BG_E_INVALID_STATE)."""
        job = self.find(caller, job_ref, include_finished=True)
        states.check_call(states.Call.SET_PROPERTY, job.state)
        if caller.uid not in (job.owner_uid, 0):
            raise AccessDenied(f"only the job's owner may {what}")
        return job

    async def _m_set_credentials(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{Target, Scheme, UserName, Password}``: one credential per (Target, Scheme),
        replaced when set again; the password is sealed at rest and never read back."""
        credential = validate_credential(raw)
        job = self._owned(caller, job_ref, "set its credentials")
        key = (credential.target, credential.scheme)
        with self._change(job, "credentials changed"):
            job.credentials = {**job.credentials, key: credential}  # (a new dict: _change puts back)
        return {"ReturnValue": 0}

    async def _m_remove_credentials(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{Target, Scheme}``: ReturnValue 1 (S_FALSE) when none was set."""
        key = auth_target_scheme(Params(raw, ("Target", "Scheme")))
        job = self._owned(caller, job_ref, "remove its credentials")
        if key not in job.credentials:
            return {"ReturnValue": 1}
        with self._change(job, "credentials changed"):
            job.credentials = {k: c for k, c in job.credentials.items() if k != key}
        return {"ReturnValue": 0}

    async def _m_set_proxy_settings(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{ProxyUsage, ProxyList, ProxyBypassList}``: the lists (OVERRIDE only) kept as
        given; another usage clears them.  A running transfer starts again with them."""
        usage, proxies, bypass = validate_proxy_settings(raw)
        job = self._owned(caller, job_ref, "set its proxy settings")
        if job.state in states.RUNNING_STATES and (usage, proxies, bypass) != (
            job.proxy_usage,
            job.proxy_list,
            job.proxy_bypass_list,
        ):
            # a running transfer goes on by its old route: stopped, back in the queue at its
            # checkpoint, it starts again by the new one (as SetRemoteName does)
            await self.runner.stop(job.job_id)
            self.job_preempted(job)
        with self._change(job, "proxy settings changed"):
            job.proxy_usage, job.proxy_list, job.proxy_bypass_list = usage, proxies, bypass
        return {"ReturnValue": 0}

    async def _m_make_custom_headers_write_only(
        self, caller: Caller, job_ref: str, raw: _Raw
    ) -> dict[str, Any]:
        """From now on the job's CustomHeaders are sent but never read back (BITS 10.3); it
        cannot be undone, and headers set later are write-only too."""
        Params(raw, ())
        return self._set_property(caller, job_ref, "custom_headers_write_only", True)

    async def _m_set_security_flags(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        flags = Params(raw, ("SecurityFlags",)).uint("SecurityFlags") or 0
        check_security_flags(flags)
        return self._set_property(caller, job_ref, "security_flags", flags)

    async def _m_set_remote_name(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        p = Params(raw, ("LocalFile", "RemoteUrl"))
        local = p.string("LocalFile", LOCAL_FILE_MAX)
        remote = p.string("RemoteUrl", REMOTE_URL_MAX)
        if local is None or remote is None:
            raise InvalidArgument("SetRemoteName needs LocalFile and RemoteUrl")
        job = self.find(caller, job_ref)
        await self._set_remote_urls(job, {id(_file_named(job, local)): remote})
        return {"ReturnValue": 0}

    async def _m_replace_remote_prefix(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
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

    async def _m_get_reply_data(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        Params(raw, ())
        return await self.get_reply_data(caller, job_ref)

    async def _m_get_response_headers(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        local = Params(raw, ("LocalFile",)).string("LocalFile", LOCAL_FILE_MAX)
        file = _file_named(self.find(caller, job_ref), local)
        return {"ReturnValue": 0, "ResponseHeaders": file.response_headers}

    async def _m_set_notify_flags(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        flags = Params(raw, ("NotifyFlags",)).uint("NotifyFlags")
        if flags is None:
            flags = int(NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR)  # null: the default
        if flags & ~NOTIFY_FLAGS_ALL:
            raise NotImplementedValue(f"NotifyFlags {flags:#x} has undefined bits")
        return self._set_notify(caller, job_ref, notify_flags=flags)

    async def _m_set_notify_cmd_line(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{"Program", "Parameters"}``: run ``Program`` (an absolute path, no shell, no
        variable expansion) with the command line ``Parameters`` (program first, split as
        a POSIX shell would split words) when the job is TRANSFERRED or in ERROR; both
        null removes it (bits-spec §5.8)."""
        p = Params(raw, ("Program", "Parameters"))
        program = p.string("Program", NOTIFY_PROGRAM_MAX)
        parameters = validate_notify_cmd_line(program, p.string("Parameters", NOTIFY_PARAMETERS_MAX))
        # the program runs as the job's owner: only the owner (or root) chooses it; an
        # administrator takes ownership first (BITS runs it as the user who set it)
        if program is not None and caller.uid not in (self.find(caller, job_ref).owner_uid, 0):
            raise AccessDenied("only the job's owner may set its notification command line")
        return self._set_notify(caller, job_ref, notify_program=program, notify_parameters=parameters)

    async def _m_set_notify_url(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{"NotifyUrl": "https://…"}`` (extension): POST the job as JSON to this URL
        when it is TRANSFERRED or in ERROR, as the command line runs; null removes it."""
        url = Params(raw, ("NotifyUrl",)).string("NotifyUrl", REMOTE_URL_MAX)
        check_notify_url(url)
        return self._set_notify(caller, job_ref, notify_url=url or None)

    # -- client certificates (SPEC §7; the stores and their files: transfer/certs.py) ------

    async def _m_set_client_certificate_by_id(
        self, caller: Caller, job_ref: str, raw: _Raw
    ) -> dict[str, Any]:
        """``{CertStoreLocation, StoreName, CertHash}``: the certificate whose SHA-1
        thumbprint is CertHash (20 numbers, or 40 hex digits)."""
        p = Params(raw, ("CertStoreLocation", "StoreName", "CertHash"))
        location, store = _cert_store(p)
        if "CertHash" not in p:
            raise InvalidArgument("SetClientCertificateById needs CertHash")
        cert_hash = certs.parse_cert_hash(p.value("CertHash"))
        return await self._set_client_certificate(
            caller, job_ref, location, store, lambda found: certs.by_hash(found, cert_hash)
        )

    async def _m_set_client_certificate_by_name(
        self, caller: Caller, job_ref: str, raw: _Raw
    ) -> dict[str, Any]:
        """``{CertStoreLocation, StoreName, SubjectName}``: the certificate whose common name,
        or whole subject, is SubjectName (case-insensitive)."""
        p = Params(raw, ("CertStoreLocation", "StoreName", "SubjectName"))
        location, store = _cert_store(p)
        subject = p.string("SubjectName", SUBJECT_NAME_MAX)
        if not subject:
            raise InvalidArgument("SetClientCertificateByName needs SubjectName")
        return await self._set_client_certificate(
            caller, job_ref, location, store, lambda found: certs.by_name(found, subject)
        )

    async def _m_remove_client_certificate(self, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        """``{}``: ReturnValue 1 (S_FALSE) when the job had none."""
        Params(raw, ())
        job = self._owned(caller, job_ref, "set its client certificate")
        if job.client_certificate is None:
            return {"ReturnValue": 1}
        with self._change(job, "client certificate removed"):
            job.client_certificate = None
        return {"ReturnValue": 0}

    async def _set_client_certificate(
        self,
        caller: Caller,
        job_ref: str,
        location: CertStoreLocation,
        store: str,
        choose: Callable[[list[certs.StoreCert]], certs.StoreCert],
    ) -> dict[str, Any]:
        """Find the certificate now, in the store read with the owner's rights (none →
        CRYPT_E_NOT_FOUND, no key → NTE_NO_KEY), and keep where it is and which it is:
        never the key, which is read again from the store for the handshakes."""
        job = self._owned(caller, job_ref, "set its client certificate")
        uid = job.owner_uid
        found = await certs.lookup(
            self.owners, location, store, uid, primary_gid(uid), self.config.machine_cert_dir, choose
        )
        job = self._owned(caller, job_ref, "set its client certificate")  # (it may have moved on meanwhile)
        with self._change(job, "client certificate set"):
            job.client_certificate = ClientCertificate(location, store, found.thumbprint, found.subject)
        return {"ReturnValue": 0}


#: StoreName and SubjectName limits (Windows' store names are short; a subject is a DN)
STORE_NAME_MAX = 255
SUBJECT_NAME_MAX = 1024


def _cert_store(p: Params) -> tuple[CertStoreLocation, str]:
    """CertStoreLocation (0-7; 2-4 are E_NOTIMPL at the lookup) and StoreName, both required."""
    value = p.uint("CertStoreLocation", maximum=0xFFFF)
    store = p.string("StoreName", STORE_NAME_MAX)
    if value is None or not store:
        raise InvalidArgument("a client certificate needs CertStoreLocation and StoreName")
    if "/" in store or store in (".", ".."):
        raise InvalidArgument("StoreName names a store, not a path")
    location: CertStoreLocation = enum_value(CertStoreLocation, "CertStoreLocation", value)
    return location, store


def _taken_state(job: Job, unpublished: list[JobFile]) -> tuple[object, ...]:
    """What TakeOwnership's copies depend on: the temporary files and the reply's."""
    files = [(f.temp_name, f.bytes_transferred, f.completed, f.published) for f in unpublished]
    upload = job.upload
    reply = None if upload is None else (upload.reply_done, upload.reply_temp_name, upload.closed)
    return files, reply, job.reply_file_name, job.reply_bytes_total


def _file_named(job: Job, local: str | None) -> JobFile:
    file = next((f for f in job.files if f.local_file == local), None)
    if file is None:
        raise FileNotInJob(f"the job has no file {local}")
    return file


_Handler = Callable[[Service, Caller, str, _Raw], Awaitable[dict[str, Any]]]


def _returns_ok(verb: Callable[[Service, Caller, str, _Raw], Awaitable[Job]]) -> _Handler:
    """A verb that answers the job, as a WMI method that answers ReturnValue 0."""

    async def call(service: Service, caller: Caller, job_ref: str, raw: _Raw) -> dict[str, Any]:
        await verb(service, caller, job_ref, raw)
        return {"ReturnValue": 0}

    return call


#: the built instance methods (``methods.METHODS``) by lower-case name
_HANDLERS: dict[str, _Handler] = {
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
    "setclientcertificatebyid": Service._m_set_client_certificate_by_id,
    "setclientcertificatebyname": Service._m_set_client_certificate_by_name,
    "removeclientcertificate": Service._m_remove_client_certificate,
    "setcredentials": Service._m_set_credentials,
    "removecredentials": Service._m_remove_credentials,
    "setproxysettings": Service._m_set_proxy_settings,
    "getreplydata": Service._m_get_reply_data,
    "setreplyfilename": _returns_ok(Service.set_reply_file_name),
}
