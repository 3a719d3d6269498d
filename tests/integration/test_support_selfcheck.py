"""Self-checks for the integration-test support layer (tests/support)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # until pytest's `pythonpath` or a conftest provides it
    sys.path.insert(0, _ROOT)

from tests.support import fixtures, process  # noqa: E402
from tests.support.faults import (  # noqa: E402
    CloseMidBody,
    FaultServer,
    IgnoreRange,
    NoResponse,
    Sequence,
    Serve,
    Stall,
    Status,
    WrongContentRange,
)
from tests.support.fixtures import make_file, sha256_file  # noqa: E402
from tests.support.nginx import BASIC_PASSWORD, BASIC_USER, Nginx  # noqa: E402

nginx = fixtures.nginx
fault_server = fixtures.fault_server

DATA = bytes(range(256)) * 40  # 10240 bytes


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", timeout: float = 10
) -> tuple[int, Message, bytes]:
    """Status, headers and body of a request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


def connect(url: str, timeout: float = 5) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


# -- make_file -------------------------------------------------------------------------


def test_make_file_is_deterministic(tmp_path: Path) -> None:
    a = make_file(tmp_path, "a.bin", 3 * 1024 * 1024 + 5, seed=1)
    b = make_file(tmp_path, "sub/b.bin", 3 * 1024 * 1024 + 5, seed=1)
    c = make_file(tmp_path, "c.bin", 3 * 1024 * 1024 + 5, seed=2)
    assert a == b != c
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "sub/b.bin").read_bytes()
    assert (tmp_path / "a.bin").stat().st_size == 3 * 1024 * 1024 + 5
    assert sha256_file(tmp_path / "c.bin") == c
    assert make_file(tmp_path, "empty", 0) == sha256_file(tmp_path / "empty")


# -- nginx -----------------------------------------------------------------------------


def test_nginx_serves_file_byte_identically(nginx: Nginx) -> None:
    digest = make_file(nginx.www, "ident.bin", 5 * 1024 * 1024 + 123, seed=7)
    status, headers, body = get(f"{nginx.url}/ident.bin")
    assert status == 200
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"]
    assert len(body) == 5 * 1024 * 1024 + 123
    assert hashlib.sha256(body).hexdigest() == digest
    (entry,) = nginx.wait_requests(uri="/ident.bin")
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["range"] is None
    assert entry["bytes_sent"] == len(body)


def test_nginx_range_is_206_and_logged(nginx: Nginx) -> None:
    make_file(nginx.www, "range.bin", 10000, seed=3)
    data = (nginx.www / "range.bin").read_bytes()
    _, full_headers, _ = get(f"{nginx.url}/range.bin", method="HEAD")
    etag = full_headers["ETag"]

    status, headers, body = get(f"{nginx.url}/range.bin", {"Range": "bytes=100-199", "If-Range": etag})
    assert status == 206
    assert headers["Content-Range"] == "bytes 100-199/10000"
    assert body == data[100:200]

    status, _, body = get(f"{nginx.url}/range.bin", {"Range": "bytes=100-", "If-Range": '"x"'})
    assert status == 200  # If-Range mismatch: whole entity
    assert body == data

    head, ranged, mismatched = nginx.wait_requests(3, uri="/range.bin")
    assert head["method"] == "HEAD"
    assert ranged["status"] == 206
    assert ranged["range"] == "bytes=100-199"
    assert ranged["if_range"] == etag
    assert ranged["bytes_sent"] == 100
    assert mismatched["status"] == 200
    assert mismatched["if_range"] == '"x"'


def test_nginx_keepalive_is_visible_in_log(nginx: Nginx) -> None:
    make_file(nginx.www, "ka.bin", 1000)
    conn = connect(nginx.url)
    try:
        for _ in range(3):
            conn.request("GET", "/ka.bin")
            resp = conn.getresponse()
            assert resp.status == 200
            assert len(resp.read()) == 1000
    finally:
        conn.close()
    entries = nginx.wait_requests(3, uri="/ka.bin")
    assert len({e["connection"] for e in entries}) == 1
    assert [e["connection_requests"] for e in entries] == [1, 2, 3]


def test_nginx_slow_location_is_throttled(nginx: Nginx) -> None:
    # nginx lets about one second's worth through at once, then throttles: S bytes take
    # about S/rate - 1 seconds. 2 MiB at the default 1 MiB/s takes about 1 s.
    assert nginx.slow_rate == "1m"
    rate = 1024 * 1024
    size = 2 * rate
    digest = make_file(nginx.www, "slow.bin", size, seed=5)
    started = time.monotonic()
    status, _, body = get(f"{nginx.url}/slow/slow.bin")
    elapsed = time.monotonic() - started
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == digest
    assert elapsed >= (size / rate - 1) * 0.8
    (entry,) = nginx.wait_requests(uri="/slow/slow.bin")
    assert entry["bytes_sent"] == size


