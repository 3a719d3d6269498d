"""WQL's tokenizer and recursive-descent parser: text to a ``Query`` or ``Condition`` tree.

Every failure is a ``WqlError`` with the 0-based offset of the bad token.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum

from openbits.api.wql.nodes import (
    JOB_PROPERTY_TYPES,
    MAX_DEPTH,
    MAX_NUMBER_DIGITS,
    MAX_QUERY_LENGTH,
    And,
    Comparison,
    Condition,
    Constant,
    IsNull,
    Like,
    Not,
    Operand,
    Or,
    Property,
    Query,
    WqlError,
    compile_like,
    parse_int,
)

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
            return Like(left, pat.value, negated, compile_like(pat.value, pat.pos))
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
            if parse_int(value) is None:
                names = ", ".join(kind.__members__)
                raise WqlError(tok.pos, f"{prop.name} is one of {names} (or its number), not {value!r}")
        elif issubclass(kind, int) and isinstance(value, str) and parse_int(value) is None:
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
