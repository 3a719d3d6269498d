#!/usr/bin/env python3
"""API latency: the round trip of a GET of one job instance over the daemon's Unix socket, idle,
during a 512 MiB FOREGROUND transfer, and with 20 readers while small jobs come and go
(issue 15 (e)).

Run from the repository root (``make bench-latency`` does this)::

    .venv/bin/python bench/bench_latency.py [--size BYTES] [--jobs N] [--readers N] [--probe] [--keep]

One invocation starts its own nginx (no rate cap) and its own daemon, then runs three phases,
with reading clients (each a process of its own, one kept-alive connection, raw HTTP: the
round trip of ``GET …/BitsClientJob/{id}``, as ``openbits show`` asks it, without Python's
start-up or the client's parsing) timing every call:

* idle: ``--idle-readers`` reader(s) GET a suspended job for ``--idle-s`` seconds;
* transfer: the same job (one file of ``--size`` bytes, FOREGROUND) resumed, read until it is
  TRANSFERRED, then completed;
* soak: ``--readers`` readers GET the newest jobs while ``--jobs`` jobs of one ``--job-size``
  file each are created, transferred and completed, ``--inflight`` at a time.

It prints p50/p90/p99/max and the calls slower than 100 ms per phase, judges the targets
(transfer: p99 ≤ 20 ms; soak: p99 ≤ 20 ms and max ≤ 100 ms) as met / NOT met, and writes
``bench/out/bench_latency.json``.  ``--probe`` starts the daemon with ``bench/loopprobe`` (its
event loop's lateness every 1 ms, and the main thread's stack while it stalls) and prints the
top stall sites per phase.  It cleans up as ``common.Session`` says.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized, SynchronizedString
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import (
    ACKNOWLEDGED,
    CANCELLED,
    CONNECTING,
    ERROR,
    KIB,
    MIB,
    OUT_DIR,
    QUEUED,
    RAISED_LIMITS,
    STATE_NAMES,
    TRANSFERRED,
    TRANSFERRING,
    BenchError,
    Services,
    Session,
    Snapshot,
    UnixHTTPConnection,
    add_keep_arg,
    add_output_args,
    find_tools,
    latency_ms,
    log,
    log_daemon_env,
    log_loadavg_line,
    log_machine_line,
    log_versions,
    new_parser,
    parse_common_args,
    render_rows,
    sha256_file,
    tail,
    versions,
    write_daemon_config,
    write_random_file,
)
from loopprobe.stalls import stall_sites

JSON_PATH = OUT_DIR / "bench_latency.json"
PROBE_DIR = Path(__file__).resolve().parent / "loopprobe"
#: openbits.model.JOB_CLASS_PATH (no openbits import in the reading processes)
JOB_CLASS_PATH = "/root/microsoft/bits/BitsClientJob"
PHASES = ("idle", "transfer", "soak")
#: (phase, statistic) -> the issue's bound in ms
TARGETS = {("transfer", "p99"): 20.0, ("soak", "p99"): 20.0, ("soak", "max"): 100.0}
STALL_MS = 100.0
#: the newest jobs the soak readers pick from ({GUID}: 38 characters)
ID_SLOTS, ID_LEN = 64, 38
RUNNING = (QUEUED, CONNECTING, TRANSFERRING)
JOB_DEADLINE_S = 300.0


# -- the reading clients (each a process of its own) ---------------------------------------------


def reader_worker(
    socket_path: str,
    ids: SynchronizedString,
    ready: Synchronized[int],
    interval_s: float,
    seed: int,
    stop: EventType,
    out: Connection,
) -> None:
    """GET one of the jobs in ``ids`` (``IncludeFinished``: a job may complete meanwhile), a pause
    of ``interval_s``, until ``stop``; then sends ``{"t": [...], "lat": [...], "errors": {...}}``
    (``t``: time.monotonic() at the call's start, the same clock as the daemon's probe).
    ``ready`` counts the readers that made their first call."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it
    rng = random.Random(seed)
    times, lats = array("d"), array("d")
    errors: Counter[str] = Counter()
    conn = UnixHTTPConnection(Path(socket_path), 60.0)
    try:
        while not stop.is_set():
            slot = rng.randrange(ID_SLOTS) * ID_LEN
            with ids.get_lock():
                job = ids[slot : slot + ID_LEN].rstrip(b"\0").decode()
            if not job:
                stop.wait(0.01)
                continue
            path = f"{JOB_CLASS_PATH}/{quote(job, safe='')}?IncludeFinished=true"
            t0 = time.monotonic()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
            except OSError as e:
                errors[f"{type(e).__name__}: {e}"[:200]] += 1
                conn.close()
                stop.wait(0.1)
                continue
            t1 = time.monotonic()
            if resp.status != 200:
                errors[f"GET answered {resp.status}"] += 1
                stop.wait(0.1)
                continue
            if not lats:
                with ready.get_lock():
                    ready.value += 1
            times.append(t0)
            lats.append(t1 - t0)
            if interval_s > 0:
                stop.wait(interval_s)
    finally:
        conn.close()
    out.send({"t": times.tolist(), "lat": lats.tolist(), "errors": dict(errors)})
    out.close()


