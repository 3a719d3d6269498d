"""Property-based fuzzing of a live daemon's API with schemathesis, from api/openapi/.

Every operation of the OpenAPI document (but the endless ``/events`` stream) gets
generated requests, valid and invalid ones, sent to a real daemon over its Unix socket.
Each answer must be: not a 5xx; a documented status with the documented content type;
a 2xx body that conforms to the documented schema; an error body ``{ReturnValue,
ErrorCode, Name, Message}`` whose status is ``api_http_status(ReturnValue)``.

The daemon is seeded with jobs in several states (with files, empty, transient error,
transferred, cancelled), and the fuzzer aims at them as well as at random JobIds.  It is
fenced in: its paths are moved under a sandbox directory, and every HTTP(S) transfer goes
to a proxy address on the loopback that refuses connections, so it reaches nothing
outside.  ``OPENBITS_FUZZ_EXAMPLES`` (default 6) is the number of examples per operation.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import hypothesis.strategies as st
import jsonschema
import pytest
import requests
import schemathesis
import urllib3
from hypothesis import HealthCheck, given, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from openbits.api import openapi
from openbits.errors import api_http_status
from openbits.model import CIM_PROPERTIES
from openbits.transfer.proxylist import parse_proxy_list
from tests.support.daemon import CLASS, Daemon

EXAMPLES = int(os.environ.get("OPENBITS_FUZZ_EXAMPLES", "6"))
BASE_URL = "http://localhost"
DOCUMENT = openapi.document()
#: the keys whose string values name a file, a source or a program: moved under the sandbox
PATH_KEYS = frozenset({"remoteurl", "localfile", "oldprefix", "newprefix", "program"})
#: the keys whose string values are webhooks: sent to the refusing address
URL_KEYS = frozenset({"notifyurl"})
#: SetProxySettings' list and CreateJob's proxy variables: a proxy list that parses, and every
#: proxy variable, name the refusing address instead
PROXY_KEYS = frozenset({"proxylist", "http_proxy", "https_proxy", "all_proxy"})

# (an explicit config: no schemathesis.toml found on the way changes what runs)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict({})).exclude(
    path="/events"  # a stream that never ends; it has its own tests
)


# -- requests over the daemon's Unix socket ------------------------------------------------------


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixAdapter(HTTPAdapter):
    """Sends every request of a requests.Session to a Unix socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.pool = _UnixPool("localhost", socket_path=socket_path)

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> urllib3.HTTPConnectionPool:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


# -- the live daemon and its seeds ---------------------------------------------------------------


