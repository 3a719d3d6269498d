#!/usr/bin/env python3
"""Soak: 10,000 jobs of small files through one daemon, with 20 clients reading the API all along.

Run from the repository root::

    .venv/bin/python bench/soak.py [--jobs N] [--clients N] [--idle S] [--keep]

One invocation starts its own nginx (a pool of small random files) and one daemon on a
fresh state directory (SQLite store), then:

* pushes ``--jobs`` jobs of 1–3 small files (1–16 KiB) through CreateJob, AddFileSet,
  Resume, wait for JobTransferred (one ``GET /events`` stream), Complete, keeping
  ``--inflight`` jobs in flight (``--drivers`` threads complete and submit them); every
  published file's sha256 is checked, then the file is deleted;
* meanwhile ``--clients`` client processes (one connection each over the Unix socket)
  call GetJob, list their jobs and run a WQL query (``--reads``), a pause of
  ``--client-interval`` between calls, and record every latency;
* every ``--sample-every`` jobs it reads the daemon's VmRSS, open fds (by kind), threads
  and the jobs it holds (``GET /metrics``): the curve;
* after the last job every client disconnects, and the daemon's CPU (utime + stime
  ticks) and wake-ups (context switches of all its threads) are measured over
  ``--idle`` seconds of idleness.

The targets (issue 5, item 5), each judged and printed as met / NOT met:

* RSS stable: from the sample at ``--baseline`` jobs to the last, VmRSS grows by at most
  max(``--rss-tolerance-mib``, ``--rss-tolerance-pct`` of the baseline);
* fds stable: the open fds grow by at most ``--fd-tolerance`` over the same span, and
  after the idle window the daemon holds at most one fd more than when it started (a
  kept-alive connection to nginx);
* idle: at most ``--idle-ticks`` clock ticks of CPU and ``--idle-wakeups`` wake-ups over
  the idle window (no busy polling);
* reads under load: p99 of the clients' calls below ``--p99-ms``.

Writes ``bench/out/soak.json``.  Exit status 0 when every check passed and every target
was met, 1 otherwise (``--report-only``: targets do not change it), 2 when a tool is
missing, 130 when interrupted.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import hashlib
import http.client
import multiprocessing
import os
import queue
import random
import signal
import socket
import statistics
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedString
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    CLK_TCK,
    ERROR,
    KIB,
    MIB,
    OUT_DIR,
    TRANSFERRED,
    BenchError,
    Services,
    Session,
    UnixHTTPConnection,
    add_keep_arg,
    add_output_args,
    find_tools,
    latency_ms,
    log,
    log_daemon_env,
    log_versions,
    machine_busy_s,
    new_parser,
    parse_common_args,
    proc_status,
    proc_status_path,
    render_rows,
    sha256_file,
    tail,
    versions,
    write_daemon_config,
)

if TYPE_CHECKING:
    from openbits.client import Client, EventStream

JSON_PATH = OUT_DIR / "soak.json"
#: the reads the clients make, with their weights
READ_OPS = ("get_job", "list_jobs", "query")
READ_WEIGHTS = (2, 1, 1)
#: the jobs GetJob picks from: the newest ID_SLOTS submitted ({GUID}: 38 characters)
ID_SLOTS, ID_LEN = 256, 38
#: the CreateJob verb is timed alone (Client.create_job reads the new job back too)
CREATE_JOB = "/root/microsoft/bits/BitsClientJob/CreateJob"
WQL = "SELECT JobId, State, BytesTransferred FROM BitsClientJob WHERE State = 6 OR State = 2"
#: no JobTransferred / JobError for this long: look at the jobs in flight (and fail if none moved)
STALL_S = 60.0
EVENT_TYPES = ("JobTransferred", "JobError")


# -- /proc ---------------------------------------------------------------------------------------


def proc_ticks(pid: int) -> int:
    """utime + stime of a whole process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def thread_switches(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread ("TID name"): (voluntary, involuntary) context switches."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                st = proc_status_path(f"/proc/{pid}/task/{tid}/status")
                with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8", errors="replace") as fh:
                    name = fh.read().strip()
                out[f"{tid} {name}"] = (
                    st.get("voluntary_ctxt_switches", 0),
                    st.get("nonvoluntary_ctxt_switches", 0),
                )
    return out


def socket_inodes(pid: int, table: str) -> set[str]:
    """The inodes of the sockets in /proc/PID/net/TABLE (tcp, tcp6, unix) of the process's
    network namespace."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}", encoding="ascii") as fh:
        header = fh.readline().split()
        col = header.index("Inode") if "Inode" in header else 9  # tcp: inode is the 10th column
        for line in fh:
            parts = line.split()
            if len(parts) > col:
                inodes.add(parts[col])
    return inodes


def fd_kinds(pid: int) -> Counter[str]:
    """The process's open fds by kind: unix and tcp sockets, pipe, anon (epoll, eventfd…),
    file, other."""
    kinds: Counter[str] = Counter()
    fd_dir = f"/proc/{pid}/fd"
    tcp = socket_inodes(pid, "tcp") | socket_inodes(pid, "tcp6")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            kinds["tcp" if target[8:-1] in tcp else "unix"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon:" + target.removeprefix("anon_inode:").strip("[]")] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return kinds


def jobs_by_state(socket_path: Path) -> dict[str, int]:
    """The jobs the daemon keeps (live ones, and finished ones within their retention), by
    state name (``openbits_jobs`` of ``GET /metrics``, as administrator)."""
    conn = UnixHTTPConnection(socket_path, 30.0)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"GET /metrics answered {resp.status}")
    by_state: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("openbits_jobs{"):
            labels, _sep, value = line.rpartition(" ")
            state = labels.split('state="', 1)[1].split('"', 1)[0]
            by_state[state] += int(float(value))
    return {k: v for k, v in sorted(by_state.items()) if v}


# -- the reading clients (each a process of its own) ------------------------------------------------


def client_worker(
    socket_path: str,
    interval_s: float,
    weights: Sequence[int],
    ids: SynchronizedString,
    seed: int,
    stop: EventType,
    out: Connection,
) -> None:
    """One reading client, until ``stop``: GetJob of one of the newest jobs (``ids``, which the
    driver fills), list its jobs, or a WQL query, chosen by ``weights`` (for ``READ_OPS``);
    then sends ``{"t": [...], "op": [...], "lat": [...], "errors": {...}, "not_found": n}``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it
    from openbits.client import Client
    from openbits.errors import BitsError, NotFound

    rng = random.Random(seed)
    times, ops, lats = array("d"), array("b"), array("d")
    errors: Counter[str] = Counter()
    not_found = 0
    with Client(socket_path, timeout=60.0) as client:
        while not stop.is_set():
            op = rng.choices(range(len(READ_OPS)), weights)[0]
            job = ""
            if op == 0:
                slot = rng.randrange(ID_SLOTS) * ID_LEN
                with ids.get_lock():
                    job = ids[slot : slot + ID_LEN].rstrip(b"\0").decode()
                if not job:  # (no job yet)
                    stop.wait(0.01)
                    continue
            t0 = time.monotonic()
            try:
                if op == 0:
                    client.get_job(job, include_finished=True)
                elif op == 1:
                    client.list_jobs()
                else:
                    client.query(WQL)
            except NotFound:
                not_found += 1  # (a job purged since: only with a short retention)
                continue
            except (BitsError, OSError, http.client.HTTPException) as e:
                errors[f"{READ_OPS[op]}: {type(e).__name__}: {e}"[:200]] += 1
                time.sleep(0.1)
                continue
            t1 = time.monotonic()
            times.append(t0)
            ops.append(op)
            lats.append(t1 - t0)
            if interval_s > 0:
                stop.wait(interval_s)
    out.send(
        {
            "t": times.tolist(),
            "op": ops.tolist(),
            "lat": lats.tolist(),
            "errors": dict(errors),
            "not_found": not_found,
        }
    )
    out.close()


@dataclass(slots=True)
class Readers:
    """The client processes, and what they recorded once stopped."""

    procs: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)
    stop: EventType | None = None
    #: the newest jobs' ids (ID_SLOTS of ID_LEN bytes, round robin), for GetJob
    ids: SynchronizedString = field(
        default_factory=lambda: multiprocessing.get_context("spawn").Array(ctypes.c_char, ID_SLOTS * ID_LEN)
    )
    t: list[float] = field(default_factory=list)
    op: list[int] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    not_found: int = 0

    def start(self, n: int, socket_path: Path, interval_s: float, weights: Sequence[int], seed: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # (no fork of a process with threads)
        self.stop = ctx.Event()
        for i in range(n):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=client_worker,
                args=(str(socket_path), interval_s, weights, self.ids, seed * 1000 + i, self.stop, child),
                name=f"soak-client-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)

    def finish(self, timeout_s: float = 30.0) -> None:
        """Stop every client and collect its samples (idempotent; kills a client that hangs)."""
        if self.stop is not None:
            self.stop.set()
        deadline = time.monotonic() + timeout_s
        for proc, pipe in zip(self.procs, self.pipes, strict=True):
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    got = pipe.recv()
                    self.t += got["t"]
                    self.op += got["op"]
                    self.lat += got["lat"]
                    self.errors.update(got["errors"])
                    self.not_found += got["not_found"]
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

    def publish(self, i: int, job: str) -> None:
        """Offer the ``i``-th job to the clients' GetJob."""
        slot = (i % ID_SLOTS) * ID_LEN
        with self.ids.get_lock():
            self.ids[slot : slot + ID_LEN] = job.encode().ljust(ID_LEN, b"\0")[:ID_LEN]

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.is_alive())


