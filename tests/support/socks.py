"""Real SOCKS5 proxies (microsocks) on 127.0.0.1, with and without username/password.

Fixtures (session scope, ~10 ms to start each):

* ``socks5``: no authentication (method 0x00);
* ``socks5_auth``: RFC 1929 username/password (method 0x02) for :data:`USER` /
  :data:`PASSWORD`, the same credentials as every other test server; a client without them,
  or with a wrong password, is refused at the SOCKS handshake.

``url`` is ``socks5://127.0.0.1:PORT`` (no credentials in it); microsocks resolves names
itself when given one (``socks5h``), and keeps no log.

Example::

    def test_socks(socks5_auth: Microsocks, nginx: Nginx) -> None:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "--socks5", socks5_auth.address,
                              "--proxy-user", f"{socks5_auth.user}:{socks5_auth.password}",
                              nginx.url + "/f.bin"], capture_output=True, text=True)
        assert out.stdout == "200"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.kdc import PASSWORD, USER
from tests.support.process import HOST, ServerError, ServerProcess, find_program, free_ports


class Microsocks:
    """microsocks on a free port; with ``auth`` it demands :data:`USER` / :data:`PASSWORD`."""

    def __init__(self, workdir: Path, auth: bool) -> None:
        self.workdir = Path(workdir)
        self.auth = auth
        self.user: str | None = USER if auth else None
        self.password: str | None = PASSWORD if auth else None
        self.port = 0
        self._server: ServerProcess | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``socks5://127.0.0.1:PORT``, without credentials."""
        return f"socks5://{self.address}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = find_program("microsocks") or "microsocks"
        for _attempt in range(3):  # a port taken between the probe and the bind: retry
            (self.port,) = free_ports(1)
            argv = [binary, "-i", HOST, "-p", str(self.port)]
            if self.auth:
                argv += ["-u", USER, "-P", PASSWORD]
            server = ServerProcess("microsocks", argv, [self.port], self.workdir / "microsocks.out")
            try:
                server.start()
            except ServerError as exc:
                if "in use" not in str(exc):
                    raise
                continue
            self._server = server
            return
        raise ServerError("microsocks found no free port")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _microsocks(tmp_path_factory: pytest.TempPathFactory, auth: bool) -> Iterator[Microsocks]:
    if find_program("microsocks") is None:
        pytest.skip("microsocks is not installed; make test-deps installs it")
    with Microsocks(tmp_path_factory.mktemp("microsocks"), auth) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def socks5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Microsocks]:
    """A SOCKS5 proxy without authentication."""
    yield from _microsocks(tmp_path_factory, auth=False)


@pytest.fixture(scope="session")
def socks5_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Microsocks]:
    """A SOCKS5 proxy demanding username/password (USER / PASSWORD)."""
    yield from _microsocks(tmp_path_factory, auth=True)
