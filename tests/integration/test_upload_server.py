"""``openbits upload-server`` as a real process: uploads, the protocol's errors, safety, restarts.

Driven by the small client of tests/support/bitsupload.py (the daemon's own upload client is
another piece of work): byte-identical files of 0 B, 1 B, 5 MiB and 100 MiB; 416 on a gap or
an overlap with nothing written; 413; unknown sessions; path traversal and symlinks refused;
a server killed mid-upload goes on in the same session; abandoned sessions are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bitsupload import BitsUploadClient, UploadServer

GUID_SHAPE = r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[UploadServer]:
    with UploadServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def client(server: UploadServer) -> Iterator[BitsUploadClient]:
    c = BitsUploadClient(server.port)
    yield c
    c.close()


def _source(tmp_path: Path, size: int, name: str = "source.bin") -> Path:
    path = tmp_path / name
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 8 << 20))
            f.write(piece)
            left -= len(piece)
    return path


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _partials(root: Path) -> list[Path]:
    return list(root.rglob(".bits-*.part"))


def _wait(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize("size", [0, 1, 5 << 20, 100 << 20], ids=["0B", "1B", "5MiB", "100MiB"])
def test_upload_is_byte_identical(
    server: UploadServer, client: BitsUploadClient, tmp_path: Path, size: int
) -> None:
    source = _source(tmp_path, size)
    session, closed = client.upload(f"/file-{size}.bin", source)
    assert closed.status == 200
    assert closed.header("BITS-Packet-Type") == "Ack"
    published = server.root / f"file-{size}.bin"
    assert published.stat().st_size == size
    assert _digest(published) == _digest(source)
    assert _partials(server.root) == []
    assert session in server.logs()  # each session is logged (briefly)
    assert client.close_session(f"/file-{size}.bin", session).status == 200  # a repeated Close: 200


def test_ping_create_and_errors(client: BitsUploadClient) -> None:
    pong = client.ping("/x.bin")
    assert (pong.status, pong.header("BITS-Packet-Type"), pong.header("Content-Length")) == (200, "Ack", "0")
    created = client.create_session("/x.bin")
    assert created.status == 200
    assert created.header("BITS-Protocol") == "{7df0354d-249b-430f-820d-3d2a9bef4931}"
    assert created.header("Accept-Encoding") == "identity"
    import re

    assert re.fullmatch(GUID_SHAPE, created.header("BITS-Session-Id") or "")
    unknown = client.create_session("/x.bin", protocols="{00000000-0000-0000-0000-000000000000}")
    assert (unknown.status, unknown.header("BITS-Error-Code"), unknown.header("BITS-Error-Context")) == (
        400,
        "0x80070057",
        "0x5",
    )
    lost = client.fragment("/x.bin", "{6E3D6A4B-4E1F-4C4B-9B7D-2B2C8F7A1E00}", 0, 4, b"abcd")
    assert (lost.status, lost.header("BITS-Error-Code")) == (500, "0x8020001F")
    bad = client.request(
        "/x.bin",
        "fragment",
        {"BITS-Session-Id": created.header("BITS-Session-Id") or "", "Content-Range": "bytes 5-1/4"},
        b"abcd",
    )
    assert (bad.status, bad.header("BITS-Error-Code"), bad.header("BITS-Error-Context")) == (
        400,
        "0x80070057",
        "0x5",
    )
    assert client.request("/x.bin", "Nonsense").status == 400
    assert client.request("/x.bin", None, method="PUT", body=b"abc").status == 405
    assert client.request("/x.bin", None, method="GET").status == 405


def test_gap_and_overlap_get_416_and_nothing_written(server: UploadServer, client: BitsUploadClient) -> None:
    data = os.urandom(300)
    session = client.create_session("/g.bin").header("BITS-Session-Id") or ""
    first = client.fragment("/g.bin", session, 0, 300, data[:100])
    assert (first.status, first.offset) == (200, 100)
    assert first.header("BITS-Session-Id") is None  # as IIS: Fragment Acks carry no session id
    gap = client.fragment("/g.bin", session, 150, 300, data[150:200])
    assert (gap.status, gap.offset) == (416, 100)
    overlap = client.fragment("/g.bin", session, 50, 300, b"X" * 100)  # bytes 50-149, would rewrite 50-99
    assert (overlap.status, overlap.offset) == (416, 100)
    rest = client.fragment("/g.bin", session, 100, 300, data[100:])
    assert (rest.status, rest.offset) == (200, 300)
    assert client.close_session("/g.bin", session).status == 200
    assert (server.root / "g.bin").read_bytes() == data


def test_max_upload_bytes_gives_413(tmp_path: Path) -> None:
    with UploadServer(tmp_path / "srv", config="max_upload_bytes = 1000\n") as server:
        client = BitsUploadClient(server.port)
        session = client.create_session("/big.bin").header("BITS-Session-Id") or ""
        too_big = client.fragment("/big.bin", session, 0, 1001, b"a" * 10)
        assert (too_big.status, too_big.header("BITS-Error-Code")) == (413, "0x80200020")
        ok = client.fragment("/big.bin", session, 0, 1000, b"a" * 1000)
        assert ok.status == 200
        client.close()


@pytest.mark.parametrize(
    "path",
    [
        "/../escape.bin",
        "/a/../../escape.bin",
        "/%2e%2e/escape.bin",
        "/sub%2F..%2F..%2Fescape.bin",
        "/nul%00.bin",
        "/" + "n" * 256,
        "/" + "/".join(["d"] * 2100) + "/x",
        "/link/escape.bin",
        "/link-in/x.bin",
        "/target-link.bin",
        "/sub/",
    ],
    ids=[
        "dotdot",
        "dotdot-deep",
        "encoded-dotdot",
        "encoded-slash",
        "nul",
        "long-name",
        "long-path",
        "symlink-out",
        "symlink-in",
        "symlink-file",
        "no-name",
    ],
)
def test_paths_outside_or_through_symlinks_are_refused(
    server: UploadServer, client: BitsUploadClient, path: str
) -> None:
    outside = server.workdir / "outside"
    outside.mkdir(exist_ok=True)
    (server.root / "sub").mkdir(exist_ok=True)
    if not (server.root / "link").is_symlink():
        (server.root / "link").symlink_to(outside)
        (server.root / "link-in").symlink_to(server.root / "sub")
        (server.root / "target-link.bin").symlink_to(outside / "t.bin")
    answer = client.create_session(path)
    assert answer.status == 400, (path, answer)
    assert answer.header("BITS-Error-Code") == "0x80070057"
    assert answer.header("BITS-Error-Context") == "0x5"
    assert list(outside.iterdir()) == []
    assert not (server.workdir / "escape.bin").exists()


def test_server_killed_mid_upload_resumes_in_the_same_session(server: UploadServer, tmp_path: Path) -> None:
    source = _source(tmp_path, 3 << 20)
    data = source.read_bytes()
    client = BitsUploadClient(server.port)
    session = client.create_session("/r.bin").header("BITS-Session-Id") or ""
    assert client.fragment("/r.bin", session, 0, len(data), data[: 1 << 20]).offset == 1 << 20
    server.kill()
    client.close()
    server.start()
    # The client does not know how far the server got: it asks with a fragment from 0.
    probe = client.fragment("/r.bin", session, 0, len(data), data[: 1 << 20])
    assert (probe.status, probe.offset) == (416, 1 << 20)
    last = client.send_file("/r.bin", session, source, start=1 << 20, fragment_bytes=1 << 20)
    assert (last.status, last.offset) == (200, len(data))
    assert client.close_session("/r.bin", session).status == 200
    assert (server.root / "r.bin").read_bytes() == data
    client.close()


def _killed_mid_fragment(server: UploadServer, data: bytes, name: str) -> tuple[str, Path]:
    """A session with its first MiB acknowledged, then a fragment of the rest cut after its
    second MiB by a SIGKILL of the server (its bytes in the partial file); (session, partial)."""
    client = BitsUploadClient(server.port)
    session = client.create_session(name).header("BITS-Session-Id") or ""
    assert client.fragment(name, session, 0, len(data), data[: 1 << 20]).offset == 1 << 20
    client.close()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            f"BITS_POST {name} HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n".encode()
            + f"BITS-Session-Id: {session}\r\n".encode()
            + f"Content-Range: bytes {1 << 20}-{len(data) - 1}/{len(data)}\r\n".encode()
            + f"Content-Length: {len(data) - (1 << 20)}\r\n\r\n".encode()
            + data[1 << 20 : 2 << 20]
        )
        (partial,) = _wait_for_partial(server.root)
        _wait(lambda: partial.stat().st_size == 2 << 20)  # unacknowledged bytes written
        server.kill()
    return session, partial


def _finish_upload(
    server: UploadServer, tmp_path: Path, name: str, session: str, data: bytes, start: int
) -> None:
    source = tmp_path / "finish.src"
    source.write_bytes(data)
    client = BitsUploadClient(server.port)
    assert client.send_file(name, session, source, start=start).offset == len(data)
    assert client.close_session(name, session).status == 200
    assert (server.root / name.lstrip("/")).read_bytes() == data
    client.close()


def test_server_killed_mid_fragment_goes_on_from_what_it_received(
    server: UploadServer, tmp_path: Path
) -> None:
    """Killed, not a power cut (the same boot): the page cache still holds every byte the
    process wrote, in order, from the client's bodies; the session goes on from there and
    nothing received is asked for again."""
    data = os.urandom(4 << 20)
    session, partial = _killed_mid_fragment(server, data, "/k.bin")
    server.start()
    client = BitsUploadClient(server.port)
    probe = client.fragment("/k.bin", session, 0, len(data), data[:10])
    assert (probe.status, probe.offset) == (416, 2 << 20)
    assert partial.stat().st_size == 2 << 20
    client.close()
    _finish_upload(server, tmp_path, "/k.bin", session, data, start=2 << 20)


def test_after_another_boot_only_durable_bytes_count(server: UploadServer, tmp_path: Path) -> None:
    """A record saved in another boot (a power cut in between): the partial file is cut back
    to the bytes the record says were made durable, whatever its length; the client resends
    from there."""
    data = os.urandom(4 << 20)
    session, partial = _killed_mid_fragment(server, data, "/p.bin")
    (record_path,) = (server.state_dir / "sessions").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["boot_id"]  # the running kernel's
    durable = record["durable_offset"]  # 0, unless the first Ack came a second after the create
    assert durable in (0, 1 << 20)
    record["boot_id"] = "another-boot"
    record_path.write_text(json.dumps(record))
    server.start()
    client = BitsUploadClient(server.port)
    probe = client.fragment("/p.bin", session, 2 << 20, len(data), data[2 << 20 : (2 << 20) + 10])
    assert (probe.status, probe.offset) == (416, durable)
    assert partial.stat().st_size == durable  # cut back to the durable bytes
    client.close()
    _finish_upload(server, tmp_path, "/p.bin", session, data, start=durable)


def test_a_fragment_a_second_after_the_last_durable_one_is_made_durable(
    server: UploadServer, client: BitsUploadClient
) -> None:
    """Fragments are acknowledged from the page cache, but one that ends a second or more after
    the partial file was last made durable makes it durable (fdatasync, the record saved)."""
    total = 1 << 20
    session = client.create_session("/d.bin").header("BITS-Session-Id") or ""
    (record_path,) = (server.state_dir / "sessions").glob("*.json")
    offset = 0
    deadline = time.monotonic() + 10
    while json.loads(record_path.read_text())["durable_offset"] == 0:
        assert time.monotonic() < deadline, "no fragment was made durable"
        answer = client.fragment("/d.bin", session, offset, total, b"x" * 1024)
        assert answer.status == 200
        offset += 1024
        time.sleep(0.05)  # (fragments spread over time: the rule is about time)
    record = json.loads(record_path.read_text())
    assert record["durable_offset"] == record["offset"] == offset
    assert offset < total


def _wait_for_partial(root: Path) -> list[Path]:
    _wait(lambda: len(_partials(root)) == 1)
    return _partials(root)


def test_a_body_cut_short_is_not_kept(server: UploadServer, client: BitsUploadClient) -> None:
    data = os.urandom(2000)
    session = client.create_session("/cut.bin").header("BITS-Session-Id") or ""
    assert client.fragment("/cut.bin", session, 0, 2000, data[:500]).offset == 500
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            b"BITS_POST /cut.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n"
            + f"BITS-Session-Id: {session}\r\nContent-Range: bytes 500-1499/2000\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n"
            + data[500:900]
        )

    def settled() -> bool:
        answer = client.fragment("/cut.bin", session, 0, 2000, data[:1])
        return answer.status == 416 and answer.offset == 500

    _wait(settled)  # the cut fragment's handler has finished: the offset is still 500
    assert client.fragment("/cut.bin", session, 500, 2000, data[500:]).offset == 2000
    assert client.close_session("/cut.bin", session).status == 200
    assert (server.root / "cut.bin").read_bytes() == data


def test_cancel_removes_the_partial_file(server: UploadServer, client: BitsUploadClient) -> None:
    session = client.create_session("/c.bin").header("BITS-Session-Id") or ""
    client.fragment("/c.bin", session, 0, 10, b"01234")
    assert len(_partials(server.root)) == 1
    cancelled = client.cancel_session("/c.bin", session)
    assert (cancelled.status, cancelled.header("BITS-Packet-Type")) == (200, "Ack")
    assert _partials(server.root) == []
    assert not (server.root / "c.bin").exists()
    assert client.fragment("/c.bin", session, 5, 10, b"56789").status == 500


def test_abandoned_sessions_are_removed(tmp_path: Path) -> None:
    config = "session_timeout_s = 0.5\ncleanup_interval_s = 0.1\n"
    with UploadServer(tmp_path / "srv", config=config) as server:
        client = BitsUploadClient(server.port)
        session = client.create_session("/a.bin").header("BITS-Session-Id") or ""
        client.fragment("/a.bin", session, 0, 10, b"01234")
        assert len(_partials(server.root)) == 1
        _wait(lambda: not _partials(server.root) and not list((server.state_dir / "sessions").iterdir()))
        gone = client.fragment("/a.bin", session, 5, 10, b"56789")
        assert (gone.status, gone.header("BITS-Error-Code")) == (500, "0x8020001F")
        assert "abandoned" in server.logs()
        client.close()


def test_overwrite_refused_unless_allowed(tmp_path: Path) -> None:
    with UploadServer(tmp_path / "srv") as server:
        (server.root / "exists.bin").write_bytes(b"old")
        client = BitsUploadClient(server.port)
        refused = client.create_session("/exists.bin")
        assert (refused.status, refused.header("BITS-Error-Code")) == (409, "0x80070005")
        client.close()
    with UploadServer(tmp_path / "srv2", config="allow_overwrite = true\n") as server:
        (server.root / "exists.bin").write_bytes(b"old")
        source = _source(tmp_path, 10)
        client = BitsUploadClient(server.port)
        assert client.upload("/exists.bin", source)[1].status == 200
        assert (server.root / "exists.bin").read_bytes() == source.read_bytes()
        client.close()


def test_settings_per_directory_mode_and_session_cap(tmp_path: Path) -> None:
    config = (
        'max_sessions_per_client = 2\nfile_mode = "0640"\nowner = "nobody"\n'
        '[directories."closed"]\nallow_uploads = false\n'
    )
    with UploadServer(tmp_path / "srv", config=config) as server:
        (server.root / "closed").mkdir()
        client = BitsUploadClient(server.port)
        refused = client.create_session("/closed/x.bin")
        assert (refused.status, refused.header("BITS-Error-Code")) == (501, "0x80070005")
        missing = client.create_session("/nodir/x.bin")
        assert missing.status == 404
        source = _source(tmp_path, 5)
        client.upload("/m.bin", source)
        published = (server.root / "m.bin").stat()
        assert published.st_mode & 0o777 == 0o640
        if os.geteuid() == 0:
            assert published.st_uid == pwd.getpwnam("nobody").pw_uid
        assert client.create_session("/one.bin").status == 200
        assert client.create_session("/two.bin").status == 200
        third = client.create_session("/three.bin")
        assert (third.status, third.header("BITS-Error-Code")) == (503, "0x801901F7")
        client.close()


@pytest.mark.parametrize("where", ["inside-root", "bad-listen", "bad-config"])
def test_the_command_refuses_bad_settings(tmp_path: Path, where: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "bad.toml").write_text("notification_type = 'by-value'\n")
    argv = [sys.executable, "-m", "openbits", "upload-server", "--root", str(root)]
    argv += {
        "inside-root": ["--state-dir", str(root / ".state"), "--listen", "127.0.0.1:1"],
        "bad-listen": ["--state-dir", str(tmp_path / "state"), "--listen", "nowhere"],
        "bad-config": ["--state-dir", str(tmp_path / "state"), "--config", str(tmp_path / "bad.toml")],
    }[where]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert "openbits:" in done.stderr


def test_a_port_in_use_is_a_clear_error_and_serving_is_said_once_listening(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    argv = [sys.executable, "-m", "openbits", "upload-server", "--root", str(root)]
    argv += ["--state-dir", str(tmp_path / "state")]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*argv, "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stderr, done.stderr


def test_a_second_server_on_the_same_state_directory_is_refused(server: UploadServer, tmp_path: Path) -> None:
    """Its sessions are the first one's: it must not take them (a restart while the old
    server still finishes fragments)."""
    other_root = tmp_path / "other-root"
    other_root.mkdir()
    argv = [sys.executable, "-m", "openbits", "upload-server", "--root", str(other_root)]
    argv += ["--state-dir", str(server.state_dir), "--listen", f"127.0.0.1:{server.port}"]  # (the lock first)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "another upload server is using the state directory" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
