"""h1 answering 401s with an Authenticator, against the scripted raw-TCP server of test_h1
(request heads seen byte for byte, connections counted): nothing sent before a 401, the
next leg on the same connection, a new connection restarting an NTLM handshake, a refused
credential ending with the 401, no request sent ahead during a handshake.  NTLM's tokens
are real ones: the server side is a pyspnego acceptor with a user file."""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from openbits.model import AuthScheme, AuthTarget, Credential, Secret
from openbits.transfer.auth import Authenticator, basic_value
from openbits.transfer.h1 import H1Client, TLSFailed, Via
from tests.unit.test_h1 import HOST, WAIT, Peer, Script, ScriptServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"


def challenge(*values: str, body: bytes = b"denied", close: bool = False) -> bytes:
    lines = [f"WWW-Authenticate: {v}\r\n" for v in values]
    extra = "Connection: close\r\n" if close else ""
    head = f"HTTP/1.1 401 Unauthorized\r\n{''.join(lines)}{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def credential(scheme: AuthScheme, user: str = "alice", password: str = "s3cret") -> Credential:
    return Credential(AuthTarget.SERVER, scheme, user, Secret(password))


def authenticator(*credentials: Credential, secure: bool = False) -> Authenticator:
    return Authenticator(AuthTarget.SERVER, credentials, HOST, secure=secure)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptServer]]]:
    servers: list[ScriptServer] = []

    async def start(script: Script) -> ScriptServer:
        server = ScriptServer(script)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
    errors = [e for server in servers for e in server.errors]
    if errors:
        raise errors[0]


@pytest.fixture
async def client() -> AsyncIterator[H1Client]:
    made = H1Client(connect_timeout_s=WAIT, read_timeout_s=WAIT)
    yield made
    await made.close()


@pytest.fixture
def ntlm_users(tmp_path: Path) -> Iterator[None]:
    """NTLM_USER_FILE for the pyspnego acceptor: DOM\\alice, password s3cret."""
    path = tmp_path / "ntlm-users"
    path.write_text("DOM:alice:s3cret\n")
    old = os.environ.get("NTLM_USER_FILE")
    os.environ["NTLM_USER_FILE"] = str(path)
    yield
    if old is None:
        del os.environ["NTLM_USER_FILE"]
    else:
        os.environ["NTLM_USER_FILE"] = old


async def read_all(response: object) -> bytes:
    content = response.content  # type: ignore[attr-defined]
    data = b""
    while chunk := await content.read():
        data += chunk
    return data


async def test_basic_is_sent_only_after_the_401_on_the_same_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.answer(challenge('Basic realm="files"'))
        second = await peer.request()
        assert second is not None
        right = second.header("Authorization") == basic_value("alice", "s3cret")
        await peer.answer(OK if right else challenge())
        await peer.until_eof()

    srv = await scripted(script)
    auth = authenticator(credential(AuthScheme.BASIC))
    async with client.get(f"http://{HOST}:{srv.port}/f", {}, auth=auth, partition="job") as r:
        assert r.status == 200
        assert await read_all(r) == b"body"
    await client.close()
    (peer,) = srv.peers
    assert [h.header("Authorization") for h in peer.heads] == [None, basic_value("alice", "s3cret")]
    assert auth.basic_in_clear and auth.problem is None


