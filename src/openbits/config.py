"""Daemon configuration: defaults from BITS, overridden by a TOML file, then by flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

#: where ``openbits serve --system``, the machine's daemon, keeps its state, listens, and
#: reads its settings (if the file exists) unless told otherwise (SPEC §7 Users)
SYSTEM_STATE_DIR = "/var/lib/openbits"
SYSTEM_SOCKET = "/run/openbits/openbits.sock"
SYSTEM_CONFIG = "/etc/openbits/openbits.toml"


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "openbits")


def default_socket_path(state_dir: str | None = None) -> str:
    """``$XDG_RUNTIME_DIR/openbits/openbits.sock``, else ``<state-dir>/openbits.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "openbits", "openbits.sock")
    return os.path.join(state_dir or default_state_dir(), "openbits.sock")


def client_socket_path(explicit: str | None = None) -> str:
    """Where a client finds the daemon: --socket, then $OPENBITS_SOCKET, then the default."""
    return explicit or os.environ.get("OPENBITS_SOCKET") or default_socket_path()


@dataclass(slots=True)
class Config:
    state_dir: str = ""
    socket: str = ""
    # limits (SPEC §3, BITS defaults); administrators are exempt from the job limits
    max_jobs_per_user: int = 60
    max_jobs_per_machine: int = 300
    max_files_per_job: int = 200
    max_ranges_per_file: int = 500
    admin_group: str = "openbits-admin"
    #: 0o600 for a per-user daemon; a system daemon serving several users uses 0o666
    #: (each caller is still identified by SO_PEERCRED and sees only its own jobs).
    socket_mode: int = 0o600
    #: the machine's daemon (``serve --system``): refuses to start unless root; every job's
    #: files are handled with its owner's rights either way (``transfer/owner.py``)
    system: bool = False
    #: "HOST:PORT" (e.g. "127.0.0.1:8765", "[::1]:8765"): also serve the API over TCP, each
    #: request authenticated by a bearer token issued over the Unix socket ("": no TCP)
    listen: str = ""
    #: the TCP listener speaks HTTPS with this certificate chain and key (PEM files, read at
    #: start); a listener on an address other than loopback needs them, or insecure_listen
    tls_cert: str = ""
    tls_key: str = ""
    #: serve plain HTTP on a non-loopback address anyway (bearer tokens cross the network in
    #: clear: only behind a TLS-terminating proxy on a trusted network)
    insecure_listen: bool = False
    #: bearer tokens one user may hold at once
    max_tokens_per_user: int = 16
    #: invalid bearer tokens an address may present before it is shut out (429), first for
    #: token_failure_delay_s, doubling with each further failure up to token_failure_delay_max_s
    token_failures_free: int = 5
    token_failure_delay_s: float = 0.5
    token_failure_delay_max_s: float = 5.0
    finished_retention_s: int = 7 * 86400
    # scheduling
    max_concurrent_background_jobs: int = 1
    #: round-robin time slice among background jobs of one priority (BITS does not say)
    time_slice_s: float = 60.0
    #: the most connections one job may use at once, whatever its MaxConnections (1-32)
    max_connections_per_job: int = 32
    #: a job without activity (property change, progress, state change) this long is cancelled
    job_inactivity_timeout_s: int = 90 * 86400
    # bandwidth (rates like "10M", "512k", a bare number is KiB/s; "" or "off" = unlimited)
    bandwidth_limit: str = ""
    #: weekly timetable, rclone style: "Mon-08:00,512k Mon-18:00,off" (overrides bandwidth_limit)
    bandwidth_schedule: str = ""
    high_priority_bandwidth: str = ""
    normal_priority_bandwidth: str = ""
    low_priority_bandwidth: str = ""
    foreground_limited: bool = False
    #: BITS group-policy form (used when bandwidth_schedule is empty): "Mon-Fri 08-17"
    work_hours: str = ""
    work_bandwidth: str = ""
    non_work_bandwidth: str = ""
    #: polite background (SPEC §9 BackgroundYield): the priorities that yield bandwidth to other
    #: traffic on their path ("HIGH,NORMAL,LOW"; "" none), keeping the queueing delay they add
    #: under yield_target_delay_ms
    background_yield: str = "HIGH,NORMAL,LOW"
    yield_target_delay_ms: float = 75.0
    # retries: BITS waits MinimumRetryDelay each time; with retry_backoff (an extension) the
    # delay doubles per transient error in a row, jittered ±20 %, up to retry_backoff_max_s
    retry_backoff: bool = False
    retry_backoff_max_s: float = 3600.0
    # transfers
    read_timeout_s: float = 60.0
    connect_timeout_s: float = 30.0
    checkpoint_interval_s: float = 1.0
    checkpoint_bytes: int = 64 * 1024 * 1024
    write_block_bytes: int = 1024 * 1024
    read_buffer_bytes: int = 4 * 1024 * 1024
    #: a file at least this long, from a server that serves byte ranges with a strong
    #: validator, is fetched in segments over the job's connections (SPEC §9)
    segment_min_bytes: int = 8 * 1024 * 1024
    #: requests a job sends ahead on a plain-HTTP keep-alive connection (0: no pipelining)
    http_pipeline_depth: int = 8
    #: plain-HTTP bodies move socket → pipe → file inside the kernel (splice(2)), not
    #: through Python; false: read and write them (as HTTPS and proxied bodies always are)
    http_splice: bool = True
    #: a job of many small files shares them with a worker process on another core
    #: (``transfer/offload.py``); false: the daemon's own loop fetches them all
    fetch_worker: bool = True
    #: a fetch worker with no lane for this long exits (started again by the next one)
    fetch_worker_idle_s: float = 60.0
    #: the LOCAL_MACHINE certificate stores (SetClientCertificateBy*: CertStoreLocation 1, 6
    #: and 7): one directory per store name; CURRENT_USER ones are in each owner's home
    machine_cert_dir: str = "/etc/openbits/certs"
    #: the owner's Kerberos ticket cache file, which NTLM/Negotiate credentials with no names
    #: use when the daemon is not him (the system daemon): read with his rights, used only if
    #: he owns it; ``%{uid}`` is his uid; "" reads none (such jobs then need names)
    owner_ccache: str = "/tmp/krb5cc_%{uid}"
    # store
    store_synchronous: str = "FULL"
    #: new work (CreateJob, AddFile*) is refused while the state directory's file system has
    #: less free than this: the room left is for the jobs already accepted to record progress
    state_reserve_mb: int = 16
    # events (GET /events): the newest event_log_size events are kept for replay; progress
    # is sent at most once per event_min_interval_s per job (BITS' minimum notification
    # interval); an idle stream gets a keep-alive comment every event_keepalive_s
    event_log_size: int = 10_000
    event_min_interval_s: float = 0.5
    event_keepalive_s: float = 15.0
    # proxies (the [proxy] table: http, https, no_proxy, pac_url): PRECONFIG jobs whose
    # caller named no proxy use http/https/no_proxy (else the daemon's environment at
    # start-up); AUTODETECT jobs the PAC script at pac_url (file:// or http://), else WPAD
    proxy_http: str = ""
    proxy_https: str = ""
    proxy_no_proxy: str = ""
    proxy_pac_url: str = ""
    #: a PAC script that has not answered in this long is stopped (and the file goes direct)
    proxy_pac_time_limit_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.state_dir:
            self.state_dir = default_state_dir()
        if not self.socket:
            self.socket = default_socket_path(self.state_dir)

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "jobs.sqlite")

    @classmethod
    def load(cls, path: str | None = None, *, system: bool = False, **overrides: Any) -> Config:
        """Defaults (the system daemon's with ``system``: its state directory, its socket,
        mode 0666, and ``SYSTEM_CONFIG`` when no file is named and it exists), then the TOML
        file's keys (flat or under ``[openbits]``), then overrides."""
        values: dict[str, Any] = {}
        if system:
            values.update(state_dir=SYSTEM_STATE_DIR, socket=SYSTEM_SOCKET, socket_mode=0o666, system=True)
            if path is None and os.path.exists(SYSTEM_CONFIG):
                path = SYSTEM_CONFIG
        if path:
            import tomllib  # (here: the CLI imports this module for the socket's path alone)

            with open(path, "rb") as fh:
                data = tomllib.load(fh)
            proxy_table = data.pop("proxy", None)
            if "openbits" in data:
                if set(data) != {"openbits"} or not isinstance(data["openbits"], dict):
                    raise ValueError(f"{path}: put every setting under [openbits], or none")
                data = data["openbits"]
                proxy_table = data.pop("proxy", proxy_table)
            if proxy_table is not None:
                data.update(_proxy_settings(path, proxy_table))
            defaults = {f.name: f.default for f in fields(cls)}
            unknown = sorted(set(data) - set(defaults))
            if unknown:
                raise ValueError(f"{path}: unknown setting(s): {', '.join(unknown)}")
            for key, value in data.items():
                expected = type(defaults[key])
                ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
                if expected is float and isinstance(value, int) and not isinstance(value, bool):
                    ok = True
                if not ok:
                    raise ValueError(f"{path}: {key} must be a {expected.__name__}, not {value!r}")
            values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


PROXY_TABLE_KEYS = ("http", "https", "no_proxy", "pac_url", "pac_time_limit_s")


def _proxy_settings(path: str, table: Any) -> dict[str, Any]:
    """The ``[proxy]`` table's keys as the ``proxy_*`` settings."""
    if not isinstance(table, dict):
        raise ValueError(f"{path}: proxy must be a table ([proxy])")
    unknown = sorted(set(table) - set(PROXY_TABLE_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown [proxy] setting(s): {', '.join(unknown)}")
    return {f"proxy_{key}": value for key, value in table.items()}
