#!/usr/bin/env python3
"""1 GiB uploaded over loopback HTTP: curl -T to nginx (WebDAV PUT), the same + sync, openbits
upload to openbits upload-server, and dd as the disk's write floor, alternated run by run.

Run from the repository root (``make bench-upload`` does this)::

    .venv/bin/python bench/bench_upload.py [--runs N] [--warmup N] [--size BYTES] [--cases ...] [--keep]

One invocation writes a random test file, starts its own nginx with a WebDAV PUT location,
its own ``openbits upload-server`` and its own openbits daemon (each on a free 127.0.0.1 port
or socket, in its own session), then times each case round-robin (every run is preceded by
deleting every case's previous output and an untimed ``sync``).  It prints a table of medians,
throughput ratios against ``curl+sync`` (the durable peer of openbits) and CPU seconds per GiB,
and writes ``bench/out/bench_upload.json``.  A case whose tools are missing is skipped, said
why; the exit status is 2 only when no case can run.  It cleans up as ``common.Session`` says.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
    Timing,
    UploadServer,
    add_cases_arg,
    add_keep_arg,
    add_output_args,
    case_medians,
    clear_dir,
    find_program,
    find_venv,
    first_line,
    log,
    log_busy_note,
    log_daemon_env,
    log_loadavg_line,
    log_machine_line,
    log_versions,
    new_parser,
    openbits_missing,
    parse_cases,
    parse_common_args,
    render_rows,
    sha256_file,
    tail,
    untimed_sync,
    versions,
    write_daemon_config,
    write_random_file,
)

JSON_PATH = OUT_DIR / "bench_upload.json"
CASE_NAMES = ("curl", "curl+sync", "openbits", "dd")
#: the like-for-like peer of openbits: both leave the file on disk when they return
PEER = "curl+sync"
#: issue 14: openbits' upload throughput at least curl's, both durable on the server
TARGET = 1.0
#: nginx's WebDAV PUT endpoint, added to the server block of common.NGINX_CONF; the request body
#: goes to client_body_temp_path (WORK/nginx-tmp/body, set at http level: the same file system as
#: the target), and nginx renames it into place when the body is complete
DAV_LOCATION = """location /dav/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;{body_buffer}
        }}"""
#: nginx reads a request body into a buffer of client_body_buffer_size and writes it to the temp
#: file whenever the buffer is full: at its default (16 KiB on 64-bit) that is one write(2) per
#: 16 KiB and about a third of the throughput (bench/README.md), so the peer is given 1 MiB
DEFAULT_BODY_BUFFER = "1m"
SUBDIRS = ("www", "www/dav", "up-root", "up-state", "floor", "logs")


# -- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A case and the file it leaves: the server's copy of the source (dd's copy for dd)."""

    case: Case
    out: Path
    server: str  # whose CPU is the case's server share: "nginx", "upload-server" or ""


def make_targets(
    work: Path, source: Path, dav_url: str, upload_url: str, venv_bin: Path, socket_path: Path
) -> dict[str, Target]:
    """Every case by name; each writes into a directory of its own on the same file system."""
    dav_out = work / "www" / "dav" / "out.bin"
    curl = ["curl", "-sS", "--fail", "-o", os.devnull, "-T", str(source), dav_url]
    openbits = [str(venv_bin / "openbits"), "upload", "-q", str(source), upload_url]
    return {
        "curl": Target(Case("curl", lambda out: [curl]), dav_out, "nginx"),
        "curl+sync": Target(
            # fsync of the file and of its directory (the rename): what the upload server's
            # publish gives (temp file, fsync, rename), so both are durable when they return
            Case("curl+sync", lambda out: [curl, ["sync", str(out), str(out.parent)]]),
            dav_out,
            "nginx",
        ),
        "openbits": Target(
            Case(
                "openbits",
                lambda out: [openbits],
                env={"OPENBITS_SOCKET": str(socket_path)},
                uses_daemon=True,
            ),
            work / "up-root" / "out.bin",
            "upload-server",
        ),
        "dd": Target(
            Case(
                "dd",
                lambda out: [["dd", f"if={source}", f"of={out}", "bs=4M", "conv=fdatasync", "status=none"]],
            ),
            work / "floor" / "out.bin",
            "",
        ),
    }


