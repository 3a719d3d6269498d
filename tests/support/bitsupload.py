"""A small BITS upload client for the upload server's tests, and the server as a process.

`BitsUploadClient` speaks the BITS upload protocol over one keep-alive ``http.client``
connection (reopened after a failure): each packet is a method, the answers are `Answer`s
(status, headers with lower-case names). Bodies are sent in pieces, never built whole, so a
100 MiB upload costs little memory. Paths are sent as given (``/../x`` stays ``/../x``).

`UploadServer` runs ``python -m openbits upload-server`` with its own root and state
directory (it survives a restart: ``kill()`` then ``start()`` again).
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import HOST, ServerProcess, free_ports

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
_PIECE_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def offset(self) -> int | None:
        value = self.header("BITS-Received-Content-Range")
        return int(value) if value is not None else None


class BitsUploadClient:
    """BITS_POST packets to one server, one request at a time."""

    def __init__(self, port: int, host: str = HOST, timeout_s: float = 60.0, keep_alive: bool = True) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.keep_alive = keep_alive  # False: "Connection: close", a connection a request
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        path: str,
        packet: str | None,
        headers: dict[str, str] | None = None,
        body: bytes | Iterator[bytes] = b"",
        length: int | None = None,
        method: str = "BITS_POST",
    ) -> Answer:
        """One request; ``body`` an iterator of pieces needs ``length``."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn = self._conn
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            all_headers = {"BITS-Packet-Type": packet} if packet is not None else {}
            all_headers.update(headers or {})
            if not self.keep_alive:
                all_headers["Connection"] = "close"
            size = len(body) if isinstance(body, bytes) else length
            all_headers.setdefault("Content-Length", str(size or 0))
            for name, value in all_headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            for piece in [body] if isinstance(body, bytes) else body:
                if piece:
                    conn.send(piece)
            response = conn.getresponse()
            data = response.read()
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
            if response.will_close:
                self.close()
            return answer
        except BaseException:
            self.close()
            raise

    def ping(self, path: str) -> Answer:
        return self.request(path, "Ping")

    def create_session(self, path: str, protocols: str = PROTOCOL) -> Answer:
        return self.request(path, "Create-Session", {"BITS-Supported-Protocols": protocols})

    def fragment(self, path: str, session: str, first: int, total: int, data: bytes) -> Answer:
        headers = {"BITS-Session-Id": session, "Content-Name": os.path.basename(path)}
        if total:
            headers["Content-Range"] = f"bytes {first}-{first + len(data) - 1}/{total}"
        return self.request(path, "Fragment", headers, data)

    def close_session(self, path: str, session: str) -> Answer:
        return self.request(path, "Close-Session", {"BITS-Session-Id": session})

    def cancel_session(self, path: str, session: str) -> Answer:
        return self.request(path, "Cancel-Session", {"BITS-Session-Id": session})

    def send_file(
        self, path: str, session: str, source: Path, start: int = 0, fragment_bytes: int = 4 << 20
    ) -> Answer:
        """Fragments of ``source`` from ``start`` to its end (each streamed); the last Answer."""
        total = source.stat().st_size
        answer = self.fragment(path, session, 0, 0, b"") if total == 0 else None
        with source.open("rb") as f:
            offset = start
            while offset < total:
                size = min(fragment_bytes, total - offset)
                headers = {
                    "BITS-Session-Id": session,
                    "Content-Range": f"bytes {offset}-{offset + size - 1}/{total}",
                }
                answer = self.request(path, "Fragment", headers, _pieces(f, offset, size), length=size)
                if answer.status != 200:
                    return answer
                offset = answer.offset if answer.offset is not None else offset + size
        assert answer is not None
        return answer

    def upload(self, path: str, source: Path, fragment_bytes: int = 4 << 20) -> tuple[str, Answer]:
        """Create-Session, every fragment, Close-Session; (session id, the Close's Answer)."""
        created = self.create_session(path)
        assert created.status == 200, created
        session = created.header("BITS-Session-Id")
        assert session is not None
        last = self.send_file(path, session, source, fragment_bytes=fragment_bytes)
        assert last.status == 200, last
        return session, self.close_session(path, session)


def upload_through_faults(
    client: BitsUploadClient, path: str, source: Path, fragment_bytes: int = 256 << 10, max_errors: int = 100
) -> tuple[str, int]:
    """An upload that goes on after any connection failure, as a BITS client does: the
    fragment is sent again from the last offset the server acknowledged, and a 416 moves the
    offset to where the server is. (the session id, the number of failures met)."""
    errors = 0

    def retried(fn: Callable[[], Answer]) -> Answer:
        nonlocal errors
        while True:
            try:
                return fn()
            except (OSError, http.client.HTTPException):
                errors += 1
                assert errors <= max_errors, "too many failures"

    session = retried(lambda: client.create_session(path)).header("BITS-Session-Id") or ""
    total = source.stat().st_size
    offset = 0
    with source.open("rb") as f:
        while offset < total:
            f.seek(offset)
            piece = f.read(min(fragment_bytes, total - offset))
            answer = retried(lambda at=offset, piece=piece: client.fragment(path, session, at, total, piece))
            if answer.offset is None and answer.header("Content-Length") is None:
                errors += 1  # a head cut short (http.client takes it as it is): ask again
                continue
            assert answer.status in (200, 416) and answer.offset is not None, answer
            offset = answer.offset
    closed = retried(lambda: client.close_session(path, session))
    assert closed.status == 200, closed
    return session, errors


def _pieces(f: object, offset: int, size: int) -> Iterator[bytes]:
    assert hasattr(f, "seek") and hasattr(f, "read")
    f.seek(offset)
    left = size
    while left:
        piece = f.read(min(_PIECE_BYTES, left))
        if not piece:
            raise EOFError("the source shrank")
        left -= len(piece)
        yield piece


class UploadServer:
    """``openbits upload-server`` as a child process on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path, config: str | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.state_dir = workdir / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "upload-server.toml"
            self.config_path.write_text(config)
        self.port = free_ports(1)[0]
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "openbits",
            "upload-server",
            "--root",
            str(self.root),
            "--listen",
            f"{HOST}:{self.port}",
            "--state-dir",
            str(self.state_dir),
        ]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        self._process = ServerProcess("upload-server", argv, [self.port], self.workdir / "upload-server.log")
        self._process.start()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash."""
        process, self._process = self._process, None
        if process is not None and process.pid is not None:
            os.killpg(process.pid, signal.SIGKILL)
            process.stop()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def logs(self) -> str:
        return (self.workdir / "upload-server.log").read_text(errors="replace")

    def __enter__(self) -> UploadServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