@dataclass(slots=True)
class Readers:
    """The reading processes of one phase, and what they recorded once stopped."""

    ids: SynchronizedString
    ready: Synchronized[int]
    procs: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)
    stop: EventType | None = None
    t: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def start(self, n: int, socket_path: Path, interval_s: float, seed: int) -> None:
        """Start ``n`` readers; :meth:`wait_ready` waits until each made a call."""
        ctx = multiprocessing.get_context("spawn")  # (no fork of a process with threads)
        self.stop = ctx.Event()
        for i in range(n):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=reader_worker,
                args=(str(socket_path), self.ids, self.ready, interval_s, seed * 1000 + i, self.stop, child),
                name=f"latency-reader-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every reader has made its first call (their start-up is not measured)."""
        deadline = time.monotonic() + timeout_s
        while self.ready.value < len(self.procs):
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.procs):
                raise BenchError(f"only {self.ready.value} of {len(self.procs)} readers started")
            time.sleep(0.02)

    def publish(self, i: int, job: str) -> None:
        """Offer ``job`` to the readers (slot ``i`` of ID_SLOTS, round robin)."""
        slot = (i % ID_SLOTS) * ID_LEN
        with self.ids.get_lock():
            self.ids[slot : slot + ID_LEN] = job.encode().ljust(ID_LEN, b"\0")[:ID_LEN]

    def finish(self, timeout_s: float = 30.0) -> None:
        """Stop every reader and collect its samples (kills one that hangs)."""
        if self.stop is not None:
            self.stop.set()
        deadline = time.monotonic() + timeout_s
        for proc, pipe in zip(self.procs, self.pipes, strict=True):
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    got = pipe.recv()
                    self.t += got["t"]
                    self.lat += got["lat"]
                    self.errors.update(got["errors"])
                else:
                    self.errors[f"{proc.name}: no answer after {timeout_s:.0f} s"] += 1
            except (EOFError, OSError) as e:
                self.errors[f"{proc.name}: {type(e).__name__}"] += 1
            pipe.close()
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.procs.clear()
        self.pipes.clear()


def new_readers(job: str) -> Readers:
    """Readers of ``job`` (in every slot) until other jobs are published."""
    ctx = multiprocessing.get_context("spawn")
    readers = Readers(ctx.Array(ctypes.c_char, ID_SLOTS * ID_LEN), ctx.Value(ctypes.c_int, 0))
    for i in range(ID_SLOTS):
        readers.publish(i, job)
    return readers


# -- the jobs ---------------------------------------------------------------------------------------


