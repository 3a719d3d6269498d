"""Two real Unix users on one root (system) daemon: isolation, and the owner's rights on disk.

The fixture (``site``, tests/support/users.py) creates two users and runs a root daemon; the
test acts as each user from forked children that take the user's ids (the daemon learns
who calls from SO_PEERCRED) or through the CLI under ``setpriv``.  Attacks a user can mount
on his own paths (symlinks, hard links, FIFOs, swapped directories) must all be refused,
and every file a job makes must be its owner's.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from openbits.model import JobState
from openbits.service.methods import METHODS
from openbits.transfer.files import temp_name_for
from tests.support.daemon import CLASS, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx
from tests.support.users import NEEDS_TWO_USERS, Site, User, as_user, run, setpriv

pytestmark = NEEDS_TWO_USERS


def _public_file(site: Site, name: str, data: bytes, mode: int = 0o644) -> Path:
    path = site.scratch / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- isolation of the API ------------------------------------------------------------------


def test_enumeration_lookup_and_every_method_are_isolated(site: Site) -> None:
    alice, bob = site.alice, site.bob
    source = _public_file(site, "src.bin", b"alice's")
    job = site.new_job(alice, "file://" + str(source), alice.home / "a.bin")

    status, listed = site.call(bob, "GET", CLASS)
    assert status == 200 and listed == []
    assert site.call(bob, "GET", f"{CLASS}/{job}")[0] == 404
    assert site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 403
    assert site.call(bob, "PATCH", f"{CLASS}/{job}", {"Description": "bob was here"})[0] == 404
    nowhere = "{00000000-0000-4000-8000-000000000000}"
    for method in METHODS.values():
        # bob cannot tell alice's job from one that does not exist, whatever he calls
        theirs = site.call(bob, "POST", f"{CLASS}/{job}/{method.name}", {})
        absent = site.call(bob, "POST", f"{CLASS}/{nowhere}/{method.name}", {})
        assert theirs[0] != 200 and theirs[0] == absent[0], (method.name, theirs, absent)
        assert theirs[1]["ErrorCode"] == absent[1]["ErrorCode"], method.name
    # bob's CLI sees nothing of alice's either
    cli = subprocess.run(
        [*setpriv(bob), sys.executable, "-m", "openbits", "get", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, OPENBITS_SOCKET=site.sock, HOME=str(bob.home)),
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == []

    mine = site.call(alice, "GET", CLASS)[1]
    assert [j["JobId"] for j in mine] == [job]
    after = site.daemon.job(job)
    assert after["State"] == JobState.SUSPENDED and after["Description"] != "bob was here"
    assert after["Owner"] == alice.name and len(after["Files"]) == 1


def test_removing_a_user_from_the_admin_group_takes_effect(site: Site) -> None:
    bob = site.bob
    run("gpasswd", "--add", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator")
    run("gpasswd", "--delete", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 403, 10, "bob no administrator")


def test_system_mode_refuses_a_user(site: Site) -> None:
    bob = site.bob
    places = ["--state-dir", str(bob.home / "state"), "--socket", str(bob.home / "s.sock")]
    result = subprocess.run(
        [*setpriv(bob), sys.executable, "-m", "openbits", "serve", "--system", *places],
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(bob.home)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "runs as root" in result.stderr


# -- attacks on LocalFile ------------------------------------------------------------------


def test_destinations_through_symlinks_or_foreign_directories_are_refused(site: Site) -> None:
    alice, bob = site.alice, site.bob
    source = "file://" + str(_public_file(site, "s.bin", b"x"))
    root_dir = site.scratch / "root-only"
    root_dir.mkdir(mode=0o755)

    def links() -> None:  # bob's own links, to places he may not write
        (bob.home / "etc").symlink_to(root_dir)
        (bob.home / "alice").symlink_to(alice.home)
        (bob.home / "mine").symlink_to(bob.home)  # and to his own home

    as_user(bob, links)
    job = site.new_job(bob)
    for local in (
        bob.home / "etc" / "passwd",  # a symlinked directory on the way
        bob.home / "alice" / "f.bin",
        bob.home / "mine" / "f.bin",  # (no user's symlink is followed, his own neither)
        alice.home / "f.bin",  # alice's directory
        root_dir / "f.bin",  # root's
    ):
        status, body = site.add(bob, job, source, local)
        assert status == 403 and body["ErrorCode"] == "0x80070005", (local, body)
    assert (
        list(root_dir.iterdir()) == []
        and sorted(p.name for p in alice.home.iterdir() if p.name == "f.bin") == []
    )


def test_a_users_add_file_set_refuses_a_directory_among_many_files(site: Site) -> None:
    """The destination directory checked with the owner's rights once (in a thread: his
    helper), its names listed once: a LocalFile that is a directory is still E_INVALIDARG."""
    bob = site.bob
    out = bob.home / "many"

    def make() -> None:
        out.mkdir()
        (out / "f07").mkdir()

    as_user(bob, make)
    job = site.new_job(bob)
    files = [{"RemoteUrl": "http://127.0.0.1:9/x", "LocalFile": str(out / f"f{i:02d}")} for i in range(40)]
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/AddFileSet", {"Files": files})
    assert status == 400 and body["ErrorCode"] == "0x80070057" and "f07" in body["Message"], body
    del files[7]
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/AddFileSet", {"Files": files})
    assert status == 200, body
    assert site.daemon.client.get_job(job).files_total == 39


def _planted(site: Site, plant: Callable[[Path], None]) -> tuple[str, Path]:
    """A job of bob's whose temporary file bob (or root, for a hard link) replaced with
    something else before it started; (job, the temporary path)."""
    bob = site.bob
    source = "file://" + str(_public_file(site, "src-" + secrets.token_hex(3), os.urandom(4096)))
    out = bob.home / "out"
    if not out.exists():
        out.mkdir()
        os.chown(out, bob.uid, bob.gid)
    local = out / f"f-{secrets.token_hex(3)}.bin"
    job = site.new_job(bob, source, local)
    temp = out / temp_name_for(job, 0)
    plant(temp)
    site.resume(bob, job)
    site.daemon.wait_state(job, JobState.ERROR)
    return job, temp


def test_temporary_file_attacks_are_refused(site: Site) -> None:
    alice, bob = site.alice, site.bob
    victim = alice.home / "precious"
    victim.write_bytes(b"alice's precious")
    os.chown(victim, alice.uid, alice.gid)
    victim.chmod(0o600)
    root_file = _public_file(site, "root-file", b"root's", 0o644)

    # a symlink in place of the temporary file, to a file bob may not write
    job, _ = _planted(site, lambda temp: as_user(bob, lambda: os.symlink(root_file, temp)))
    assert site.error_of(job) == (0x80070005, 4)  # E_ACCESSDENIED, LOCAL_FILE
    # a hard link to alice's file (made by root: bob's kernel would refuse it) is not cut back
    job, _ = _planted(site, lambda temp: os.link(victim, temp))
    assert site.error_of(job) == (0x80070005, 4)
    # a FIFO: refused without blocking the daemon
    job, _ = _planted(site, lambda temp: as_user(bob, lambda: os.mkfifo(temp)))
    assert site.error_of(job) == (0x80070005, 4)
    assert site.daemon.api("GET", CLASS)[0] == 200

    assert victim.read_bytes() == b"alice's precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert root_file.read_bytes() == b"root's" and stat.S_IMODE(root_file.stat().st_mode) == 0o644


def test_a_directory_swapped_for_a_symlink_before_complete_is_refused(site: Site) -> None:
    bob = site.bob
    source = "file://" + str(_public_file(site, "c.bin", b"bob's bytes"))
    work = bob.home / "work"
    as_user(bob, lambda: os.mkdir(work))
    job = site.new_job(bob, source, work / "f.bin")
    site.resume(bob, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    target = site.scratch / "root-target"
    target.mkdir(mode=0o777)  # writable by anyone, but not through bob's link

    def swap() -> None:
        os.rename(work, bob.home / "moved")
        os.symlink(target, work)

    as_user(bob, swap)
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status == 403 and body["ErrorCode"] == "0x80070005", body
    assert list(target.iterdir()) == []


# -- attacks on local sources --------------------------------------------------------------


def test_local_source_attacks_are_refused(site: Site) -> None:
    alice, bob = site.alice, site.bob
    secret = alice.home / "secret"
    secret.write_bytes(b"alice's secret")
    os.chown(secret, alice.uid, alice.gid)
    secret.chmod(0o600)
    out = bob.home / "src-out"
    as_user(bob, lambda: os.mkdir(out))
    (bob.home / "link-to-secret").symlink_to(secret)
    os.link(secret, bob.home / "hardlink-to-secret")  # (root's doing: bob's kernel would refuse)
    as_user(bob, lambda: os.mkfifo(bob.home / "fifo"))
    for name in ("link-to-secret", "hardlink-to-secret", "fifo"):
        job = site.new_job(bob, "file://" + str(bob.home / name), out / name)
        site.resume(bob, job)
        site.daemon.wait_state(job, JobState.ERROR)
        assert site.error_of(job) == (0x80070005, 5), name  # E_ACCESSDENIED, REMOTE_FILE
    direct = site.new_job(bob, "file://" + str(secret), out / "direct")
    site.resume(bob, direct)
    site.daemon.wait_state(direct, JobState.ERROR)
    assert site.error_of(direct) == (0x80070005, 5)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".BIT")] == []
    for temp in out.iterdir():
        assert b"secret" not in temp.read_bytes()


# -- the owner's files ---------------------------------------------------------------------


def test_temporary_and_published_files_belong_to_the_owner(site: Site) -> None:
    alice = site.alice
    data = os.urandom(300_000)
    source = _public_file(site, "pub.bin", data)
    local = alice.home / "pub.bin"
    job = site.new_job(alice, "file://" + str(source), local)
    site.resume(alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    temp = alice.home / temp_name_for(job, 0)
    st = temp.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (alice.uid, alice.gid, 0o600)
    status, body = site.call(alice, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status == 200 and body["ReturnValue"] == 0, body
    st = local.stat()
    assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid)
    assert local.read_bytes() == data and not temp.exists()


def test_cancel_deletes_as_the_owner(site: Site) -> None:
    alice = site.alice
    source = _public_file(site, "cx.bin", os.urandom(10_000))
    job = site.new_job(alice, "file://" + str(source), alice.home / "cx.bin")
    site.resume(alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    temp = alice.home / temp_name_for(job, 0)
    assert temp.exists()
    status, body = site.call(alice, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 0})
    assert status == 200 and body["ReturnValue"] == 0, body
    assert not temp.exists()


# -- a user who vanished ------------------------------------------------------------------


def test_a_vanished_users_job_is_listed_by_uid_and_cancelled_by_an_admin(site: Site) -> None:
    bob = site.bob
    source = _public_file(site, "v.bin", os.urandom(10_000))
    out = bob.home / "v"
    as_user(bob, lambda: os.mkdir(out))
    queued = site.new_job(bob, "file://" + str(source), out / "v.bin")
    other = site.new_job(bob, "file://" + str(source), out / "w.bin")
    run("userdel", "--force", bob.name)  # (his helper still runs: --force)
    status, everyone = site.daemon.api("GET", f"{CLASS}?AllUsers=true")
    assert status == 200
    listed = {j["JobId"]: j for j in everyone}
    assert listed[queued]["Owner"] == str(bob.uid) and listed[other]["Owner"] == str(bob.uid)
    assert site.daemon.job(queued)["Owner"] == str(bob.uid)

    assert site.daemon.api("POST", f"{CLASS}/{queued}/SetJobState", {"JobState": 2})[0] == 200
    site.daemon.wait_state(queued, JobState.ERROR)
    assert site.error_of(queued) == (0x80070005, 2)  # E_ACCESSDENIED, GENERAL_QUEUE_MANAGER
    assert not any(p.name.startswith(".BIT") for p in out.iterdir()), "nothing ran"
    status, body = site.daemon.api("POST", f"{CLASS}/{queued}/SetJobState", {"JobState": 0})
    assert status == 200, body
    assert site.daemon.job(queued)["State"] == JobState.CANCELLED
    site.daemon.client.invoke(other, "TakeOwnership")
    assert site.daemon.job(other)["Owner"] == "root"


# -- a helper its owner stopped ------------------------------------------------------------


def _helpers_of(user: User) -> list[int]:
    """The pids of the daemon's helpers acting as ``user``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            uid = entry.stat().st_uid
        except OSError:
            continue
        if uid == user.uid and b"fsops.py" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_helper_stopped_by_its_owner_stalls_no_one_else(site: Site) -> None:
    bob = site.bob
    job = site.new_job(bob)
    assert site.add(bob, job, "http://127.0.0.1:9/x", bob.home / "first.bin")[0] == 200
    (helper,) = _helpers_of(bob)
    as_user(bob, lambda: os.kill(helper, signal.SIGSTOP))  # his to signal

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(site.add, bob, job, "http://127.0.0.1:9/y", bob.home / "second.bin")
        wait_until(lambda: _state(helper) == "T", 5, "the helper stopped")
        while not pending.done():  # the daemon answers others all along
            started = time.monotonic()
            assert site.daemon.api("GET", CLASS)[0] == 200
            assert time.monotonic() - started < 2.5  # (a stalled helper holds a call 5 s)
        status, body = pending.result()
    assert status != 200, body
    assert not Path(f"/proc/{helper}").exists(), "the stopped helper was killed"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return ""


