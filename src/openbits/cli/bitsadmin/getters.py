"""The /GET* switches: a property of the job's instance, bare under /RAWRETURN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openbits.cli.bitsadmin.context import Ctx, Handler, SwitchTable, _Failed
from openbits.cli.bitsadmin.formatting import (
    _TYPE_NAMES,
    _enum_name,
    _notify_cmdline,
    _quoted,
    _state,
    bitsadmin_time,
)
from openbits.cli.bitsadmin.parsing import _STORE_LOCATIONS, _nargs
from openbits.cli.bitsadmin.verbs import _job
from openbits.errors import BitsError, HResult
from openbits.model import BG_SIZE_UNKNOWN, JobPriority, JobType, ProxyUsage

SWITCHES = SwitchTable()
switch = SWITCHES.switch


def _getter(what: str, render: Callable[[dict[str, Any]], str], files: bool = False) -> Handler:
    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 1)
        ctx.out.value(render(_job(ctx, args[0], what, files)))
        return 0

    return run


def _custom_headers(job: dict[str, Any]) -> str:
    if "CustomHeaders" not in job:  # MakeCustomHeadersWriteOnly: sent, never shown
        return "(write-only)"
    headers = job.get("CustomHeaders")
    if not headers:
        return "NULL"
    return "\n".join(line for line in str(headers).split("\r\n") if line)


def _notify_cmdline_text(job: dict[str, Any]) -> str:
    cmdline = _notify_cmdline(job)
    program, params = (None, None) if cmdline is None else cmdline
    return f"the notification command line is {_quoted(program)} {_quoted(params)}"


_GETTERS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "/GETDISPLAYNAME": ("job displayname", lambda j: str(j["DisplayName"])),
    "/GETDESCRIPTION": ("job description", lambda j: str(j["Description"])),
    "/GETPRIORITY": ("job priority", lambda j: _enum_name(JobPriority, j["Priority"])),
    "/GETSTATE": ("job state", lambda j: _state(j["State"])),
    "/GETTYPE": ("job type", lambda j: _TYPE_NAMES.get(int(j.get("JobType", 0)), "UNKNOWN")),
    "/GETBYTESTOTAL": ("total bytes in job", lambda j: str(j["BytesTotal"])),
    "/GETBYTESTRANSFERRED": ("bytes transferred in job", lambda j: str(j["BytesTransferred"])),
    "/GETFILESTOTAL": ("number of files in job", lambda j: str(j["FilesTotal"])),
    "/GETFILESTRANSFERRED": ("number of transferred files in job", lambda j: str(j["FilesTransferred"])),
    "/GETCREATIONTIME": ("job creation time", lambda j: bitsadmin_time(j["JobCreationTime"])),
    "/GETMODIFICATIONTIME": ("job modification time", lambda j: bitsadmin_time(j["JobLastModificationTime"])),
    # bitsadmin prints WORKING while the job has not transferred yet
    "/GETCOMPLETIONTIME": (
        "job completion time",
        lambda j: bitsadmin_time(j["JobCompletionTime"], "WORKING"),
    ),
    "/GETERRORCOUNT": ("error count", lambda j: str(j["TransientErrorCount"])),
    "/GETMINRETRYDELAY": ("minimum retry delay", lambda j: str(j["MinimumRetryDelay"])),
    "/GETNOPROGRESSTIMEOUT": ("no progress timeout", lambda j: str(j["NoProgressTimeout"])),
    "/GETOWNER": ("job owner", lambda j: str(j["Owner"])),
    "/GETNOTIFYFLAGS": ("notify flags", lambda j: str(j.get("NotifyFlags", 3))),
    # no COM callback interface exists on Linux: never registered
    "/GETNOTIFYINTERFACE": ("notify interface", lambda j: "UNREGISTERED"),
    "/GETNOTIFYCMDLINE": ("notification command line", _notify_cmdline_text),
    # the daemon takes proxies from its environment, BITS' PRECONFIG, unless a job says otherwise
    "/GETPROXYUSAGE": ("proxy usage", lambda j: _enum_name(ProxyUsage, j.get("ProxyUsage", 0))),
    "/GETPROXYLIST": ("proxy list", lambda j: str(j.get("ProxyList") or "NULL")),
    "/GETPROXYBYPASSLIST": ("proxy bypass list", lambda j: str(j.get("ProxyBypassList") or "NULL")),
    "/GETCUSTOMHEADERS": ("custom headers", _custom_headers),
    "/GETSECURITYFLAGS": ("security flags", lambda j: str(j.get("SecurityFlags", 0))),
    "/GETMAXDOWNLOADTIME": ("maximum download time", lambda j: str(j.get("MaximumDownloadTime", 7_776_000))),
    # ACL propagation (SMB only) is not a feature: no flag is ever set
    "/GETACLFLAGS": ("ACL flags", lambda j: ""),
    # downloads use GET (a custom verb, SetHttpMethod, is not a feature)
    "/GETHTTPMETHOD": ("HTTP method", lambda j: str(j.get("HttpMethod") or "GET")),
    # openbits never downloads from or serves to peers
    "/GETPEERCACHINGFLAGS": ("peer caching flags", lambda j: str(j.get("PeerCachingFlags", 0))),
}
for _name, (_what, _render) in _GETTERS.items():
    SWITCHES[_name] = _getter(_what, _render)


@switch("/GETCLIENTCERTIFICATE")
def _get_client_certificate(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    job = _job(ctx, args[0], "client certificate")
    cert = job.get("ClientCertificate")
    if cert is None:
        # IBackgroundCopyJobHttpOptions::GetClientCertificate of a job without one
        raise _Failed(
            "Unable to get client certificate",
            BitsError.from_hresult(HResult.RPC_X_BAD_STUB_DATA, "the job has no client certificate"),
        )
    if isinstance(cert, dict):
        location = cert.get("CertStoreLocation", 0)
        where = _STORE_LOCATIONS[location] if isinstance(location, int) and 0 <= location < 8 else location
        ident = cert.get("SubjectName") or str(cert.get("CertHash") or "").upper()
        ctx.out.value(f"{where} {cert.get('StoreName')} {ident}")
    else:
        ctx.out.value(str(cert))
    return 0


# -- upload-reply jobs (SPEC §8): E_NOTIMPL for the other jobs, as IBackgroundCopyJob2 --------


def _reply_job(ctx: Ctx, ref: str, what: str) -> dict[str, Any]:
    job = _job(ctx, ref, what)
    if int(job.get("JobType", 0)) != JobType.UPLOAD_REPLY:
        raise _Failed(
            f"Unable to get {what}",
            BitsError.from_hresult(HResult.E_NOTIMPL, "only upload-reply jobs have a reply"),
        )
    return job


@switch("/GETREPLYFILENAME")
def _get_reply_file_name(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    ctx.out.value(str(_reply_job(ctx, args[0], "reply file name").get("ReplyFileName") or "(null)"))
    return 0


@switch("/GETREPLYPROGRESS")
def _get_reply_progress(ctx: Ctx, args: list[str]) -> int:
    """``done / total`` bytes of the reply (UNKNOWN until its size is known)."""
    _nargs(args, 1)
    progress = _reply_job(ctx, args[0], "reply progress").get("ReplyProgress") or {}
    total = progress.get("BytesTotal", BG_SIZE_UNKNOWN)
    shown = "UNKNOWN" if total == BG_SIZE_UNKNOWN else str(total)
    ctx.out.value(f"{progress.get('BytesTransferred', 0)} / {shown}")
    return 0


@switch("/GETREPLYDATA")
def _get_reply_data(ctx: Ctx, args: list[str]) -> int:
    """The reply in hexadecimal, as bitsadmin shows it: its length, then 16 bytes a line with
    their offset and their printable characters (bare hex digits under /RAWRETURN)."""
    _nargs(args, 1)
    data = ctx.call("Unable to get reply data", lambda: ctx.client.get_reply_data(args[0]))
    if ctx.out.raw:
        ctx.out.value(data.hex().upper())
        return 0
    ctx.out.line(f"Reply data length: {len(data)}")
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        ctx.out.line(f"{offset:08X}  {chunk.hex(' ').upper():<47}  {text}", default_wrap=False)
    return 0
