"""The upload server's settings: TOML, defaults at the top, overrides per directory.

```toml
max_sessions_per_client = 50        # server-wide (IIS: BITSNumberOfSessionsLimit)
trust_forwarded = false             # server-wide: behind a proxy, the client's address is
                                    # X-Real-IP and the scheme X-Forwarded-Proto
public_base_url = ""                # server-wide: "https://host[:port]", the server's own
                                    # origin; "": the address the request came in on
allow_uploads = true                # every other key may also sit in a [directories."x"] table
max_upload_bytes = 0                # the whole file; 0 = no limit
allow_overwrite = false
session_timeout_s = 1209600         # IIS: BITSSessionTimeout, 14 days
notification_type = "none"          # none | by-value | by-reference
notification_url = ""
notification_timeout_s = 300
max_reply_bytes = 67108864          # the largest reply a by-value application may answer
host_id = ""                        # IIS's BITSHostId: the host later packets must go to
host_id_fallback_timeout_s = 0      # 0: none sent (the client never falls back)
file_mode = "0644"
owner = ""                          # user name or uid; applied when running as root
group = ""

[directories."reports/daily"]       # a directory relative to --root, and all below it
notification_type = "by-value"
notification_url = "http://127.0.0.1:8080/ingest"
```

The settings of an upload are those of the deepest ``[directories]`` entry that contains
its directory, over the top-level ones, over the defaults.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

NOTIFICATION_TYPES = ("none", "by-value", "by-reference")


@dataclass(frozen=True, slots=True)
class DirSettings:
    """What may be uploaded into a directory, and what happens to it."""

    allow_uploads: bool = True
    max_upload_bytes: int = 0
    allow_overwrite: bool = False
    session_timeout_s: float = 1_209_600.0
    notification_type: str = "none"
    notification_url: str = ""
    notification_timeout_s: float = 300.0
    max_reply_bytes: int = 64 * 1024 * 1024
    host_id: str = ""
    host_id_fallback_timeout_s: int = 0
    file_mode: int = 0o644
    owner_uid: int | None = None
    group_gid: int | None = None

    @property
    def notifies(self) -> bool:
        return self.notification_type != "none"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The server: its root, its state directory, the defaults and the per-directory settings."""

    root: str
    state_dir: str
    max_sessions_per_client: int = 50
    defaults: DirSettings = field(default_factory=DirSettings)
    directories: dict[tuple[str, ...], DirSettings] = field(default_factory=dict)
    cleanup_interval_s: float | None = None  # None: a quarter of the shortest timeout, ≤ 60 s
    trust_forwarded: bool = False
    public_base_url: str = ""  # "scheme://host[:port]"; "": the address a request came in on

    def for_directory(self, parts: tuple[str, ...]) -> DirSettings:
        """The settings of the directory ``parts`` (relative to the root)."""
        best: tuple[int, DirSettings] = (-1, self.defaults)
        for prefix, settings in self.directories.items():
            if parts[: len(prefix)] == prefix and len(prefix) > best[0]:
                best = (len(prefix), settings)
        return best[1]

    def shortest_timeout_s(self) -> float:
        return min(
            [self.defaults.session_timeout_s, *(d.session_timeout_s for d in self.directories.values())]
        )

    @classmethod
    def load(cls, root: str, state_dir: str, config_path: str | None = None) -> ServerSettings:
        """Settings from a TOML file (or the defaults); ValueError on a bad file."""
        data: dict[str, Any] = {}
        if config_path is not None:
            with open(config_path, "rb") as f:
                data = tomllib.load(f)
        return cls.from_mapping(root, state_dir, data)

    @classmethod
    def from_mapping(cls, root: str, state_dir: str, data: dict[str, Any]) -> ServerSettings:
        data = dict(data)
        tables = data.pop("directories", {})
        if not isinstance(tables, dict):
            raise ValueError("[directories] must be a table of tables")
        limit = data.pop("max_sessions_per_client", 50)
        interval = data.pop("cleanup_interval_s", None)
        trust_forwarded = _typed(data.pop("trust_forwarded", False), bool, "trust_forwarded", "the top level")
        public_base_url = _base_url(data.pop("public_base_url", ""))
        defaults = _dir_settings(DirSettings(), data, "the top level")
        directories: dict[tuple[str, ...], DirSettings] = {}
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise ValueError(f"[directories.{name!r}] must be a table")
            parts = tuple(p for p in name.split("/") if p not in ("", "."))
            if ".." in parts:
                raise ValueError(f"[directories.{name!r}]: '..' is not allowed")
            directories[parts] = _dir_settings(defaults, table, f"[directories.{name!r}]")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("max_sessions_per_client must be a positive integer")
        return cls(
            root=os.path.abspath(root),
            state_dir=os.path.abspath(state_dir),
            max_sessions_per_client=limit,
            defaults=defaults,
            directories=directories,
            cleanup_interval_s=float(interval) if interval is not None else None,
            trust_forwarded=trust_forwarded,
            public_base_url=public_base_url,
        )


