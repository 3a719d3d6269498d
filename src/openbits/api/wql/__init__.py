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

from openbits.api.wql.evaluation import evaluate, matches, project
from openbits.api.wql.nodes import (
    JOB_PROPERTY_TYPES,
    MAX_DEPTH,
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
)
from openbits.api.wql.parse import parse_condition, parse_query

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
