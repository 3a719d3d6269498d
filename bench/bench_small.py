#!/usr/bin/env python3
"""2,000 files of 16 KiB over loopback HTTP: curl -K, aria2c -i and one openbits job, alternated.

Run from the repository root::

    .venv/bin/python bench/bench_small.py [--files N] [--size BYTES] [--runs N] [--warmup N] [--keep]
                                          [--https]

One invocation writes N random files, starts its own nginx on a free 127.0.0.1 port
(one worker, keepalive_requests 100000, one log line per request naming its
connection) and its own openbits daemon, then times each case round-robin.  Every run
(warm-ups too) writes into its own fresh, empty directory ``dl/<round>-<case>/``, made
just before it; then ``sync`` runs (untimed), and nothing is deleted until the end,
after the report.  Why: on ext4, creating files right after thousands were deleted and
synced is slow (the inode allocator skips recently deleted inodes, reading each one's
block: ~0.5 ms of kernel CPU per ``open(O_CREAT)`` instead of ~25 µs), so emptying one
output directory between runs measured that, not the transfer.  The openbits
case is one BITS job driven in-process through ``openbits.client.Client``: CreateJob,
one AddFileSet call with N files, Resume, long polls (GetJob with WaitWhile) until
TRANSFERRED, Complete; each phase is timed
on its own.  It prints files/s per case, medians and the openbits/curl ratio, and
writes ``bench/out/bench_small.json``.  It cleans up as ``common.Session`` says.
With ``--https`` nginx serves over TLS with a throw-away trustme CA that every client
is told to trust (nothing skips verification).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    ACKNOWLEDGED,
    CANCELLED,
    CONNECTING,
    ERROR,
    KIB,
    OUT_DIR,
    QUEUED,
    RAISED_LIMITS,
    STATE_NAMES,
    TRANSFERRED,
    TRANSFERRING,
    TRANSIENT_ERROR,
    BenchError,
    Case,
    Runner,
    Services,
    Session,
    Snapshot,
    Timing,
    TlsFiles,
    TlsLog,
    Tools,
    add_cases_arg,
    add_https_arg,
    add_keep_arg,
    add_output_args,
    case_medians,
    exit_on_signals,
    find_tools,
    latency_ms,
    log,
    log_busy_note,
    log_daemon_env,
    log_loadavg_line,
    log_machine_line,
    log_tls_negotiated,
    log_versions,
    make_tls,
    new_parser,
    parse_cases,
    parse_common_args,
    ratio_lines,
    render_rows,
    sha256_file,
    tail,
    untimed_sync,
    versions,
    write_daemon_config,
)

JSON_PATH = OUT_DIR / "bench_small.json"
CASE_NAMES = ("curl", "curl+fsync", "aria2c", "openbits")
#: issue 15's goals for openbits' rate against each peer
TARGETS = {"curl": 1.2, "curl+fsync": 2.0}
RUN_DEADLINE_S = 600.0
#: files the creation probe writes before the runs (kept with the runs' directories)
PROBE_FILES = 500
BLOCK = 4096  # the file system's allocation unit, to size the disk check


# -- the test data ------------------------------------------------------------------------------


@dataclass(slots=True)
class Dataset:
    names: list[str]  # file names, the same under www/small/ and in every run's output directory
    sha256: dict[str, str]
    size: int
    url_base: str = ""  # http://127.0.0.1:PORT/small (https:// with --https)

    def url(self, name: str) -> str:
        return f"{self.url_base}/{name}"


def write_dataset(directory: Path, count: int, size: int) -> Dataset:
    directory.mkdir(parents=True)
    width = max(5, len(str(count - 1)))
    names = [f"f{i:0{width}d}.bin" for i in range(count)]
    digests: dict[str, str] = {}
    for name in names:
        data = os.urandom(size)
        (directory / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return Dataset(names, digests, size)


def write_client_lists(work: Path, data: Dataset) -> tuple[Path, Path]:
    """curl's -K config (url/output pairs, bare names: each run gives ``--output-dir``) and
    aria2c's -i list (one URL a line, saved under each run's ``-d``)."""
    curl_cfg = work / "curl_small.cfg"
    with open(curl_cfg, "w", encoding="utf-8") as fh:
        for name in data.names:
            fh.write(f'url = "{data.url(name)}"\noutput = "{name}"\n')
    urls = work / "urls.txt"
    urls.write_text("".join(f"{data.url(name)}\n" for name in data.names))
    return curl_cfg, urls


def check_free_space(work: Path, files: int, size: int, runs: int) -> None:
    """A :class:`BenchError` unless the work directory's file system has twice the room (bytes and
    inodes) for ``runs`` output directories, none deleted before the end, and the served copy."""
    copies = runs + 1  # every run's directory, and www/small
    need = copies * files * (-(-size // BLOCK) * BLOCK)
    need_inodes = copies * (files + 1)
    free = shutil.disk_usage(work).free
    st = os.statvfs(work)
    log(
        f"disk: {runs} run directories + the served copy need {need / 1024**3:.2f} GiB and "
        f"{need_inodes} inodes; free: {free / 1024**3:.1f} GiB, {st.f_favail} inodes"
    )
    if free < 2 * need:
        raise BenchError(
            f"not enough free space under {work}: {free / 1024**3:.2f} GiB free, want at least twice "
            f"the {need / 1024**3:.2f} GiB that {runs} run directories of {files} × {size} bytes "
            "and the served copy take (fewer --runs/--warmup/--files, or --work-parent elsewhere)"
        )
    if st.f_files and st.f_favail < 2 * need_inodes:  # f_files 0: no inode limit (btrfs, ...)
        raise BenchError(
            f"not enough free inodes under {work}: {st.f_favail} free, want at least twice "
            f"the {need_inodes} that {runs} run directories of {files} files take"
        )


def run_dir(dl: Path, rnd: int, warmup: int, case: str) -> Path:
    """The run's own output directory: dl/w<k>-<case> for warm-up k, dl/r<k>-<case> for run k."""
    return dl / (f"w{rnd + warmup + 1}-{case}" if rnd < 0 else f"r{rnd + 1}-{case}")


