"""Client certificates (SetClientCertificateById / ByName, SPEC §7): directory stores read
with the job owner's rights, a certificate found by its SHA-1 thumbprint or its subject, and
the per-job SSLContext that presents it in TLS handshakes.

A store is a directory: CURRENT_USER (and its GROUP_POLICY twin) in the owner's home,
``~/.config/openbits/certs/<StoreName>/``, the LOCAL_MACHINE ones under ``machine_cert_dir``
(``/etc/openbits/certs/<StoreName>/``); StoreName is matched case-insensitively.  It holds
PEM files (a certificate and its key in one file, or ``NAME.crt`` + ``NAME.key``: a key
belongs to the certificate whose public key it matches), DER certificates, and PKCS#12
files without a password.

Nothing of the key is ever written to disk: ``ssl`` loads keys only from paths, so the
chain and key are written as PEM into a ``memfd_create`` file, loaded from
``/proc/self/fd/N`` and closed at once.  A store is listed and its files read through
``owner.Owners`` as every file action of a job is (a root daemon asks the owner's helper,
which has his uid, gid and groups): the daemon never reads what the owner could not, walks
no user's symlink and follows no link at a file name, and skips FIFOs unopened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import logging
import os
import pwd
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from openbits.errors import (
    CertificateNotFound,
    ClientCertificateUnavailable,
    HResult,
    InvalidArgument,
    NoPrivateKey,
    NotImplementedValue,
)
from openbits.model import CertStoreLocation, ClientCertificate
from openbits.transfer.owner import Owners, list_as_owner, read_as_owner

log = logging.getLogger("openbits.transfer.certs")

#: where a user's stores are, under his home
USER_STORE_DIR = ".config/openbits/certs"
#: what a store may hold that is read: more files, or larger ones, are not looked at
STORE_FILES_MAX = 256
FILE_BYTES_MAX = 1024 * 1024
#: the bytes of one store read at most (the daemon holds them while it looks)
STORE_BYTES_MAX = 16 * 1024 * 1024
#: the names of a store location's directory looked at for a store's name
STORES_MAX = 1024
#: why a file of a store is left out (it is not the owner's to read, or not a certificate
#: file: a link, a FIFO, a directory, one too large); any other error fails the read
_NOT_THE_OWNERS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ELOOP,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EFBIG,
        errno.ENXIO,
        errno.ENODEV,
        errno.ENAMETOOLONG,
    }
)
#: the file names a store's certificates and keys are read from (case-insensitive)
_SUFFIXES = (".pem", ".crt", ".cer", ".der", ".key", ".p12", ".pfx")
_PKCS12_SUFFIXES = (".p12", ".pfx")
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
_USER_LOCATIONS = (CertStoreLocation.CURRENT_USER, CertStoreLocation.CURRENT_USER_GROUP_POLICY)
_MACHINE_LOCATIONS = (
    CertStoreLocation.LOCAL_MACHINE,
    CertStoreLocation.LOCAL_MACHINE_GROUP_POLICY,
    CertStoreLocation.LOCAL_MACHINE_ENTERPRISE,
)
#: client contexts kept at once, and how long one unused is kept
CONTEXTS_MAX = 64
CONTEXT_IDLE_S = 600.0


@dataclass(frozen=True, slots=True)
class StoreCert:
    """A certificate of a store, with the other certificates of its file (its chain) and
    its private key when the store has the key."""

    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes | None
    thumbprint: str  # SHA-1 of the DER certificate, 40 lower-case hex digits
    subject: str  # RFC 4514

    def pem(self) -> bytes:
        """The certificate, its chain and its key as one PEM text (``load_cert_chain``'s)."""
        if self.key is None:
            raise NoPrivateKey(f"the certificate {self.subject} has no private key in its store")
        certs = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))
        key = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certs + key


# -- where a store is ------------------------------------------------------------------------


