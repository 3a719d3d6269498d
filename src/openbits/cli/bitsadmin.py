"""`bitsadmin`: Windows' bitsadmin switches that map to openbits features, same wording.

Argument order, state spellings and output lines are those of bitsadmin (bits-spec §7.1; the
sample output of Microsoft's "bitsadmin examples" page), so scripts written for it run unchanged:
``/create`` prints ``Created job {GUID}.``, ``/list`` prints ``{GUID} 'name' STATE f / F b / B``
and ``Listed N job(s).``, ``/transfer`` ends with ``Transfer complete.``, ``/rawreturn`` prints the
bare value of ``/create`` and ``/get*`` without a newline.

Exit codes: 0 success; 1 a BITS error (``Unable to … - 0x8… NAME: message`` on stderr) or bad
usage (the usage text on stderr), as bitsadmin exits 1 for both; 3 no daemon answers;
130 a ``/transfer`` interrupted with Ctrl-C (its job is cancelled); 141, quietly, when the
reader of stdout went away (``bitsadmin /list | head -1``). ``/monitor`` ends with
Ctrl-C and exits 0.

Switches whose daemon method is not built yet still parse their arguments exactly and call the
method; the daemon answers E_NOTIMPL and bitsadmin prints that error. Passwords given to
``/setcredentials`` are never printed.

Start-up stays fast: the standard library and openbits.client only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from openbits.cli import pipe
from openbits.client import Client, DaemonUnavailable
from openbits.errors import BitsError, HResult
from openbits.model import (
    BG_LENGTH_TO_EOF,
    BG_SIZE_UNKNOWN,
    JobPriority,
    JobState,
    ProxyUsage,
    unix_ns_from_filetime,
)

if TYPE_CHECKING:
    from openbits.jobs import BitsJob, JobErrorInfo

USAGE = """\
BITSADMIN version 3.0 (openbits)
USAGE: BITSADMIN [/RAWRETURN] [/WRAP | /NOWRAP] command
The following commands are available:

/HELP                                    Prints this help
/?                                       Prints this help
/LIST    [/ALLUSERS] [/VERBOSE]          List the jobs
/MONITOR [/ALLUSERS] [/REFRESH sec]      Monitors the copy manager (Ctrl-C stops it)
/RESET   [/ALLUSERS]                     Cancels all the jobs in the manager

/TRANSFER name [type] [/PRIORITY priority] [/ACLFLAGS flags] [/DYNAMIC]
          remote_url local_name [remote_url local_name ...]
    Transfers one or more files and waits: progress, then "Transfer complete."
    [type] may be /DOWNLOAD or /UPLOAD; default is download.
    Unlike most commands, name may only be a name and not a GUID.

/CREATE [type] display_name              Creates a job
    [type] may be /DOWNLOAD, /UPLOAD, or /UPLOAD-REPLY; default is download

/INFO job [/VERBOSE]                     Displays information about the job
/ADDFILE job remote_url local_name       Adds a file to the job
/ADDFILESET job textfile                 Adds the files listed in textfile to the job
    Each line of textfile lists a file's remote name and local name, separated
    by spaces. A line beginning with '#' is treated as a comment.
/ADDFILEWITHRANGES job remote_url local_name range_list
    Adds the ranges of a remote file: range_list is offset:length[,offset:length...];
    a length of eof reads to the end of the file.
/REPLACEREMOTEPREFIX job old_prefix new_prefix
                                         Changes the remote URLs that start with old_prefix
/LISTFILES job                           Lists the files in the job
/SUSPEND job                             Suspends the job
/RESUME job                              Resumes the job
/CANCEL job                              Cancels the job
/COMPLETE job                            Completes the job

/GETTYPE job                             Retrieves the job type
/GETACLFLAGS job                         Retrieves the ACL propagation flags
/SETACLFLAGS job flags                   Sets the ACL propagation flags (O, G, D, S)
/GETBYTESTOTAL job                       Retrieves the size of the job
/GETBYTESTRANSFERRED job                 Retrieves the number of bytes transferred
/GETFILESTOTAL job                       Retrieves the number of files in the job
/GETFILESTRANSFERRED job                 Retrieves the number of files transferred
/GETCREATIONTIME job                     Retrieves the job creation time
/GETMODIFICATIONTIME job                 Retrieves the job modification time
/GETCOMPLETIONTIME job                   Retrieves the job completion time
/GETSTATE job                            Retrieves the job state
/GETERROR job                            Retrieves detailed error information
/GETOWNER job                            Retrieves the job owner
/GETDISPLAYNAME job                      Retrieves the job display name
/SETDISPLAYNAME job display_name         Sets the job display name
/GETDESCRIPTION job                      Retrieves the job description
/SETDESCRIPTION job description          Sets the job description
/GETPRIORITY job                         Retrieves the job priority
/SETPRIORITY job priority                Sets the job priority
    priority may be FOREGROUND, HIGH, NORMAL or LOW
