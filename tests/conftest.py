import os

import pytest

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.daemon",
    "tests.support.proxy",
    "tests.support.kdc",
    "tests.support.apache",
    "tests.support.squid",
    "tests.support.socks",
    "tests.support.users",
]


def pytest_configure(config: pytest.Config) -> None:
    """A worker of pytest-xdist (``make test`` runs two) gets COLUMNS=80 and LINES=24 from
    xdist for its own report; the CLI under test would take them over a terminal's real
    size, so they are dropped: every test sees the environment a serial run sees."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.pop("COLUMNS", None)
        os.environ.pop("LINES", None)
