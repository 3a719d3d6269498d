"""A WQL subset for selecting BitsClientJob instances (SPEC: ``?Query=`` / ``?Where=``).

Grammar (keywords and property/class names are case-insensitive)::

    query      := SELECT ( '*' | property ( ',' property )* ) FROM class [ WHERE condition ] EOF
    condition  := and ( OR and )*
    and        := not ( AND not )*
    not        := NOT not | primary
    primary    := '(' condition ')'
                | operand ( compop operand | [NOT] LIKE string | IS [NOT] NULL )
    operand    := property | integer | string | TRUE | FALSE | NULL
    compop     := '=' | '<>' | '!=' | '<' | '<=' | '>' | '>='

Precedence is NOT > AND > OR. Literals:

* integers: optional ``-`` then ASCII decimal digits (at most 20 digits, enough for uint64);
* strings: in single or double quotes; a backslash makes the next character literal
  (``'it\\'s'``, ``"a\\\\b"``); there are no other escapes (``\\n`` is ``n``);
* ``TRUE`` / ``FALSE`` / ``NULL``.

LIKE patterns (WMI syntax): ``%`` any run of characters, ``_`` exactly one character,
``[abc]`` / ``[a-z]`` one character of the class, ``[^a]`` one character not in it. A ``]``
right after ``[`` or ``[^`` is a member, so ``[]]`` matches ``]``; to match a literal ``%``,
``_`` or ``[`` write ``[%]``, ``[_]``, ``[[]``. Matching is case-insensitive.

Evaluation uses SQL three-valued logic: a comparison or LIKE involving NULL (``None``) is
unknown, ``NOT unknown`` is unknown, AND/OR are Kleene; :func:`matches` is true only for a
definite true. ``IS [NOT] NULL`` tests for ``None``. Values compare as follows: booleans are
0/1 (and equal the strings ``'TRUE'`` / ``'FALSE'``); integers compare numerically, also with a
string that spells an integer; everything else compares as case-folded strings (WMI is
case-insensitive). Non-scalar values (lists such as ``Files``) compare as unknown.

Literals are checked against what a property holds (:data:`JOB_PROPERTY_TYPES`) when the
query is parsed: an enumerated property takes its names as well as its numbers
(``State = 'SUSPENDED'``, ``Priority <> 'low'``, any case, as the long poll's ``WaitWhile``
takes them); a string that is neither, a string that is no number where a number belongs,
or a number where a string belongs, is a :class:`WqlError`, not a query that is silently
never true.

Hostile input is bounded: at most :data:`MAX_QUERY_LENGTH` characters and
:data:`MAX_DEPTH` nested parentheses / NOTs. Every failure is a :class:`WqlError` carrying the
0-based offset in the text.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import TypeAlias

from openbits.model import JobPriority, JobState, JobType

__all__ = [
    "JOB_PROPERTY_TYPES",
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "And",
    "Comparison",
    "Condition",
    "Constant",
    "IsNull",
    "Like",
    "Not",
    "Operand",
    "Or",
    "Property",
    "Query",
    "WqlError",
    "evaluate",
    "matches",
    "parse_condition",
    "parse_query",
    "project",
]

MAX_QUERY_LENGTH = 8192
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 20

_NUMBERS = """BytesTotal BytesTransferred FilesTotal FilesTransferred TransientErrorCount MinimumRetryDelay
NoProgressTimeout MaximumDownloadTime NotifyFlags SecurityFlags JobCreationTime JobLastModificationTime
JobCompletionTime"""

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
_LikeItem: TypeAlias = tuple[bool, tuple[tuple[str, str], ...]] | None


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
    items: tuple[_LikeItem, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern and not self.items:
            object.__setattr__(self, "items", _compile_like(self.pattern, 0))


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


# --- tokenizer -------------------------------------------------------------------------------

_WS = frozenset(" \t\r\n\f\v")
_IDENT_START = frozenset(string.ascii_letters + "_")
_DIGITS = frozenset(string.digits)
_IDENT_CHARS = _IDENT_START | _DIGITS
_KEYWORDS = frozenset({"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "LIKE", "IS", "NULL", "TRUE", "FALSE"})
_TWO_CHAR_OPS = frozenset({"<>", "!=", "<=", ">="})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ident, keyword, number, string, op, '(', ')', ',', '*', eof
    value: str | int  # identifier text, keyword (upper case), int, decoded string, operator
    pos: int


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "end of input"
    if tok.kind == "string":
        return "a string literal"
    if tok.kind == "number":
        return f"number {tok.value}"
    return repr(tok.value)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
            continue
        start = i
        if c in _IDENT_START:
            while i < n and text[i] in _IDENT_CHARS:
                i += 1
            word = text[start:i]
            if word.upper() in _KEYWORDS:
                tokens.append(_Token("keyword", word.upper(), start))
            else:
                tokens.append(_Token("ident", word, start))
        elif c in _DIGITS or (c == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            i += 1
            while i < n and text[i] in _DIGITS:
                i += 1
            if i < n and text[i] in _IDENT_CHARS:
                raise WqlError(i, "malformed number: expected a digit, operator or space")
            literal = text[start:i]
            if len(literal.lstrip("-")) > MAX_NUMBER_DIGITS:
                raise WqlError(start, f"number too long (more than {MAX_NUMBER_DIGITS} digits)")
            tokens.append(_Token("number", int(literal), start))
        elif c in "'\"":
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise WqlError(start, f"unterminated string literal: expected closing {c}")
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise WqlError(start, f"unterminated string literal: expected closing {c}")
                    chars.append(text[i + 1])
                    i += 2
                elif ch == c:
                    i += 1
                    break
                else:
                    chars.append(ch)
                    i += 1
            tokens.append(_Token("string", "".join(chars), start))
        elif c in "<>=!":
            two = text[i : i + 2]
            if two in _TWO_CHAR_OPS:
                op = two
            elif c != "!":
                op = c
            else:
                raise WqlError(i, "unexpected character '!': expected '!='")
            i += len(op)
            tokens.append(_Token("op", op, start))
        elif c in "(),*":
            tokens.append(_Token(c, c, start))
            i += 1
        else:
            raise WqlError(i, f"unexpected character {c!r}")
    tokens.append(_Token("eof", "", n))
    return tokens


# --- LIKE patterns ---------------------------------------------------------------------------


def _compile_like(pattern: str, pos: int) -> tuple[_LikeItem, ...]:
    items: list[_LikeItem] = []
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


def _item_matches(item: tuple[bool, tuple[tuple[str, str], ...]], ch: str) -> bool:
    negated, ranges = item
    variants = {ch, ch.lower(), ch.upper()}
    hit = any(lo <= v <= hi for lo, hi in ranges for v in variants)
    return hit != negated


@functools.lru_cache(maxsize=256)
def _literal_segments(items: tuple[_LikeItem, ...]) -> tuple[str, ...] | None:
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


def _like(s: str, items: tuple[_LikeItem, ...]) -> bool:
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


# --- parser ----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, properties: Collection[str], types: Mapping[str, type]) -> None:
        if len(text) > MAX_QUERY_LENGTH:
            raise WqlError(MAX_QUERY_LENGTH, f"query too long (more than {MAX_QUERY_LENGTH} characters)")
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.properties = {p.casefold(): p for p in properties}
        self.types = types

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def error(self, tok: _Token, expected: str) -> WqlError:
        return WqlError(tok.pos, f"expected {expected}, found {_describe(tok)}")

    def at_keyword(self, keyword: str) -> bool:
        tok = self.peek()
        return tok.kind == "keyword" and tok.value == keyword

    def accept_keyword(self, keyword: str) -> bool:
        if self.at_keyword(keyword):
            self.advance()
            return True
        return False

    def expect_keyword(self, keyword: str, expected: str | None = None) -> None:
        if not self.accept_keyword(keyword):
            raise self.error(self.peek(), expected or keyword)

    def expect_end(self, expected: str = "end of input") -> None:
        tok = self.peek()
        if tok.kind != "eof":
            raise self.error(tok, expected)

    def enter(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise WqlError(tok.pos, f"nesting too deep (more than {MAX_DEPTH} levels)")

    def property_name(self, tok: _Token) -> str:
        assert isinstance(tok.value, str)
        canonical = self.properties.get(tok.value.casefold())
        if canonical is None:
            raise WqlError(tok.pos, f"unknown property {tok.value!r}")
        return canonical

    # query := SELECT ( '*' | property (',' property)* ) FROM class [WHERE condition]
    def query(self, classes: Collection[str]) -> Query:
        self.expect_keyword("SELECT")
        selected: tuple[str, ...] | None
        if self.peek().kind == "*":
            self.advance()
            selected = None
        else:
            names: list[str] = []
            while True:
                tok = self.peek()
                if tok.kind != "ident":
                    raise self.error(tok, "'*' or a property name" if not names else "a property name")
                self.advance()
                name = self.property_name(tok)
                if name not in names:
                    names.append(name)
                if self.peek().kind != ",":
                    break
                self.advance()
            selected = tuple(names)
        self.expect_keyword("FROM", "',' or FROM" if selected else "FROM")
        tok = self.peek()
        if tok.kind != "ident":
            raise self.error(tok, "a class name")
        self.advance()
        assert isinstance(tok.value, str)
        canonical_classes = {c.casefold(): c for c in classes}
        class_name = canonical_classes.get(tok.value.casefold())
        if class_name is None:
            known = ", ".join(sorted(classes))
            raise WqlError(tok.pos, f"unknown class {tok.value!r}: expected {known}")
        where: Condition | None = None
        if self.accept_keyword("WHERE"):
            where = self.condition()
            self.expect_end("AND, OR or end of input")
        else:
            self.expect_end("WHERE or end of input")
        return Query(selected, class_name, where)

    def condition(self) -> Condition:
        items = [self.conjunction()]
        while self.accept_keyword("OR"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self) -> Condition:
        items = [self.negation()]
        while self.accept_keyword("AND"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self) -> Condition:
        if self.at_keyword("NOT"):
            tok = self.advance()
            self.enter(tok)
            inner = self.negation()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Condition:
        tok = self.peek()
        if tok.kind == "(":
            self.advance()
            self.enter(tok)
            inner = self.condition()
            if self.peek().kind != ")":
                raise self.error(self.peek(), "AND, OR or ')'")
            self.advance()
            self.depth -= 1
            return inner
        left_tok = tok
        left = self.operand("a condition")
        tok = self.peek()
        if tok.kind == "op":
            self.advance()
            right_tok = self.peek()
            right = self.typed(left, self.operand("a property or literal"), right_tok)
            left = self.typed(right, left, left_tok)
            assert isinstance(tok.value, str)
            return Comparison(left, "<>" if tok.value == "!=" else tok.value, right)
        if self.accept_keyword("IS"):
            negated = self.accept_keyword("NOT")
            self.expect_keyword("NULL", "NULL" if negated else "NOT or NULL")
            return IsNull(left, negated)
        negated = self.accept_keyword("NOT")
        if self.accept_keyword("LIKE"):
            pat = self.peek()
            if pat.kind != "string":
                raise self.error(pat, "a string pattern after LIKE")
            self.advance()
            assert isinstance(pat.value, str)
            return Like(left, pat.value, negated, _compile_like(pat.value, pat.pos))
        raise self.error(self.peek(), "LIKE" if negated else "a comparison operator, LIKE or IS")

    def typed(self, prop: Operand, literal: Operand, tok: _Token) -> Operand:
        """``literal`` as compared with ``prop``: an enum's name becomes its number; a string
        where a number belongs, or a number where a string belongs, is an error."""
        if not isinstance(prop, Property) or not isinstance(literal, Constant):
            return literal
        kind, value = self.types.get(prop.name), literal.value
        if kind is None or value is None or isinstance(value, bool):
            return literal
        if issubclass(kind, IntEnum) and isinstance(value, str):
            member = kind.__members__.get(value.strip().upper().replace("-", "_"))
            if member is not None:
                return Constant(int(member))
            if _parse_int(value) is None:
                names = ", ".join(kind.__members__)
                raise WqlError(tok.pos, f"{prop.name} is one of {names} (or its number), not {value!r}")
        elif issubclass(kind, int) and isinstance(value, str) and _parse_int(value) is None:
            raise WqlError(tok.pos, f"{prop.name} is a number, not the string {value!r}")
        elif issubclass(kind, str) and isinstance(value, int):
            raise WqlError(tok.pos, f"{prop.name} is a string: compare it with '{value}', not {value}")
        return literal

    def operand(self, expected: str) -> Operand:
        tok = self.peek()
        if tok.kind == "ident":
            self.advance()
            return Property(self.property_name(tok))
        if tok.kind in ("number", "string"):
            self.advance()
            return Constant(tok.value)
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE", "NULL"):
            self.advance()
            return Constant({"TRUE": True, "FALSE": False}.get(str(tok.value)))
        raise self.error(tok, expected)


def parse_query(
    text: str,
    properties: Collection[str],
    classes: Collection[str] = ("BitsClientJob",),
    types: Mapping[str, type] = JOB_PROPERTY_TYPES,
) -> Query:
    """Parse ``SELECT ... FROM class [WHERE ...]``; names are validated against ``properties``
    and ``classes`` (case-insensitively) and returned in their canonical spelling, literals
    against ``types``."""
    return _Parser(text, properties, types).query(classes)


def parse_condition(
    text: str, properties: Collection[str], types: Mapping[str, type] = JOB_PROPERTY_TYPES
) -> Condition:
    """Parse the condition of a WHERE clause (without the WHERE keyword)."""
    parser = _Parser(text, properties, types)
    cond = parser.condition()
    parser.expect_end("AND, OR or end of input")
    return cond


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


def _parse_int(s: str) -> int | None:
    body = s[1:] if s.startswith("-") else s
    if not body or len(body) > MAX_NUMBER_DIGITS or any(c not in _DIGITS for c in body):
        return None
    return int(s)


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
        parsed = _parse_int(b)
        if parsed is not None:
            b = parsed
        else:
            a = str(a)
    elif isinstance(a, str) and isinstance(b, int):
        parsed = _parse_int(a)
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
        return _like(text, condition.items) != condition.negated
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