# -- connections --------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnCount:
    connections: int
    requests: int
    bad_status: int  # requests not answered 200
    body_bytes: int


class ConnLog:
    """Reads what nginx appended to its per-request log (``$connection $connection_requests
    $status $body_bytes_sent``) since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self, expected: int, wait_s: float = 2.0) -> ConnCount:
        """The requests since ``mark``; waits (untimed) up to ``wait_s`` for ``expected`` lines,
        since nginx logs a request just after the client may have read the last byte."""
        if not self.path.exists():
            return ConnCount(0, 0, 0, 0)
        deadline = time.monotonic() + wait_s
        while True:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                lines = fh.read().decode("ascii", "replace").splitlines()
            if len(lines) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        conns: set[str] = set()
        bad = 0
        body = 0
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            conns.add(parts[0])
            if parts[2] != "200":
                bad += 1
            if parts[3].isdigit():
                body += int(parts[3])
        return ConnCount(len(conns), len(lines), bad, body)


# -- the openbits case --------------------------------------------------------------------------


@dataclass(slots=True)
class JobPhases:
    """One openbits run, phase by phase (wall seconds; daemon CPU seconds)."""

    create_add_s: float  # CreateJob + AddFileSet of N files
    transfer_s: float  # Resume until the job was seen TRANSFERRED
    complete_s: float  # Complete (SetJobState 1)
    create_add_daemon_cpu_s: float
    transfer_daemon_cpu_s: float
    complete_daemon_cpu_s: float
    add_file_ms: dict[str, float]  # latency of the AddFileSet call: median, p90, p99, max, first/last 10%
    polls: int  # GetJob calls while waiting for TRANSFERRED
    get_job_ms: float  # latency of the last of those GetJob calls (the whole job, every file)
    published_early: int  # final names present before Complete (must be 0)


def run_openbits_job(services: Services, data: Dataset, dl: Path, label: str) -> tuple[Timing, JobPhases]:
    """One whole BITS job through the in-process client, timed phase by phase."""
    from openbits.client import Client

    add_lat: list[float] = []
    polls = 0
    get_job_s = 0.0
    cpu0 = time.process_time()
    s0 = Snapshot.take(services)
    with Client(str(services.socket), timeout=RUN_DEADLINE_S) as client:
        job = client.create_job(f"bench_small {label}", priority=0).job_id
        # all files in one AddFileSet call (one commit), as `openbits transfer` does
        a = time.perf_counter()
        client.add_file_set(job, [(data.url(name), str(dl / name)) for name in data.names])
        add_lat.append(time.perf_counter() - a)
        s1 = Snapshot.take(services)
        client.resume(job)
        deadline = time.monotonic() + RUN_DEADLINE_S
        running = (QUEUED, CONNECTING, TRANSFERRING)
        while True:
            a = time.perf_counter()
            # a long poll, as `openbits transfer` waits: answered at the state change, or
            # after 0.25 s (its progress display)
            instance = client.get_job(
                job, include_finished=True, files=False, wait_while=running, wait_timeout=0.25
            )
            get_job_s = time.perf_counter() - a
            polls += 1
            state = int(instance.state)
            if state == TRANSFERRED:
                break
            if state in (ERROR, TRANSIENT_ERROR, CANCELLED, ACKNOWLEDGED):
                detail = ""
                if state in (ERROR, TRANSIENT_ERROR):
                    detail = json.dumps(client.get_error(job).raw)
                raise BenchError(
                    f"openbits: the job went {STATE_NAMES[state]} {detail}\n"
                    f"--- daemon log (tail) ---\n{tail(services.daemon_log)}"
                )
            if time.monotonic() > deadline:
                name = STATE_NAMES.get(state, str(state))
                raise BenchError(f"openbits: the job was still {name} after {RUN_DEADLINE_S:.0f} s")
        s2 = Snapshot.take(services)
        cpu2 = time.process_time()
        # untimed: nothing may carry its final name before Complete
        wanted = set(data.names)
        published_early = sum(1 for n in os.listdir(dl) if n in wanted)
        cpu3 = time.process_time()
        s3 = Snapshot.take(services)
        rc = client.complete(job)
        s4 = Snapshot.take(services)
    cpu4 = time.process_time()
    if rc != 0:
        raise BenchError(f"openbits: Complete returned 0x{rc:08X}")
    # The timing is the three phases, without the untimed check between s2 and s3.
    add, transfer, done = s1.since(s0, 0.0), s2.since(s1, 0.0), s4.since(s3, 0.0)
    parts = (add, transfer, done)
    total = Timing(
        sum(p.wall_s for p in parts),
        (cpu2 - cpu0) + (cpu4 - cpu3),
        sum(p.daemon_cpu_s for p in parts),
        sum(p.nginx_cpu_s for p in parts),
        sum(p.machine_busy_s for p in parts),
    )
    phases = JobPhases(
        create_add_s=add.wall_s,
        transfer_s=transfer.wall_s,
        complete_s=done.wall_s,
        create_add_daemon_cpu_s=add.daemon_cpu_s,
        transfer_daemon_cpu_s=transfer.daemon_cpu_s,
        complete_daemon_cpu_s=done.daemon_cpu_s,
        add_file_ms=latency_ms(add_lat),
        polls=polls,
        get_job_ms=get_job_s * 1000,
        published_early=published_early,
    )
    return total, phases


# -- runs ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    case: str
    index: int  # 0-based; warm-ups are negative
    warmup: bool
    out_dir: str  # the run's own output directory, relative to the work directory
    wall_s: float
    files_per_s: float
    cpu_s: float  # the client (wait4 rusage, or this process for openbits) + for openbits the daemon's
    client_cpu_s: float
    daemon_cpu_s: float  # the daemon's CPU during the run (also measured for the other cases)
    nginx_cpu_s: float
    other_cpu_s: float  # the machine's busy CPU during the run minus client, daemon and nginx
    connections: int  # distinct nginx connections that served the run's requests
    requests: int
    files_ok: int  # output files with the right size
    sha256_checked: int
    sha256_bad: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)
    phases: JobPhases | None = None


def check_output(dl: Path, data: Dataset, sample: int, seed: int) -> tuple[int, list[str], int, list[str]]:
    """(files of the right size, stray names, hashes checked, names whose hash differs)."""
    present = set(os.listdir(dl))
    ok = 0
    for name in data.names:
        try:
            if os.stat(dl / name).st_size == data.size:
                ok += 1
        except OSError:
            pass
    stray = sorted(present - set(data.names))
    rng = random.Random(seed)
    picks = sorted(rng.sample(data.names, min(sample, len(data.names))))
    picks = sorted({data.names[0], data.names[-1], *picks})
    bad = [n for n in picks if n in present and sha256_file(dl / n) != data.sha256[n]]
    return ok, stray, len(picks), bad


def make_cases(
    curl_cfg: Path, urls: Path, data: Dataset, aria2c: str | None, tls: TlsFiles | None = None
) -> list[Case]:
    """The cases; each command list is made for the run's own output directory ``out``.  With
    ``tls`` curl and aria2c trust its CA (the daemon does through its environment)."""
    curl_tls = ["--cacert", str(tls.ca)] if tls else []
    aria2c_tls = [f"--ca-certificate={tls.ca}"] if tls else []
    cases = [
        Case("curl", lambda out: [["curl", "-s", *curl_tls, "--output-dir", str(out), "-K", str(curl_cfg)]]),
        Case(
            "curl+fsync",
            lambda out: [
                ["curl", "-s", *curl_tls, "--output-dir", str(out), "-K", str(curl_cfg)],
                ["sync", str(out), *(str(out / n) for n in data.names)],
            ],
        ),
    ]
    if aria2c:
        cases.append(
            Case(
                "aria2c",
                lambda out: [
                    [
                        aria2c,
                        "-q",
                        "-j1",
                        "-x1",
                        "-s1",
                        "--file-allocation=none",
                        "--allow-overwrite=true",
                        "--auto-file-renaming=false",
                        "--summary-interval=0",
                        *aria2c_tls,
                        "-d",
                        str(out),
                        "-i",
                        str(urls),
                    ]
                ],
            )
        )
    cases.append(Case("openbits", lambda _out: [], uses_daemon=True))  # run in-process
    return cases


def run_rounds(
    args: argparse.Namespace,
    cases: list[Case],
    runner: Runner,
    data: Dataset,
    conn_log: ConnLog,
    runs: list[Run],
    failures: list[str],
    negotiated: dict[str, set[str]],
) -> None:
    """Warm-ups then counted rounds; each round runs every case once, in order, each run into
    its own fresh directory under ``runner.dl_dir`` (none is deleted here: see the docstring).
    Over HTTPS ``negotiated`` collects each case's TLS protocol and cipher as nginx logged them."""
    services = runner.services
    n = len(data.names)
    tls_log = TlsLog(services.tls_log) if services.tls_log is not None else None
    for rnd in range(-args.warmup, args.runs):
        warm = rnd < 0
        for case in cases:
            dl = run_dir(runner.dl_dir, rnd, args.warmup, case.name)
            dl.mkdir()
            untimed_sync()
            conn_log.mark()
            if tls_log is not None:
                tls_log.mark()
            label = "warm-up" if warm else f"run {rnd + 1}/{args.runs}"
            phases: JobPhases | None = None
            if case.name == "openbits":
                t, phases = run_openbits_job(services, data, dl, label)
            else:
                err_path = runner.logs_dir / f"{case.name}-{rnd + args.warmup}.err"
                t = runner.run(case, dl, err_path)
            conns = conn_log.read(n)
            if tls_log is not None:
                negotiated.setdefault(case.name, set()).update(tls_log.read(n))
            ok, stray, checked, bad = check_output(dl, data, args.sample, seed=rnd + 1000)
            run = Run(
                case=case.name,
                index=rnd,
                warmup=warm,
                out_dir=str(dl.relative_to(runner.dl_dir.parent)),
                wall_s=t.wall_s,
                files_per_s=n / t.wall_s,
                cpu_s=t.client_cpu_s + (t.daemon_cpu_s if case.uses_daemon else 0.0),
                client_cpu_s=t.client_cpu_s,
                daemon_cpu_s=t.daemon_cpu_s,
                nginx_cpu_s=t.nginx_cpu_s,
                other_cpu_s=t.other_cpu_s,
                connections=conns.connections,
                requests=conns.requests,
                files_ok=ok,
                sha256_checked=checked,
                sha256_bad=bad,
                stray_files=stray,
                phases=phases,
            )
            runs.append(run)
            notes = [f"{conns.connections} conn, {conns.requests} req"]
            if conns.bad_status:
                notes.append(f"{conns.bad_status} non-200")
            notes.append(f"sha256 {checked - len(bad)}/{checked} ok")
            if stray:
                notes.append(f"{len(stray)} stray files: {', '.join(stray[:3])}")
            if phases is not None:
                notes.append(
                    f"add {phases.create_add_s:.2f} + transfer {phases.transfer_s:.2f}"
                    f" + complete {phases.complete_s:.2f} s; this process {t.client_cpu_s:.2f}"
                    f" + daemon {t.daemon_cpu_s:.2f} CPU s"
                )
            log(
                f"  [{label:>9}] {case.name:<10} {t.wall_s:7.3f} s  {run.files_per_s:6.0f} files/s"
                f"  CPU {run.cpu_s:5.2f} s  nginx {t.nginx_cpu_s:4.2f} s  other {t.other_cpu_s:5.2f} s"
                f"  ({'; '.join(notes)})"
            )
            if ok != n:
                raise BenchError(f"{case.name}: {n - ok} of {n} output files missing or of the wrong size")
            if bad:
                raise BenchError(f"{case.name}: sha256 differs from the source for {', '.join(bad[:5])}")
            if conns.bad_status:
                failures.append(f"{case.name}: {conns.bad_status} requests were not answered 200")
            if case.uses_daemon and stray:
                failures.append(f"{case.name}: left files beside the output: {', '.join(stray[:5])}")
            if phases is not None and phases.published_early:
                failures.append(
                    f"{case.name}: {phases.published_early} files carried their final name before Complete"
                )
            services.check_daemon_alive()


