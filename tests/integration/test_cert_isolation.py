"""Client certificate stores with two real Unix users on a root daemon (issue 13 items 4
and 5): a CURRENT_USER store in the user's own home works by id and by name and presents
its certificate to a real nginx; and the attacks a user can mount on his store's paths are
refused.  The daemon lists and reads a store through the owner's helper (``owner.Owners``,
``fsops``): no user's symlink is walked, no link at a file name followed, a FIFO never
opened for long enough to block, nothing read that the owner could not read himself.

Why CRYPT_E_NOT_FOUND and not E_ACCESSDENIED: a link in a store (or a store that is a link)
is never followed, so the daemon never learns whether its target exists or who may read it;
the file is simply not in the store as the daemon reads it, like a file the owner cannot
read, and the answer is the one for a certificate that is not there.  An access error would
tell a user which other users' files exist.  When the certificate is in the store and only
its key is a link, a hard link to a key he cannot read or a FIFO, the answer is NTE_NO_KEY:
the certificate was found, its key was not read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.model import JobState
from tests.integration.test_client_certs import (
    CLIENT_CA,
    LEAF,
    SECOND,
    SHA1_HEADER,
    MutualTLSNginx,
    fill_store,
    thumbprint,
)
from tests.support.daemon import CLASS
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx, find_nginx
from tests.support.users import NEEDS_TWO_USERS, Site, User, as_user, open_site

pytestmark = [
    NEEDS_TWO_USERS,
    pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed"),
]

#: a certificate whose files are alice's alone, and one whose file is root's alone
ALICES = CLIENT_CA.issue_cert("alice@example.com", common_name="Alice Client")
ROOTS = CLIENT_CA.issue_cert("root@example.com", common_name="Root Client")
USER_STORES = ".config/openbits/certs"
CURRENT_USER, LOCAL_MACHINE = 0, 1


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    root = tmp_path_factory.mktemp("mtls-iso")
    server = MutualTLSNginx(root / "nginx", root / "www")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def machine() -> Iterator[Path]:
    """The daemon's LOCAL_MACHINE stores: root's, open to all (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="openbits-machine-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mtls: Nginx, machine: Path) -> Iterator[Site]:
    state = tmp_path_factory.mktemp("cert-iso") / "state"
    config = {"machine_cert_dir": str(machine)}
    with open_site(state, config=config, env={"SSL_CERT_FILE": str(mtls.ca_path)}) as opened:
        yield opened


def user_store(user: User, name: str) -> Path:
    return user.home / USER_STORES / name


def make_store(user: User, name: str, *contents: tuple[str, Any]) -> Path:
    """The store ``name`` in ``user``'s home, made by him: (kind, leaf) as ``fill_store``
    writes them."""
    store = user_store(user, name)

    def fill() -> None:
        for kind, leaf in contents:
            fill_store(store, kind, leaf)

    as_user(user, fill)
    return store


def set_by(site: Site, user: User, job: str, store: str, location: int = CURRENT_USER, **how: str) -> Any:
    """ReturnValue of SetClientCertificateById (``leaf=``) or ByName (``name=``) called by
    ``user``, or the error's name."""
    params: dict[str, Any] = {"CertStoreLocation": location, "StoreName": store}
    if "leaf" in how:
        method, params["CertHash"] = "SetClientCertificateById", how["leaf"]
    else:
        method, params["SubjectName"] = "SetClientCertificateByName", how["name"]
    status, body = site.call(user, "POST", f"{CLASS}/{job}/{method}", params)
    if status == 200:
        return body["ReturnValue"]
    return body["Name"]


def https_job(site: Site, user: User, mtls: Nginx, name: str) -> tuple[str, Path]:
    make_file(mtls.www, f"iso/{name}.bin", 20_000, seed=len(name))
    local = user.home / f"{name}.bin"
    return site.new_job(user, f"{mtls.https_url}/iso/{name}.bin", local), local


def seen_by_nginx(site: Site, job: str, local: Path) -> str:
    """The thumbprint nginx saw for the job's (transferred) file, "" for none."""
    headers = site.daemon.client.get_response_headers(job, str(local)) or ""
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == SHA1_HEADER.lower():
            return value.strip().replace(":", "").lower()
    return ""


def test_a_current_user_store_in_the_owners_home_works_by_id_and_by_name(site: Site, mtls: Nginx) -> None:
    alice = site.alice
    store = make_store(alice, "MY", ("pem", LEAF), ("pair", SECOND))
    as_user(alice, lambda: [p.chmod(0o600) for p in store.iterdir()])  # her files, hers alone
    job, local = https_job(site, alice, mtls, "alice")
    assert set_by(site, alice, job, "my", leaf=thumbprint(LEAF)) == 0
    assert site.daemon.job(job)["ClientCertificate"]["CertHash"] == thumbprint(LEAF)
    assert set_by(site, alice, job, "My", name="second client") == 0
    shown = site.daemon.job(job)["ClientCertificate"]
    assert (shown["CertStoreLocation"], shown["CertHash"]) == (CURRENT_USER, thumbprint(SECOND))
    site.resume(alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    assert seen_by_nginx(site, job, local) == thumbprint(SECOND), "read again as alice at the handshake"
    # bob has no such store: his home is his
    other = site.new_job(site.bob)
    assert set_by(site, site.bob, other, "MY", leaf=thumbprint(LEAF)) == "CRYPT_E_NOT_FOUND"


def test_links_in_a_store_and_linked_stores_are_not_followed(site: Site) -> None:
    alice, bob = site.alice, site.bob
    secret = make_store(alice, "Secret", ("pem", ALICES))  # alice's, closed to bob
    as_user(alice, lambda: [p.chmod(0o700 if p.is_dir() else 0o600) for p in (secret, *secret.iterdir())])
    root_only = site.scratch / "root-only.pem"
    ROOTS.private_key_and_cert_chain_pem.write_to_path(str(root_only))
    root_only.chmod(0o600)
    public = site.scratch / "public-store"  # root's, readable by all: only the link is wrong
    fill_store(public, "pem", LEAF)
    public.chmod(0o755)
    (public / "client.pem").chmod(0o644)
    mine = make_store(bob, "Mine", ("pem", LEAF))  # bob's own file, read through a link

    def links() -> None:
        store = user_store(bob, "Links")
        store.mkdir()
        (store / "alice.pem").symlink_to(secret / "client.pem")
        (store / "root.pem").symlink_to(root_only)
        (store / "mine.pem").symlink_to(mine / "client.pem")
        (user_store(bob, "Public")).symlink_to(public)
        (user_store(bob, "Alices")).symlink_to(secret)

    as_user(bob, links)
    job = site.new_job(bob)
    assert set_by(site, bob, job, "Mine", leaf=thumbprint(LEAF)) == 0  # (the file itself is fine)
    for leaf in (ALICES, ROOTS, LEAF):
        assert set_by(site, bob, job, "Links", leaf=thumbprint(leaf)) == "CRYPT_E_NOT_FOUND", leaf
    assert set_by(site, bob, job, "Public", leaf=thumbprint(LEAF)) == "CRYPT_E_NOT_FOUND"
    assert set_by(site, bob, job, "Alices", leaf=thumbprint(ALICES)) == "CRYPT_E_NOT_FOUND"
    assert set_by(site, bob, job, "Alices", name="Alice Client") == "CRYPT_E_NOT_FOUND"
    # alice's own store, by alice: it was never the files that were wrong
    mine_job = site.new_job(alice)
    assert set_by(site, alice, mine_job, "secret", leaf=thumbprint(ALICES)) == 0


def test_a_key_reached_through_a_link_is_not_read(site: Site) -> None:
    """The certificate is bob's; its key a symlink, or a hard link (made by root: bob's
    kernel refuses him one to a file he cannot read), to alice's copy: NTE_NO_KEY."""
    alice, bob = site.alice, site.bob
    key = alice.home / "leaf.key"

    def alices_key() -> None:
        LEAF.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)

    as_user(alice, alices_key)
    soft = make_store(bob, "SoftKey", ("no-key", LEAF))
    as_user(bob, lambda: (soft / "client.key").symlink_to(key))
    hard = make_store(bob, "HardKey", ("no-key", LEAF))
    os.link(key, hard / "client.key")
    job = site.new_job(bob)
    assert set_by(site, bob, job, "SoftKey", leaf=thumbprint(LEAF)) == "NTE_NO_KEY"
    assert set_by(site, bob, job, "HardKey", leaf=thumbprint(LEAF)) == "NTE_NO_KEY"
    assert site.daemon.job(job)["ClientCertificate"] is None


def test_a_fifo_in_a_store_hangs_nothing(site: Site) -> None:
    bob = site.bob
    store = make_store(bob, "Fifo", ("pem", LEAF), ("no-key", SECOND))

    def fifos() -> None:
        os.mkfifo(store / "a-fifo.pem")
        os.mkfifo(store / "client.key")  # (SECOND's key, were it a file)

    as_user(bob, fifos)
    job = site.new_job(bob)
    for leaf, answer in ((LEAF, 0), (SECOND, "NTE_NO_KEY")):  # (each call timed on its own)
        started = time.monotonic()
        assert set_by(site, bob, job, "FIFO", leaf=thumbprint(leaf)) == answer
        assert time.monotonic() - started < 4.0, "below the helper's 5 s: no read blocked"


def test_a_machine_store_file_the_owner_cannot_read_is_not_in_his_store(site: Site, machine: Path) -> None:
    bob = site.bob
    store = machine / "Shared"
    fill_store(store, "pem", LEAF)
    ROOTS.private_key_and_cert_chain_pem.write_to_path(str(store / "root.pem"))
    store.chmod(0o755)
    (store / "client.pem").chmod(0o644)
    (store / "root.pem").chmod(0o600)
    job = site.new_job(bob)
    assert set_by(site, bob, job, "shared", LOCAL_MACHINE, leaf=thumbprint(ROOTS)) == "CRYPT_E_NOT_FOUND"
    assert set_by(site, bob, job, "shared", LOCAL_MACHINE, leaf=thumbprint(LEAF)) == 0
    # root's own job finds it: the file is there, and root's to read
    root_job = site.daemon.client.create_job("root").job_id
    params = {"CertStoreLocation": LOCAL_MACHINE, "StoreName": "Shared", "CertHash": thumbprint(ROOTS)}
    assert site.daemon.client.invoke(root_job, "SetClientCertificateById", **params)["ReturnValue"] == 0


def test_a_store_file_swapped_for_a_link_fails_the_job_at_the_handshake(site: Site, mtls: Nginx) -> None:
    """The handshake reads the store again, the same way: a file bob swaps for a link to
    the same bytes after the call is not read then."""
    bob = site.bob
    store = make_store(bob, "Swap", ("pem", LEAF))
    job, _ = https_job(site, bob, mtls, "swapped")
    assert set_by(site, bob, job, "Swap", leaf=thumbprint(LEAF)) == 0

    def swap() -> None:
        os.rename(store / "client.pem", bob.home / "moved.pem")
        (store / "client.pem").symlink_to(bob.home / "moved.pem")

    as_user(bob, swap)
    site.resume(bob, job)
    site.daemon.wait_state(job, JobState.ERROR)
    assert site.error_of(job)[0] == 0x80092004  # CRYPT_E_NOT_FOUND
