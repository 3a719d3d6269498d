"""AUTODETECT (SPEC §7): the PAC script from ``[proxy] pac_url`` (``file://`` or ``http://``),
else WPAD (``http://wpad.<domain>/wpad.dat`` for the host's DNS domain), fetched directly
with ``h1``, kept for :data:`SCRIPT_TTL_S` (a failed fetch for :data:`RETRY_S`, then asked
again), evaluated per file in the worker process (``pacworker``), its answer read as routes.

No script (none configured and no DNS domain, or none served) means direct, as in BITS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable

from openbits.transfer.h1 import H1Client, H1Error
from openbits.transfer.pacworker import PacEvaluator, PacFailed
from openbits.transfer.proxy import DIRECT, Route
from openbits.transfer.proxylist import parse_proxy_entry

log = logging.getLogger("openbits.transfer.pac")

SCRIPT_TTL_S = 300.0
RETRY_S = 30.0
SCRIPT_MAX_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 10.0
_KEYWORDS = {"PROXY": "http", "HTTP": "http", "HTTPS": "https", "SOCKS": "socks5", "SOCKS5": "socks5"}


def parse_pac_result(text: str) -> tuple[Route, ...]:
    """``FindProxyForURL``'s answer (``PROXY h:p; SOCKS5 h:p; DIRECT``) as routes, in order;
    an entry we cannot use (SOCKS4, garbage) is skipped; nothing usable is DIRECT."""
    routes: list[Route] = []
    for item in text.split(";"):
        words = item.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword == "DIRECT" and len(words) == 1:
            routes.append(Route())
            continue
        scheme = _KEYWORDS.get(keyword)
        if scheme is None or len(words) != 2:
            continue
        try:
            routes.append(Route(parse_proxy_entry(f"{scheme}://{words[1]}")))
        except ValueError:
            continue
    return tuple(routes) or DIRECT


#: fetches a script's text from an http:// URL (the daemon gives one over ``h1``)
Fetch = Callable[[str], Awaitable[str]]


class PacRoutes:
    """The routes AUTODETECT gives a URL (owned by the daemon)."""

    def __init__(
        self,
        fetch: Fetch,
        evaluator: PacEvaluator,
        pac_url: str = "",
        fqdn: Callable[[], str] = socket.getfqdn,
    ) -> None:
        self._fetch, self.evaluator, self.pac_url, self._fqdn = fetch, evaluator, pac_url, fqdn
        self._script: str | None = None
        self._until = 0.0  # the script (or its absence) is good until then (monotonic)
        self._lock = asyncio.Lock()
        self.fetched = 0  # fetches tried

    async def routes(self, url: str) -> tuple[Route, ...]:
        script = await self.script()
        if script is None:
            return DIRECT
        try:
            shown, host = script_view(url)
        except ValueError:
            return DIRECT
        try:
            answer = await self.evaluator.find(script, shown, host)
        except PacFailed as e:
            log.warning("PAC script: %s; going direct", e)
            self._until = min(self._until, time.monotonic() + RETRY_S)  # fetch it again soon
            return DIRECT
        return parse_pac_result(answer)

    async def script(self) -> str | None:
        """The PAC script, fetched when the one held is older than SCRIPT_TTL_S."""
        if time.monotonic() < self._until:
            return self._script
        async with self._lock:
            if time.monotonic() < self._until:
                return self._script
            self.fetched += 1
            try:
                location = self.pac_url or await self._wpad()
                script = await self._load(location) if location else None
            except (OSError, ValueError, TimeoutError, UnicodeDecodeError) as e:
                log.info("no PAC script (%s): going direct", e)
                script = None
            self._script = script
            self._until = time.monotonic() + (SCRIPT_TTL_S if script is not None else RETRY_S)
            return script

    async def _wpad(self) -> str | None:
        fqdn = await asyncio.get_running_loop().run_in_executor(None, self._fqdn)
        domain = fqdn.partition(".")[2].strip(".")
        return f"http://wpad.{domain}/wpad.dat" if domain else None

    async def _load(self, location: str) -> str:
        if location.startswith("file://"):
            path = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
            return await asyncio.get_running_loop().run_in_executor(None, _read_file, path)
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            return await self._fetch(location)


async def fetch_text(client: H1Client, url: str) -> str:
    """A PAC script from an http:// URL, directly (ValueError when it cannot be had)."""
    try:
        async with client.get(url, {}) as resp:
            if resp.status != 200:
                raise ValueError(f"{url} answered HTTP {resp.status}")
            data = bytearray()
            while chunk := await resp.content.read():
                data += chunk
                if len(data) > SCRIPT_MAX_BYTES:
                    raise ValueError(f"the PAC script at {url} is over {SCRIPT_MAX_BYTES} bytes")
    except H1Error as e:
        raise ValueError(f"cannot fetch {url}: {e}") from e
    return data.decode("utf-8")


def _read_file(path: str) -> str:
    with open(path, "rb") as fh:
        data = fh.read(SCRIPT_MAX_BYTES + 1)
    if len(data) > SCRIPT_MAX_BYTES:
        raise ValueError(f"the PAC file {path} is over {SCRIPT_MAX_BYTES} bytes")
    return data.decode("utf-8")


def script_view(url: str) -> tuple[str, str]:
    """What a PAC script is shown of ``url``: (URL, host).  Never its userinfo; of an
    https:// URL only ``https://host[:port]/``, as browsers do, since a script from WPAD may
    come from anyone on the network and can send what it sees out through DNS lookups."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = parts.netloc.rpartition("@")[2]
    if parts.scheme.lower() == "https":
        return f"https://{netloc}/", host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), host