/GETNOTIFYFLAGS job                      Retrieves the notify flags
/SETNOTIFYFLAGS job notify_flags         Sets the notify flags
/GETNOTIFYINTERFACE job                  Determines if notify interface is registered
/GETMINRETRYDELAY job                    Retrieves the retry delay in seconds
/SETMINRETRYDELAY job retry_delay        Sets the retry delay in seconds
/GETNOPROGRESSTIMEOUT job                Retrieves the no progress timeout in seconds
/SETNOPROGRESSTIMEOUT job timeout        Sets the no progress timeout in seconds
/GETMAXDOWNLOADTIME job                  Retrieves the maximum download time in seconds
/SETMAXDOWNLOADTIME job timeout          Sets the maximum download time in seconds
/GETERRORCOUNT job                       Retrieves an error count for the job
/GETHTTPMETHOD job                       Retrieves the HTTP verb of the job
/GETPEERCACHINGFLAGS job                 Retrieves the peer caching flags
/GETCUSTOMHEADERS job                    Retrieves the custom HTTP headers
/SETCUSTOMHEADERS job header1 [header2 ...]
                                         Sets the custom HTTP headers (NULL removes them)
/MAKECUSTOMHEADERSWRITEONLY job          Makes the custom headers write-only (irreversible)
/GETSECURITYFLAGS job                    Retrieves the HTTP security flags
/SETSECURITYFLAGS job value              Sets the HTTP security flags

/SETPROXYSETTINGS job usage              Sets the proxy usage
   usage choices:
    PRECONFIG   - Use the owner's default settings.
    AUTODETECT  - Detect the proxy settings.
    NO_PROXY    - Do not use a proxy server.
    OVERRIDE    - Use an explicit proxy list and bypass list.
                  Must be followed by a proxy list and a proxy bypass list.
                  NULL or "" may be used for an empty proxy bypass list.
/GETPROXYUSAGE job                       Retrieves the proxy usage setting
/GETPROXYLIST job                        Retrieves the proxy list
/GETPROXYBYPASSLIST job                  Retrieves the proxy bypass list

/TAKEOWNERSHIP job                       Takes ownership of the job
/SETNOTIFYCMDLINE job program_name [program_parameters]
    Sets a program to execute for notification, and optionally parameters.
    The program name and parameters can be NULL.
/GETNOTIFYCMDLINE job                    Returns the job's notification command line
/SETCREDENTIALS job <target> <scheme> <username> <password>
    Adds credentials to a job.
    <target> may be either SERVER or PROXY
    <scheme> may be BASIC, DIGEST, NTLM, NEGOTIATE, or PASSPORT.
/REMOVECREDENTIALS job <target> <scheme>
    Removes credentials from a job.
/SETCLIENTCERTIFICATEBYID job store_location store_name hexadecimal_cert_id
/SETCLIENTCERTIFICATEBYNAME job store_location store_name subject_name
    store_location: CURRENT_USER (1), LOCAL_MACHINE (2), CURRENT_SERVICE (3), SERVICES (4),
    USERS (5), CURRENT_USER_GROUP_POLICY (6), LOCAL_MACHINE_GROUP_POLICY (7),
    LOCAL_MACHINE_ENTERPRISE (8)
/REMOVECLIENTCERTIFICATE job             Removes the client certificate of the job
/GETCLIENTCERTIFICATE job                Retrieves the client certificate of the job

The following options can be placed before the command:
/RAWRETURN                               Return data more suitable for parsing
/WRAP                                    Wrap output around console (default)
/NOWRAP                                  Don't wrap output around console

The /RAWRETURN option strips new line characters and formatting.
It is recognized by the /CREATE and /GET* commands.