# -- the jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    path: str  # URL path on nginx
    size: int
    sha256: str


@dataclass(slots=True)
class Sample:
    jobs: int
    t_s: float  # since the first job was submitted (0 before)
    rss_kib: int
    hwm_kib: int
    fds: int
    fd_kinds: dict[str, int]
    threads: int
    daemon_cpu_s: float
    kept: dict[str, int]  # the jobs the daemon keeps, by state (GET /metrics)
    jobs_per_s: float = 0.0  # over the interval since the previous sample
    read_p99_ms: float | None = None  # the clients' calls started in that interval
    read_max_ms: float | None = None
    read_calls: int = 0
    label: str = ""

    @property
    def live(self) -> int:
        """Jobs not finished (neither ACKNOWLEDGED nor CANCELLED)."""
        return sum(n for state, n in self.kept.items() if state not in ("ACKNOWLEDGED", "CANCELLED"))

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


@dataclass(slots=True)
class LoadCpu:
    """CPU seconds over the load phase: the machine's busy time and who used it (the
    difference of two :meth:`take`; ``bench`` is this process and its reaped children,
    the clients)."""

    wall_s: float = 0.0
    machine_busy_s: float = 0.0
    daemon_s: float = 0.0
    nginx_s: float = 0.0
    bench_s: float = 0.0

    @property
    def other_s(self) -> float:
        return self.machine_busy_s - self.daemon_s - self.nginx_s - self.bench_s

    @classmethod
    def take(cls, services: Services) -> LoadCpu:
        t = os.times()
        return cls(
            time.monotonic(),
            machine_busy_s(),
            services.daemon_cpu_s(),
            services.nginx_cpu_s(),
            t.user + t.system + t.children_user + t.children_system,
        )

    def since(self, before: LoadCpu) -> LoadCpu:
        return LoadCpu(
            self.wall_s - before.wall_s,
            self.machine_busy_s - before.machine_busy_s,
            self.daemon_s - before.daemon_s,
            self.nginx_s - before.nginx_s,
            self.bench_s - before.bench_s,
        )