# -- TakeOwnership: the files go to the new owner -------------------------------------------


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob(".BIT*.tmp"))


def _bob_an_administrator(site: Site) -> None:
    run("gpasswd", "--add", site.bob.name, site.admins)
    wait_until(
        lambda: site.call(site.bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator"
    )


def _shared_sticky(site: Site, name: str) -> Path:
    """A directory everyone may create files in where only a file's owner may remove or
    rename it (as /tmp)."""
    path = site.scratch / name
    path.mkdir()
    path.chmod(0o1777)
    return path


SIZE = 8_000_000


def test_an_administrator_takes_a_running_job_and_its_files(site: Site, nginx: Nginx) -> None:
    """bob (an administrator, not root) takes alice's job while it downloads: refused where
    he may not write (alice's home: BG_E_NEW_OWNER_NO_FILE_ACCESS, nothing changed); in a
    shared directory the transfer stops, its bytes are copied into a new temporary file of
    bob's (alice's is removed), and it goes on from its checkpoint as bob's until bob
    completes it: the file is his."""
    alice, bob = site.alice, site.bob
    run("gpasswd", "--add", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator")
    name = f"taken-{secrets.token_hex(4)}.bin"
    digest = make_file(nginx.www, f"users/{name}", SIZE, seed=41)  # (8 s at /slow/'s 1 MB/s)
    out = alice.home / "out"
    as_user(alice, lambda: os.mkdir(out))
    refused = site.new_job(alice, f"{nginx.url}/users/{name}", out / name)
    status, body = site.call(bob, "POST", f"{CLASS}/{refused}/TakeOwnership", {})
    assert status != 200 and body["ErrorCode"] == "0x80200016", body  # BG_E_NEW_OWNER_NO_FILE_ACCESS
    assert site.daemon.job(refused)["Owner"] == alice.name

    shared = _shared_sticky(site, "shared")
    job = site.new_job(alice, f"{nginx.url}/slow/users/{name}", shared / name)
    site.resume(alice, job)
    wait_until(lambda: site.daemon.job(job)["BytesTransferred"] > 0, 20, "a checkpoint")
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
    assert status == 200, body
    taken_at = site.daemon.job(job)["BytesTransferred"]  # (the checkpoint bob's copy holds)
    assert not (shared / temp_name_for(job, 0)).exists(), "alice's temporary file is removed"
    (temp,) = _temps(shared)  # (bob's copy, under a new name)
    assert temp.stat().st_uid == bob.uid and stat.S_IMODE(temp.stat().st_mode) == 0o600
    site.daemon.wait_state(job, JobState.TRANSFERRED, timeout=30)
    resumed = [r["range"] for r in nginx.requests() if r["uri"] == f"/slow/users/{name}" and r["range"]]
    if 0 < taken_at < SIZE:  # (on a loaded machine the file may have been whole by then)
        assert resumed and resumed[-1] == f"bytes={taken_at}-", "the transfer went on from its checkpoint"
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})  # Complete
    assert status == 200 and body["ReturnValue"] == 0, body
    published = shared / name
    assert published.stat().st_uid == bob.uid and sha256_file(published) == digest


