#!/usr/bin/env python3
"""Call counts of one small-file job's transfer phase, deterministic where wall and CPU time
are not (a VM whose CPU speed swings).

Run from the repository root::

    .venv/bin/python bench/profile_small.py [--files N] [--size BYTES] [--top N]
                                            [--daemon-env PYTHONPATH=/old/src]

It starts nginx and a daemon whose ``sitecustomize`` (``bench/profhook``) profiles its main
thread (the event loop) with cProfile between SIGUSR1 and SIGUSR2, sent just before Resume
and once the job is seen TRANSFERRED.  It prints the total calls, calls per file and the
functions called most per file, and writes the raw stats to ``bench/out/profile_small.pstats``
(``python -m pstats`` reads them).  ``--daemon-env PYTHONPATH=...`` runs other code (the
hook's directory is put in front).
"""

from __future__ import annotations

import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_small import RUN_DEADLINE_S, write_dataset
from common import (
    CONNECTING,
    KIB,
    OUT_DIR,
    QUEUED,
    RAISED_LIMITS,
    TRANSFERRED,
    TRANSFERRING,
    BenchError,
    Services,
    Session,
    add_keep_arg,
    add_output_args,
    find_tools,
    log,
    new_parser,
    parse_common_args,
    untimed_sync,
    write_daemon_config,
)

HOOK_DIR = Path(__file__).resolve().parent / "profhook"


def start_strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """``strace -c`` on every thread of ``pid`` (and those it starts): syscall counts, from
    once every thread has a tracer."""
    tids = sorted(os.listdir(f"/proc/{pid}/task"))
    cmd = ["strace", "-c", "-f", "-o", str(out), *(f"-p{t}" for t in tids)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10

    def traced(tid: str) -> bool:
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        return any(line.split()[1:] != ["0"] for line in status.splitlines() if line.startswith("TracerPid:"))

    while not all(traced(t) for t in tids):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise BenchError("strace did not attach")
        time.sleep(0.02)
    return proc


def worker_pids(daemon: int) -> list[int]:
    """The daemon's fetch worker (a child running ``openbits.transfer.fetchworker``), if any."""
    pids = []
    for task in os.listdir(f"/proc/{daemon}/task"):
        with open(f"/proc/{daemon}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    if b"openbits.transfer.fetchworker" in c.read():
                        pids.append(int(child))
    return pids


def transfer_profiled(
    services: Services, urls: list[str], dl: Path, out: Path, strace_out: Path | None, phase: str
) -> None:
    """Profile the ``phase`` ("transfer": Resume to TRANSFERRED, or "complete": the
    Complete call alone) of one job; the fetch worker's too when it is running (its stats
    in ``out.worker``)."""
    from openbits.client import Client

    pid = services.daemon_pid()
    workers = worker_pids(pid) if phase == "transfer" else []
    with Client(str(services.socket), timeout=RUN_DEADLINE_S) as client:
        job = client.create_job("profile_small", priority=0).job_id
        if phase == "add":
            os.kill(pid, signal.SIGUSR1)
            started = time.perf_counter()
        client.add_file_set(job, [(url, str(dl / url.rsplit("/", 1)[1])) for url in urls])
        if phase == "add":
            os.kill(pid, signal.SIGUSR2)
            log(f"AddFileSet took {1000 * (time.perf_counter() - started):.1f} ms (profiled)")
        tracer = start_strace(pid, strace_out) if strace_out is not None and phase == "transfer" else None
        if phase == "transfer":
            for target in (pid, *workers):
                os.kill(target, signal.SIGUSR1)
        client.resume(job)
        deadline = time.monotonic() + RUN_DEADLINE_S
        running = (QUEUED, CONNECTING, TRANSFERRING)
        while int(client.get_job(job, files=False, wait_while=running, wait_timeout=5).state) != TRANSFERRED:
            if time.monotonic() > deadline:
                raise BenchError("the job did not reach TRANSFERRED in time")
        if phase == "complete":
            untimed_sync()
            tracer = start_strace(pid, strace_out) if strace_out is not None else None
            os.kill(pid, signal.SIGUSR1)
            started = time.perf_counter()
            client.complete(job)
            log(f"Complete took {1000 * (time.perf_counter() - started):.1f} ms (profiled)")
        for target in (pid, *workers) if phase != "add" else ():
            os.kill(target, signal.SIGUSR2)
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)
        while not out.exists() or (workers and not Path(f"{out}.worker").exists()):
            if time.monotonic() > deadline:
                raise BenchError("the daemon wrote no profile")
            time.sleep(0.05)
        if phase != "complete":
            client.complete(job)


def warm_up(services: Services, urls: list[str], dl: Path) -> None:
    """One whole job, not profiled: what a daemon starts on first use (the fetch worker)
    is running when the profiled job comes."""
    from openbits.client import Client

    dl.mkdir(parents=True)
    with Client(str(services.socket), timeout=RUN_DEADLINE_S) as client:
        job = client.create_job("profile_small warm-up", priority=0).job_id
        client.add_file_set(job, [(url, str(dl / url.rsplit("/", 1)[1])) for url in urls])
        client.resume(job)
        running = (QUEUED, CONNECTING, TRANSFERRING)
        while int(client.get_job(job, files=False, wait_while=running, wait_timeout=5).state) != TRANSFERRED:
            pass
        client.complete(job)


def report(out: Path, files: int, top: int) -> None:
    st = pstats.Stats(str(out))
    total = st.total_calls  # type: ignore[attr-defined]
    log(f"{total} calls in the phase: {total / files:.1f} per file")
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][1])  # type: ignore[attr-defined]
    log(f"{'calls/file':>10} {'tottime s':>9}  function")
    for (path, line, name), (_cc, nc, tt, _ct, _callers) in rows[:top]:
        short = path.split("/src/", 1)[-1] if "/src/" in path else path.rsplit("/", 1)[-1]
        log(f"{nc / files:10.2f} {tt:9.3f}  {short}:{line}({name})")


