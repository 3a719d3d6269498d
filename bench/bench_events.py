#!/usr/bin/env python3
"""How soon a waiter learns that a job is TRANSFERRED: the event stream against the long poll.

Run from the repository root::

    .venv/bin/python bench/bench_events.py [--runs N] [--size BYTES] [--keep]

One invocation starts its own nginx (serving one small file) and a fresh daemon.  Each
run creates a job of that file (suspended), starts one waiter, waits until the waiter is
listening, resumes the job, and takes the delay from the daemon's state change (the
job's JobCompletionTime, the wall clock the daemon read as it entered TRANSFERRED, before
its commit) to the moment the waiter knew.  The waiters, round robin:

* ``cli-wait``: ``openbits wait JOB`` as a subprocess (it follows ``GET /events``): the
  delay to the line TRANSFERRED on its stdout, and to its exit;
* ``cli-long-poll``: how the CLI waited before events (GetJob, then GetJob with
  WaitWhile until the job is done), as a subprocess: the same two delays;
* ``client-events``: ``Client.events(job=…)`` in this process: the delay to the
  JobTransferred event;
* ``client-long-poll``: ``Client.get_job(wait_while=…)`` in this process.

A subprocess waiter is listening once it holds two connections to the daemon (the
stream, then the GET that reads the job's state; /proc/PID/fd), an in-process one once
its request is sent (the stream: once ``events()`` returned).  The target (issue 4):
``openbits wait`` receives a TRANSFERRED within 100 ms.  Prints median, p90 and max per
waiter and writes ``bench/out/bench_events.json``.  It cleans up as ``common.Session``
says.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    KIB,
    OUT_DIR,
    TRANSFERRED,
    BenchError,
    Services,
    Session,
    add_cases_arg,
    add_keep_arg,
    add_output_args,
    find_tools,
    latency_ms,
    log,
    log_daemon_env,
    log_versions,
    new_parser,
    parse_cases,
    parse_common_args,
    render_rows,
    tail,
    versions,
    write_daemon_config,
)

JSON_PATH = OUT_DIR / "bench_events.json"
CASE_NAMES = ("cli-wait", "cli-long-poll", "client-events", "client-long-poll")
TARGET_MS = 100.0
RUN_DEADLINE_S = 30.0
#: FILETIME (100 ns since 1601) of the Unix epoch
EPOCH_FILETIME = 116_444_736_000_000_000
#: the CLI's wait before events, as a subprocess (same start-up and imports as `openbits wait`)
LONG_POLL_SNIPPET = (
    "import sys\n"
    "from openbits.client import Client\n"
    "from openbits.jobs import DONE_STATES\n"
    "from openbits.model import JobState\n"
    "client, others = Client(), [s for s in JobState if s not in DONE_STATES]\n"
    "job = client.get_job(sys.argv[1], include_finished=True, files=False)\n"
    "while job.state not in DONE_STATES:\n"
    "    job = client.get_job(job.job_id, include_finished=True, files=False, wait_while=others)\n"
    "print(job.state.name, flush=True)\n"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--runs", type=int, default=20, help="runs per waiter (default 20)")
    p.add_argument("--size", type=int, default=64 * KIB, help="the file's size in bytes (default 64 KiB)")
    add_cases_arg(p, CASE_NAMES)
    add_keep_arg(p, "daemon and nginx logs")
    add_output_args(p, JSON_PATH)
    args = parse_common_args(p, argv)
    args.cases = parse_cases(p, args.cases, CASE_NAMES, allow_empty=False)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


@dataclass(slots=True)
class CaseResult:
    name: str
    known_s: list[float] = field(default_factory=list)  # state change -> the waiter knew
    exit_s: list[float] = field(default_factory=list)  # state change -> the CLI exited


def completion_unix_ns(instance: Mapping[str, Any]) -> int:
    return (int(instance["JobCompletionTime"]) - EPOCH_FILETIME) * 100


def unix_sockets(pid: int) -> int:
    n = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                continue
    except OSError:
        pass
    return n


def wait_for(condition: Callable[[], bool], what: str, timeout: float = RUN_DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.002)


def run_cli(
    services: Services, argv: list[str], sockets: int, settle_s: float, resume: Callable[[], None]
) -> tuple[int, int]:
    """Start a CLI waiter, resume once it listens (it holds ``sockets`` connections, then
    ``settle_s`` more); (ns when it printed, ns when it exited)."""
    env = {**os.environ, "OPENBITS_SOCKET": str(services.socket)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: unix_sockets(proc.pid) >= sockets or proc.poll() is not None, "the waiter to listen")
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise BenchError(f"{argv} exited with {proc.returncode}: {err}")
        time.sleep(settle_s)
        resume()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        printed = time.time_ns()
        proc.wait(RUN_DEADLINE_S)
        exited = time.time_ns()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if line.strip() != "TRANSFERRED" or proc.returncode != 0:
        err = proc.stderr.read() if proc.stderr else ""
        raise BenchError(f"{argv[-2:]}: rc {proc.returncode}, printed {line!r}: {err}")
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    return printed, exited


def run_in_process(services: Services, case: str, job: str, resume: Callable[[], None]) -> int:
    """An in-process waiter; ns when it knew."""
    from openbits.client import Client

    known: list[int] = []
    errors: list[BaseException] = []
    with Client(str(services.socket), timeout=RUN_DEADLINE_S + 5) as client:
        if case == "client-events":
            stream = client.events(job=job, types=["JobTransferred"], timeout=RUN_DEADLINE_S)
            with stream:
                resume()
                event = next(stream)
                known.append(time.time_ns())
                if event.event != "JobTransferred":
                    raise BenchError(f"expected JobTransferred, got {event}")
            return known[0]

        def long_poll() -> None:
            try:
                others = [s for s in range(9) if s != TRANSFERRED]
                instance = client.get_job(job, files=False, wait_while=others, wait_timeout=RUN_DEADLINE_S)
                known.append(time.time_ns())
                if instance.state != TRANSFERRED:
                    errors.append(BenchError(f"the long poll answered state {instance.state.name}"))
            except BaseException as e:  # reported below
                errors.append(e)

        waiter = threading.Thread(target=long_poll)
        waiter.start()
        # parked once the daemon holds the request: give it the time to arrive and park
        time.sleep(0.05)
        resume()
        waiter.join(RUN_DEADLINE_S)
    if errors:
        raise BenchError(f"long poll failed: {errors[0]!r}")
    if not known:
        raise BenchError("the long poll did not answer")
    return known[0]


def one_run(
    services: Services, case: str, url: str, dl: Path, n: int, tools_python: str
) -> tuple[float, float]:
    """One job, one waiter; (seconds to know, seconds to exit or 0)."""
    from openbits.client import Client

    with Client(str(services.socket)) as client:
        job = client.create_job(f"bench-events-{case}-{n}").job_id
        client.add_file(job, url, str(dl / f"{case}-{n}.bin"))

        def resume() -> None:
            client.resume(job)

        exited = 0
        if case == "cli-wait":
            # listening: the stream is open (and primed) once it opens its second connection
            argv = [tools_python, "-m", "openbits", "wait", job]
            known, exited = run_cli(services, argv, 2, 0.0, resume)
        elif case == "cli-long-poll":
            # one connection: its first GET, then the long poll on it (given 50 ms to park)
            argv = [tools_python, "-c", LONG_POLL_SNIPPET, job]
            known, exited = run_cli(services, argv, 1, 0.05, resume)
        else:
            known = run_in_process(services, case, job, resume)
        instance = client.get_job(job, include_finished=True, files=False)
        if instance.state != TRANSFERRED:
            raise BenchError(f"job {job} is in state {instance.state.name}, not TRANSFERRED")
        changed = completion_unix_ns(instance.raw)
        client.complete(job)
    return (known - changed) / 1e9, (exited - changed) / 1e9 if exited else 0.0


def render(results: dict[str, CaseResult]) -> str:
    rows = [["waiter", "knew: median ms", "p90 ms", "max ms", "exited: median ms", "p90 ms", "max ms"]]
    for name, r in results.items():
        k = latency_ms(r.known_s)
        row = [name, f"{k['median']:.1f}", f"{k['p90']:.1f}", f"{k['max']:.1f}"]
        if r.exit_s:
            e = latency_ms(r.exit_s)
            row += [f"{e['median']:.1f}", f"{e['p90']:.1f}", f"{e['max']:.1f}"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    return render_rows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("bench_events")
    if tools is None:
        return 2
    session = Session("bench_events", args, ["www", "dl"])
    work = session.work
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env)
    settings = dict(args.daemon_setting)
    results = {c: CaseResult(c) for c in args.cases}
    vers: dict[str, str] = {}

    def cleanup() -> None:
        session.stop_services(services)

    with session.guard(cleanup, catch_unexpected=True):
        session.log_start()
        vers = versions(tools.nginx, None, tools.venv_python)
        vers.pop("aria2c", None)
        log_versions(vers)
        (work / "www" / "one.bin").write_bytes(os.urandom(args.size))
        url = services.start_nginx("/one.bin", args.size)
        config = write_daemon_config(work / "openbits.toml", settings) if settings else None
        log_daemon_env(args.daemon_env)
        services.start_daemon(config, answer=True)
        log(f"nginx serving {url}; {args.runs} runs per waiter, round robin: {', '.join(args.cases)}")
        for n in range(args.runs):
            for case in args.cases:
                services.check_daemon_alive()
                try:
                    known_s, exit_s = one_run(services, case, url, work / "dl", n, tools.venv_python)
                except BenchError as e:
                    raise BenchError(f"{case} run {n}: {e}\n{tail(services.daemon_log)}") from e
                results[case].known_s.append(known_s)
                if exit_s:
                    results[case].exit_s.append(exit_s)
    if session.interrupted:
        return 130
    log("")
    log(f"from the state change to TRANSFERRED until the waiter knew / exited ({args.runs} runs)")
    log(render({k: v for k, v in results.items() if v.known_s}))
    target_met = None
    if results.get("cli-wait") and results["cli-wait"].known_s:
        stats = latency_ms(results["cli-wait"].known_s)
        target_met = stats["p90"] < TARGET_MS
        log(
            f"openbits wait: TRANSFERRED known {stats['median']:.1f} ms after the change (median), "
            f"p90 {stats['p90']:.1f} ms (target < {TARGET_MS:.0f} ms: {'met' if target_met else 'NOT met'})"
        )
    return session.finish(
        args.json,
        {"runs": args.runs, "size": args.size, "cases": args.cases, "daemon_settings": settings},
        vers,
        results={
            name: {
                "known_ms": latency_ms(r.known_s) if r.known_s else None,
                "exit_ms": latency_ms(r.exit_s) if r.exit_s else None,
                **asdict(r),
            }
            for name, r in results.items()
        },
        target_ms=TARGET_MS,
        target_met=target_met,
    )


if __name__ == "__main__":
    sys.exit(main())
