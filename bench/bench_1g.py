#!/usr/bin/env python3
"""1 GiB over loopback HTTP: curl, curl+fsync, aria2c and openbits, alternated run by run.

Run from the repository root (``make bench`` does this)::

    .venv/bin/python bench/bench_1g.py [--runs N] [--warmup N] [--size BYTES] [--keep]

One invocation writes a random test file, starts its own nginx on a free 127.0.0.1
port and its own openbits daemon, then times each case round-robin (every run is
preceded by deleting the previous output and an untimed ``sync``).  It prints a
table of medians and throughput ratios and writes ``bench/out/bench_1g.json``.
Everything it started is stopped, and its work directory removed (unless --keep),
on success, failure, Ctrl-C or SIGTERM.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    GIB,
    MIB,
    OUT_DIR,
    BenchError,
    Case,
    Runner,
    Services,
    add_daemon_env_arg,
    exit_on_signals,
    find_program,
    loadavg,
    log,
    machine_info,
    parse_daemon_env,
    render_rows,
    sha256_file,
    tail,
    untimed_sync,
    versions,
)

JSON_PATH = OUT_DIR / "bench_1g.json"
CASE_NAMES = ("curl", "curl+fsync", "aria2c", "openbits")


# -- timed runs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    case: str
    index: int  # 0-based; warm-ups are negative
    warmup: bool
    wall_s: float
    cpu_s: float  # the client processes (wait4 rusage) + for openbits the daemon's delta
    client_cpu_s: float
    daemon_cpu_s: float  # the daemon's CPU during the run (also measured for the other cases)
    nginx_cpu_s: float
    other_cpu_s: float  # the machine's busy CPU during the run minus client, daemon and nginx
    size_ok: bool
    sha256_ok: bool | None  # None: not checked on this run
    visible_partial: bool  # the output was seen with fewer bytes than the whole while running
    stray_files: list[str] = field(default_factory=list)


class OutputWatcher:
    """Polls the output path while a command runs: was it ever visible with a partial size?"""

    def __init__(self, path: Path, size: int, interval_s: float = 0.01) -> None:
        self.path = path
        self.size = size
        self.interval_s = interval_s
        self.partial = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="watch-output", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                st = os.stat(self.path)
            except OSError:
                continue
            if st.st_size != self.size:
                self.partial = True
                return

    def __enter__(self) -> OutputWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_cases(url: str, venv_bin: Path, socket_path: Path, aria2c: str | None) -> list[Case]:
    openbits_cli = str(venv_bin / "openbits")
    cases = [
        Case("curl", lambda out: [["curl", "-s", "-o", str(out), url]]),
        Case(
            "curl+fsync",
            lambda out: [["curl", "-s", "-o", str(out), url], ["sync", "--data", str(out)]],
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
                        "-x1",
                        "-s1",
                        "-k1M",
                        "--allow-overwrite=true",
                        "--auto-file-renaming=false",
                        "--summary-interval=0",
                        "--file-allocation=falloc",
                        "-d",
                        str(out.parent),
                        "-o",
                        out.name,
                        url,
                    ]
                ],
            )
        )
    cases.append(
        Case(
            "openbits",
            lambda out: [[openbits_cli, "transfer", "-q", url, str(out)]],
            env={"OPENBITS_SOCKET": str(socket_path)},
            uses_daemon=True,
        )
    )
    return cases


# -- results ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    case: str
    runs: int
    median_wall_s: float
    min_wall_s: float
    max_wall_s: float
    mbps: float  # 10^6 bytes/s at the median wall time
    median_cpu_s: float
    median_client_cpu_s: float
    median_daemon_cpu_s: float
    median_nginx_cpu_s: float
    median_other_cpu_s: float
    vs_openbits: float | None  # this case's throughput / openbits' throughput


def summarize(runs: list[Run], cases: list[Case], size: int) -> list[Summary]:
    out: list[Summary] = []
    for case in cases:
        counted = [r for r in runs if r.case == case.name and not r.warmup]
        if not counted:
            continue
        walls = [r.wall_s for r in counted]
        med = statistics.median(walls)
        out.append(
            Summary(
                case=case.name,
                runs=len(counted),
                median_wall_s=med,
                min_wall_s=min(walls),
                max_wall_s=max(walls),
                mbps=size / med / 1e6,
                median_cpu_s=statistics.median(r.cpu_s for r in counted),
                median_client_cpu_s=statistics.median(r.client_cpu_s for r in counted),
                median_daemon_cpu_s=statistics.median(r.daemon_cpu_s for r in counted),
                median_nginx_cpu_s=statistics.median(r.nginx_cpu_s for r in counted),
                median_other_cpu_s=statistics.median(r.other_cpu_s for r in counted),
                vs_openbits=None,
            )
        )
    ob = next((s for s in out if s.case == "openbits"), None)
    if ob is not None:
        for s in out:
            s.vs_openbits = s.mbps / ob.mbps
    return out


def render_table(summaries: list[Summary]) -> str:
    header = [
        "case",
        "median wall s (min–max)",
        "MB/s",
        "CPU s",
        "nginx CPU s",
        "other CPU s",
        "MB/s ÷ openbits",
    ]
    rows = [header]
    for s in summaries:
        cpu = f"{s.median_cpu_s:.2f}"
        if s.case == "openbits":
            cpu += f" (cli {s.median_client_cpu_s:.2f} + daemon {s.median_daemon_cpu_s:.2f})"
        rows.append(
            [
                s.case,
                f"{s.median_wall_s:.3f} ({s.min_wall_s:.3f}–{s.max_wall_s:.3f})",
                f"{s.mbps:.0f}",
                cpu,
                f"{s.median_nginx_cpu_s:.2f}",
                f"{s.median_other_cpu_s:.2f}",
                "–" if s.vs_openbits is None else f"{s.vs_openbits:.2f}",
            ]
        )
    return render_rows(rows)


def ratio_lines(summaries: list[Summary]) -> tuple[list[str], dict[str, float]]:
    by = {s.case: s for s in summaries}
    ob = by.get("openbits")
    lines: list[str] = []
    ratios: dict[str, float] = {}
    if ob is None:
        return lines, ratios
    if "curl" in by:
        r = ob.mbps / by["curl"].mbps
        ratios["openbits/curl"] = r
        verdict = "met" if r >= 1.0 else "NOT met"
        lines.append(f"openbits/curl throughput ratio = {r:.2f} (target ≥ 1.0: {verdict})")
    if "curl+fsync" in by:
        r = ob.mbps / by["curl+fsync"].mbps
        ratios["openbits/curl+fsync"] = r
        lines.append(
            f"openbits/curl+fsync throughput ratio = {r:.2f} (like-for-like: both durable on return)"
        )
    if "aria2c" in by:
        r = ob.mbps / by["aria2c"].mbps
        ratios["openbits/aria2c"] = r
        lines.append(f"openbits/aria2c throughput ratio = {r:.2f}")
    return lines, ratios


# -- main ---------------------------------------------------------------------------------------


def write_source(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as fh:
        while left:
            block = os.urandom(min(4 * MIB, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="counted runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--size", type=int, default=GIB, help="test file size in bytes (default 1 GiB)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (files, logs, state)")
    p.add_argument(
        "--cases", default=",".join(CASE_NAMES), help=f"comma-separated subset of {','.join(CASE_NAMES)}"
    )
    p.add_argument(
        "--work-parent",
        type=Path,
        default=OUT_DIR,
        help="where the work directory is made (default bench/out/; must have 2 x size free)",
    )
    p.add_argument(
        "--json", type=Path, default=JSON_PATH, help="results file (default bench/out/bench_1g.json)"
    )
    add_daemon_env_arg(p)
    args = p.parse_args(argv)
    args.daemon_env = parse_daemon_env(p, args.daemon_env)
    if args.runs < 1 or args.warmup < 0 or args.size < 1:
        p.error("need --runs ≥ 1, --warmup ≥ 0 and --size ≥ 1")
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CASE_NAMES))
    if unknown:
        p.error(f"unknown case(s): {', '.join(unknown)}")
    args.cases = wanted
    return args


def run_rounds(
    args: argparse.Namespace,
    cases: list[Case],
    runner: Runner,
    source_sha: str,
    runs: list[Run],
    failures: list[str],
) -> None:
    """Warm-ups then counted rounds; each round runs every case once, in order."""
    services = runner.services
    out = runner.dl_dir / "out.bin"
    checked: set[str] = set()
    for rnd in range(-args.warmup, args.runs):
        warm = rnd < 0
        for case in cases:
            runner.clear_output()
            untimed_sync()
            err_path = runner.logs_dir / f"{case.name}-{rnd + args.warmup}.err"
            with OutputWatcher(out, args.size) as watcher:
                t = runner.run(case, out, err_path)
            wall, client_cpu, daemon_cpu = t.wall_s, t.client_cpu_s, t.daemon_cpu_s
            size_ok = out.exists() and out.stat().st_size == args.size
            sha_ok: bool | None = None
            if size_ok and case.name not in checked:
                sha_ok = sha256_file(out) == source_sha
                checked.add(case.name)
            stray = sorted(p.name for p in runner.dl_dir.iterdir() if p.name != out.name)
            run = Run(
                case=case.name,
                index=rnd,
                warmup=warm,
                wall_s=wall,
                cpu_s=client_cpu + (daemon_cpu if case.uses_daemon else 0.0),
                client_cpu_s=client_cpu,
                daemon_cpu_s=daemon_cpu,
                nginx_cpu_s=t.nginx_cpu_s,
                other_cpu_s=t.other_cpu_s,
                size_ok=size_ok,
                sha256_ok=sha_ok,
                visible_partial=watcher.partial,
                stray_files=stray,
            )
            runs.append(run)
            notes = []
            if sha_ok is not None:
                notes.append("sha256 ok" if sha_ok else "SHA256 MISMATCH")
            if watcher.partial:
                notes.append("partial output was visible")
            if stray:
                notes.append(f"stray files: {', '.join(stray)}")
            if case.uses_daemon:
                notes.append(f"cli {client_cpu:.2f} + daemon {daemon_cpu:.2f} CPU s")
            label = "warm-up" if warm else f"run {rnd + 1}/{args.runs}"
            mbps = args.size / wall / 1e6
            log(
                f"  [{label:>9}] {case.name:<11} {wall:7.3f} s  {mbps:6.0f} MB/s"
                f"  CPU {run.cpu_s:5.2f} s  nginx {t.nginx_cpu_s:4.2f} s  other {t.other_cpu_s:4.2f} s"
                + (f"  ({'; '.join(notes)})" if notes else "")
            )
            if not size_ok:
                size = out.stat().st_size if out.exists() else None
                raise BenchError(f"{case.name}: output size {size}, expected {args.size}")
            if sha_ok is False:
                raise BenchError(f"{case.name}: sha256 of the output differs from the source's")
            if case.uses_daemon and watcher.partial:
                failures.append(f"{case.name}: the output was visible before it was complete")
            if case.uses_daemon and stray:
                failures.append(f"{case.name}: left files beside the output: {', '.join(stray)}")
            if services.daemon is not None and services.daemon.poll() is not None:
                raise BenchError(f"the openbits daemon died:\n{tail(services.daemon_log)}")
    runner.clear_output()


def print_report(
    args: argparse.Namespace, machine: dict[str, Any], summaries: list[Summary], daemon_rc: int | None
) -> dict[str, float]:
    fs = machine["work_fs"]
    log("")
    log(
        f"{summaries[0].runs} counted run(s) per case after {args.warmup} warm-up round(s); "
        f"{args.size} bytes ({args.size / GIB:.3g} GiB) from nginx on 127.0.0.1"
    )
    log(
        f"machine: nproc {machine['nproc']}, {machine['cpu_model']}, {machine['mem_gib']} GiB RAM, "
        f"kernel {machine['kernel']}, work dir on {fs['type']} ({fs['device']} at {fs['mount']})"
    )
    log(
        f"load average (1, 5, 15 min) at start: {machine['loadavg_start']}, "
        f"at end: {machine.get('loadavg_end', '?')}"
    )
    log("")
    log(render_table(summaries))
    log("")
    lines, ratios = ratio_lines(summaries)
    for line in lines:
        log(line)
    busy = max(
        (s.median_other_cpu_s / s.median_wall_s for s in summaries if s.median_other_cpu_s > 0.1), default=0.0
    )
    if busy > 0.25:
        log(
            f"note: other CPU reached {busy:.0%} of a case's median wall time: something else was using "
            "the machine (or the kernel was writing back); rerun on an idle machine before trusting ratios"
        )
    log(f"openbits daemon exit status after SIGTERM: {daemon_rc}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nginx = find_program("nginx")
    if nginx is None:
        log("nginx not found (apt-get install nginx, or `make bench`)")
        return 2
    if find_program("curl") is None:
        log("curl not found")
        return 2
    aria2c = find_program("aria2c")
    venv_bin = Path(sys.executable).parent
    venv_python = str(venv_bin / "python") if (venv_bin / "python").exists() else sys.executable
    if not (venv_bin / "openbits").exists():
        log(f"{venv_bin / 'openbits'} not found: run this with the project's venv python (make venv)")
        return 2

    args.work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_1g-", dir=args.work_parent)).resolve()
    www, dl, logs_dir = work / "www", work / "dl", work / "logs"
    for d in (www, dl, logs_dir):
        d.mkdir()
    services = Services(work, nginx, venv_python, args.daemon_env)
    runner = Runner(services, dl, logs_dir)
    failures: list[str] = []
    runs: list[Run] = []
    cases: list[Case] = []
    vers: dict[str, str] = {}
    daemon_rc: int | None = None
    interrupted = False
    machine = machine_info(work)
    machine["loadavg_start"] = loadavg()
    fs = machine["work_fs"]
    try:
        with exit_on_signals():
            try:
                log(
                    f"machine: nproc {machine['nproc']} ({machine['cpu_model']}), {machine['mem_gib']} GiB, "
                    f"kernel {machine['kernel']}, {machine['os']}"
                )
                log(f"work dir: {work} on {fs['type']} ({fs['device']} at {fs['mount']})")
                log(f"load average: {machine['loadavg_start']}")
                vers = versions(nginx, aria2c, venv_python)
                log("versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items()))
                log(f"writing {args.size} random bytes ...")
                source_sha = write_source(www / "test.bin", args.size)
                untimed_sync()
                url = services.start_nginx("/test.bin", args.size)
                log(f"nginx serving {url}")
                services.start_daemon()
                log(f"openbits daemon on {services.socket}")
                if args.daemon_env:
                    log("daemon environment: " + " ".join(f"{k}={v}" for k, v in args.daemon_env.items()))
                if "aria2c" in args.cases and aria2c is None:
                    log("aria2c not installed: case skipped")
                cases = [
                    c for c in make_cases(url, venv_bin, services.socket, aria2c) if c.name in args.cases
                ]
                log(
                    f"{args.warmup} warm-up + {args.runs} counted run(s) per case, round-robin: "
                    + ", ".join(c.name for c in cases)
                )
                run_rounds(args, cases, runner, source_sha, runs, failures)
                machine["loadavg_end"] = loadavg()
            except BenchError as e:
                failures.append(str(e))
            except (KeyboardInterrupt, SystemExit):
                interrupted = True
                log("interrupted: cleaning up")
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_IGN)  # cleanup is bounded by timeouts; finish it
                runner.kill_current()
                daemon_started = services.daemon is not None
                daemon_rc = services.stop_daemon()
                services.stop_nginx()
                services.close_logs()
                if daemon_started and daemon_rc != 0 and not interrupted:
                    failures.append(
                        f"openbits serve exited with {daemon_rc} after SIGTERM (expected 0):\n"
                        f"{tail(services.daemon_log)}"
                    )
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        return 130

    summaries = summarize(runs, cases, args.size)
    if summaries and failures:
        log("\nWARNING: the run did not finish cleanly; the figures below may be incomplete")
    ratios = print_report(args, machine, summaries, daemon_rc) if summaries else {}
    result = {
        "benchmark": "bench_1g",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {
            "runs": args.runs,
            "warmup": args.warmup,
            "size": args.size,
            "cases": args.cases,
            "daemon_env": args.daemon_env,
        },
        "machine": machine,
        "versions": vers,
        "summary": [asdict(s) for s in summaries],
        "ratios": ratios,
        "runs": [asdict(r) for r in runs],
        "daemon_exit_status": daemon_rc,
        "failures": failures,
        "ok": not failures,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results: {args.json}")
    for f in failures:
        log(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