@dataclass
class Live:
    daemon: Daemon
    session: requests.Session
    sandbox: Path
    dest: Path
    refusing: str  # host:port on the loopback that refuses connections
    seeded: int = 0  # how many times the seeds were planted


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("fuzz")
    sandbox = root / "sandbox"
    dest = sandbox / "dest"
    dest.mkdir(parents=True)
    (sandbox / "src").mkdir()
    (sandbox / "src" / "a.bin").write_bytes(b"a" * 1000)
    # A bound socket that never listens: connections to it are refused at once.
    refuse = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refuse.bind(("127.0.0.1", 0))
    refusing = f"127.0.0.1:{refuse.getsockname()[1]}"
    proxy = f"http://{refusing}"
    env = {name: proxy for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    env.update(no_proxy="", NO_PROXY="", all_proxy="", ALL_PROXY="")
    daemon = Daemon(
        root / "state", config={"max_jobs_per_user": 100_000, "max_jobs_per_machine": 100_000}, env=env
    )
    daemon.start()
    session = requests.Session()
    session.mount("http://", UnixAdapter(daemon.socket))
    try:
        yield Live(daemon, session, sandbox, dest, refusing)
    finally:
        session.close()
        code = daemon.stop()
        refuse.close()
        log = daemon.log()
        assert code == 0, log[-4000:]
        # nothing failed inside: no 500 went unnoticed, no task of the daemon died
        assert "internal error" not in log and "Traceback" not in log, log[-8000:]


@dataclass
class Seeds:
    jobs: list[str]
    local_files: list[str]


def _create(live: Live, **params: Any) -> str:
    status, body = live.daemon.api("POST", f"{CLASS}/CreateJob", params)
    assert status == 200, body
    return str(body["JobId"])


def _call(live: Live, job: str, method: str, **params: Any) -> None:
    status, body = live.daemon.api("POST", f"{CLASS}/{quote(job, safe='')}/{method}", params)
    assert status == 200, body


@pytest.fixture
def seeds(live: Live) -> Seeds:
    """Fresh jobs for each operation: suspended with files (one with ranges), empty, resumed
    (its HTTP file fails against the refusing proxy: TRANSIENT_ERROR), transferred, cancelled."""
    n = live.seeded
    live.seeded += 1
    dest, src = live.dest, live.sandbox / "src" / "a.bin"
    http_file = f"{dest}/h{n}"
    with_files = _create(
        live,
        DisplayName=f"fuzz-files-{n}",
        RemoteUrl="http://example.test/a",
        LocalFile=http_file,
        Suspend=True,
    )
    _call(live, with_files, "AddFile", RemoteUrl=str(src), LocalFile=f"{dest}/l{n}")
    _call(
        live,
        with_files,
        "AddFileWithRanges",
        RemoteUrl="http://example.test/r",
        LocalFile=f"{dest}/r{n}",
        Ranges=[{"InitialOffset": 0, "Length": 10}, {"InitialOffset": 100, "Length": 18446744073709551615}],
    )
    empty = _create(live, DisplayName=f"fuzz-empty-{n}")
    failing = _create(live, RemoteUrl="https://example.test/b", LocalFile=f"{dest}/t{n}")
    transferred = _create(live, RemoteUrl=f"file://{src}", LocalFile=f"{dest}/f{n}")
    cancelled = _create(live, DisplayName=f"fuzz-cancelled-{n}")
    _call(live, cancelled, "SetJobState", JobState=0)
    return Seeds(
        jobs=[with_files, empty, failing, transferred, cancelled, with_files.lower().strip("{}")],
        local_files=[http_file, f"{dest}/l{n}", f"{dest}/r{n}"],
    )


# -- fencing the generated requests in ----------------------------------------------------------


def _confine(text: str, sandbox: Path) -> str:
    """A path or file:// URL moved under the sandbox; ``..`` cannot climb out of it."""
    text = text.replace("..", "__")
    if text.startswith("/"):
        return f"{sandbox}{text}"
    if text[:5].lower() == "file:":
        return f"file://{sandbox}/{text[5:].lstrip('/')}"
    return text


def _refused(url: str, refusing: str) -> str:
    """A well-formed URL with its host and port replaced by an address that refuses; a
    malformed one as it is (the daemon must refuse it, and can reach nothing with it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        return url
    return urlunsplit(parts._replace(netloc=refusing)) if parts.netloc else url


def _refusing_proxies(text: str, refusing: str) -> str:
    """A proxy list (or variable) that the daemon would take, pointed at the refusing
    address; one it refuses as it is."""
    try:
        parse_proxy_list(text)
    except ValueError:
        return text
    return f"http://{refusing}"


def _fence(value: Any, live: Live) -> Any:
    if isinstance(value, dict):
        fenced = {}
        for key, item in value.items():
            name = str(key).lower()
            if isinstance(item, str) and name in PATH_KEYS:
                item = _confine(item, live.sandbox)
            elif isinstance(item, str) and name in URL_KEYS:
                item = _refused(item, live.refusing)
            elif isinstance(item, str) and name in PROXY_KEYS:
                item = _refusing_proxies(item, live.refusing)
            fenced[key] = _fence(item, live)
        return fenced
    if isinstance(value, list):
        return [_fence(item, live) for item in value]
    return value


def _usable(value: Any, live: Live, seeds: Seeds, pick: int, existing: bool) -> Any:
    """The value with its sources and destinations made usable (a source that exists, a
    destination in a directory that does): so generated calls get past validation."""
    if isinstance(value, list):
        return [_usable(item, live, seeds, pick, existing) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = str(key).lower()
        if name == "localfile" and existing:
            item = seeds.local_files[pick % len(seeds.local_files)]
        elif name == "localfile" and isinstance(item, str):
            item = f"{live.dest}/{item.rsplit('/', 1)[-1] or 'f'}"
        elif name == "remoteurl":
            src = live.sandbox / "src" / "a.bin"
            item = (f"http://example.test/{pick}", str(src), f"file://{src}")[pick % 3]
        out[key] = _usable(item, live, seeds, pick, existing)
    return out


def _aim(case: schemathesis.Case, live: Live, seeds: Seeds, pick: int) -> None:
    """Aim the case at the seeded jobs and files some of the time, fence it in, and keep a
    long poll short."""
    if "JobId" in case.path_parameters and pick < len(seeds.jobs):
        case.path_parameters["JobId"] = seeds.jobs[pick]
    if isinstance(case.body, dict | list):
        case.body = _fence(case.body, live)
        if pick % 2 == 0:
            existing = case.operation.path.endswith(("/SetRemoteName", "/GetResponseHeaders"))
            case.body = _usable(case.body, live, seeds, pick // 2, existing)
    query = case.query or {}
    if any(key.lower() == "waitwhile" for key in query):
        for key in [k for k in query if k.lower() == "waittimeout"]:
            with contextlib.suppress(TypeError, ValueError):
                query[key] = min(float(query[key]), 0.05) if float(query[key]) >= 0 else query[key]
        if not any(key.lower() == "waittimeout" for key in query):
            query["WaitTimeout"] = 0.05
        case.query = query


# -- the checks of our own ----------------------------------------------------------------------------

_ERROR = jsonschema.Draft202012Validator(
    {"$ref": "#/components/schemas/Error", "components": DOCUMENT["components"]}
)


def _check_answer(case: schemathesis.Case, response: schemathesis.Response) -> None:
    label = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        body = json.loads(response.content)
        _ERROR.validate(body)
        assert api_http_status(body["ReturnValue"]) == response.status_code, f"{label}: {body}"
        return
    operation = DOCUMENT["paths"][case.operation.path][case.method.lower()]
    content = operation["responses"]["200"]["content"]
    if "application/json" in content:
        validator = jsonschema.Draft202012Validator(
            {**content["application/json"]["schema"], "components": DOCUMENT["components"]}
        )
        validator.validate(json.loads(response.content))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_never_fails_inside_and_answers_as_documented(
    case: schemathesis.Case, live: Live, seeds: Seeds
) -> None:
    # which seed to aim at: a function of the generated data, so a failing case replays
    pick = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 12
    _aim(case, live, seeds, pick)
    response = case.call(base_url=BASE_URL, session=live.session)
    _check_answer(case, response)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


# -- WQL: conditions and queries built from its grammar -----------------------------------------------


def _wql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_PROPERTY = st.builds(
    lambda name, fold: name.lower() if fold else name, st.sampled_from(list(CIM_PROPERTIES)), st.booleans()
)
_OPERAND = st.one_of(
    _PROPERTY,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=6).map(_wql_string),
    st.sampled_from(["TRUE", "FALSE", "NULL", "State", "Files"]),
)
_LEAF = st.one_of(
    st.builds(
        lambda a, op, b: f"{a} {op} {b}",
        _OPERAND,
        st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="]),
        _OPERAND,
    ),
    st.builds(
        lambda a, no, pattern: f"{a} {'NOT ' if no else ''}LIKE {_wql_string(pattern)}",
        _OPERAND,
        st.booleans(),
        st.text(alphabet="aB%_[]^-\\é", max_size=8),
    ),
    st.builds(lambda a, no: f"{a} IS {'NOT ' if no else ''}NULL", _OPERAND, st.booleans()),
)
_CONDITION = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner, st.sampled_from(["AND", "OR", "and"]), inner),
        inner.map(lambda c: f"NOT {c}"),
    ),
    max_leaves=6,
)
#: well-formed conditions, and broken ones: cut short, or any text at all
WQL_CONDITIONS = st.one_of(
    _CONDITION,
    st.builds(lambda c, n: c[:n], _CONDITION, st.integers(min_value=0, max_value=40)),
    st.text(max_size=30),
)


def _check_json_answer(status: int, body: Any, ok_schema: dict[str, Any], label: str) -> None:
    assert status in (200, 400), f"{label}: {status} {body}"
    if status == 400:
        _ERROR.validate(body)
        assert api_http_status(body["ReturnValue"]) == 400, f"{label}: {body}"
    else:
        jsonschema.Draft202012Validator({**ok_schema, "components": DOCUMENT["components"]}).validate(body)


@settings(
    max_examples=EXAMPLES * 10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(condition=WQL_CONDITIONS, select=st.lists(_PROPERTY, max_size=3))
def test_wql_from_its_grammar_never_fails_inside(
    live: Live, seeds: Seeds, condition: str, select: list[str]
) -> None:
    status, body = live.daemon.api("GET", f"{CLASS}?Where={quote(condition, safe='')}")
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/BitsClientJob"}}
    _check_json_answer(status, body, rows, f"Where={condition!r}")
    query = f"SELECT {', '.join(select) or '*'} FROM BitsClientJob WHERE {condition}"
    status, body = live.daemon.api("POST", f"{openapi.BASE}/Query", {"Query": query})
    rows = {"type": "array", "items": {"$ref": "#/components/schemas/QueryRow"}}
    _check_json_answer(status, body, rows, f"Query={query!r}")