def main(argv: list[str] | None = None) -> int:
    p = new_parser(__doc__)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, default=16 * KIB)
    p.add_argument("--top", type=int, default=60)
    p.add_argument(
        "--strace", action="store_true", help="also count the syscalls of every thread (strace -c)"
    )
    p.add_argument(
        "--phase",
        choices=("transfer", "complete", "add"),
        default="transfer",
        help="what is profiled: Resume to TRANSFERRED (default), the Complete or the AddFileSet call alone",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="one job before, not profiled: the fetch worker is running, and is profiled too",
    )
    add_keep_arg(p, "files, logs, state")
    add_output_args(p, OUT_DIR / "profile_small.json", "(unused)")
    args = parse_common_args(p, argv)
    tools = find_tools("profile_small")
    if tools is None:
        return 2
    out = OUT_DIR / "profile_small.pstats"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    worker_out = Path(f"{out}.worker")
    worker_out.unlink(missing_ok=True)
    strace_out = OUT_DIR / "profile_small.strace" if args.strace else None
    env = dict(args.daemon_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK_DIR), env.get("PYTHONPATH", "")]))
    env["OPENBITS_PROFILE_OUT"] = str(out)
    session = Session("profile_small", args, ["www", "dl"])
    services = Services(session.work, tools.nginx, tools.venv_python, env)
    with session.guard(lambda: session.stop_services(services)):
        data = write_dataset(session.work / "www" / "small", args.files, args.size)
        first = f"/small/{data.names[0]}"
        base = services.start_nginx(first, args.size).removesuffix(first) + "/small"
        services.start_daemon(write_daemon_config(session.work / "openbits.toml", RAISED_LIMITS))
        urls = [f"{base}/{n}" for n in data.names]
        if args.warm:
            warm_up(services, urls, session.work / "dl" / "warm")
        dl = session.work / "dl" / "run"
        dl.mkdir(parents=True)
        untimed_sync()
        transfer_profiled(services, urls, dl, out, strace_out, args.phase)
    if session.failures or not out.exists():
        log("\n".join(session.failures))
        return 1
    log("the daemon's event loop:")
    report(out, args.files, args.top)
    if worker_out.exists():
        log(f"\nthe fetch worker's loop (stats in {worker_out}):")
        report(worker_out, args.files, args.top)
    if strace_out is not None:
        log(f"syscalls of every thread (strace -c):\n{strace_out.read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
