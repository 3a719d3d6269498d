"""The Kerberos tickets of a job's owner, for a daemon that is not him (SPEC §7: NTLM and
Negotiate credentials with no names use "a Kerberos ccache of the owner").

A user daemon runs as the owner: his credentials are the process's own (KRB5CCNAME), and
nothing here is needed.  The system daemon reads the owner's ticket cache file (by default
``/tmp/krb5cc_<uid>``, MIT's default name) with his rights through his helper
(``owner.Owners.open_source``: no symlink followed, a regular file only), accepts it only if
he owns it and no one else may write it (a cache planted by another user would make the job
speak as that user), and copies its tickets into a ``MEMORY:`` cache of this process, named
uniquely.  The GSSAPI context of the exchange is given that name (``spnego.KerberosCCache``):
no environment variable is changed, no file is written, and one owner's tickets never
answer for another's job.  The copy is read again when it is older than ``ttl_s`` and
replaced when the file changed (a new ``kinit``); a replaced copy is destroyed ``grace_s``
later, when no exchange can still be using it.

KEYRING:, KCM: and DIR: caches are the owner's session's, not files this daemon can read
with his rights: a job of such an owner needs its names and password (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

from openbits.transfer.owner import Owners

__all__ = ["DEFAULT_CCACHE", "PROCESS", "DefaultCredentials", "OwnerTickets"]

log = logging.getLogger(__name__)

#: where MIT Kerberos keeps a user's ticket cache unless told otherwise (``%{uid}``: his uid)
DEFAULT_CCACHE = "/tmp/krb5cc_%{uid}"
#: a ticket cache is a few KiB; one larger than this is not one
CCACHE_BYTES_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DefaultCredentials:
    """What NTLM/Negotiate credentials with no names use: the process's own (``usable``, no
    ``ccache``: its KRB5CCNAME), a Kerberos ccache of the owner (``ccache``, TYPE:RESIDUAL,
    Negotiate only), or nothing (not ``usable``; ``why`` says why, for the job's error)."""

    usable: bool = True
    ccache: str | None = None
    why: str = ""


#: the process's own default credentials (a daemon that runs as the job's owner)
PROCESS = DefaultCredentials()


@dataclass(slots=True)
class _Copy:
    """The tickets of one owner copied into a MEMORY cache (``name``), as last read."""

    name: str
    cache: Any  # krb5.CCache
    digest: bytes
    read_at: float


class OwnerTickets:
    """The owners' ticket caches as ``DefaultCredentials`` for their jobs' exchanges (see the
    module's docstring).  ``pattern`` is the cache file (``%{uid}`` replaced by the owner's
    uid; "" reads none).  Owned by the composition root: ``close`` destroys every copy."""

    def __init__(
        self, owners: Owners, pattern: str = DEFAULT_CCACHE, ttl_s: float = 5.0, grace_s: float = 600.0
    ) -> None:
        self._owners, self._pattern = owners, pattern
        self._ttl_s, self._grace_s = ttl_s, grace_s
        self._copies: dict[int, _Copy] = {}
        self._retired: list[tuple[float, Any]] = []
        self._context: Any = None
        self._lock = asyncio.Lock()

    async def for_owner(self, uid: int, gid: int | None) -> DefaultCredentials:
        """The default credentials of a job of ``uid`` (``gid`` his primary group)."""
        if uid == os.geteuid():
            return PROCESS
        if not self._pattern:
            return DefaultCredentials(False, why="the daemon is set to read no owner's ticket cache")
        now = time.monotonic()
        copy = self._copies.get(uid)
        if copy is not None and now - copy.read_at < self._ttl_s:
            return DefaultCredentials(ccache=copy.name)
        async with self._lock:  # (one reader per moment: owners' helpers are not hurried)
            return await self._refresh(uid, gid, now)

    def close(self) -> None:
        """Destroy every copy (the daemon is stopping)."""
        for copy in self._copies.values():
            self._destroy(copy.cache)
        for _when, cache in self._retired:
            self._destroy(cache)
        self._copies.clear()
        self._retired.clear()

    # -- reading ------------------------------------------------------------------------------

    async def _refresh(self, uid: int, gid: int | None, now: float) -> DefaultCredentials:
        self._expire(now)
        path = self._pattern.replace("%{uid}", str(uid))
        try:
            data = await asyncio.to_thread(self._read, uid, gid, path)
        except OSError as e:
            self._retire(uid, now)
            why = e.strerror or os.strerror(e.errno or errno.EIO)
            return DefaultCredentials(
                False, why=f"the owner has no ticket cache the daemon may use at {path} ({why})"
            )
        digest = hashlib.sha256(data).digest()
        copy = self._copies.get(uid)
        if copy is not None and copy.digest == digest:
            copy.read_at = now
            return DefaultCredentials(ccache=copy.name)
        try:
            cache, name = self._copy_in(data)
        except Exception as e:  # (krb5.Krb5Error, ImportError: whatever the library says)
            self._retire(uid, now)
            return DefaultCredentials(False, why=f"the owner's ticket cache {path} is unreadable ({e})")
        self._retire(uid, now)
        self._copies[uid] = _Copy(name, cache, digest, now)
        log.debug("owner %d: tickets of %s copied into %s", uid, path, name)
        return DefaultCredentials(ccache=name)

    def _read(self, uid: int, gid: int | None, path: str) -> bytes:
        """The cache file's bytes, read with the owner's rights; EPERM unless he owns it and
        no one else may write it."""
        fd = self._owners.open_source(uid, gid, path)
        with open(fd, "rb", closefd=True) as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != uid or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise OSError(errno.EPERM, "not his own, or writable by others", path)
            data = fh.read(CCACHE_BYTES_MAX + 1)
        if len(data) > CCACHE_BYTES_MAX:
            raise OSError(errno.EFBIG, f"larger than {CCACHE_BYTES_MAX} bytes", path)
        return data

    def _copy_in(self, data: bytes) -> tuple[Any, str]:
        """A new MEMORY cache holding the tickets of the cache file ``data``, and its name."""
        import krb5

        if self._context is None:
            self._context = krb5.init_context()
        context = self._context
        fd = os.memfd_create("openbits-ccache", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            source = krb5.cc_resolve(context, f"FILE:/proc/self/fd/{fd}".encode())
            principal = source.principal
            if principal is None:
                raise ValueError("it names no principal")
            cache = krb5.cc_new_unique(context, b"MEMORY")
            try:
                krb5.cc_initialize(context, cache, principal)
                for cred in source:
                    krb5.cc_store_cred(context, cache, cred)
            except BaseException:
                self._destroy(cache)
                raise
        finally:
            os.close(fd)
        return cache, f"MEMORY:{(cache.name or b'').decode()}"

    # -- letting go -----------------------------------------------------------------------------

    def _retire(self, uid: int, now: float) -> None:
        """The copy of ``uid`` is no longer handed out; destroyed after the grace period."""
        copy = self._copies.pop(uid, None)
        if copy is not None:
            self._retired.append((now, copy.cache))

    def _expire(self, now: float) -> None:
        keep = []
        for when, cache in self._retired:
            if now - when < self._grace_s:
                keep.append((when, cache))
            else:
                self._destroy(cache)
        self._retired = keep

    def _destroy(self, cache: Any) -> None:
        import krb5

        try:
            krb5.cc_destroy(self._context, cache)
        except Exception as e:  # (krb5.Krb5Error: already gone)
            log.debug("could not destroy a copied ticket cache: %s", e)