# -- timed runs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    case: str
    index: int  # 0-based; warm-ups are negative
    warmup: bool
    wall_s: float
    cpu_s: float  # the case's CPU: client + its server (+ the daemon for openbits; dd alone)
    client_cpu_s: float  # the client processes (wait4 rusage): curl (+ sync), openbits' CLI, dd
    daemon_cpu_s: float  # the daemon's CPU during the run (also measured for the other cases)
    nginx_cpu_s: float
    upload_server_cpu_s: float
    other_cpu_s: float  # the machine's busy CPU minus client, daemon, nginx and upload server
    size_ok: bool
    sha256_ok: bool | None  # None: not checked on this run
    visible_partial: bool  # the output was seen with fewer bytes than the whole while running
    stray_files: list[str] = field(default_factory=list)


def case_cpu_s(target: Target, client: float, daemon: float, nginx: float, upload_server: float) -> float:
    if target.server == "nginx":
        return client + nginx
    if target.server == "upload-server":
        return client + daemon + upload_server
    return client


def clear_outputs(targets: dict[str, Target]) -> None:
    for d in {t.out.parent for t in targets.values()}:
        clear_dir(d)


def timed_run(
    runner: Runner, upserver: UploadServer, target: Target, err_path: Path, size: int
) -> tuple[Timing, float, bool]:
    """Run one case: its Timing, the upload server's CPU during it, whether a partial output
    was visible.  A failing openbits command's error names the upload server's log too."""
    up_before = upserver.cpu_s()
    try:
        with OutputWatcher(target.out, size) as watcher:
            t = runner.run(target.case, target.out, err_path)
    except BenchError as e:
        if target.server != "upload-server":
            raise
        raise BenchError(f"{e}\n--- upload server log (tail) ---\n{tail(upserver.log_path)}") from e
    return t, upserver.cpu_s() - up_before, watcher.partial


def run_rounds(
    args: argparse.Namespace,
    targets: list[Target],
    runner: Runner,
    upserver: UploadServer,
    source_sha: str,
    runs: list[Run],
    failures: list[str],
) -> None:
    """Warm-ups then counted rounds; each round runs every case once, in order."""
    services = runner.services
    checked: set[str] = set()
    every = {t.case.name: t for t in targets}
    for rnd in range(-args.warmup, args.runs):
        warm = rnd < 0
        for target in targets:
            name, out = target.case.name, target.out
            clear_outputs(every)
            untimed_sync()
            err_path = runner.logs_dir / f"{name}-{rnd + args.warmup}.err"
            t, up_cpu, partial = timed_run(runner, upserver, target, err_path, args.size)
            size_ok = out.exists() and out.stat().st_size == args.size
            sha_ok: bool | None = None
            if size_ok and name not in checked:
                sha_ok = sha256_file(out) == source_sha
                checked.add(name)
            stray = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
            run = Run(
                case=name,
                index=rnd,
                warmup=warm,
                wall_s=t.wall_s,
                cpu_s=case_cpu_s(target, t.client_cpu_s, t.daemon_cpu_s, t.nginx_cpu_s, up_cpu),
                client_cpu_s=t.client_cpu_s,
                daemon_cpu_s=t.daemon_cpu_s,
                nginx_cpu_s=t.nginx_cpu_s,
                upload_server_cpu_s=up_cpu,
                other_cpu_s=t.other_cpu_s - up_cpu,
                size_ok=size_ok,
                sha256_ok=sha_ok,
                visible_partial=partial,
                stray_files=stray,
            )
            runs.append(run)
            log_run(run, target, args)
            if not size_ok:
                size = out.stat().st_size if out.exists() else None
                raise BenchError(f"{name}: the server's file has size {size}, expected {args.size}")
            if sha_ok is False:
                raise BenchError(f"{name}: sha256 of the server's file differs from the source's")
            if target.case.uses_daemon and partial:
                failures.append(f"{name}: the uploaded file was visible before it was complete")
            if target.case.uses_daemon and stray:
                failures.append(f"{name}: left files beside the upload: {', '.join(stray)}")
            services.check_daemon_alive()
            upserver.check_alive()
    clear_outputs(every)