@dataclass(slots=True)
class Results:
    jobs: int
    jobs_done: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_checked: int = 0
    job_errors: list[str] = field(default_factory=list)
    run_s: float = 0.0
    jobs_per_s: float = 0.0
    files_per_s: float = 0.0
    daemon_cpu_run_s: float = 0.0
    cpu: LoadCpu = field(default_factory=LoadCpu)  # over the load phase (clients started → stopped)
    samples: list[Sample] = field(default_factory=list)
    verbs_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    reads_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    read_calls: dict[str, int] = field(default_factory=dict)
    read_errors: dict[str, int] = field(default_factory=dict)
    read_not_found: int = 0
    read_rate_per_s: float = 0.0
    stream_reopens: int = 0
    stall_checks: int = 0
    idle_s: float = 0.0
    settle_s: float = 0.0
    settle_ticks: int = 0
    idle_ticks: int = 0
    idle_cpu_s: float = 0.0
    idle_wakeups: int = 0  # voluntary context switches of every thread over the window
    idle_involuntary: int = 0
    idle_wakeups_by_thread: dict[str, int] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    stop_status: int | None = None


class Driver:
    """Pushes the jobs through the daemon, ``inflight`` at a time, and samples the curve.

    This thread reads the JobTransferred / JobError events (one stream) and hands each
    finished job to one of ``drivers`` threads (each with its own connection), which
    completes it, checks its files and submits the next job."""

    def __init__(
        self,
        args: argparse.Namespace,
        services: Services,
        base_url: str,
        sources: Sequence[Source],
        dl: Path,
        res: Results,
        readers: Readers,
    ) -> None:
        from openbits.client import Client

        self.args = args
        self.services = services
        self.base_url = base_url
        self.sources = sources
        self.dl = dl
        self.res = res
        self.readers = readers
        self.pid = services.daemon_pid()
        self.rng = random.Random(args.seed)
        self.client = Client(str(services.socket), timeout=120.0)  # this thread's
        self.events_client = Client(str(services.socket), timeout=120.0)
        self.lock = threading.Lock()
        #: job -> its files; a job is removed once handed to a driver thread
        self.inflight: dict[str, list[tuple[Path, Source]]] = {}
        self.files: dict[str, list[tuple[Path, Source]]] = {}  # every job not finished yet
        self.submitted = 0
        self.handed = 0
        self.todo: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self.failure: BaseException | None = None
        self.all_done = threading.Event()
        self.stream: EventStream | None = None
        self.verbs: dict[str, list[float]] = {
            v: [] for v in ("CreateJob", "AddFileSet", "Resume", "Complete")
        }
        self.t_start = 0.0  # monotonic, when the first job was submitted
        self.t_last_sample = 0.0
        self.done_last_sample = 0
        self.sample_times: list[float] = []  # monotonic time of each sample (for the read p99s)

    def close(self) -> None:
        self.client.close()
        self.events_client.close()

    def sample(self, label: str = "") -> Sample:
        st = proc_status(self.pid)
        kinds = fd_kinds(self.pid)
        now = time.monotonic()
        done = self.res.jobs_done
        interval = now - self.t_last_sample if self.t_last_sample else 0.0
        s = Sample(
            jobs=done,
            t_s=now - self.t_start if self.t_start else 0.0,
            rss_kib=st.get("VmRSS", 0),
            hwm_kib=st.get("VmHWM", 0),
            fds=sum(kinds.values()),
            fd_kinds=dict(sorted(kinds.items())),
            threads=st.get("Threads", 0),
            daemon_cpu_s=self.services.daemon_cpu_s(),
            kept=jobs_by_state(self.services.socket),
            jobs_per_s=(done - self.done_last_sample) / interval if interval > 0 else 0.0,
            label=label,
        )
        if self.t_start:
            self.t_last_sample, self.done_last_sample = now, done
        self.sample_times.append(now)
        self.res.samples.append(s)
        return s

    # -- the driver threads -----------------------------------------------------------------

    def submit(self, client: Client) -> bool:
        """Create, fill and resume the next job (False: all are submitted)."""
        with self.lock:
            if self.submitted >= self.args.jobs:
                return False
            i = self.submitted
            self.submitted += 1
            n_files = self.rng.randint(self.args.files_min, self.args.files_max)
            picks = [self.rng.choice(self.sources) for _ in range(n_files)]
        files = [(self.dl / f"j{i:06d}-{k}.bin", src) for k, src in enumerate(picks)]
        t0 = time.perf_counter()
        body = {"DisplayName": f"soak-{i:06d}", "Priority": self.args.priority}
        job = client.request("POST", CREATE_JOB, body)["JobId"]
        t1 = time.perf_counter()
        self.readers.publish(i, job)
        client.add_file_set(job, [(self.base_url + src.path, str(dest)) for dest, src in files])
        t2 = time.perf_counter()
        with self.lock:  # (before Resume: its event may come at once)
            self.inflight[job] = self.files[job] = files
        client.resume(job)
        t3 = time.perf_counter()
        self.verbs["CreateJob"].append(t1 - t0)
        self.verbs["AddFileSet"].append(t2 - t1)
        self.verbs["Resume"].append(t3 - t2)
        return True

    def finish_job(self, client: Client, job: str, state: int) -> None:
        files = self.files[job]
        if state == ERROR:
            info = client.get_error(job).raw
            self.res.job_errors.append(f"{job}: {info}"[:500])
            with contextlib.suppress(Exception):
                client.cancel(job)
            raise BenchError(f"job {job} went to ERROR: {info}")
        t0 = time.perf_counter()
        rv = client.complete(job)
        self.verbs["Complete"].append(time.perf_counter() - t0)
        if rv != 0:
            raise BenchError(f"Complete({job}) returned {rv:#x}, expected 0")
        size = 0
        for dest, src in files:
            try:
                digest = sha256_file(dest)
            except OSError as e:
                raise BenchError(f"{job}: {dest.name} not published after Complete: {e}") from e
            if digest != src.sha256:
                raise BenchError(
                    f"{job}: {dest.name} has sha256 {digest}, expected {src.sha256} ({src.path})"
                )
            dest.unlink()
            size += src.size
        with self.lock:
            del self.files[job]
            self.res.files_checked += len(files)
            self.res.files_done += len(files)
            self.res.bytes_done += size
            self.res.jobs_done += 1
            done = self.res.jobs_done
            if done % self.args.sample_every == 0 or done in (self.args.baseline, self.args.jobs):
                self.services.check_daemon_alive()
                s = self.sample()
                log(
                    f"{done:>6} jobs {s.t_s:7.1f} s  {s.jobs_per_s:6.1f} jobs/s  VmRSS {s.rss_mib:6.1f} MiB  "
                    f"fds {s.fds:3d}  threads {s.threads:2d}  live {s.live:>3}  "
                    f"kept {sum(s.kept.values()):>6}  clients alive {self.readers.alive()}"
                )
            if done == self.args.jobs:
                self.all_done.set()  # (after the last sample: the driver threads are still connected)

    def worker(self) -> None:
        from openbits.client import Client

        try:
            with Client(str(self.services.socket), timeout=120.0) as client:
                while self.failure is None:
                    item = self.todo.get()
                    try:
                        if item is None:
                            return
                        self.finish_job(client, *item)
                        self.submit(client)
                    finally:
                        self.todo.task_done()
        except BaseException as e:  # reported by run(); the event reader is woken to see it
            self.failure = e
            self.abort()

    def abort(self) -> None:
        """Wake the event reader (blocked on its stream) so that it sees the failure."""
        stream = self.stream
        sock = stream._conn.sock if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- the event reader (this thread) ----------------------------------------------------------

    def hand(self, job: str, state: int) -> None:
        with self.lock:
            if self.inflight.pop(job, None) is None:
                return  # handed already (or not ours)
            self.handed += 1
        self.todo.put((job, state))

    def reconcile(self, why: str) -> int:
        """Look at every job in flight (after a stall or a Reset): hand on those that are
        done; how many were."""
        moved = 0
        with self.lock:
            jobs = list(self.inflight)
        for job in jobs:
            state = self.client.get_job(job, include_finished=True, files=False).state
            if state in (TRANSFERRED, ERROR):
                self.hand(job, state)
                moved += 1
        log(f"{why}: looked at the {len(jobs)} jobs in flight, {moved} finished")
        return moved

    def _check(self) -> None:
        if self.failure is not None:
            self.services.check_daemon_alive()  # (the likeliest cause, said first)
            if isinstance(self.failure, BenchError):
                raise self.failure
            raise BenchError(f"a driver thread failed: {self.failure!r}") from self.failure
        self.services.check_daemon_alive()

    def run(self) -> None:
        n = self.args.jobs
        self.stream = self.events_client.events(types=EVENT_TYPES, timeout=STALL_S)
        last_id = self.stream.last_event_id
        threads = [
            threading.Thread(target=self.worker, name=f"driver-{i}", daemon=True)
            for i in range(self.args.drivers)
        ]
        self.t_start = self.t_last_sample = time.monotonic()
        cpu0 = self.services.daemon_cpu_s()
        try:
            for _ in range(min(n, self.args.inflight)):
                self.submit(self.client)
            for t in threads:
                t.start()
            while self.handed < n:
                self._check()
                try:
                    event = next(self.stream)
                except TimeoutError:
                    self.res.stall_checks += 1
                    self._check()
                    if not self.reconcile(f"no event for {STALL_S:.0f} s"):
                        with self.lock:
                            jobs = list(self.inflight)
                        states = Counter(self.client.get_job(j, files=False).state.name for j in jobs)
                        raise BenchError(
                            f"no job finished for {STALL_S:.0f} s; in flight: {dict(states)}\n"
                            f"{tail(self.services.daemon_log)}"
                        ) from None
                    self.stream = self._reopen(last_id)
                    continue
                except StopIteration:
                    self._check()
                    self.res.stream_reopens += 1
                    self.stream = self._reopen(last_id)
                    continue
                last_id = self.stream.last_event_id
                if event.id is None:  # Reset: events were missed
                    self.reconcile("Reset event")
                    continue
                data = event.data if isinstance(event.data, dict) else {}
                state = data.get("State")
                if state in (TRANSFERRED, ERROR):
                    self.hand(str(data.get("JobId")), state)
            while self.failure is None and not self.all_done.wait(0.05):
                pass  # (the last jobs are being completed: no event to wait for)
            self._check()
        finally:
            if self.failure is None and not self.all_done.is_set():
                self.failure = BenchError("stopped")  # (the threads stop at their next job)
            for _ in threads:
                self.todo.put(None)
            for t in threads:
                t.join(30.0)
            self.stream.close()
            self.res.run_s = time.monotonic() - self.t_start
            self.res.daemon_cpu_run_s = self.services.daemon_cpu_s() - cpu0

    def _reopen(self, last_id: int | None) -> EventStream:
        return self.events_client.events(last_id, types=EVENT_TYPES, timeout=STALL_S)


