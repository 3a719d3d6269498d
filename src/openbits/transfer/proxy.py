"""Which way a request goes (SPEC §7 SetProxySettings): the ordered routes, DIRECT or a
proxy, for a URL and a job's proxy settings.

- PRECONFIG: the job's proxy environment (the caller's ``http_proxy``, ``https_proxy``,
  ``all_proxy``, ``no_proxy`` at CreateJob, either case, the lower case first: curl's and
  requests' reading) when it names a proxy; else the daemon's ``[proxy]`` table (``http``,
  ``https``, ``no_proxy``); else the daemon's environment at start-up; else direct.
- NO_PROXY: direct.
- OVERRIDE: the job's ProxyList in order (``http=``/``https=`` entries only for their scheme),
  unless its ProxyBypassList matches the host.
- AUTODETECT: a PAC script (``pac.PacRoutes``), else direct.

A job without proxy settings under a daemon without proxies costs one comparison: the routes
are the constant :data:`DIRECT`.  :class:`Proxies` is owned by the daemon (parsed lists and
environments are cached in it, bounded); nothing here is module state.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from openbits.model import ProxyUsage
from openbits.transfer.proxylist import (
    DEFAULT_PORTS,
    Bypass,
    ProxyEntry,
    parse_bypass_list,
    parse_proxy_entry,
    parse_proxy_list,
)

if TYPE_CHECKING:
    from openbits.transfer.options import RequestOptions
    from openbits.transfer.pac import PacRoutes

#: parsed environments and lists kept per Proxies object (then the cache starts again)
CACHE_ENTRIES = 256
_ENV_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True, slots=True)
class Route:
    """One way to the server: ``proxy`` None is DIRECT.  ``user``/``password`` come from a
    proxy URL's userinfo (``http://user:pass@proxy:3128`` in an environment)."""

    proxy: ProxyEntry | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


#: the routes of a request that goes direct
DIRECT: tuple[Route, ...] = (Route(),)


@dataclass(frozen=True, slots=True)
class NoProxy:
    """A ``no_proxy`` list (curl's reading): ``*`` is every host; a name matches itself and
    its subdomains (a leading ``.`` or ``*.`` is dropped); addresses and CIDR networks match
    addresses; ``host:port`` only that port."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.strip("[]").rstrip(".").lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in self.networks):
            return True
        for name, only_port in self.names:
            if only_port is not None and only_port != port:
                continue
            if host == name or host.endswith("." + name):
                return True
        return False


def parse_no_proxy(text: str) -> NoProxy:
    names: list[tuple[str, int | None]] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for raw in text.replace(" ", ",").split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "*":
            return NoProxy(everything=True)
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        port: int | None = None
        name = item
        if item.startswith("["):  # [v6]:port
            end = item.find("]")
            name, rest = item[1:end], item[end + 1 :]
            port = int(rest[1:]) if rest[1:].isdigit() else None
            with_port = ipaddress.ip_network(name, strict=False) if _is_address(name) else None
            if with_port is not None and port is None:
                networks.append(with_port)
                continue
        elif item.count(":") == 1:
            name, _, port_text = item.partition(":")
            port = int(port_text) if port_text.isdigit() else None
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        if name:
            names.append((name, port))
    return NoProxy(False, tuple(names), tuple(networks))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_proxy_url(value: str) -> Route | None:
    """A proxy variable's value (``host:port``, ``http://user:pass@host:port``,
    ``socks5h://…``) as a route; None when empty or not one we speak (socks4, say)."""
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme == "socks":
        scheme = "socks5"
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname
    try:
        entry = parse_proxy_entry(
            f"{scheme}://{f'[{host}]' if ':' in host else host}:{port or DEFAULT_PORTS[scheme]}"
        )
    except ValueError:
        return None
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return Route(entry, user, password)


@dataclass(frozen=True, slots=True)
class EnvProxies:
    """Proxy variables, parsed: the route per URL scheme, and what bypasses them."""

    http: Route | None = None
    https: Route | None = None
    no_proxy: NoProxy = NoProxy()

    @property
    def empty(self) -> bool:
        return self.http is None and self.https is None

    def routes(self, scheme: str, host: str, port: int) -> tuple[Route, ...]:
        route = self.https if scheme == "https" else self.http
        if route is None or self.no_proxy.matches(host, port):
            return DIRECT
        return (route,)


