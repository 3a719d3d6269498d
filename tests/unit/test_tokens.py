"""api/tokens.py on a real SQLite store: scopes, expiry, one answer for every invalid token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.api.tokens import Scope, Tokens
from openbits.caller import Caller
from openbits.errors import InvalidArgument
from openbits.store.sqlite import SqliteStore

ADMIN = Caller(user="root", uid=0, gid=0, is_admin=True)
S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now_ns


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "jobs.sqlite"))
    yield s
    s.close()


def test_a_scope_caps_an_administrator_and_never_widens_a_user(store: SqliteStore) -> None:
    tokens = Tokens(store)
    for scope, admin in ((Scope.READ, False), (Scope.SUBMIT, False), (Scope.ADMIN, True)):
        token, secret = tokens.issue(ADMIN, "", scope)
        found = tokens.authenticate(secret)
        assert found is not None and found == token and found.caller(ADMIN).is_admin is admin
    user = Caller(user="u", uid=1000, gid=1000)
    token, _ = tokens.issue(user, "", Scope.ADMIN)
    assert token.caller(user).is_admin is False
    assert Scope.SUBMIT.covers(Scope.READ) and not Scope.READ.covers(Scope.SUBMIT)
    with pytest.raises(InvalidArgument):
        Scope.parse("root")


def test_an_expired_token_is_refused_then_swept_and_a_restart_keeps_scope_and_expiry(
    store: SqliteStore,
) -> None:
    clock = Clock()
    tokens = Tokens(store, clock=clock)
    short, short_secret = tokens.issue(ADMIN, "short", Scope.READ, lifetime_s=60)
    kept, kept_secret = tokens.issue(ADMIN, "kept", Scope.SUBMIT)
    assert short.expires_ns == clock.now_ns + 60 * S and kept.expires_ns == 0
    reloaded = Tokens(store, clock=clock)
    assert reloaded.authenticate(short_secret) == short
    clock.now_ns += 60 * S
    assert reloaded.authenticate(short_secret) is None
    assert reloaded.authenticate(kept_secret) == kept
    assert [t.token_id for t in reloaded.listed(ADMIN, all_users=False)] == [kept.token_id]
    assert [row[0] for row in store.load_tokens()] == [kept.token_id]  # deleted from the store
    for presented in ("", "obt_", "obt_" + "x" * 5000, kept_secret + "x", "Bearer " + kept_secret):
        assert reloaded.authenticate(presented) is None
    with pytest.raises(InvalidArgument):
        tokens.issue(ADMIN, "", Scope.READ, lifetime_s=0)
