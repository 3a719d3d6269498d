"""WQL through the real daemon: ``?Where=``, ``POST /Query`` and ``openbits query``."""

from __future__ import annotations

import json
from urllib.parse import quote

from tests.support.daemon import CLASS, Daemon

E_INVALIDARG = 0x80070057


def _jobs(daemon: Daemon) -> dict[str, str]:
    ids = {}
    for name, priority in (("nightly-a", 1), ("nightly-b", 3), ("adhoc", 2)):
        ids[name] = daemon.client.create_job(name, priority=priority).job_id
    return ids


def test_where_filters_the_list(daemon: Daemon) -> None:
    ids = _jobs(daemon)
    where = quote("DisplayName LIKE 'NIGHTLY%' AND Priority > 1")  # strings compare case-insensitively
    status, body = daemon.api("GET", f"{CLASS}?Where={where}")
    assert status == 200, body
    assert [j["JobId"] for j in body] == [ids["nightly-b"]]
    either = daemon.client.list_jobs(where="Priority = 1 OR Priority = 2")
    assert {j.job_id for j in either} == {ids["nightly-a"], ids["adhoc"]}


def test_query_selects_the_properties_asked_for(daemon: Daemon) -> None:
    ids = _jobs(daemon)
    rows = daemon.client.query(
        "select jobid, DISPLAYNAME from bitsclientjob where not (DisplayName like 'night%')"
    )
    assert rows == [{"JobId": ids["adhoc"], "DisplayName": "adhoc"}]
    assert len(daemon.client.query("SELECT * FROM BitsClientJob WHERE Description IS NOT NULL")) == 3


def test_bad_wql_is_e_invalidarg_with_the_position(daemon: Daemon) -> None:
    for text in ("SELECT Nope FROM BitsClientJob", "SELECT * FROM BitsClientJob WHERE State = 'x", "DELETE"):
        status, body = daemon.api("POST", "/root/microsoft/bits/Query", {"Query": text})
        assert status == 400, (text, body)
        assert int(body["ErrorCode"], 16) == E_INVALIDARG
        assert "at " in body["Message"], body  # where the query went wrong
    status, body = daemon.api("GET", f"{CLASS}?Where={quote('State ==')}")
    assert (status, int(body["ErrorCode"], 16)) == (400, E_INVALIDARG)


def test_openbits_query_prints_a_table_or_json(daemon: Daemon) -> None:
    ids = _jobs(daemon)
    wql = "SELECT JobId, Priority FROM BitsClientJob WHERE DisplayName = 'adhoc'"
    table = daemon.cli("query", wql, check=True).stdout.splitlines()
    assert table[0].split() == ["JobId", "Priority"]
    assert table[1].split() == [ids["adhoc"], "2"]
    assert json.loads(daemon.cli("query", wql, "--json", check=True).stdout) == [
        {"JobId": ids["adhoc"], "Priority": 2}
    ]
    bad = daemon.cli("query", "SELECT")
    assert bad.returncode != 0 and "at " in bad.stderr