def wait_transferred(client: Any, job: str, services: Services) -> None:
    """Long poll (as ``openbits transfer`` waits) until the job leaves the running states; a
    BenchError unless it is TRANSFERRED."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        instance = client.get_job(job, include_finished=True, files=False, wait_while=RUNNING, wait_timeout=5)
        state = int(instance.state)
        if state == TRANSFERRED:
            return
        if state in (ERROR, CANCELLED, ACKNOWLEDGED) or time.monotonic() > deadline:
            detail = json.dumps(client.get_error(job).raw) if state == ERROR else ""
            raise BenchError(
                f"job {job} went {STATE_NAMES.get(state, state)} {detail}\n"
                f"--- daemon log (tail) ---\n{tail(services.daemon_log)}"
            )


@dataclass(slots=True)
class Phase:
    """One phase's span (time.monotonic()), the windows its reads count in (default: the whole
    span), its readers' samples and the daemon's CPU."""

    name: str
    readers: int
    t0: float = 0.0
    t1: float = 0.0
    windows: list[tuple[float, float]] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    daemon_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    note: str = ""


def run_phase(
    phase: Phase, args: argparse.Namespace, services: Services, readers: Readers, body: Any
) -> None:
    """Start the readers, wait until each has answers, time ``body()``, stop the readers."""
    interval_ms = args.soak_interval_ms if phase.name == "soak" else args.interval_ms
    readers.start(phase.readers, services.socket, interval_ms / 1000, seed=len(phase.name))
    readers.wait_ready()
    before = Snapshot.take(services)
    phase.t0 = time.monotonic()
    try:
        body()
    finally:
        phase.t1 = time.monotonic()
        after = Snapshot.take(services)
        readers.finish()
    timing = after.since(before, 0.0)
    phase.daemon_cpu_s, phase.other_cpu_s = timing.daemon_cpu_s, timing.other_cpu_s
    phase.windows = phase.windows or [(phase.t0, phase.t1)]
    phase.lat = [
        lat
        for t, lat in zip(readers.t, readers.lat, strict=True)
        if any(w0 <= t <= w1 for w0, w1 in phase.windows)
    ]
    phase.errors = dict(readers.errors)
    services.check_daemon_alive()


def phase_idle_and_transfer(
    args: argparse.Namespace, services: Services, url: str, work: Path, sha: str
) -> tuple[Phase, Phase, str]:
    """(i) reads of a suspended job; (ii) that job resumed (one FOREGROUND file of --size), then
    --transfers - 1 more such jobs, each read while it runs: only the reads from Resume to
    TRANSFERRED count (not those during Complete and the next CreateJob)."""
    from openbits.client import Client

    idle, transfer = Phase("idle", args.idle_readers), Phase("transfer", args.idle_readers)
    out = work / "dl" / "big.bin"
    with Client(str(services.socket), timeout=60.0) as client:
        job = client.create_job("bench_latency transfer 1", priority=0).job_id
        client.add_file(job, url, str(out))
        run_phase(idle, args, services, new_readers(job), lambda: time.sleep(args.idle_s))
        log(f"  idle: {len(idle.lat)} reads over {args.idle_s:.0f} s")
        readers = new_readers(job)

        def body() -> None:
            nonlocal job
            for n in range(args.transfers):
                if n:
                    job = client.create_job(f"bench_latency transfer {n + 1}", priority=0).job_id
                    client.add_file(job, url, str(out))
                    for i in range(ID_SLOTS):
                        readers.publish(i, job)
                t0 = time.monotonic()
                client.resume(job)
                wait_transferred(client, job, services)
                transfer.windows.append((t0, time.monotonic()))
                client.complete(job)
                if n == 0 and sha256_file(out) != sha:
                    raise BenchError("transfer: the downloaded file's sha256 differs from the source's")
                if out.stat().st_size != args.size:
                    raise BenchError(f"transfer: {out.stat().st_size} bytes, not {args.size}")
                out.unlink()

        run_phase(transfer, args, services, readers, body)
    walls = [w1 - w0 for w0, w1 in transfer.windows]
    rates = ", ".join(f"{args.size / w / 1e6:.0f}" for w in walls)
    transfer.note = f"{args.transfers} x {args.size / MIB:.0f} MiB at {rates} MB/s"
    log(f"  transfer: {len(transfer.lat)} reads, {transfer.note}")
    return idle, transfer, job


def phase_soak(args: argparse.Namespace, services: Services, base_url: str, work: Path, first: str) -> Phase:
    """(iii) --readers readers GET the newest jobs while --jobs small jobs are created,
    transferred and completed by --inflight threads (each its own client)."""
    from openbits.client import Client

    phase = Phase("soak", args.readers)
    readers = new_readers(first)  # (the transfer's job until the first new one)
    counter = iter(range(args.jobs))
    lock = threading.Lock()
    failures: list[str] = []
    dl = work / "dl"

    def driver() -> None:
        with Client(str(services.socket), timeout=60.0) as client:
            while not failures:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                out = dl / f"s{i}.bin"
                try:
                    job = client.create_job(f"bench_latency {i}", priority=0).job_id
                    client.add_file(job, f"{base_url}/small/{i % args.sources}.bin", str(out))
                    client.resume(job)
                    readers.publish(i, job)
                    wait_transferred(client, job, services)
                    client.complete(job)
                    if out.stat().st_size != args.job_size:
                        raise BenchError(f"{out.name}: {out.stat().st_size} bytes, not {args.job_size}")
                    out.unlink()
                except Exception as e:  # (reported by the main thread)
                    failures.append(f"soak job {i}: {type(e).__name__}: {e}")

    def body() -> None:
        threads = [threading.Thread(target=driver, name=f"driver-{n}") for n in range(args.inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run_phase(phase, args, services, readers, body)
    if failures:
        raise BenchError(failures[0])
    wall = phase.t1 - phase.t0
    phase.note = (
        f"{args.jobs} jobs of {args.job_size // KIB} KiB in {wall:.2f} s ({args.jobs / wall:.0f} jobs/s)"
    )
    log(f"  soak: {len(phase.lat)} reads, {phase.note}")
    return phase


# -- the report -------------------------------------------------------------------------------------


def judge(phases: list[Phase]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each phase's latency summary (ms) and stall count; the targets missed."""
    rows: list[dict[str, Any]] = []
    missed: list[str] = []
    for ph in phases:
        if not ph.lat:
            missed.append(f"{ph.name}: no reads")
            continue
        summary = latency_ms(ph.lat)
        summary["stalls_over_100ms"] = sum(1 for x in ph.lat if x * 1000 > STALL_MS)
        verdicts = {}
        for (name, stat), bound in TARGETS.items():
            if name == ph.name:
                ok = summary[stat] <= bound
                verdicts[f"{stat} ≤ {bound:g} ms"] = "met" if ok else "NOT met"
                if not ok:
                    missed.append(f"{name} {stat} {summary[stat]:.1f} ms > {bound:g} ms")
        rows.append(
            {
                "phase": ph.name,
                "readers": ph.readers,
                "calls": len(ph.lat),
                "wall_s": sum(w1 - w0 for w0, w1 in ph.windows),
                "daemon_cpu_s": ph.daemon_cpu_s,
                "other_cpu_s": ph.other_cpu_s,
                "note": ph.note,
                "errors": ph.errors,
                "latency_ms": summary,
                "targets": verdicts,
            }
        )
    return rows, missed


