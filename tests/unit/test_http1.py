"""The sync client's HTTP/1.1 (``openbits._http1``), over a real socket pair: the request as
written, and answers framed by Content-Length, chunked encoding or the connection's end,
kept alive or not, and the broken ones (nothing, garbage, cut short) as errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from openbits import _http1 as http1


@pytest.fixture
def pair() -> Iterator[tuple[http1.Connection, socket.socket]]:
    """A connection and the server's end of its socket (answers written before they are read:
    each fits in the socket's buffer)."""
    client, server = socket.socketpair()
    client.settimeout(5)
    server.settimeout(5)
    conn = http1.Connection(client, "localhost")
    try:
        yield conn, server
    finally:
        conn.close()
        server.close()


def received(server: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += server.recv(65536)
    return data


def test_a_request_is_its_head_and_body_with_their_length(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    conn, server = pair
    conn.request("POST", "/jobs?x=1", b'{"a": 1}', {"Content-Type": "application/json"})
    head, _, body = received(server).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /jobs?x=1 HTTP/1.1"
    assert set(lines[1:]) == {
        b"Host: localhost",
        b"Accept-Encoding: identity",
        b"Content-Type: application/json",
        b"Content-Length: 8",
    }
    assert body == b'{"a": 1}'
    conn.request("GET", "/version", None, {})
    assert b"Content-Length" not in received(server)  # (a GET without a body has none)


def test_answers_of_a_length_one_after_the_other_on_one_connection(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    conn, server = pair
    server.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope!"
    )
    first = conn.response()
    assert (first.status, first.headers["content-type"], first.read(), first.will_close) == (
        200,
        "application/json",
        b"{}",
        False,
    )
    second = conn.response()
    assert (second.status, second.read(), second.will_close) == (404, b"nope!", False)


def test_a_chunked_answer_read_whole_or_line_by_line(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    body = b"retry: 5\n\nid: 1\nevent: JobModified\ndata: {}\n\n"
    chunks = [body[:7], body[7:20], body[20:]]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nTrailer: x\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    server.sendall(answer + answer)
    assert conn.response().read() == body
    lines = []
    resp = conn.response()
    while line := resp.readline():
        lines.append(line)
    assert lines == body.splitlines(keepends=True)
    assert not resp.will_close


def test_an_answer_to_the_connections_end(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it\nand more")
    server.shutdown(socket.SHUT_WR)
    resp = conn.response()
    assert resp.will_close
    assert resp.readline() == b"all of it\n"
    assert resp.read() == b"and more"
    assert resp.readline() == b""


def test_connection_close_is_heard(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    resp = conn.response()
    assert (resp.status, resp.read(), resp.will_close) == (204, b"", True)


def test_a_head_answer_has_no_body(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert conn.response("HEAD").read() == b""
    assert conn.response().read() == b"x"


def test_no_answer_at_all_is_a_remote_disconnect(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(http1.RemoteDisconnected) as raised:
        conn.response()
    assert isinstance(raised.value, ConnectionResetError)  # (the client's one retry)


def test_a_body_cut_short_is_a_remote_disconnect(pair: tuple[http1.Connection, socket.socket]) -> None:
    conn, server = pair
    server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    server.shutdown(socket.SHUT_WR)
    resp = conn.response()
    with pytest.raises(http1.RemoteDisconnected):
        resp.read()


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_what_is_not_http_is_a_protocol_error(
    pair: tuple[http1.Connection, socket.socket], answer: bytes
) -> None:
    conn, server = pair
    server.sendall(answer)
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(http1.ProtocolError):
        conn.response().read()


def test_too_many_headers_or_too_long_a_line_are_refused(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    conn, server = pair
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(http1.MAX_HEADERS + 1))
    server.sendall(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n")
    with pytest.raises(http1.ProtocolError):
        conn.response()
    client2, server2 = socket.socketpair()
    try:
        server2.sendall(b"HTTP/1.1 200 OK\r\nX: " + b"y" * (http1.MAX_LINE_BYTES + 10))
        server2.shutdown(socket.SHUT_WR)
        with pytest.raises(http1.ProtocolError):
            http1.Connection(client2, "localhost").response()
    finally:
        client2.close()
        server2.close()