def _dir_settings(base: DirSettings, table: dict[str, Any], where: str) -> DirSettings:
    """``base`` with the keys of ``table``, each checked."""
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("allow_uploads", "allow_overwrite"):
            changes[key] = _typed(value, bool, key, where)
        elif key == "max_upload_bytes":
            changes[key] = _non_negative(value, key, where)
        elif key in ("session_timeout_s", "notification_timeout_s"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{where}: {key} must be a positive number")
            changes[key] = float(value)
        elif key == "notification_type":
            if value not in NOTIFICATION_TYPES:
                raise ValueError(f"{where}: notification_type must be one of {', '.join(NOTIFICATION_TYPES)}")
            changes[key] = value
        elif key == "notification_url":
            changes[key] = _typed(value, str, key, where)
        elif key == "host_id":
            host = _typed(value, str, key, where)
            if len(host) > 300 or any(c in host for c in "\r\n\x00"):
                raise ValueError(f"{where}: host_id must be one line of at most 300 characters")
            changes[key] = host
        elif key == "max_reply_bytes":
            changes[key] = _non_negative(value, key, where)
            if changes[key] == 0:
                raise ValueError(f"{where}: max_reply_bytes must be positive")
        elif key == "host_id_fallback_timeout_s":
            changes[key] = _non_negative(value, key, where)
        elif key == "file_mode":
            changes[key] = _mode(value, where)
        elif key == "owner":
            changes["owner_uid"] = _uid(value, where)
        elif key == "group":
            changes["group_gid"] = _gid(value, where)
        else:
            raise ValueError(f"{where}: unknown setting {key!r}")
    settings = dataclasses.replace(base, **changes)
    if settings.notifies and not settings.notification_url:
        raise ValueError(f"{where}: notification_type {settings.notification_type} needs a notification_url")
    return settings


def _base_url(value: Any) -> str:
    """``public_base_url``: an http(s) origin (no path but "/", no query, no user info)."""
    text = _typed(value, str, "public_base_url", "the top level").strip()
    if not text:
        return ""
    try:
        url = URL(text)
    except ValueError:
        url = URL()
    if (
        url.scheme not in ("http", "https")
        or not url.host
        or url.path not in ("", "/")
        or url.query_string
        or url.fragment
        or url.user is not None
    ):
        raise ValueError('public_base_url must be an origin such as "https://uploads.example.com:8443"')
    return str(url.origin())


def _typed(value: Any, kind: type, key: str, where: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {key} must be a {kind.__name__}")
    return value


def _non_negative(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {key} must be an integer ≥ 0")
    return value


def _mode(value: Any, where: str) -> int:
    try:
        mode = int(value, 8) if isinstance(value, str) else int(value)
    except ValueError:
        raise ValueError(f'{where}: file_mode must be octal, e.g. "0640"') from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{where}: file_mode must be within 0000-0777")
    return mode


def _uid(value: Any, where: str) -> int | None:
    return _account_id(value, where, "user", lambda name: pwd.getpwnam(name).pw_uid)


def _gid(value: Any, where: str) -> int | None:
    return _account_id(value, where, "group", lambda name: grp.getgrnam(name).gr_gid)


def _account_id(value: Any, where: str, kind: str, lookup: Callable[[str], int]) -> int | None:
    """A user or group setting: "" (unchanged), a number, or a name looked up."""
    if value in ("", None):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:
        return lookup(str(value))
    except KeyError:
        raise ValueError(f"{where}: no {kind} {value!r}") from None
