"""Network faults between the real daemon and the real nginx (issue 5, item 2).

Every byte goes through ``tests/support/faultproxy.py``, a TCP relay that resets, stalls,
trickles, truncates, refuses and breaks TLS handshakes. A job ends TRANSFERRED with every file
byte-identical, or in the documented state; TransientErrorCount counts exactly the attempts
that failed, and GetError names each failure with the BITS code and context it had.

- ``test_fault_is_reported_truthfully``: one case per fault kind, each a job through a relay
  of its own with a fixed plan: the error code and context of every failed attempt, the count,
  the bytes kept (exactly those that arrived, where all did) and the Range the retry asks
  for, GetError once it is over. The cases run side by side in one daemon, so the 5 s floor
  of MinimumRetryDelay is paid once, not once a case.
- ``test_mixed_faults_torture``: seeded random faults on jobs of mixed priorities (one to five
  files of 0 to 8 MiB, HTTP and HTTPS): every job TRANSFERRED, every file byte-identical, no
  temporary file left, and every failed attempt counted once and named truthfully.
  ``make test`` runs 8 jobs and at most 16 faults (~16 s); OPENBITS_FAULTS_JOBS,
  OPENBITS_FAULTS_BUDGET (faults injected at most) and OPENBITS_FAULTS_SEED make it longer.

A thread follows the daemon's event stream (``Watcher``), so no entry into TRANSIENT_ERROR
or ERROR goes unseen, and asks GetError at each.
"""

from __future__ import annotations

import http.client
import math
import os
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openbits.client import Client
from openbits.errors import BitsError, HResult
from openbits.model import ErrorContext, JobPriority, JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.faultproxy import Chaos, ConnRecord, Fault, FaultProxy, Kind
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

KiB, MiB = 1024, 1024 * 1024
CLOSED = HResult.BG_E_CONNECTION_CLOSED
TIMEOUT = HResult.BG_E_TIMEOUT
CONNECT = HResult.BG_E_CONNECT_FAILURE
SECURE = HResult.BG_E_SECURE_CHANNEL_FAILURE
#: accepted, then reset at once: the daemon sees the reset as its connect completes
#: (BG_E_CONNECT_FAILURE) or at its first read (BG_E_CONNECTION_CLOSED), as the kernel's
#: timing has it
RESET_AT_ONCE = frozenset({CLOSED, CONNECT})
#: short timeouts, so that stalls are seen in seconds (the defaults are 60 s and 30 s)
READ_TIMEOUT_S = 2.0
CONFIG: dict[str, Any] = {"read_timeout_s": READ_TIMEOUT_S, "connect_timeout_s": 3.0}
#: MinimumRetryDelay's floor (BITS: values below 5 are raised to 5)
RETRY_S = 5


def start_daemon(state_dir: Path, nginx: Nginx, **config: Any) -> Daemon:
    """A daemon that trusts nginx's CA (its HTTPS goes through the relays unchanged)."""
    daemon = Daemon(state_dir, config={**CONFIG, **config}, env={"SSL_CERT_FILE": str(nginx.ca_path)})
    daemon.start()
    return daemon


def new_job(
    daemon: Daemon,
    name: str,
    pairs: list[tuple[str, str]],
    priority: JobPriority = JobPriority.FOREGROUND,
    **props: Any,
) -> str:
    client = daemon.client
    job = client.create_job(name, priority=int(priority)).job_id
    client.set_properties(job, MinimumRetryDelay=RETRY_S, **props)
    client.add_file_set(job, pairs)
    client.resume(job)
    return job


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".BIT"))


# -- what the daemon said, as it said it ----------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """A job entered TRANSIENT_ERROR or ERROR: the instance then, and GetError's answer."""

    state: JobState
    transient_errors: int
    bytes_transferred: int
    error: dict[str, Any] | None  # None: the job had moved on before GetError was asked

    @property
    def code(self) -> int | None:
        return None if self.error is None else int(self.error["ErrorCode"])


