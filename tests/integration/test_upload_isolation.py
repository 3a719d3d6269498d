"""An upload's source and reply file are used with the job owner's rights, not the root
daemon's (SPEC §8, issue 14): two real users, a root daemon (tests/support/users.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.daemon import CLASS, wait_until
from tests.support.users import NEEDS_TWO_USERS, Site, as_user, run

pytestmark = NEEDS_TWO_USERS

URL = "http://127.0.0.1:9/inbox/up.bin"


def _upload_job(site: Site, job_type: int) -> str:
    status, body = site.call(site.bob, "POST", f"{CLASS}/CreateJob", {"DisplayName": "up", "Type": job_type})
    assert status == 200, body
    return str(body["JobId"])


def test_an_upload_source_is_opened_with_the_owners_rights(site: Site) -> None:
    alice, bob = site.alice, site.bob

    def secret() -> str:  # alice's file, hers alone
        path = alice.home / "secret.bin"
        path.write_bytes(b"alice only")
        path.chmod(0o600)
        return str(path)

    hidden = as_user(alice, secret)
    job = _upload_job(site, 1)
    status, body = site.add(bob, job, URL, Path(hidden))
    assert status == 403 and body["ErrorCode"] == "0x80070005", body
    # (root could read it: the daemon did not)
    status, body = site.add(bob, job, URL, alice.home / "missing.bin")
    assert body["ErrorCode"] == "0x80070002", body

    def mine() -> str:
        path = bob.home / "mine.bin"
        path.write_bytes(b"b" * 77)
        path.chmod(0o600)
        return str(path)

    status, body = site.add(bob, job, URL, Path(as_user(bob, mine)))
    assert status == 200, body
    status, instance = site.call(bob, "GET", f"{CLASS}/{job}")
    assert instance["Files"][0]["BytesTotal"] == 77


def test_a_reply_file_name_must_be_in_a_directory_the_owner_may_write(site: Site) -> None:
    alice, bob = site.alice, site.bob
    job = _upload_job(site, 2)
    path = f"{CLASS}/{job}/SetReplyFileName"
    status, body = site.call(bob, "POST", path, {"ReplyFileName": str(alice.home / "r.xml")})
    assert status == 403 and body["ErrorCode"] == "0x80070005", body
    status, body = site.call(bob, "POST", path, {"ReplyFileName": str(bob.home / "r.xml")})
    assert status == 200 and body["ReturnValue"] == 0, body
    assert not os.path.exists(bob.home / "r.xml")
    status, instance = site.call(bob, "GET", f"{CLASS}/{job}")
    assert instance["ReplyFileName"] == str(bob.home / "r.xml")


def test_take_ownership_of_an_upload_job_needs_the_new_owner_to_read_its_source(site: Site) -> None:
    alice, bob = site.alice, site.bob
    run("gpasswd", "--add", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator")

    def sources() -> tuple[str, str]:  # one only alice reads, one everyone reads
        hidden, public = alice.home / "hidden.bin", alice.home / "public.bin"
        hidden.write_bytes(b"h" * 5)
        hidden.chmod(0o600)
        public.write_bytes(b"p" * 6)
        public.chmod(0o644)
        return str(hidden), str(public)

    hidden, public = as_user(alice, sources)
    jobs = []
    for source in (hidden, public):
        status, body = site.call(
            alice, "POST", f"{CLASS}/CreateJob", {"Type": 1, "RemoteUrl": URL, "LocalFile": source}
        )
        assert status == 200, body
        jobs.append(str(body["JobId"]))
    status, body = site.call(bob, "POST", f"{CLASS}/{jobs[0]}/TakeOwnership", {})
    assert status != 200 and body["ErrorCode"] == "0x80200016", body  # BG_E_NEW_OWNER_NO_FILE_ACCESS
    assert site.daemon.job(jobs[0])["Owner"] == alice.name
    status, body = site.call(bob, "POST", f"{CLASS}/{jobs[1]}/TakeOwnership", {})
    assert status == 200, body
    taken = site.daemon.job(jobs[1])
    assert taken["Owner"] == bob.name and taken["Files"][0]["LocalFile"] == public
    assert os.path.exists(public)  # (nothing copied, nothing removed: the source stays)


def test_take_ownership_of_an_upload_reply_job_fetches_its_reply_under_a_name_of_the_new_owner(
    site: Site,
) -> None:
    """The reply a new owner fetches goes to a temporary name the old owner cannot foresee
    (as a download's after TakeOwnership): a file she plants under the job's usual reply
    temporary name changes nothing; the reply is published as his."""
    import base64

    from openbits.model import JobState
    from openbits.transfer import files as fs
    from tests.support.bitsserver import BitsServer, threaded_bits_server

    alice, bob = site.alice, site.bob
    run("gpasswd", "--add", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator")
    shared = site.scratch / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # both may create files here (no sticky bit)
    data = os.urandom(3000)

    def write_source() -> str:
        source = shared / "doc.bin"
        source.write_bytes(data)
        source.chmod(0o644)
        return str(source)

    source = as_user(alice, write_source)
    with threaded_bits_server(BitsServer(reply=True)) as server:
        body = {"Type": 2, "RemoteUrl": f"{server.url}/in/doc.bin", "LocalFile": source, "Suspend": True}
        status, created = site.call(alice, "POST", f"{CLASS}/CreateJob", body)
        assert status == 200, created
        job = str(created["JobId"])
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
        assert status == 200, answer
        planted = shared / fs.reply_temp_name(job)

        def plant() -> None:
            planted.write_bytes(b"alice's")
            planted.chmod(0o666)

        as_user(alice, plant)
        site.resume(bob, job)
        site.daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/GetReplyData", {})
        assert status == 200, answer
        assert base64.b64decode(answer["ReplyData"]) == BitsServer.reply_of(data)
        status, answer = site.call(bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
        assert status == 200, answer
        site.daemon.wait_state(job, JobState.ACKNOWLEDGED)
    reply = shared / f"{job}.reply"
    assert reply.read_bytes() == BitsServer.reply_of(data) and reply.stat().st_uid == bob.uid
    assert planted.read_bytes() == b"alice's"  # (hers, untouched)
    assert sorted(p.name for p in shared.iterdir()) == sorted(["doc.bin", reply.name, planted.name])