# -- the run ------------------------------------------------------------------------------------------


def make_sources(www: Path, n: int, size_min: int, size_max: int, rng: random.Random) -> list[Source]:
    out = []
    for i in range(n):
        size = rng.randint(size_min, size_max)
        data = rng.randbytes(size)
        name = f"s{i:03d}.bin"
        (www / name).write_bytes(data)
        out.append(Source("/" + name, size, hashlib.sha256(data).hexdigest()))
    return out


def idle_window(args: argparse.Namespace, services: Services, res: Results) -> None:
    """CPU ticks and wake-ups of the daemon while nothing happens (no client is connected)."""
    pid = services.daemon_pid()
    t0 = proc_ticks(pid)
    time.sleep(args.settle)
    res.settle_s = args.settle
    res.settle_ticks = proc_ticks(pid) - t0
    before = thread_switches(pid)
    ticks0 = proc_ticks(pid)
    t = time.perf_counter()
    time.sleep(args.idle)
    res.idle_s = time.perf_counter() - t
    res.idle_ticks = proc_ticks(pid) - ticks0
    after = thread_switches(pid)
    res.idle_cpu_s = res.idle_ticks / CLK_TCK
    for name, (vol, invol) in after.items():
        v0, i0 = before.get(name, (0, 0))
        res.idle_wakeups += vol - v0
        res.idle_involuntary += invol - i0
        if vol - v0 or invol - i0:
            res.idle_wakeups_by_thread[name] = vol - v0 + invol - i0


