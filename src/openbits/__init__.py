"""openbits: a Background Intelligent Transfer Service for Linux.

The Python API: :class:`Client` (sync) and :class:`AsyncClient` (asyncio), answering typed
:class:`BitsJob` s; failures raise :class:`BitsError` subclasses (``hresult``, ``name``).
``import openbits`` loads nothing: every name below loads on first use (``openbits.Client``
the stdlib-only sync client, ``openbits.jobs``' typed objects, AsyncClient from
``openbits.aio``, aiohttp when an AsyncClient first connects), so the CLI's start-up pays only
for what its command uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from openbits.aio import AsyncClient
    from openbits.client import Client, DaemonUnavailable
    from openbits.errors import BitsError, HResult
    from openbits.jobs import BitsFile, BitsJob, JobErrorInfo, JobEvent
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

#: every public name but __version__, by the module it lives in: loaded on first use, so that
#: ``import openbits.<anything>`` (the CLI's modules, the daemon's) pays for none of them
_LAZY = {
    "AsyncClient": "aio",
    "Client": "client",
    "DaemonUnavailable": "client",
    "BitsError": "errors",
    "HResult": "errors",
    "BitsFile": "jobs",
    "BitsJob": "jobs",
    "JobErrorInfo": "jobs",
    "JobEvent": "jobs",
    **dict.fromkeys(
        (
            "AuthScheme",
            "AuthTarget",
            "CertStoreLocation",
            "ErrorContext",
            "JobPriority",
            "JobState",
            "JobType",
            "NotifyFlags",
            "ProxyUsage",
            "SecurityFlags",
        ),
        "model",
    ),
}


def __getattr__(name: str) -> Any:
    """The public names, loaded on first use."""
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