Commands that take a job parameter will accept either a job name or a job-ID
GUID inside braces. BITSADMIN reports an error if a name is ambiguous.
"""

#: Hidden: ``/monitor`` stops after this many refreshes (tests; bounded runs).
MONITOR_ITERATIONS_ENV = "OPENBITS_BITSADMIN_MONITOR_ITERATIONS"

_JOB_TYPES = {"/DOWNLOAD": 0, "/UPLOAD": 1, "/UPLOAD-REPLY": 2}
_TYPE_NAMES = {0: "DOWNLOAD", 1: "UPLOAD", 2: "UPLOAD-REPLY"}
#: WMI encodings (bits-spec §1.3): Target 0 server, 1 proxy; Scheme 0 Basic … 4 Passport.
_TARGETS = {"SERVER": 0, "PROXY": 1}
_SCHEMES = {"BASIC": 0, "DIGEST": 1, "NTLM": 2, "NEGOTIATE": 3, "PASSPORT": 4}
#: bitsadmin's store locations are 1-based (WSD:bitsadmin-setclientcertificatebyid.md); the
#: WMI CertStoreLocation is BG_CERT_STORE_LOCATION, 0-based (bits-spec §2.7).
_STORE_LOCATIONS = (
    "CURRENT_USER",
    "LOCAL_MACHINE",
    "CURRENT_SERVICE",
    "SERVICES",
    "USERS",
    "CURRENT_USER_GROUP_POLICY",
    "LOCAL_MACHINE_GROUP_POLICY",
    "LOCAL_MACHINE_ENTERPRISE",
)
_ACL_LETTERS = {"O": 1, "G": 2, "D": 4, "S": 8}  # BG_COPY_FILE_OWNER, GROUP, DACL, SACL


class Usage(Exception):
    """Bad usage: the reason is printed, then the usage text; exit 1."""


class _Failed(Exception):
    """A BITS error with the bitsadmin action it interrupted ("Unable to resume job")."""

    def __init__(self, action: str, error: BitsError) -> None:
        super().__init__(action)
        self.action = action
        self.error = error


def _fit(line: str, width: int | None, wrap: bool) -> list[str]:
    """One output line as a console of ``width`` columns shows it: wrapped onto further lines
    (``/WRAP``, the default) or cut at the edge (``/NOWRAP``); ``width`` None: unchanged."""
    if width is None or width <= 0 or len(line) <= width:
        return [line]
    if not wrap:
        return [line[:width]]
    return [line[i : i + width] for i in range(0, len(line), width)]


@dataclass
class Out:
    """bitsadmin's output: /RAWRETURN values, /WRAP and /NOWRAP on a terminal."""

    raw: bool = False
    wrap: bool | None = None  # None: bitsadmin's default (wrap, except /MONITOR)
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def _width(self) -> int | None:
        if not self.stream.isatty():
            return None  # no console: lines go out as they are
        import shutil

        return shutil.get_terminal_size().columns

    def line(self, text: str = "", default_wrap: bool = True) -> None:
        wrap = default_wrap if self.wrap is None else self.wrap
        width = self._width()
        for part in text.split("\n"):
            for piece in _fit(part, width, wrap):
                self.stream.write(piece + "\n")

    def value(self, text: str) -> None:
        """The result of /CREATE or /GET*: bare, without a newline, under /RAWRETURN."""
        if self.raw:
            self.stream.write(text)
        else:
            self.line(text)

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class Ctx:
    client: Client
    out: Out

    def call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BitsError as e:
            raise _Failed(action, e) from None


# -- formatting -----------------------------------------------------------------------------


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


# -- argument parsing ---------------------------------------------------------------------


def _nargs(args: list[str], *counts: int) -> None:
    if len(args) not in counts:
        raise Usage("Invalid number of arguments.")


def _ulong(text: str) -> int:
    """A uint32 as bitsadmin reads it: decimal, or hexadecimal with 0x."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise Usage(f"'{text}' is not a valid number.") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise Usage(f"'{text}' is out of range.")
    return value


def _priority(text: str) -> int:
    try:
        return int(JobPriority[text.upper()])
    except KeyError:
        raise Usage("Invalid priority.") from None


def _null(text: str) -> str | None:
    return None if text.upper() == "NULL" else text


def _acl_flags(text: str) -> int:
    flags = 0
    for letter in text.upper():
        if letter not in _ACL_LETTERS:
            raise Usage(f"'{text}' is not a valid ACL flag set: use the letters O, G, D and S.")
        flags |= _ACL_LETTERS[letter]
    return flags


def parse_ranges(text: str) -> list[dict[str, int]]:
    """``offset:length[,offset:length…]``, length ``eof`` = to the end of the file."""
    ranges = []
    for part in text.split(","):
        offset, sep, length = part.strip().partition(":")
        if not sep:
            raise Usage(f"'{part}' is not a range: use offset:length or offset:eof.")
        try:
            start = int(offset, 10)
            count = BG_LENGTH_TO_EOF if length.strip().lower() == "eof" else int(length, 10)
        except ValueError:
            raise Usage(f"'{part}' is not a range: use offset:length or offset:eof.") from None
        if start < 0 or count < 0:
            raise Usage(f"'{part}' is not a range: offsets and lengths are not negative.")
        ranges.append({"InitialOffset": start, "Length": count})
    return ranges


def parse_file_set(text: str) -> list[tuple[str, str]]:
    """bitsadmin's /ADDFILESET file: ``remote local`` per line, ``#`` comments, blank lines."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split()
        if len(words) != 2:
            raise Usage(f"Line {number} of the file set is not 'remote_url local_name': {stripped}")
        pairs.append((words[0], words[1]))
    return pairs


