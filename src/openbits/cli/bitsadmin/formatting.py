"""bitsadmin's wording of jobs, files, times and errors (/LIST, /INFO, /INFO /VERBOSE)."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

from openbits.cli.bitsadmin.context import Ctx
from openbits.errors import BitsError
from openbits.model import BG_SIZE_UNKNOWN, JobPriority, JobState, ProxyUsage, unix_ns_from_filetime

if TYPE_CHECKING:
    from openbits.jobs import JobErrorInfo

_TYPE_NAMES = {0: "DOWNLOAD", 1: "UPLOAD", 2: "UPLOAD-REPLY"}


def bitsadmin_time(filetime: int, unset: str = "UNKNOWN") -> str:
    """A FILETIME as bitsadmin prints it, in local time: ``12/2/2026 3:04:05 AM``."""
    if not filetime:
        return unset
    moment = datetime.fromtimestamp(unix_ns_from_filetime(filetime) / 1e9)
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02}:{moment.second:02} {half}"


def _state(value: int) -> str:
    return JobState(value).bitsadmin_name


def _total(value: int) -> str:
    return "UNKNOWN" if value == BG_SIZE_UNKNOWN else str(value)


def _enum_name(enum: Any, value: Any, default: str = "UNKNOWN") -> str:
    try:
        return str(enum(int(value)).name)
    except (TypeError, ValueError):
        return default


def _summary(job: dict[str, Any]) -> str:
    """The one-line form of /LIST, /INFO and /MONITOR."""
    return (
        f"{job['JobId']} '{job['DisplayName']}' {_state(job['State'])} "
        f"{job['FilesTransferred']} / {job['FilesTotal']} "
        f"{job['BytesTransferred']} / {_total(job['BytesTotal'])}"
    )


def _file_line(f: dict[str, Any]) -> str:
    done = "COMPLETED" if f.get("Completed") else "WORKING"
    return f"{f['BytesTransferred']} / {_total(f['BytesTotal'])} {done} {f['RemoteUrl']} -> {f['LocalFile']}"


def _notify_cmdline(job: dict[str, Any]) -> tuple[str | None, str | None] | None:
    """(program, parameters) of the NotifyCmdLine extension, None when unset or absent."""
    value = job.get("NotifyCmdLine")
    if value is None:
        return None
    if isinstance(value, dict):
        keys = {str(k).lower(): v for k, v in value.items()}
        program, params = keys.get("program"), keys.get("parameters")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        program, params = value
    else:
        program, params = value, None
    if program is None and params is None:
        return None
    return (None if program is None else str(program), None if params is None else str(params))


def _quoted(value: str | None) -> str:
    return "NULL" if value is None else f"'{value}'"


def _error_block(err: JobErrorInfo) -> list[str]:
    """The error lines of /GETERROR and /INFO /VERBOSE."""
    lines = []
    if err.remote_url is not None or err.local_file is not None:
        lines.append(f"ERROR FILE:    {err.remote_url} -> {err.local_file}")
    lines.append(f"ERROR CODE:    0x{err.hresult:08x} - {err.error_description}")
    lines.append(f"ERROR CONTEXT: 0x{err.context:08x} - {err.context_description}")
    return lines


def _verbose(ctx: Ctx, job: dict[str, Any]) -> list[str]:
    """/INFO /VERBOSE, in the order of the documented sample output."""
    cmdline = _notify_cmdline(job)
    if cmdline is None:
        notify = "none"
    else:
        program, params = cmdline
        notify = _quoted(program) + ("" if params is None else f" {_quoted(params)}")
    description = job.get("Description") or ""
    lines = [
        f"GUID: {job['JobId']} DISPLAY: '{job['DisplayName']}'",
        f"TYPE: {_TYPE_NAMES.get(int(job.get('JobType', 0)), 'UNKNOWN')} STATE: {_state(job['State'])} "
        f"OWNER: {job['Owner']}",
        f"PRIORITY: {_enum_name(JobPriority, job['Priority'])} "
        f"FILES: {job['FilesTransferred']} / {job['FilesTotal']} "
        f"BYTES: {job['BytesTransferred']} / {_total(job['BytesTotal'])}",
        f"CREATION TIME: {bitsadmin_time(job['JobCreationTime'])} "
        f"MODIFICATION TIME: {bitsadmin_time(job['JobLastModificationTime'])}",
        f"COMPLETION TIME: {bitsadmin_time(job['JobCompletionTime'])}",
        f"NOTIFY INTERFACE: UNREGISTERED NOTIFICATION FLAGS: {job.get('NotifyFlags', 3)}",
        f"RETRY DELAY: {job['MinimumRetryDelay']} NO PROGRESS TIMEOUT: {job['NoProgressTimeout']} "
        f"ERROR COUNT: {job['TransientErrorCount']}",
        f"PROXY USAGE: {_enum_name(ProxyUsage, job.get('ProxyUsage', 0))} "
        f"PROXY LIST: {job.get('ProxyList') or 'NULL'} "
        f"PROXY BYPASS LIST: {job.get('ProxyBypassList') or 'NULL'}",
    ]
    if JobState(job["State"]) in (JobState.ERROR, JobState.TRANSIENT_ERROR):
        with contextlib.suppress(BitsError):  # the error went away meanwhile (resumed)
            lines += _error_block(ctx.client.get_error(job["JobId"]))
    lines.append("DESCRIPTION:" + (f" {description}" if description else ""))
    lines.append("JOB FILES:")
    lines += ["\t" + _file_line(f) for f in job.get("Files", [])]
    lines.append(f"NOTIFICATION COMMAND LINE: {notify}")
    return lines
