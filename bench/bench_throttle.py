#!/usr/bin/env python3
"""How accurately a throttled background transfer holds its bandwidth limit.

Run from the repository root::

    .venv/bin/python bench/bench_throttle.py [--limit 10M] [--seconds 10] [--runs 3] [--keep]

One invocation writes a random test file (large enough for the whole measurement), starts
its own nginx on a free 127.0.0.1 port and its own openbits daemon, and measures three cases:

* ``config``: the daemon starts with ``bandwidth_limit = LIMIT`` in its TOML config; a NORMAL
  job runs; after SETTLE seconds from its first byte, the rate is measured over SECONDS;
* ``patch``: a second, fresh daemon without a limit; a NORMAL job starts unthrottled and, as soon
  as its first bytes land, the limit is set with ``PATCH BitsServicePolicy {"MaxBandwidth": LIMIT}``;
  the rate is measured from SETTLE seconds after the PATCH returned;
* ``foreground``: a FOREGROUND job under the config limit, which must not be throttled.

The rate is measured from the size of the job's temporary file (``.BIT*.tmp``, ``os.stat`` every
50 ms) and, for comparison, from ``BytesTransferred`` (which moves in checkpoint steps about once
a second).  It prints a table and writes ``bench/out/bench_throttle.json``.  It cleans up as
``common.Session`` says.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    CONNECTING,
    MIB,
    OUT_DIR,
    STATE_NAMES,
    TRANSFERRED,
    TRANSFERRING,
    BenchError,
    Services,
    Session,
    Setting,
    add_cases_arg,
    add_keep_arg,
    add_output_args,
    clear_dir,
    find_tools,
    log,
    log_loadavg_line,
    log_versions,
    new_parser,
    parse_cases,
    parse_common_args,
    render_rows,
    tail,
    untimed_sync,
    versions,
    write_daemon_config,
    write_random_file,
)

JSON_PATH = OUT_DIR / "bench_throttle.json"
CASE_NAMES = ("config", "patch", "foreground")
POLICY = "/root/microsoft/bits/BitsServicePolicy"
NORMAL, FOREGROUND = 2, 0  # BG_JOB_PRIORITY
FIRST_BYTE_DEADLINE_S = 30.0
CANCEL_DEADLINE_S = 15.0


# -- watching the temporary file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # time.perf_counter() right after the stat
    size: int  # st_size of the job's temporary file: bytes the daemon has written
    received: int  # bytes the daemon's TCP connection received from nginx in this run (-1: unknown)
    unread: int  # of those, still in the kernel's receive queue (Recv-Q), not read by the daemon yet


def is_temp_name(name: str) -> bool:
    return name.startswith(".BIT") and name.endswith(".tmp")


def find_temp(directory: Path) -> Path | None:
    """The job's temporary file in ``directory`` (there must be at most one)."""
    found = [e.path for e in os.scandir(directory) if is_temp_name(e.name)]
    if len(found) > 1:
        raise BenchError(f"more than one temporary file in {directory}: {', '.join(sorted(found))}")
    return Path(found[0]) if found else None


