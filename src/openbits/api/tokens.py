"""Bearer tokens: who a request on the TCP listener (``openbits serve --listen``) is, and
how much of that user's rights it carries.

Over the Unix socket the kernel says who calls (SO_PEERCRED); over TCP nothing does, so
every TCP request carries ``Authorization: Bearer <token>``.  A user gets a token over the
Unix socket (``POST /tokens``, ``openbits token create``): it acts as that user until it is
revoked (``DELETE /tokens/{TokenId}``) or expires (``ExpiresAfter``).  Tokens are managed
only over the Unix socket: a token cannot mint or list tokens.

A token has a scope that caps, never widens, its user's rights: ``read`` (GET, Query, the
event stream, the Get* methods), ``submit`` (also create and manage the user's own jobs) and
``admin`` (all the user may do: an administrator's admin token acts on every user's jobs
and the policy).  A read or submit token of an administrator is no administrator.

A token is shown once, when it is issued; the store keeps only its SHA-256 (a token is 256
random bits, so a fast hash is enough), and no interface returns or logs it again.  A
presented token is hashed and looked up by its digest, then compared in constant time with
``hmac.compare_digest``; an unknown, revoked or expired token takes the same steps and gets
the same answer, which names no user.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from openbits.caller import Caller
from openbits.errors import AccessDenied, InvalidArgument, LimitExceeded, NotFound, StringTooLong
from openbits.model import filetime_from_unix_ns
from openbits.store.sqlite import SqliteStore, TokenRow

PREFIX = "obt_"
DESCRIPTION_MAX = 256
#: the longest a token may be issued for (ExpiresAfter), in seconds: ten years
LIFETIME_MAX_S = 10 * 366 * 86400
#: what a presented token longer than this is (no token is): not hashed in full
_PRESENTED_MAX = 256
#: compared against when no token has the presented digest, so a miss costs what a hit does
_NO_DIGEST = "0" * 64


class NotAuthenticated(AccessDenied):
    """A TCP request without a valid bearer token (HTTP 401)."""


class TooManyFailures(AccessDenied):
    """An address that presented wrong tokens too often, told to come back later (HTTP 429,
    ``Retry-After``); its tokens are not even looked at meanwhile."""


class Scope(StrEnum):
    """What a token may do, each scope including the ones before it."""

    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)

    def covers(self, needed: Scope) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, text: str) -> Scope:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InvalidArgument(f"Scope must be read, submit or admin, not {text!r}") from None


#: the scope of a token issued without one (a token's rights are asked for, not assumed)
DEFAULT_SCOPE = Scope.SUBMIT


@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    digest: str
    uid: int
    description: str
    created_ns: int
    scope: Scope = Scope.ADMIN
    #: Unix time (ns) from which the token is refused; 0: never
    expires_ns: int = 0

    def expired(self, now_ns: int) -> bool:
        return self.expires_ns != 0 and now_ns >= self.expires_ns

    def caller(self, user: Caller) -> Caller:
        """``user`` as this token may act: only an admin-scope token keeps administrator rights."""
        if self.scope is Scope.ADMIN or not user.is_admin:
            return user
        return Caller(user=user.user, uid=user.uid, gid=user.gid, is_admin=False)

    def to_cim(self, user: str) -> dict[str, Any]:
        return {
            "TokenId": self.token_id,
            "Owner": user,
            "Description": self.description,
            "CreationTime": filetime_from_unix_ns(self.created_ns),
            "Scope": self.scope.value,
            "ExpirationTime": filetime_from_unix_ns(self.expires_ns),  # 0: never
        }

    def row(self) -> TokenRow:
        return (
            self.token_id,
            self.digest,
            self.uid,
            self.description,
            self.created_ns,
            self.scope.value,
            self.expires_ns,
        )

    @classmethod
    def of_row(cls, row: TokenRow) -> Token:
        token_id, digest, uid, description, created_ns, scope, expires_ns = row
        return cls(token_id, digest, uid, description, created_ns, Scope(scope), expires_ns)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode(errors="replace")).hexdigest()


class Tokens:
    """The tokens of the store, held in memory (a user has a few at most); expired ones are
    deleted when tokens are issued or listed."""

    def __init__(
        self, store: SqliteStore, max_per_user: int = 16, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.store = store
        self.max_per_user = max_per_user
        self._clock = clock
        self._by_digest: dict[str, Token] = {}
        for row in store.load_tokens():
            token = Token.of_row(row)
            self._by_digest[token.digest] = token
        self._sweep()

    def _sweep(self) -> None:
        now = self._clock()
        for token in [t for t in self._by_digest.values() if t.expired(now)]:
            self.store.delete_token(token.token_id)
            del self._by_digest[token.digest]

    def issue(
        self,
        caller: Caller,
        description: str,
        scope: Scope = DEFAULT_SCOPE,
        lifetime_s: int | None = None,
    ) -> tuple[Token, str]:
        """A new token for ``caller``: (its record, the token itself, shown this once).
        ``lifetime_s``: seconds until it expires (None: it does not)."""
        if len(description) > DESCRIPTION_MAX:
            raise StringTooLong(f"Description is longer than {DESCRIPTION_MAX} characters")
        if lifetime_s is not None and not 0 < lifetime_s <= LIFETIME_MAX_S:
            raise InvalidArgument(f"ExpiresAfter must be 1 to {LIFETIME_MAX_S} seconds")
        self._sweep()
        held = sum(1 for t in self._by_digest.values() if t.uid == caller.uid)
        if held >= self.max_per_user:
            raise LimitExceeded(f"{caller.user} already has {held} tokens (limit {self.max_per_user})")
        secret = PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        token = Token(
            token_id="{" + str(uuid.uuid4()).upper() + "}",
            digest=_digest(secret),
            uid=caller.uid,
            description=description,
            created_ns=now,
            scope=scope,
            expires_ns=0 if lifetime_s is None else now + lifetime_s * 1_000_000_000,
        )
        self.store.add_token(token.row())
        self._by_digest[token.digest] = token
        return token, secret

    def listed(self, caller: Caller, all_users: bool) -> list[Token]:
        if all_users and not caller.is_admin:
            raise AccessDenied("only administrators may list every user's tokens")
        self._sweep()
        return [t for t in self._by_digest.values() if all_users or t.uid == caller.uid]

    def revoke(self, caller: Caller, token_id: str) -> None:
        """Revoke one of the caller's tokens (an administrator: anyone's)."""
        for token in self._by_digest.values():
            if token.token_id.lower().strip("{}") == token_id.lower().strip("{}") and (
                token.uid == caller.uid or caller.is_admin
            ):
                self.store.delete_token(token.token_id)
                del self._by_digest[token.digest]
                return
        raise NotFound(f"no token {token_id}")

    def authenticate(self, secret: str) -> Token | None:
        """The token ``secret`` is, if it is one, unrevoked and unexpired; else None.

        Every presented value takes the same steps (hash, look up, constant-time compare,
        expiry), a miss comparing against a dummy digest: the answer's timing tells an
        unknown token from a revoked or expired one no better than its body does."""
        digest = _digest(secret[:_PRESENTED_MAX])
        token = self._by_digest.get(digest)
        same = hmac.compare_digest(token.digest if token is not None else _NO_DIGEST, digest)
        valid = same and len(secret) <= _PRESENTED_MAX and secret.startswith(PREFIX)
        if token is None or not valid or token.expired(self._clock()):
            return None
        return token

    def uid_for(self, secret: str) -> int | None:
        """The uid a presented token acts as; None for an unknown, revoked or expired one."""
        token = self.authenticate(secret)
        return None if token is None else token.uid


TOKENS_KEY = web.AppKey("tokens", Tokens)


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
