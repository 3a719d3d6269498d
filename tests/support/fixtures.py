"""pytest fixtures and helpers for integration tests.

Load from a conftest with ``pytest_plugins = ["tests.support.fixtures"]`` (needs the
repository root on sys.path), or import the fixtures into a test module.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faults import FaultServer
from .nginx import Nginx, find_nginx

BLOCK = 1024 * 1024


def make_file(www: Path, name: str, size: int, seed: int = 0) -> str:
    """Write ``size`` deterministic pseudo-random bytes to ``www / name``.

    Same (size, seed) gives the same content. Writes in 1 MiB blocks, so 256 MiB is
    fine. Creates parent directories. Returns the SHA-256 hex digest of the content.
    """
    path = Path(www) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            block = rng.randbytes(min(BLOCK, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """One nginx for the session; put files in ``nginx.www`` with :func:`make_file`.

    The access log is shared by the whole session: filter ``nginx.requests()`` by uri
    (use unique file names per test) or call ``nginx.clear_requests()``.
    """
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx binary not found on PATH or in /usr/sbin")
    base = tmp_path_factory.mktemp("nginx")
    with Nginx(base / "work", base / "www", binary=binary) as server:
        yield server


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fresh :class:`FaultServer` per test; set ``fault_server.routes[path]``."""
    with FaultServer() as server:
        yield server


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` (created) with mount ``options`` (``size=8m``), unmounted
    after; the test is skipped, with the reason, where it cannot be mounted (not root)."""
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
