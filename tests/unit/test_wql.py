from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from openbits.api.wql import (
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    And,
    Comparison,
    Constant,
    IsNull,
    Like,
    Not,
    Or,
    Property,
    Query,
    WqlError,
    evaluate,
    matches,
    parse_condition,
    parse_query,
    project,
)
from openbits.api.wql.evaluation import like
from openbits.api.wql.nodes import compile_like
from openbits.model import ALL_PROPERTIES, Job

PROPS = ALL_PROPERTIES

JOB: dict[str, object] = {
    "JobId": "{6F1C3A2B-0000-4000-8000-000000000001}",
    "DisplayName": "Nightly Update",
    "Description": "",
    "Priority": 2,
    "State": 4,
    "BytesTotal": 1000,
    "BytesTransferred": 250,
    "FilesTotal": 3,
    "Owner": "alice",
    "CustomHeaders": None,
    "Files": [{"RemoteUrl": "http://x/a"}],
}


def where(text: str, instance: dict[str, object] | None = None) -> bool:
    return matches(parse_condition(text, PROPS), JOB if instance is None else instance)


def error_at(text: str, *, query: bool = False) -> WqlError:
    with pytest.raises(WqlError) as info:
        if query:
            parse_query(text, PROPS)
        else:
            parse_condition(text, PROPS)
    return info.value


# --- parsing ---------------------------------------------------------------------------------


def test_select_star() -> None:
    q = parse_query("SELECT * FROM BitsClientJob", PROPS)
    assert q == Query(None, "BitsClientJob", None)


def test_select_list_canonical_and_case_insensitive() -> None:
    q = parse_query("select jobid, DISPLAYNAME ,state from bitsclientjob where state = 4", PROPS)
    assert q.properties == ("JobId", "DisplayName", "State")
    assert q.class_name == "BitsClientJob"
    assert q.where == Comparison(Property("State"), "=", Constant(4))


def test_select_list_deduplicates() -> None:
    assert parse_query("SELECT State, state FROM BitsClientJob", PROPS).properties == ("State",)


@pytest.mark.parametrize("op", ["=", "<>", "<", "<=", ">", ">="])
def test_every_comparison_operator(op: str) -> None:
    assert parse_condition(f"Priority {op} 2", PROPS) == Comparison(Property("Priority"), op, Constant(2))


def test_bang_equals_is_not_equal() -> None:
    assert parse_condition("Priority != 2", PROPS) == Comparison(Property("Priority"), "<>", Constant(2))


def test_literals() -> None:
    assert parse_condition("State = -3", PROPS) == Comparison(Property("State"), "=", Constant(-3))
    assert parse_condition("Owner = 'a\\'b'", PROPS) == Comparison(Property("Owner"), "=", Constant("a'b"))
    assert parse_condition('Owner = "a\\"b\\\\"', PROPS) == Comparison(
        Property("Owner"), "=", Constant('a"b\\')
    )
    assert parse_condition("Owner = TRUE", PROPS) == Comparison(Property("Owner"), "=", Constant(True))
    assert parse_condition("Owner = false", PROPS) == Comparison(Property("Owner"), "=", Constant(False))
    assert parse_condition("Owner = null", PROPS) == Comparison(Property("Owner"), "=", Constant(None))


def test_like_is_null_not_like() -> None:
    assert parse_condition("Owner LIKE 'a%'", PROPS) == Like(Property("Owner"), "a%")
    assert parse_condition("Owner not like 'a%'", PROPS) == Like(Property("Owner"), "a%", True)
    assert parse_condition("CustomHeaders IS NULL", PROPS) == IsNull(Property("CustomHeaders"))
    assert parse_condition("CustomHeaders is not null", PROPS) == IsNull(Property("CustomHeaders"), True)


def test_precedence_not_and_or() -> None:
    a = Comparison(Property("State"), "=", Constant(1))
    b = Comparison(Property("State"), "=", Constant(2))
    c = Comparison(Property("State"), "=", Constant(3))
    assert parse_condition("State=1 OR State=2 AND State=3", PROPS) == Or((a, And((b, c))))
    assert parse_condition("State=1 AND State=2 OR State=3", PROPS) == Or((And((a, b)), c))
    assert parse_condition("NOT State=1 AND State=2", PROPS) == And((Not(a), b))
    assert parse_condition("NOT (State=1 AND State=2)", PROPS) == Not(And((a, b)))
    assert parse_condition("(State=1 OR State=2) AND State=3", PROPS) == And((Or((a, b)), c))
    assert parse_condition("((State=1))", PROPS) == a