def render(rows: list[dict[str, Any]]) -> str:
    table = [
        [
            "phase",
            "readers",
            "calls",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            ">100 ms",
            "daemon CPU s",
            "targets",
        ]
    ]
    for r in rows:
        s = r["latency_ms"]
        table.append(
            [
                r["phase"],
                str(r["readers"]),
                str(r["calls"]),
                f"{s['median']:.2f}",
                f"{s['p90']:.2f}",
                f"{s['p99']:.2f}",
                f"{s['max']:.1f}",
                str(s["stalls_over_100ms"]),
                f"{r['daemon_cpu_s']:.2f}",
                "; ".join(f"{k}: {v}" for k, v in r["targets"].items()) or "–",
            ]
        )
    return render_rows(table)


def report_probe(probe_path: Path, phases: list[Phase], top: int) -> dict[str, Any]:
    """The probe's stalls per phase: the top sites (file:line) by total stalled time."""
    if not probe_path.exists():
        log("probe: no output (did the daemon start with bench/loopprobe?)")
        return {}
    doc = json.loads(probe_path.read_text())
    out: dict[str, Any] = {"ticks": doc["ticks"], "edges_ms": doc["edges_ms"], "buckets": doc["buckets"]}
    for ph in phases:
        stalls = [s for s in doc["stalls"] if any(w0 <= s["t"] <= w1 for w0, w1 in ph.windows)]
        sites = stall_sites(stalls, top)
        out[ph.name] = {
            "stalls": len(stalls),
            "stalled_ms": sum(s["late_ms"] for s in stalls),
            "sites": sites,
        }
        log(
            f"\nprobe, {ph.name}: {len(stalls)} stalls over {doc['threshold_ms']:g} ms, "
            f"{out[ph.name]['stalled_ms']:.0f} ms in all; top sites (stalls, total ms, max ms):"
        )
        for s in sites:
            log(f"  {s['count']:5d} {s['total_ms']:8.1f} {s['max_ms']:7.1f}  {s['site']}")
            if s["caller"]:
                log(f"{'':27}  via {s['caller']}")
            if s["sampled_cpu_ms"] or s["sampled_runqueue_ms"]:
                log(
                    f"{'':27}  sampled spans: {s['sampled_cpu_ms']:.0f} ms on a CPU, "
                    f"{s['sampled_runqueue_ms']:.0f} ms waiting for one"
                )
            for state, n in s["kernel"]:
                log(f"{'':27}  kernel ({n} samples): {state or '?'}")
    return out


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--size", type=int, default=512 * MIB, help="the transfer's file (default 512 MiB)")
    p.add_argument(
        "--transfers", type=int, default=3, help="transfer: jobs of --size, one after another (default 3)"
    )
    p.add_argument("--jobs", type=int, default=200, help="soak: jobs of one small file (default 200)")
    p.add_argument("--job-size", type=int, default=64 * KIB, help="soak: each job's file (default 64 KiB)")
    p.add_argument("--sources", type=int, default=50, help="soak: distinct small files served (default 50)")
    p.add_argument("--inflight", type=int, default=8, help="soak: jobs in flight at once (default 8)")
    p.add_argument("--readers", type=int, default=20, help="soak: reading processes (default 20)")
    p.add_argument("--idle-readers", type=int, default=1, help="idle and transfer: readers (default 1)")
    p.add_argument("--idle-s", type=float, default=5.0, help="idle phase in s (default 5)")
    p.add_argument(
        "--interval-ms",
        type=float,
        default=2.0,
        help="idle and transfer: pause between the reader's calls (default 2 ms)",
    )
    p.add_argument(
        "--soak-interval-ms",
        type=float,
        default=50.0,
        help="soak: pause between one reader's calls (default 50 ms, as soak.py's)",
    )
    p.add_argument(
        "--probe", action="store_true", help="start the daemon with bench/loopprobe and print its stall sites"
    )
    p.add_argument(
        "--probe-ms", type=float, default=5.0, help="probe: a stall is a lateness above (default 5)"
    )
    p.add_argument("--top", type=int, default=8, help="probe: sites shown per phase (default 8)")
    add_keep_arg(p, "files, logs, state, the probe's output")
    add_output_args(p, JSON_PATH)
    args = parse_common_args(p, argv)
    if (
        min(
            args.size,
            args.transfers,
            args.jobs,
            args.job_size,
            args.sources,
            args.inflight,
            args.readers,
            args.idle_readers,
        )
        < 1
    ):
        p.error("sizes and counts must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("bench_latency")
    if tools is None:
        return 2
    session = Session("bench_latency", args, ["www", "www/small", "dl", "logs"])
    work = session.work
    probe_path = work / "loopprobe.json"
    daemon_env = dict(args.daemon_env)
    if args.probe:
        daemon_env |= {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE_DIR), os.environ.get("PYTHONPATH")])),
            "OPENBITS_LOOP_PROBE": str(probe_path),
            "OPENBITS_LOOP_PROBE_MS": str(args.probe_ms),
        }
    services = Services(work, tools.nginx, tools.venv_python, daemon_env)
    phases: list[Phase] = []
    vers: dict[str, str] = {}
    probe: dict[str, Any] = {}
    with session.guard(lambda: session.stop_services(services), remove_at_exit=False):
        session.log_start()
        vers = versions(tools.nginx, None, tools.venv_python)
        log_versions(vers, skip=("curl", "aria2c"))
        log(f"writing {args.size} + {args.sources} x {args.job_size} random bytes ...")
        sha = write_random_file(work / "www" / "test.bin", args.size)
        for i in range(args.sources):
            write_random_file(work / "www" / "small" / f"{i}.bin", args.job_size)
        url = services.start_nginx("/test.bin", args.size)
        config = write_daemon_config(work / "openbits.toml", {**RAISED_LIMITS, **args.daemon_setting})
        services.start_daemon(config, answer=True)
        log(f"openbits daemon on {services.socket}{' with the loop probe' if args.probe else ''}")
        log_daemon_env(args.daemon_env)
        idle, transfer, job = phase_idle_and_transfer(args, services, url, work, sha)
        phases += [idle, transfer]
        phases.append(phase_soak(args, services, url.rsplit("/", 1)[0], work, job))
    if args.probe and phases:  # (the probe wrote its file as the daemon's loop stopped)
        probe = report_probe(probe_path, phases, args.top)
    session.remove_work()
    if session.interrupted:
        return 130
    rows, missed = judge(phases)
    if rows:
        log("")
        log_machine_line(session.machine)
        log_loadavg_line(session.machine)
        log(
            f"a read: GET of one job (with its files) over the Unix socket; a reader's calls "
            f"{args.interval_ms:g} ms apart ({args.soak_interval_ms:g} ms in the soak)"
        )
        log("")
        log(render(rows))
        for r in rows:
            if r["errors"]:
                log(f"{r['phase']}: reader errors: {r['errors']}")
        log(f"targets: {'all met' if not missed else 'NOT met: ' + '; '.join(missed)}")
        if args.probe:
            log("(the daemon ran with the loop probe: 1,000 wake-ups/s of its own; compare without --probe)")
    json_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return session.finish(
        args.json,
        json_args,
        vers,
        phases=rows,
        targets={f"{k[0]} {k[1]}": v for k, v in TARGETS.items()},
        targets_missed=missed,
        probe=probe,
        daemon_exit_status=session.daemon_rc,
    )


if __name__ == "__main__":
    sys.exit(main())