def reads_by_interval(driver: Driver, readers: Readers, res: Results) -> None:
    """Each sample's p99 of the reads that started since the previous sample."""
    times = driver.sample_times
    buckets: list[list[float]] = [[] for _ in times]
    for t, lat in zip(readers.t, readers.lat, strict=True):
        i = bisect.bisect_right(times, t)
        if 0 < i < len(times):
            buckets[i].append(lat)
    for s, b in zip(res.samples, buckets, strict=True):
        if b:
            s.read_calls = len(b)
            st = latency_ms(b)
            s.read_p99_ms, s.read_max_ms = st["p99"], st["max"]


def measure(
    args: argparse.Namespace,
    services: Services,
    config: Path | None,
    sources: Sequence[Source],
    base_url: str,
    dl: Path,
    res: Results,
    readers: Readers,
) -> None:
    services.start_daemon(config, answer=True)
    driver = Driver(args, services, base_url, sources, dl, res, readers)
    try:
        s = driver.sample("daemon started")
        log(f"daemon started: VmRSS {s.rss_mib:.1f} MiB, {s.fds} fds {s.fd_kinds}, {s.threads} threads")
        cpu0 = LoadCpu.take(services)
        weights = [w if op in args.reads else 0 for op, w in zip(READ_OPS, READ_WEIGHTS, strict=True)]
        readers.start(args.clients, services.socket, args.client_interval, weights, args.seed)
        time.sleep(1.0)  # (spawned interpreters import and connect)
        log(f"{args.clients} reading clients started ({readers.alive()} alive)")
        log(
            f"pushing {args.jobs} jobs of {args.files_min}-{args.files_max} files "
            f"({args.size_min}-{args.size_max} bytes), {args.inflight} in flight ..."
        )
        driver.run()
        end = res.samples[-1]
        readers.finish()
        res.cpu = LoadCpu.take(services).since(cpu0)
    finally:
        driver.close()
        readers.finish()
    res.jobs_per_s = res.jobs_done / res.run_s if res.run_s else 0.0
    res.files_per_s = res.files_done / res.run_s if res.run_s else 0.0
    res.verbs_ms = {v: latency_ms(x) for v, x in driver.verbs.items() if x}
    reads_by_interval(driver, readers, res)
    for i, op in enumerate(READ_OPS):
        lat = [x for x, o in zip(readers.lat, readers.op, strict=True) if o == i]
        res.read_calls[op] = len(lat)
        if lat:
            res.reads_ms[op] = latency_ms(lat)
    if readers.lat:
        res.reads_ms["all"] = latency_ms(readers.lat)
        res.read_calls["all"] = len(readers.lat)
        span = max(readers.t) - min(readers.t)
        res.read_rate_per_s = len(readers.lat) / span if span > 0 else 0.0
    res.read_errors = dict(readers.errors)
    res.read_not_found = readers.not_found
    log(f"{res.jobs_done} jobs in {res.run_s:.1f} s ({res.jobs_per_s:.1f} jobs/s); clients stopped")
    s = driver.sample("clients disconnected")
    log(
        f"after the clients left: VmRSS {s.rss_mib:.1f} MiB (at the last job {end.rss_mib:.1f}), "
        f"{s.fds} fds {s.fd_kinds}"
    )
    log(f"idle for {args.settle:g} + {args.idle:g} s with no client connected ...")
    idle_window(args, services, res)
    s = driver.sample("after idle")
    log(
        f"idle {res.idle_s:.1f} s: {res.idle_ticks} ticks of CPU, {res.idle_wakeups} voluntary + "
        f"{res.idle_involuntary} involuntary context switches {res.idle_wakeups_by_thread or ''}"
    )
    res.leftovers = sorted(p.name for p in dl.iterdir())[:20]
    if res.leftovers:
        raise BenchError(f"files left in the download directory: {res.leftovers}")
    res.stop_status = services.stop_daemon()
    if res.stop_status != 0:
        raise BenchError(
            f"openbits serve exited with {res.stop_status} after SIGTERM:\n{tail(services.daemon_log)}"
        )


