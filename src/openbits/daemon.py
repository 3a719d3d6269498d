"""Composition root: config -> store -> service -> scheduler -> API; signals; shutdown.

Every resource (the state directory's lock, the store, the event log, the HTTP client, the
PAC worker, the API runner, the signal handlers, the socket) is opened on one `AsyncExitStack` and closed in
reverse order by it, whether the start fails half way or the daemon shuts down.
Shutdown is phased: stop accepting API calls, cancel transfers (each keeps its
durable checkpoint), close the HTTP client, close the store.  A second signal
forces an immediate exit; nothing acknowledged is lost either way because every
acknowledged change was committed before it was acknowledged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import logging
import os
import signal
import socket
import sqlite3
import ssl
import stat
import sys
from collections.abc import Callable

from aiohttp import web

from openbits.api.app import EVENTS_KEY, FETCH_WORKER_KEY, THROTTLE_KEY, make_app
from openbits.api.events import EventLog
from openbits.api.guard import GUARD_KEY, FailureGuard
from openbits.api.peer import ADMIN_GROUP_KEY
from openbits.api.tokens import TOKENS_KEY, Tokens
from openbits.config import Config
from openbits.lockfile import lock_exclusively
from openbits.notify import Notifier
from openbits.scheduler.run import Scheduler, Transfers
from openbits.service import Service
from openbits.store import RECOVERY_HINT, StoreError
from openbits.store.sqlite import SqliteStore
from openbits.transfer import files as fs
from openbits.transfer.download import Downloader, Tuning
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import USER_AGENT, TLSContexts, env_proxies
from openbits.transfer.offload import FetchWorker, Settings
from openbits.transfer.owner import Owners
from openbits.transfer.pac import PacRoutes, fetch_text
from openbits.transfer.pacworker import PacEvaluator
from openbits.transfer.proxy import Proxies
from openbits.transfer.throttle import Throttle
from openbits.transfer.tickets import OwnerTickets
from openbits.tuning import tune_gc, tune_malloc

log = logging.getLogger("openbits.daemon")

#: how long a socket found in the way may take to accept a probe (a live daemon does at once)
PROBE_TIMEOUT_S = 2.0
#: at shutdown, API calls still running after this long are cancelled (systemd's stop
#: timeout is 30 s by default; long polls and event streams end at once)
SHUTDOWN_CALLS_S = 10.0


class DaemonError(Exception):
    """The daemon cannot start (socket in use, store unusable)."""


def _prepare_socket(path: str, mode: int) -> None:
    """The directory of the socket ``path``, and no stale socket there: one left by a daemon
    that died (it refuses connections) is removed; a live one, a file that is not a socket,
    or one that cannot be probed is refused, and never removed."""
    directory = os.path.dirname(path)
    # (a socket others may use sits in a directory they may search)
    os.makedirs(directory, mode=0o755 if mode & 0o077 else 0o700, exist_ok=True)
    try:
        if not stat.S_ISSOCK(os.stat(path, follow_symlinks=False).st_mode):
            raise DaemonError(f"{path} exists and is not a socket: remove it, or choose another --socket")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)  # a stale socket left by a daemon that died
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DaemonError(f"cannot remove the stale socket {path}: {e.strerror or e}") from None
    except FileNotFoundError:
        return
    except OSError as e:  # (EACCES: another user's; a time-out: a live daemon, too busy to answer)
        raise DaemonError(f"cannot tell whether a daemon serves {path}: {e.strerror or e}") from None
    else:
        raise DaemonError(f"another openbits daemon is already serving on {path}")
    finally:
        probe.close()


class _OwnSocket:
    """The socket file this daemon made (its device and inode), removed at the very end of
    the shutdown, after the state directory's lock is let go (a script that waits for the
    socket to go, then starts a daemon, finds the lock free), and only if it is still that
    file: a daemon started since may have put its own there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def made(self) -> None:
        st = os.stat(self.path, follow_symlinks=False)
        self.identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        if self.identity is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self.identity:
                os.unlink(self.path)


