"""A real HTTP proxy (tinyproxy from Debian) on 127.0.0.1, for integration tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nginx import free_port, wait_until


class Tinyproxy:
    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        """``extra_config``: more tinyproxy.conf lines (``BasicAuth user password``, say)."""
        self.workdir = workdir
        self.extra_config = extra_config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "tinyproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
            f'LogFile "{self.log_path}"\nLogLevel Connect\nMaxClients 20\n{self.extra_config}'
        )
        self.log_path.touch()
        self.proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def accepts() -> bool:
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(accepts, 10, what="tinyproxy to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy is not installed (make test installs it)")
    proxy = Tinyproxy(tmp_path / "tinyproxy")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