class Watcher:
    """Follows the daemon's events (GET /events) on a thread of its own: each job's states
    in order, its BytesTransferred at every event, and an :class:`Episode` for every entry
    into TRANSIENT_ERROR or ERROR (a new TransientErrorCount is a new entry too).

    The stream is opened before the jobs are made; it ends when the daemon stops."""

    def __init__(self, daemon: Daemon) -> None:
        self._client = Client(daemon.socket)
        self._stream = self._client.events()
        self._lock = threading.Lock()
        self._states: dict[str, list[JobState]] = defaultdict(list)
        self._progress: dict[str, list[int]] = defaultdict(list)
        self._episodes: dict[str, list[Episode]] = defaultdict(list)
        self._last: dict[str, tuple[JobState, int]] = {}
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="Watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                if isinstance(event.data, dict) and "JobId" in event.data:
                    self._seen(event.data)
        except Exception as e:  # (the daemon stopping ends the stream quietly)
            self.failure = e

    def _seen(self, instance: Mapping[str, Any]) -> None:
        job = str(instance["JobId"])
        state = JobState(instance["State"])
        count = int(instance["TransientErrorCount"])
        with self._lock:
            self._progress[job].append(int(instance["BytesTransferred"]))
            if not self._states[job] or self._states[job][-1] is not state:
                self._states[job].append(state)
            entered = self._last.get(job) != (state, count)
            self._last[job] = (state, count)
        if entered and state in (JobState.TRANSIENT_ERROR, JobState.ERROR):
            try:
                error: dict[str, Any] | None = dict(self._client.get_error(job).raw)
            except BitsError:
                error = None
            with self._lock:
                self._episodes[job].append(Episode(state, count, int(instance["BytesTransferred"]), error))

    def states(self, job: str) -> list[JobState]:
        with self._lock:
            return list(self._states[job])

    def progress(self, job: str) -> list[int]:
        with self._lock:
            return list(self._progress[job])

    def episodes(self, job: str) -> list[Episode]:
        with self._lock:
            return list(self._episodes[job])

    def wait(self, job: str, states: Collection[JobState], timeout: float) -> JobState:
        """Until the stream showed the job in one of ``states`` (every event before it seen)."""

        def reached() -> JobState | None:
            if self.failure is not None:
                raise AssertionError(f"the event stream failed: {self.failure!r}")
            seen = self.states(job)
            return seen[-1] if seen and seen[-1] in states else None

        try:
            state: JobState = wait_until(reached, timeout, f"{job} in {sorted(s.name for s in states)}")
        except AssertionError as e:
            raise AssertionError(f"{e}; states seen: {[s.name for s in self.states(job)]}") from None
        return state

    def close(self) -> None:
        """After the daemon stopped (which ends the stream)."""
        self._thread.join(10)
        self._stream.close()
        self._client.close()


def check_error(episode: Episode, code: int, local: str | None = None) -> None:
    """GetError's answer at an entry into TRANSIENT_ERROR or ERROR: the code, a transport
    context (every fault here is the connection's), the names and descriptions."""
    error = episode.error
    assert error is not None, f"GetError was unavailable in {episode.state.name}"
    assert (HResult(error["ErrorCode"]).name, error["ErrorContext"]) == (
        HResult(code).name,
        ErrorContext.GENERAL_TRANSPORT,
    ), error
    assert error["Name"] == HResult(code).name
    assert error["ReturnValue"] == 0
    assert error["ErrorDescription"] and error["ContextDescription"], error
    if local is not None:
        assert error["LocalFile"] == local, error


# -- one case a fault kind -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    https: bool
    plan: tuple[Fault, ...]
    #: GetError's code at each entry into TRANSIENT_ERROR, in order (or the codes it may be)
    errors: tuple[HResult | frozenset[HResult], ...]
    #: what the relay did (Kind.UNLISTEN: windows without a listener)
    fired: Mapping[Kind, int]
    final: JobState = JobState.TRANSFERRED
    #: no listener from the start, for this long (math.inf: never again)
    refuse_for: float | None = None
    no_progress_timeout: int | None = None
    #: every byte before the fault reached the daemon: it keeps exactly those (plain HTTP)
    exact: bool = False
    #: the relay's record of a stall or trickle lasted at least this long
    fault_s: float = 0.0
    #: in GetError's ErrorDescription at each entry into TRANSIENT_ERROR
    says: str = ""
    size: int = 3 * MiB


