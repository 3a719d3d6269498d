"""Secrets at rest (SPEC §7): sealed in the store, the key beside it, lost only with the key."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from openbits.model import AuthScheme, AuthTarget, Credential, Job, ProxyUsage, Secret
from openbits.store import StoreError
from openbits.store.secrets import Keyring, key_path_for
from openbits.store.sqlite import SqliteStore

PASSWORD = "correct-horse-battery-staple-7f3a"
HEADER = "X-Api-Key: sk-live-0d9c8b7a6f5e\r\n"
PROXY_PASSWORD = "proxy-secret-55aa"


def _job() -> Job:
    job = Job(job_id="{11111111-2222-3333-4444-555555555555}", owner="alice", owner_uid=1000)
    job.custom_headers = HEADER
    job.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)] = Credential(
        AuthTarget.SERVER, AuthScheme.BASIC, "alice", Secret(PASSWORD)
    )
    job.credentials[(AuthTarget.PROXY, AuthScheme.NTLM)] = Credential(
        AuthTarget.PROXY, AuthScheme.NTLM, None, None
    )
    job.proxy_usage = ProxyUsage.OVERRIDE
    job.proxy_list = "proxy.example:3128"
    job.proxy_environment = {"http_proxy": f"http://bob:{PROXY_PASSWORD}@proxy:3128"}
    return job


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


def test_secrets_round_trip_and_never_reach_the_database_files(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    store = SqliteStore(str(db))
    store.add_job(_job())
    store.save_job(_job())
    [job] = SqliteStore(str(db)).load_jobs()
    store.close()
    basic = job.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)]
    assert basic.password == Secret(PASSWORD) and basic.user_name == "alice" and not basic.missing
    assert job.credentials[(AuthTarget.PROXY, AuthScheme.NTLM)].password is None
    assert job.custom_headers == HEADER and job.proxy_list == "proxy.example:3128"
    assert job.proxy_environment is not None and PROXY_PASSWORD in job.proxy_environment["http_proxy"]
    blob = _all_bytes(tmp_path)  # the database, its WAL and the key file
    for secret in (PASSWORD, "sk-live-0d9c8b7a6f5e", PROXY_PASSWORD):
        assert secret.encode() not in blob
    assert b"alice" in blob  # (user names are not secret: instances show them)


def test_the_key_file_is_beside_the_store_private_and_made_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    SqliteStore(str(db)).close()
    key = Path(key_path_for(str(db)))
    assert key.parent == db.parent
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    first = key.read_bytes()
    SqliteStore(str(db)).close()
    assert key.read_bytes() == first


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(StoreError, match="0600"):
        Keyring.at(str(key))


def test_a_store_copied_without_its_key_loses_only_the_secrets(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    store = SqliteStore(str(db))
    store.add_job(_job())
    store.close()
    os.unlink(key_path_for(str(db)))
    [job] = SqliteStore(str(db)).load_jobs()
    basic = job.credentials[(AuthTarget.SERVER, AuthScheme.BASIC)]
    assert basic.password is None and basic.missing and basic.user_name == "alice"
    assert job.custom_headers is None and job.proxy_environment is None
    assert job.proxy_usage is ProxyUsage.OVERRIDE and job.owner == "alice"  # the rest is there


def test_a_blob_moved_to_another_job_does_not_open(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    store = SqliteStore(str(db))
    store.add_job(_job())
    other = Job(job_id="{99999999-2222-3333-4444-555555555555}", owner="mallory", owner_uid=1001)
    store.add_job(other)
    store.close()
    con = sqlite3.connect(db)
    con.execute(
        "UPDATE jobs SET custom_headers_sealed ="
        " (SELECT custom_headers_sealed FROM jobs WHERE owner='alice'),"
        " credentials = (SELECT credentials FROM jobs WHERE owner='alice') WHERE owner = 'mallory'"
    )
    con.commit()
    con.close()
    jobs = {j.owner: j for j in SqliteStore(str(db)).load_jobs()}
    assert jobs["mallory"].custom_headers is None
    assert all(c.password is None for c in jobs["mallory"].credentials.values())
    assert jobs["alice"].custom_headers == HEADER


def test_custom_headers_of_an_older_store_are_sealed_on_open(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite"
    store = SqliteStore(str(db))
    store.add_job(Job(job_id="{11111111-2222-3333-4444-555555555555}", owner="alice", owner_uid=1000))
    store.close()
    con = sqlite3.connect(db)  # as a store of migration 10 kept them: in clear
    con.execute("UPDATE jobs SET custom_headers = ?", (HEADER,))
    con.commit()
    con.close()
    [job] = SqliteStore(str(db)).load_jobs()
    assert job.custom_headers == HEADER
    assert b"sk-live-0d9c8b7a6f5e" not in _all_bytes(tmp_path)


def test_a_secret_never_prints() -> None:
    secret = Secret(PASSWORD)
    credential = Credential(AuthTarget.SERVER, AuthScheme.BASIC, "alice", secret)
    assert PASSWORD not in repr(secret) + str(secret) + repr(credential) + f"{credential}"
    assert PASSWORD not in str(credential.to_cim())
