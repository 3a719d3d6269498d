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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openbits.service.changes import Counters as Counters
    from openbits.service.changes import Runner as Runner
    from openbits.service.params import Params as Params
    from openbits.service.params import enum_value as enum_value
    from openbits.service.params import validate_local_file as validate_local_file
    from openbits.service.params import validate_remote_url as validate_remote_url
    from openbits.service.wmi import Service as Service

#: name -> the module that defines it: loaded on first use, so that ``service.methods``
#: (plain data) is read without loading the service, the store or the transfers
_EXPORTS = {
    "Counters": "changes",
    "Runner": "changes",
    "Params": "params",
    "enum_value": "params",
    "validate_local_file": "params",
    "validate_remote_url": "params",
    "Service": "wmi",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Counters",
    "Params",
    "Runner",
    "Service",
    "enum_value",
    "validate_local_file",
    "validate_remote_url",
]
