"""``h1``'s authentication exchange: ONE loop answers a server's 401s and a proxy's 407s.

An :class:`Answerer` (``auth.Authenticator``: Basic, Digest, NTLM, Negotiate) says which status
it answers (``status``: 401 for a server, 407 for a proxy) and with which header
(``header_name``: Authorization, Proxy-Authorization).  :func:`exchange` feeds it each such
answer and sends the request again with its value, on the SAME connection while the other side
keeps it open: NTLM and Negotiate authenticate the connection, not the request, so their legs
must follow each other on one connection (a new one restarts the handshake: the answerer is
told, ``connection_lost``).  The body of each challenge is read and dropped first (up to
:data:`MAX_AUTH_BODY_BYTES`; a longer one, or a connection the other side closes, means a new
connection for the next leg).

The same loop serves a GET (direct, or in absolute form through a proxy: 407s and 401s may
both come, each answered by its own answerer, their headers sent together) and ``CONNECT``
(``h1proxy``: the proxy's 407s before the tunnel exists).  The caller says how the request is
written again with the answers' headers, how its answer is read, and how a new connection is
opened; the connections of an exchange never go back to a pool between legs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from multidict import CIMultiDictProxy

from openbits.transfer.auth import CONNECTION_BOUND, SCHEME_NAMES
from openbits.transfer.h1body import Response
from openbits.transfer.h1conn import SMALL_READ_BYTES, Conn, Wire
from openbits.transfer.h1head import ClosedEarly, H1Error

__all__ = ["MAX_AUTH_BODY_BYTES", "MAX_ROUNDS", "Answerer", "drain", "exchange"]

#: the most of a 401's or 407's body read to keep its connection for the next leg
MAX_AUTH_BODY_BYTES = 1024 * 1024
#: requests sent again in one exchange at most, whatever the answerers say (an Authenticator
#: answers up to auth.MAX_LEGS = 8 times, and a GET through a proxy may have two of them)
MAX_ROUNDS = 16


class Answerer(Protocol):
    """Answers the challenges of one target (``transfer/auth.py``'s Authenticator): the value
    of ``header_name`` for a ``status`` answer, or None (no credential fits, or it was
    refused: the challenge stands)."""

    @property
    def status(self) -> int: ...

    @property
    def header_name(self) -> str: ...

    #: the TLS certificate (DER) of the other side of the connection, for channel bindings
    server_certificate: bytes | None

    def answer(self, status: int, headers: CIMultiDictProxy[str], method: str, uri: str) -> str | None: ...

    def connection_lost(self) -> None: ...

    def verify(self, status: int, headers: CIMultiDictProxy[str]) -> bool: ...


#: the schemes (lower case, as a header value starts) whose handshake authenticates the
#: connection: once the other side answered otherwise, their header is not sent again on it
_BOUND = frozenset(SCHEME_NAMES[s].lower() for s in CONNECTION_BOUND)

#: the request again, with these headers added (the answers so far)
Rewrite = Callable[[Mapping[str, str]], bytes]
#: the answer to a request just sent on the connection
ReadAnswer = Callable[[Conn], Awaitable[Response | None]]
#: a new connection for the next leg (the one before was closed)
Reconnect = Callable[[], Awaitable[Conn]]


async def exchange(
    client: Wire,
    response: Response,
    answerers: Sequence[Answerer],
    method: str,
    uri: str,
    rewrite: Rewrite,
    read: ReadAnswer,
    reconnect: Reconnect,
    *,
    pooled: bool = True,
) -> Response:
    """Answer ``response`` and the answers after it while one of ``answerers`` asks for it
    (its ``status``) and answers; the final answer (checked by each answerer: Negotiate's
    mutual authentication), or the challenge nobody answered, its body read.  ``method`` and
    ``uri`` are what Digest signs.  ``pooled``: the connection of a challenge nobody answered
    goes back to ``client`` for other requests (not a CONNECT's: its caller closes it)."""
    by_status = {a.status: a for a in answerers}
    extra: dict[str, str] = {}
    rounds = 0
    while (answerer := by_status.get(response.status)) is not None:
        if rounds == MAX_ROUNDS:
            return response  # (the challenge stands)
        rounds += 1
        tls = response._conn.tls
        if tls is not None and answerer.server_certificate is None:
            answerer.server_certificate = tls.getpeercert(binary_form=True)
        conn = await drain(response)
        try:
            if conn is None:
                for a in answerers:
                    a.connection_lost()
            value = answerer.answer(response.status, response.headers, method, uri)
            head = None
            if value is not None:
                _settled(extra, answerer.header_name)
                extra[answerer.header_name] = value
                head = rewrite(extra)  # (a value with a line break is refused here: BadRequest)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if head is None:
            if conn is not None and pooled:
                client.release(conn, reusable=True)
            return response
        response = await _leg(client, conn, head, read, reconnect)
    for a in answerers:
        a.verify(response.status, response.headers)
    return response


def _settled(extra: dict[str, str], asking: str) -> None:
    """Before a leg for the answerer of ``asking``'s header: drop the headers of the others
    whose NTLM/Negotiate handshake is over (they were answered otherwise: the connection is
    authenticated, and the last token sent again would start a new handshake).  Basic and
    Digest go with every request (a GET through a proxy meets its 407, then the origin's 401)."""
    for name, value in list(extra.items()):
        if name != asking and value.split(" ", 1)[0].lower() in _BOUND:
            del extra[name]


async def drain(response: Response) -> Conn | None:
    """Read (and drop) the body of a challenge to free its connection: the connection when
    it can carry the next leg (it stays with the exchange), else None (it is closed)."""
    conn = response._conn
    response._released = True  # the connection stays with the exchange
    body = response.content
    read = 0
    try:
        while not body.done and read <= MAX_AUTH_BODY_BYTES:
            chunk = await body.read(SMALL_READ_BYTES)
            if not chunk:
                break
            read += len(chunk)
    except (H1Error, TimeoutError):
        pass  # (the next leg goes over a new connection)
    except BaseException:
        conn.close()
        raise
    if body.done and response.keep_alive and not (conn.eof or conn.buffered() or conn.inflight):
        return conn
    conn.close()
    return None


async def _leg(
    client: Wire, conn: Conn | None, head: bytes, read: ReadAnswer, reconnect: Reconnect
) -> Response:
    """Send ``head`` over ``conn`` (a new connection when None) and read its answer."""
    if conn is None:
        conn = await reconnect()
    try:
        await client.send(conn, head)
        response = await read(conn)
    except BaseException:
        conn.close()
        raise
    if response is None:
        conn.close()
        raise ClosedEarly("the connection closed without an answer to the authenticated request")
    return response
