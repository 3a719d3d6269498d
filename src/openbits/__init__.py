"""openbits: a Background Intelligent Transfer Service for Linux."""

from __future__ import annotations

__version__ = "0.1.0"

from openbits.client import Client
from openbits.errors import BitsError, HResult
from openbits.model import (
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
)

__all__ = [
    "BitsError",
    "Client",
    "ErrorContext",
    "HResult",
    "JobPriority",
    "JobState",
    "JobType",
    "__version__",
]
