"""transfer/certs.py: what a certificate store holds, how a certificate is found in it, how
it is read as its owner, and the per-job contexts that present it (no network here: the
handshakes are tests/integration/test_client_certs.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from openbits.errors import (
    CertificateNotFound,
    ClientCertificateUnavailable,
    HResult,
    InvalidArgument,
    NoPrivateKey,
    NotImplementedValue,
)
from openbits.model import CertStoreLocation, ClientCertificate, JobState
from openbits.transfer import certs, fsops
from openbits.transfer.http import TLSContexts
from openbits.transfer.owner import Owners
from tests.support.driver import ME, Driver
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

CA = trustme.CA()
LEAF = CA.issue_cert("client@example.com", common_name="Backup Client")
OTHER = CA.issue_cert("other@example.com", common_name="Other Client")
THIRD = CA.issue_cert("third@example.com", common_name="Third Client")


def der_sha1(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def p12(leaf: trustme.LeafCert, password: bytes | None = None) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    encryption = (
        serialization.NoEncryption() if password is None else serialization.BestAvailableEncryption(password)
    )
    return pkcs12.serialize_key_and_certificates(b"client", key, cert, None, encryption)  # type: ignore[arg-type]


def one(found: list[certs.StoreCert], leaf: trustme.LeafCert) -> certs.StoreCert:
    return certs.by_hash(found, der_sha1(leaf))


def test_a_pem_file_with_its_key_is_found_by_hash_and_by_name() -> None:
    found = certs.parse_store({"client.pem": LEAF.private_key_and_cert_chain_pem.bytes()})
    assert [c.thumbprint for c in found] == [der_sha1(LEAF)]
    assert one(found, LEAF).key is not None
    assert certs.by_name(found, "backup client") is found[0]  # the common name, any case
    subject = found[0].subject
    assert subject.startswith("CN=Backup Client,")
    assert certs.by_name(found, subject.upper()) is found[0]  # the whole subject
    reversed_subject = ", ".join(reversed(subject.split(",")))  # Windows' order
    assert certs.by_name(found, reversed_subject) is found[0]
    with pytest.raises(CertificateNotFound):
        certs.by_name(found, "Backup")  # not a substring match


def test_a_crt_and_key_pair_and_a_pkcs12_file_have_their_keys() -> None:
    found = certs.parse_store(
        {
            "client.crt": LEAF.cert_chain_pems[0].bytes(),
            "client.key": LEAF.private_key_pem.bytes(),
            "other.p12": p12(OTHER),
            "third.cer": x509.load_pem_x509_certificate(THIRD.cert_chain_pems[0].bytes()).public_bytes(
                serialization.Encoding.DER
            ),
            "third-key.pem": THIRD.private_key_pem.bytes(),  # another name: matched by its public key
        }
    )
    assert one(found, LEAF).key is not None
    assert one(found, OTHER).key is not None
    assert one(found, THIRD).key is not None
    assert "PRIVATE KEY" in one(found, OTHER).pem().decode()


def test_a_certificate_without_its_key_is_nte_no_key_and_a_missing_one_crypt_e_not_found() -> None:
    found = certs.parse_store(
        {
            "client.crt": LEAF.cert_chain_pems[0].bytes(),
            "other.key": OTHER.private_key_pem.bytes(),  # another certificate's key
            "locked.p12": p12(OTHER, b"secret"),  # a password: not read
        }
    )
    with pytest.raises(NoPrivateKey) as no_key:
        one(found, LEAF)
    assert no_key.value.hresult == HResult.NTE_NO_KEY == 0x8009000D
    with pytest.raises(CertificateNotFound) as missing:
        one(found, OTHER)
    assert missing.value.hresult == HResult.CRYPT_E_NOT_FOUND == 0x80092004


def test_garbage_and_encrypted_keys_are_skipped() -> None:
    key = serialization.load_pem_private_key(LEAF.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    found = certs.parse_store(
        {
            "a.pem": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "b.der": os.urandom(300),
            "client.crt": LEAF.cert_chain_pems[0].bytes(),
            "client.key": encrypted,
        }
    )
    with pytest.raises(NoPrivateKey):
        one(found, LEAF)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (list(range(20)), bytes(range(20)).hex()),
        ("A9993E364706816ABA3E25717850C26C9CD0D89D", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (
            "0xa9:99:3e:36:47:06:81:6a:ba:3e:25:71:78:50:c2:6c:9c:d0:d8:9d",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
    ],
)
def test_cert_hash_is_20_numbers_or_40_hex_digits(value: object, expected: str) -> None:
    assert certs.parse_cert_hash(value) == expected


@pytest.mark.parametrize("value", [list(range(16)), [256] * 20, [True] * 20, "abc", "g" * 40, 12, None])
def test_a_cert_hash_of_another_shape_is_invalid(value: object) -> None:
    with pytest.raises(InvalidArgument):
        certs.parse_cert_hash(value)


def test_store_locations(tmp_path: Path) -> None:
    home = pwd.getpwuid(os.getuid()).pw_dir
    user = certs.store_root(CertStoreLocation.CURRENT_USER, os.getuid(), str(tmp_path))
    assert user == os.path.join(home, ".config/openbits/certs")
    assert certs.store_root(CertStoreLocation.CURRENT_USER_GROUP_POLICY, os.getuid(), "/x") == user
    for machine in (1, 6, 7):
        assert certs.store_root(CertStoreLocation(machine), os.getuid(), str(tmp_path)) == str(tmp_path)
    for other in (2, 3, 4):
        with pytest.raises(NotImplementedValue):
            certs.store_root(CertStoreLocation(other), os.getuid(), str(tmp_path))


def write_store(root: Path, name: str = "My") -> Path:
    store = root / name
    store.mkdir(parents=True)
    (store / "client.pem").write_bytes(LEAF.private_key_and_cert_chain_pem.bytes())
    (store / "notes.txt").write_text("not read")
    os.mkfifo(store / "fifo.pem")  # must not hang the reader
    return store


def read(
    root: Path, name: str, uid: int, gid: int | None = None, owners: Owners | None = None
) -> dict[str, bytes]:
    return asyncio.run(certs.read_store(owners or Owners(), str(root), name, uid, gid))


def test_a_store_is_read_by_name_in_any_case(tmp_path: Path) -> None:
    write_store(tmp_path)
    files = read(tmp_path, "MY", os.getuid(), os.getgid())
    assert sorted(files) == ["client.pem"]
    for bad in ("nope", "..", "My/..", ""):
        with pytest.raises(CertificateNotFound):
            read(tmp_path, bad, os.getuid(), os.getgid())


def test_links_in_a_store_and_a_linked_store_are_not_followed(tmp_path: Path) -> None:
    """Neither a symlink at a file's name nor a store that is a symlink is read, even to a
    file the reader may read: a link does not put a file in a store."""
    elsewhere = tmp_path / "elsewhere"
    write_store(elsewhere, "Real")
    store = tmp_path / "stores" / "My"
    store.mkdir(parents=True)
    (store / "linked.pem").symlink_to(elsewhere / "Real" / "client.pem")
    (tmp_path / "stores" / "Linked").symlink_to(elsewhere / "Real")
    if os.geteuid() == 0:  # (root's own links are the system's layout, followed: a user's)
        for link in (store / "linked.pem", tmp_path / "stores" / "Linked"):
            os.lchown(link, 65534, 65534)
    owners = Owners(in_process=True)
    assert read(tmp_path / "stores", "my", os.getuid(), owners=owners) == {}
    with pytest.raises(CertificateNotFound) as linked:
        read(tmp_path / "stores", "linked", os.getuid(), owners=owners)
    assert "symbolic link" in linked.value.message
    assert sorted(read(elsewhere, "real", os.getuid(), owners=owners)) == ["client.pem"]


def test_a_listing_is_sorted_and_bounded(tmp_path: Path) -> None:
    names = [f"{i:03d}-" + "x" * 200 + ".pem" for i in range(400)]
    for name in names:
        (tmp_path / name).touch()
    assert fsops.list_dir(str(tmp_path), 5) == names[:5]
    listed = fsops.list_dir(str(tmp_path), 10_000)
    assert listed == names[: len(listed)] and 100 < len(listed) < 400  # one answer's worth
    assert len(json.dumps({"ok": listed})) < fsops.MESSAGE_BYTES
    with pytest.raises(OSError):
        fsops.list_dir(str(tmp_path / names[0]), 5)  # not a directory


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another user")
def test_a_root_daemon_reads_a_store_with_the_owners_rights() -> None:
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as top:  # (pytest's tmp_path is closed to others)
        os.chmod(top, 0o755)
        owners = Owners()
        try:
            read_as_nobody(Path(top), nobody, owners)
            assert owners.helpers(), "nobody's store was read by his helper"
        finally:
            owners.close()


def read_as_nobody(tmp_path: Path, nobody: pwd.struct_passwd, owners: Owners) -> None:
    store = write_store(tmp_path)
    store.chmod(0o755)
    (store / "client.pem").chmod(0o644)
    (store / "secret.pem").write_bytes(OTHER.private_key_and_cert_chain_pem.bytes())
    (store / "secret.pem").chmod(0o600)  # root's: nobody cannot read it
    files = read(tmp_path, "my", nobody.pw_uid, nobody.pw_gid, owners)
    assert sorted(files) == ["client.pem"]
    assert read(tmp_path, "my", 0, 0, owners).keys() == {"client.pem", "secret.pem"}
    store.chmod(0o700)  # the store itself closed to nobody
    with pytest.raises(CertificateNotFound):
        read(tmp_path, "my", nobody.pw_uid, nobody.pw_gid, owners)


def test_client_contexts_present_the_certificate_and_are_kept_per_job(tmp_path: Path) -> None:
    write_store(tmp_path)
    contexts = certs.ClientContexts(TLSContexts.fresh, str(tmp_path), limit=2)
    cert = ClientCertificate(CertStoreLocation.LOCAL_MACHINE, "my", der_sha1(LEAF), "CN=Backup Client")

    async def run() -> None:
        a = await contexts.context("{A}", cert, 0, os.getuid(), os.getgid())
        assert await contexts.context("{A}", cert, 0, os.getuid(), os.getgid()) is a
        b = await contexts.context("{B}", cert, 0, os.getuid(), os.getgid())
        assert b is not a  # never shared between jobs
        relaxed = await contexts.context("{A}", cert, 0x8, os.getuid(), os.getgid())
        assert relaxed.verify_mode == ssl.CERT_NONE and a.verify_mode == ssl.CERT_REQUIRED
        assert len(contexts) == 2  # bounded
        contexts.forget("{A}")
        assert len(contexts) == 1
        gone = ClientCertificate(CertStoreLocation.LOCAL_MACHINE, "my", "0" * 40, "CN=x")
        with pytest.raises(ClientCertificateUnavailable) as e:
            await contexts.context("{C}", gone, 0, os.getuid(), os.getgid())
        assert e.value.hresult == HResult.CRYPT_E_NOT_FOUND and not e.value.transient

    asyncio.run(run())


def test_the_key_is_loaded_through_memory_only(tmp_path: Path) -> None:
    ctx = ssl.create_default_context()
    found = certs.parse_store({"c.pem": LEAF.private_key_and_cert_chain_pem.bytes()})[0]
    before = set(os.listdir("/proc/self/fd"))
    certs.load_into(ctx, found.pem())
    assert set(os.listdir("/proc/self/fd")) <= before  # the memfd is closed
    with pytest.raises(ssl.SSLError):  # a key that is not the certificate's is refused
        certs.load_into(
            ssl.create_default_context(), LEAF.cert_chain_pems[0].bytes() + OTHER.private_key_pem.bytes()
        )


async def test_a_jobs_context_is_let_go_when_its_run_ends(
    tmp_path: Path, nginx: Nginx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler tells the downloader when a job's run is over: the SSLContext holding
    the job's key is dropped then, not kept for the next job's sake."""
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx.ca_path))  # (nginx asks for no certificate)
    machine = tmp_path / "machine"
    write_store(machine)
    make_file(nginx.www, "certs/kept.bin", 5000, seed=3)
    kept: list[int] = []
    original = certs.ClientContexts.context

    async def spy(self: certs.ClientContexts, *args: Any) -> ssl.SSLContext:
        ctx = await original(self, *args)
        kept.append(len(self))
        return ctx

    monkeypatch.setattr(certs.ClientContexts, "context", spy)
    async with Driver(tmp_path, machine_cert_dir=str(machine)) as d:
        contexts = d.scheduler.downloader.transport.certs
        assert contexts is not None
        contexts.machine_dir = str(machine)
        job = await d.job(f"{nginx.https_url}/certs/kept.bin", resume=False)
        params = {"CertStoreLocation": 1, "StoreName": "my", "CertHash": der_sha1(LEAF)}
        assert await d.service.invoke(ME, job.job_id, "SetClientCertificateById", params) == {
            "ReturnValue": 0
        }
        d.service.resume(job)
        await d.settle()
        assert job.state is JobState.TRANSFERRED
        assert kept == [1], "the job's context was made for its request"
        assert len(contexts) == 0, "and dropped when the run ended"