def test_nginx_noranges_ignores_range(nginx: Nginx) -> None:
    make_file(nginx.www, "norange.bin", 5000, seed=9)
    data = (nginx.www / "norange.bin").read_bytes()
    status, headers, body = get(f"{nginx.url}/noranges/norange.bin", {"Range": "bytes=10-19"})
    assert status == 200
    assert "Accept-Ranges" not in headers
    assert "Content-Range" not in headers
    assert body == data
    (entry,) = nginx.wait_requests(uri="/noranges/norange.bin")
    assert entry["range"] == "bytes=10-19"
    assert entry["status"] == 200


def test_nginx_basic_auth(nginx: Nginx) -> None:
    make_file(nginx.www, "secret.bin", 100)
    status, headers, _ = get(f"{nginx.url}/basic/secret.bin")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")
    token = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    status, _, body = get(f"{nginx.url}/basic/secret.bin", {"Authorization": f"Basic {token}"})
    assert status == 200
    assert body == (nginx.www / "secret.bin").read_bytes()
    wrong = base64.b64encode(f"{BASIC_USER}:nope".encode()).decode()
    status, _, _ = get(f"{nginx.url}/basic/secret.bin", {"Authorization": f"Basic {wrong}"})
    assert status == 401


def test_nginx_redirect(nginx: Nginx) -> None:
    make_file(nginx.www, "target.bin", 100)
    conn = connect(nginx.url)
    try:
        conn.request("GET", "/redirect/target.bin")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302
        assert resp.headers["Location"] == f"{nginx.url}/target.bin"
    finally:
        conn.close()


def test_nginx_https_with_ca(nginx: Nginx) -> None:
    make_file(nginx.www, "tls.bin", 4096, seed=11)
    context = ssl.create_default_context(cafile=str(nginx.ca_path))
    req = urllib.request.Request(f"{nginx.https_url}/tls.bin")
    with urllib.request.urlopen(req, context=context, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == (nginx.www / "tls.bin").read_bytes()
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=10)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_nginx_start_failure_reports_error_log(tmp_path: Path) -> None:
    server = Nginx(tmp_path / "work", tmp_path / "www", slow_rate="not-a-size")
    with pytest.raises(RuntimeError, match="limit_rate"):
        server.start()
    assert not server.running


# -- FaultServer -----------------------------------------------------------------------


