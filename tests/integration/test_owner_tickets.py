"""The system daemon answers Negotiate with the job owner's own Kerberos tickets (SPEC §7:
NTLM/Negotiate credentials with no names use "a Kerberos ccache of the owner"; issue 13).

A root daemon, two real Unix users, the session's MIT KDC and Apache.  Each user runs
``kinit`` himself, into his default cache ``/tmp/krb5cc_<uid>``; the daemon reads it with
his rights (``transfer/tickets.py``) and proves it by the principal and mechanism Apache
logs.  A cache another user planted at that name is refused, one user's tickets never
answer for the other's job, and the error says which cache was missing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.model import JobState
from tests.support.apache import Apache
from tests.support.daemon import CLASS
from tests.support.kdc import Kdc
from tests.support.users import NEEDS_TWO_USERS, Site, User, open_site, setpriv

pytestmark = [NEEDS_TWO_USERS]

NAME = "tickets.bin"
BODY = b"for the owner's own tickets only\n" * 500
BOB_PASSWORD = "b0bs-Kerberos-pw"
HTTP_ERROR_401 = 0x80190191
HTTP_ERROR_407 = 0x80190197
REMOTE_FILE = 5


@pytest.fixture
def realm_site(kdc: Kdc, apache: Apache, tmp_path: Path) -> Iterator[Site]:
    """Two users and a root daemon inside the realm (its krb5.conf), no tickets anywhere."""
    (apache.www / NAME).write_bytes(BODY)
    with open_site(tmp_path / "state", env=kdc.client_env()) as site:
        caches = [default_cache(site.alice), default_cache(site.bob)]
        try:
            for cache in caches:
                cache.unlink(missing_ok=True)  # (a stale one of an earlier user of this uid)
            yield site
        finally:
            for cache in caches:
                cache.unlink(missing_ok=True)


def default_cache(user: User) -> Path:
    return Path(f"/tmp/krb5cc_{user.uid}")


def kinit_as(site: Site, user: User, kdc: Kdc, principal: str, password: str, cache: Path) -> None:
    """``kinit`` run by ``user`` himself (his uid and groups), into ``cache``, with a copy of
    the realm's krb5.conf he can read (the KDC's directory is root's alone)."""
    conf = site.scratch / "krb5.conf"
    if not conf.exists():
        conf.write_bytes(kdc.krb5_conf.read_bytes())
        conf.chmod(0o644)
    env = {**os.environ, "KRB5_CONFIG": str(conf), "KRB5CCNAME": f"FILE:{cache}"}
    done = subprocess.run(
        [*setpriv(user), "kinit", principal],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=15,
    )
    assert done.returncode == 0, done.stderr


def negotiate_job(site: Site, user: User, url: str, proxy: str | None = None) -> str:
    """A job of ``user`` for ``url`` whose Negotiate credential has no names (server, or the
    proxy's when ``proxy`` is its only proxy), resumed."""
    local = user.home / f"out-{os.urandom(4).hex()}.bin"
    job = site.new_job(user, url, local)
    target = 0
    if proxy is not None:
        target = 1
        status, body = site.call(
            user, "POST", f"{CLASS}/{job}/SetProxySettings", {"ProxyUsage": 2, "ProxyList": proxy}
        )
        assert status == 200 and body["ReturnValue"] == 0, body
    credential: dict[str, Any] = {"Target": target, "Scheme": 3, "UserName": None, "Password": None}
    status, body = site.call(user, "POST", f"{CLASS}/{job}/SetCredentials", credential)
    assert status == 200 and body["ReturnValue"] == 0, body
    site.resume(user, job)
    return job


def failed(site: Site, job: str, hresult: int = HTTP_ERROR_401) -> str:
    """The job ended in ERROR with ``hresult``; its error's description."""
    site.daemon.wait_state(job, JobState.ERROR)
    error = site.daemon.client.get_error(job)
    assert (error.hresult, int(error.context)) == (hresult, REMOTE_FILE)
    return error.error_description


def transferred_as(site: Site, apache: Apache, job: str, principal: str, path: str) -> None:
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    seen = [r for r in apache.requests() if r.uri.endswith(path) and r.status == 200]
    assert seen, "Apache logged no success"
    assert (seen[-1].user, seen[-1].mech) == (principal, "Negotiate/krb5")


def test_the_owners_own_tickets_answer_negotiate(realm_site: Site, kdc: Kdc, apache: Apache) -> None:
    site, alice, bob = realm_site, realm_site.alice, realm_site.bob
    path = f"/negotiate/{NAME}"
    url = apache.origin_url + path

    # no cache yet: ERROR 401, and the description says where the daemon looked
    description = failed(site, negotiate_job(site, alice, url))
    assert default_cache(alice).name in description

    # a cache bob planted at alice's name (bob's tickets, readable by her) is not hers
    bob_principal = kdc.add_principal(f"bob{bob.uid}", BOB_PASSWORD)
    planted = default_cache(alice)
    kinit_as(site, bob, kdc, bob_principal, BOB_PASSWORD, planted)
    planted.chmod(0o644)
    description = failed(site, negotiate_job(site, alice, url))
    assert "not his own" in description
    planted.unlink()

    # her own kinit: her tickets, Kerberos proven by Apache
    kinit_as(site, alice, kdc, kdc.principal, kdc.password, default_cache(alice))
    transferred_as(site, apache, negotiate_job(site, alice, url), kdc.principal, path)

    # bob has none of his own: hers never answer for him
    failed(site, negotiate_job(site, bob, url))

    # then his own, through the Negotiate proxy (407), as himself
    kinit_as(site, bob, kdc, bob_principal, BOB_PASSWORD, default_cache(bob))
    proxy = apache.proxy_urls["negotiate"].removeprefix("http://")
    job = negotiate_job(site, bob, f"http://127.0.0.1:{apache.port}/{NAME}", proxy=proxy)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    proxied = [r for r in apache.requests() if r.uri.endswith(f"/{NAME}") and r.port != apache.port]
    assert proxied and (proxied[-1].user, proxied[-1].mech) == (bob_principal, "Negotiate/krb5")


def test_a_daemon_told_to_read_no_cache_says_so(kdc: Kdc, apache: Apache, tmp_path: Path) -> None:
    (apache.www / NAME).write_bytes(BODY)
    with open_site(tmp_path / "state", config={"owner_ccache": ""}, env=kdc.client_env()) as site:
        cache = default_cache(site.alice)
        with contextlib.ExitStack() as stack:
            stack.callback(cache.unlink, missing_ok=True)
            kinit_as(site, site.alice, kdc, kdc.principal, kdc.password, cache)
            job = negotiate_job(site, site.alice, apache.origin_url + f"/negotiate/{NAME}")
            assert "read no owner's ticket cache" in failed(site, job)
