"""The one place that applies BITS semantics.

Every WMI verb is a method of ``Service``: it validates the call (``params``), checks
ownership, applies the state machine (``states``), commits to the store and wakes the
scheduler (``changes``).  The scheduler reports what transfers observe through the
``job_*``/``file_*`` methods (``reports``), which go through the same state machine.
Everything runs on the daemon's event loop; mutations are synchronous between awaits,
so no locks.

- ``params``: Params and the validation of parameters (pure)
- ``methods``: the table of BitsClientJob's instance methods (plain data)
- ``changes``: ``LiveJobs``, the jobs in memory; ``_change`` saves and announces
- ``reports``: what the scheduler tells the service
- ``verbs``: CreateJob, AddFile*, SetJobState, GetError, PATCH, find, the policy
- ``wmi``: ``Service``, with the instance methods by their WMI names
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openbits.service.wmi import Service as Service

__all__ = ["Service"]


def __getattr__(name: str) -> Any:
    """``Service`` is loaded on first use: ``service.methods`` (plain data) is read without
    loading the service, the store or the transfers."""
    if name == "Service":
        from openbits.service.wmi import Service

        return Service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