def parse_environment(env: Mapping[str, str]) -> EnvProxies:
    """``http_proxy``, ``https_proxy``, ``all_proxy`` (for both when the other is not set)
    and ``no_proxy``, in either case, the lower case winning (curl, requests)."""
    values = {name: _variable(env, name) for name in _ENV_NAMES}
    fallback = parse_proxy_url(values["all_proxy"])
    http = parse_proxy_url(values["http_proxy"]) if values["http_proxy"] else fallback
    https = parse_proxy_url(values["https_proxy"]) if values["https_proxy"] else fallback
    return EnvProxies(http, https, parse_no_proxy(values["no_proxy"]))


def _variable(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if value is None:
        value = env.get(name.upper())
    return value or ""


def names_a_proxy(env: Mapping[str, str] | None) -> bool:
    """Whether a job's proxy environment names any proxy (else the daemon's settings apply)."""
    if not env:
        return False
    return any(_variable(env, name) for name in _ENV_NAMES[:3])


def _split(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", port or (443 if scheme == "https" else 80)


class Proxies:
    """The routes of every request: the daemon's own proxy settings (``daemon``: its
    ``[proxy]`` table, else its environment at start-up), the PAC resolver of AUTODETECT,
    and caches of what the jobs' settings parse to."""

    def __init__(self, daemon: EnvProxies | None = None, pac: PacRoutes | None = None) -> None:
        self.daemon = daemon or EnvProxies()
        self.pac = pac
        self._daemon_direct = self.daemon.empty
        self._envs: dict[tuple[tuple[str, str], ...], EnvProxies] = {}
        self._lists: dict[tuple[str, str], tuple[tuple[ProxyEntry, ...], Bypass]] = {}

    @classmethod
    def of(
        cls, table: Mapping[str, str], environ: Mapping[str, str], pac: PacRoutes | None = None
    ) -> Proxies:
        """The daemon's ``[proxy]`` table (``http``, ``https``, ``no_proxy``) when it names a
        proxy, else its environment."""
        if table.get("http") or table.get("https"):
            daemon = EnvProxies(
                parse_proxy_url(table.get("http", "")),
                parse_proxy_url(table.get("https", "")),
                parse_no_proxy(table.get("no_proxy", "")),
            )
        else:
            daemon = parse_environment(environ)
        return cls(daemon, pac)

    def fixed(self, url: str, options: RequestOptions) -> tuple[Route, ...] | None:
        """The routes of ``url`` for a job, or None when a PAC script must say (AUTODETECT:
        ``await autodetect(url)``)."""
        usage = options.proxy_usage
        if usage is ProxyUsage.PRECONFIG:
            env = options.proxy_environment
            if not env and self._daemon_direct:
                return DIRECT  # the common case: nothing parsed, nothing looked up
            split = _split(url)
            if split is None:
                return DIRECT
            if env and names_a_proxy(env):
                return self._env(env).routes(*split)
            return self.daemon.routes(*split)
        if usage is ProxyUsage.OVERRIDE and options.proxy_list:
            split = _split(url)
            if split is None:
                return DIRECT
            return self._override(options.proxy_list, options.proxy_bypass_list or "", *split)
        if usage is ProxyUsage.AUTODETECT:
            return None
        return DIRECT

    async def autodetect(self, url: str) -> tuple[Route, ...]:
        if self.pac is None:
            return DIRECT
        return await self.pac.routes(url)

    def _env(self, env: Mapping[str, str]) -> EnvProxies:
        key = tuple(sorted((k, v) for k, v in env.items() if k.lower() in _ENV_NAMES))
        parsed = self._envs.get(key)
        if parsed is None:
            if len(self._envs) >= CACHE_ENTRIES:
                self._envs.clear()
            parsed = self._envs[key] = parse_environment(env)
        return parsed

    def _override(
        self, proxy_list: str, bypass_list: str, scheme: str, host: str, port: int
    ) -> tuple[Route, ...]:
        key = (proxy_list, bypass_list)
        parsed = self._lists.get(key)
        if parsed is None:
            if len(self._lists) >= CACHE_ENTRIES:
                self._lists.clear()
            try:
                entries = tuple(parse_proxy_list(proxy_list))
                bypass = parse_bypass_list(bypass_list) if bypass_list else Bypass()
            except ValueError:  # (SetProxySettings checked them: a store from elsewhere)
                entries, bypass = (), Bypass()
            parsed = self._lists[key] = (entries, bypass)
        entries, bypass = parsed
        if bypass.matches(host):
            return DIRECT
        routes = tuple(Route(e) for e in entries if e.for_scheme is None or e.for_scheme == scheme)
        return routes or DIRECT
