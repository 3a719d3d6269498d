#!/usr/bin/env python3
"""512 MiB from a server that caps each connection (nginx ``limit_rate 20m``): openbits with
MaxConnections 8 against ``aria2c -x8 -s8`` and curl, alternated run by run (issue 15 (c)).

Run from the repository root (``make bench-capped`` does this)::

    .venv/bin/python bench/bench_capped.py [--runs N] [--size BYTES] [--rate RATE] [--keep]

One invocation writes a random test file, starts its own nginx on a free 127.0.0.1 port
(the file served under ``/capped/`` with ``limit_rate`` per connection, every request logged
with its connection) and its own openbits daemon, then times each case round-robin (every
run is preceded by deleting the previous output and an untimed ``sync``).  It prints a table
of medians with the connections each case used, the ratios against aria2c -x8 (target
≥ 1.1) and curl (target ≥ 6), and writes ``bench/out/bench_capped.json``.  It cleans up as
``common.Session`` says.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    MIB,
    OUT_DIR,
    BenchError,
    Case,
    OutputWatcher,
    Runner,
    Services,
    Session,
    add_cases_arg,
    add_keep_arg,
    add_output_args,
    case_medians,
    find_tools,
    log,
    log_busy_note,
    log_daemon_env,
    log_loadavg_line,
    log_machine_line,
    log_versions,
    new_parser,
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

JSON_PATH = OUT_DIR / "bench_capped.json"
CASE_NAMES = ("curl", "aria2c-x8", "openbits")
#: the issue's targets for openbits' throughput against each peer (issue 15 (c))
TARGETS = {"aria2c-x8": 1.1, "curl": 6.0}
CONNECTIONS = 8
#: the nginx location that caps every connection (``{rate}``: nginx's limit_rate, e.g. 20m)
CAPPED_LOCATION = "location /capped/ {{ alias {www}/; limit_rate {rate}; }}"


@dataclass(slots=True)
class Run:
    case: str
    index: int  # 0-based; warm-ups are negative
    warmup: bool
    wall_s: float
    cpu_s: float  # the client processes (wait4 rusage) + for openbits the daemon's delta
    client_cpu_s: float
    daemon_cpu_s: float
    nginx_cpu_s: float
    other_cpu_s: float
    connections: int  # distinct nginx connections that served the run's requests
    requests: int
    sha256_ok: bool | None  # None: not checked on this run
    visible_partial: bool


def make_cases(url: str, venv_bin: Path, socket_path: Path, aria2c: str | None) -> list[Case]:
    """curl (one connection: the floor), aria2c with 8 connections to the one file, and
    ``openbits transfer`` (FOREGROUND, the default) with MaxConnections 8."""
    cases = [Case("curl", lambda out: [["curl", "-s", "-o", str(out), url]])]
    if aria2c:
        n = str(CONNECTIONS)
        cases.append(
            Case(
                "aria2c-x8",
                lambda out: [
                    [
                        aria2c,
                        "-q",
                        f"-x{n}",
                        f"-s{n}",
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
    cli = str(venv_bin / "openbits")
    cases.append(
        Case(
            "openbits",
            lambda out: [[cli, "transfer", "-q", "--max-connections", str(CONNECTIONS), url, str(out)]],
            env={"OPENBITS_SOCKET": str(socket_path)},
            uses_daemon=True,
        )
    )
    return cases


class RequestLog:
    """What nginx appended to its per-request log (``$connection $connection_requests $status
    $body_bytes_sent``) since :meth:`mark`: the distinct connections and the requests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self, size: int, wait_s: float = 2.0) -> tuple[int, int]:
        """(connections, requests) since :meth:`mark`; waits (untimed) up to ``wait_s`` until
        the logged bodies add up to ``size``, since nginx logs a request only after its last
        byte went out.  A request answered other than 200/206 is a BenchError."""
        deadline = time.monotonic() + wait_s
        while True:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                rows = [ln.split() for ln in fh.read().decode("ascii", "replace").splitlines()]
            rows = [r for r in rows if len(r) >= 4]
            if sum(int(r[3]) for r in rows if r[3].isdigit()) >= size or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        bad = [r for r in rows if r[2] not in ("200", "206")]
        if bad:
            raise BenchError(f"nginx answered {', '.join(sorted({r[2] for r in bad}))} to a request")
        return len({r[0] for r in rows}), len(rows)


# -- the rounds ---------------------------------------------------------------------------------


