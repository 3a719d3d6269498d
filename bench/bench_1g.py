#!/usr/bin/env python3
"""1 GiB over loopback HTTP: curl, curl+fsync, aria2c and openbits, alternated run by run,
beside the disk's own figure (``dd conv=fdatasync`` of the same size to the same directory).

Run from the repository root (``make bench`` does this)::

    .venv/bin/python bench/bench_1g.py [--runs N] [--warmup N] [--size BYTES] [--keep] [--https]

One invocation writes a random test file, starts its own nginx on a free 127.0.0.1
port and its own openbits daemon, then times each case round-robin (every run is
preceded by deleting the previous output and an untimed ``sync``).  It prints a
table of medians and throughput ratios and writes ``bench/out/bench_1g.json``.
With ``--https`` nginx serves over TLS with a throw-away trustme CA that every client
is told to trust (nothing skips verification).
It cleans up as ``common.Session`` says.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    GIB,
    OUT_DIR,
    BenchError,
    Case,
    OutputWatcher,
    Runner,
    Services,
    Session,
    TlsFiles,
    TlsLog,
    add_cases_arg,
    add_https_arg,
    add_keep_arg,
    add_output_args,
    case_medians,
    find_tools,
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
    write_random_file,
)

JSON_PATH = OUT_DIR / "bench_1g.json"
CASE_NAMES = ("dd", "curl", "curl+fsync", "aria2c", "openbits")
#: issue 15's goals for openbits' rate against each peer
TARGETS = {"curl": 1.0, "curl+fsync": 1.5, "aria2c": 1.5}
#: cases whose output is not the served file (no sha256 check)
NOT_THE_FILE = frozenset({"dd"})


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


def make_cases(
    url: str,
    venv_bin: Path,
    socket_path: Path,
    aria2c: str | None,
    size: int,
    tls: TlsFiles | None = None,
) -> list[Case]:
    """The cases; with ``tls`` curl and aria2c trust its CA (the daemon does through its env).
    ``dd`` is the disk's own floor: ``size`` zero bytes written in 4 MiB blocks to the same
    directory, then one ``fdatasync`` (no network, no copy from a socket)."""
    openbits_cli = str(venv_bin / "openbits")
    curl_tls = ["--cacert", str(tls.ca)] if tls else []
    aria2c_tls = [f"--ca-certificate={tls.ca}"] if tls else []
    dd = ["dd", "if=/dev/zero", "bs=4M", f"count={size}", "iflag=count_bytes", "conv=fdatasync"]
    cases = [
        Case("dd", lambda out: [[*dd, f"of={out}", "status=none"]]),
        Case("curl", lambda out: [["curl", "-s", *curl_tls, "-o", str(out), url]]),
        Case(
            "curl+fsync",
            lambda out: [["curl", "-s", *curl_tls, "-o", str(out), url], ["sync", "--data", str(out)]],
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
                        *aria2c_tls,
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
        if counted:
            m = case_medians(counted)
            out.append(Summary(case=case.name, mbps=size / m["median_wall_s"] / 1e6, vs_openbits=None, **m))
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


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--runs", type=int, default=5, help="counted runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--size", type=int, default=GIB, help="test file size in bytes (default 1 GiB)")
    add_keep_arg(p, "files, logs, state")
    add_https_arg(p)
    add_cases_arg(p, CASE_NAMES)
    add_output_args(p, JSON_PATH, "(default bench/out/; must have 2 x size free)")
    args = parse_common_args(p, argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 1:
        p.error("need --runs ≥ 1, --warmup ≥ 0 and --size ≥ 1")
    args.cases = parse_cases(p, args.cases, CASE_NAMES)
    return args


def run_rounds(
    args: argparse.Namespace,
    cases: list[Case],
    runner: Runner,
    source_sha: str,
    runs: list[Run],
    failures: list[str],
    negotiated: dict[str, set[str]],
) -> None:
    """Warm-ups then counted rounds; each round runs every case once, in order.  Over HTTPS
    ``negotiated`` collects each case's TLS protocol and cipher as nginx logged them."""
    services = runner.services
    out = runner.dl_dir / "out.bin"
    checked: set[str] = set()
    tls_log = TlsLog(services.tls_log) if services.tls_log is not None else None
    for rnd in range(-args.warmup, args.runs):
        warm = rnd < 0
        for case in cases:
            runner.clear_output()
            untimed_sync()
            err_path = runner.logs_dir / f"{case.name}-{rnd + args.warmup}.err"
            if tls_log is not None:
                tls_log.mark()
            with OutputWatcher(out, args.size) as watcher:
                t = runner.run(case, out, err_path)
            if tls_log is not None:
                negotiated.setdefault(case.name, set()).update(tls_log.read())
            wall, client_cpu, daemon_cpu = t.wall_s, t.client_cpu_s, t.daemon_cpu_s
            size_ok = out.exists() and out.stat().st_size == args.size
            sha_ok: bool | None = None
            if size_ok and case.name not in checked and case.name not in NOT_THE_FILE:
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
    args: argparse.Namespace, machine: dict[str, Any], summaries: list[Summary], tls_note: str = ""
) -> dict[str, float]:
    log("")
    log(
        f"{summaries[0].runs} counted run(s) per case after {args.warmup} warm-up round(s); "
        f"{args.size} bytes ({args.size / GIB:.3g} GiB) from nginx on 127.0.0.1{tls_note}"
    )
    log_machine_line(machine)
    log_loadavg_line(machine)
    log("")
    log(render_table(summaries))
    log("")
    lines, ratios = ratio_lines({s.case: s.mbps for s in summaries}, "throughput", TARGETS)
    for line in lines:
        log(line)
    for line in floor_lines(summaries, args.size, ratios):
        log(line)
    return ratios