_BYTES_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def tcp_received(port: int) -> dict[int, tuple[int, int]]:
    """Local port -> (bytes_received, Recv-Q) of every established TCP connection to ``port``
    (``ss -tin``: the kernel's count of payload bytes received, and the bytes it holds unread)."""
    try:
        out = subprocess.run(
            ["ss", "-tinH", "state", "established", f"( dport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    result: dict[int, tuple[int, int]] = {}
    local_port: int | None = None
    recv_q = 0
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():  # Recv-Q Send-Q Local:Port Peer:Port
            cols = line.split()
            try:
                recv_q, local_port = int(cols[0]), int(cols[2].rsplit(":", 1)[1])
            except (IndexError, ValueError):
                local_port = None
        elif local_port is not None:  # the tcp_info line
            m = _BYTES_RECEIVED.search(line)
            result[local_port] = (int(m.group(1)) if m else 0, recv_q)
            local_port = None
    return result


class TempSampler:
    """Stats the job's temporary file every ``interval_s`` and, with ``port``, reads how much the
    daemon's connection to that port has received (``ss``), to see the bytes read ahead.

    Samples are taken on an absolute schedule (no drift); a late wake-up skips slots rather
    than bunching them.  Samples start once the temporary file exists."""

    def __init__(self, directory: Path, interval_s: float, port: int | None) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.port = port
        # bytes_received of the connections open before the run (a kept-alive one may be reused)
        self.baseline = {p: r for p, (r, _q) in tcp_received(port).items()} if port else {}
        self.samples: list[Sample] = []
        self.path: Path | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="temp-sampler", daemon=True)

    def _poll(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            try:
                if self.path is None:
                    self.path = find_temp(self.directory)
                if self.path is not None:
                    size = os.stat(self.path).st_size
                    now = time.perf_counter()
                    received, unread = self._socket()
                    self.samples.append(Sample(now, size, received, unread))
            except FileNotFoundError:
                pass  # gone (cancelled or completed): keep what we have
            except (OSError, BenchError) as e:
                self.error = str(e)
                return
            next_t += self.interval_s
            now = time.perf_counter()
            if next_t < now:
                next_t = now + self.interval_s * 0.5  # late: skip the missed slots
            self._stop.wait(next_t - now)

    def _socket(self) -> tuple[int, int]:
        """(bytes received in this run, Recv-Q) of the connection that received the most."""
        if self.port is None:
            return -1, -1
        conns = [(r - self.baseline.get(p, 0), q) for p, (r, q) in tcp_received(self.port).items()]
        return max(conns, default=(-1, -1))

    def snapshot(self) -> list[Sample]:
        return list(self.samples)

    def __enter__(self) -> TempSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- rates over a window -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poll:
    t: float
    bytes_transferred: int
    state: int


def temp_rate(samples: list[Sample], w0: float, w1: float) -> tuple[float, float, int] | None:
    """(bytes/s, elapsed s, bytes) between the first and the last sample inside [w0, w1]."""
    inside = [s for s in samples if w0 <= s.t <= w1]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return None
    a, b = inside[0], inside[-1]
    return (b.size - a.size) / (b.t - a.t), b.t - a.t, b.size - a.size


def bt_rates(polls: list[Poll], w0: float, w1: float) -> tuple[float | None, float | None, int]:
    """BytesTransferred over [w0, w1]: (from checkpoint step to checkpoint step, plain, steps).

    The stepped rate runs from the first poll inside the window that saw a new value to the last
    one; the plain rate from the first poll inside the window to the last (it is off by up to one
    checkpoint step, i.e. ~limit x 1 s, in either direction)."""
    inside = [p for p in polls if w0 <= p.t <= w1]
    plain = None
    if len(inside) >= 2 and inside[-1].t > inside[0].t:
        plain = (inside[-1].bytes_transferred - inside[0].bytes_transferred) / (inside[-1].t - inside[0].t)
    edges = [
        cur
        for prev, cur in itertools.pairwise(polls)
        if w0 <= cur.t <= w1 and cur.bytes_transferred != prev.bytes_transferred
    ]
    stepped = None
    if len(edges) >= 2 and edges[-1].t > edges[0].t:
        stepped = (edges[-1].bytes_transferred - edges[0].bytes_transferred) / (edges[-1].t - edges[0].t)
    return stepped, plain, len(edges)


def fit_rate(samples: list[Sample], w0: float, w1: float) -> float | None:
    """The least-squares slope of the file's size over time inside [w0, w1], in bytes/s: nearly
    free of the quantization a window cut through a few large write steps has."""
    inside = [s for s in samples if w0 <= s.t <= w1]
    if len(inside) < 3:
        return None
    mt = statistics.fmean(s.t for s in inside)
    ms = statistics.fmean(s.size for s in inside)
    var = sum((s.t - mt) ** 2 for s in inside)
    if var <= 0:
        return None
    return sum((s.t - mt) * (s.size - ms) for s in inside) / var


def per_second_rates(samples: list[Sample], w0: float, seconds: float) -> list[float]:
    out: list[float] = []
    for k in range(int(seconds)):
        r = temp_rate(samples, w0 + k, w0 + k + 1)
        if r is not None:
            out.append(r[0])
    return out


@dataclass(slots=True)
class Diagnostics:
    """How the bytes reach the temporary file inside the window: evidence for read-ahead."""

    write_steps: int = 0  # sample-to-sample increases of the temporary file's size
    write_step_median_bytes: float = 0.0
    write_step_max_bytes: int = 0
    held_median_bytes: float = 0.0  # read from the socket by the daemon but not yet in the file
    held_max_bytes: int = 0
    unread_max_bytes: int = 0  # received by the kernel, not yet read by the daemon (Recv-Q)
    ahead_max_bytes: int = 0  # received from the network but not yet in the file: held + unread
    recv_peak_bps: float = 0.0  # the connection's receive rate over one sample interval, at most
    sample_interval_s: float = 0.0
    #: the largest write step as a share of the bytes a window should hold (limit x window): how far
    #: off a window can be from where it cuts the steps alone, whatever the throttle's accuracy
    step_share_pct: float = 0.0
    second_rates_bps: list[float] = field(default_factory=list)


def diagnose(
    samples: list[Sample], w0: float, w1: float, seconds: float, interval: float, limit: int
) -> Diagnostics:
    inside = [s for s in samples if w0 <= s.t <= w1]
    d = Diagnostics(second_rates_bps=per_second_rates(samples, w0, seconds), sample_interval_s=interval)
    steps = [b.size - a.size for a, b in itertools.pairwise(inside) if b.size > a.size]
    if steps:
        d.write_steps = len(steps)
        d.write_step_median_bytes = statistics.median(steps)
        d.write_step_max_bytes = max(steps)
        d.step_share_pct = max(steps) / (limit * seconds) * 100.0
    known = [s for s in inside if s.received >= 0]
    if known:
        # (the response's headers, a few hundred bytes, count as held)
        held = [s.received - s.unread - s.size for s in known]
        d.held_median_bytes = statistics.median(held)
        d.held_max_bytes = max(held)
        d.unread_max_bytes = max(s.unread for s in known)
        d.ahead_max_bytes = max(s.received - s.size for s in known)
        d.recv_peak_bps = max(
            ((b.received - a.received) / (b.t - a.t) for a, b in itertools.pairwise(known) if b.t > a.t),
            default=0.0,
        )
    return d


# -- one run -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    case: str
    index: int
    priority: int
    limit_bps: int
    rate_bps: float | None  # from the temporary file's size over the window
    error_pct: float | None  # (rate - limit) / limit
    fit_rate_bps: float | None  # the temporary file, least-squares slope of size over the window
    fit_error_pct: float | None
    window_s: float  # elapsed between the first and the last sample inside the window
    window_bytes: int
    bt_stepped_bps: float | None  # BytesTransferred, checkpoint step to checkpoint step
    bt_stepped_error_pct: float | None
    bt_plain_bps: float | None  # BytesTransferred, first to last poll of the window
    bt_steps: int
    verdict: str  # "ok" / "MISSED" (throttled cases), "not throttled" / "THROTTLED" (foreground)
    ok: bool
    bytes_before_limit: int | None = None  # patch: the temporary file's size when PATCH returned
    patch_s: float | None = None  # patch: how long the PATCH request took
    first_byte_s: float = 0.0  # resume -> first byte in the temporary file
    transfer_s: float | None = None  # foreground: first byte -> the whole file in the temporary file
    policy: dict[str, Any] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    # [s since the first byte, temporary file size, bytes received, Recv-Q] (foreground: the first two)
    samples: list[list[float]] = field(default_factory=list)


def pct(rate: float | None, limit: int) -> float | None:
    return None if rate is None else (rate - limit) / limit * 100.0


class Bench:
    """The cases, run against the daemon currently running in ``services``."""

    def __init__(self, args: argparse.Namespace, services: Services, dl: Path, url: str, size: int) -> None:
        self.args = args
        self.services = services
        self.dl = dl
        self.url = url
        self.size = size
        self.limit: int = args.limit_bps
        self.port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def clear_output(self) -> None:
        clear_dir(self.dl)

    def wait_first_byte(self, t_resume: float) -> tuple[Path, float]:
        """Poll (every 2 ms) until the temporary file holds at least one byte."""
        deadline = t_resume + FIRST_BYTE_DEADLINE_S
        while True:
            path = find_temp(self.dl)
            if path is not None:
                try:
                    if os.stat(path).st_size > 0:
                        return path, time.perf_counter()
                except FileNotFoundError:
                    pass
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"no byte reached a temporary file in {self.dl} within {FIRST_BYTE_DEADLINE_S:.0f} s:\n"
                    f"{tail(self.services.daemon_log)}"
                )
            self.services.check_daemon_alive()
            time.sleep(0.002)

    def cancel(self, client: Any, job: str) -> None:
        """Cancel the job and wait until its temporary file is gone."""
        client.cancel(job)
        deadline = time.monotonic() + CANCEL_DEADLINE_S
        while any(is_temp_name(n) for n in os.listdir(self.dl)):
            if time.monotonic() > deadline:
                raise BenchError(f"the cancelled job left its temporary file in {self.dl}")
            time.sleep(0.05)
        self.clear_output()

    def run(self, case: str, index: int) -> Run:
        from openbits.client import Client

        self.clear_output()
        untimed_sync()
        args = self.args
        priority = FOREGROUND if case == "foreground" else NORMAL
        interval = args.fg_sample_interval if case == "foreground" else args.sample_interval
        port = None if case == "foreground" else self.port
        with Client(str(self.services.socket), timeout=60.0) as client:
            if case == "patch":
                client.request("PATCH", POLICY, {"MaxBandwidth": None})  # start unlimited
                if client.request("GET", POLICY)["CurrentBandwidthLimit"] is not None:
                    raise BenchError("patch: the limit did not go back to unlimited")
            job = client.create_job(f"bench_throttle {case} {index}", priority=priority).job_id
            try:
                client.add_file(job, self.url, str(self.dl / "out.bin"))
                sampler = TempSampler(self.dl, interval, port)
                t_resume = time.perf_counter()
                client.resume(job)
                with sampler:
                    _path, t_first = self.wait_first_byte(t_resume)
                    run = self._measure(client, job, case, index, priority, sampler, t_resume, t_first)
                if sampler.error:
                    raise BenchError(f"{case}: watching the temporary file failed: {sampler.error}")
            finally:
                self.cancel(client, job)
        return run

    def _measure(
        self,
        client: Any,
        job: str,
        case: str,
        index: int,
        priority: int,
        sampler: TempSampler,
        t_resume: float,
        t_first: float,
    ) -> Run:
        args = self.args
        limit = self.limit
        start = t_first
        bytes_before: int | None = None
        patch_s: float | None = None
        if case == "patch":
            a = time.perf_counter()
            answer = client.request("PATCH", POLICY, {"MaxBandwidth": args.limit})
            start = time.perf_counter()
            patch_s = start - a
            temp = find_temp(self.dl)
            bytes_before = os.stat(temp).st_size if temp is not None else None
            if answer.get("MaxBandwidth") != limit:
                raise BenchError(f"patch: PATCH answered MaxBandwidth {answer.get('MaxBandwidth')!r}")
        w0 = start + args.settle
        w1 = w0 + args.seconds
        polls: list[Poll] = []
        policy: dict[str, Any] = client.request("GET", POLICY)
        transfer_s: float | None = None
        while True:
            now = time.perf_counter()
            instance = client.get_job(job)
            polls.append(Poll(now, instance.bytes_transferred, int(instance.state)))
            state = polls[-1].state
            if state == TRANSFERRED and priority == FOREGROUND:
                done = next((s for s in sampler.snapshot() if s.size >= self.size), None)
                if done is not None:
                    transfer_s = done.t - t_first
                break
            if state not in (CONNECTING, TRANSFERRING):
                raise BenchError(
                    f"{case}: the job went {STATE_NAMES.get(state, state)}: "
                    f"{json.dumps(client.get_error(job).raw)}"
                )
            if now >= w1:
                break
            self.services.check_daemon_alive()
            time.sleep(0.1)
        samples = sampler.snapshot()
        if priority == FOREGROUND:
            return self._foreground_run(case, index, samples, polls, t_resume, t_first, transfer_s, policy)
        last = samples[-1] if samples else None
        if last is None or last.size >= self.size or polls[-1].state != TRANSFERRING:
            raise BenchError(
                f"{case}: the transfer ended before the window did; the file is too small "
                f"(raise --margin-mib; {self.size} bytes)"
            )
        measured = temp_rate(samples, w0, w1)
        stepped, plain, steps = bt_rates(polls, w0, w1)
        rate = None if measured is None else measured[0]
        err = pct(rate, limit)
        fitted = fit_rate(samples, w0, w1)
        ok = err is not None and abs(err) <= args.tolerance
        return Run(
            case=case,
            index=index,
            priority=priority,
            limit_bps=limit,
            rate_bps=rate,
            error_pct=err,
            fit_rate_bps=fitted,
            fit_error_pct=pct(fitted, limit),
            window_s=0.0 if measured is None else measured[1],
            window_bytes=0 if measured is None else measured[2],
            bt_stepped_bps=stepped,
            bt_stepped_error_pct=pct(stepped, limit),
            bt_plain_bps=plain,
            bt_steps=steps,
            verdict="ok" if ok else "MISSED",
            ok=ok,
            bytes_before_limit=bytes_before,
            patch_s=patch_s,
            first_byte_s=t_first - t_resume,
            policy=policy,
            diagnostics=diagnose(samples, w0, w1, args.seconds, args.sample_interval, limit),
            samples=[[round(s.t - t_first, 4), s.size, s.received, s.unread] for s in samples],
        )

    def _foreground_run(
        self,
        case: str,
        index: int,
        samples: list[Sample],
        polls: list[Poll],
        t_resume: float,
        t_first: float,
        transfer_s: float | None,
        policy: dict[str, Any],
    ) -> Run:
        """The rate from the first byte to the whole file (or to the end of the time allowed)."""
        limit = self.limit
        moving = [s for s in samples if s.size > 0]
        done = next((s for s in moving if s.size >= self.size), None)
        end = done if done is not None else (moving[-1] if moving else None)
        rate: float | None = None
        window_s, window_bytes = 0.0, 0
        if moving and end is not None and end.t > moving[0].t:
            window_s, window_bytes = end.t - moving[0].t, end.size - moving[0].size
            rate = window_bytes / window_s
        ok = done is not None and rate is not None and rate >= self.args.fg_factor * limit
        return Run(
            case=case,
            index=index,
            priority=FOREGROUND,
            limit_bps=limit,
            rate_bps=rate,
            error_pct=pct(rate, limit),
            fit_rate_bps=None,
            fit_error_pct=None,
            window_s=window_s,
            window_bytes=window_bytes,
            bt_stepped_bps=None,
            bt_stepped_error_pct=None,
            bt_plain_bps=None,
            bt_steps=0,
            verdict="not throttled" if ok else "THROTTLED",
            ok=ok,
            first_byte_s=t_first - t_resume,
            transfer_s=transfer_s,
            policy=policy,
            samples=[[round(s.t - t_first, 4), s.size] for s in samples],
        )


# -- report --------------------------------------------------------------------------------------


def mbps(bps: float | None) -> str:
    return "–" if bps is None else f"{bps / 1e6:.2f}"


def signed(p: float | None) -> str:
    return "–" if p is None else f"{p:+.1f}%"


def render_table(runs: list[Run]) -> str:
    header = [
        "case",
        "run",
        "limit MB/s",
        "temp file MB/s",
        "error",
        "LS fit MB/s",
        "error",
        "BytesTransferred MB/s",
        "error",
        "write steps MiB (med/max)",
        "read ahead MiB (max)",
        "verdict",
    ]
    rows = [header]
    for r in runs:
        d = r.diagnostics
        if r.priority == FOREGROUND:
            times = "–" if r.rate_bps is None else f"×{r.rate_bps / r.limit_bps:.0f}"
            row = [mbps(r.rate_bps), times, "–", "–", "–", "–", "–", "–"]
        else:
            row = [
                mbps(r.rate_bps),
                signed(r.error_pct),
                mbps(r.fit_rate_bps),
                signed(r.fit_error_pct),
                mbps(r.bt_stepped_bps),
                signed(r.bt_stepped_error_pct),
                f"{d.write_step_median_bytes / MIB:.2f}/{d.write_step_max_bytes / MIB:.2f}",
                f"{d.ahead_max_bytes / MIB:.1f}",
            ]
        rows.append([r.case, str(r.index + 1), mbps(r.limit_bps), *row, r.verdict])
    return render_rows(rows)


def summarize(runs: list[Run], tolerance: float) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {}
    for case in CASE_NAMES:
        mine = [r for r in runs if r.case == case]
        if not mine:
            continue
        rates = [r.rate_bps for r in mine if r.rate_bps is not None]
        good = sum(r.ok for r in mine)
        entry: dict[str, Any] = {
            "runs": len(mine),
            "ok_runs": good,
            "median_rate_bps": statistics.median(rates) if rates else None,
        }
        if case == "foreground":
            med = entry["median_rate_bps"]
            lines.append(
                f"{case}: median {mbps(med)} MB/s = ×{(med or 0) / mine[0].limit_bps:.0f} the limit; "
                f"not throttled in {good}/{len(mine)} runs"
            )
        else:
            errs = [r.error_pct for r in mine if r.error_pct is not None]
            worst = max(errs, key=abs) if errs else None
            entry["median_error_pct"] = statistics.median(errs) if errs else None
            entry["worst_error_pct"] = worst
            fits = [r.fit_error_pct for r in mine if r.fit_error_pct is not None]
            entry["median_fit_error_pct"] = statistics.median(fits) if fits else None
            d = [r.diagnostics for r in mine]
            entry["max_write_step_bytes"] = max(x.write_step_max_bytes for x in d)
            entry["max_held_bytes"] = max(x.held_max_bytes for x in d)
            entry["max_unread_bytes"] = max(x.unread_max_bytes for x in d)
            entry["max_recv_peak_bps"] = max(x.recv_peak_bps for x in d)
            lines.append(
                f"{case}: limit held within ±{tolerance:g}% over the window in {good}/{len(mine)} runs "
                f"(median error {signed(entry['median_error_pct'])}, worst {signed(worst)}; "
                f"least-squares fit {signed(entry['median_fit_error_pct'])})"
            )
            lines.append(
                f"  the file grew in steps of up to {entry['max_write_step_bytes'] / MIB:.1f} MiB; up to "
                f"{entry['max_held_bytes'] / MIB:.1f} MiB were read by the daemon but not yet written and "
                f"{entry['max_unread_bytes'] / MIB:.1f} MiB waited unread in the kernel; the connection "
                f"received at up to {entry['max_recv_peak_bps'] / 1e6:.0f} MB/s over "
                f"{mine[0].diagnostics.sample_interval_s * 1000:g} ms"
            )
            share = max(x.step_share_pct for x in d)
            if share > tolerance:
                lines.append(
                    f"  note: one write step is {share:.1f}% of the bytes a window should hold, more than "
                    f"±{tolerance:g}%: whether a window meets the target depends on where it cuts the steps "
                    "(compare the least-squares fit); see bench/README.md"
                )
            if case == "patch":
                before = [r.bytes_before_limit for r in mine if r.bytes_before_limit is not None]
                patch_ms = [r.patch_s * 1000 for r in mine if r.patch_s is not None]
                if before and patch_ms:
                    lines.append(
                        f"patch: PATCH took {statistics.median(patch_ms):.1f} ms (median); "
                        f"{statistics.median(before) / MIB:.0f} MiB were written unthrottled "
                        "before it returned"
                    )
        summary[case] = entry
    return lines, summary


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument(
        "--limit",
        default="10M",
        help="bandwidth limit in the daemon's rate syntax (bare number KiB/s; B, K, M, G binary); "
        "default 10M = 10485760 B/s",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window in s (default 10)")
    p.add_argument("--settle", type=float, default=2.0, help="s before the window starts (default 2)")
    p.add_argument("--runs", type=int, default=3, help="runs per case (default 3)")
    p.add_argument("--tolerance", type=float, default=5.0, help="target: |error| ≤ this %% (default 5)")
    p.add_argument(
        "--fg-factor",
        type=float,
        default=3.0,
        help="foreground passes when its rate is at least this many times the limit (default 3)",
    )
    p.add_argument(
        "--sample-interval", type=float, default=0.05, help="s between stats of the temporary file (0.05)"
    )
    p.add_argument(
        "--fg-sample-interval",
        type=float,
        default=0.005,
        help="the same for the (fast) foreground case (default 0.005)",
    )
    p.add_argument(
        "--margin-mib",
        type=int,
        default=256,
        help="MiB added to the test file (limit x (seconds + 5)) for the patch case's unthrottled "
        "start and the foreground case (default 256)",
    )
    add_cases_arg(p, CASE_NAMES)
    add_keep_arg(p, "file, logs, state")
    add_output_args(p, JSON_PATH)
    args = parse_common_args(p, argv)
    from openbits.transfer.schedule import TimetableError, parse_rate

    try:
        args.limit_bps = parse_rate(args.limit)
    except TimetableError as e:
        p.error(f"--limit: {e}")
    if not args.limit_bps:
        p.error("--limit must be a rate above 0 (not 0 or off)")
    if args.runs < 1 or args.seconds < 1 or args.settle < 0 or args.tolerance <= 0 or args.margin_mib < 0:
        p.error("need --runs ≥ 1, --seconds ≥ 1, --settle ≥ 0, --tolerance > 0 and --margin-mib ≥ 0")
    if not 0.001 <= args.sample_interval <= 1 or not 0.001 <= args.fg_sample_interval <= 1:
        p.error("sample intervals must be between 0.001 and 1 s")
    args.cases = parse_cases(p, args.cases, CASE_NAMES, allow_empty=False)
    return args


def run_phase(
    label: str,
    bench: Bench,
    cases: list[str],
    runs: list[Run],
    failures: list[str],
) -> None:
    """Run the cases round-robin against the running daemon."""
    args = bench.args
    for index in range(args.runs):
        for case in cases:
            try:
                run = bench.run(case, index)
            except BenchError as e:
                failures.append(f"{case} run {index + 1}: {e}")
                log(f"  [{label} run {index + 1}/{args.runs}] {case:<10} FAILED: {e}")
                bench.services.check_daemon_alive()
                continue
            runs.append(run)
            d = run.diagnostics
            if run.priority == FOREGROUND:
                extra = (
                    f"first byte to last {run.transfer_s or 0:.3f} s" if run.transfer_s else "not finished"
                )
                log(
                    f"  [{label} run {index + 1}/{args.runs}] {case:<10} {mbps(run.rate_bps):>8} MB/s "
                    f"(limit {mbps(run.limit_bps)}; {extra}) {run.verdict}"
                )
            else:
                log(
                    f"  [{label} run {index + 1}/{args.runs}] {case:<10} {mbps(run.rate_bps):>8} MB/s "
                    f"{signed(run.error_pct):>7} over {run.window_s:.2f} s (fit "
                    f"{signed(run.fit_error_pct)}; BytesTransferred {signed(run.bt_stepped_error_pct)}); "
                    f"write steps ≤ {d.write_step_max_bytes / MIB:.1f} MiB; read ahead ≤ "
                    f"{d.ahead_max_bytes / MIB:.1f} MiB; {run.verdict}"
                )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("bench_throttle")
    if tools is None:
        return 2
    limit: int = args.limit_bps
    size = math.ceil(limit * (args.seconds + 5)) + args.margin_mib * MIB

    session = Session("bench_throttle", args, ["www", "dl"])
    work = session.work
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env)
    runs: list[Run] = []
    vers: dict[str, str] = {}
    daemon_rcs: dict[str, int | None] = {}
    settings: dict[str, dict[str, Setting]] = {}

    def cleanup() -> None:
        if services.daemon is not None:
            daemon_rcs["last"] = services.stop_daemon()
        services.stop_nginx()
        services.close_logs()

    with session.guard(cleanup):
        session.log_start()
        vers = versions(tools.nginx, None, tools.venv_python)
        log_versions(vers, skip=("aria2c",))
        log(f"writing {size} random bytes ({size / MIB:.0f} MiB) ...")
        write_random_file(work / "www" / "test.bin", size)
        untimed_sync()
        url = services.start_nginx("/test.bin", size)
        log(f"nginx serving {url}")
        bench = Bench(args, services, work / "dl", url, size)
        log(
            f"limit {args.limit} = {limit} B/s = {limit / 1e6:.3f} MB/s; settle {args.settle:g} s, "
            f"window {args.seconds:g} s, target ±{args.tolerance:g}%"
        )
        phases = [
            ("config", [c for c in ("config", "foreground") if c in args.cases]),
            ("patch", [c for c in ("patch",) if c in args.cases]),
        ]
        for label, cases in phases:
            if not cases:
                continue
            daemon_settings = dict(args.daemon_setting)
            if label == "config":
                daemon_settings["bandwidth_limit"] = args.limit
            settings[label] = daemon_settings
            services.state_dir = work / f"state-{label}"
            config = write_daemon_config(work / f"openbits-{label}.toml", daemon_settings)
            services.start_daemon(config, answer=True)
            log(f"openbits daemon ({label}) on {services.socket}, config: {json.dumps(daemon_settings)}")
            run_phase(label, bench, cases, runs, session.failures)
            rc = services.stop_daemon()
            daemon_rcs[label] = rc
            if rc != 0:
                session.failures.append(
                    f"openbits serve ({label}) exited with {rc} after SIGTERM (expected 0):\n"
                    f"{tail(services.daemon_log)}"
                )
    if session.interrupted:
        return 130

    log("")
    log(
        f"{args.runs} run(s) per case; limit {args.limit} ({limit / 1e6:.3f} MB/s); rate from the "
        f"temporary file's size (stat every {args.sample_interval * 1000:g} ms) over {args.seconds:g} s "
        f"after {args.settle:g} s of settling; BytesTransferred from checkpoint step to step"
    )
    log_loadavg_line(session.machine)
    log("")
    if runs:
        log(render_table(runs))
        log("")
    lines, summary = summarize(runs, args.tolerance)
    for line in lines:
        log(line)
    return session.finish(
        args.json,
        {
            "limit": args.limit,
            "limit_bps": limit,
            "seconds": args.seconds,
            "settle": args.settle,
            "runs": args.runs,
            "tolerance_pct": args.tolerance,
            "fg_factor": args.fg_factor,
            "sample_interval_s": args.sample_interval,
            "fg_sample_interval_s": args.fg_sample_interval,
            "file_size": size,
            "cases": args.cases,
            "daemon_env": args.daemon_env,
            "daemon_settings": settings,
        },
        vers,
        summary=summary,
        runs=[asdict(r) for r in runs],
        targets_met=bool(runs) and all(r.ok for r in runs),
        daemon_exit_status=daemon_rcs,
    )


if __name__ == "__main__":
    sys.exit(main())
