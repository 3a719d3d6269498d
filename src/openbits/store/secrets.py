"""Secrets at rest: passwords, custom headers and proxy environments sealed with AES-256-GCM.

The key is 32 random bytes in a file of its own beside the store (``<store>.key``, mode 0600,
created with O_EXCL so two daemons never write two keys), never inside the database: a copy
of the database alone holds no secret.  Each blob is ``nonce (12 random bytes) || ciphertext
|| tag``, sealed with associated data that names what it is (``job/{JobId}/cred/{target}/
{scheme}``, ``job/{JobId}/headers``...), so a blob moved to another job or another field does
not open.

A store whose key file is gone (copied without it) opens with a new key: every old blob fails
to open and :meth:`Keyring.open` answers None: the secret is lost, nothing else is.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openbits.model import AuthScheme, AuthTarget, Credential, Job, Secret
from openbits.store import StoreError

KEY_BYTES = 32
NONCE_BYTES = 12


def key_path_for(store_path: str) -> str:
    """Where the key of the store at ``store_path`` lives: beside it, not in it."""
    return store_path + ".key"


class Keyring:
    """Seals and opens the secrets of one store."""

    __slots__ = ("_aead", "created", "path")

    def __init__(self, key: bytes, path: str = "", created: bool = False) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("an AES-256 key is 32 bytes")
        self._aead = AESGCM(key)
        self.path = path
        #: the key was made now (a new store, or one whose key file was lost)
        self.created = created

    def __repr__(self) -> str:
        return f"Keyring({self.path!r})"

    @classmethod
    def at(cls, path: str) -> Keyring:
        """The key in ``path``, made (0600, exclusively) when there is none.  A key file that
        others may read, or that is not a regular file of ours, is refused."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return cls._create(path)
        except OSError as e:
            raise StoreError(f"cannot read the key file {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise StoreError(f"the key file {path} must be a regular file of this user with mode 0600")
            key = os.read(fd, KEY_BYTES + 1)
        finally:
            os.close(fd)
        if len(key) != KEY_BYTES:
            raise StoreError(f"the key file {path} is damaged (not {KEY_BYTES} bytes)")
        return cls(key, path)

    @classmethod
    def _create(cls, path: str) -> Keyring:
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return cls.at(path)  # another process made it first
            raise StoreError(f"cannot create the key file {path}: {e.strerror}") from e
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise StoreError(f"cannot write the key file {path}: {e.strerror}") from e
        os.close(fd)
        with contextlib.suppress(OSError):
            dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return cls(key, path, created=True)

    def seal(self, plaintext: str, label: str) -> bytes:
        """``plaintext`` sealed for ``label`` (what it is and whose)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), label.encode())

    def open(self, blob: bytes | None, label: str) -> str | None:
        """The plaintext of ``blob`` sealed for ``label``; None when there is none, or it was
        sealed with another key (a lost key file) or for another label."""
        if not blob or len(blob) <= NONCE_BYTES:
            return None
        try:
            data = self._aead.decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), label.encode())
        except InvalidTag:
            return None
        return data.decode()


def credential_label(job_id: str, target: int, scheme: int) -> str:
    return f"job/{job_id}/cred/{target}/{scheme}"


def headers_label(job_id: str) -> str:
    return f"job/{job_id}/headers"


def proxy_environment_label(job_id: str) -> str:
    return f"job/{job_id}/proxy-environment"


# -- a job's secret columns ------------------------------------------------------------------


def seal_job(keyring: Keyring, job: Job) -> tuple[bytes | None, str | None, bytes | None]:
    """The sealed columns of ``job``: (custom headers, credentials JSON, proxy environment).
    The credentials JSON keeps user names in clear (instances show them) and each password
    sealed on its own, bound to its job, target and scheme."""
    jid = job.job_id
    headers = None if job.custom_headers is None else keyring.seal(job.custom_headers, headers_label(jid))
    credentials = None
    if job.credentials:
        credentials = json.dumps(
            [
                {
                    "Target": int(c.target),
                    "Scheme": int(c.scheme),
                    "UserName": c.user_name,
                    "Password": None
                    if c.password is None
                    else base64.b64encode(
                        keyring.seal(c.password.reveal(), credential_label(jid, c.target, c.scheme))
                    ).decode(),
                    "Missing": c.missing,
                }
                for c in job.credentials.values()
            ]
        )
    env = job.proxy_environment
    environment = None if env is None else keyring.seal(json.dumps(env), proxy_environment_label(jid))
    return headers, credentials, environment


def open_job(
    keyring: Keyring, job: Job, headers: bytes | None, credentials: str | None, environment: bytes | None
) -> None:
    """Fill ``job``'s secrets from its sealed columns.  A secret sealed with a lost key is
    dropped: custom headers and the proxy environment become None, a password ``missing``."""
    jid = job.job_id
    if headers is not None:
        job.custom_headers = keyring.open(headers, headers_label(jid))
    if credentials:
        for entry in json.loads(credentials):
            target, scheme = AuthTarget(entry["Target"]), AuthScheme(entry["Scheme"])
            sealed, password = entry.get("Password"), None
            if sealed is not None:
                text = keyring.open(base64.b64decode(sealed), credential_label(jid, target, scheme))
                password = None if text is None else Secret(text)
            missing = bool(entry.get("Missing")) or (sealed is not None and password is None)
            credential = Credential(target, scheme, entry["UserName"], password, missing)
            job.credentials[(target, scheme)] = credential
    if environment is not None:
        text = keyring.open(environment, proxy_environment_label(jid))
        job.proxy_environment = None if text is None else dict(json.loads(text))