def run_rounds(
    args: argparse.Namespace,
    cases: list[Case],
    runner: Runner,
    requests: RequestLog,
    source_sha: str,
    runs: list[Run],
    failures: list[str],
) -> None:
    """Warm-ups then counted rounds; each round runs every case once, in order."""
    out = runner.dl_dir / "out.bin"
    checked: set[str] = set()
    for rnd in range(-args.warmup, args.runs):
        for case in cases:
            runner.clear_output()
            untimed_sync()
            requests.mark()
            with OutputWatcher(out, args.size) as watcher:
                t = runner.run(case, out, runner.logs_dir / f"{case.name}-{rnd + args.warmup}.err")
            size = out.stat().st_size if out.exists() else None
            if size != args.size:
                raise BenchError(f"{case.name}: output size {size}, expected {args.size}")
            conns, reqs = requests.read(args.size)
            sha_ok: bool | None = None
            if case.name not in checked:
                sha_ok = sha256_file(out) == source_sha
                checked.add(case.name)
            run = Run(
                case=case.name,
                index=rnd,
                warmup=rnd < 0,
                wall_s=t.wall_s,
                cpu_s=t.client_cpu_s + (t.daemon_cpu_s if case.uses_daemon else 0.0),
                client_cpu_s=t.client_cpu_s,
                daemon_cpu_s=t.daemon_cpu_s,
                nginx_cpu_s=t.nginx_cpu_s,
                other_cpu_s=t.other_cpu_s,
                connections=conns,
                requests=reqs,
                sha256_ok=sha_ok,
                visible_partial=watcher.partial,
            )
            runs.append(run)
            label = "warm-up" if run.warmup else f"run {rnd + 1}/{args.runs}"
            notes = [f"{conns} conn, {reqs} req"]
            if sha_ok is not None:
                notes.append("sha256 ok" if sha_ok else "SHA256 MISMATCH")
            if watcher.partial and case.uses_daemon:
                notes.append("partial output was visible")
            log(
                f"  [{label:>9}] {case.name:<10} {t.wall_s:7.2f} s  {args.size / t.wall_s / 1e6:6.1f} MB/s"
                f"  CPU {run.cpu_s:5.2f} s  nginx {t.nginx_cpu_s:4.2f} s  ({'; '.join(notes)})"
            )
            if sha_ok is False:
                raise BenchError(f"{case.name}: sha256 of the output differs from the source's")
            if case.uses_daemon and watcher.partial:
                failures.append(f"{case.name}: the output was visible before it was complete")
            if runner.services.daemon is not None and runner.services.daemon.poll() is not None:
                raise BenchError(f"the openbits daemon died:\n{tail(runner.services.daemon_log)}")
    runner.clear_output()


# -- results ------------------------------------------------------------------------------------


def summarize(runs: list[Run], cases: list[Case], size: int) -> list[dict[str, Any]]:
    """Per case: the medians (common.case_medians), MB/s at the median wall time, and the
    distinct connection counts seen over the counted runs."""
    out: list[dict[str, Any]] = []
    for case in cases:
        counted = [r for r in runs if r.case == case.name and not r.warmup]
        if counted:
            m = case_medians(counted)
            m["connections"] = sorted({r.connections for r in counted})
            out.append({"case": case.name, "mbps": size / m["median_wall_s"] / 1e6, **m})
    return out


