"""SetProxySettings' lists (SPEC §7), parsed and matched: pure, no I/O.

ProxyList: entries separated by spaces or ``;``, each ``[scheme=]host:port`` (BITS's and
WinHTTP's form: ``http=proxy:3128`` serves only http:// URLs), or a URL ``http://host:port``,
``https://host:port`` (TLS to the proxy), ``socks5://host:port`` (names resolved here) or
``socks5h://host:port`` (names resolved by the proxy), tried in order.

ProxyBypassList: entries separated by spaces, ``;`` or ``,``: host names with ``*`` wildcards
(case-insensitive), IP addresses, networks in CIDR form, and ``<local>``, which matches any
host name without a dot (WinHTTP's meaning).  A match goes direct.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

#: the longest list SetProxySettings takes (BG_E_PROXY_LIST_TOO_LARGE and its bypass twin)
LIST_MAX_CHARS = 32 * 1024
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}

_SEPARATORS = re.compile(r"[\s;]+")
_BYPASS_SEPARATORS = re.compile(r"[\s;,]+")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)")
_BYPASS_NAME = re.compile(r"[A-Za-z0-9_*.\-]+")


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    """One proxy of a list: how to speak to it, where it is, and which URLs it serves."""

    scheme: str  # http (plain), https (TLS to the proxy), socks5, socks5h
    host: str  # without brackets for IPv6
    port: int
    for_scheme: str | None = None  # "http=proxy:80": only for http:// URLs; None: all

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")


def parse_proxy_list(text: str) -> list[ProxyEntry]:
    """The entries of a ProxyList; ValueError naming the first entry that does not parse."""
    entries = [parse_proxy_entry(item) for item in _SEPARATORS.split(text.strip()) if item]
    if not entries:
        raise ValueError("the proxy list is empty")
    return entries


def parse_proxy_entry(item: str) -> ProxyEntry:
    """One entry: ``host:port``, ``scheme=host:port`` or ``scheme://host:port``."""
    for_scheme: str | None = None
    scheme = "http"
    rest = item
    if "://" in item:
        scheme, _, rest = item.partition("://")
        scheme = scheme.lower()
        if scheme not in PROXY_SCHEMES:
            raise ValueError(f"{item!r}: a proxy is http://, https://, socks5:// or socks5h://")
        rest = rest.rstrip("/")
    elif "=" in item:
        for_scheme, _, rest = item.partition("=")
        for_scheme = for_scheme.lower()
        if for_scheme not in ("http", "https"):
            raise ValueError(f"{item!r}: only http= and https= may prefix a proxy")
    host, port = _host_port(rest, DEFAULT_PORTS[scheme], item)
    return ProxyEntry(scheme, host, port, for_scheme)


def _host_port(text: str, default_port: int, item: str) -> tuple[str, int]:
    if "@" in text or "/" in text:
        raise ValueError(f"{item!r}: a proxy entry is host:port (credentials go to SetCredentials)")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        host, port_text = text[: end + 1], text[end + 1 :].removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not _HOST.fullmatch(host):
        raise ValueError(f"{item!r}: not a host name or address")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{item!r}: the port must be 1 to 65535")
        port = int(port_text)
    return host.strip("[]"), port


@dataclass(frozen=True, slots=True)
class Bypass:
    """A parsed ProxyBypassList: ``matches(host)`` says whether a host goes direct."""

    patterns: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    local: bool = False

    def matches(self, host: str) -> bool:
        host = host.strip("[]").rstrip(".").lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            if any(address in net for net in self.networks):
                return True
        elif self.local and "." not in host:
            return True
        return any(fnmatchcase(host, pattern) for pattern in self.patterns)


def parse_bypass_list(text: str) -> Bypass:
    """A ProxyBypassList; ValueError naming the first entry that does not parse."""
    patterns: list[str] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    local = False
    for item in _BYPASS_SEPARATORS.split(text.strip()):
        if not item:
            continue
        if item.lower() == "<local>":
            local = True
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if not _BYPASS_NAME.fullmatch(item):
            raise ValueError(
                f"{item!r}: a bypass entry is a host name (with * wildcards), an address or <local>"
            )
        patterns.append(item.lower().rstrip("."))
    return Bypass(tuple(patterns), tuple(networks), local)