CASES = [
    Case("reset-mid-body", False, (Fault.reset(1_000_000),), (CLOSED,), {Kind.RESET: 1}, says="reset"),
    Case("reset-mid-body-tls", True, (Fault.reset(1_000_000),), (CLOSED,), {Kind.RESET: 1}),
    Case("reset-in-head", False, (Fault.reset(100),), (CLOSED,), {Kind.RESET: 1}),
    Case(
        "truncate-mid-body",
        False,
        (Fault.truncate(700_000),),
        (CLOSED,),
        {Kind.TRUNCATE: 1},
        exact=True,
        says="bytes of the body missing",
    ),
    Case("truncate-mid-body-tls", True, (Fault.truncate(700_000),), (CLOSED,), {Kind.TRUNCATE: 1}),
    Case("truncate-before-answer", False, (Fault.truncate(0),), (CLOSED,), {Kind.TRUNCATE: 1}),
    Case("stall-mid-body", False, (Fault.stall(500_000),), (TIMEOUT,), {Kind.STALL: 1}, exact=True),
    Case("stall-mid-body-tls", True, (Fault.stall(500_000),), (TIMEOUT,), {Kind.STALL: 1}),
    # (a regression test: the daemon said BG_E_SECURE_CHANNEL_FAILURE for a silent server here)
    Case(
        "stall-in-tls-handshake",
        True,
        (Fault.stall(0),),
        (TIMEOUT,),
        {Kind.STALL: 1},
        says="no TLS handshake",
    ),
    Case(
        "stall-shorter-than-read-timeout",
        False,
        (Fault.stall(300_000, seconds=READ_TIMEOUT_S / 2),),
        (),
        {Kind.STALL: 1},
        fault_s=READ_TIMEOUT_S / 2,
    ),
    Case(
        "trickle-longer-than-read-timeout",
        False,
        (Fault.trickle(200_000, rate=64 * KiB, seconds=READ_TIMEOUT_S * 1.5),),
        (),
        {Kind.TRICKLE: 1},
        fault_s=READ_TIMEOUT_S * 1.5,
    ),
    Case("tls-garbled", True, (Fault.tls_fail(garble=True),), (SECURE,), {Kind.TLS_FAIL: 1}, says="TLS"),
    Case("tls-cut-short", True, (Fault.tls_fail(garble=False, at=40),), (SECURE,), {Kind.TLS_FAIL: 1}),
    Case("refused-burst", False, (Fault.refuse(burst=2),), (RESET_AT_ONCE,) * 2, {Kind.REFUSE: 2}),
    Case(
        "refused-window",
        False,
        (),
        (CONNECT,),
        {Kind.UNLISTEN: 1},
        refuse_for=RETRY_S - 2,
        says="Connection refused",  # (a regression test: it said "Connect call failed")
    ),
    # always refused: ERROR once NoProgressTimeout passed (two attempts, at 0 s and at 5 s)
    Case(
        "server-down",
        False,
        (),
        (CONNECT, CONNECT),
        {Kind.UNLISTEN: 1},
        final=JobState.ERROR,
        refuse_for=math.inf,
        no_progress_timeout=RETRY_S + 2,
        says="Connection refused",
    ),
]


@dataclass
class Run:
    case: Case
    proxy: FaultProxy
    job: str
    local: Path
    digest: str


@dataclass
class Cases:
    daemon: Daemon
    watcher: Watcher
    runs: dict[str, Run] = field(default_factory=dict)


