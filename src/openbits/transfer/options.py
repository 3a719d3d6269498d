"""What a job adds to its requests (``RequestOptions``): custom headers, SetSecurityFlags
bits and its identity (SPEC §7), built once per file from the job; and the digests that
keep a job's connections its own.  Pure: no I/O."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from openbits.model import (
    AuthScheme,
    AuthTarget,
    ClientCertificate,
    Credential,
    Job,
    ProxyUsage,
    parse_custom_headers,
)
from openbits.transfer.h1 import ProxyAuth
from openbits.transfer.proxylist import ProxyEntry
from openbits.transfer.tickets import DefaultCredentials

#: the key of the connection partitions' digests (random per process: the digest of a
#: password is never comparable with anything outside this process)
_PARTITION_KEY = os.urandom(32)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a job adds to its requests: custom headers, SetSecurityFlags bits, and its
    identity (SPEC §7): its credentials, proxy settings and client certificate.  ``job_id``
    partitions connections: one that carried a job's credentials or certificate is never
    reused by another job."""

    headers: tuple[tuple[str, str], ...] = ()
    security_flags: int = 0
    job_id: str = ""
    credentials: tuple[Credential, ...] = ()
    proxy_usage: ProxyUsage = ProxyUsage.PRECONFIG
    proxy_list: str | None = None
    proxy_bypass_list: str | None = None
    #: PRECONFIG: the caller's proxy variables at CreateJob (None: the daemon's)
    proxy_environment: Mapping[str, str] | None = None
    client_certificate: ClientCertificate | None = None
    owner_uid: int = -1  # whose job (-1: unknown): default credentials only as the owner

    def server_credentials(self) -> bool:
        return any(c.target == AuthTarget.SERVER for c in self.credentials)

    def default_credentials(self) -> bool:
        """An NTLM/Negotiate credential with no password: it uses the owner's defaults."""
        return any(c.uses_default for c in self.credentials)

    @classmethod
    def of(cls, job: Job) -> RequestOptions:
        return cls(
            headers=tuple(parse_custom_headers(job.custom_headers)) if job.custom_headers else (),
            security_flags=job.security_flags,
            job_id=job.job_id,
            credentials=tuple(job.credentials.values()),
            proxy_usage=job.proxy_usage,
            proxy_list=job.proxy_list,
            proxy_bypass_list=job.proxy_bypass_list,
            proxy_environment=job.proxy_environment,
            client_certificate=job.client_certificate,
            owner_uid=job.owner_uid,
        )

    @property
    def partition(self) -> str:
        """What keeps this job's connections its own (SPEC §7: reused only by the same job
        with the same credentials and certificate): "" without either (connections shared by
        every job), else the job's id and a keyed digest of its credentials and certificate
        (a changed password never rides on a connection the old one opened)."""
        if not self.credentials and self.client_certificate is None:
            return ""
        parts: list[object] = []
        for cred in self.credentials:
            password = cred.password.reveal() if cred.password is not None else ""
            parts.append((int(cred.target), int(cred.scheme), cred.user_name, password))
        cert = self.client_certificate
        if cert is not None:
            parts.append((int(cert.location), cert.store_name, cert.cert_hash))
        return f"{self.job_id}/{digest(repr(parts))}"

    def proxy_login(self) -> tuple[str | None, str | None]:
        """The Basic proxy credential (Target PROXY, Scheme BASIC): a SOCKS5 login."""
        for cred in self.credentials:
            if cred.target is AuthTarget.PROXY and cred.scheme is AuthScheme.BASIC:
                return cred.user_name, cred.password.reveal() if cred.password is not None else None
        return None, None


#: what answers a proxy's 407 for a job's requests through a proxy (``transfer/auth.py``
#: builds it from the job's proxy credentials and the owner's default credentials); None:
#: nothing answers, the 407 stands
ProxyAuthFactory = Callable[["RequestOptions", ProxyEntry, DefaultCredentials], ProxyAuth | None]


def digest(text: str) -> str:
    """A keyed digest (per process) that tells identities apart without holding them."""
    return hashlib.blake2b(text.encode(), key=_PARTITION_KEY, digest_size=12).hexdigest()
