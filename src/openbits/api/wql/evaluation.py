"""WQL evaluation: three-valued truth of a condition for one instance, LIKE matching, projection."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from openbits.api.wql.nodes import (
    And,
    Comparison,
    Condition,
    Constant,
    IsNull,
    Like,
    LikeItem,
    Not,
    Operand,
    Query,
    parse_int,
)

# --- LIKE matching ---------------------------------------------------------------------------


def _item_matches(item: tuple[bool, tuple[tuple[str, str], ...]], ch: str) -> bool:
    negated, ranges = item
    variants = {ch, ch.lower(), ch.upper()}
    hit = any(lo <= v <= hi for lo, hi in ranges for v in variants)
    return hit != negated


@functools.lru_cache(maxsize=256)
def _literal_segments(items: tuple[LikeItem, ...]) -> tuple[str, ...] | None:
    """A pattern of ASCII literals and '%' only, as its lower-cased literal runs (split at each
    '%'); None for any other pattern."""
    segments: list[str] = []
    run: list[str] = []
    for item in items:
        if item is None:
            segments.append("".join(run))
            run = []
            continue
        negated, ranges = item
        if negated or len(ranges) != 1 or ranges[0][0] != ranges[0][1] or not ranges[0][0].isascii():
            return None
        run.append(ranges[0][0].lower())
    segments.append("".join(run))
    return tuple(segments)


def like(s: str, items: tuple[LikeItem, ...]) -> bool:
    """Glob matching with one backtrack point per '%': O(len(s) * len(items)); ASCII values
    against patterns of literals and '%' take a fast path (prefix, suffix, runs found in
    order, which is exact for such patterns)."""
    segments = _literal_segments(items) if s.isascii() else None
    if segments is not None:
        low = s.lower()
        if len(segments) == 1:
            return low == segments[0]
        first, last = segments[0], segments[-1]
        if len(low) < len(first) + len(last) or not low.startswith(first) or not low.endswith(last):
            return False
        at, end = len(first), len(low) - len(last)
        for seg in segments[1:-1]:
            found = low.find(seg, at, end)
            if found < 0:
                return False
            at = found + len(seg)
        return True
    si = pi = 0
    star, mark = -1, 0
    n, m = len(s), len(items)
    while si < n:
        item = items[pi] if pi < m else None
        if pi < m and item is not None and _item_matches(item, s[si]):
            si += 1
            pi += 1
        elif pi < m and item is None:
            star, mark = pi, si
            pi += 1
        elif star >= 0:
            pi = star + 1
            mark += 1
            si = mark
        else:
            return False
    while pi < m and items[pi] is None:
        pi += 1
    return pi == m


# --- evaluation ------------------------------------------------------------------------------


def _lookup(instance: Mapping[str, object], name: str) -> object:
    if name in instance:
        return instance[name]
    folded = name.casefold()
    for key, value in instance.items():
        if key.casefold() == folded:
            return value
    return None


def _value(operand: Operand, instance: Mapping[str, object]) -> object:
    if isinstance(operand, Constant):
        return operand.value
    return _lookup(instance, operand.name)


def _sign(a: object, b: object) -> int | None:
    """-1/0/1 comparing two values, None when unknown (NULL or not comparable)."""
    if a is None or b is None:
        return None
    if isinstance(a, bool) and isinstance(b, str) and b.casefold() in ("true", "false"):
        b = b.casefold() == "true"
    elif isinstance(b, bool) and isinstance(a, str) and a.casefold() in ("true", "false"):
        a = a.casefold() == "true"
    if isinstance(a, bool):
        a = int(a)
    if isinstance(b, bool):
        b = int(b)
    if isinstance(a, int) and isinstance(b, str):
        parsed = parse_int(b)
        if parsed is not None:
            b = parsed
        else:
            a = str(a)
    elif isinstance(a, str) and isinstance(b, int):
        parsed = parse_int(a)
        if parsed is not None:
            a = parsed
        else:
            b = str(b)
    if isinstance(a, int) and isinstance(b, int):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        fa, fb = a.casefold(), b.casefold()
        return (fa > fb) - (fa < fb)
    return None


_OPS = {
    "=": lambda s: s == 0,
    "<>": lambda s: s != 0,
    "<": lambda s: s < 0,
    "<=": lambda s: s <= 0,
    ">": lambda s: s > 0,
    ">=": lambda s: s >= 0,
}


def _as_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    return None


def evaluate(condition: Condition, instance: Mapping[str, object]) -> bool | None:
    """Three-valued evaluation: True, False or None (unknown)."""
    if isinstance(condition, Comparison):
        sign = _sign(_value(condition.left, instance), _value(condition.right, instance))
        return None if sign is None else bool(_OPS[condition.op](sign))
    if isinstance(condition, Like):
        text = _as_text(_value(condition.operand, instance))
        if text is None:
            return None
        return like(text, condition.items) != condition.negated
    if isinstance(condition, IsNull):
        return (_value(condition.operand, instance) is None) != condition.negated
    if isinstance(condition, Not):
        inner = evaluate(condition.operand, instance)
        return None if inner is None else not inner
    if isinstance(condition, And):
        result: bool | None = True
        for c in condition.operands:
            v = evaluate(c, instance)
            if v is False:
                return False
            if v is None:
                result = None
        return result
    result = False
    for c in condition.operands:
        v = evaluate(c, instance)
        if v is True:
            return True
        if v is None:
            result = None
    return result


def matches(condition: Condition, instance: Mapping[str, object]) -> bool:
    """True when ``condition`` is definitely true for ``instance`` (unknown counts as false)."""
    return evaluate(condition, instance) is True


def project(query: Query, instance: Mapping[str, object]) -> dict[str, object]:
    """The selected properties of ``instance`` (all of them for ``*``); missing ones are None."""
    if query.properties is None:
        return dict(instance)
    return {name: _lookup(instance, name) for name in query.properties}