def report(
    args: argparse.Namespace, machine: dict[str, Any], summaries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Print the table and the ratios against the targets; the ratios and targets (for the JSON)."""
    log("")
    log(
        f"{summaries[0]['runs']} counted run(s) per case after {args.warmup} warm-up round(s); "
        f"{args.size} bytes ({args.size / MIB:.0f} MiB) from nginx on 127.0.0.1, limit_rate {args.rate} "
        "per connection"
    )
    log_machine_line(machine)
    log_loadavg_line(machine)
    log("")
    rows = [["case", "median wall s (min–max)", "MB/s", "conns", "CPU s", "nginx CPU s", "other CPU s"]]
    for s in summaries:
        cpu = f"{s['median_cpu_s']:.2f}"
        if s["case"] == "openbits":
            cpu += f" (cli {s['median_client_cpu_s']:.2f} + daemon {s['median_daemon_cpu_s']:.2f})"
        rows.append(
            [
                s["case"],
                f"{s['median_wall_s']:.2f} ({s['min_wall_s']:.2f}–{s['max_wall_s']:.2f})",
                f"{s['mbps']:.1f}",
                ",".join(str(c) for c in s["connections"]),
                cpu,
                f"{s['median_nginx_cpu_s']:.2f}",
                f"{s['median_other_cpu_s']:.2f}",
            ]
        )
    log(render_rows(rows))
    log("")
    rates = {s["case"]: s["mbps"] for s in summaries}
    ratios: dict[str, float] = {}
    missed: list[str] = []
    if "openbits" in rates:
        for peer, target in TARGETS.items():
            if peer not in rates:
                continue
            r = ratios[f"openbits/{peer}"] = rates["openbits"] / rates[peer]
            met = r >= target
            if not met:
                missed.append(f"openbits/{peer}")
            verdict = "met" if met else "NOT met"
            log(f"openbits/{peer} throughput ratio = {r:.2f} (target ≥ {target:g}: {verdict})")
    log_busy_note((s["median_other_cpu_s"], s["median_wall_s"]) for s in summaries)
    return {
        "ratios": ratios,
        "targets": {f"openbits/{k}": v for k, v in TARGETS.items()},
        "targets_missed": missed,
    }


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--runs", type=int, default=3, help="counted runs per case (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed warm-up rounds (default 0: the source was just written, so it is in the page cache)",
    )
    p.add_argument("--size", type=int, default=512 * MIB, help="test file size in bytes (default 512 MiB)")
    p.add_argument("--rate", default="20m", help="nginx limit_rate per connection (default 20m: 20 MiB/s)")
    add_keep_arg(p, "files, logs, state")
    add_cases_arg(p, CASE_NAMES)
    add_output_args(p, JSON_PATH, "(default bench/out/; must have 2 x size free)")
    args = parse_common_args(p, argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 1:
        p.error("need --runs ≥ 1, --warmup ≥ 0 and --size ≥ 1")
    if not args.rate or not args.rate.rstrip("kKmM").isdigit():
        p.error("--rate is an nginx size: digits with an optional k or m")
    args.cases = parse_cases(p, args.cases, CASE_NAMES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli = Path(sys.executable).parent / "openbits"
    tools = find_tools(
        "bench_capped",
        clients=True,
        venv_hint=f"{cli} not found: run this with the project's venv python (make venv)",
    )
    if tools is None:
        return 2
    session = Session("bench_capped", args, ["www", "dl", "logs"])
    work = session.work
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env, conn_log=True)
    runner = Runner(services, work / "dl", work / "logs")
    runs: list[Run] = []
    cases: list[Case] = []
    vers: dict[str, str] = {}
    with session.guard(lambda: session.stop_services(services, runner)):
        session.log_start()
        vers = versions(tools.nginx, tools.aria2c, tools.venv_python)
        log_versions(vers)
        log(f"writing {args.size} random bytes ...")
        source_sha = write_random_file(work / "www" / "test.bin", args.size)
        untimed_sync()
        extra = CAPPED_LOCATION.format(www=work / "www", rate=args.rate)
        url = services.start_nginx("/capped/test.bin", args.size, server_extra=extra)
        log(f"nginx serving {url} (limit_rate {args.rate} per connection)")
        config = (
            write_daemon_config(work / "openbits.toml", args.daemon_setting) if args.daemon_setting else None
        )
        services.start_daemon(config)
        log(f"openbits daemon on {services.socket}, settings: {json.dumps(args.daemon_setting)}")
        log_daemon_env(args.daemon_env)
        if "aria2c-x8" in args.cases and tools.aria2c is None:
            log("aria2c not installed: case skipped")
        all_cases = make_cases(url, tools.venv_bin, services.socket, tools.aria2c)
        cases = [c for c in all_cases if c.name in args.cases]
        log(
            f"{args.warmup} warm-up + {args.runs} counted run(s) per case, round-robin: "
            + ", ".join(c.name for c in cases)
        )
        assert services.conn_log is not None
        run_rounds(args, cases, runner, RequestLog(services.conn_log), source_sha, runs, session.failures)
    if session.interrupted:
        return 130
    summaries = summarize(runs, cases, args.size)
    judged: dict[str, Any] = {}
    if summaries:
        if session.failures:
            log("\nWARNING: the run did not finish cleanly; the figures below may be incomplete")
        judged = report(args, session.machine, summaries)
        log(f"openbits daemon exit status after SIGTERM: {session.daemon_rc}")
    json_args = {
        "runs": args.runs,
        "warmup": args.warmup,
        "size": args.size,
        "rate": args.rate,
        "connections": CONNECTIONS,
        "cases": args.cases,
        "daemon_env": args.daemon_env,
        "daemon_settings": args.daemon_setting,
    }
    return session.finish(
        args.json,
        json_args,
        vers,
        summary=summaries,
        **judged,
        runs=[asdict(r) for r in runs],
        daemon_exit_status=session.daemon_rc,
    )


if __name__ == "__main__":
    sys.exit(main())