# -- results ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    case: str
    runs: int
    median_wall_s: float
    min_wall_s: float
    max_wall_s: float
    files_per_s: float  # at the median wall time
    median_cpu_s: float
    median_client_cpu_s: float
    median_daemon_cpu_s: float
    median_nginx_cpu_s: float
    median_other_cpu_s: float
    connections: list[int]  # the distinct counts seen over the counted runs
    vs_openbits: float | None  # this case's files/s / openbits' files/s


def summarize(runs: list[Run], cases: list[Case], files: int) -> list[Summary]:
    out: list[Summary] = []
    for case in cases:
        counted = [r for r in runs if r.case == case.name and not r.warmup]
        if counted:
            m = case_medians(counted)
            out.append(
                Summary(
                    case=case.name,
                    files_per_s=files / m["median_wall_s"],
                    connections=sorted({r.connections for r in counted}),
                    vs_openbits=None,
                    **m,
                )
            )
    ob = next((s for s in out if s.case == "openbits"), None)
    if ob is not None:
        for s in out:
            s.vs_openbits = s.files_per_s / ob.files_per_s
    return out


def phase_summary(runs: list[Run], files: int) -> dict[str, Any]:
    counted = [r.phases for r in runs if r.case == "openbits" and not r.warmup and r.phases is not None]
    if not counted:
        return {}

    def med(attr: str) -> float:
        return statistics.median(float(getattr(p, attr)) for p in counted)

    add_ms = {k: statistics.median(p.add_file_ms[k] for p in counted) for k in counted[0].add_file_ms}
    return {
        "create_add_s": med("create_add_s"),
        "transfer_s": med("transfer_s"),
        "complete_s": med("complete_s"),
        "create_add_daemon_cpu_s": med("create_add_daemon_cpu_s"),
        "transfer_daemon_cpu_s": med("transfer_daemon_cpu_s"),
        "complete_daemon_cpu_s": med("complete_daemon_cpu_s"),
        "add_file_ms": add_ms,
        "polls": med("polls"),
        "get_job_ms": med("get_job_ms"),
        "files": files,
    }