def store_root(location: CertStoreLocation, uid: int, machine_dir: str) -> str:
    """The directory holding the stores of ``location`` for the user ``uid``."""
    if location in _USER_LOCATIONS:
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            raise CertificateNotFound(f"the user {uid} has no home, so no certificate store") from None
        return os.path.join(home, USER_STORE_DIR)
    if location in _MACHINE_LOCATIONS:
        return machine_dir
    raise NotImplementedValue(f"the certificate store location {location.name} is not supported")


# -- reading a store as its owner ------------------------------------------------------------


async def read_store(
    owners: Owners, root: str, store_name: str, uid: int, gid: int | None = None
) -> dict[str, bytes]:
    """The certificate and key files of the store ``store_name`` under ``root``, by name,
    listed and read with the rights of ``uid`` through ``owners`` (his helper, for a root
    daemon): every path is walked without a user's symlink and no file name is followed
    (``fsops``).  A file the owner cannot read (or a link, a FIFO, one too large) is left
    out; no store he can list → CRYPT_E_NOT_FOUND, as is a helper that fails."""
    if not store_name or "/" in store_name or store_name in (".", ".."):
        raise CertificateNotFound(f"no certificate store {store_name!r}")
    try:
        stores = await list_as_owner(owners, uid, root, STORES_MAX, gid)
        wanted = store_name.casefold()
        match = next((n for n in stores if n == store_name), None) or next(
            (n for n in stores if n.casefold() == wanted), None
        )
        if match is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        directory = os.path.join(root, match)
        files: dict[str, bytes] = {}
        budget = STORE_BYTES_MAX
        for name in await list_as_owner(owners, uid, directory, STORE_FILES_MAX * 4, gid):
            if not name.lower().endswith(_SUFFIXES):
                continue
            if len(files) >= STORE_FILES_MAX or budget <= 0:
                log.warning("certificate store %s: only its first %d files were read", directory, len(files))
                break
            try:
                data = await read_as_owner(
                    owners, uid, os.path.join(directory, name), min(FILE_BYTES_MAX, budget), gid
                )
            except OSError as e:
                if e.errno not in _NOT_THE_OWNERS:
                    raise
                continue
            files[name] = data
            budget -= len(data)
        return files
    except OSError as e:
        why = e.strerror or os.strerror(e.errno or errno.EIO)
        raise CertificateNotFound(
            f"no certificate store {store_name!r} the job's owner can read ({why})"
        ) from None


# -- what a store holds ----------------------------------------------------------------------


def parse_store(files: Mapping[str, bytes]) -> list[StoreCert]:
    """Every certificate of the store's files, in file-name order, each with its key when
    the store holds the key that matches its public key (in its own file first)."""
    loaded: list[tuple[list[x509.Certificate], list[PrivateKeyTypes]]] = []
    for name in sorted(files):
        loaded.append(_load_file(name, files[name]))
    all_keys = [k for _, keys in loaded for k in keys]
    found: list[StoreCert] = []
    for certs, keys in loaded:
        for cert in certs:
            key = _key_for(cert, keys) or _key_for(cert, all_keys)
            chain = tuple(c for c in certs if c is not cert)
            found.append(StoreCert(cert, chain, key, thumbprint(cert), cert.subject.rfc4514_string()))
    return found


def thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 hash of the DER certificate (Windows' thumbprint), lower-case hex."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest()


def _load_file(name: str, data: bytes) -> tuple[list[x509.Certificate], list[PrivateKeyTypes]]:
    """(certificates, unencrypted private keys) of one file; nothing for what does not parse."""
    if name.lower().endswith(_PKCS12_SUFFIXES):
        return _load_pkcs12(data)
    if b"-----BEGIN" in data:
        certs: list[x509.Certificate] = []
        if b"CERTIFICATE-----" in data:
            with contextlib.suppress(ValueError):
                certs = x509.load_pem_x509_certificates(data)
        keys: list[PrivateKeyTypes] = []
        for block in _KEY_BLOCK.finditer(data):
            with contextlib.suppress(ValueError, TypeError):  # TypeError: it needs a password
                keys.append(serialization.load_pem_private_key(block.group(0), None))
        return certs, keys
    with contextlib.suppress(ValueError):
        return [x509.load_der_x509_certificate(data)], []
    with contextlib.suppress(ValueError, TypeError):
        return [], [serialization.load_der_private_key(data, None)]
    return [], []


def _load_pkcs12(data: bytes) -> tuple[list[x509.Certificate], list[PrivateKeyTypes]]:
    for password in (None, b""):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
        except (ValueError, TypeError):
            continue
        certs = ([cert] if cert is not None else []) + list(extra)
        return certs, [key] if key is not None else []
    return [], []


def _public(key_or_cert: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_for(cert: x509.Certificate, keys: list[PrivateKeyTypes]) -> PrivateKeyTypes | None:
    if not keys:
        return None
    try:
        wanted = _public(cert)
    except (ValueError, TypeError):  # a public key type cryptography cannot serialise
        return None
    return next((k for k in keys if _public(k) == wanted), None)


# -- finding a certificate -------------------------------------------------------------------


def parse_cert_hash(value: object) -> str:
    """CertHash as 20 numbers 0-255 (a WMI uint8 array) or 40 hex digits (colons and a 0x
    allowed) → 40 lower-case hex digits; E_INVALIDARG otherwise."""
    if isinstance(value, list):
        if len(value) != 20 or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
        ):
            raise InvalidArgument("CertHash must be 20 numbers from 0 to 255 (a SHA-1 hash)")
        return bytes(value).hex()
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
        if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
            return text
    raise InvalidArgument("CertHash must be a SHA-1 hash: 20 numbers or 40 hexadecimal digits")


def _subject_parts(text: str) -> list[str]:
    """A distinguished name's attributes, blanks around them dropped, case folded (split at
    commas that are not escaped)."""
    return [p.strip().casefold() for p in re.split(r"(?<!\\),", text) if p.strip()]


def subject_matches(cert: x509.Certificate, wanted: str) -> bool:
    """``wanted`` is the certificate's common name, or its whole subject (RFC 4514, in either
    order of its attributes: Windows writes them the other way round), case-insensitively."""
    folded = wanted.strip().casefold()
    if not folded:
        return False
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        names = []
    if any(str(n.value).casefold() == folded for n in names):
        return True
    parts = _subject_parts(cert.subject.rfc4514_string())
    given = _subject_parts(wanted)
    return given in (parts, parts[::-1])


def pick(found: list[StoreCert], test: Callable[[StoreCert], bool], what: str) -> StoreCert:
    """The first certificate ``test`` accepts that has its key; CRYPT_E_NOT_FOUND when none
    is accepted, NTE_NO_KEY when none accepted has its key."""
    matches = [c for c in found if test(c)]
    if not matches:
        raise CertificateNotFound(f"no certificate {what} in the store")
    with_key = next((c for c in matches if c.key is not None), None)
    if with_key is None:
        raise NoPrivateKey(f"the certificate {what} has no private key in the store")
    return with_key


def by_hash(found: list[StoreCert], cert_hash: str) -> StoreCert:
    return pick(found, lambda c: c.thumbprint == cert_hash, f"with the hash {cert_hash}")


def by_name(found: list[StoreCert], subject: str) -> StoreCert:
    return pick(found, lambda c: subject_matches(c.cert, subject), f"named {subject!r}")


async def lookup(
    owners: Owners,
    location: CertStoreLocation,
    store_name: str,
    uid: int,
    gid: int | None,
    machine_dir: str,
    choose: Callable[[list[StoreCert]], StoreCert],
) -> StoreCert:
    """Read the store as the owner and ``choose`` in it (the parsing in a thread)."""
    root = await asyncio.to_thread(store_root, location, uid, machine_dir)
    files = await read_store(owners, root, store_name, uid, gid)
    return await asyncio.to_thread(lambda: choose(parse_store(files)))


# -- presenting it ---------------------------------------------------------------------------


def load_into(ctx: ssl.SSLContext, pem: bytes) -> None:
    """``ctx.load_cert_chain`` from ``pem`` (chain and key) through an anonymous memory file:
    the key never touches a file system."""
    fd = os.memfd_create("openbits-client-cert", os.MFD_CLOEXEC)
    try:
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class ClientContexts:
    """The SSLContexts that present jobs' client certificates, one per (job, certificate,
    SecurityFlags relaxations): made on a job's first HTTPS request, kept while it uses
    them (at most ``CONTEXTS_MAX``, each dropped after ``CONTEXT_IDLE_S`` unused).  A
    context is never shared between jobs, so neither is a connection that presented it
    (h1's pools are keyed by the context, aiohttp's connector by the ``ssl`` argument)."""

    __slots__ = ("_contexts", "_make", "_max", "_owners", "machine_dir")

    def __init__(
        self,
        make: Callable[[int], ssl.SSLContext],
        machine_dir: str,
        limit: int = CONTEXTS_MAX,
        owners: Owners | None = None,
    ) -> None:
        """``make(security_flags)``: a new context with the job's verification settings;
        ``owners``: who reads the stores (the daemon's own ``Owners``)."""
        self._make = make
        self.machine_dir = machine_dir
        self._max = limit
        self._owners = owners if owners is not None else Owners()
        self._contexts: collections.OrderedDict[tuple[str, str, int], tuple[ssl.SSLContext, float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._contexts)

    async def context(
        self, job_id: str, cert: ClientCertificate, security_flags: int, uid: int, gid: int | None
    ) -> ssl.SSLContext:
        """The job's context presenting ``cert``, found again in its store as the owner."""
        key = (job_id, cert.cert_hash, security_flags & 0x1E)
        now = time.monotonic()
        self._expire(now)
        held = self._contexts.get(key)
        if held is not None:
            self._contexts[key] = (held[0], now)
            self._contexts.move_to_end(key)
            return held[0]
        try:
            found = await lookup(
                self._owners,
                cert.location,
                cert.store_name,
                uid,
                gid,
                self.machine_dir,
                lambda certs: by_hash(certs, cert.cert_hash),
            )
        except (CertificateNotFound, NoPrivateKey, NotImplementedValue) as e:
            raise ClientCertificateUnavailable(
                f"the client certificate {cert.subject_name} is no longer usable: {e.message}",
                hresult=e.hresult if e.hresult != HResult.E_NOTIMPL else HResult.CRYPT_E_NOT_FOUND,
            ) from None
        ctx = await asyncio.to_thread(self._build, cert, found, security_flags)
        self._contexts[key] = (ctx, now)
        while len(self._contexts) > self._max:
            self._contexts.popitem(last=False)
        return ctx

    def _build(self, cert: ClientCertificate, found: StoreCert, security_flags: int) -> ssl.SSLContext:
        """A new context presenting ``found`` (its chain and key through memory)."""
        try:
            ctx = self._make(security_flags)
            load_into(ctx, found.pem())
        except NoPrivateKey as e:
            raise ClientCertificateUnavailable(
                f"the client certificate {cert.subject_name} is no longer usable: {e.message}",
                hresult=HResult.NTE_NO_KEY,
            ) from None
        except (ssl.SSLError, OSError) as e:
            raise ClientCertificateUnavailable(
                f"the client certificate {cert.subject_name} cannot be loaded: {e}",
                hresult=HResult.NTE_NO_KEY,
            ) from None
        return ctx

    def _expire(self, now: float) -> None:
        stale = [k for k, (_, used) in self._contexts.items() if now - used > CONTEXT_IDLE_S]
        for k in stale:
            del self._contexts[k]

    def forget(self, job_id: str) -> None:
        """Drop the job's contexts (its certificate changed, or it finished)."""
        for k in [k for k in self._contexts if k[0] == job_id]:
            del self._contexts[k]

    def close(self) -> None:
        self._contexts.clear()
