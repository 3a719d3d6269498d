"""A fault-injecting TCP relay on 127.0.0.1 between the daemon and a real server (nginx).

It is not an HTTP proxy: the daemon's URL names the relay's port and the relay forwards the
bytes unchanged to the server's port, so TLS passes through it end to end. Each accepted
connection gets one :class:`Fault` (from ``plan`` first, one entry a connection in accept
order; then a draw from ``chaos``; else none), which strikes at an offset of the
server→client stream (a ``chaos`` connection that lives through a stall or a trickle may
draw another, further on). Draws come from ``random.Random(f"{seed}:{n}")`` for the n-th
connection, so a seed gives each connection the same faults however the jobs interleave:

=========  ==========================================================================
RESET      at offset ``at``, once the client's kernel holds every byte before it: RST
           (SO_LINGER 0)
TRUNCATE   at ``at``: a clean close (FIN), every byte before it delivered
STALL      at ``at``: nothing relayed for ``seconds`` (None: until the client gives up),
           the sockets kept open; then the stream goes on
TRICKLE    from ``at``: ``rate`` bytes/s for ``seconds``, then full speed
REFUSE     accept and reset at once, this connection and the next ``burst - 1`` ones
TLS_FAIL   on a TLS connection (the client's first byte is a handshake record): the first
           server record garbled (``garble``) or cut after ``at`` bytes, then FIN; a
           plain connection passes
=========  ==========================================================================

:meth:`FaultProxy.stop_listening` / :meth:`~FaultProxy.start_listening` /
:meth:`~FaultProxy.refuse_for` refuse for real (no listener: the kernel answers RST to the
SYN, the client sees ECONNREFUSED); the port stays reserved meanwhile.

A fault *strikes* only when the stream gets there with bytes still to hold back: a reset at
byte 5,000,000 of a connection that carries 2 MB does nothing and is not counted.
``fired`` counts the faults that struck, by kind; ``bytes_down``/``bytes_up`` the bytes
relayed; ``connections`` has a record per connection. The relay runs its own asyncio loop on
a background thread, so a test can block on the daemon meanwhile::

    with FaultProxy(nginx.port, plan=[Fault.reset(at=300_000)]) as proxy:
        ...  # a job from f"http://127.0.0.1:{proxy.port}/f.bin"
        assert proxy.fired[Kind.RESET] == 1
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import fcntl
import math
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tests.support.faults import Connection

HOST = "127.0.0.1"
CHUNK = 64 * 1024
THREAD_TIMEOUT = 10.0
#: a RESET waits at most this long for the client's kernel to take the bytes before it
DELIVERY_TIMEOUT_S = 2.0
TLS_HANDSHAKE = 0x16


class Kind(enum.StrEnum):
    PASS = "pass"
    RESET = "reset"
    TRUNCATE = "truncate"
    STALL = "stall"
    TRICKLE = "trickle"
    REFUSE = "refuse"
    TLS_FAIL = "tls_fail"
    #: a window without a listener (stop_listening / refuse_for), counted once a window
    UNLISTEN = "unlisten"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: Kind = Kind.PASS
    at: int = 0
    seconds: float | None = None
    rate: int = 16 * 1024
    burst: int = 1
    garble: bool = True

    @classmethod
    def reset(cls, at: int) -> Fault:
        return cls(Kind.RESET, at=at)

    @classmethod
    def truncate(cls, at: int) -> Fault:
        return cls(Kind.TRUNCATE, at=at)

    @classmethod
    def stall(cls, at: int, seconds: float | None = None) -> Fault:
        return cls(Kind.STALL, at=at, seconds=seconds)

    @classmethod
    def trickle(cls, at: int, rate: int, seconds: float) -> Fault:
        return cls(Kind.TRICKLE, at=at, rate=rate, seconds=seconds)

    @classmethod
    def refuse(cls, burst: int = 1) -> Fault:
        return cls(Kind.REFUSE, burst=burst)

    @classmethod
    def tls_fail(cls, garble: bool = True, at: int = 0) -> Fault:
        return cls(Kind.TLS_FAIL, garble=garble, at=at)

    @property
    def errs(self) -> bool:
        """Whether it fails the request it strikes (a trickle or a stall shorter than the
        client's read timeout only slows it down)."""
        if self.kind is Kind.STALL:
            return self.seconds is None
        return self.kind not in (Kind.PASS, Kind.TRICKLE)


PASS = Fault()


@dataclass(frozen=True, slots=True)
class Chaos:
    """Seeded random faults: ``rate`` of the connections get one, of a kind drawn by
    ``weights``, at an offset drawn log-uniformly from 1 to ``max_offset`` (so small ones
    land in response heads and TLS handshakes too); at most ``budget`` faults in all."""

    rate: float = 0.35
    weights: Mapping[Kind, float] = field(
        default_factory=lambda: {
            Kind.RESET: 3.0,
            Kind.TRUNCATE: 2.0,
            Kind.STALL: 2.0,
            Kind.TRICKLE: 1.0,
            Kind.REFUSE: 1.0,
            Kind.TLS_FAIL: 1.0,
        }
    )
    max_offset: int = 4 * 1024 * 1024
    #: share of stalls that last until the client gives up; the others last short_stall_s
    forever: float = 0.5
    short_stall_s: tuple[float, float] = (0.1, 0.8)
    trickle_rate: int = 32 * 1024
    trickle_s: tuple[float, float] = (0.2, 1.0)
    max_burst: int = 2
    budget: int | None = None

    def draw(self, rng: random.Random, mid_stream: bool = False) -> Fault:
        """A connection's fault; ``mid_stream``: one that can strike inside a stream that is
        already flowing (no refusal, no TLS failure)."""
        if rng.random() >= self.rate:
            return PASS
        kinds = [k for k in self.weights if not mid_stream or k not in (Kind.REFUSE, Kind.TLS_FAIL)]
        kind = rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        at = int(math.exp(rng.uniform(0.0, math.log(self.max_offset))))
        if kind is Kind.STALL:
            forever = rng.random() < self.forever
            return Fault.stall(at, None if forever else rng.uniform(*self.short_stall_s))
        if kind is Kind.TRICKLE:
            return Fault.trickle(at, self.trickle_rate, rng.uniform(*self.trickle_s))
        if kind is Kind.REFUSE:
            return Fault.refuse(rng.randint(1, self.max_burst))
        if kind is Kind.TLS_FAIL:
            return Fault.tls_fail(garble=rng.random() < 0.5, at=rng.randint(1, 80))
        return Fault(kind, at=at)


@dataclass(slots=True)
class ConnRecord:
    """One accepted connection, as the relay saw it."""

    index: int
    fault: Fault  # the fault it was given (a chaos connection that lives through one may get more)
    chaos: bool = False  # the fault was drawn from ``chaos``
    tls: bool | None = None  # None until the client sent its first bytes
    #: the faults that struck, each with the offset of the server→client stream where it did
    struck: list[tuple[Fault, int]] = field(default_factory=list)
    bytes_down: int = 0  # server → client, relayed
    bytes_up: int = 0  # client → server, relayed
    head: bytes = b""  # the first bytes server → client (up to 16 KiB)
    request: bytes = b""  # the first bytes client → server (up to 2 KiB)
    fault_s: float = 0.0  # how long the last stall or trickle lasted
    closed: bool = False

    @property
    def struck_at(self) -> int | None:
        """Where the first fault struck (None: none did)."""
        return self.struck[0][1] if self.struck else None

    def body_offset(self) -> int | None:
        """Where the first response's body starts in the server→client stream (plain HTTP)."""
        end = self.head.find(b"\r\n\r\n")
        return None if end < 0 else end + 4


def _unsent(writer: asyncio.StreamWriter) -> int:
    """Bytes written to the client that its kernel has not acknowledged yet."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", queued)[0]) + writer.transport.get_write_buffer_size()


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.setblocking(False)
    return sock


def _reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Stop(Exception):
    """The server→client direction ends here (the fault closed the connection)."""


class FaultProxy:
    """A TCP relay 127.0.0.1:``port`` → 127.0.0.1:``upstream_port`` that injects faults."""

    def __init__(
        self,
        upstream_port: int,
        plan: Iterable[Fault] = (),
        chaos: Chaos | None = None,
        seed: int = 0,
    ) -> None:
        self.upstream_port = upstream_port
        self.chaos = chaos
        self.seed = seed
        self.port = 0
        self._plan = collections.deque(plan)
        self._burst_left = 0
        self._drawn = 0  # faults drawn from chaos
        self._lock = threading.Lock()
        self._records: list[ConnRecord] = []
        self._fired: collections.Counter[Kind] = collections.Counter()
        self._bytes_down = 0
        self._bytes_up = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._holder: socket.socket | None = None  # keeps the port while nobody listens
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._relisten: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- what the tests read ---------------------------------------------------------------

    @property
    def fired(self) -> collections.Counter[Kind]:
        """Faults that struck, by kind (REFUSE: connections refused; UNLISTEN: windows)."""
        with self._lock:
            return collections.Counter(self._fired)

    @property
    def errors(self) -> int:
        """Faults that struck and fail the request they strike (a refusal window counts once,
        however many attempts it refused)."""
        with self._lock:
            struck = sum(1 for r in self._records for fault, _ in r.struck if fault.errs)
            return struck + self._fired[Kind.UNLISTEN]

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._bytes_down

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes_up

    @property
    def connections(self) -> list[ConnRecord]:
        with self._lock:
            return [dataclasses.replace(r, struck=list(r.struck)) for r in self._records]

    def summary(self) -> str:
        fired = self.fired
        kinds = ", ".join(f"{k.value} {fired[k]}" for k in Kind if fired[k]) or "none"
        return (
            f"{len(self.connections)} connections, faults: {kinds}; "
            f"{self.bytes_down:,} bytes down, {self.bytes_up:,} up"
        )

    # -- refusing for real -----------------------------------------------------------------

    def stop_listening(self) -> None:
        """From now on connection attempts are refused (ECONNREFUSED)."""
        self._call(self._unlisten)

    def start_listening(self) -> None:
        self._call(self._listen)

    def refuse_for(self, seconds: float) -> None:
        """Refuse every attempt for ``seconds``, then accept again."""
        self._call(self._refuse_for, seconds)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready)), name="FaultProxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(THREAD_TIMEOUT):
            raise RuntimeError("FaultProxy did not start")
        if self._error is not None:
            self._thread.join(THREAD_TIMEOUT)
            self._thread = None
            raise self._error

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (the loop ended already)
                loop.call_soon_threadsafe(stopping.set)
        thread.join(THREAD_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("FaultProxy thread did not stop")
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn(*args)`` on the relay's loop and wait for it."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("FaultProxy is not running")

        async def run() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(run(), loop).result(THREAD_TIMEOUT)

    # -- on the relay's thread -------------------------------------------------------------------

    async def _main(self, ready: threading.Event) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._holder = _bind(0)
            self.port = self._holder.getsockname()[1]
            self._listen()
        except BaseException as e:
            self._error = e
            ready.set()
            return
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
        self._unlisten(count=False)
        if self._holder is not None:
            self._holder.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=THREAD_TIMEOUT)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = _bind(self.port)
        listener.listen(128)
        self._listener = listener
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(listener))

    def _unlisten(self, count: bool = True) -> None:
        """Close the listener (connections waiting in its backlog are reset)."""
        if self._listener is None:
            return
        if self._acceptor is not None:
            self._acceptor.cancel()
            self._acceptor = None
        self._listener.close()
        self._listener = None
        if count:
            with self._lock:
                self._fired[Kind.UNLISTEN] += 1

    def _refuse_for(self, seconds: float) -> None:
        self._unlisten()
        if self._relisten is not None:
            self._relisten.cancel()
        self._relisten = asyncio.get_running_loop().call_later(seconds, self._listen)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _budget_left(self) -> bool:
        return self.chaos is not None and (self.chaos.budget is None or self._drawn < self.chaos.budget)

    def _next_fault(self, rng: random.Random) -> tuple[Fault, bool]:
        """The fault of the next connection, and whether it was drawn from ``chaos``."""
        chaos = False
        if self._burst_left:
            self._burst_left -= 1
            fault = Fault.refuse()
        elif self._plan:
            fault = self._plan.popleft()
        elif self.chaos is not None and self._budget_left():
            fault, chaos = self.chaos.draw(rng), True
            if fault.kind is not Kind.PASS:
                self._drawn += 1
        else:
            fault = PASS
        if fault.kind is Kind.REFUSE:
            self._burst_left = fault.burst - 1
        return fault, chaos

    def _follow_up(self, rec: ConnRecord, rng: random.Random) -> Fault | None:
        """A chaos connection that lived through a stall or a trickle may get another fault,
        further on."""
        if not rec.chaos or self.chaos is None or not self._budget_left():
            return None
        fault = self.chaos.draw(rng, mid_stream=True)
        if fault.kind is Kind.PASS:
            return None
        self._drawn += 1
        return dataclasses.replace(fault, at=rec.bytes_down + max(1, fault.at))

    def _strike(self, rec: ConnRecord, fault: Fault) -> None:
        with self._lock:
            rec.struck.append((fault, rec.bytes_down))
            self._fired[fault.kind] += 1

    async def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            index = len(self._records)
        # one generator a connection: its faults do not depend on how connections interleave
        rng = random.Random(f"{self.seed}:{index}")
        fault, chaos = self._next_fault(rng)
        with self._lock:
            rec = ConnRecord(index, fault, chaos)
            self._records.append(rec)
        if fault.kind is Kind.REFUSE:
            self._strike(rec, fault)
            rec.closed = True
            _reset_socket(sock)
            return
        client: asyncio.StreamWriter | None = None
        upstream: asyncio.StreamWriter | None = None
        up: asyncio.Task[None] | None = None
        try:
            client_reader, client = await asyncio.open_connection(sock=sock)
            self._writers.add(client)
            try:
                server_reader, upstream = await asyncio.open_connection(HOST, self.upstream_port)
            except OSError:
                Connection(client).abort()
                return
            self._writers.add(upstream)
            gone = asyncio.Event()  # the client closed its side
            hello = asyncio.Event()  # the client's first bytes arrived (TLS or not)
            up = asyncio.get_running_loop().create_task(self._up(rec, client_reader, upstream, gone, hello))
            await self._down(rec, rng, server_reader, client, gone, hello)
        except (_Stop, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if up is not None:
                up.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await up
            for writer in (client, upstream):
                if writer is not None:
                    self._writers.discard(writer)
                    if not writer.is_closing():
                        writer.transport.abort()
            rec.closed = True

    async def _up(
        self,
        rec: ConnRecord,
        reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        gone: asyncio.Event,
        hello: asyncio.Event,
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if not hello.is_set():
                    rec.tls = data[0] == TLS_HANDSHAKE
                    hello.set()
                with self._lock:
                    if len(rec.request) < 2048:
                        rec.request += data[: 2048 - len(rec.request)]
                    rec.bytes_up += len(data)
                    self._bytes_up += len(data)
                upstream.write(data)
                await upstream.drain()
            with contextlib.suppress(OSError):
                upstream.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            gone.set()
            hello.set()

    async def _send(self, rec: ConnRecord, client: asyncio.StreamWriter, data: bytes) -> None:
        if not data:
            return
        with self._lock:  # (counted first: the client may read the bytes before write returns)
            if len(rec.head) < 16384:
                rec.head += data[: 16384 - len(rec.head)]
            rec.bytes_down += len(data)
            self._bytes_down += len(data)
        client.write(data)
        await client.drain()

    async def _down(
        self,
        rec: ConnRecord,
        rng: random.Random,
        server: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        gone: asyncio.Event,
        hello: asyncio.Event,
    ) -> None:
        fault: Fault | None = None if rec.fault.kind is Kind.PASS else rec.fault
        trickle: Fault | None = None
        trickle_started = 0.0
        while data := await server.read(CHUNK):
            while data:
                if fault is not None and fault.kind is Kind.TLS_FAIL:
                    current, fault = fault, None
                    await hello.wait()
                    if rec.tls:
                        await self._fail_tls(rec, current, client, data)
                    fault = self._follow_up(rec, rng)  # (a plain connection: not this one)
                    continue
                if fault is not None and rec.bytes_down >= fault.at:
                    current, fault = fault, None
                    self._strike(rec, current)
                    if current.kind is Kind.RESET:
                        await self._delivered(client)
                        Connection(client).abort()
                        raise _Stop
                    if current.kind is Kind.TRUNCATE:
                        await self._close(client)
                    if current.kind is Kind.STALL:
                        started = time.monotonic()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(gone.wait(), current.seconds)
                        rec.fault_s = time.monotonic() - started
                        if gone.is_set():
                            raise _Stop
                        fault = self._follow_up(rec, rng)
                    if current.kind is Kind.TRICKLE:
                        trickle, trickle_started = current, time.monotonic()
                    continue
                n = len(data) if fault is None else min(len(data), fault.at - rec.bytes_down)
                if trickle is not None:
                    if time.monotonic() - trickle_started >= (trickle.seconds or 0.0):
                        rec.fault_s = time.monotonic() - trickle_started
                        trickle = None
                        fault = self._follow_up(rec, rng)
                        continue
                    n = min(n, max(1, trickle.rate // 10))
                await self._send(rec, client, data[:n])
                data = data[n:]
                if trickle is not None:
                    await asyncio.sleep(0.1)  # the pace of the trickle, not a synchronisation
        if trickle is not None:
            rec.fault_s = time.monotonic() - trickle_started
        await self._close(client)

    async def _fail_tls(
        self, rec: ConnRecord, fault: Fault, client: asyncio.StreamWriter, first: bytes
    ) -> None:
        """The first server bytes of a TLS handshake, garbled or cut short, then FIN."""
        self._strike(rec, fault)
        if fault.garble:
            # the record header XORed: no TLS record type, no TLS version
            await self._send(rec, client, bytes(b ^ 0xFF for b in first[:5]) + first[5:])
        else:
            await self._send(rec, client, first[: max(1, min(fault.at, len(first) - 1))])
        await self._close(client)

    @staticmethod
    async def _delivered(client: asyncio.StreamWriter) -> None:
        """Until the client's kernel acknowledged every byte written (bounded)."""
        with contextlib.suppress(ConnectionError, OSError):
            await client.drain()
            for _ in range(int(DELIVERY_TIMEOUT_S / 0.005)):
                if not _unsent(client):
                    return
                await asyncio.sleep(0.005)  # the kernel tells no one: poll its queue, bounded

    @staticmethod
    async def _close(client: asyncio.StreamWriter) -> None:
        """FIN after the bytes written."""
        client.close()
        with contextlib.suppress(ConnectionError, OSError):
            await client.wait_closed()
        raise _Stop