def _store_location(text: str) -> int:
    name = text.upper().removeprefix("BG_CERT_STORE_LOCATION_")
    if name in _STORE_LOCATIONS:
        return _STORE_LOCATIONS.index(name)
    if name.isascii() and name.isdigit() and 1 <= int(name) <= len(_STORE_LOCATIONS):
        return int(name) - 1
    raise Usage(f"'{text}' is not a certificate store location.")


# -- the switches -----------------------------------------------------------------------------

Handler = Callable[[Ctx, list[str]], int]
SWITCHES: dict[str, Handler] = {}


def switch(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            SWITCHES[name] = fn
        return fn

    return register


@switch("/CREATE")
def _create(ctx: Ctx, args: list[str]) -> int:
    job_type = 0
    while args and args[0].startswith("/"):
        opt = args.pop(0).upper()
        if opt not in _JOB_TYPES:
            raise Usage("Invalid argument.")
        job_type = _JOB_TYPES[opt]
    _nargs(args, 1)
    job = ctx.call("Unable to create job", lambda: ctx.client.create_job(args[0], job_type=job_type)).job_id
    if ctx.out.raw:
        ctx.out.value(job)
    else:
        ctx.out.line(f"Created job {job}.")
    return 0


@switch("/ADDFILE")
def _add_file(ctx: Ctx, args: list[str]) -> int:
    """The local name goes as given: as Windows, the daemon refuses one that is not a full
    path (E_INVALIDARG), and scripts rely on that failure (an unexpanded %temp%\\x.ps1)."""
    _nargs(args, 3)
    job, remote, local = args
    ctx.call("Unable to add file to job", lambda: ctx.client.add_file(job, remote, local))
    ctx.out.line(f"Added {remote} -> {local} to job.")
    return 0


@switch("/ADDFILESET")
def _add_file_set(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 2)
    job, path = args
    try:
        with open(path, encoding="utf-8-sig") as f:
            pairs = parse_file_set(f.read())
    except OSError as e:
        raise Usage(f"Unable to read the file set {path}: {e.strerror}.") from None
    except UnicodeDecodeError:
        raise Usage(f"The file set {path} is not UTF-8 text.") from None
    if not pairs:
        raise Usage(f"The file set {path} lists no files.")
    files = [(remote, os.path.abspath(local)) for remote, local in pairs]
    ctx.call("Unable to add file set to job", lambda: ctx.client.add_file_set(job, files))
    ctx.out.line(f"Added {len(files)} file(s) to job.")
    return 0


@switch("/ADDFILEWITHRANGES")
def _add_file_with_ranges(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 4)
    job, remote, local, range_list = args
    ranges = parse_ranges(range_list)
    ctx.call(
        "Unable to add file to job",
        lambda: ctx.client.invoke(job, "AddFileWithRanges", RemoteUrl=remote, LocalFile=local, Ranges=ranges),
    )
    ctx.out.line(f"Added {remote} -> {local} to job.")
    return 0


@switch("/REPLACEREMOTEPREFIX")
def _replace_remote_prefix(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 3)
    job, old, new = args
    result = ctx.call(
        "Unable to replace the remote prefix",
        lambda: ctx.client.invoke(job, "ReplaceRemotePrefix", OldPrefix=old, NewPrefix=new),
    )
    ctx.out.line(f"{result.get('FilesChanged', 0)} file(s) changed to {new}.")
    return 0


def _state_verb(code: int, verb: str, done: str) -> Handler:
    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 1)
        result = ctx.call(f"Unable to {verb} job", lambda: ctx.client.set_job_state(args[0], code))
        if code == 1 and result == HResult.BG_S_PARTIAL_COMPLETE:
            ctx.out.line("Job partially completed.")
        else:
            ctx.out.line(f"Job {done}.")
        return 0

    return run


SWITCHES["/CANCEL"] = _state_verb(0, "cancel", "canceled")
SWITCHES["/COMPLETE"] = _state_verb(1, "complete", "completed")
SWITCHES["/RESUME"] = _state_verb(2, "resume", "resumed")
SWITCHES["/SUSPEND"] = _state_verb(3, "suspend", "suspended")


def _job(ctx: Ctx, ref: str, what: str = "job", files: bool = False) -> dict[str, Any]:
    return dict(ctx.call(f"Unable to get {what}", lambda: ctx.client.get_job(ref, files=files)).raw)


@switch("/INFO")
def _info(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1, 2)
    if len(args) == 2 and args[1].upper() != "/VERBOSE":
        raise Usage("Invalid argument.")
    job = _job(ctx, args[0], "job information", files=len(args) == 2)
    for line in _verbose(ctx, job) if len(args) == 2 else [_summary(job)]:
        ctx.out.line(line)
    return 0


def _list_options(args: list[str], allowed: tuple[str, ...]) -> set[str]:
    options = {a.upper() for a in args}
    if len(options) != len(args) or not options <= set(allowed):
        raise Usage("Invalid argument.")
    return options


