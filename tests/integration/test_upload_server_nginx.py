"""The upload server behind a real nginx, configured as README says: BITS_POST passes through,
fragments stream (proxy_request_buffering off), the client's address comes from X-Real-IP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bitsupload import BitsUploadClient, UploadServer
from tests.support.nginx import find_nginx
from tests.support.nginxproxy import NginxProxy

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")


def test_upload_through_nginx(tmp_path: Path) -> None:
    config = "trust_forwarded = true\n"
    with (
        UploadServer(tmp_path / "srv", config=config) as server,
        NginxProxy(tmp_path / "nginx", server.port) as proxy,
    ):
        source = tmp_path / "source.bin"
        source.write_bytes(os.urandom(5 << 20))
        client = BitsUploadClient(proxy.port)
        assert client.ping("/x.bin").status == 200
        _session, closed = client.upload("/through-nginx.bin", source, fragment_bytes=2 << 20)
        assert closed.status == 200
        assert (server.root / "through-nginx.bin").read_bytes() == source.read_bytes()
        gap = client.fragment(
            "/g.bin", client.create_session("/g.bin").header("BITS-Session-Id") or "", 5, 10, b"x"
        )
        assert (gap.status, gap.offset) == (416, 0)  # error Acks pass through nginx unchanged
        client.close()
