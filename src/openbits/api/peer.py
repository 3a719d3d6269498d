"""The caller of a request: the Unix-socket peer's credentials (SO_PEERCRED), or on the
TCP listener the user whose bearer token the request carries (api/tokens.py)."""

from __future__ import annotations

import socket
import struct
import time

from aiohttp import web

from openbits.api.tokens import TOKENS_KEY, NotAuthenticated, bearer
from openbits.caller import Caller
from openbits.errors import AccessDenied

ADMIN_GROUP_KEY = web.AppKey("admin_group", str)
_CACHE_KEY = web.RequestKey("caller", Caller)  # (aiohttp 3.14+)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


_CALLERS: dict[tuple[int, str], tuple[float, Caller]] = {}
CALLER_TTL_S = 30.0


def _cached_caller(uid: int, admin_group: str) -> Caller:
    """A uid's name and admin membership, looked up at most every 30 s (getpwuid and
    getgrnam read /etc files on every call)."""
    now = time.monotonic()
    hit = _CALLERS.get((uid, admin_group))
    if hit is not None and now - hit[0] < CALLER_TTL_S:
        return hit[1]
    caller = Caller.from_uid(uid, admin_group)
    _CALLERS[(uid, admin_group)] = (now, caller)
    return caller


def caller_of(request: web.Request) -> Caller:
    cached = request.get(_CACHE_KEY)
    if isinstance(cached, Caller):
        return cached
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise AccessDenied("the caller's identity is unknown")
    if sock.family == socket.AF_UNIX:
        uid = peer_uid(sock)
    else:
        tokens = request.app.get(TOKENS_KEY)
        secret = bearer(request)
        found = tokens.uid_for(secret) if tokens is not None and secret is not None else None
        if found is None:
            raise NotAuthenticated(
                "this listener needs Authorization: Bearer <token> (openbits token create)"
                if secret is None
                else "the bearer token is not valid (revoked, or never issued)"
            )
        uid = found
    admin_group = request.app.get(ADMIN_GROUP_KEY, "openbits-admin")
    caller = _cached_caller(uid, admin_group)
    request[_CACHE_KEY] = caller
    return caller


def is_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def still_authenticated(request: web.Request) -> bool:
    """False once the bearer token a TCP request came with was revoked: a long answer (an
    event stream) checks it before it sends more (a Unix-socket peer: always True)."""
    if is_unix_socket(request):
        return True
    tokens = request.app.get(TOKENS_KEY)
    secret = bearer(request)
    return tokens is not None and secret is not None and tokens.uid_for(secret) is not None
