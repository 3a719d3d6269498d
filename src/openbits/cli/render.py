"""What the `openbits` command line draws: plain-text tables, job and file listings, event
lines, and the live table of `openbits watch`.

Plain text is written with click; rich is imported only by the two displays that need a
terminal (the live table here and the progress bar of `transfer`), so the other commands
start without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from openbits.model import (
    AuthScheme,
    AuthTarget,
    JobPriority,
    JobState,
    JobType,
    ProxyUsage,
    unix_ns_from_filetime,
)

SIZE_UNKNOWN = 0xFFFFFFFFFFFFFFFF
LENGTH_TO_EOF = 0xFFFFFFFFFFFFFFFF


def state_name(value: int) -> str:
    try:
        return JobState(value).name
    except ValueError:
        return str(value)


def priority_name(value: int) -> str:
    try:
        return JobPriority(value).name
    except ValueError:
        return str(value)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def json_line(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def format_bytes(n: int) -> str:
    if n == SIZE_UNKNOWN:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart; the first row is the header."""
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


JOB_COLUMNS = ("JOBID", "NAME", "STATE", "PRIORITY", "FILES", "BYTES")


def job_row(j: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    return (
        str(j["JobId"]),
        str(j["DisplayName"]),
        state_name(j["State"]),
        priority_name(j["Priority"]),
        f"{j['FilesTransferred']}/{j['FilesTotal']}",
        f"{format_bytes(j['BytesTransferred'])} / {format_bytes(j['BytesTotal'])}",
    )


def print_table(jobs: Iterable[Mapping[str, Any]], empty: str = "no jobs") -> None:
    """The jobs table; ``empty`` instead of a header alone when there is no job."""
    rows = [job_row(j) for j in jobs]
    if rows:
        print_rows([JOB_COLUMNS, *rows])
    else:
        click.echo(empty)


def print_tokens(tokens: Sequence[Mapping[str, Any]]) -> None:
    """The table of `token list` (ids, scopes and descriptions, never tokens); "no tokens"
    when empty."""
    if not tokens:
        click.echo("no tokens")
        return
    rows = [("TOKENID", "OWNER", "SCOPE", "CREATED", "EXPIRES", "DESCRIPTION")]

    def when(filetime: int) -> str:
        if not filetime:
            return "never"
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_ns_from_filetime(filetime) / 1e9))

    for t in tokens:
        rows.append(
            (
                str(t["TokenId"]),
                str(t["Owner"]),
                str(t.get("Scope", "admin")),
                when(int(t["CreationTime"])),
                when(int(t.get("ExpirationTime") or 0)),
                str(t["Description"]),
            )
        )
    print_rows(rows)


def print_job(job: Mapping[str, Any]) -> None:
    fields = [
        ("JobId", job["JobId"]),
        ("DisplayName", job["DisplayName"]),
        ("Description", job["Description"]),
        ("State", state_name(job["State"])),
        ("Priority", priority_name(job["Priority"])),
        ("Owner", job["Owner"]),
        ("Files", f"{job['FilesTransferred']} of {job['FilesTotal']} transferred"),
        ("Bytes", f"{format_bytes(job['BytesTransferred'])} of {format_bytes(job['BytesTotal'])}"),
        ("TransientErrorCount", str(job["TransientErrorCount"])),
        ("MinimumRetryDelay", f"{job['MinimumRetryDelay']} s"),
        ("NoProgressTimeout", f"{job['NoProgressTimeout']} s"),
        *([("MaxConnections", str(job["MaxConnections"]))] if "MaxConnections" in job else []),
        *_upload_fields(job),
        *_identity_fields(job),
    ]
    cert = job.get("ClientCertificate")
    if isinstance(cert, Mapping):
        where = f"store {cert.get('StoreName')}, SHA-1 {cert.get('CertHash')}"
        fields.append(("ClientCertificate", f"{cert.get('SubjectName')} ({where})"))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    for i, f in enumerate(job.get("Files") or []):
        done = (
            "done"
            if f["Completed"]
            else f"{format_bytes(f['BytesTransferred'])} of {format_bytes(f['BytesTotal'])}"
        )
        if f.get("Digest"):  # (SPEC §9: the bytes must match it before the file counts)
            done += f"; expected {f['Digest']}"
        if job.get("JobType"):  # (an upload: from the local file to the server)
            click.echo(f"File {i}: {f['LocalFile']} -> {f['RemoteUrl']} ({done})")
        else:
            click.echo(f"File {i}: {f['RemoteUrl']} -> {f['LocalFile']} ({done})")