@pytest.fixture(scope="module")
def cases(nginx: Nginx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cases]:
    """Every case's job, started at once in one daemon, each through a relay of its own."""
    base = tmp_path_factory.mktemp("netfaults")
    proxies: list[FaultProxy] = []
    daemon = start_daemon(base / "state", nginx)
    watcher = Watcher(daemon)
    runs = Cases(daemon, watcher)
    try:
        for n, case in enumerate(CASES):
            name = f"netfaults/{case.name}.bin"
            digest = make_file(nginx.www, name, case.size, seed=500 + n)
            proxy = FaultProxy(nginx.https_port if case.https else nginx.port, plan=case.plan, seed=n)
            proxy.start()
            proxies.append(proxy)
            if case.refuse_for == math.inf:
                proxy.stop_listening()
            elif case.refuse_for is not None:
                proxy.refuse_for(case.refuse_for)
            dest = base / "dest" / case.name
            dest.mkdir(parents=True)
            scheme = "https" if case.https else "http"
            local = dest / "f.bin"
            props: dict[str, Any] = {}
            if case.no_progress_timeout is not None:
                props["NoProgressTimeout"] = case.no_progress_timeout
            url = f"{scheme}://127.0.0.1:{proxy.port}/{name}"
            job = new_job(daemon, case.name, [(url, str(local))], **props)
            runs.runs[case.name] = Run(case, proxy, job, local, digest)
        yield runs
    finally:
        daemon.stop()
        watcher.close()
        for proxy in proxies:
            proxy.stop()


def _resumed_at(request: bytes) -> int | None:
    """The first byte a request's Range asks for (None without Range)."""
    for line in request.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "range":
            return int(value.strip().removeprefix("bytes=").split("-")[0])
    return None


def check_bytes_kept(case: Case, first: ConnRecord, retry: ConnRecord, kept: int) -> None:
    """Plain HTTP, one fault mid-stream: the daemon kept no more than the body bytes that
    passed (exactly those when they all reached it), and the retry asks from there."""
    assert first.struck_at is not None
    start = first.body_offset()
    passed = 0 if start is None else max(0, first.struck_at - start)
    assert kept <= passed, f"{kept} bytes kept of {passed} that passed"
    if case.exact:
        assert kept == passed, "every byte that arrived is kept"
    assert _resumed_at(retry.request) == (kept or None), retry.request[:300]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_reported_truthfully(case: Case, cases: Cases) -> None:
    run = cases.runs[case.name]
    daemon, watcher, proxy = cases.daemon, cases.watcher, run.proxy
    final = watcher.wait(run.job, {JobState.TRANSFERRED, JobState.ERROR}, timeout=60)
    assert final is case.final, f"{final.name}: {watcher.episodes(run.job)}"
    episodes = watcher.episodes(run.job)
    transient = [e for e in episodes if e.state is JobState.TRANSIENT_ERROR]
    assert len(transient) == len(case.errors), episodes
    for i, (episode, codes) in enumerate(zip(transient, case.errors, strict=True)):
        assert episode.code in (codes if isinstance(codes, frozenset) else {codes}), episodes
        check_error(episode, episode.code or 0, str(run.local))
        assert episode.transient_errors == i + 1, "each failed attempt counts once"
        assert episode.error is not None and case.says in episode.error["ErrorDescription"], episode
    instance = daemon.job(run.job)
    assert instance["TransientErrorCount"] == len(case.errors)
    assert {k: n for k, n in proxy.fired.items() if n} == dict(case.fired), proxy.summary()
    if case.refuse_for is None:
        assert proxy.errors == len(case.errors), "every failed attempt was a fault, and each fault failed one"
    progress = watcher.progress(run.job)
    assert progress == sorted(progress), "BytesTransferred never goes back"
    records = proxy.connections
    if case.fault_s:
        assert records[0].fault_s >= case.fault_s * 0.95, records[0]
    if not case.https and len(case.errors) == 1 and case.plan and case.final is JobState.TRANSFERRED:
        check_bytes_kept(case, records[0], records[1], transient[0].bytes_transferred)

    if case.final is JobState.ERROR:
        last = episodes[-1]
        assert last.state is JobState.ERROR and last.transient_errors == len(case.errors), episodes
        assert last.code == transient[-1].code, "ERROR keeps the error of the last attempt"
        check_error(last, last.code or 0, str(run.local))
        assert daemon.client.get_error(run.job).hresult == last.code
        assert daemon.client.cancel(run.job) == 0
    else:
        with pytest.raises(BitsError) as info:
            daemon.client.get_error(run.job)
        assert info.value.hresult == HResult.BG_E_ERROR_INFORMATION_UNAVAILABLE
        assert daemon.client.complete(run.job) == 0
        assert sha256_file(run.local) == run.digest
    assert temp_files(run.local.parent) == []