def test_literal_on_the_left() -> None:
    assert where("4 = State")
    assert where("5 > State")
    assert not where("3 > State")


# --- errors ----------------------------------------------------------------------------------


def test_unknown_property_position() -> None:
    err = error_at("State = 1 AND Bogus = 2")
    assert err.position == 14
    assert "unknown property 'Bogus'" in str(err)
    assert str(err).startswith("at 14:")
    assert error_at("SELECT JobId, Nope FROM BitsClientJob", query=True).position == 14


def test_unterminated_string_position() -> None:
    err = error_at("Owner = 'alice")
    assert err.position == 8
    assert "unterminated string" in err.message
    assert error_at("Owner = 'alice\\").position == 8


def test_missing_from() -> None:
    err = error_at("SELECT * BitsClientJob", query=True)
    assert err.position == 9
    assert "expected FROM" in str(err)
    assert "expected ',' or FROM" in str(error_at("SELECT State BitsClientJob", query=True))


def test_trailing_garbage() -> None:
    err = error_at("SELECT * FROM BitsClientJob State", query=True)
    assert err.position == 28
    assert "expected WHERE or end of input" in str(err)
    err = error_at("State = 1 State")
    assert err.position == 10
    assert "AND, OR or end of input" in str(err)


def test_wrong_class() -> None:
    err = error_at("SELECT * FROM Win32_Process", query=True)
    assert err.position == 14
    assert "unknown class 'Win32_Process'" in str(err)
    q = parse_query("SELECT * FROM other", PROPS, classes=("Other", "BitsClientJob"))
    assert q.class_name == "Other"


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "expected a condition, found end of input"),
        ("State =", 7, "expected a property or literal"),
        ("State", 5, "expected a comparison operator, LIKE or IS"),
        ("State NOT = 1", 10, "expected LIKE"),
        ("State IS 1", 9, "expected NOT or NULL"),
        ("State IS NOT 1", 13, "expected NULL"),
        ("Owner LIKE 5", 11, "expected a string pattern"),
        ("(State = 1", 10, "expected AND, OR or ')'"),
        ("State = 1)", 9, "end of input"),
        ("State = 1 AND", 13, "expected a condition"),
        ("State ! 1", 6, "unexpected character '!'"),
        ("State = 1 # x", 10, "unexpected character '#'"),
        ("State = 12ab", 10, "malformed number"),
        ("State = 0x10", 9, "malformed number"),
        ("State = 1" + "0" * 25, 8, "number too long"),
        ("Owner LIKE 'a[bc'", 11, "unterminated '['"),
        ("Owner LIKE '[z-a]'", 11, "invalid range"),
        ("SELECT FROM BitsClientJob", 7, "expected '*' or a property name, found 'FROM'"),
        ("SELECT * FROM 5", 14, "expected a class name"),
        ("SELECT State, FROM BitsClientJob", 14, "expected a property name"),
        ("FROM BitsClientJob", 0, "expected SELECT"),
        ("SELECT * FROM BitsClientJob WHERE", 33, "expected a condition"),
    ],
)
def test_errors(text: str, position: int, fragment: str) -> None:
    err = error_at(text, query=text.split(" ")[0] in ("SELECT", "FROM"))
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert isinstance(err, ValueError)