def log_run(run: Run, target: Target, args: argparse.Namespace) -> None:
    notes = []
    if run.sha256_ok is not None:
        notes.append("sha256 ok" if run.sha256_ok else "SHA256 MISMATCH")
    if run.visible_partial and target.server:  # dd writes in place: a partial file is expected
        notes.append("partial output was visible")
    if run.stray_files:
        notes.append(f"stray files: {', '.join(run.stray_files)}")
    if target.server == "upload-server":
        notes.append(
            f"cli {run.client_cpu_s:.2f} + daemon {run.daemon_cpu_s:.2f} "
            f"+ upload server {run.upload_server_cpu_s:.2f} CPU s"
        )
    elif target.server == "nginx":
        notes.append(f"curl {run.client_cpu_s:.2f} + nginx {run.nginx_cpu_s:.2f} CPU s")
    label = "warm-up" if run.warmup else f"run {run.index + 1}/{args.runs}"
    log(
        f"  [{label:>9}] {run.case:<9} {run.wall_s:7.3f} s  {args.size / run.wall_s / 1e6:6.0f} MB/s"
        f"  CPU {run.cpu_s:5.2f} s  other {run.other_cpu_s:4.2f} s"
        + (f"  ({'; '.join(notes)})" if notes else "")
    )


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
    median_upload_server_cpu_s: float
    median_other_cpu_s: float
    server: str
    server_cpu_s: float  # the median CPU of the case's server (nginx or upload-server)
    cpu_s_per_gib: float  # curl + nginx, daemon + upload server, dd alone: per GiB uploaded
    vs_peer: float | None  # this case's throughput / curl+sync's


def summarize(runs: list[Run], targets: list[Target], size: int) -> list[Summary]:
    out: list[Summary] = []
    gib = size / GIB
    for target in targets:
        counted = [r for r in runs if r.case == target.case.name and not r.warmup]
        if not counted:
            continue
        m = case_medians(counted)
        up = statistics.median(r.upload_server_cpu_s for r in counted)
        if target.server == "nginx":
            server_cpu, per = m["median_nginx_cpu_s"], statistics.median(r.cpu_s for r in counted)
        elif target.server == "upload-server":
            server_cpu = up
            per = statistics.median(r.daemon_cpu_s + r.upload_server_cpu_s for r in counted)
        else:
            server_cpu, per = 0.0, m["median_cpu_s"]
        out.append(
            Summary(
                case=target.case.name,
                mbps=size / m["median_wall_s"] / 1e6,
                median_upload_server_cpu_s=up,
                server=target.server,
                server_cpu_s=server_cpu,
                cpu_s_per_gib=per / gib,
                vs_peer=None,
                **m,
            )
        )
    peer = next((s for s in out if s.case == PEER), None)
    if peer is not None:
        for s in out:
            s.vs_peer = s.mbps / peer.mbps
    return out


def render_table(summaries: list[Summary]) -> str:
    header = [
        "case",
        "median wall s (min–max)",
        "MB/s",
        "client CPU s",
        "server CPU s",
        "daemon CPU s",
        "CPU s/GiB",
        "other CPU s",
        f"MB/s ÷ {PEER}",
    ]
    rows = [header]
    for s in summaries:
        rows.append(
            [
                s.case,
                f"{s.median_wall_s:.3f} ({s.min_wall_s:.3f}–{s.max_wall_s:.3f})",
                f"{s.mbps:.0f}",
                f"{s.median_client_cpu_s:.2f}",
                f"{s.server_cpu_s:.2f} ({s.server})" if s.server else "–",
                f"{s.median_daemon_cpu_s:.2f}" if s.server == "upload-server" else "–",
                f"{s.cpu_s_per_gib:.2f}",
                f"{s.median_other_cpu_s:.2f}",
                "–" if s.vs_peer is None else f"{s.vs_peer:.2f}",
            ]
        )
    return render_rows(rows)