# -- the harness itself ----------------------------------------------------------------------


def _fetch(port: int, path: str) -> tuple[bytes, BaseException | None]:
    """The raw bytes a GET gets through the relay until the connection ends, and how it ended."""
    got = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while data := sock.recv(65536):
                got += data
    except OSError as e:  # (a reset may come as the connection is made)
        return bytes(got), e
    return bytes(got), None


def test_the_relay_does_what_it_says(nginx: Nginx) -> None:
    data_name = "netfaults/self.bin"
    make_file(nginx.www, data_name, 200_000, seed=77)
    body = (nginx.www / data_name).read_bytes()
    path = "/" + data_name
    plan = [
        Fault(),
        Fault.truncate(5000),
        Fault.reset(5000),
        Fault.reset(10 * MiB),  # past the end: never strikes
        Fault.stall(1000, seconds=0.3),
        Fault.tls_fail(),  # a plain connection: passes
        Fault.refuse(burst=2),
    ]
    with FaultProxy(nginx.port, plan=plan) as proxy:
        whole, error = _fetch(proxy.port, path)
        assert error is None and whole.endswith(body)
        cut, error = _fetch(proxy.port, path)
        head = cut.find(b"\r\n\r\n") + 4
        assert error is None and len(cut) == 5000, "a truncation delivers every byte before it"
        assert head > 4 and cut[head:] == body[: 5000 - head]
        reset, error = _fetch(proxy.port, path)
        assert isinstance(error, ConnectionResetError) and len(reset) <= 5000
        for _ in range(3):
            again, error = _fetch(proxy.port, path)
            assert error is None and again.endswith(body) and len(again) == len(whole)
        for _ in range(2):
            refused, error = _fetch(proxy.port, path)
            assert refused == b"" and isinstance(error, ConnectionResetError), error
        proxy.stop_listening()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        proxy.start_listening()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", path)
        assert conn.getresponse().read() == body
        conn.close()
        fired = proxy.fired
        assert (fired[Kind.TRUNCATE], fired[Kind.RESET], fired[Kind.STALL]) == (1, 1, 1), fired
        assert (fired[Kind.REFUSE], fired[Kind.UNLISTEN], fired[Kind.TLS_FAIL]) == (2, 1, 0), fired
        records = proxy.connections
        assert records[4].fault_s >= 0.3 and records[3].struck == []
        assert proxy.bytes_down >= 5 * len(body) and proxy.bytes_up > 0


# -- the torture -------------------------------------------------------------------------------

SIZES = [0, 1, 700, 16 * KiB, 300 * KiB, 2 * MiB, 5 * MiB, 8 * MiB]
#: most connections get a fault: keep-alive and pipelining carry a job's files on a few
CHAOS_RATE = 1.0


