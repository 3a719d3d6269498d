"""The identity methods of the service (SPEC §7): SetCredentials, RemoveCredentials,
SetProxySettings, CreateJob's ProxyEnvironment and what TakeOwnership takes away, through
the real Service and SQLite store of tests/support/driver.py (no daemon, no API)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from openbits.caller import Caller
from openbits.errors import BitsError
from openbits.model import AuthScheme, AuthTarget, Job, JobState, ProxyUsage, Secret
from openbits.transfer.proxylist import LIST_MAX_CHARS
from tests.support.driver import Driver

ALICE = Caller("alice", 4101, 4101)
BOB = Caller("bob", 4102, 4102)
#: an administrator who is not root: may read and take Alice's jobs, not set her secrets
ADMIN = Caller("admin", 4103, 4103, is_admin=True)
ROOT = Caller("root", 0, 0, is_admin=True)
PASSWORD = "pw-Identity-3c1e!"
BASIC = {"Target": 0, "Scheme": 0, "UserName": "alice", "Password": PASSWORD}


async def _job(d: Driver, caller: Caller = ALICE, **props: Any) -> Job:
    return await d.service.create_job(caller, {"DisplayName": "identity", **props})


async def _call(d: Driver, job: Job, method: str, raw: Any = None, caller: Caller = ALICE) -> dict[str, Any]:
    return await d.service.invoke(caller, job.job_id, method, raw)


async def _refused(d: Driver, job: Job, method: str, raw: Any = None, caller: Caller = ALICE) -> str:
    """The name of the HRESULT the call is refused with; the password is in no message."""
    with pytest.raises(BitsError) as info:
        await _call(d, job, method, raw, caller)
    assert PASSWORD not in str(info.value)
    return info.value.name


def _stored(d: Driver, job: Job) -> Job:
    loaded = d.store.load_job(job.job_id)
    assert loaded is not None
    return loaded


async def test_set_credentials_stores_one_per_target_and_scheme_replaced_when_set_again(
    tmp_path: Path,
) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        assert await _call(d, job, "SetCredentials", BASIC) == {"ReturnValue": 0}
        assert await _call(d, job, "setcredentials", {**BASIC, "Password": "second"}) == {"ReturnValue": 0}
        ntlm = {"Target": 1, "Scheme": 2, "UserName": None, "Password": None}  # the default credentials
        await _call(d, job, "SetCredentials", ntlm)
        await _call(
            d, job, "SetCredentials", {"target": 1, "scheme": 3, "username": "EXAMPLE\\bob", "password": ""}
        )
        for found in (job, _stored(d, job)):
            assert set(found.credentials) == {
                (AuthTarget.SERVER, AuthScheme.BASIC),
                (AuthTarget.PROXY, AuthScheme.NTLM),
                (AuthTarget.PROXY, AuthScheme.NEGOTIATE),
            }
            basic = found.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)]
            assert (basic.user_name, basic.password) == ("alice", Secret("second"))
            default = found.credentials[(AuthTarget.PROXY, AuthScheme.NTLM)]
            assert (default.user_name, default.password) == (None, None)
            assert found.credentials[(AuthTarget.PROXY, AuthScheme.NEGOTIATE)].password == Secret("")
        # the instance names them, without a password
        assert job.to_cim()["Credentials"] == [
            {"Target": 0, "Scheme": 0, "UserName": "alice"},
            {"Target": 1, "Scheme": 2, "UserName": None},
            {"Target": 1, "Scheme": 3, "UserName": "EXAMPLE\\bob"},
        ]
        assert "second" not in repr(job) and "second" not in str(job.to_cim())


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ({**BASIC, "Target": 2}, "BG_E_INVALID_AUTH_TARGET"),
        ({**BASIC, "Target": 70000}, "BG_E_INVALID_AUTH_TARGET"),
        ({**BASIC, "Scheme": 5}, "BG_E_INVALID_AUTH_SCHEME"),
        ({**BASIC, "Scheme": 4}, "E_NOTIMPL"),  # Passport
        ({**BASIC, "Target": None}, "E_INVALIDARG"),
        ({"Scheme": 0, "UserName": "a", "Password": PASSWORD}, "E_INVALIDARG"),
        ({**BASIC, "Target": -1}, "E_INVALIDARG"),
        ({**BASIC, "Scheme": "basic"}, "E_INVALIDARG"),
        ({**BASIC, "UserName": None}, "E_INVALIDARG"),  # Basic needs both names
        ({**BASIC, "Password": None}, "E_INVALIDARG"),
        ({**BASIC, "UserName": ""}, "E_INVALIDARG"),
        ({**BASIC, "Scheme": 1, "Password": None}, "E_INVALIDARG"),  # so does Digest
        ({"Target": 0, "Scheme": 2, "UserName": None, "Password": PASSWORD}, "E_INVALIDARG"),
        ({"Target": 0, "Scheme": 3, "UserName": "bob", "Password": None}, "E_INVALIDARG"),
        ({**BASIC, "Password": 1234}, "E_INVALIDARG"),
        ({**BASIC, "Password": PASSWORD + "\x00"}, "E_INVALIDARG"),
        ({**BASIC, "UserName": "u" * 301}, "BG_E_USERNAME_TOO_LARGE"),
        ({**BASIC, "Password": PASSWORD * 5000}, "BG_E_PASSWORD_TOO_LARGE"),
        ({**BASIC, "Realm": "x"}, "E_INVALIDARG"),
        ("not an object", "E_INVALIDARG"),
    ],
)
async def test_set_credentials_refusals_change_nothing(tmp_path: Path, raw: Any, name: str) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetCredentials", {**BASIC, "UserName": "first"})
        modified = job.modified_ns
        assert await _refused(d, job, "SetCredentials", raw) == name
        assert [c.user_name for c in job.credentials.values()] == ["first"]
        assert job.modified_ns == modified
        assert [c.user_name for c in _stored(d, job).credentials.values()] == ["first"]


async def test_the_limits_of_user_name_and_password_are_taken(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetCredentials", {**BASIC, "UserName": "u" * 300, "Password": "p" * 65_535})
        assert _stored(d, job).credentials[(AuthTarget.SERVER, AuthScheme.BASIC)].password == Secret(
            "p" * 65_535
        )


async def test_remove_credentials_answers_s_false_when_none_was_set(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetCredentials", BASIC)
        await _call(d, job, "SetCredentials", {**BASIC, "Scheme": 1})
        assert await _call(d, job, "RemoveCredentials", {"Target": 0, "Scheme": 0}) == {"ReturnValue": 0}
        assert await _call(d, job, "RemoveCredentials", {"Target": 0, "Scheme": 0}) == {"ReturnValue": 1}
        assert await _call(d, job, "RemoveCredentials", {"Target": 1, "Scheme": 1}) == {"ReturnValue": 1}
        assert await _call(d, job, "RemoveCredentials", {"Target": 1, "Scheme": 4}) == {"ReturnValue": 1}
        assert set(_stored(d, job).credentials) == {(AuthTarget.SERVER, AuthScheme.DIGEST)}
        assert (
            await _refused(d, job, "RemoveCredentials", {"Target": 2, "Scheme": 0})
            == "BG_E_INVALID_AUTH_TARGET"
        )
        assert (
            await _refused(d, job, "RemoveCredentials", {"Target": 0, "Scheme": 9})
            == "BG_E_INVALID_AUTH_SCHEME"
        )
        assert await _refused(d, job, "RemoveCredentials", {"Target": 0}) == "E_INVALIDARG"
        assert set(job.credentials) == {(AuthTarget.SERVER, AuthScheme.DIGEST)}


async def test_set_proxy_settings_keeps_the_lists_as_given_with_override_only(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        given = "http=proxy1:80;https://proxy2:8443 socks5h://socks:1080"
        override = {
            "ProxyUsage": 2,
            "ProxyList": given,
            "ProxyBypassList": "<local> *.example.com 10.0.0.0/8",
        }
        assert await _call(d, job, "SetProxySettings", override) == {"ReturnValue": 0}
        for found in (job, _stored(d, job)):
            assert (found.proxy_usage, found.proxy_list, found.proxy_bypass_list) == (
                ProxyUsage.OVERRIDE,
                given,
                "<local> *.example.com 10.0.0.0/8",
            )
        cim = job.to_cim()
        assert (cim["ProxyUsage"], cim["ProxyList"], cim["ProxyBypassList"]) == (
            2,
            given,
            override["ProxyBypassList"],
        )
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 2, "ProxyList": "proxy:3128"})
        assert (job.proxy_list, job.proxy_bypass_list) == ("proxy:3128", None)
        for usage in (ProxyUsage.AUTODETECT, ProxyUsage.NO_PROXY, ProxyUsage.PRECONFIG):
            await _call(d, job, "SetProxySettings", {"ProxyUsage": int(usage)})  # the lists go
            found = _stored(d, job)
            assert (found.proxy_usage, found.proxy_list, found.proxy_bypass_list) == (usage, None, None)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ({"ProxyUsage": 4}, "E_NOTIMPL"),
        ({}, "E_INVALIDARG"),
        ({"ProxyUsage": 2}, "E_INVALIDARG"),  # OVERRIDE needs a list
        ({"ProxyUsage": 2, "ProxyBypassList": "<local>"}, "E_INVALIDARG"),
        ({"ProxyUsage": 2, "ProxyList": ""}, "E_INVALIDARG"),
        ({"ProxyUsage": 2, "ProxyList": "ftp://proxy:21"}, "E_INVALIDARG"),
        ({"ProxyUsage": 2, "ProxyList": "proxy:99999"}, "E_INVALIDARG"),
        ({"ProxyUsage": 2, "ProxyList": "proxy:3128", "ProxyBypassList": "bad/host"}, "E_INVALIDARG"),
        ({"ProxyUsage": 1, "ProxyList": "proxy:3128"}, "E_INVALIDARG"),  # lists with OVERRIDE only
        ({"ProxyUsage": 3, "ProxyBypassList": "<local>"}, "E_INVALIDARG"),
        ({"ProxyUsage": 2, "ProxyList": "p:1 " * (LIST_MAX_CHARS // 4 + 1)}, "BG_E_PROXY_LIST_TOO_LARGE"),
        (
            {"ProxyUsage": 2, "ProxyList": "p:1", "ProxyBypassList": "h " * (LIST_MAX_CHARS // 2 + 1)},
            "BG_E_PROXY_BYPASS_LIST_TOO_LARGE",
        ),
    ],
)
async def test_set_proxy_settings_refusals_change_nothing(tmp_path: Path, raw: Any, name: str) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 2, "ProxyList": "before:3128"})
        assert await _refused(d, job, "SetProxySettings", raw) == name
        for found in (job, _stored(d, job)):
            assert (found.proxy_usage, found.proxy_list) == (ProxyUsage.OVERRIDE, "before:3128")


async def test_a_list_of_exactly_32_kib_is_taken(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        proxies = ("p:1 " * (LIST_MAX_CHARS // 4))[: LIST_MAX_CHARS - 1] + "1"
        assert len(proxies) == LIST_MAX_CHARS
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 2, "ProxyList": proxies})
        assert _stored(d, job).proxy_list == proxies


IDENTITY_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("SetCredentials", BASIC),
    ("RemoveCredentials", {"Target": 0, "Scheme": 0}),
    ("SetProxySettings", {"ProxyUsage": 1}),
]


@pytest.mark.parametrize(("method", "raw"), IDENTITY_CALLS)
async def test_only_the_owner_or_root_may_call_them(tmp_path: Path, method: str, raw: dict[str, Any]) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        assert await _refused(d, job, method, raw, caller=BOB) == "BG_E_NOT_FOUND"  # not even seen
        assert await _refused(d, job, method, raw, caller=ADMIN) == "E_ACCESSDENIED"
        assert job.credentials == {} and job.proxy_usage is ProxyUsage.PRECONFIG
        assert (await _call(d, job, method, raw, caller=ROOT))["ReturnValue"] in (0, 1)


@pytest.mark.parametrize(("method", "raw"), IDENTITY_CALLS)
async def test_legal_in_every_state_but_cancelled_and_acknowledged(
    tmp_path: Path, method: str, raw: dict[str, Any]
) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        for state in (s for s in JobState if not s.is_final):
            job.state = state  # (the state machine's own moves are tested elsewhere)
            assert (await _call(d, job, method, raw))["ReturnValue"] in (0, 1), state
        job.state = JobState.SUSPENDED
        await d.service.set_job_state(ALICE, job.job_id, {"JobState": 0})  # cancel
        assert await _refused(d, job, method, raw) == "BG_E_INVALID_STATE"


async def test_a_call_the_store_cannot_record_changes_nothing(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetCredentials", {**BASIC, "UserName": "first"})
        # another connection holds the write lock: the store's write fails at once
        d.store._db.execute("PRAGMA busy_timeout=0")
        blocker = sqlite3.connect(d.config.db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            for method, raw in (
                ("SetCredentials", BASIC),
                ("RemoveCredentials", {"Target": 0, "Scheme": 0}),
                ("SetProxySettings", {"ProxyUsage": 2, "ProxyList": "proxy:3128"}),
            ):
                assert await _refused(d, job, method, raw) == "E_FAIL", method
                assert [c.user_name for c in job.credentials.values()] == ["first"]
                assert (job.proxy_usage, job.proxy_list) == (ProxyUsage.PRECONFIG, None)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


async def test_take_ownership_takes_away_the_old_owners_secrets(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d, ProxyEnvironment={"https_proxy": "http://alice:pw@proxy:3128"})
        await _call(d, job, "SetCredentials", BASIC)
        await _call(d, job, "SetCustomHeaders", {"CustomHeaders": "X-Key: k\r\n"})
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 2, "ProxyList": "proxy:3128"})
        assert job.proxy_environment is not None
        assert await _call(d, job, "TakeOwnership", None, caller=ADMIN) == {"ReturnValue": 0}
        for found in (job, _stored(d, job)):
            assert (found.owner_uid, found.credentials, found.custom_headers) == (ADMIN.uid, {}, None)
            assert (found.client_certificate, found.proxy_environment) == (None, None)
            assert (found.proxy_usage, found.proxy_list) == (
                ProxyUsage.OVERRIDE,
                "proxy:3128",
            )  # not a secret


async def test_create_job_keeps_the_callers_proxy_environment(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        env = {
            "HTTP_PROXY": "http://upper:3128",
            "http_proxy": "http://lower:3128",
            "HTTPS_PROXY": "http://secure:3128",
            "no_proxy": "localhost,.internal",
            "all_proxy": "",
        }
        job = await _job(d, ProxyEnvironment=env)
        expected = {
            "http_proxy": "http://lower:3128",
            "https_proxy": "http://secure:3128",
            "no_proxy": "localhost,.internal",
        }
        assert job.proxy_environment == expected  # lower case wins, as in curl
        assert _stored(d, job).proxy_environment == expected
        assert "ProxyEnvironment" not in job.to_cim() and "lower:3128" not in str(job.to_cim())
        assert (await _job(d, ProxyEnvironment={})).proxy_environment is None
        assert (await _job(d, ProxyEnvironment=None)).proxy_environment is None
        for bad in (
            {"ftp_proxy": "x"},
            {"Http_Proxy": "x"},
            {"http_proxy": 1},
            ["http_proxy"],
            {"no_proxy": "a\x00"},
        ):
            with pytest.raises(BitsError) as info:
                await _job(d, ProxyEnvironment=bad)
            assert info.value.name == "E_INVALIDARG", bad
        with pytest.raises(BitsError) as info:
            await _job(d, ProxyEnvironment={"no_proxy": "h," * LIST_MAX_CHARS})
        assert info.value.name == "BG_E_STRING_TOO_LONG"


async def test_custom_headers_show_to_their_owner_alone(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await _call(d, job, "SetCustomHeaders", {"CustomHeaders": "X-Key: s3cr3t\r\n"})
        assert job.to_cim(viewer_uid=ALICE.uid)["CustomHeaders"] == "X-Key: s3cr3t\r\n"
        assert job.cim_view(viewer_uid=ALICE.uid)["CustomHeaders"] == "X-Key: s3cr3t\r\n"
        for viewer in (ADMIN, ROOT):
            assert "CustomHeaders" not in job.to_cim(viewer_uid=viewer.uid)
            assert job.cim_view(viewer_uid=viewer.uid)["CustomHeaders"] is None
            assert "s3cr3t" not in str(dict(job.cim_view(viewer_uid=viewer.uid)))


async def test_new_proxy_settings_send_a_running_transfer_back_to_the_queue(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        job.state = JobState.TRANSFERRING  # (as the scheduler leaves a running job)
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 0})  # the same settings: it runs on
        assert job.state is JobState.TRANSFERRING
        await _call(d, job, "SetProxySettings", {"ProxyUsage": 1})
        assert job.state is JobState.QUEUED and _stored(d, job).proxy_usage is ProxyUsage.NO_PROXY
        job.state = JobState.CONNECTING
        await _call(d, job, "SetCredentials", BASIC)  # credentials are asked for later: it runs on
        assert job.state is JobState.CONNECTING


async def test_remove_client_certificate_on_a_cancelled_job_is_an_invalid_state(tmp_path: Path) -> None:
    async with Driver(tmp_path) as d:
        job = await _job(d)
        await d.service.set_job_state(ALICE, job.job_id, {"JobState": 0})  # cancel
        assert await _refused(d, job, "RemoveClientCertificate", {}) == "BG_E_INVALID_STATE"