def inherited_socket() -> socket.socket | None:
    """The listening Unix socket systemd passed (socket activation: ``LISTEN_PID`` is this
    process, ``LISTEN_FDS`` >= 1, the socket is fd 3), else None; the variables are removed
    so that no child takes them for its own."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS", "").isdigit():
        return None
    count = int(os.environ["LISTEN_FDS"])
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise DaemonError("the socket systemd passed is not a Unix stream socket")
    os.set_inheritable(3, False)
    sock.setblocking(False)
    return sock


def systemd_notifier() -> Callable[[str], None]:
    """sd_notify(3): a function that sends ``READY=1`` and the like to the service manager
    that set ``NOTIFY_SOCKET`` (a unit of ``Type=notify``), else one that does nothing.  The
    variable is removed, so that no child (a helper, a worker, a notification program)
    speaks for the daemon."""
    address = os.environ.pop("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return lambda _state: None
    target = "\0" + address[1:] if address[0] == "@" else address  # (@: an abstract socket)

    def send(state: str) -> None:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), target)

    return send


def lock_state_dir(state_dir: str) -> int:
    """One daemon per state dir: an exclusive flock held for the daemon's life."""
    fd = lock_exclusively(os.path.join(state_dir, "openbits.lock"))
    if fd is None:
        raise DaemonError(f"another openbits daemon is using the state directory {state_dir}")
    return fd


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run the daemon until a signal. Every resource is opened on one exit stack, so a start
    that fails half way closes what it had opened, in reverse order, as a shutdown does."""
    try:
        listen_at = parse_listen(config.listen) if config.listen else None
        tls = listener_tls(config, listen_at)
    except ValueError as e:
        raise DaemonError(f"bad configuration: {e}") from e
    if config.system and os.geteuid() != 0:
        raise DaemonError(
            "the system daemon (--system) runs as root: it acts for each user with that user's "
            "rights, which takes root (a systemd unit may bound it to CAP_SETUID, CAP_SETGID, CAP_KILL)"
        )
    notify_manager = systemd_notifier()
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        own_socket = _OwnSocket(config.socket)
        stack.callback(own_socket.remove)  # (first in: the last thing a shutdown does)
        stack.callback(os.close, lock_state_dir(config.state_dir))
        stop = _on_signals(stack)  # (from here on a signal stops the daemon cleanly)
        store = _open_store(config, stack)
        owners = Owners()  # the owners' file-system actions (their helpers, for a root daemon)
        stack.callback(owners.close)
        transfers = Transfers()  # the scheduler's wake-up and tasks: the service's runner
        events = EventLog(
            store,
            size=config.event_log_size,
            min_interval_s=config.event_min_interval_s,
            keepalive_s=config.event_keepalive_s,
        )
        stack.callback(events.close)  # the progress events still held, before the store closes
        service = _open_service(store, config, transfers, owners, events)
        tune_gc()
        throttle = Throttle()
        proxies = env_proxies()  # the webhooks' (transfers: Proxies, from [proxy] or the same)
        downloader = await _open_downloader(config, throttle, owners, stack)
        sync_threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="openbits-sync"
        )
        stack.callback(sync_threads.shutdown, wait=True)  # a batch sync in flight ends before the store
        fetch_worker = _open_fetch_worker(config, downloader, stack)
        scheduler = Scheduler(
            service,
            config,
            downloader,
            throttle,
            transfers,
            sync_threads=sync_threads,
            fetch_worker=fetch_worker,
        )
        notifier = Notifier(service, proxies)
        app = make_app(service)
        app[ADMIN_GROUP_KEY] = config.admin_group
        app[THROTTLE_KEY] = throttle
        if fetch_worker is not None:
            app[FETCH_WORKER_KEY] = fetch_worker
        app[EVENTS_KEY] = events
        app[TOKENS_KEY] = _open_tokens(store, config)
        app[GUARD_KEY] = FailureGuard(
            free_failures=config.token_failures_free,
            base_delay_s=config.token_failure_delay_s,
            max_delay_s=max(config.token_failure_delay_max_s, config.token_failure_delay_s),
        )
        # (at shutdown, calls still running after this long are cancelled: long polls and
        # streams end at once, a verb is its commit, so only a stuck client is left)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_CALLS_S)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await _listen(runner, config, listen_at, tls, stack, own_socket)
        log.info(
            "openbits %s serving on %s (state in %s, %d jobs)",
            _version(),
            config.socket,
            config.state_dir,
            len(service.jobs),
        )
        if ready is not None:
            ready.set()
        notify_manager(f"READY=1\nSTATUS=serving {len(service.jobs)} jobs")
        async with asyncio.TaskGroup() as group:
            scheduling = group.create_task(scheduler.run(), name="scheduler")
            notifying = group.create_task(notifier.run(), name="notifier")
            await stop.wait()
            notify_manager("STOPPING=1")
            await runner.cleanup()  # phase 1: no new calls (open event streams end)
            scheduling.cancel()  # phase 2: transfers stop at their checkpoints
            notifying.cancel()  # (one cut short runs again after a restart: still due)
    log.info("openbits stopped")


def _open_store(config: Config, stack: contextlib.AsyncExitStack) -> SqliteStore:
    try:
        store = SqliteStore(config.db_path, synchronous=config.store_synchronous, group_commit=True)
    except StoreError as e:
        raise DaemonError(str(e)) from e
    stack.callback(store.close)
    return store


def _open_service(
    store: SqliteStore, config: Config, transfers: Transfers, owners: Owners, events: EventLog
) -> Service:
    """The service, its jobs recovered (with their events: those that were running go back
    to QUEUED, and a stream resumed after the restart sees it)."""
    try:
        # the daemon's umask, read before _listen sets its own for a moment
        mode = fs.published_mode()
        service = Service(store, config, runner=transfers, published_mode=mode, owners=owners)
    except ValueError as e:
        raise DaemonError(f"bad configuration: {e}") from e
    service.listeners.append(events.on_change)
    try:
        service.recover()
    except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as e:
        # rows SQLite finds intact but openbits cannot read: refuse, as for a damaged file
        raise DaemonError(
            f"the job store {config.db_path} holds a job it cannot read ({e}): {RECOVERY_HINT}"
        ) from e
    return service


def _open_tokens(store: SqliteStore, config: Config) -> Tokens:
    try:
        return Tokens(store, config.max_tokens_per_user)
    except (sqlite3.DatabaseError, ValueError, TypeError) as e:
        raise DaemonError(
            f"the job store {config.db_path} holds tokens it cannot read ({e}): {RECOVERY_HINT}"
        ) from e


async def _open_downloader(
    config: Config, throttle: Throttle, owners: Owners, stack: contextlib.AsyncExitStack
) -> Downloader:
    """The HTTP client (h1, direct and through proxies), the routes (the ``[proxy]`` table,
    else the daemon's environment now; the PAC worker of AUTODETECT) and the downloader."""
    h1 = H1Client(
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        read_bytes=config.read_buffer_bytes,
        default_headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        pipeline_depth=config.http_pipeline_depth,
        splice=config.http_splice,
    )
    stack.push_async_callback(h1.close)
    evaluator = PacEvaluator(config.proxy_pac_time_limit_s)
    stack.push_async_callback(evaluator.close)
    pac = PacRoutes(functools.partial(fetch_text, h1), evaluator, config.proxy_pac_url)
    table = {"http": config.proxy_http, "https": config.proxy_https, "no_proxy": config.proxy_no_proxy}
    proxies = Proxies.of(table, os.environ, pac)
    tls = TLSContexts()
    stack.callback(tls.close)
    tuning = Tuning(
        checkpoint_interval_s=config.checkpoint_interval_s,
        checkpoint_bytes=config.checkpoint_bytes,
        write_block_bytes=config.write_block_bytes,
        read_buffer_bytes=config.read_buffer_bytes,
        segment_min_bytes=config.segment_min_bytes,
    )
    tickets = OwnerTickets(owners, config.owner_ccache)
    stack.callback(tickets.close)
    return Downloader(
        h1,
        tuning,
        throttle,
        tls,
        proxies,
        owners=owners,
        machine_cert_dir=config.machine_cert_dir,
        tickets=tickets,
    )


def _open_fetch_worker(
    config: Config, downloader: Downloader, stack: contextlib.AsyncExitStack
) -> FetchWorker | None:
    """The process that fetches part of a job's many small files on another core
    (``transfer/offload.py``): none on a one-CPU machine or with ``fetch_worker = false``."""
    if not config.fetch_worker or len(os.sched_getaffinity(0)) < 2:
        return None
    h1 = downloader.transport.h1
    worker = FetchWorker(
        Settings(
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            read_buffer_bytes=config.read_buffer_bytes,
            pipeline_depth=config.http_pipeline_depth,
            splice=config.http_splice,
            default_headers=dict(h1.default_headers),
            tuning=downloader.transport.tuning,
            proxies=downloader.transport.proxies.daemon,
        ),
        idle_s=config.fetch_worker_idle_s,
    )
    stack.push_async_callback(worker.close)
    return worker


def _on_signals(stack: contextlib.AsyncExitStack) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event; a second signal exits at once."""
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting at once")
            os._exit(128 + signum)
        log.info("signal %d: shutting down", signum)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
        stack.callback(loop.remove_signal_handler, signum)
    return stop


async def _listen(
    runner: web.AppRunner,
    config: Config,
    listen_at: tuple[str, int] | None,
    tls: ssl.SSLContext | None,
    stack: contextlib.AsyncExitStack,
    own_socket: _OwnSocket,
) -> None:
    """The TCP listener when configured (HTTPS with ``tls``), then the Unix socket (0600, or
    socket_mode): a socket that answers means every listener is up (what clients and
    ``systemctl start`` wait for), and a listener that cannot bind fails before the socket
    file exists."""
    if listen_at is not None:
        await _listen_tcp(runner, config, listen_at, tls)
    inherited = inherited_socket()
    if inherited is not None:  # systemd socket activation: the unit owns path and mode
        stack.callback(inherited.close)
        await web.SockSite(runner, inherited).start()
        log.info("serving on the socket systemd passed (LISTEN_FDS)")
    else:
        _prepare_socket(config.socket, config.socket_mode)
        # (made with its mode: the site takes calls before it returns, so a chmod after would
        # leave a moment when the socket refused the users a system daemon serves)
        old_umask = os.umask(0o777 & ~config.socket_mode)
        try:
            await web.UnixSite(runner, config.socket).start()
        finally:
            os.umask(old_umask)
        own_socket.made()  # (only a socket this daemon created is removed)
        os.chmod(config.socket, config.socket_mode)


async def _listen_tcp(
    runner: web.AppRunner, config: Config, listen_at: tuple[str, int], tls: ssl.SSLContext | None
) -> None:
    host, port = listen_at
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True).start()
    except OSError as e:
        raise DaemonError(f"cannot listen on {config.listen}: {e.strerror or e}") from e
    if tls is None and not ipaddress.ip_address(host).is_loopback:
        log.warning(
            "serving the API on %s without TLS (insecure_listen): bearer tokens cross the network in clear",
            config.listen,
        )
    log.info("also serving on %s %s (bearer tokens)", "https" if tls else "tcp", config.listen)


def listener_tls(config: Config, listen_at: tuple[str, int] | None) -> ssl.SSLContext | None:
    """The TLS context of the TCP listener (None: plain HTTP); ValueError for a setting
    that does not hold together: a certificate without its key, TLS without a listener, or
    plain HTTP on an address other than loopback without ``insecure_listen``."""
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ValueError("tls_cert and tls_key go together (the certificate chain and its key)")
    if config.tls_cert and listen_at is None:
        raise ValueError("tls_cert and tls_key are for the TCP listener: set listen too")
    if listen_at is None:
        return None
    if not config.tls_cert:
        if not ipaddress.ip_address(listen_at[0]).is_loopback and not config.insecure_listen:
            raise ValueError(
                f"listen = {config.listen!r} is not a loopback address: serve HTTPS there "
                "(--tls-cert FILE --tls-key FILE), or accept bearer tokens in clear with "
                "--insecure-listen"
            )
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(
            f"cannot load tls_cert {config.tls_cert} / tls_key {config.tls_key}: {reason}"
        ) from None
    with contextlib.suppress(OSError):
        if os.stat(config.tls_key).st_mode & 0o077:
            log.warning("tls_key %s can be read by other users: chmod 600 it", config.tls_key)
    return context


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ValueError when malformed.
    The host is an IP address: the listener binds exactly where it is told."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"listen must be HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen needs an IP address (e.g. 127.0.0.1:8765), not {text!r}") from None
    return host, int(port_text)


def _version() -> str:
    from openbits import __version__

    return __version__


def run(config: Config) -> int:
    tune_malloc()
    logging.basicConfig(
        level=os.environ.get("OPENBITS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(config))
    except DaemonError as e:
        print(f"openbits serve: {e}", file=sys.stderr)
        return 1
    return 0