async def test_a_refused_credential_ends_with_the_401(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(challenge('Basic realm="files"'))

    srv = await scripted(script)
    auth = authenticator(credential(AuthScheme.BASIC, password="wrong"))
    async with client.get(f"http://{HOST}:{srv.port}/f", {}, auth=auth) as r:
        assert r.status == 401
    assert auth.problem == "the server refused the server Basic credential"
    assert len(srv.peers) == 1 and len(srv.peers[0].heads) == 2


async def test_without_authenticator_the_401_is_the_answer(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(challenge('Basic realm="files"'))

    srv = await scripted(script)
    async with client.get(f"http://{HOST}:{srv.port}/f", {}) as r:
        assert r.status == 401
        assert await read_all(r) == b"denied"
    assert len(srv.peers[0].heads) == 1


async def test_ntlm_handshake_over_one_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, ntlm_users: None
) -> None:
    spnego = pytest.importorskip("spnego")

    async def script(peer: Peer) -> None:
        acceptor = spnego.server(protocol="ntlm")
        first = await peer.request()
        assert first is not None and first.header("Authorization") is None
        await peer.answer(challenge("NTLM", 'Basic realm="x"'))
        while (req := await peer.request()) is not None:
            value = req.header("Authorization") or ""
            assert value.startswith("NTLM ")
            out = acceptor.step(base64.b64decode(value[5:]))
            if acceptor.complete:
                await peer.answer(OK)
            else:
                assert out is not None
                await peer.answer(challenge("NTLM " + base64.b64encode(out).decode()))

    srv = await scripted(script)
    auth = authenticator(credential(AuthScheme.NTLM, "DOM\\alice"), credential(AuthScheme.BASIC))
    async with client.get(f"http://{HOST}:{srv.port}/f", {}, auth=auth, partition="job") as r:
        assert r.status == 200
        assert await read_all(r) == b"body"
    assert len(srv.peers) == 1 and len(srv.peers[0].heads) == 3
    assert auth.negotiated_protocol == "ntlm" and not auth.basic_in_clear


async def test_a_connection_closed_after_the_401_restarts_the_handshake(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, ntlm_users: None
) -> None:
    """The server closes after its challenge: the next leg cannot go on that connection, so
    the handshake starts again on a new one (whose server keeps it open)."""
    spnego = pytest.importorskip("spnego")

    async def script(peer: Peer) -> None:
        acceptor = spnego.server(protocol="ntlm")
        first = await peer.request()
        assert first is not None
        if peer.index == 0:
            await peer.answer(challenge("NTLM", close=True))
            return
        value = first.header("Authorization") or ""
        out = acceptor.step(base64.b64decode(value[5:]))
        assert out is not None and not acceptor.complete  # a fresh NEGOTIATE message
        await peer.answer(challenge("NTLM " + base64.b64encode(out).decode()))
        second = await peer.request()
        assert second is not None
        acceptor.step(base64.b64decode((second.header("Authorization") or "")[5:]))
        await peer.answer(OK if acceptor.complete else challenge("NTLM"))
        await peer.until_eof()

    srv = await scripted(script)
    auth = authenticator(credential(AuthScheme.NTLM, "DOM\\alice"))
    async with client.get(f"http://{HOST}:{srv.port}/f", {}, auth=auth) as r:
        assert r.status == 200
    assert len(srv.peers) == 2


async def test_nothing_is_sent_ahead_during_a_handshake(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            if req.header("Authorization") is None:
                await peer.answer(challenge('Basic realm="x"'))
            else:
                await peer.answer(OK)

    srv = await scripted(script)
    base = f"http://{HOST}:{srv.port}"
    ahead = [(f"{base}/{i}", {}) for i in range(1, 5)]
    for i in range(3):
        auth = authenticator(credential(AuthScheme.BASIC))
        async with client.get(f"{base}/{i}", {}, ahead[i:], auth=auth, partition="job") as r:
            assert r.status == 200
            assert await read_all(r) == b"body"
    (peer,) = srv.peers
    assert [h.path for h in peer.heads] == ["/0", "/0", "/1", "/1", "/2", "/2"]
    assert peer.queued_at_answer == [1] * 6


async def test_partitioned_connections_serve_only_their_job(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(OK)

    srv = await scripted(script)
    url = f"http://{HOST}:{srv.port}/f"
    for partition in ("job-a", "job-b", "job-a", ""):
        async with client.get(url, {}, partition=partition) as r:
            assert await read_all(r) == b"body"
    assert [len(p.heads) for p in srv.peers] == [2, 1, 1]


async def test_a_401_with_a_large_body_goes_on_over_a_new_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def script(peer: Peer) -> None:
        req = await peer.request()
        assert req is not None
        if req.header("Authorization") is None:
            await peer.answer(challenge('Basic realm="x"', body=big))
            await peer.until_eof()
        else:
            await peer.answer(OK)
            await peer.until_eof()

    srv = await scripted(script)
    auth = authenticator(credential(AuthScheme.BASIC))
    async with client.get(f"http://{HOST}:{srv.port}/f", {}, auth=auth) as r:
        assert r.status == 200
    assert len(srv.peers) == 2


# -- a proxy's 407s: the same exchange -----------------------------------------------------


def proxy_challenge(*values: str, body: bytes = b"denied", chunked: bool = False) -> bytes:
    lines = "".join(f"Proxy-Authenticate: {v}\r\n" for v in values)
    framing = f"Content-Length: {len(body)}\r\n"
    if chunked:
        framing = "Transfer-Encoding: chunked\r\n"
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return f"HTTP/1.1 407 Proxy Authentication Required\r\n{lines}{framing}\r\n".encode() + body


def proxy_authenticator(*credentials: Credential) -> Authenticator:
    mine = [Credential(AuthTarget.PROXY, c.scheme, c.user_name, c.password) for c in credentials]
    return Authenticator(AuthTarget.PROXY, mine, HOST, secure=False)


async def test_an_ntlm_proxy_handshake_in_absolute_form_over_one_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client, ntlm_users: None
) -> None:
    """A 407 to a GET in absolute form goes through the exchange a 401 goes through: every
    leg on the connection of the one before, then the origin's 401 answered on it too,
    the proxy's NTLM header not sent again once its handshake is over."""
    spnego = pytest.importorskip("spnego")
    origin = "http://origin.invalid/f"

    async def script(peer: Peer) -> None:
        acceptor = spnego.server(protocol="ntlm")
        first = await peer.request()
        assert first is not None and first.target == origin
        await peer.answer(proxy_challenge("NTLM"))
        while (req := await peer.request()) is not None:
            value = req.header("Proxy-Authorization")
            if acceptor.complete:
                assert value is None  # (the connection is authenticated)
            else:
                assert value is not None and value.startswith("NTLM ")
                out = acceptor.step(base64.b64decode(value[5:]))
                if not acceptor.complete:
                    assert out is not None
                    await peer.answer(proxy_challenge("NTLM " + base64.b64encode(out).decode()))
                    continue
            right = req.header("Authorization") == basic_value("alice", "s3cret")
            await peer.answer(OK if right else challenge('Basic realm="origin"'))

    srv = await scripted(script)
    via = Via(
        "http", HOST, srv.port, tag="p", auth=proxy_authenticator(credential(AuthScheme.NTLM, "DOM\\alice"))
    )
    auth = authenticator(credential(AuthScheme.BASIC))
    async with client.get(origin, {}, via=via, auth=auth, partition="job") as r:
        assert r.status == 200
        assert await read_all(r) == b"body"
    assert len(srv.peers) == 1 and len(srv.peers[0].heads) == 4
    assert via.auth is not None and via.auth.problem is None  # type: ignore[attr-defined]


async def test_a_connect_407_with_a_chunked_body_is_answered_on_the_same_connection(
    scripted: Callable[[Script], Awaitable[ScriptServer]], client: H1Client
) -> None:
    """CONNECT's 407s go through the same exchange (and its drain, which reads any framing):
    the answer goes on the connection the 407 came on, not on a new one."""
    answers: list[tuple[str, str | None]] = []

    async def script(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            value = req.header("Proxy-Authorization")
            answers.append((req.method, value))
            if value is None:
                await peer.answer(proxy_challenge('Basic realm="proxy"', body=b"x" * 5000, chunked=True))
            else:
                await peer.answer(b"HTTP/1.1 200 Connection established\r\n\r\n")
                return  # (no TLS server behind: the handshake fails, the tunnel was made)

    srv = await scripted(script)
    via = Via("http", HOST, srv.port, tag="p", auth=proxy_authenticator(credential(AuthScheme.BASIC)))
    with pytest.raises(TLSFailed):
        async with client.get("https://origin.invalid/f", {}, tls=ssl.create_default_context(), via=via):
            pass
    assert answers == [("CONNECT", None), ("CONNECT", basic_value("alice", "s3cret"))]
    assert len(srv.peers) == 1