def test_fault_serve_full_head_range_if_range(fault_server: FaultServer) -> None:
    route = Serve(DATA)
    fault_server.routes["/f"] = route
    url = f"{fault_server.url}/f?x=1"
    etag = route.current_etag()
    assert etag is not None

    status, headers, body = get(url, {"X-Test": "yes"})
    assert (status, body) == (200, DATA)
    assert headers["ETag"] == etag
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Last-Modified"]

    status, headers, body = get(url, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(DATA))

    status, headers, body = get(url, {"Range": "bytes=10-19", "If-Range": etag})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    assert body == DATA[10:20]

    status, headers, body = get(url, {"Range": "bytes=-5"})
    assert (status, body) == (206, DATA[-5:])

    status, _, body = get(url, {"Range": "bytes=10-", "If-Range": '"stale"'})
    assert (status, body) == (200, DATA)

    status, headers, _ = get(url, {"Range": f"bytes={len(DATA)}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"

    route.data = DATA[::-1]  # the "file" changes on the server: the ETag follows
    status, _, body = get(url, {"Range": "bytes=10-", "If-Range": etag})
    assert (status, body) == (200, DATA[::-1])

    recorded = fault_server.requests
    assert [r["method"] for r in recorded] == ["GET", "HEAD"] + ["GET"] * 5
    assert recorded[0]["path"] == "/f"
    assert recorded[0]["target"] == "/f?x=1"
    assert recorded[0]["headers"]["x-test"] == "yes"
    assert recorded[2]["headers"]["range"] == "bytes=10-19"
    assert fault_server.errors == []


def test_fault_unknown_path_is_404(fault_server: FaultServer) -> None:
    status, _, _ = get(f"{fault_server.url}/nothing")
    assert status == 404


def test_fault_keepalive(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = Serve(DATA)
    conn = connect(fault_server.url)
    try:
        for _ in range(3):
            conn.request("GET", "/f")
            resp = conn.getresponse()
            assert resp.read() == DATA
        conn.request("GET", "/f", headers={"Range": "bytes=0-0"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, DATA[:1])
    finally:
        conn.close()
    assert len(fault_server.requests) == 4


def test_fault_close_mid_body_then_resume(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = CloseMidBody(DATA, after=1000)
    conn = connect(fault_server.url)
    try:
        conn.request("GET", "/f")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(DATA))
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == DATA[:1000]
    finally:
        conn.close()
    # only_first: the resumed request and any later one are served correctly
    status, _, body = get(f"{fault_server.url}/f", {"Range": "bytes=1000-"})
    assert (status, body) == (206, DATA[1000:])
    status, _, body = get(f"{fault_server.url}/f")
    assert (status, body) == (200, DATA)


def test_fault_close_mid_body_every_time(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = CloseMidBody(DATA, after=1000, only_first=False)
    for headers in ({}, {"Range": "bytes=500-"}):
        conn = connect(fault_server.url)
        try:
            conn.request("GET", "/f", headers=headers)
            resp = conn.getresponse()
            with pytest.raises(http.client.IncompleteRead) as info:
                resp.read()
            start = 500 if headers else 0
            assert info.value.partial == DATA[start:1000]
        finally:
            conn.close()
    status, _, body = get(f"{fault_server.url}/f", {"Range": "bytes=1000-"})
    assert (status, body) == (206, DATA[1000:])


def test_fault_close_mid_body_abortive(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = CloseMidBody(DATA, after=1000, abortive=True)
    conn = connect(fault_server.url)
    try:
        conn.request("GET", "/f")
        resp = conn.getresponse()
        with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
            resp.read()
    finally:
        conn.close()


def test_fault_status(fault_server: FaultServer) -> None:
    fault_server.routes["/busy"] = Status(503, b"busy", {"Retry-After": "7"})
    status, headers, body = get(f"{fault_server.url}/busy")
    assert (status, body) == (503, b"busy")
    assert headers["Retry-After"] == "7"


def test_fault_sequence(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = Sequence(Status(500), Status(503), Serve(DATA))
    assert [get(f"{fault_server.url}/f")[0] for _ in range(4)] == [500, 503, 200, 200]


def test_fault_ignore_range(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = IgnoreRange(DATA)
    status, headers, body = get(f"{fault_server.url}/f", {"Range": "bytes=10-19"})
    assert (status, body) == (200, DATA)
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in headers


def test_fault_wrong_content_range(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = WrongContentRange(DATA)
    status, headers, body = get(f"{fault_server.url}/f", {"Range": "bytes=10-19"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 11-20/{len(DATA)}"
    assert body == DATA[11:21]
    status, headers, body = get(f"{fault_server.url}/f", {"Range": "bytes=-10"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {len(DATA) - 11}-{len(DATA) - 2}/{len(DATA)}"
    status, _, body = get(f"{fault_server.url}/f")
    assert (status, body) == (200, DATA)


def test_fault_stall_then_prompt_stop() -> None:
    server = FaultServer({"/f": Stall(DATA, after=1000)})
    server.start()
    try:
        conn = connect(server.url)
        conn.request("GET", "/f")
        sock = conn.sock  # (0.5 s only for the read that stalls)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(DATA))
        assert resp.read(1000) == DATA[:1000]
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            resp.read(1)
    finally:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
    conn.close()
    server.stop()  # idempotent


def test_fault_stall_only_first(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = Stall(DATA, after=0, only_first=True)
    conn = connect(fault_server.url)
    try:
        conn.request("GET", "/f")
        sock = conn.sock  # (0.5 s only for the read that stalls)
        resp = conn.getresponse()
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            resp.read(1)
    finally:
        conn.close()
    status, _, body = get(f"{fault_server.url}/f")
    assert (status, body) == (200, DATA)


def test_fault_no_response(fault_server: FaultServer) -> None:
    fault_server.routes["/f"] = NoResponse()
    conn = connect(fault_server.url, timeout=0.5)
    try:
        conn.request("GET", "/f")
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()
    assert [r["path"] for r in fault_server.requests] == ["/f"]


@pytest.fixture
def two_fault_servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    with FaultServer() as a, FaultServer() as b:
        yield a, b


def test_fault_servers_are_independent(two_fault_servers: tuple[FaultServer, FaultServer]) -> None:
    a, b = two_fault_servers
    assert a.url != b.url
    a.routes["/f"] = Status(204)
    assert get(f"{a.url}/f")[0] == 204
    assert get(f"{b.url}/f")[0] == 404
    assert len(a.requests) == len(b.requests) == 1


def test_a_server_whose_port_answers_from_another_process_is_refused(tmp_path: Path) -> None:
    """Two xdist workers may pick the same free port: the server that lost it must not look
    ready because the other one answers there ("in use": its caller retries elsewhere)."""
    with socket.socket() as other:  # (this process: another session than the server's)
        other.bind((process.HOST, 0))
        other.listen()
        port = other.getsockname()[1]
        assert not process.listening_here(port, os.getsid(0) + 1)
        assert process.listening_here(port, os.getsid(0))
        server = process.ServerProcess(
            "sleeper", ["sleep", "30"], ports=[port], log_path=tmp_path / "sleeper.log"
        )
        with pytest.raises(process.ServerError, match="in use by another process"):
            server.start()
        assert not server.running