def test_length_and_depth_limits() -> None:
    err = error_at("State = 1 OR " * (MAX_QUERY_LENGTH // 13) + "State = 1")
    assert "too long" in str(err)
    ok = "(" * MAX_DEPTH + "State = 4" + ")" * MAX_DEPTH
    assert where(ok)
    assert "nesting too deep" in str(error_at("(" + ok + ")"))
    assert "nesting too deep" in str(error_at("NOT " * (MAX_DEPTH + 1) + "State = 4"))
    assert where("NOT " * MAX_DEPTH + "State = 4")  # an even number of NOTs
    # long flat chains are not nested: no recursion limit
    flat = " AND ".join(["State = 4"] * 500)
    assert len(flat) < MAX_QUERY_LENGTH
    assert where(flat)


# --- evaluation ------------------------------------------------------------------------------


def test_integer_comparisons_are_numeric() -> None:
    assert where("BytesTotal > 999")
    assert where("BytesTotal >= 1000 AND BytesTotal <= 1000")
    assert not where("BytesTotal < 200")  # "1000" < "200" as strings
    assert where("BytesTotal = '1000'")  # a numeric string coerces
    assert where("'200' < BytesTotal")
    assert "BytesTotal is a number, not the string 'abc'" in str(error_at("BytesTotal = 'abc'"))
    big = 2**64 - 1
    assert where(f"BytesTotal = {big}", {"BytesTotal": big})


def test_string_comparisons_are_case_insensitive() -> None:
    assert where("Owner = 'ALICE'")
    assert where("displayname = 'nightly update'")
    assert where("Owner < 'Bob'")
    assert where("Owner <> 'bob'")
    assert not where("Owner > 'B'")


def test_booleans() -> None:
    inst: dict[str, object] = {"Owner": True}
    assert where("Owner = TRUE", inst)
    assert where("Owner = 1", inst)
    assert where("Owner = 'true'", inst)
    assert not where("Owner = FALSE", inst)
    assert where("Owner <> 0", inst)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("%", True),
        ("Nightly%", True),
        ("nightly%", True),
        ("%update", True),
        ("%ly Up%", True),
        ("Nightly_Update", True),
        ("Nightly__Update", False),
        ("_ightly Update", True),
        ("[mn]ightly%", True),
        ("[a-m]ightly%", False),
        ("[A-Z]ightly%", True),
        ("[^n]ightly%", False),
        ("[^x]ightly%", True),
        ("Nightly Update_", False),
        ("Nightly", False),
        ("%%%e", True),
        ("N%y%e", True),
        ("", False),
    ],
)
def test_like(pattern: str, expected: bool) -> None:
    assert where(f"DisplayName LIKE '{pattern}'") is expected
    assert where(f"DisplayName NOT LIKE '{pattern}'") is not expected


def test_like_escapes_with_classes() -> None:
    inst: dict[str, object] = {"Owner": "50%_off[1]"}
    assert where("Owner LIKE '50[%][_]off[[]1]'", inst)
    assert not where("Owner LIKE '50[%][_]off[[]2]'", {"Owner": "50%xoff[1]"})
    assert where("Owner LIKE '%[]]'", inst)
    assert where("Owner LIKE '%[-]%'", {"Owner": "a-b"})
    assert where("Owner LIKE ''", {"Owner": ""})
    assert where("BytesTotal LIKE '1%'")  # integers match by their decimal text


def test_like_is_linear_enough() -> None:
    inst: dict[str, object] = {"Owner": "a" * 1000}
    assert not where("Owner LIKE '" + "%a" * 50 + "%b'", inst)
    assert where("Owner LIKE '" + "%a" * 50 + "%'", inst)


def test_null_three_valued_logic() -> None:
    cond = parse_condition("CustomHeaders = 'x'", PROPS)
    assert evaluate(cond, JOB) is None
    assert not where("CustomHeaders = 'x'")
    assert not where("CustomHeaders <> 'x'")
    assert not where("NOT CustomHeaders = 'x'")  # NOT unknown is unknown
    assert not where("CustomHeaders LIKE '%'")
    assert not where("CustomHeaders = NULL")
    assert where("CustomHeaders IS NULL")
    assert not where("CustomHeaders IS NOT NULL")
    assert where("Owner IS NOT NULL")
    assert where("CustomHeaders = 'x' OR State = 4")  # unknown OR true
    assert not where("CustomHeaders = 'x' AND State = 4")  # unknown AND true
    assert evaluate(parse_condition("CustomHeaders = 'x' AND State = 5", PROPS), JOB) is False
    assert evaluate(parse_condition("CustomHeaders = 'x' OR State = 5", PROPS), JOB) is None
    assert not where("Description IS NULL")  # empty string is not NULL
    assert where("JobType IS NULL")  # absent from the instance


def test_non_scalar_is_unknown() -> None:
    assert evaluate(parse_condition("Files = 1", PROPS), JOB) is None
    assert where("Files IS NOT NULL")


def test_instance_keys_matched_case_insensitively() -> None:
    assert where("State = 4", {"state": 4})


def test_project() -> None:
    q = parse_query("SELECT owner, State, JobType FROM BitsClientJob", PROPS)
    assert project(q, JOB) == {"Owner": "alice", "State": 4, "JobType": None}
    star = parse_query("SELECT * FROM BitsClientJob", PROPS)
    assert project(star, JOB) == JOB
    assert project(star, JOB) is not JOB


