"""Persistence of jobs.  ``JobStore`` is the protocol; ``sqlite.SqliteStore`` the default."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from openbits.errors import StoreFull, StoreWriteFailed
from openbits.model import Job, JobFile

__all__ = ["RECOVERY_HINT", "JobStore", "StoreDamaged", "StoreError", "StoreFull", "StoreWriteFailed"]


class StoreError(Exception):
    """The store cannot be opened or used (corrupt, newer schema, unwritable)."""


#: what to do about a damaged store (README "Recovering the store")
RECOVERY_HINT = (
    "nothing was changed; `openbits store check` shows what is wrong, and "
    "`openbits store restore BACKUP` puts a backup in its place, keeping this file aside "
    '(README: "Recovering the store")'
)


class StoreDamaged(StoreError):
    """The store's file fails SQLite's integrity check: the daemon will not run on it."""


class JobStore(Protocol):
    """Every method commits before it returns: what it accepted survives SIGKILL; what was
    committed before ``await durable()`` returned survives power loss too."""

    @property
    def commits(self) -> int: ...

    async def durable(self) -> None: ...

    def load_jobs(self) -> list[Job]: ...

    def add_job(self, job: Job) -> None: ...

    def add_files(self, job: Job, files: Iterable[JobFile]) -> None: ...

    def save_job(self, job: Job, files: Iterable[JobFile] = ()) -> None: ...

    def save_files(self, job: Job, files: Iterable[JobFile]) -> None: ...

    def delete_jobs(self, job_ids: Iterable[str]) -> None: ...

    def delete_finished(self, finished_before_ns: int) -> int: ...

    def load_job(self, job_id: str) -> Job | None: ...

    def finished_named(self, display_name: str, owner_uid: int) -> list[Job]: ...

    def count_finished(self, owner_uid: int | None = None) -> dict[tuple[int, int], int]: ...

    def oldest_finished_ns(self) -> int | None: ...

    def load_settings(self) -> dict[str, str]: ...

    def save_settings(self, settings: dict[str, str]) -> None: ...

    def close(self) -> None: ...
