"""openbits: a Background Intelligent Transfer Service for Linux.

The Python API: :class:`Client` (sync) and :class:`AsyncClient` (asyncio), answering typed
:class:`BitsJob` s; failures raise :class:`BitsError` subclasses (``hresult``, ``name``).
``import openbits`` is stdlib only and light (the CLI starts in ~30 ms): the typed objects
of ``openbits.jobs`` and AsyncClient (``openbits.aio``) load on first use, aiohttp when an
AsyncClient first connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from openbits.client import Client, DaemonUnavailable
from openbits.errors import BitsError, HResult
from openbits.model import (
    AuthScheme,
    AuthTarget,
    CertStoreLocation,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
    SecurityFlags,
)

if TYPE_CHECKING:
    from openbits.aio import AsyncClient
    from openbits.jobs import BitsFile, BitsJob, JobErrorInfo, JobEvent

_LAZY = {
    "BitsFile": "jobs",
    "BitsJob": "jobs",
    "JobErrorInfo": "jobs",
    "JobEvent": "jobs",
    "AsyncClient": "aio",
}


def __getattr__(name: str) -> Any:
    """The typed objects and AsyncClient, loaded on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"openbits.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'openbits' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "AuthScheme",
    "AuthTarget",
    "BitsError",
    "BitsFile",
    "BitsJob",
    "CertStoreLocation",
    "Client",
    "DaemonUnavailable",
    "ErrorContext",
    "HResult",
    "JobErrorInfo",
    "JobEvent",
    "JobPriority",
    "JobState",
    "JobType",
    "NotifyFlags",
    "ProxyUsage",
    "SecurityFlags",
    "__version__",
]