@switch("/LIST")
def _list(ctx: Ctx, args: list[str]) -> int:
    options = _list_options(args, ("/ALLUSERS", "/VERBOSE"))
    listed = ctx.call("Unable to enum jobs", lambda: ctx.client.list_jobs(all_users="/ALLUSERS" in options))
    jobs = [dict(j.raw) for j in listed]
    for job in jobs:
        if "/VERBOSE" in options:
            for line in _verbose(ctx, job):
                ctx.out.line(line)
            ctx.out.line()
        else:
            ctx.out.line(_summary(job))
    if not ctx.out.raw:
        ctx.out.line(f"Listed {len(jobs)} job(s).")
    return 0


@switch("/LISTFILES")
def _list_files(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    files = _job(ctx, args[0], "the files of the job", files=True).get("Files", [])
    for f in files:
        ctx.out.line(_file_line(f))
    if not ctx.out.raw:
        ctx.out.line(f"Listed {len(files)} file(s).")
    return 0


@switch("/RESET")
def _reset(ctx: Ctx, args: list[str]) -> int:
    options = _list_options(args, ("/ALLUSERS",))
    jobs = ctx.call("Unable to enum jobs", lambda: ctx.client.list_jobs(all_users="/ALLUSERS" in options))
    canceled = 0
    for job in jobs:
        try:
            ctx.client.cancel(job.job_id)
        except BitsError as e:
            print(f"Unable to cancel {job.job_id} - 0x{e.hresult:08x} {e.name}: {e.message}", file=sys.stderr)
            continue
        ctx.out.line(f"{job.job_id} canceled.")
        canceled += 1
    ctx.out.line(f"{canceled} out of {len(jobs)} jobs canceled.")
    return 0


@switch("/MONITOR")
def _monitor(ctx: Ctx, args: list[str]) -> int:
    refresh, all_users = 5, False
    rest = list(args)
    while rest:
        opt = rest.pop(0).upper()
        if opt == "/ALLUSERS":
            all_users = True
        elif opt == "/REFRESH":
            if not rest:
                raise Usage("/REFRESH is missing the refresh rate.")
            refresh = _ulong(rest.pop(0))
        else:
            raise Usage("Invalid argument.")
    limit_text = os.environ.get(MONITOR_ITERATIONS_ENV)
    limit = int(limit_text) if limit_text and limit_text.isdigit() else None
    tty = ctx.out.stream.isatty()
    shown = 0
    try:
        while limit is None or shown < limit:
            jobs = ctx.call("Unable to enum jobs", lambda: ctx.client.list_jobs(all_users=all_users))
            if tty:
                ctx.out.stream.write("\x1b[H\x1b[2J")  # clear the screen, as bitsadmin does
            ctx.out.line(f"MONITORING BACKGROUND COPY MANAGER({refresh} second refresh)", default_wrap=False)
            for job in jobs:
                ctx.out.line(_summary(dict(job.raw)), default_wrap=False)
            ctx.out.flush()
            shown += 1
            if limit is None or shown < limit:
                time.sleep(max(refresh, 1))  # the refresh period itself, not a synchronisation
    except KeyboardInterrupt:
        ctx.out.flush()  # Ctrl-C is how /MONITOR ends
    return 0


@switch("/TRANSFER")
def _transfer(ctx: Ctx, args: list[str]) -> int:
    if not args:
        raise Usage("Invalid number of arguments.")
    name, rest = args[0], args[1:]
    job_type, priority, acl = 0, int(JobPriority.NORMAL), 0
    while rest and rest[0].startswith("/"):
        opt = rest.pop(0).upper()
        if opt in ("/DOWNLOAD", "/UPLOAD"):
            job_type = _JOB_TYPES[opt]
        elif opt == "/PRIORITY" and rest:
            priority = _priority(rest.pop(0))
        elif opt == "/ACLFLAGS" and rest:
            acl = _acl_flags(rest.pop(0))
        elif opt == "/DYNAMIC":
            pass  # openbits always handles servers without sizes or ranges (SPEC §3)
        else:
            raise Usage("Invalid argument.")
    if not rest or len(rest) % 2:
        raise Usage("Invalid number of arguments.")
    if acl:
        _acl_not_implemented(ctx)
    files = list(zip(rest[::2], rest[1::2], strict=True))  # (LocalFile as given: see /ADDFILE)
    shown = _Shown(ctx)
    try:
        ctx.client.transfer(files, name, priority=priority, job_type=job_type, progress=shown)
    except KeyboardInterrupt:
        ctx.out.line("Transfer canceled.")  # (the job is cancelled: bitsadmin leaves none behind)
        return 130
    except BitsError as e:
        if not shown.failed:
            raise _Failed("Unable to complete transfer", e) from None
        ctx.out.line("Unable to complete transfer.")
        print(f"Unable to complete transfer - 0x{e.hresult:08x} {e.name}: {e.message}", file=sys.stderr)
        return 1
    ctx.out.line("Transfer complete.")
    return 0


class _Shown:
    """/TRANSFER's progress: two lines at each change until TRANSFERRED; the error block
    when the job goes to ERROR (before the transfer cancels it)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._last: tuple[Any, ...] | None = None
        self.failed = False

    def __call__(self, job: BitsJob) -> None:
        seen = (job.state, job.bytes_transferred, job.bytes_total, job.files_transferred)
        if seen == self._last or job.state is JobState.ACKNOWLEDGED:
            return
        self._last = seen
        _progress(self._ctx, dict(job.raw))
        if job.state is JobState.ERROR:
            self.failed = True
            err = self._ctx.client.get_error(job.job_id)
            for line in _error_block(err):
                self._ctx.out.line(line)


def _progress(ctx: Ctx, job: dict[str, Any]) -> None:
    total = int(job["BytesTotal"])
    done = int(job["BytesTransferred"])
    percent = "" if total == BG_SIZE_UNKNOWN else f" ({done * 100 // total if total else 100}%)"
    ctx.out.line(
        f"DISPLAY: '{job['DisplayName']}' TYPE: {_TYPE_NAMES.get(int(job.get('JobType', 0)), 'UNKNOWN')} "
        f"STATE: {_state(job['State'])}"
    )
    ctx.out.line(
        f"PRIORITY: {_enum_name(JobPriority, job['Priority'])} "
        f"FILES: {job['FilesTransferred']} / {job['FilesTotal']} BYTES: {done} / {_total(total)}{percent}"
    )
    ctx.out.flush()


@switch("/GETERROR")
def _get_error(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    err = ctx.call("Unable to get error", lambda: ctx.client.get_error(args[0]))
    for line in _error_block(err):
        ctx.out.line(line)
    return 0


# -- /GET* of the instance's properties --------------------------------------------------------


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
        # no certificate can be set yet (SetClientCertificate* answer E_NOTIMPL)
        raise _Failed(
            "Unable to get client certificate",
            BitsError.from_hresult(HResult.E_NOTIMPL, "client certificates are not implemented yet"),
        )
    if isinstance(cert, dict):
        location = cert.get("CertStoreLocation", 0)
        where = _STORE_LOCATIONS[location] if isinstance(location, int) and 0 <= location < 8 else location
        ident = cert.get("SubjectName") or "".join(f"{b:02x}" for b in cert.get("CertHash") or [])
        ctx.out.value(f"{where} {cert.get('StoreName')} {ident}")
    else:
        ctx.out.value(str(cert))
    return 0


# -- /SET* ------------------------------------------------------------------------------------


def _patch(prop: str, parse: Callable[[str], Any], said: Callable[[Any], str], action: str) -> Handler:
    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 2)
        value = parse(args[1])
        ctx.call(action, lambda: ctx.client.set_properties(args[0], **{prop: value}))
        ctx.out.line(said(value))
        return 0

    return run


SWITCHES["/SETDISPLAYNAME"] = _patch(
    "DisplayName", str, lambda v: f"Display name set to {v}.", "Unable to set display name"
)
SWITCHES["/SETDESCRIPTION"] = _patch(
    "Description", str, lambda v: f"Description set to {v}.", "Unable to set description"
)
SWITCHES["/SETPRIORITY"] = _patch(
    "Priority", _priority, lambda v: f"Priority set to {JobPriority(v).name}.", "Unable to set priority"
)
SWITCHES["/SETMINRETRYDELAY"] = _patch(
    "MinimumRetryDelay",
    _ulong,
    lambda v: f"Minimum retry delay set to {v}.",
    "Unable to set new minimum retry delay",
)
SWITCHES["/SETNOPROGRESSTIMEOUT"] = _patch(
    "NoProgressTimeout",
    _ulong,
    lambda v: f"No progress timeout set to {v}.",
    "Unable to set new no progress timeout",
)


def _method(
    method: str, param: str, parse: Callable[[str], Any], said: Callable[[Any], str], action: str
) -> Handler:
    """A setter that is a method of one parameter (SPEC §6 extension setters)."""

    def run(ctx: Ctx, args: list[str]) -> int:
        _nargs(args, 2)
        value = parse(args[1])
        ctx.call(action, lambda: ctx.client.invoke(args[0], method, **{param: value}))
        ctx.out.line(said(value))
        return 0

    return run


SWITCHES["/SETNOTIFYFLAGS"] = _method(
    "SetNotifyFlags",
    "NotifyFlags",
    _ulong,
    lambda v: f"Notification flags set to {v}.",
    "Unable to set notification flags",
)
SWITCHES["/SETSECURITYFLAGS"] = _method(
    "SetSecurityFlags",
    "SecurityFlags",
    _ulong,
    lambda v: f"Security flags set to {v}.",
    "Unable to set security flags",
)
SWITCHES["/SETMAXDOWNLOADTIME"] = _method(
    "SetMaximumDownloadTime",
    "MaximumDownloadTime",
    _ulong,
    lambda v: f"Maximum download time set to {v}.",
    "Unable to set maximum download time",
)


@switch("/SETCUSTOMHEADERS")
def _set_custom_headers(ctx: Ctx, args: list[str]) -> int:
    if len(args) < 2:
        raise Usage("Invalid number of arguments.")
    job, headers = args[0], args[1:]
    text = None if headers == ["NULL"] or headers == [""] else "".join(h + "\r\n" for h in headers)
    ctx.call(
        "Unable to set custom headers", lambda: ctx.client.invoke(job, "SetCustomHeaders", CustomHeaders=text)
    )
    ctx.out.line("Custom headers removed." if text is None else f"Custom headers set ({len(headers)}).")
    return 0


@switch("/SETNOTIFYCMDLINE")
def _set_notify_cmdline(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 2, 3)
    job, program = args[0], args[1]
    params = args[2] if len(args) == 3 else "NULL"
    ctx.call(
        "Unable to set the notification command line",
        lambda: ctx.client.invoke(job, "SetNotifyCmdLine", Program=_null(program), Parameters=_null(params)),
    )
    ctx.out.line(f"notification command line set to '{program}' '{params}'.")
    return 0


def _target_scheme(target: str, scheme: str) -> tuple[int, int]:
    if target.upper() not in _TARGETS:
        raise Usage(f"'{target}' is not a valid credential target.  It must be 'proxy' or 'server'.")
    if scheme.upper() not in _SCHEMES:
        raise Usage(
            f"'{scheme}' is not a valid credential scheme.\n"
            "It must be one of the following:\n    basic\n    digest\n    ntlm\n    negotiate\n    passport"
        )
    return _TARGETS[target.upper()], _SCHEMES[scheme.upper()]


@switch("/SETCREDENTIALS")
def _set_credentials(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 5)
    job, target, scheme, user, password = args
    t, s = _target_scheme(target, scheme)
    # NULL user and password: NTLM/Negotiate with the implicit credentials (bits-spec §5.7)
    ctx.call(
        "Unable to add credentials",
        lambda: ctx.client.invoke(
            job, "SetCredentials", Target=t, Scheme=s, UserName=_null(user), Password=_null(password)
        ),
    )
    ctx.out.line("OK.")
    return 0


@switch("/REMOVECREDENTIALS")
def _remove_credentials(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 3)
    job, target, scheme = args
    t, s = _target_scheme(target, scheme)
    result = ctx.call(
        "Unable to remove credentials",
        lambda: ctx.client.invoke(job, "RemoveCredentials", Target=t, Scheme=s),
    )
    ctx.out.line("no matching credential was found." if result.get("ReturnValue") == 1 else "OK.")
    return 0


@switch("/SETPROXYSETTINGS")
def _set_proxy_settings(ctx: Ctx, args: list[str]) -> int:
    if len(args) < 2:
        raise Usage("/SetProxySettings must be followed by a job name or guid, then a proxy usage name")
    job, usage = args[0], args[1].upper()
    if usage not in ProxyUsage.__members__:
        raise Usage("proxy usage must be one of OVERRIDE, NO_PROXY, AUTODETECT or PRECONFIG")
    params: dict[str, Any] = {"ProxyUsage": int(ProxyUsage[usage])}
    proxies = bypass = None
    if usage == "OVERRIDE":
        if len(args) != 4:
            raise Usage("OVERRIDE must be followed by a proxy list and a proxy bypass list")
        proxies, bypass = _null(args[2]), _null(args[3]) or None
        # bitsadmin's proxy list is comma-delimited; the WMI ProxyList is space-delimited
        params["ProxyList"] = None if proxies is None else " ".join(p for p in proxies.split(",") if p)
        params["ProxyBypassList"] = bypass
    elif len(args) != 2:
        raise Usage("Invalid number of arguments.")
    ctx.call("Unable to set proxy settings", lambda: ctx.client.invoke(job, "SetProxySettings", **params))
    ctx.out.line(f"Proxy usage set to {usage}.")
    if usage == "OVERRIDE":
        ctx.out.line(f"Proxy list set to {proxies or 'NULL'}.")
        ctx.out.line(f"Proxy bypass list set to {bypass or 'NULL'}.")
    return 0


@switch("/SETCLIENTCERTIFICATEBYID")
def _set_client_certificate_by_id(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 4)
    job, location, store, cert_id = args
    try:
        cert_hash = list(bytes.fromhex(cert_id.removeprefix("0x")))
    except ValueError:
        raise Usage(f"'{cert_id}' is not a hexadecimal certificate hash.") from None
    ctx.call(
        "Unable to set the client certificate",
        lambda: ctx.client.invoke(
            job,
            "SetClientCertificateById",
            CertStoreLocation=_store_location(location),
            StoreName=store,
            CertHash=cert_hash,
        ),
    )
    ctx.out.line("Client certificate set.")
    return 0


@switch("/SETCLIENTCERTIFICATEBYNAME")
def _set_client_certificate_by_name(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 4)
    job, location, store, subject = args
    ctx.call(
        "Unable to set the client certificate",
        lambda: ctx.client.invoke(
            job,
            "SetClientCertificateByName",
            CertStoreLocation=_store_location(location),
            StoreName=store,
            SubjectName=subject,
        ),
    )
    ctx.out.line("Client certificate set.")
    return 0


@switch("/REMOVECLIENTCERTIFICATE")
def _remove_client_certificate(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    ctx.call(
        "Unable to remove the client certificate",
        lambda: ctx.client.invoke(args[0], "RemoveClientCertificate"),
    )
    ctx.out.line("Client certificate removed.")
    return 0


@switch("/MAKECUSTOMHEADERSWRITEONLY")
def _make_custom_headers_write_only(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    ctx.call(
        "Unable to make the custom headers write-only",
        lambda: ctx.client.invoke(args[0], "MakeCustomHeadersWriteOnly"),
    )
    ctx.out.line("Custom headers are now write-only.")
    return 0


@switch("/TAKEOWNERSHIP")
def _take_ownership(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    job_id = str(_job(ctx, args[0])["JobId"])
    ctx.call("Unable to take ownership", lambda: ctx.client.invoke(job_id, "TakeOwnership"))
    ctx.out.line(f"Took ownership of {job_id}.")
    return 0


def _acl_not_implemented(ctx: Ctx) -> NoReturn:
    raise _Failed(
        "Unable to set ACL flags",
        BitsError.from_hresult(HResult.E_NOTIMPL, "ACL propagation flags (SMB only) are not supported"),
    )


@switch("/SETACLFLAGS", "/SETACLFLAG")
def _set_acl_flags(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 2)
    _acl_flags(args[1])
    _job(ctx, args[0])  # an unknown job is still BG_E_NOT_FOUND
    _acl_not_implemented(ctx)


@switch("/HELP", "/?")
def _help(ctx: Ctx, args: list[str]) -> int:
    ctx.out.stream.write(USAGE)
    return 0


# -- main -------------------------------------------------------------------------------------


def switch_usage(name: str) -> str:
    """The lines of USAGE that describe one switch (bad arguments print them)."""
    lines: list[str] = []
    for line in USAGE.splitlines():
        if lines and (not line.strip() or line.startswith("/")):
            break
        if lines or line.upper().startswith(name + " ") or line.upper() == name:
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else USAGE


def _usage(reason: str | None = None, name: str | None = None) -> int:
    """Bad usage: the reason, then the usage of the switch (of all switches for an unknown one)."""
    if reason:
        print(reason, file=sys.stderr)
    if name is None:
        print(USAGE.split("\n", 1)[1], file=sys.stderr, end="")  # (no banner)
    else:
        print("USAGE: BITSADMIN [/RAWRETURN] [/WRAP | /NOWRAP] command", file=sys.stderr)
        print(switch_usage(name), file=sys.stderr, end="")
    return 1


def _failed(action: str, err: BitsError) -> int:
    print(f"{action} - 0x{err.hresult:08x} {err.name}: {err.message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


def run(args: list[str]) -> int:
    out = Out()
    if args and args[0].upper() == "/RAWRETURN":
        out.raw, args = True, args[1:]
    if args and args[0].upper() in ("/WRAP", "/NOWRAP"):
        out.wrap, args = args[0].upper() == "/WRAP", args[1:]
    if not args:
        return _usage()
    name, rest = args[0].upper(), args[1:]
    handler = SWITCHES.get(name)
    if handler is None:
        return _usage("Invalid command")
    if handler is _help:
        out.stream.write(USAGE)
        return 0
    try:
        with Client() as client:
            return handler(Ctx(client, out), rest)
    except Usage as e:
        return _usage(str(e), name)
    except _Failed as e:
        return _failed(e.action, e.error)
    except BitsError as e:
        return _failed("Unable to complete the operation", e)
    except DaemonUnavailable as e:
        print(str(e), file=sys.stderr)
        return 3
    except BrokenPipeError:
        if not pipe.stdout_closed():
            raise
        return pipe.leave_quietly()  # `bitsadmin /list | head -1`: the reader is gone
    except KeyboardInterrupt:
        return 130
    finally:
        out.flush()


if __name__ == "__main__":
    main()
