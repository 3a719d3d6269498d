"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from openbits.transfer.owner import Owners


@pytest.fixture
def owners() -> Iterator[Owners]:
    """The owners' file-system actions (helpers for another user, when root), closed after."""
    pool = Owners()
    try:
        yield pool
    finally:
        pool.close()
