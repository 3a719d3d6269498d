"""WQL's syntax tree, its limits and its error: what the parser builds and evaluation reads.

A ``Like`` node carries its pattern compiled (``compile_like``: ``%``, ``_``, ``[…]`` classes) so
that evaluation matches without parsing the pattern again.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from openbits.model import JobPriority, JobState, JobType

MAX_QUERY_LENGTH = 8192
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 20

_NUMBERS = """BytesTotal BytesTransferred FilesTotal FilesTransferred TransientErrorCount MinimumRetryDelay
NoProgressTimeout MaximumDownloadTime MaxConnections NotifyFlags SecurityFlags JobCreationTime
JobLastModificationTime JobCompletionTime"""

#: What the properties of BitsClientJob hold, for the parser's check of literals: an IntEnum
#: (whose names stand for its numbers), int or str. Properties not named are not checked.
JOB_PROPERTY_TYPES: Mapping[str, type] = MappingProxyType(
    {
        "State": JobState,
        "Priority": JobPriority,
        "JobType": JobType,
        **dict.fromkeys(("JobId", "DisplayName", "Description"), str),
        **dict.fromkeys(_NUMBERS.split(), int),
    }
)


class WqlError(ValueError):
    """A malformed query; ``position`` is the 0-based offset in the text."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"at {position}: {message}")
        self.position = position
        self.message = message


def parse_int(s: str) -> int | None:
    """The int ``s`` spells (optional ``-``, ASCII digits, not too long), else None."""
    body = s[1:] if s.startswith("-") else s
    if not body or len(body) > MAX_NUMBER_DIGITS or any(c not in string.digits for c in body):
        return None
    return int(s)


# --- AST -------------------------------------------------------------------------------------

Scalar: TypeAlias = int | str | bool | None


@dataclass(frozen=True, slots=True)
class Property:
    name: str  # canonical spelling, as in the ``properties`` given to the parser


@dataclass(frozen=True, slots=True)
class Constant:
    value: Scalar


Operand: TypeAlias = Property | Constant

# A LIKE item: None is '%'; otherwise (negated, ranges) matching one character.
LikeItem: TypeAlias = tuple[bool, tuple[tuple[str, str], ...]] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    left: Operand
    op: str  # one of = <> < <= > >= ('!=' is normalised to '<>')
    right: Operand


@dataclass(frozen=True, slots=True)
class Like:
    operand: Operand
    pattern: str
    negated: bool = False
    items: tuple[LikeItem, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern and not self.items:
            object.__setattr__(self, "items", compile_like(self.pattern, 0))


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Operand
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Not:
    operand: Condition


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Condition, ...]


Condition: TypeAlias = Comparison | Like | IsNull | Not | And | Or


@dataclass(frozen=True)
class Query:
    properties: tuple[str, ...] | None  # canonical names, None for *
    class_name: str  # canonical class name
    where: Condition | None


# --- LIKE patterns ---------------------------------------------------------------------------


def compile_like(pattern: str, pos: int) -> tuple[LikeItem, ...]:
    items: list[LikeItem] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "%":
            if not items or items[-1] is not None:
                items.append(None)
            i += 1
        elif c == "_":
            items.append((True, ()))  # not in the empty set: any one character
            i += 1
        elif c == "[":
            j = i + 1
            negated = j < n and pattern[j] == "^"
            if negated:
                j += 1
            members: list[tuple[str, str]] = []
            first = True
            while True:
                if j >= n:
                    raise WqlError(pos, f"unterminated '[' at pattern offset {i}: expected ']'")
                ch = pattern[j]
                if ch == "]" and not first:
                    j += 1
                    break
                if j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = ch, pattern[j + 2]
                    if lo > hi:
                        raise WqlError(pos, f"invalid range {lo}-{hi} in LIKE pattern")
                    members.append((lo, hi))
                    j += 3
                else:
                    members.append((ch, ch))
                    j += 1
                first = False
            items.append((negated, tuple(members)))
            i = j
        else:
            items.append((False, ((c, c),)))
            i += 1
    return tuple(items)
