"""Bearer tokens: who a request on the TCP listener (``openbits serve --listen``) is.

Over the Unix socket the kernel says who calls (SO_PEERCRED); over TCP nothing does, so
every TCP request carries ``Authorization: Bearer <token>``.  A user gets a token over the
Unix socket (``POST /tokens``, ``openbits token create``): it acts as that user, with that
user's rights, until it is revoked (``DELETE /tokens/{TokenId}``).  Tokens are managed only
over the Unix socket: a token cannot mint or list tokens.

A token is shown once, when it is issued; the store keeps only its SHA-256 (a token is 256
random bits, so a fast hash is enough), and no interface returns or logs it again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from openbits.caller import Caller
from openbits.errors import AccessDenied, LimitExceeded, NotFound, StringTooLong
from openbits.model import filetime_from_unix_ns
from openbits.store.sqlite import SqliteStore, TokenRow

PREFIX = "obt_"
DESCRIPTION_MAX = 256


class NotAuthenticated(AccessDenied):
    """A TCP request without a valid bearer token (HTTP 401)."""


@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    digest: str
    uid: int
    description: str
    created_ns: int

    def to_cim(self, user: str) -> dict[str, Any]:
        return {
            "TokenId": self.token_id,
            "Owner": user,
            "Description": self.description,
            "CreationTime": filetime_from_unix_ns(self.created_ns),
        }


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The tokens of the store, held in memory (a user has a few at most)."""

    def __init__(self, store: SqliteStore, max_per_user: int = 16) -> None:
        self.store = store
        self.max_per_user = max_per_user
        self._by_digest: dict[str, Token] = {}
        for row in store.load_tokens():
            token = Token(*row)
            self._by_digest[token.digest] = token

    def issue(self, caller: Caller, description: str) -> tuple[Token, str]:
        """A new token for ``caller``: (its record, the token itself, shown this once)."""
        if len(description) > DESCRIPTION_MAX:
            raise StringTooLong(f"Description is longer than {DESCRIPTION_MAX} characters")
        held = sum(1 for t in self._by_digest.values() if t.uid == caller.uid)
        if held >= self.max_per_user:
            raise LimitExceeded(f"{caller.user} already has {held} tokens (limit {self.max_per_user})")
        secret = PREFIX + secrets.token_urlsafe(32)
        token = Token(
            token_id="{" + str(uuid.uuid4()).upper() + "}",
            digest=_digest(secret),
            uid=caller.uid,
            description=description,
            created_ns=time.time_ns(),
        )
        row: TokenRow = (token.token_id, token.digest, token.uid, token.description, token.created_ns)
        self.store.add_token(row)
        self._by_digest[token.digest] = token
        return token, secret

    def listed(self, caller: Caller, all_users: bool) -> list[Token]:
        if all_users and not caller.is_admin:
            raise AccessDenied("only administrators may list every user's tokens")
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

    def uid_for(self, secret: str) -> int | None:
        """The uid a presented token acts as; None for an unknown or revoked one."""
        if not secret.startswith(PREFIX):
            return None
        digest = _digest(secret)
        token = self._by_digest.get(digest)
        if token is None or not hmac.compare_digest(token.digest, digest):
            return None
        return token.uid


TOKENS_KEY = web.AppKey("tokens", Tokens)


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
