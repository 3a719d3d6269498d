"""The job verbs: /CREATE, /ADDFILE*, /REPLACEREMOTEPREFIX, the state changes, /INFO,
/LIST, /LISTFILES, /RESET, /MONITOR, /GETERROR and /TAKEOWNERSHIP."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from openbits.cli.bitsadmin.context import Ctx, Handler, SwitchTable
from openbits.cli.bitsadmin.formatting import _error_block, _file_line, _summary, _verbose
from openbits.cli.bitsadmin.parsing import _JOB_TYPES, _nargs, _ulong, parse_file_set, parse_ranges
from openbits.cli.bitsadmin.usage import Usage
from openbits.errors import BitsError, HResult

SWITCHES = SwitchTable()
switch = SWITCHES.switch


#: Hidden: ``/monitor`` stops after this many refreshes (tests; bounded runs).
MONITOR_ITERATIONS_ENV = "OPENBITS_BITSADMIN_MONITOR_ITERATIONS"


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


@switch("/GETERROR")
def _get_error(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    err = ctx.call("Unable to get error", lambda: ctx.client.get_error(args[0]))
    for line in _error_block(err):
        ctx.out.line(line)
    return 0


@switch("/TAKEOWNERSHIP")
def _take_ownership(ctx: Ctx, args: list[str]) -> int:
    _nargs(args, 1)
    job_id = str(_job(ctx, args[0])["JobId"])
    ctx.call("Unable to take ownership", lambda: ctx.client.invoke(job_id, "TakeOwnership"))
    ctx.out.line(f"Took ownership of {job_id}.")
    return 0
