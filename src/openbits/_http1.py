"""The sync client's HTTP/1.1: one request written, one answer read, over a connected socket.

Only what talking to our own daemon needs: a request with an optional body (always sent
with its Content-Length), an answer framed by Content-Length, chunked encoding or the
connection's end, read whole (``read``) or line by line (``readline``: Server-Sent Events),
and keep-alive. ``http.client`` did this before; it imports the email package (~30 ms of
every CLI command's start-up), which this module does not: stdlib ``socket`` only.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

#: the longest status line, header line or chunk-size line taken (as http.client's _MAXLINE)
MAX_LINE_BYTES = 65536
#: the most header lines an answer may have (as http.client's _MAXHEADERS)
MAX_HEADERS = 100
_RECV_BYTES = 65536


class ProtocolError(OSError):
    """The answer is not HTTP/1.1 as this client reads it (a broken or foreign peer)."""


class RemoteDisconnected(ConnectionResetError):
    """The peer closed the connection before answering (a kept-alive connection it let go)."""


class Connection:
    """A connected socket (Unix, TCP or TLS) carrying requests one after the other."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock: socket.socket | None = sock
        self._host = host
        self._buffer = bytearray()  # bytes received and not read yet

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> None:
        """Send one request: its head and body in one write."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._socket().sendall(head + body if body else head)

    def response(self, method: str = "GET") -> Response:
        """The answer's status line and headers; its body is read from the Response."""
        status_line = self._line()
        if not status_line:
            raise RemoteDisconnected("the daemon closed the connection without an answer")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for _count in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"not a header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise ProtocolError(f"more than {MAX_HEADERS} header lines")
        return Response(self, int(code), headers, version == b"HTTP/1.0", method == "HEAD")

    # -- reading (for Response) --------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionResetError("the connection is closed")
        return self.sock

    def _recv(self) -> bool:
        """More bytes into the buffer; False at the connection's end."""
        data = self._socket().recv(_RECV_BYTES)
        self._buffer += data
        return bool(data)

    def _line(self) -> bytes:
        """One line with its end (b"" at the connection's end before any byte)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_LINE_BYTES:
                raise ProtocolError("a line of the answer is too long")
            if not self._recv():
                line = bytes(self._buffer)
                self._buffer.clear()
                return line

    def _some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (b"" at the connection's end)."""
        if not self._buffer and not self._recv():
            return b""
        piece = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return piece


class Response:
    """An answer: ``status``, ``headers`` (names in lower case), its body by ``read`` or
    ``readline``; ``will_close``: the connection ends with it (not to be used again)."""

    def __init__(
        self, conn: Connection, status: int, headers: dict[str, str], http10: bool, head: bool
    ) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._body = bytearray()  # body bytes received and not read yet
        connection = headers.get("connection", "").lower()
        self.will_close = "close" in connection or (http10 and "keep-alive" not in connection)
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left: int | None = None  # bytes of the body (or of the current chunk) still to come
        self._done = head or status in (204, 304) or 100 <= status < 200
        if not self._done and not self._chunked:
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    raise ProtocolError(f"a bad Content-Length: {length[:40]!r}")
                self._left = int(length)
                self._done = self._left == 0
            else:
                self.will_close = True  # (the body runs to the connection's end)

    def read(self) -> bytes:
        """The whole (rest of the) body."""
        while self._more():
            pass
        data = bytes(self._body)
        self._body.clear()
        return data

    def readline(self) -> bytes:
        """The body's next line with its end (b"" at the body's end)."""
        while (end := self._body.find(b"\n")) < 0:
            if not self._more():
                end = len(self._body) - 1
                break
        line = bytes(self._body[: end + 1])
        del self._body[: end + 1]
        return line

    def close(self) -> None:
        """Stop reading this answer (its connection is closed by its owner)."""
        self._done = True
        self._body.clear()

    def _more(self) -> bool:
        """The next piece of the body into ``_body``; False once it is all in."""
        if self._done:
            return False
        if self._chunked and not self._left:
            return self._next_chunk()
        piece = self._conn._some(_RECV_BYTES if self._left is None else min(self._left, _RECV_BYTES))
        if not piece:
            if self._left is not None:
                raise RemoteDisconnected("the daemon closed the connection within an answer")
            self._done = True
            return False
        self._body += piece
        if self._left is not None:
            self._left -= len(piece)
            if not self._left and not self._chunked:
                self._done = True
        return True

    def _next_chunk(self) -> bool:
        """The CRLF after a chunk, then the next chunk's size (0: the trailers, and the end)."""
        if self._left == 0:
            self._conn._line()  # the CRLF ending the chunk just read
        size_line = self._conn._line()
        if not size_line:
            raise RemoteDisconnected("the daemon closed the connection within an answer")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"a bad chunk size line: {size_line[:40]!r}") from None
        if size == 0:
            while self._conn._line() not in (b"\r\n", b"\n", b""):
                pass  # (trailers: ignored)
            self._done = True
            return False
        self._left = size
        return True
