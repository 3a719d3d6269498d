"""/TRANSFER: a job created, filled, resumed, followed (two progress lines at each change)
and completed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from openbits.cli.bitsadmin.context import Ctx, SwitchTable, _Failed
from openbits.cli.bitsadmin.formatting import _TYPE_NAMES, _enum_name, _error_block, _state, _total
from openbits.cli.bitsadmin.parsing import _JOB_TYPES, _acl_flags, _priority
from openbits.cli.bitsadmin.setters import _acl_not_implemented
from openbits.cli.bitsadmin.usage import Usage
from openbits.errors import BitsError
from openbits.model import BG_SIZE_UNKNOWN, JobPriority, JobState

if TYPE_CHECKING:
    from openbits.jobs import BitsJob

SWITCHES = SwitchTable()
switch = SWITCHES.switch


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