# -- judging and printing ------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    value: str
    limit: str
    met: bool


def growth_slope_kib_per_job(samples: Sequence[Sample]) -> float | None:
    """Least-squares slope of VmRSS over jobs done (KiB per job)."""
    if len(samples) < 2:
        return None
    xs = [float(s.jobs) for s in samples]
    ys = [float(s.rss_kib) for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def judge(args: argparse.Namespace, res: Results) -> tuple[list[Target], dict[str, Any]]:
    curve = [s for s in res.samples if not s.label]
    base = next((s for s in curve if s.jobs == args.baseline), None)
    last = curve[-1] if curve else None
    targets: list[Target] = []
    extra: dict[str, Any] = {}
    if base is not None and last is not None and last.jobs > base.jobs:
        allowed_kib = max(args.rss_tolerance_mib * 1024, base.rss_kib * args.rss_tolerance_pct / 100)
        grew = last.rss_kib - base.rss_kib
        slope = growth_slope_kib_per_job([s for s in curve if s.jobs >= base.jobs])
        kept = sum(last.kept.values()) - sum(base.kept.values())
        extra.update(
            rss_growth_kib=grew,
            rss_allowed_kib=allowed_kib,
            rss_slope_kib_per_job=slope,
            kept_jobs_growth=kept,
            rss_growth_kib_per_kept_job=grew / kept if kept > 0 else None,
        )
        targets.append(
            Target(
                f"RSS stable from {base.jobs} to {last.jobs} jobs",
                f"{base.rss_mib:.1f} → {last.rss_mib:.1f} MiB ({grew / 1024:+.1f} MiB"
                + (f", slope {slope:.2f} KiB/job" if slope is not None else "")
                + (f"; {kept:+d} jobs kept" if kept else "")
                + ")",
                f"≤ +{allowed_kib / 1024:.1f} MiB",
                grew <= allowed_kib,
            )
        )
        fd_grew = last.fds - base.fds
        extra.update(fd_growth=fd_grew)
        targets.append(
            Target(
                f"open fds stable from {base.jobs} to {last.jobs} jobs",
                f"{base.fds} → {last.fds} ({fd_grew:+d})",
                f"≤ +{args.fd_tolerance}",
                fd_grew <= args.fd_tolerance,
            )
        )
    start = next((s for s in res.samples if s.label == "daemon started"), None)
    after = next((s for s in res.samples if s.label == "after idle"), None)
    if start is not None and after is not None:
        back = after.fds - start.fds
        extra.update(fd_after_idle_minus_start=back)
        targets.append(
            Target(
                "open fds after idle, against the fresh daemon",
                f"{start.fds} → {after.fds} ({back:+d})",
                "≤ +1",
                back <= 1,
            )
        )
    if res.idle_s > 0:  # (not when the run stopped before its idle window)
        targets.append(
            Target(
                f"idle CPU over {res.idle_s:.0f} s",
                f"{res.idle_ticks} ticks ({res.idle_cpu_s * 1000:.0f} ms)",
                f"≤ {args.idle_ticks} ticks",
                res.idle_ticks <= args.idle_ticks,
            )
        )
        targets.append(
            Target(
                f"idle wake-ups over {res.idle_s:.0f} s",
                f"{res.idle_wakeups} voluntary, {res.idle_involuntary} involuntary",
                f"≤ {args.idle_wakeups} voluntary",
                res.idle_wakeups <= args.idle_wakeups,
            )
        )
    reads = res.reads_ms.get("all")
    if reads is not None:
        targets.append(
            Target(
                f"read API p99 under load ({args.clients} clients)",
                f"{reads['p99']:.1f} ms",
                f"< {args.p99_ms:g} ms",
                reads["p99"] < args.p99_ms,
            )
        )
    return targets, extra


def render(args: argparse.Namespace, res: Results, targets: Sequence[Target]) -> str:
    rows = [
        [
            "jobs",
            "at s",
            "jobs/s",
            "VmRSS MiB",
            "VmHWM MiB",
            "fds",
            "unix",
            "tcp",
            "threads",
            "live jobs",
            "kept jobs",
            "reads",
            "read p99 ms",
            "read max ms",
        ]
    ]
    for s in res.samples:
        rows.append(
            [
                f"{s.jobs}" + (f" ({s.label})" if s.label else ""),
                f"{s.t_s:.1f}",
                f"{s.jobs_per_s:.1f}" if s.jobs_per_s else "–",
                f"{s.rss_mib:.1f}",
                f"{s.hwm_kib / 1024:.1f}",
                f"{s.fds}",
                f"{s.fd_kinds.get('unix', 0)}",
                f"{s.fd_kinds.get('tcp', 0)}",
                f"{s.threads}",
                f"{s.live}",
                f"{sum(s.kept.values())}",
                f"{s.read_calls}" if s.read_calls else "–",
                f"{s.read_p99_ms:.1f}" if s.read_p99_ms is not None else "–",
                f"{s.read_max_ms:.0f}" if s.read_max_ms is not None else "–",
            ]
        )
    out = [render_rows(rows), ""]
    lat_rows = [["calls", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean first/last 10% ms"]]
    for op, st in res.reads_ms.items():
        lat_rows.append(
            [
                f"read: {op}",
                f"{res.read_calls.get(op, 0)}",
                f"{st['median']:.2f}",
                f"{st['p90']:.2f}",
                f"{st['p99']:.2f}",
                f"{st['max']:.1f}",
                f"{st['mean_first_10pct']:.2f} / {st['mean_last_10pct']:.2f}",
            ]
        )
    for verb, st in res.verbs_ms.items():
        lat_rows.append(
            [
                f"driver: {verb}",
                f"{res.jobs_done}",
                f"{st['median']:.2f}",
                f"{st['p90']:.2f}",
                f"{st['p99']:.2f}",
                f"{st['max']:.1f}",
                f"{st['mean_first_10pct']:.2f} / {st['mean_last_10pct']:.2f}",
            ]
        )
    out.append(render_rows(lat_rows))
    out.append("")
    out.append(
        f"{res.jobs_done} jobs, {res.files_done} files "
        f"({res.bytes_done / MIB:.1f} MiB, every sha256 checked) "
        f"in {res.run_s:.1f} s: {res.jobs_per_s:.1f} jobs/s, {res.files_per_s:.1f} files/s; "
        f"daemon CPU {res.daemon_cpu_run_s:.1f} s"
    )
    c = res.cpu
    out.append(
        f"CPU over the load phase ({c.wall_s:.1f} s × {os.cpu_count() or 1} CPUs): machine busy "
        f"{c.machine_busy_s:.1f} s = daemon {c.daemon_s:.1f} + nginx {c.nginx_s:.1f} + this benchmark "
        f"(driver and clients) {c.bench_s:.1f} + other {c.other_s:.1f} s"
    )
    if c.wall_s and c.other_s > 0.1 * c.wall_s:
        out.append(
            f"note: other programs used {c.other_s / c.wall_s:.0%} of a CPU during the load phase: "
            "latencies and jobs/s are not trustworthy, rerun on an idle machine"
        )
    out.append(
        f"reads: {res.read_calls.get('all', 0)} calls from {args.clients} clients "
        f"({res.read_rate_per_s:.0f}/s), {sum(res.read_errors.values())} errors, "
        f"{res.read_not_found} not found"
    )
    out.append(
        f"idle: {res.idle_ticks} ticks over {res.idle_s:.1f} s (after {res.settle_s:g} s to settle: "
        f"{res.settle_ticks} ticks); wake-ups by thread: {res.idle_wakeups_by_thread or 'none'}"
    )
    out.append("")
    t_rows = [["target", "value", "limit", "verdict"]]
    t_rows += [[t.name, t.value, t.limit, "met" if t.met else "NOT met"] for t in targets]
    out.append(render_rows(t_rows))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--jobs", type=int, default=10000, help="jobs to push through (default 10000)")
    p.add_argument("--inflight", type=int, default=50, help="jobs in flight at once (default 50)")
    p.add_argument("--files-min", type=int, default=1, help="files per job, at least (default 1)")
    p.add_argument("--files-max", type=int, default=3, help="files per job, at most (default 3)")
    p.add_argument("--size-min", type=int, default=1 * KIB, help="file size, at least (default 1024)")
    p.add_argument("--size-max", type=int, default=16 * KIB, help="file size, at most (default 16384)")
    p.add_argument("--pool", type=int, default=64, help="distinct source files on nginx (default 64)")
    p.add_argument(
        "--priority", type=int, default=2, choices=(0, 1, 2, 3), help="job priority (default 2, NORMAL)"
    )
    p.add_argument(
        "--drivers", type=int, default=4, help="threads completing and submitting jobs (default 4)"
    )
    p.add_argument("--clients", type=int, default=20, help="reading client processes (default 20)")
    p.add_argument(
        "--client-interval",
        type=float,
        default=0.05,
        help="pause between one client's calls in s (default 0.05; 0: back to back)",
    )
    p.add_argument(
        "--reads",
        default=",".join(READ_OPS),
        help=f"the clients' calls, a comma-separated subset of {','.join(READ_OPS)} (default all: "
        "GetJob of one of the newest jobs twice as often as each of the others)",
    )
    p.add_argument("--sample-every", type=int, default=500, help="jobs between samples (default 500)")
    p.add_argument(
        "--baseline", type=int, default=1000, help="the sample growth is judged from (default 1000 jobs)"
    )
    p.add_argument("--idle", type=float, default=30.0, help="idle window in s (default 30)")
    p.add_argument("--settle", type=float, default=1.0, help="wait before the idle window in s (default 1)")
    p.add_argument("--rss-tolerance-mib", type=float, default=8.0, help="RSS growth allowed (default 8 MiB)")
    p.add_argument(
        "--rss-tolerance-pct",
        type=float,
        default=10.0,
        help="or this %% of the baseline, if more (default 10)",
    )
    p.add_argument("--fd-tolerance", type=int, default=2, help="fd growth allowed (default 2)")
    p.add_argument("--idle-ticks", type=int, default=1, help="idle CPU ticks allowed (default 1)")
    p.add_argument(
        "--idle-wakeups", type=int, default=10, help="idle wake-ups (voluntary switches) allowed (default 10)"
    )
    p.add_argument("--p99-ms", type=float, default=50.0, help="read p99 target in ms (default 50)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="report the targets but exit 0 when only a target was missed (checks still fail)",
    )
    add_keep_arg(p, "logs, daemon state")
    add_output_args(p, JSON_PATH)
    args = parse_common_args(p, argv)
    if args.jobs < 1 or args.inflight < 1 or args.drivers < 1 or args.clients < 0 or args.sample_every < 1:
        p.error("need --jobs, --inflight, --drivers ≥ 1, --clients ≥ 0, --sample-every ≥ 1")
    if not 1 <= args.files_min <= args.files_max or not 1 <= args.size_min <= args.size_max:
        p.error("need 1 ≤ --files-min ≤ --files-max and 1 ≤ --size-min ≤ --size-max")
    args.reads = [r.strip() for r in args.reads.split(",") if r.strip()]
    if not args.reads or set(args.reads) - set(READ_OPS):
        p.error(f"--reads wants a comma-separated subset of {','.join(READ_OPS)}")
    if args.idle < 0 or args.settle < 0 or args.client_interval < 0 or args.pool < 1:
        p.error("need --idle, --settle, --client-interval ≥ 0 and --pool ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("soak")
    if tools is None:
        return 2
    session = Session("soak", args, ["www", "dl"])
    work = session.work
    services = Services(work, tools.nginx, tools.venv_python, args.daemon_env)
    settings = dict(args.daemon_setting)
    res = Results(jobs=args.jobs)
    readers = Readers()
    vers: dict[str, str] = {}

    def cleanup() -> None:
        readers.finish(timeout_s=10.0)
        session.stop_services(services)

    with session.guard(cleanup, catch_unexpected=True):
        session.log_start()
        vers = versions(tools.nginx, None, tools.venv_python)
        vers.pop("aria2c", None)
        log_versions(vers)
        sources = make_sources(
            work / "www", args.pool, args.size_min, args.size_max, random.Random(args.seed)
        )
        url = services.start_nginx(sources[0].path, sources[0].size)
        base_url = url.removesuffix(sources[0].path)
        log(f"nginx serving {args.pool} files of {args.size_min}-{args.size_max} bytes at {base_url}/")
        config = write_daemon_config(work / "openbits.toml", settings) if settings else None
        if settings:
            log(f"daemon settings: {settings}")
        log_daemon_env(args.daemon_env)
        measure(args, services, config, sources, base_url, work / "dl", res, readers)
        if res.read_errors:
            raise BenchError(f"the reading clients had errors: {res.read_errors}")
    if session.interrupted:
        return 130

    targets, extra = judge(args, res)
    log("")
    if session.failures:
        log("WARNING: the run did not finish cleanly; the figures below may be incomplete")
    m = session.machine
    log(
        f"soak: {args.jobs} jobs, {args.inflight} in flight, {args.clients} clients every "
        f"{args.client_interval:g} s; machine: nproc {m['nproc']}, {m['cpu_model']}, "
        f"kernel {m['kernel']}, store on {m['work_fs']['type']} ({m['work_fs']['device']})"
    )
    log(f"load average at start: {m['loadavg_start']}, at end: {m.get('loadavg_end', '?')}")
    log("")
    log(render(args, res, targets))
    missed = [t.name for t in targets if not t.met]
    rc = session.finish(
        args.json,
        {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        vers,
        results={**asdict(res), **extra},
        targets=[asdict(t) for t in targets],
        targets_missed=missed,
    )
    if missed:
        log(
            f"targets NOT met: {', '.join(missed)}"
            + (" (--report-only: not failing)" if args.report_only else "")
        )
        if not args.report_only:
            return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