def test_against_real_job_instance() -> None:
    job = Job(job_id="{X}", owner="bob", owner_uid=1000, display_name="Backup")
    inst = job.to_cim()
    q = parse_query(
        "SELECT JobId, DisplayName FROM BitsClientJob WHERE Owner = 'BOB' AND BytesTotal = 0 "
        "AND DisplayName LIKE 'back%' AND JobCreationTime = 0 AND CustomHeaders IS NULL",
        PROPS,
    )
    assert q.where is not None
    assert matches(q.where, inst)
    assert project(q, inst) == {"JobId": "{X}", "DisplayName": "Backup"}


# --- properties ------------------------------------------------------------------------------

_TOKENS = [
    "SELECT", "*", "FROM", "BitsClientJob", "WHERE", "AND", "OR", "NOT", "LIKE", "IS", "NULL",
    "TRUE", "(", ")", ",", "=", "<>", "!=", "<", ">=", "State", "Owner", "Bogus", "'a%[b-c]'",
    "'x", "\"y\\\"\"", "-1", "12", "[", "!", "\\",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(_TOKENS), max_size=25).map(" ".join)))
def test_parsers_raise_only_wql_error(text: str) -> None:
    for parse in (lambda t: parse_query(t, PROPS), lambda t: parse_condition(t, PROPS)):
        try:
            result = parse(text)
        except WqlError as err:
            assert 0 <= err.position <= len(text)
        else:
            cond = result.where if isinstance(result, Query) else result
            if cond is not None:
                evaluate(cond, JOB)


# Reference model: a small AST over two properties, rendered to WQL, evaluated directly.


@dataclass(frozen=True)
class RCmp:
    prop: str
    op: str
    value: int | str
    flipped: bool  # render as literal op property


@dataclass(frozen=True)
class RNull:
    prop: str
    negated: bool


@dataclass(frozen=True)
class RNot:
    inner: object


@dataclass(frozen=True)
class RBin:
    op: str  # AND / OR
    left: object
    right: object


_OPS = ["=", "<>", "!=", "<", "<=", ">", ">="]
_MIRROR = {"=": "=", "<>": "<>", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ALPHABET = "aAbBzZ '\"\\%_[]"

_cmp = st.one_of(
    st.builds(RCmp, st.just("Priority"), st.sampled_from(_OPS), st.integers(-5, 5), st.booleans()),
    st.builds(RCmp, st.just("Owner"), st.sampled_from(_OPS), st.text(_ALPHABET, max_size=4), st.booleans()),
    st.builds(RNull, st.sampled_from(["Priority", "Owner"]), st.booleans()),
)
_cond = st.recursive(
    _cmp,
    lambda inner: st.one_of(
        st.builds(RNot, inner), st.builds(RBin, st.sampled_from(["AND", "OR"]), inner, inner)
    ),
    max_leaves=12,
)
_instance = st.fixed_dictionaries(
    {
        "Priority": st.one_of(st.none(), st.integers(-5, 5)),
        "Owner": st.one_of(st.none(), st.text(_ALPHABET, max_size=4)),
    }
)


def _quote(s: str, quote: str) -> str:
    return quote + s.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def _depth(node: object) -> int:
    if isinstance(node, RNot):
        return 2 + _depth(node.inner)
    if isinstance(node, RBin):
        return 1 + max(_depth(node.left), _depth(node.right))
    return 0


def _render(node: object, draw_case: Callable[[st.SearchStrategy[str]], str]) -> str:
    def kw(word: str) -> str:
        return draw_case(st.sampled_from([word, word.lower(), word.capitalize()]))

    if isinstance(node, RCmp):
        lit = (
            str(node.value)
            if isinstance(node.value, int)
            else _quote(node.value, draw_case(st.sampled_from(["'", '"'])))
        )
        prop = kw(node.prop)
        if node.flipped:
            return f"{lit} {_MIRROR[node.op]} {prop}"
        return f"{prop} {node.op} {lit}"
    if isinstance(node, RNull):
        return f"{kw(node.prop)} {kw('IS')} {kw('NOT') + ' ' if node.negated else ''}{kw('NULL')}"
    if isinstance(node, RNot):
        return f"{kw('NOT')} ({_render(node.inner, draw_case)})"
    assert isinstance(node, RBin)
    return f"({_render(node.left, draw_case)}) {kw(node.op)} ({_render(node.right, draw_case)})"


def _ref(node: object, inst: dict[str, object]) -> bool | None:
    if isinstance(node, RCmp):
        actual = inst[node.prop]
        if actual is None:
            return None
        a: int | str
        b: int | str
        if isinstance(node.value, int):
            assert isinstance(actual, int)
            a, b = actual, node.value
        else:
            assert isinstance(actual, str)
            a, b = actual.casefold(), node.value.casefold()
        op = {"!=": "<>"}.get(node.op, node.op)
        return {
            "=": a == b,
            "<>": a != b,
            "<": a < b,  # type: ignore[operator]
            "<=": a <= b,  # type: ignore[operator]
            ">": a > b,  # type: ignore[operator]
            ">=": a >= b,  # type: ignore[operator]
        }[op]
    if isinstance(node, RNull):
        return (inst[node.prop] is None) != node.negated
    if isinstance(node, RNot):
        v = _ref(node.inner, inst)
        return None if v is None else not v
    assert isinstance(node, RBin)
    left, right = _ref(node.left, inst), _ref(node.right, inst)
    if node.op == "AND":
        if left is False or right is False:
            return False
        return None if left is None or right is None else True
    if left is True or right is True:
        return True
    return None if left is None or right is None else False


@settings(max_examples=300, deadline=None)
@given(_cond, st.lists(_instance, min_size=1, max_size=4), st.data())
def test_evaluation_agrees_with_reference(
    node: object, instances: list[dict[str, object]], data: st.DataObject
) -> None:
    assume(_depth(node) <= MAX_DEPTH)
    text = _render(node, data.draw)
    cond = parse_condition(text, PROPS)
    for inst in instances:
        expected = _ref(node, inst)
        assert evaluate(cond, inst) is expected, (text, inst)
        assert matches(cond, inst) is (expected is True)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=20), st.data())
