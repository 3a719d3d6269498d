"""The caller of a request: the Unix-socket peer's credentials (SO_PEERCRED), or on the
TCP listener the user whose bearer token the request carries (api/tokens.py), with no more
rights than the token's scope allows.  ``authorize`` is the one place a TCP request is let
in: the address's failure count (api/guard.py), the token, then its scope."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from aiohttp import web

from openbits.api.guard import GUARD_KEY
from openbits.api.tokens import TOKENS_KEY, NotAuthenticated, Scope, Token, TooManyFailures, bearer
from openbits.caller import Caller
from openbits.errors import AccessDenied

ADMIN_GROUP_KEY = web.AppKey("admin_group", str)
_CACHE_KEY = web.RequestKey("caller", Caller)  # (aiohttp 3.14+)
_SCOPE_KEY = web.RequestKey("scope", Scope)
#: the one answer to any token that is not valid: it says nothing of why, nor of whose
INVALID_TOKEN = "the bearer token is not valid (unknown, revoked or expired)"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Callers:
    """Who a uid is (name, primary group, admin membership), looked up at most every
    `ttl_s` seconds: getpwuid and getgrnam read /etc files on every call. Owned by one app
    (CALLERS_KEY), so a group change is seen within `ttl_s` (5 s) and nothing outlives the app."""

    def __init__(
        self, ttl_s: float = 5.0, limit: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._limit = limit
        self._seen: dict[tuple[int, str], tuple[float, Caller]] = {}

    def get(self, uid: int, admin_group: str) -> Caller:
        now = self._clock()
        hit = self._seen.get((uid, admin_group))
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        if len(self._seen) >= self._limit:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.ttl_s}
        caller = Caller.from_uid(uid, admin_group)
        self._seen[(uid, admin_group)] = (now, caller)
        return caller


CALLERS_KEY = web.AppKey("callers", Callers)


def caller_of(request: web.Request) -> Caller:
    """Who calls: the Unix-socket peer, or the user of the TCP request's bearer token as its
    scope lets him act (NotAuthenticated without a valid token)."""
    cached = request.get(_CACHE_KEY)
    if isinstance(cached, Caller):
        return cached
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise AccessDenied("the caller's identity is unknown")
    token: Token | None = None
    if sock.family == socket.AF_UNIX:
        uid = peer_uid(sock)
    else:
        token = _token(request)
        uid = token.uid
    admin_group = request.app.get(ADMIN_GROUP_KEY, "openbits-admin")
    callers = request.app.get(CALLERS_KEY)
    caller = callers.get(uid, admin_group) if callers is not None else Caller.from_uid(uid, admin_group)
    if token is not None:
        caller = token.caller(caller)
        request[_SCOPE_KEY] = token.scope
    request[_CACHE_KEY] = caller
    return caller


def _token(request: web.Request) -> Token:
    tokens = request.app.get(TOKENS_KEY)
    secret = bearer(request)
    if secret is None:
        raise NotAuthenticated("this listener needs Authorization: Bearer <token> (openbits token create)")
    token = tokens.authenticate(secret) if tokens is not None else None
    if token is None:
        raise NotAuthenticated(INVALID_TOKEN)
    return token


def authorize(request: web.Request, needed: Scope) -> Caller:
    """Let a TCP request in, before its body is read: 429 while its address is shut out
    for wrong tokens, 401 without a valid token (counted against the address), 403
    (E_ACCESSDENIED) when the token's scope does not cover ``needed``."""
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        wait_s = guard.wait_s(request.remote)
        if wait_s > 0:
            raise TooManyFailures(
                "too many invalid bearer tokens from this address; try again later", retry_after_s=wait_s
            )
    try:
        caller = caller_of(request)
    except NotAuthenticated:
        if guard is not None and bearer(request) is not None:
            guard.failed(request.remote)
        raise
    scope = request.get(_SCOPE_KEY)
    if scope is not None and not scope.covers(needed):
        raise AccessDenied(
            f"this token's scope ({scope.value}) does not allow {request.method} {request.path}; "
            f"it needs a {needed.value} token"
        )
    return caller


def is_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def still_authenticated(request: web.Request) -> bool:
    """False once the bearer token a TCP request came with was revoked or expired: a long
    answer (an event stream) checks it before it sends more (a Unix-socket peer: always True)."""
    if is_unix_socket(request):
        return True
    tokens = request.app.get(TOKENS_KEY)
    secret = bearer(request)
    return tokens is not None and secret is not None and tokens.authenticate(secret) is not None