def render_table(summaries: list[Summary]) -> str:
    rows = [
        [
            "case",
            "median wall s (min–max)",
            "files/s",
            "CPU s",
            "nginx CPU s",
            "other CPU s",
            "conns",
            "files/s ÷ openbits",
        ]
    ]
    for s in summaries:
        cpu = f"{s.median_cpu_s:.2f}"
        if s.case == "openbits":
            cpu += f" (client {s.median_client_cpu_s:.2f} + daemon {s.median_daemon_cpu_s:.2f})"
        rows.append(
            [
                s.case,
                f"{s.median_wall_s:.3f} ({s.min_wall_s:.3f}–{s.max_wall_s:.3f})",
                f"{s.files_per_s:.0f}",
                cpu,
                f"{s.median_nginx_cpu_s:.2f}",
                f"{s.median_other_cpu_s:.2f}",
                ",".join(str(c) for c in s.connections),
                "–" if s.vs_openbits is None else f"{s.vs_openbits:.2f}",
            ]
        )
    return render_rows(rows)


def creation_probe(work: Path, size: int) -> float:
    """µs to create, write ``size`` bytes to and close one new file in a fresh directory beside
    the runs': what every case pays per file here.  On this machine's ext4 (no journal) it is
    10–30× dearer near files deleted in the last minutes (bench/README), and the ratios move
    with it: openbits creates files on two cores, curl on one."""
    probe = work / "dl" / "creation-probe"
    probe.mkdir(parents=True)
    data = os.urandom(size)
    started = time.perf_counter()
    for i in range(PROBE_FILES):
        fd = os.open(probe / f"p{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return (time.perf_counter() - started) / PROBE_FILES * 1e6


def probe_note(us: float) -> str:
    return (
        f"file creation here: {us:.0f} µs a file (create + write + close, {PROBE_FILES} files; "
        "a fresh area of this disk takes ~15–35 µs, one near recent deletions 150–700 µs)"
    )


def render_phases(ph: dict[str, Any]) -> str:
    n = ph["files"]
    total = ph["create_add_s"] + ph["transfer_s"] + ph["complete_s"]
    rows = [["openbits phase", "median wall s", "share", "ms per file", "daemon CPU s"]]
    for label, key in (
        (f"CreateJob + AddFileSet of {n}", "create_add"),
        ("Resume → TRANSFERRED", "transfer"),
        ("Complete", "complete"),
    ):
        wall = ph[f"{key}_s"]
        rows.append(
            [
                label,
                f"{wall:.3f}",
                f"{wall / total:.0%}" if total else "–",
                f"{wall / n * 1000:.2f}",
                f"{ph[f'{key}_daemon_cpu_s']:.2f}",
            ]
        )
    a = ph["add_file_ms"]
    return (
        render_rows(rows)
        + f"\nAddFileSet latency ms: median {a['median']:.2f}, p90 {a['p90']:.2f}, p99 {a['p99']:.2f}, "
        f"max {a['max']:.1f}; mean of the first 10% {a['mean_first_10pct']:.2f} vs the last 10% "
        f"{a['mean_last_10pct']:.2f}"
        + f"\nwaiting for TRANSFERRED: {ph['polls']:.0f} GetJob polls (20→50 ms apart, as `openbits "
        f"transfer`); one GetJob of the {n}-file job took {ph['get_job_ms']:.1f} ms"
    )


def ratio_lines_small(summaries: list[Summary], ph: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    by = {s.case: s for s in summaries}
    lines, ratios = ratio_lines({s.case: s.files_per_s for s in summaries}, "files/s", TARGETS)
    if ph and "openbits" in by and "curl" in by:
        r = by["curl"].median_wall_s / ph["transfer_s"]
        ratios["openbits_transfer_phase/curl"] = r
        lines.append(
            f"openbits transfer phase alone (Resume → TRANSFERRED) vs curl: {r:.2f} "
            "(the job's API calls and Complete excluded)"
        )
    return lines, ratios


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--files", type=int, default=2000, help="number of files (default 2000)")
    p.add_argument("--size", type=int, default=16 * KIB, help="bytes per file (default 16384)")
    p.add_argument("--runs", type=int, default=5, help="counted runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument(
        "--sample", type=int, default=64, help="files whose sha256 is checked after every run (default 64)"
    )
    add_keep_arg(p, "files, logs, state")
    add_https_arg(p)
    add_cases_arg(p, CASE_NAMES)
    add_output_args(p, JSON_PATH, "(default bench/out/)")
    args = parse_common_args(p, argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 1 or args.files < 1 or args.sample < 0:
        p.error("need --runs ≥ 1, --warmup ≥ 0, --files ≥ 1, --size ≥ 1 and --sample ≥ 0")
    args.cases = parse_cases(p, args.cases, CASE_NAMES)
    return args


def print_report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    summaries: list[Summary],
    ph: dict[str, Any],
    tls_note: str = "",
) -> dict[str, float]:
    log("")
    log(
        f"{summaries[0].runs} counted run(s) per case after {args.warmup} warm-up round(s); "
        f"{args.files} files × {args.size} bytes from nginx on 127.0.0.1{tls_note}, each run into its "
        "own fresh directory"
    )
    log(
        "(nothing deleted between runs: after a mass delete + sync, ext4 scans the recently deleted "
        "inodes on every file creation; fresh directories measure the transfer, not that)"
    )
    log_machine_line(machine)
    log_loadavg_line(machine)
    log("")
    log(render_table(summaries))
    log("")
    lines, ratios = ratio_lines_small(summaries, ph)
    for line in lines:
        log(line)
    if ph:
        log("")
        log(render_phases(ph))
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("bench_small", clients=True)
    if tools is None:
        return 2
    session = Session("bench_small", args, ["www", "dl", "logs"])
    # The work directory, with every run's output directory, goes only after the report and the
    # results file (not while the services stop); SIGTERM/SIGHUP unwind to here as Ctrl-C does.
    try:
        with exit_on_signals():
            return bench(args, tools, session)
    finally:
        if not session.keep:
            log(f"removing {session.work} (every run's output directory) ...")
        session.remove_work()


def bench(args: argparse.Namespace, tools: Tools, session: Session) -> int:
    work = session.work
    dl = work / "dl"
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env, conn_log=True)
    runner = Runner(services, dl, work / "logs")
    runs: list[Run] = []
    cases: list[Case] = []
    vers: dict[str, str] = {}
    daemon_settings = {**RAISED_LIMITS, **args.daemon_setting}
    negotiated: dict[str, set[str]] = {}
    probe_us: float | None = None
    with session.guard(
        lambda: session.stop_services(services, runner), catch_unexpected=True, remove_at_exit=False
    ):
        session.log_start()
        vers = versions(tools.nginx, tools.aria2c, tools.venv_python)
        log_versions(vers)
        if args.https:
            services.use_tls(make_tls(work))
        n_cases = sum(1 for c in args.cases if c != "aria2c" or tools.aria2c is not None)
        check_free_space(work, args.files, args.size, (args.warmup + args.runs) * n_cases)
        log(f"writing {args.files} random files of {args.size} bytes ...")
        data = write_dataset(work / "www" / "small", args.files, args.size)
        untimed_sync()
        first = f"/small/{data.names[0]}"
        url = services.start_nginx(first, args.size)
        data.url_base = url.removesuffix(first) + "/small"
        log(f"nginx serving {data.url_base}/ ({data.names[0]} … {data.names[-1]})")
        if services.tls is not None:
            log(
                f"TLS: {services.tls.certificate} certificate from a trustme CA; the probe got "
                f"{services.tls_probe}; curl --cacert, aria2c --ca-certificate and the daemon's "
                f"SSL_CERT_FILE name {services.tls.ca}"
            )
        conn_log = ConnLog(work / "conn.log")
        config = write_daemon_config(work / "openbits.toml", daemon_settings)
        services.start_daemon(config)
        log(f"openbits daemon on {services.socket}, config: {json.dumps(daemon_settings)}")
        log_daemon_env(args.daemon_env)
        if "aria2c" in args.cases and tools.aria2c is None:
            log("aria2c not installed: case skipped")
        probe_us = creation_probe(work, args.size)
        log(probe_note(probe_us))
        curl_cfg, urls = write_client_lists(work, data)
        all_cases = make_cases(curl_cfg, urls, data, tools.aria2c, services.tls)
        cases = [c for c in all_cases if c.name in args.cases]
        log(
            f"{args.warmup} warm-up + {args.runs} counted run(s) per case, round-robin: "
            + ", ".join(c.name for c in cases)
        )
        run_rounds(args, cases, runner, data, conn_log, runs, session.failures, negotiated)
    if session.interrupted:
        return 130

    summaries = summarize(runs, cases, args.files)
    ph = phase_summary(runs, args.files)
    ratios: dict[str, float] = {}
    tls: dict[str, Any] = {}
    if summaries:
        if session.failures:
            log("\nWARNING: the run did not finish cleanly; the figures below may be incomplete")
        ratios = print_report(args, session.machine, summaries, ph, services.tls_note())
        log_busy_note((s.median_other_cpu_s, s.median_wall_s) for s in summaries)
        if services.tls is not None:
            tls = log_tls_negotiated(services, negotiated)
        log(f"openbits daemon exit status after SIGTERM: {session.daemon_rc}")
        if probe_us is not None:
            log(probe_note(probe_us))
    json_args: dict[str, Any] = {
        "files": args.files,
        "size": args.size,
        "runs": args.runs,
        "warmup": args.warmup,
        "sample": args.sample,
        "cases": args.cases,
        "daemon_env": args.daemon_env,
        "daemon_settings": daemon_settings,
    }
    extra: dict[str, Any] = {}
    if args.https:  # only then, so plain-HTTP results keep their shape
        json_args["https"] = True
        extra["tls"] = tls
    return session.finish(
        args.json,
        json_args,
        vers,
        summary=[asdict(s) for s in summaries],
        openbits_phases=ph,
        creation_probe_us=probe_us,
        ratios=ratios,
        runs=[asdict(r) for r in runs],
        daemon_exit_status=session.daemon_rc,
        **extra,
    )


if __name__ == "__main__":
    sys.exit(main())