def test_like_pattern_derived_from_value_matches(value: str, data: st.DataObject) -> None:
    parts: list[str] = []
    i = 0
    while i < len(value):
        choice = data.draw(st.sampled_from(["keep", "keep", "one", "run", "class"]))
        c = value[i]
        if choice == "one":
            parts.append("_")
            i += 1
        elif choice == "run":
            n = data.draw(st.integers(0, len(value) - i))
            parts.append("%")
            i += n
        elif choice == "class" and c not in "]^":
            parts.append(f"[x{c}]")
            i += 1
        else:
            if c in "%_[":
                parts.append(f"[{c}]")
            elif c.isascii():
                parts.append(c.swapcase())
            else:
                parts.append(c)
            i += 1
    pattern = "".join(parts)
    cond = parse_condition("Owner LIKE " + _quote(pattern, "'"), PROPS)
    assert matches(cond, {"Owner": value}), pattern
    if "%" not in pattern:  # fixed length: one more character cannot match
        assert not matches(cond, {"Owner": value + "x"}), pattern


@given(
    value=st.text(alphabet="abcAB%_x-", max_size=12),
    parts=st.lists(st.text(alphabet="abAB-x", max_size=3), min_size=1, max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_the_literal_and_percent_fast_path_agrees_with_a_regex(value: str, parts: list[str]) -> None:
    import re as _re

    pattern = "%".join(parts)
    items = compile_like(pattern, 0)
    expected = _re.fullmatch(".*".join(_re.escape(p) for p in parts), value, _re.IGNORECASE | _re.DOTALL)
    assert like(value, items) == (expected is not None), (value, pattern)


# --- literals checked against what a property holds (issue 12: State = 'SUSPENDED') ----------


def test_an_enumerated_property_takes_its_names_as_well_as_its_numbers() -> None:
    assert parse_condition("State = 'SUSPENDED'", PROPS) == Comparison(Property("State"), "=", Constant(3))
    assert parse_condition("'error' = state", PROPS) == Comparison(Constant(4), "=", Property("State"))
    assert parse_condition("State = 'transient-error'", PROPS) == parse_condition("State = 5", PROPS)
    assert parse_condition("Priority <> 'Low'", PROPS) == Comparison(Property("Priority"), "<>", Constant(3))
    assert parse_condition("JobType = 'download'", PROPS) == Comparison(Property("JobType"), "=", Constant(0))
    assert where("State = 'ERROR' AND Priority = 'NORMAL'")
    assert where("State = '4'")  # a number in quotes is still that number
    err = error_at("State = 'SUSPENDD'")
    assert err.position == 8 and "not 'SUSPENDD'" in err.message and "SUSPENDED" in err.message


def test_a_literal_of_the_wrong_type_is_an_error() -> None:
    assert error_at("BytesTotal > 'big'").position == 13
    assert "is a string" in error_at("DisplayName = 5").message
    assert "is a string" in error_at("7 <> JobId").message
    assert where("DisplayName = 'Nightly Update' AND BytesTotal = '1000'")
    assert where("Owner = 'alice'") and where("DisplayName IS NOT NULL")  # unchecked, NULL: as before