def ratio_lines(summaries: list[Summary]) -> tuple[list[str], dict[str, float]]:
    """openbits against curl+sync (the target), curl and the dd floor; curl+sync against dd."""
    rate = {s.case: s.mbps for s in summaries}
    lines: list[str] = []
    ratios: dict[str, float] = {}
    pairs = [
        ("openbits", PEER, f"(like-for-like, both durable on the server; target ≥ {TARGET:g}: {{met}})"),
        ("openbits", "curl", "(curl's file may still be only in the server's page cache)"),
        ("openbits", "dd", "(openbits' share of the disk's durable write floor)"),
        (PEER, "dd", f"({PEER}'s share of the disk's durable write floor)"),
    ]
    for a, b, note in pairs:
        if a in rate and b in rate:
            r = rate[a] / rate[b]
            ratios[f"{a}/{b}"] = r
            note = note.format(met="met" if r >= TARGET else "NOT met")
            lines.append(f"{a}/{b} throughput ratio = {r:.2f} {note}")
    return lines, ratios


def print_report(
    args: argparse.Namespace, machine: dict[str, Any], summaries: list[Summary]
) -> dict[str, float]:
    log("")
    log(
        f"{summaries[0].runs} counted run(s) per case after {args.warmup} warm-up round(s); "
        f"{args.size} bytes ({args.size / GIB:.3g} GiB) uploaded to servers on 127.0.0.1"
    )
    log_machine_line(machine)
    log_loadavg_line(machine)
    log("")
    log(render_table(summaries))
    log("")
    log(
        "CPU s/GiB: curl + nginx for the curl cases (+ sync), openbits' daemon + upload server "
        "for openbits (its CLI is in client CPU s), dd alone for dd"
    )
    lines, ratios = ratio_lines(summaries)
    for line in lines:
        log(line)
    return ratios


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--runs", type=int, default=5, help="counted runs per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument("--size", type=int, default=GIB, help="test file size in bytes (default 1 GiB)")
    add_keep_arg(p, "files, logs, state")
    add_cases_arg(p, CASE_NAMES)
    p.add_argument(
        "--nginx-body-buffer",
        default=DEFAULT_BODY_BUFFER,
        metavar="SIZE",
        help=f"nginx's client_body_buffer_size for the PUTs (default {DEFAULT_BODY_BUFFER}; "
        "'default': nginx's own, 16k on 64-bit)",
    )
    add_output_args(p, JSON_PATH, "(default bench/out/; must have 2 x size free)")
    args = parse_common_args(p, argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 1:
        p.error("need --runs ≥ 1, --warmup ≥ 0 and --size ≥ 1")
    args.cases = parse_cases(p, args.cases, CASE_NAMES, allow_empty=False)
    return args


@dataclass(slots=True)
class Tools:
    nginx: str | None
    venv_bin: Path
    venv_python: str
    skipped: dict[str, str]  # case -> why it cannot run here


def find_tools(cases: list[str]) -> Tools | None:
    """The tools of the wanted cases; None (said why) when the venv is missing."""
    venv = find_venv()
    if venv is None:
        log("run this with the project's venv python (make venv; .venv/bin/python bench/bench_upload.py)")
        return None
    nginx = find_program("nginx")
    skipped: dict[str, str] = {}
    curl_missing = None
    if nginx is None:
        curl_missing = "nginx not found (apt-get install nginx, or `make bench-upload`)"
    elif "http_dav_module" not in subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr:
        curl_missing = f"{nginx} was built without --with-http_dav_module (no WebDAV PUT)"
    elif find_program("curl") is None:
        curl_missing = "curl not found"
    for case in ("curl", "curl+sync"):
        if case in cases and curl_missing:
            skipped[case] = curl_missing
    if "openbits" in cases:
        why = openbits_missing(*venv)
        if why:
            skipped["openbits"] = f"{why}; this tree has no `openbits upload-server` or `openbits upload`"
    if "dd" in cases and find_program("dd") is None:
        skipped["dd"] = "dd not found"
    return Tools(nginx, venv[0], venv[1], skipped)


def upload_versions(tools: Tools) -> dict[str, str]:
    vers = versions(tools.nginx or "nginx", None, tools.venv_python)
    vers.pop("aria2c", None)
    vers["dd"] = first_line(["dd", "--version"])
    return vers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools(args.cases)
    if tools is None:
        return 2
    for case, why in tools.skipped.items():
        log(f"{case}: case skipped: {why}")
    wanted = [c for c in args.cases if c not in tools.skipped]
    if not wanted or (wanted == ["dd"] and args.cases != ["dd"]):
        log("no upload case can run here (see above)")
        return 2
    session = Session("bench_upload", args, SUBDIRS)
    work = session.work
    services = Services(work, tools.nginx or "nginx", tools.venv_python, args.daemon_env)
    upserver = UploadServer(work, tools.venv_python)
    runner = Runner(services, work / "floor", work / "logs")
    runs: list[Run] = []
    targets: list[Target] = []
    vers: dict[str, str] = {}
    upload_rc: list[int | None] = []

    def cleanup() -> None:
        runner.kill_current()
        upload_rc.append(upserver.stop())
        session.stop_services(services, runner)

    with session.guard(cleanup):
        session.log_start()
        vers = upload_versions(tools)
        log_versions(vers)
        source = work / "www" / "test.bin"
        log(f"writing {args.size} random bytes ...")
        source_sha = write_random_file(source, args.size)
        untimed_sync()
        dav_url = upload_url = ""
        if "curl" in wanted or PEER in wanted:
            body_buffer = args.nginx_body_buffer
            dav = DAV_LOCATION.format(
                body_buffer=""
                if body_buffer == "default"
                else f"\n            client_body_buffer_size {body_buffer};"
            )
            base = services.start_nginx("/test.bin", args.size, dav).removesuffix("/test.bin")
            dav_url = f"{base}/dav/out.bin"
            log(f"nginx taking WebDAV PUTs at {dav_url} (client_body_buffer_size {body_buffer})")
        if "openbits" in wanted:
            upload_url = f"{upserver.start()}/out.bin"
            log(f"openbits upload-server taking BITS uploads at {upload_url} (Ping: {upserver.ping_status})")
            config = (
                write_daemon_config(work / "openbits.toml", args.daemon_setting)
                if args.daemon_setting
                else None
            )
            services.start_daemon(config)
            log(f"openbits daemon on {services.socket}, settings: {args.daemon_setting}")
            log_daemon_env(args.daemon_env)
        every = make_targets(work, source, dav_url, upload_url, tools.venv_bin, services.socket)
        targets = [every[c] for c in CASE_NAMES if c in wanted]
        log(
            f"{args.warmup} warm-up + {args.runs} counted run(s) per case, round-robin: "
            + ", ".join(t.case.name for t in targets)
        )
        run_rounds(args, targets, runner, upserver, source_sha, runs, session.failures)
    if session.interrupted:
        return 130
    rc = upload_rc[0] if upload_rc else None
    if upserver.started and rc != 0:
        session.failures.append(
            f"openbits upload-server exited with {rc} after SIGTERM (expected 0):\n{tail(upserver.log_path)}"
        )
    return report(args, session, runs, targets, vers, tools.skipped, rc)


def report(
    args: argparse.Namespace,
    session: Session,
    runs: list[Run],
    targets: list[Target],
    vers: dict[str, str],
    skipped: dict[str, str],
    upload_rc: int | None,
) -> int:
    summaries = summarize(runs, targets, args.size)
    ratios: dict[str, float] = {}
    if summaries:
        if session.failures:
            log("\nWARNING: the run did not finish cleanly; the figures below may be incomplete")
        ratios = print_report(args, session.machine, summaries)
        log_busy_note((s.median_other_cpu_s, s.median_wall_s) for s in summaries)
        for case, why in skipped.items():
            log(f"skipped: {case} ({why})")
        if any(t.case.uses_daemon for t in targets):
            log(f"exit status after SIGTERM: openbits daemon {session.daemon_rc}, upload server {upload_rc}")
    json_args: dict[str, Any] = {
        "runs": args.runs,
        "warmup": args.warmup,
        "size": args.size,
        "cases": args.cases,
        "nginx_body_buffer": args.nginx_body_buffer,
        "daemon_env": args.daemon_env,
        "daemon_settings": args.daemon_setting,
    }
    return session.finish(
        args.json,
        json_args,
        vers,
        summary=[asdict(s) for s in summaries],
        ratios=ratios,
        cpu_s_per_gib={s.case: s.cpu_s_per_gib for s in summaries},
        skipped=skipped,
        runs=[asdict(r) for r in runs],
        daemon_exit_status=session.daemon_rc,
        upload_server_exit_status=upload_rc,
    )


if __name__ == "__main__":
    sys.exit(main())