def _upload_fields(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An upload job's type; an upload-reply job's ReplyFileName and ReplyProgress.  (A
    download shows none: the default type.)"""
    job_type = job.get("JobType") or 0
    if not job_type:
        return []
    name = JobType(job_type).name if job_type in JobType._value2member_map_ else str(job_type)
    fields = [("JobType", name.replace("_", "-"))]
    if job_type == JobType.UPLOAD_REPLY:
        fields.append(("ReplyFileName", job.get("ReplyFileName") or "(set when the file is added)"))
        progress = job.get("ReplyProgress")
        if isinstance(progress, Mapping):
            done, total = progress.get("BytesTransferred") or 0, progress.get("BytesTotal", SIZE_UNKNOWN)
            fields.append(("ReplyProgress", f"{format_bytes(done)} of {format_bytes(total)}"))
    return fields


def _identity_fields(job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The proxy settings when not the default, and the credentials (never a password:
    the instance has none) as ``server basic alice``."""
    fields = []
    usage = job.get("ProxyUsage") or 0
    if usage or job.get("ProxyList"):
        name = ProxyUsage(usage).name if usage in ProxyUsage._value2member_map_ else str(usage)
        lists = " ".join(f"{k}={job[k]}" for k in ("ProxyList", "ProxyBypassList") if job.get(k))
        fields.append(("ProxyUsage", f"{name} {lists}".strip()))
    credentials = [
        " ".join(
            (
                AuthTarget(c["Target"]).name.lower(),
                AuthScheme(c["Scheme"]).name.lower(),
                c.get("UserName") or "(default credentials)",
            )
        )
        for c in job.get("Credentials") or ()
    ]
    if credentials:
        fields.append(("Credentials", ", ".join(credentials)))
    return fields


def file_progress(f: Mapping[str, Any]) -> str:
    if f.get("Completed"):
        return "done"
    total = int(f.get("BytesTotal", SIZE_UNKNOWN))
    done = int(f.get("BytesTransferred", 0))
    if total in (SIZE_UNKNOWN, 0):
        return "-" if done == 0 else "…"
    return f"{100 * done // total}%"


def format_ranges(ranges: Sequence[Mapping[str, int]]) -> str:
    return ",".join(
        f"{r['InitialOffset']}:{'eof' if r['Length'] == LENGTH_TO_EOF else r['Length']}" for r in ranges
    )


def print_files(files: Sequence[Mapping[str, Any]]) -> None:
    """The files table of `openbits files`: one row a file, in the job's order."""
    digests = any(f.get("Digest") for f in files)  # (a column only when a file has one)
    rows: list[tuple[str, ...]] = [
        ("#", "DONE", "BYTES", "REMOTE URL", "LOCAL FILE", *(("DIGEST",) if digests else ()))
    ]
    for i, f in enumerate(files):
        remote = str(f["RemoteUrl"])
        if f.get("Ranges"):
            remote += f" [{format_ranges(f['Ranges'])}]"
        rows.append(
            (
                str(i),
                file_progress(f),
                f"{format_bytes(f['BytesTransferred'])} / {format_bytes(f['BytesTotal'])}",
                remote,
                str(f["LocalFile"]),
                *((str(f.get("Digest") or "-"),) if digests else ()),
            )
        )
    print_rows(rows)


def print_error(info: Mapping[str, Any]) -> None:
    click.echo(f"ErrorCode           0x{info['ErrorCode']:08X} {info['Name']}")
    click.echo(f"ErrorContext        {info['ErrorContext']} {info['ContextDescription']}")
    click.echo(f"ErrorDescription    {info['ErrorDescription']}")
    if "RemoteUrl" in info:
        click.echo(f"File                {info['RemoteUrl']} -> {info['LocalFile']}")


def policy_value(name: str, value: Any) -> str:
    if name.endswith("Bandwidth") or name == "CurrentBandwidthLimit":
        if value is None:
            return "unlimited"
        if isinstance(value, int):
            return f"{format_bytes(value)}/s" if value else "0 (blocked)"
    if name == "TimeSlice" and isinstance(value, int | float):
        return f"{value:g} s"
    if name == "YieldTargetDelayMs" and isinstance(value, int | float):
        return f"{value:g} ms"
    if name == "BackgroundYield" and isinstance(value, str):
        return value or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return cell(value)


#: said once already, as CurrentBandwidthLimit (--json keeps both)
_SAME_AS_SHOWN = ("CurrentBandwidthLimitText",)


def print_policy(policy: Mapping[str, Any]) -> None:
    shown = {k: v for k, v in policy.items() if k not in _SAME_AS_SHOWN}
    width = max((len(k) for k in shown), default=0)
    for key, value in shown.items():
        click.echo(f"{key.ljust(width)}  {policy_value(key, value)}")


def transfer_columns() -> tuple[Any, ...]:
    """The columns of `transfer`'s progress bar: state, file, bar, bytes, rate and time left, in
    the IEC units (KiB, MiB) every other command prints."""
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            text = "?" if speed is None else f"{format_bytes(int(speed))}/s"
            return Text(text, style="progress.data.speed")

    return (
        TextColumn("{task.fields[state]:<15}"),
        TextColumn("{task.fields[file]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        RateColumn(),
        TimeRemainingColumn(),
    )


def event_line(event_id: int | None, event: str, data: Any) -> str:
    """One change as a line: time, event id and type, then the job's id, name, state,
    files and bytes."""
    stamp = time.strftime("%H:%M:%S")
    if event_id is None or not isinstance(data, dict):
        return f"{stamp}  {event}  {json.dumps(data)}"
    files = f"{data.get('FilesTransferred')}/{data.get('FilesTotal')} files"
    size = f"{format_bytes(data.get('BytesTransferred', 0))} / {format_bytes(data.get('BytesTotal', 0))}"
    return (
        f"{stamp}  {event_id:>6}  {event:<16}  {data.get('JobId')}  {data.get('DisplayName')!r}  "
        f"{state_name(data.get('State', -1))}  {files}  {size}"
    )


# -- the live table of `openbits watch` (a terminal only: rich is imported here) ------------------

_STATE_STYLES = {
    "TRANSFERRING": "green",
    "TRANSFERRED": "bold green",
    "ERROR": "bold red",
    "TRANSIENT_ERROR": "yellow",
    "SUSPENDED": "dim",
    "QUEUED": "cyan",
    "CONNECTING": "cyan",
}


#: the live table's columns; PROGRESS (a bar) only from _BAR_WIDTH columns on, the full JobId
#: only from _FULL_ID_WIDTH: at 80 columns every other column keeps its words
_BAR_WIDTH = 110
_FULL_ID_WIDTH = 160
SHORT_ID = 8


def short_ids(job_ids: Iterable[str]) -> dict[str, str]:
    """Each JobId shortened as git shortens a hash: its first 8 characters (no brace), more
    until no two of ``job_ids`` share their prefix."""
    bare = {job_id: job_id.strip("{}") for job_id in job_ids}
    length = SHORT_ID
    while length < 36 and len({b[:length] for b in bare.values()}) < len(bare):
        length += 1
    return {job_id: b[:length].rstrip("-") for job_id, b in bare.items()}


def bytes_pair(done: int, total: int) -> str:
    """Transferred and total bytes in the total's unit: 0.3/1.0 GiB (B: 512/1000 B)."""
    if total in (SIZE_UNKNOWN, 0):
        return format_bytes(done) if done else "-"
    size, unit, scale = float(total), "B", 1
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
        scale *= 1024
    if unit == "B":
        return f"{done}/{total} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {unit}"


def duration(seconds: float) -> str:
    """A time left, short: 45s, 3m05s, 2h07m, 3d04h."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Rates:
    """Each job's transfer rate as `watch` sees it change: bytes over the time between two
    changes, smoothed (an exponential average), and the time left at that rate."""

    SMOOTHING = 0.3

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rate: dict[str, float] = {}

    def update(self, jobs: Mapping[str, Mapping[str, Any]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for job_id in set(self._last) - set(jobs):
            self._last.pop(job_id)
            self._rate.pop(job_id, None)
        for job_id, job in jobs.items():
            done = int(job["BytesTransferred"])
            if job["State"] != JobState.TRANSFERRING:
                self._rate.pop(job_id, None)
                self._last[job_id] = (now, done)
                continue
            before = self._last.get(job_id)
            if before is None or done < before[1]:
                self._last[job_id] = (now, done)
            elif done > before[1] and now > before[0]:
                sample = (done - before[1]) / (now - before[0])
                old = self._rate.get(job_id)
                self._rate[job_id] = sample if old is None else old + self.SMOOTHING * (sample - old)
                self._last[job_id] = (now, done)

    def rate(self, job_id: str) -> float | None:
        return self._rate.get(job_id)

    def cells(self, job_id: str, job: Mapping[str, Any]) -> tuple[str, str]:
        """RATE and ETA of one job: '-' while it is not transferring or not measured yet."""
        rate = self._rate.get(job_id)
        if not rate:
            return "-", "-"
        total, done = int(job["BytesTotal"]), int(job["BytesTransferred"])
        eta = "-" if total in (SIZE_UNKNOWN, 0) else duration(max(0, total - done) / rate)
        return f"{format_bytes(int(rate))}/s", eta


def live_table(
    jobs: Mapping[str, Mapping[str, Any]], title: str, rates: Rates | None = None, width: int | None = None
) -> Any:
    """A rich Table of ``jobs`` (JobId -> instance) that fits ``width`` columns (the
    terminal's): a short unique id, then name, state, priority, files, a progress bar (wide
    terminals), bytes, rate and time left. Every column but NAME is as wide as its widest
    cell; NAME gets the rest (an ellipsis when it is short)."""
    import shutil

    from rich import box
    from rich.table import Table
    from rich.text import Text

    width = shutil.get_terminal_size().columns if width is None else width
    with_bar = width >= _BAR_WIDTH
    ids = {job_id: job_id for job_id in jobs} if width >= _FULL_ID_WIDTH else short_ids(jobs)
    if rates is not None:
        rates.update(jobs)
    headers = (
        "ID",
        "NAME",
        "STATE",
        "PRIORITY",
        "FILES",
        *(("PROGRESS",) if with_bar else ()),
        "BYTES",
        "RATE",
        "ETA",
    )
    rows = [
        _live_row(ids[job_id], job, rates.cells(job_id, job) if rates else ("-", "-"), with_bar)
        for job_id, job in jobs.items()
    ]
    widths = [max(len(c) for c in column) for column in zip(headers, *rows, strict=True)]
    gap = 2 if with_bar else 1
    fixed = sum(widths) - widths[1] + gap * (len(headers) - 1)
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, gap - 1, 0, 0),  # (SIMPLE_HEAD draws a space between columns)
        header_style="bold",
    )
    for i, header in enumerate(headers):
        if header == "NAME":
            table.add_column(
                header, no_wrap=True, overflow="ellipsis", width=max(4, min(widths[1], width - fixed))
            )
        else:
            table.add_column(
                header,
                no_wrap=True,
                width=widths[i],
                justify="right" if header in ("RATE", "ETA") else "left",
            )
    for row in rows:
        state = row[2]
        table.add_row(
            *(Text(c, style=_STATE_STYLES.get(state, "") if i == 2 else "") for i, c in enumerate(row))
        )
    if not jobs:
        table.caption = "no jobs"
    return table


def _live_row(
    short_id: str, job: Mapping[str, Any], rate_eta: tuple[str, str], with_bar: bool
) -> tuple[str, ...]:
    _, name, state, priority, files, _ = job_row(job)
    total, done = int(job["BytesTotal"]), int(job["BytesTransferred"])
    progress = ("-" if total in (0, SIZE_UNKNOWN) else _bar(done / total, 10),) if with_bar else ()
    return (short_id, name, state, priority, files, *progress, bytes_pair(done, total), *rate_eta)


def _bar(fraction: float, width: int = 12) -> str:
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return f"{'█' * full}{'░' * (width - full)} {fraction * 100:3.0f}%"
