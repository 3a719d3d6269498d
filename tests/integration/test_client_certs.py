"""Client certificates (SPEC §7, issue 13 item 4) against a real nginx that asks for one
(``ssl_verify_client optional``) and answers with the SHA-1 thumbprint it saw
(``X-Client-SHA1: $ssl_client_fingerprint``): stores of both kinds, PEM, crt + key and
PKCS#12 files, by id and by name, through the API, ``openbits cert`` and bitsadmin; the
errors at the call; and no key material left on disk by the transfer."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from openbits.aio import AsyncClient
from openbits.errors import BitsError
from openbits.model import JobState
from tests.support.daemon import CLASS, Daemon
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx, find_nginx
from tests.support.proxy import Tinyproxy

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")

CLIENT_CA = trustme.CA()
LEAF = CLIENT_CA.issue_cert("client@example.com", common_name="Backup Client")
SECOND = CLIENT_CA.issue_cert("second@example.com", common_name="Second Client")
LOCAL_MACHINE = 1
SHA1_HEADER = "X-Client-SHA1"


def thumbprint(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_body(leaf: trustme.LeafCert) -> bytes:
    """A line from the middle of the key's PEM body: what a copy of the key would contain,
    in whatever PEM form it were written (the key is re-encoded as PKCS#8 for ``ssl``)."""
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pkcs8.splitlines()[2]


class MutualTLSNginx(Nginx):
    """The test nginx whose HTTPS server asks for a client certificate of CLIENT_CA and
    tells which one came."""

    def _config(self) -> str:
        client_ca = self.workdir / "client-ca.pem"
        CLIENT_CA.cert_pem.write_to_path(str(client_ca))
        anchor = f'ssl_certificate_key "{self.cert_path}";\n'
        config = super()._config()
        assert anchor in config
        return config.replace(
            anchor,
            anchor
            + f'        ssl_client_certificate "{client_ca}";\n'
            + "        ssl_verify_client optional;\n"
            + f"        add_header {SHA1_HEADER} $ssl_client_fingerprint always;\n"
            + "        add_header X-Client-Verify $ssl_client_verify always;\n",
        )


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    root = tmp_path_factory.mktemp("mtls")
    server = MutualTLSNginx(root / "nginx", root / "www")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def machine_store(tmp_path: Path) -> Path:
    """The daemon's LOCAL_MACHINE store directory (its ``machine_cert_dir``)."""
    path = tmp_path / "machine-certs"
    path.mkdir()
    return path


@pytest.fixture
def mdaemon(tmp_path: Path, mtls: Nginx, machine_store: Path) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path / "state",
        config={"machine_cert_dir": str(machine_store)},
        env={"SSL_CERT_FILE": str(mtls.ca_path)},
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()


def fill_store(store: Path, kind: str, leaf: trustme.LeafCert = LEAF) -> None:
    """One certificate in ``store`` as a PEM file with its key, a crt + key pair, a PKCS#12
    file without a password, or a certificate alone."""
    store.mkdir(parents=True, exist_ok=True)
    if kind == "pem":
        leaf.private_key_and_cert_chain_pem.write_to_path(str(store / "client.pem"))
    elif kind in ("pair", "no-key"):
        leaf.cert_chain_pems[0].write_to_path(str(store / "client.crt"))
        if kind == "pair":
            leaf.private_key_pem.write_to_path(str(store / "client.key"))
    else:
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        blob = pkcs12.serialize_key_and_certificates(
            b"client",
            key,  # type: ignore[arg-type]
            cert,
            None,
            serialization.NoEncryption(),
        )
        (store / "client.p12").write_bytes(blob)


def new_job(daemon: Daemon, mtls: Nginx, dest: Path, name: str) -> tuple[str, Path]:
    make_file(mtls.www, f"mtls/{name}.bin", 40_000, seed=len(name))
    local = dest / f"{name}.bin"
    job = daemon.client.create_job(name).job_id
    daemon.client.add_file(job, f"{mtls.https_url}/mtls/{name}.bin", str(local))
    return job, local


def fingerprint_seen(daemon: Daemon, job: str) -> str:
    """Transfer the job and answer the thumbprint nginx saw ("" for none)."""
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    local = daemon.job(job)["Files"][0]["LocalFile"]
    headers = daemon.client.get_response_headers(job, local) or ""
    values = [
        line.partition(":")[2].strip()
        for line in headers.split("\r\n")
        if line.lower().startswith(SHA1_HEADER.lower() + ":")
    ]
    assert len(values) <= 1, headers  # (nginx leaves out a header with an empty value)
    verified = "X-Client-Verify: SUCCESS" in headers
    assert verified == bool(values), headers
    return values[0].replace(":", "").lower() if values else ""


def call(daemon: Daemon, job: str, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    return daemon.api("POST", f"{CLASS}/{job}/{method}", body)


@pytest.mark.parametrize("kind", ["pem", "pair", "pkcs12"])
def test_a_certificate_by_id_reaches_the_server(
    mdaemon: Daemon, mtls: Nginx, machine_store: Path, dest: Path, kind: str
) -> None:
    fill_store(machine_store / "MY", kind)
    job, local = new_job(mdaemon, mtls, dest, f"by-id-{kind}")
    digest = thumbprint(LEAF)
    answer = mdaemon.client.invoke(
        job,
        "SetClientCertificateById",
        CertStoreLocation=LOCAL_MACHINE,
        StoreName="my",  # the store's name in any case
        CertHash=list(bytes.fromhex(digest)),
    )
    assert answer["ReturnValue"] == 0
    shown = mdaemon.job(job)["ClientCertificate"]
    assert shown == {
        "CertStoreLocation": LOCAL_MACHINE,
        "StoreName": "my",
        "CertHash": digest,
        "SubjectName": shown["SubjectName"],
    }
    assert shown["SubjectName"].startswith("CN=Backup Client,")
    assert fingerprint_seen(mdaemon, job) == digest
    mdaemon.client.complete(job)
    assert local.stat().st_size == 40_000


def test_by_name_through_the_cli_and_bitsadmin_and_remove(
    mdaemon: Daemon, mtls: Nginx, machine_store: Path, dest: Path
) -> None:
    fill_store(machine_store / "Pair", "pair")
    fill_store(machine_store / "Pair", "pem", SECOND)  # another certificate beside it
    job, _ = new_job(mdaemon, mtls, dest, "by-name-cli")
    result = mdaemon.cli(
        "cert", job, "--store-location", "local-machine", "--store", "PAIR", "--by-name", "backup client"
    )
    assert result.returncode == 0, result
    shown = mdaemon.cli("get", job, check=True).stdout
    assert re.search(r"ClientCertificate +CN=Backup Client,", shown) and thumbprint(LEAF) in shown, shown
    assert fingerprint_seen(mdaemon, job) == thumbprint(LEAF)

    # bitsadmin, by the whole subject (Windows writes its attributes the other way round)
    job2, _ = new_job(mdaemon, mtls, dest, "by-name-bitsadmin")
    subject = x509.load_pem_x509_certificate(SECOND.cert_chain_pems[0].bytes()).subject.rfc4514_string()
    windows_order = ", ".join(reversed(subject.split(",")))
    out = mdaemon.cli(
        "/SETCLIENTCERTIFICATEBYNAME",
        job2,
        "BG_CERT_STORE_LOCATION_LOCAL_MACHINE",
        "Pair",
        windows_order,
        prog="bitsadmin",
    )
    assert out.returncode == 0 and out.stdout.endswith("Client certificate set.\n"), out
    got = mdaemon.cli("/GETCLIENTCERTIFICATE", job2, prog="bitsadmin")
    assert got.returncode == 0 and f"LOCAL_MACHINE Pair {subject}" in got.stdout, got
    by_id = mdaemon.cli(
        "/SETCLIENTCERTIFICATEBYID", job2, "2", "Pair", thumbprint(SECOND).upper(), prog="bitsadmin"
    )
    assert by_id.returncode == 0, by_id
    assert mdaemon.job(job2)["ClientCertificate"]["CertHash"] == thumbprint(SECOND)
    assert fingerprint_seen(mdaemon, job2) == thumbprint(SECOND)

    # removed: the next transfer presents none (a new job file, same server, same daemon)
    removed = mdaemon.cli("/REMOVECLIENTCERTIFICATE", job2, prog="bitsadmin")
    assert removed.returncode == 0 and removed.stdout.endswith("Client certificate removed.\n"), removed
    assert mdaemon.job(job2)["ClientCertificate"] is None
    again = call(mdaemon, job2, "RemoveClientCertificate", {})
    assert (again[0], again[1]["ReturnValue"], again[1]["Name"]) == (200, 1, "S_FALSE"), again
    mdaemon.client.complete(job2)
    job3, _ = new_job(mdaemon, mtls, dest, "removed")
    mdaemon.client.set_client_certificate_by_name(job3, 1, "Pair", "Backup Client")
    assert mdaemon.client.remove_client_certificate(job3) is True
    assert mdaemon.client.remove_client_certificate(job3) is False  # S_FALSE: there was none
    assert fingerprint_seen(mdaemon, job3) == ""


def test_errors_at_the_call_change_nothing(
    mdaemon: Daemon, mtls: Nginx, machine_store: Path, dest: Path
) -> None:
    fill_store(machine_store / "MY", "no-key")
    job, _ = new_job(mdaemon, mtls, dest, "errors")
    digest = thumbprint(LEAF)

    def refused(method: str, status: int, name: str, **params: Any) -> None:
        answer = call(mdaemon, job, method, params)
        assert (answer[0], answer[1]["Name"]) == (status, name), answer
        assert mdaemon.job(job)["ClientCertificate"] is None

    by_id = "SetClientCertificateById"
    refused(by_id, 400, "NTE_NO_KEY", CertStoreLocation=1, StoreName="MY", CertHash=digest)
    refused(by_id, 400, "CRYPT_E_NOT_FOUND", CertStoreLocation=1, StoreName="MY", CertHash=thumbprint(SECOND))
    refused(by_id, 400, "CRYPT_E_NOT_FOUND", CertStoreLocation=1, StoreName="Nope", CertHash=digest)
    refused(by_id, 400, "E_NOTIMPL", CertStoreLocation=2, StoreName="MY", CertHash=digest)
    refused(by_id, 400, "E_NOTIMPL", CertStoreLocation=8, StoreName="MY", CertHash=digest)
    refused(by_id, 400, "E_INVALIDARG", CertStoreLocation=1, StoreName="MY", CertHash=[1, 2, 3])
    refused(by_id, 400, "E_INVALIDARG", CertStoreLocation=1, StoreName="MY")
    refused(by_id, 400, "E_INVALIDARG", CertStoreLocation=1, StoreName="../MY", CertHash=digest)
    refused(
        "SetClientCertificateByName",
        400,
        "NTE_NO_KEY",
        CertStoreLocation=1,
        StoreName="MY",
        SubjectName="Backup Client",
    )
    refused(
        "SetClientCertificateByName",
        400,
        "CRYPT_E_NOT_FOUND",
        CertStoreLocation=1,
        StoreName="MY",
        SubjectName="Backup",
    )
    cli = mdaemon.cli("cert", job, "--store-location", "local-machine", "--by-id", thumbprint(SECOND))
    assert cli.returncode != 0 and "0x80092004" in cli.stderr, cli
    # a finished job takes none (the methods see only the jobs not finished)
    mdaemon.client.cancel(job)
    assert call(mdaemon, job, "RemoveClientCertificate", {})[1]["Name"] in (
        "BG_E_INVALID_STATE",
        "BG_E_NOT_FOUND",
    )


def test_a_certificate_gone_from_its_store_fails_the_job(
    mdaemon: Daemon, mtls: Nginx, machine_store: Path, dest: Path
) -> None:
    fill_store(machine_store / "MY", "pem")
    job, _ = new_job(mdaemon, mtls, dest, "gone")
    mdaemon.client.set_client_certificate_by_id(job, 1, "MY", thumbprint(LEAF))
    shutil.rmtree(machine_store / "MY")
    mdaemon.client.resume(job)
    mdaemon.wait_state(job, JobState.ERROR)
    error = mdaemon.client.invoke(job, "GetError")
    assert error["ErrorCode"] == 0x80092004, error


async def test_the_async_client_sets_and_removes(mdaemon: Daemon, machine_store: Path) -> None:
    fill_store(machine_store / "MY", "pkcs12")
    async with AsyncClient(mdaemon.socket) as client:
        job = (await client.create_job("async-cert")).job_id
        await client.set_client_certificate_by_id(job, 1, "MY", bytes.fromhex(thumbprint(LEAF)))
        assert mdaemon.job(job)["ClientCertificate"]["CertHash"] == thumbprint(LEAF)
        await client.set_client_certificate_by_name(job, 1, "my", "BACKUP CLIENT")
        with pytest.raises(BitsError) as missing:
            await client.set_client_certificate_by_name(job, 1, "my", "nobody's")
        assert missing.value.hresult == 0x80092004
        assert await client.remove_client_certificate(job) is True
        assert await client.remove_client_certificate(job) is False


def test_take_ownership_removes_the_certificate(mdaemon: Daemon, machine_store: Path) -> None:
    """bits-spec §5.9: what was the old owner's does not go with the job."""
    fill_store(machine_store / "MY", "pem")
    job = mdaemon.client.create_job("taken").job_id
    mdaemon.client.set_client_certificate_by_id(job, 1, "MY", thumbprint(LEAF))
    assert mdaemon.job(job)["ClientCertificate"] is not None
    assert mdaemon.client.invoke(job, "TakeOwnership") == {"ReturnValue": 0}  # (root: an administrator)
    assert mdaemon.job(job)["ClientCertificate"] is None


def _files_with(needle: bytes, top: Path, since: float, skip: Path) -> list[str]:
    """Regular files under ``top`` changed since ``since`` that hold ``needle``."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=lambda e: None):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path, follow_symlinks=False)
                if not os.path.isfile(path) or st.st_mtime < since or st.st_size > 8 << 20:
                    continue
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


def test_no_key_material_is_left_on_disk(
    mdaemon: Daemon, mtls: Nginx, machine_store: Path, dest: Path, tmp_path: Path
) -> None:
    since = time.time() - 1
    fill_store(machine_store / "MY", "pkcs12")  # the key is in no PEM file anywhere
    job, _ = new_job(mdaemon, mtls, dest, "no-trace")
    mdaemon.client.invoke(
        job, "SetClientCertificateById", CertStoreLocation=1, StoreName="MY", CertHash=thumbprint(LEAF)
    )
    assert fingerprint_seen(mdaemon, job) == thumbprint(LEAF)
    needle = key_body(LEAF)
    assert _files_with(needle, mdaemon.state_dir, 0, machine_store) == []
    assert _files_with(needle, Path(tempfile.gettempdir()), since, machine_store) == []
    # the memory file the key went through is closed
    assert mdaemon.proc is not None
    fds = Path(f"/proc/{mdaemon.proc.pid}/fd")
    assert not [f for f in fds.iterdir() if "openbits-client-cert" in os.readlink(f)]
    # and the store holds where the certificate is, not what it is
    stored = b"".join(p.read_bytes() for p in mdaemon.state_dir.glob("jobs.sqlite*"))
    assert needle not in stored and thumbprint(LEAF).encode() in stored


@pytest.mark.skipif(os.geteuid() != 0, reason="writes a store in root's home")
def test_a_current_user_store_is_in_the_owners_home(mdaemon: Daemon, mtls: Nginx, dest: Path) -> None:
    """The daemon and the caller are root here: root's CURRENT_USER store is in root's home
    (from the password database), in a store of a random name removed afterwards."""
    home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    root = home / ".config" / "openbits" / "certs"
    created = [p for p in (home / ".config", home / ".config" / "openbits", root) if not p.exists()]
    name = f"openbits-test-{secrets.token_hex(4)}"
    try:
        fill_store(root / name, "pem")
        job, _ = new_job(mdaemon, mtls, dest, "current-user")
        answer = mdaemon.cli("cert", job, "--store", name.upper(), "--by-id", thumbprint(LEAF), "--json")
        assert answer.returncode == 0 and json.loads(answer.stdout)["ReturnValue"] == 0, answer
        assert mdaemon.job(job)["ClientCertificate"]["CertStoreLocation"] == 0
        assert fingerprint_seen(mdaemon, job) == thumbprint(LEAF)
    finally:
        shutil.rmtree(root / name, ignore_errors=True)
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)


def test_through_an_https_proxy_the_tunnel_carries_the_certificate(
    tmp_path: Path, mtls: Nginx, machine_store: Path, dest: Path, tinyproxy: Tinyproxy
) -> None:
    """A proxied request goes through aiohttp and CONNECT; the job's context is used on the
    tunnel all the same."""
    fill_store(machine_store / "MY", "pem")
    via = Daemon(
        tmp_path / "via",
        config={"machine_cert_dir": str(machine_store)},
        env={"SSL_CERT_FILE": str(mtls.ca_path), "https_proxy": tinyproxy.url, "no_proxy": ""},
    )
    via.start()
    try:
        job, _ = new_job(via, mtls, dest, "proxied")
        via.client.invoke(
            job, "SetClientCertificateById", CertStoreLocation=1, StoreName="MY", CertHash=thumbprint(LEAF)
        )
        assert fingerprint_seen(via, job) == thumbprint(LEAF)
    finally:
        via.stop()
    assert f"CONNECT 127.0.0.1:{mtls.https_port} " in tinyproxy.log(), "it went through the proxy"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_the_store_is_read_with_the_owners_rights(tmp_path: Path, mtls: Nginx) -> None:
    """A root daemon serving nobody reads nobody's certificate as nobody: at the call (a
    file nobody cannot read is not in his store) and again at the handshake."""
    from tests.integration.test_users import NOBODY, api, as_nobody

    assert NOBODY is not None
    shared = Path(tempfile.mkdtemp(prefix="openbits-certs-"))
    try:
        shared.chmod(0o755)
        store = shared / "machine" / "Shared"
        fill_store(store, "pem")
        fill_store(store, "pair", SECOND)
        (store / "client.key").chmod(0o600)  # root's: the key of SECOND, closed to nobody
        for path in (shared / "machine", store, store / "client.pem", store / "client.crt"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        out = shared / "dest"
        out.mkdir()
        os.chown(out, NOBODY.pw_uid, NOBODY.pw_gid)
        run = shared / "run"
        run.mkdir(mode=0o755)
        d = Daemon(
            tmp_path / "state",
            config={"socket_mode": 0o666, "machine_cert_dir": str(shared / "machine")},
            socket=str(run / "openbits.sock"),
            env={"SSL_CERT_FILE": str(mtls.ca_path)},
        )
        d.start()
        try:
            _nobody_uses_his_rights(d, mtls, store, out, api, as_nobody)
        finally:
            d.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _nobody_uses_his_rights(d: Daemon, mtls: Nginx, store: Path, out: Path, api: Any, as_nobody: Any) -> None:
    sock = d.socket
    make_file(mtls.www, "mtls/nobody.bin", 10_000, seed=7)
    url = f"{mtls.https_url}/mtls/nobody.bin"

    def setup() -> dict[str, Any]:
        _, created = api(sock, "POST", f"{CLASS}/CreateJob", {"DisplayName": "nb"})
        job = created["JobId"]
        api(sock, "POST", f"{CLASS}/{job}/AddFile", {"RemoteUrl": url, "LocalFile": str(out / "n.bin")})
        params = {"CertStoreLocation": 1, "StoreName": "shared"}
        return {
            "job": job,
            "second": api(
                sock,
                "POST",
                f"{CLASS}/{job}/SetClientCertificateById",
                {**params, "CertHash": thumbprint(SECOND)},
            ),
            "leaf": api(
                sock,
                "POST",
                f"{CLASS}/{job}/SetClientCertificateById",
                {**params, "CertHash": thumbprint(LEAF)},
            ),
        }

    done = as_nobody(setup)
    assert done["second"][1]["Name"] == "NTE_NO_KEY", "the key nobody cannot read is not in his store"
    assert done["leaf"][1] == {"ReturnValue": 0}
    # root's own job finds SECOND's key: the file is root's to read
    root_job = d.client.create_job("root").job_id
    answer = d.client.invoke(
        root_job,
        "SetClientCertificateById",
        CertStoreLocation=1,
        StoreName="Shared",
        CertHash=thumbprint(SECOND),
    )
    assert answer["ReturnValue"] == 0
    # the handshake reads the store again, as nobody: closed to him now, the job fails
    (store / "client.pem").chmod(0o600)
    job = done["job"]
    as_nobody(lambda: api(sock, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 2})[0])
    failed = d.wait_state(job, JobState.ERROR)
    assert failed["State"] == JobState.ERROR
    assert d.client.invoke(job, "GetError")["ErrorCode"] == 0x80092004