def test_mixed_faults_torture(tmp_path: Path, nginx: Nginx) -> None:
    seed = int(os.environ.get("OPENBITS_FAULTS_SEED", "40"))
    n_jobs = int(os.environ.get("OPENBITS_FAULTS_JOBS", "8"))
    budget = int(os.environ.get("OPENBITS_FAULTS_BUDGET", str(2 * n_jobs)))
    rng = random.Random(seed)
    dest = tmp_path / "dest"
    dest.mkdir()
    plain_budget = math.ceil(budget * 0.6)
    plain = FaultProxy(nginx.port, chaos=Chaos(CHAOS_RATE, budget=plain_budget), seed=seed)
    tls = FaultProxy(nginx.https_port, chaos=Chaos(CHAOS_RATE, budget=budget - plain_budget), seed=seed + 1)
    expected: dict[Path, str] = {}
    jobs: dict[str, list[tuple[str, str]]] = {}
    started = time.monotonic()
    with plain, tls:
        daemon = start_daemon(tmp_path / "state", nginx, max_concurrent_background_jobs=4)
        watcher = Watcher(daemon)
        try:
            for j in range(n_jobs):
                pairs = []
                for i in range(rng.randint(1, 5)):
                    size = rng.choice(SIZES)
                    name = f"netfaults/torture/{seed}/{j}-{i}.bin"
                    digest = make_file(nginx.www, name, size, seed=seed + 31 * j + i)
                    https = rng.random() < 0.4
                    port = tls.port if https else plain.port
                    local = dest / f"{j}-{i}.bin"
                    expected[local] = digest
                    pairs.append((f"{'https' if https else 'http'}://127.0.0.1:{port}/{name}", str(local)))
                priority = rng.choice(list(JobPriority))
                jobs[new_job(daemon, f"torture-{j}", pairs, priority)] = pairs
            deadline = 60 + 4 * RETRY_S * budget / max(1, n_jobs) + 2 * n_jobs
            for job in jobs:
                left = max(1.0, deadline - (time.monotonic() - started))
                state = watcher.wait(job, {JobState.TRANSFERRED, JobState.ERROR}, timeout=left)
                assert state is JobState.TRANSFERRED, (
                    job,
                    watcher.episodes(job),
                    plain.summary(),
                    tls.summary(),
                )
            counts = {job: daemon.job(job)["TransientErrorCount"] for job in jobs}
            for job in jobs:
                assert daemon.client.complete(job) == 0
        finally:
            daemon.stop()
            watcher.close()
    elapsed = time.monotonic() - started

    verified = 0
    for local, digest in expected.items():
        assert sha256_file(local) == digest, local
        verified += local.stat().st_size
    assert temp_files(dest) == []

    struck = plain.fired + tls.fired
    allowed: dict[str, set[int]] = {"http": {CLOSED}, "https": {CLOSED, SECURE}}
    for scheme, proxy in (("http", plain), ("https", tls)):
        if proxy.fired[Kind.STALL]:
            allowed[scheme].add(TIMEOUT)
        if proxy.fired[Kind.REFUSE]:
            allowed[scheme].add(CONNECT)
    for job, pairs in jobs.items():
        transient = [e for e in watcher.episodes(job) if e.state is JobState.TRANSIENT_ERROR]
        assert [e.transient_errors for e in transient] == list(range(1, counts[job] + 1)), (
            "TransientErrorCount counts each entry into TRANSIENT_ERROR once",
            transient,
        )
        progress = watcher.progress(job)
        assert progress == sorted(progress), "BytesTransferred never goes back"
        urls = {local: url for url, local in pairs}
        for episode in transient:
            assert episode.error is not None, episode
            local = episode.error["LocalFile"]
            assert local in urls, "GetError names a file of the job"
            assert episode.error["RemoteUrl"] == urls[local]
            check_error(episode, episode.code or 0, local)
            scheme = urls[local].split(":", 1)[0]
            assert episode.code in allowed[scheme], (scheme, episode, plain.summary(), tls.summary())
    total = sum(counts.values())
    summary = (
        f"seed {seed}: {n_jobs} jobs, {len(expected)} files, {verified:,} bytes verified, "
        f"{total} transient errors in {elapsed:.1f} s; http relay: {plain.summary()}; "
        f"https relay: {tls.summary()}"
    )
    print(summary)
    assert total <= plain.errors + tls.errors, f"a transient error without a fault: {summary}"
    assert total > 0 and sum(struck.values()) > 0, f"no fault made a job retry: {summary}"
