"""Fuzzing of bitsadmin's argument parsing (src/openbits/cli/bitsadmin/).

The pure parsers are called directly: any text gives a value or :class:`Usage`, and what a
formatter writes parses back to the same value.  Whole command lines go through ``run(argv)``
in-process with no daemon (``OPENBITS_SOCKET`` names a socket that does not exist): every one
ends with exit 1 and a usage text or a ``Unable to … - 0x…`` line, or exit 3 (no daemon) for a
well-formed command that needs one; never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbits.cli.bitsadmin import SWITCHES, Usage, run
from openbits.cli.bitsadmin.parsing import (
    _STORE_LOCATIONS,
    _acl_flags,
    _null,
    _priority,
    _store_location,
    _ulong,
    parse_file_set,
    parse_ranges,
)
from openbits.model import BG_LENGTH_TO_EOF, JobPriority
from tests.fuzz.conftest import FUZZ

# argv strings: anything a Linux command line can carry (no NUL)
ARG = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40)
WORDS = [
    "/VERBOSE",
    "/ALLUSERS",
    "/REFRESH",
    "/PRIORITY",
    "/ACLFLAGS",
    "/DYNAMIC",
    "/DOWNLOAD",
    "/UPLOAD",
    "/UPLOAD-REPLY",
    "/RAWRETURN",
    "/WRAP",
    "NULL",
    "",
    "HIGH",
    "foreground",
    "OVERRIDE",
    "NO_PROXY",
    "0x10",
    "0X",
    "-1",
    "4294967296",
    "²",
    "١٢",
    "1:eof",
    "0:10,20:eof",
    "1:",
    ":1",
    "SERVER",
    "proxy",
    "BASIC",
    "ntlm",
    "CURRENT_USER",
    "BG_CERT_STORE_LOCATION_USERS",
    "9",
    "OGDS",
    "x",
    "{00000000-0000-0000-0000-000000000000}",
    "http://example.invalid/f",
    "/tmp/f",
]
# text built mostly of the characters the parsers look at, and of digits int() and str.isdigit() disagree on
PARSED = st.text(
    alphabet=st.one_of(st.sampled_from("0123456789xX:,; -+_eofEOF#\t\r\n²¹³٣０\x85\u2028"), st.characters()),
    max_size=40,
)
TOKEN = st.one_of(PARSED, st.sampled_from(WORDS), ARG, st.integers(-(2**70), 2**70).map(str))
NAMES = sorted(SWITCHES)


def _case(name: str, flips: list[bool]) -> str:
    return "".join(
        c.lower() if flip else c for c, flip in zip(name, flips + [False] * len(name), strict=False)
    )


SWITCH = st.one_of(
    st.builds(_case, st.sampled_from(NAMES), st.lists(st.booleans(), max_size=30)),
    st.sampled_from(["/", "/RAWRETURN", "/WRAP", "/NOWRAP", "HELP", "/HELPX"]),
    ARG,
)
PREFIX = st.sampled_from([[], ["/RAWRETURN"], ["/wrap"], ["/NOWRAP"], ["/rawreturn", "/WRAP"]])

_BITS_LINE = re.compile(r"^Unable to [^\n]* - 0x[0-9a-f]{8} \w+: ", re.MULTILINE)


@contextlib.contextmanager
def _no_daemon() -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBITS_")}
    env["OPENBITS_SOCKET"] = "/nonexistent/openbits-fuzz/openbits.sock"
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with _no_daemon(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _check_ending(argv: list[str], rc: int, out: str, err: str) -> None:
    """The ways a command line may end without a daemon."""
    if rc == 0:
        assert "USAGE: BITSADMIN" in out, (argv, out, err)  # /HELP and /? only
        return
    if rc == 3:
        assert "no openbits daemon" in err, (argv, err)
        return
    assert rc == 1, (argv, rc, err)
    assert "USAGE: BITSADMIN" in err or _BITS_LINE.search(err), (argv, err)


# -- the pure parsers -------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(max_size=80), PARSED))
def test_parse_ranges_gives_ranges_or_usage(text: str) -> None:
    try:
        ranges = parse_ranges(text)
    except Usage as e:
        assert str(e)
        return
    assert ranges
    for r in ranges:
        assert set(r) == {"InitialOffset", "Length"}
        assert r["InitialOffset"] >= 0 and r["Length"] >= 0


def _format_ranges(ranges: list[tuple[int, int]], eof_word: str, sep: str) -> str:
    return sep.join(f"{o}:{eof_word if n == BG_LENGTH_TO_EOF else n}" for o, n in ranges)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 2),
            st.one_of(st.integers(0, 2**64 - 2), st.just(BG_LENGTH_TO_EOF)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(["eof", "EOF", "Eof"]),
    st.sampled_from([",", ", ", " ,"]),
)
def test_parse_ranges_round_trip(ranges: list[tuple[int, int]], eof_word: str, sep: str) -> None:
    parsed = parse_ranges(_format_ranges(ranges, eof_word, sep))
    assert [(r["InitialOffset"], r["Length"]) for r in parsed] == ranges


@FUZZ
@given(st.one_of(st.text(max_size=200), PARSED))
def test_parse_file_set_gives_pairs_or_usage(text: str) -> None:
    try:
        pairs = parse_file_set(text)
    except Usage as e:
        assert str(e).startswith("Line ")
        return
    for remote, local in pairs:
        assert remote and local
        assert remote.split() == [remote] and local.split() == [local]
        assert not remote.startswith("#")


WORD = st.text(min_size=1, max_size=20).filter(lambda w: not any(c.isspace() for c in w))


@FUZZ
@given(
    st.lists(st.tuples(WORD.filter(lambda w: not w.startswith("#")), WORD), max_size=8),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from([" ", "\t", "  "]),
    st.booleans(),
)
def test_parse_file_set_round_trip(pairs: list[tuple[str, str]], eol: str, gap: str, comments: bool) -> None:
    lines = []
    for remote, local in pairs:
        if comments:
            lines += ["# a comment", ""]
        lines.append(f"{gap}{remote}{gap}{local}{gap}")
    assert parse_file_set(eol.join(lines)) == pairs


@FUZZ
@given(st.one_of(st.text(max_size=30), PARSED, st.sampled_from(_STORE_LOCATIONS)))
def test_value_parsers_give_a_value_or_usage(text: str) -> None:
    for parse in (_ulong, _priority, _acl_flags, _store_location):
        try:
            value = parse(text)
        except Usage as e:
            assert str(e)
            continue
        assert isinstance(value, int) and value >= 0
    assert _null(text) in (None, text)


@FUZZ
@given(st.integers(0, 0xFFFFFFFF), st.sampled_from(["d", "x", "X"]))
def test_ulong_round_trip(value: int, form: str) -> None:
    text = str(value) if form == "d" else f"0{form}{value:x}"
    assert _ulong(text) == value


@FUZZ
@given(st.sampled_from(list(JobPriority)), st.lists(st.booleans(), max_size=12))
def test_priority_round_trip(priority: JobPriority, flips: list[bool]) -> None:
    assert _priority(_case(priority.name, flips)) == priority


@FUZZ
@given(st.integers(0, 7), st.sampled_from(["name", "prefixed", "number"]))
def test_store_location_round_trip(index: int, form: str) -> None:
    name = _STORE_LOCATIONS[index]
    text = {"name": name, "prefixed": "BG_CERT_STORE_LOCATION_" + name, "number": str(index + 1)}[form]
    assert _store_location(text.lower()) == index


def test_store_location_refuses_non_ascii_digits() -> None:
    """Regression: '²' is a digit to str.isdigit but not to int(): a traceback, not a usage."""
    for text in ("²", "¹", "٣", "1²"):
        with pytest.raises(Usage):
            _store_location(text)


# -- whole command lines without a daemon -----------------------------------------------------


@FUZZ
@given(PREFIX, SWITCH, st.lists(TOKEN, max_size=7))
def test_any_command_line_ends_cleanly(prefix: list[str], name: str, args: list[str]) -> None:
    argv = [*prefix, name, *args]
    rc, out, err = _run(argv)
    _check_ending(argv, rc, out, err)
    if rc == 0:
        assert name.upper() in ("/HELP", "/?")


JOB = st.sampled_from(["{00000000-0000-0000-0000-000000000000}", "myjob", "job with spaces"])
URL = st.sampled_from(["http://example.invalid/f", "https://h.invalid/a?b=c"])
LOCAL = st.sampled_from(["/tmp/f", "relative/f", "f"])
ULONG = st.one_of(st.integers(0, 0xFFFFFFFF).map(str), st.integers(0, 0xFFFFFFFF).map(hex))
PRIORITY = st.sampled_from([p.name for p in JobPriority] + ["high", "Low"])
# a name (a leading "/" would make it an option, as in bitsadmin)
NAME = ARG.filter(lambda s: not s.startswith("/"))
RANGES = st.lists(
    st.tuples(st.integers(0, 2**40), st.one_of(st.integers(0, 2**40), st.just(BG_LENGTH_TO_EOF))),
    min_size=1,
    max_size=4,
).map(lambda r: _format_ranges(r, "eof", ","))
HEADER = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,10}: [ -~]{0,20}\Z")
TARGET = st.sampled_from(["SERVER", "proxy"])
SCHEME = st.sampled_from(["BASIC", "digest", "NTLM", "Negotiate", "PASSPORT"])
LOCATION = st.sampled_from(["CURRENT_USER", "local_machine", "BG_CERT_STORE_LOCATION_USERS", "1", "8"])


def _seq(*parts: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda lists: [a for part in lists for a in part])


def _one(s: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return s.map(lambda v: [v])


def _maybe(s: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), s)


_J = _one(JOB)
_PAIRS = st.lists(st.tuples(URL, LOCAL), min_size=1, max_size=3).map(lambda ps: [a for p in ps for a in p])

#: a well-formed argument list of every switch that needs the daemon
VALID: dict[str, st.SearchStrategy[list[str]]] = {
    "/CREATE": _seq(_maybe(_one(st.sampled_from(["/DOWNLOAD", "/upload", "/UPLOAD-REPLY"]))), _one(NAME)),
    "/ADDFILE": _seq(_J, _one(URL), _one(LOCAL)),
    "/ADDFILEWITHRANGES": _seq(_J, _one(URL), _one(LOCAL), _one(RANGES)),
    "/REPLACEREMOTEPREFIX": _seq(_J, _one(URL), _one(URL)),
    "/INFO": _seq(_J, _maybe(_one(st.sampled_from(["/VERBOSE", "/verbose"])))),
    "/LIST": st.sampled_from([[], ["/ALLUSERS"], ["/verbose"], ["/VERBOSE", "/allusers"]]),
    "/RESET": st.sampled_from([[], ["/ALLUSERS"]]),
    "/MONITOR": _seq(
        _maybe(_one(st.just("/ALLUSERS"))), _maybe(_seq(_one(st.just("/REFRESH")), _one(ULONG)))
    ),
    "/TRANSFER": _seq(
        _one(NAME),
        _maybe(_one(st.sampled_from(["/DOWNLOAD", "/DYNAMIC"]))),
        _maybe(_seq(_one(st.just("/PRIORITY")), _one(PRIORITY))),
        _PAIRS,
    ),
    "/SETDISPLAYNAME": _seq(_J, _one(ARG)),
    "/SETDESCRIPTION": _seq(_J, _one(ARG)),
    "/SETPRIORITY": _seq(_J, _one(PRIORITY)),
    "/SETMINRETRYDELAY": _seq(_J, _one(ULONG)),
    "/SETNOPROGRESSTIMEOUT": _seq(_J, _one(ULONG)),
    "/SETNOTIFYFLAGS": _seq(_J, _one(ULONG)),
    "/SETSECURITYFLAGS": _seq(_J, _one(ULONG)),
    "/SETMAXDOWNLOADTIME": _seq(_J, _one(ULONG)),
    "/SETCUSTOMHEADERS": _seq(_J, st.one_of(st.just(["NULL"]), st.lists(HEADER, min_size=1, max_size=3))),
    "/SETNOTIFYCMDLINE": _seq(_J, _one(ARG), _maybe(_one(ARG))),
    "/SETCREDENTIALS": _seq(_J, _one(TARGET), _one(SCHEME), _one(ARG), _one(ARG)),
    "/REMOVECREDENTIALS": _seq(_J, _one(TARGET), _one(SCHEME)),
    "/SETPROXYSETTINGS": _seq(
        _J,
        st.one_of(
            st.sampled_from([["PRECONFIG"], ["no_proxy"], ["AUTODETECT"]]),
            _seq(_one(st.just("OVERRIDE")), _one(st.sampled_from(["p:8080", "a:1,b:2", "NULL"])), _one(ARG)),
        ),
    ),
    "/SETCLIENTCERTIFICATEBYID": _seq(
        _J, _one(LOCATION), _one(st.just("MY")), _one(st.binary(max_size=20).map(bytes.hex))
    ),
    "/SETCLIENTCERTIFICATEBYNAME": _seq(_J, _one(LOCATION), _one(st.just("MY")), _one(ARG)),
    "/SETACLFLAGS": _seq(_J, _one(st.sampled_from(["O", "ogds", "", "D"]))),
    "/SETREPLYFILENAME": _seq(_J, _one(LOCAL)),
}
#: switches whose only argument is the job
JOB_ONLY = {
    name
    for name in SWITCHES
    if name.startswith("/GET")
    or name
    in (
        "/CANCEL",
        "/COMPLETE",
        "/RESUME",
        "/SUSPEND",
        "/LISTFILES",
        "/REMOVECLIENTCERTIFICATE",
        "/MAKECUSTOMHEADERSWRITEONLY",
        "/TAKEOWNERSHIP",
    )
}
NO_DAEMON = {"/HELP", "/?", "/SETACLFLAG", "/ADDFILESET"}  # (/ADDFILESET: its own property below)


def test_every_switch_has_a_well_formed_example() -> None:
    assert set(SWITCHES) == set(VALID) | JOB_ONLY | NO_DAEMON


WELL_FORMED = st.one_of(
    st.sampled_from(sorted(VALID)).flatmap(lambda n: VALID[n].map(lambda a: [n, *a])),
    st.tuples(st.sampled_from(sorted(JOB_ONLY)), JOB).map(list),
)


@FUZZ
@given(PREFIX, WELL_FORMED)
def test_a_well_formed_command_needs_the_daemon(prefix: list[str], argv: list[str]) -> None:
    rc, out, err = _run([*prefix, *argv])
    assert (rc, out) == (3, ""), (argv, err)
    assert "no openbits daemon" in err


@pytest.fixture(scope="module")
def file_set_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="openbits-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.tuples(WORD, WORD), max_size=4).map(
            lambda ps: "".join(f"{r} {lo}\n" for r, lo in ps).encode()
        ),
    )
)
def test_add_file_set_reads_any_file(file_set_dir: Path, content: bytes) -> None:
    path = file_set_dir / "set.txt"
    path.write_bytes(content)
    rc, out, err = _run(["/ADDFILESET", "job", str(path)])
    _check_ending(["/ADDFILESET", "job", str(path)], rc, out, err)
    try:
        pairs = parse_file_set(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, Usage):
        pairs = []
    assert rc == (3 if pairs else 1), err


def test_add_file_set_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    """Regression: a file set that is not UTF-8 ended in a UnicodeDecodeError traceback."""
    path = tmp_path / "set.txt"
    path.write_bytes(b"http://h/\xff /tmp/f\n")
    rc, out, err = _run(["/ADDFILESET", "job", str(path)])
    assert rc == 1 and out == ""
    assert "not UTF-8" in err and "USAGE: BITSADMIN" in err


def test_client_certificate_location_with_a_superscript_is_a_usage_error() -> None:
    """Regression: /SETCLIENTCERTIFICATEBYID job ² MY 00 ended in a ValueError traceback."""
    rc, _out, err = _run(["/SETCLIENTCERTIFICATEBYID", "job", "²", "MY", "00"])
    assert rc == 1
    assert "is not a certificate store location" in err