def floor_lines(summaries: list[Summary], size: int, ratios: dict[str, float]) -> list[str]:
    """openbits against the disk's own figure (dd) and its daemon's CPU seconds per GiB
    (added to ``ratios`` as ``openbits/dd`` and ``daemon_cpu_s_per_gib``)."""
    by_case = {s.case: s for s in summaries}
    ob, dd = by_case.get("openbits"), by_case.get("dd")
    lines: list[str] = []
    if ob is not None and dd is not None:
        ratios["openbits/dd"] = r = ob.mbps / dd.mbps
        lines.append(
            f"openbits/dd throughput ratio = {r:.2f} (the disk's own figure: {dd.mbps:.0f} MB/s; "
            "dd writes, then syncs once, so a download whose syncs overlap it can beat it)"
        )
    if ob is not None:
        ratios["daemon_cpu_s_per_gib"] = per = ob.median_daemon_cpu_s / (size / GIB)
        lines.append(f"openbits daemon CPU per GiB: {per:.2f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli = Path(sys.executable).parent / "openbits"
    tools = find_tools(
        "bench_1g",
        clients=True,
        venv_hint=f"{cli} not found: run this with the project's venv python (make venv)",
    )
    if tools is None:
        return 2
    session = Session("bench_1g", args, ["www", "dl", "logs"])
    work = session.work
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env)
    runner = Runner(services, work / "dl", work / "logs")
    runs: list[Run] = []
    cases: list[Case] = []
    vers: dict[str, str] = {}
    negotiated: dict[str, set[str]] = {}
    with session.guard(lambda: session.stop_services(services, runner)):
        session.log_start()
        vers = versions(tools.nginx, tools.aria2c, tools.venv_python)
        log_versions(vers)
        if args.https:
            services.use_tls(make_tls(work))
        log(f"writing {args.size} random bytes ...")
        source_sha = write_random_file(work / "www" / "test.bin", args.size)
        untimed_sync()
        url = services.start_nginx("/test.bin", args.size)
        log(f"nginx serving {url}")
        if services.tls is not None:
            log(
                f"TLS: {services.tls.certificate} certificate from a trustme CA; the probe got "
                f"{services.tls_probe}; curl --cacert, aria2c --ca-certificate and the daemon's "
                f"SSL_CERT_FILE name {services.tls.ca}"
            )
        config = (
            write_daemon_config(work / "openbits.toml", args.daemon_setting) if args.daemon_setting else None
        )
        services.start_daemon(config)
        log(f"openbits daemon on {services.socket}, settings: {json.dumps(args.daemon_setting)}")
        log_daemon_env(args.daemon_env)
        if "aria2c" in args.cases and tools.aria2c is None:
            log("aria2c not installed: case skipped")
        all_cases = make_cases(url, tools.venv_bin, services.socket, tools.aria2c, args.size, services.tls)
        cases = [c for c in all_cases if c.name in args.cases]
        log(
            f"{args.warmup} warm-up + {args.runs} counted run(s) per case, round-robin: "
            + ", ".join(c.name for c in cases)
        )
        run_rounds(args, cases, runner, source_sha, runs, session.failures, negotiated)
    if session.interrupted:
        return 130

    summaries = summarize(runs, cases, args.size)
    ratios: dict[str, float] = {}
    tls: dict[str, Any] = {}
    if summaries:
        if session.failures:
            log("\nWARNING: the run did not finish cleanly; the figures below may be incomplete")
        ratios = print_report(args, session.machine, summaries, services.tls_note())
        log_busy_note((s.median_other_cpu_s, s.median_wall_s) for s in summaries)
        if services.tls is not None:
            tls = log_tls_negotiated(services, negotiated)
        log(f"openbits daemon exit status after SIGTERM: {session.daemon_rc}")
    json_args: dict[str, Any] = {
        "runs": args.runs,
        "warmup": args.warmup,
        "size": args.size,
        "cases": args.cases,
        "daemon_env": args.daemon_env,
        "daemon_settings": args.daemon_setting,
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
        ratios=ratios,
        runs=[asdict(r) for r in runs],
        daemon_exit_status=session.daemon_rc,
        **extra,
    )


if __name__ == "__main__":
    sys.exit(main())