def test_cancel_after_take_ownership_deletes_the_old_owners_files(site: Site) -> None:
    alice, bob = site.alice, site.bob
    run("gpasswd", "--add", bob.name, site.admins)
    wait_until(lambda: site.call(bob, "GET", f"{CLASS}?AllUsers=true")[0] == 200, 10, "bob an administrator")
    source = _public_file(site, "tc.bin", os.urandom(10_000))
    shared = _shared_sticky(site, "shared-cancel")
    job = site.new_job(alice, "file://" + str(source), shared / "tc.bin")
    site.resume(alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    temp = shared / temp_name_for(job, 0)
    assert temp.stat().st_uid == alice.uid
    assert site.call(bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})[0] == 200
    status, body = site.call(bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 0})  # Cancel
    assert status == 200 and body["ReturnValue"] == 0, body
    assert not temp.exists() and not _temps(shared), "no temporary file is left, old or new"


def _transferred_job(site: Site, name: str, data: bytes) -> tuple[str, Path, Path]:
    """(job, its shared directory, alice's temporary file) of alice's job of one file
    (``data``, a local source) transferred, not completed, in a sticky shared directory."""
    source = _public_file(site, name, data)
    shared = _shared_sticky(site, f"shared-{name}")
    job = site.new_job(site.alice, "file://" + str(source), shared / name)
    site.resume(site.alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    temp = shared / temp_name_for(job, 0)
    assert temp.stat().st_uid == site.alice.uid
    return job, shared, temp


_HOLD_OPEN = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.fchmod(fd, 0o666)
print("open", flush=True)
for line in sys.stdin:
    try:
        os.pwrite(fd, b"X" * 4096, 0)
        os.fsync(fd)
        print("written", flush=True)
    except OSError as e:
        print("refused", e.errno, flush=True)
"""


def test_the_old_owners_open_fd_cannot_change_the_new_owners_file(site: Site) -> None:
    """alice opens her temporary file read-write (and makes it 0666) before bob takes the
    job: what she writes through that fd after TakeOwnership, and after Complete, lands in
    her old inode alone; the file bob publishes keeps the bytes transferred."""
    _bob_an_administrator(site)
    data = os.urandom(50_000)
    job, shared, temp = _transferred_job(site, "held.bin", data)
    with subprocess.Popen(
        [*setpriv(site.alice), sys.executable, "-c", _HOLD_OPEN, str(temp)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
        assert status == 200, body
        assert site.daemon.job(job)["State"] == JobState.TRANSFERRED, "the bytes were kept"
        holder.stdin.write("write\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "written"
        status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
        assert status == 200 and body["ReturnValue"] == 0, body
        holder.stdin.write("write\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "written"
    published = shared / "held.bin"
    assert published.read_bytes() == data
    st = published.stat()
    assert st.st_uid == site.bob.uid and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) & 0o022 == 0


def test_a_symlink_swapped_in_for_the_temporary_file_is_fetched_again(site: Site) -> None:
    """alice replaces her finished temporary file with a symlink (to a file bob may not
    read): TakeOwnership is not refused; the file starts again from byte 0 as bob's, and
    Complete publishes the source's bytes; her link is removed."""
    _bob_an_administrator(site)
    data = os.urandom(20_000)
    job, shared, temp = _transferred_job(site, "swapped.bin", data)

    def swap() -> None:
        os.unlink(temp)
        os.symlink("/etc/shadow", temp)

    as_user(site.alice, swap)
    status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
    assert status == 200, body
    assert not os.path.lexists(temp), "alice's link is removed"
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status == 200 and body["ReturnValue"] == 0, body
    published = shared / "swapped.bin"
    assert published.read_bytes() == data and published.stat().st_uid == site.bob.uid
    assert not _temps(shared)


def test_a_transferred_job_taken_is_completed_with_its_bytes_as_the_new_owners(
    site: Site, nginx: Nginx
) -> None:
    """A TRANSFERRED job taken stays TRANSFERRED (its bytes copied, not fetched again) and
    Complete publishes them as bob's file."""
    _bob_an_administrator(site)
    name = f"done-{secrets.token_hex(4)}.bin"
    digest = make_file(nginx.www, f"users/{name}", 300_000, seed=43)
    shared = _shared_sticky(site, "shared-done")
    job = site.new_job(site.alice, f"{nginx.url}/users/{name}", shared / name)
    site.resume(site.alice, job)
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    fetched = len(nginx.wait_requests(1, uri=f"/users/{name}"))  # (logged a moment after the send)
    status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
    assert status == 200, body
    after = site.daemon.job(job)
    assert after["State"] == JobState.TRANSFERRED and after["Owner"] == site.bob.name
    assert after["BytesTransferred"] == 300_000
    status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status == 200 and body["ReturnValue"] == 0, body
    published = shared / name
    assert published.stat().st_uid == site.bob.uid and sha256_file(published) == digest
    assert len([r for r in nginx.requests() if r["uri"] == f"/users/{name}"]) == fetched
    assert not _temps(shared)


def test_a_take_ownership_the_old_owner_stalls_stalls_no_one_else(site: Site) -> None:
    """alice stops her helper before bob takes her job: the daemon answers others all along,
    TakeOwnership is not refused (her file could not be read: it is fetched again as bob's)
    and Complete publishes the source's bytes."""
    _bob_an_administrator(site)
    data = os.urandom(30_000)
    job, shared, _temp = _transferred_job(site, "stalled.bin", data)
    (helper,) = _helpers_of(site.alice)
    as_user(site.alice, lambda: os.kill(helper, signal.SIGSTOP))  # hers to signal
    wait_until(lambda: _state(helper) == "T", 5, "the helper stopped")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(site.call, site.bob, "POST", f"{CLASS}/{job}/TakeOwnership", {})
        while not pending.done():  # the daemon answers others all along
            started = time.monotonic()
            assert site.daemon.api("GET", CLASS)[0] == 200
            assert time.monotonic() - started < 2.5  # (a stalled helper holds a call 5 s)
        status, body = pending.result()
    assert status == 200, body
    site.daemon.wait_state(job, JobState.TRANSFERRED)
    status, body = site.call(site.bob, "POST", f"{CLASS}/{job}/SetJobState", {"JobState": 1})
    assert status == 200 and body["ReturnValue"] == 0, body
    published = shared / "stalled.bin"
    assert published.read_bytes() == data and published.stat().st_uid == site.bob.uid
