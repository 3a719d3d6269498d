"""The identity methods of both clients (SPEC §7): credentials, proxy settings, client
certificates, as mixins of Client (``IdentityCalls``) and AsyncClient
(``AsyncIdentityCalls``) over their ``invoke``.  stdlib only, as the clients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from openbits import _wire as wire
from openbits.model import AuthScheme, AuthTarget, CertStoreLocation, ProxyUsage


def _removed(answer: dict[str, Any]) -> bool:
    """A Remove* method's answer: whether there was something to remove (else S_FALSE)."""
    return int(answer.get("ReturnValue", 0)) == 0


def _certificate_by_id(
    location: CertStoreLocation | int, store_name: str, cert_hash: str | bytes
) -> dict[str, Any]:
    return {
        "CertStoreLocation": int(location),
        "StoreName": store_name,
        "CertHash": wire.cert_hash_param(cert_hash),
    }


def _certificate_by_name(
    location: CertStoreLocation | int, store_name: str, subject_name: str
) -> dict[str, Any]:
    return {"CertStoreLocation": int(location), "StoreName": store_name, "SubjectName": subject_name}


class IdentityCalls:
    """Client's identity methods."""

    def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        raise NotImplementedError  # (Client's)

    def set_credentials(
        self,
        job: str,
        target: AuthTarget | int,
        scheme: AuthScheme | int,
        user_name: str | None = None,
        password: str | None = None,
    ) -> None:
        """The credentials the job answers ``target``'s challenges of ``scheme`` with (one per
        target and scheme, replaced when set again).  Basic and Digest need both names;
        NTLM and Negotiate with neither use your default credentials (a Kerberos ccache).
        The password is never shown again, by anything."""
        self.invoke(job, "SetCredentials", **wire.credential_params(target, scheme, user_name, password))

    def remove_credentials(self, job: str, target: AuthTarget | int, scheme: AuthScheme | int) -> bool:
        """Whether there were credentials of ``target`` and ``scheme`` to remove."""
        return _removed(self.invoke(job, "RemoveCredentials", Target=int(target), Scheme=int(scheme)))

    def set_proxy_settings(
        self,
        job: str,
        usage: ProxyUsage | int,
        proxy_list: str | Iterable[str] | None = None,
        bypass_list: str | Iterable[str] | None = None,
    ) -> None:
        """How the job reaches servers: PRECONFIG (the proxy environment sent with CreateJob,
        else the daemon's), NO_PROXY, OVERRIDE (``proxy_list``, tried in order, and
        ``bypass_list``, reached directly) or AUTODETECT (PAC / WPAD)."""
        self.invoke(job, "SetProxySettings", **wire.proxy_params(usage, proxy_list, bypass_list))

    def set_client_certificate_by_id(
        self, job: str, location: CertStoreLocation | int, store_name: str, cert_hash: str | bytes
    ) -> None:
        """The client certificate of the job's HTTPS handshakes, by its SHA-1 thumbprint (20
        bytes or 40 hex digits) in a store."""
        self.invoke(job, "SetClientCertificateById", **_certificate_by_id(location, store_name, cert_hash))

    def set_client_certificate_by_name(
        self, job: str, location: CertStoreLocation | int, store_name: str, subject_name: str
    ) -> None:
        """The client certificate by its subject (its common name or the whole subject)."""
        self.invoke(
            job, "SetClientCertificateByName", **_certificate_by_name(location, store_name, subject_name)
        )

    def remove_client_certificate(self, job: str) -> bool:
        """Whether the job had a client certificate to remove."""
        return _removed(self.invoke(job, "RemoveClientCertificate"))


class AsyncIdentityCalls:
    """AsyncClient's identity methods: as Client's."""

    async def invoke(self, job: str, method: str, **params: Any) -> dict[str, Any]:
        raise NotImplementedError  # (AsyncClient's)

    async def set_credentials(
        self,
        job: str,
        target: AuthTarget | int,
        scheme: AuthScheme | int,
        user_name: str | None = None,
        password: str | None = None,
    ) -> None:
        await self.invoke(
            job, "SetCredentials", **wire.credential_params(target, scheme, user_name, password)
        )

    async def remove_credentials(self, job: str, target: AuthTarget | int, scheme: AuthScheme | int) -> bool:
        return _removed(await self.invoke(job, "RemoveCredentials", Target=int(target), Scheme=int(scheme)))

    async def set_proxy_settings(
        self,
        job: str,
        usage: ProxyUsage | int,
        proxy_list: str | Iterable[str] | None = None,
        bypass_list: str | Iterable[str] | None = None,
    ) -> None:
        await self.invoke(job, "SetProxySettings", **wire.proxy_params(usage, proxy_list, bypass_list))

    async def set_client_certificate_by_id(
        self, job: str, location: CertStoreLocation | int, store_name: str, cert_hash: str | bytes
    ) -> None:
        params = _certificate_by_id(location, store_name, cert_hash)
        await self.invoke(job, "SetClientCertificateById", **params)

    async def set_client_certificate_by_name(
        self, job: str, location: CertStoreLocation | int, store_name: str, subject_name: str
    ) -> None:
        params = _certificate_by_name(location, store_name, subject_name)
        await self.invoke(job, "SetClientCertificateByName", **params)

    async def remove_client_certificate(self, job: str) -> bool:
        return _removed(await self.invoke(job, "RemoveClientCertificate"))
