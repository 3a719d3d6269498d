"""Unit tests of openbits.transfer.owner: the helper processes that act as a job's owner.

Root only (a helper can become someone else only when started by root); the owner is
``nobody``.  Real processes, real files; no mocks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.transfer import files
from openbits.transfer import owner as owner_module
from openbits.transfer.owner import Identity, Owners, read_as_owner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

NOBODY = pwd.getpwnam("nobody") if os.geteuid() == 0 else None


@pytest.fixture
def owners() -> Iterator[Owners]:
    pool = Owners(timeout_s=1.0)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="openbits-owner-", dir="/tmp"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def test_the_helper_is_the_owner_for_good(owners: Owners, public_dir: Path) -> None:
    assert NOBODY is not None
    assert not owners.exists(NOBODY.pw_uid, None, str(public_dir / "x"))
    (pid,) = owners.helpers()
    ids = _ids(pid)
    assert ids["Uid"] == [NOBODY.pw_uid] * 4  # real, effective, saved, file system
    assert ids["Gid"] == [NOBODY.pw_gid] * 4
    assert set(ids["Groups"]) == set(Identity.of(NOBODY.pw_uid).groups)
    assert Path(f"/proc/{pid}/status").read_text().count("CapEff:\t0000000000000000") == 1


def test_a_killed_or_stopped_helper_is_replaced(public_dir: Path) -> None:
    assert NOBODY is not None
    uid = NOBODY.pw_uid
    owners = Owners(timeout_s=3.0, pause_s=1.0)  # (3 s: the first answer starts a Python process)
    try:
        owners.exists(uid, None, str(public_dir / "x"))
        (first,) = owners.helpers()
        os.kill(first, signal.SIGKILL)  # as its owner could
        deadline = time.monotonic() + 10
        while (
            Path(f"/proc/{first}/stat").read_text().split(") ")[1][0] != "Z" and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert owners.exists(uid, None, str(public_dir)) is True
        (second,) = owners.helpers()
        assert second != first
        os.kill(second, signal.SIGSTOP)  # as its owner could
        stalled = time.monotonic()
        with pytest.raises(OSError) as info:
            owners.exists(uid, None, str(public_dir))
        assert info.value.errno == errno.ETIMEDOUT
        assert second not in owners.helpers(), "killed"
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            owners.exists(uid, None, str(public_dir))
        assert info.value.errno == errno.EAGAIN and time.monotonic() - started < 1.0, "no second 3 s wait"
        assert owners.exists(0, None, str(public_dir)) is True, "others are not paused"
        deadline = time.monotonic() + 10

        def after_the_pause() -> bool:
            try:
                return owners.exists(uid, None, str(public_dir))
            except BlockingIOError:
                assert time.monotonic() < deadline, "still paused"
                time.sleep(0.05)
                return False

        while not after_the_pause():
            pass
        assert time.monotonic() - stalled >= 3.0 + 1.0  # (the wait for the answer, then the pause)
    finally:
        owners.close()


def test_read_as_owner(owners: Owners, public_dir: Path) -> None:
    assert NOBODY is not None
    mine = public_dir / "cert.pem"
    mine.write_bytes(b"-----BEGIN-----")
    mine.chmod(0o644)
    secret = public_dir / "root.key"
    secret.write_bytes(b"root's key")
    secret.chmod(0o600)
    uid = NOBODY.pw_uid
    assert asyncio.run(read_as_owner(owners, uid, str(mine), 100)) == b"-----BEGIN-----"
    with pytest.raises(OSError) as info:
        asyncio.run(read_as_owner(owners, uid, str(mine), 4))
    assert info.value.errno == errno.EFBIG
    with pytest.raises(PermissionError):
        asyncio.run(read_as_owner(owners, uid, str(secret), 100))
    assert asyncio.run(read_as_owner(owners, 0, str(secret), 100)) == b"root's key"  # root's own: in-process


def test_idle_helpers_are_closed(public_dir: Path) -> None:
    assert NOBODY is not None
    pool = Owners(idle_s=1.0)  # (well above a first answer, which starts a Python process)
    try:
        pool.exists(NOBODY.pw_uid, None, str(public_dir))
        (pid,) = pool.helpers()
        deadline = time.monotonic() + 10
        while (pool.helpers() or Path(f"/proc/{pid}").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.helpers() == [], "the idle helper was closed"
        assert not Path(f"/proc/{pid}").exists(), "and reaped"
        pool.exists(NOBODY.pw_uid, None, str(public_dir))  # a new one when there is work again
        assert len(pool.helpers()) == 1
    finally:
        pool.close()
    assert pool.helpers() == []


def test_a_path_too_long_for_a_request_is_refused_and_the_helper_kept(
    owners: Owners, public_dir: Path
) -> None:
    """A path whose JSON would not fit in one datagram (4-byte UTF-8 characters take 12
    bytes of JSON each) is ENAMETOOLONG, and the helper is not taken for dead."""
    assert NOBODY is not None
    uid = NOBODY.pw_uid
    owners.exists(uid, None, str(public_dir / "x"))
    (helper,) = owners.helpers()
    long_name = str(public_dir / ("\U0001f600" * 60 + "/")) * 70 + "f"  # ~17 KB, 4,000 characters
    for action in (
        lambda: owners.exists(uid, None, long_name),
        lambda: owners.publish(uid, None, long_name, long_name + "x", 0o644, None),
    ):
        with pytest.raises(OSError) as caught:
            action()
        assert caught.value.errno == errno.ENAMETOOLONG
    assert owners.helpers() == [helper]
    assert not owners.exists(uid, None, str(public_dir / "x"))
    assert owners.helpers() == [helper]


async def test_a_sync_handle_is_opened_as_the_owner_reaches_the_directory(
    owners: Owners, public_dir: Path
) -> None:
    """The SyncBatch's directory fd (for syncfs): a symlink of the owner's on the way is
    refused, as every file action refuses it, rather than followed by root to any
    directory; a directory he reaches gives a handle, search-only too."""
    assert NOBODY is not None
    uid = NOBODY.pw_uid
    link = public_dir / "link"
    link.symlink_to("/root")
    os.lchown(link, uid, NOBODY.pw_gid)
    with pytest.raises(BitsError) as caught:
        await files.open_sync_handle(owners, uid, None, str(link))
    assert caught.value.hresult == HResult.E_ACCESSDENIED
    mine = public_dir / "mine"
    mine.mkdir(mode=0o700)
    os.chown(mine, uid, NOBODY.pw_gid)
    hidden = mine / "search-only"
    hidden.mkdir()
    os.chown(hidden, uid, NOBODY.pw_gid)
    hidden.chmod(0o300)
    for directory in (mine, hidden):
        fd = await files.open_sync_handle(owners, uid, None, str(directory))
        try:
            assert os.path.samestat(os.fstat(fd), os.stat(directory))
            files.sync_handle(fd, str(directory))
        finally:
            os.close(fd)
    with pytest.raises(BitsError) as caught:  # (the owner cannot reach root's home)
        await files.open_sync_handle(owners, uid, None, "/root")
    assert caught.value.hresult == HResult.E_ACCESSDENIED


def test_a_batch_is_published_by_the_helper_in_as_many_requests_as_fit(
    owners: Owners, public_dir: Path
) -> None:
    """More files than one datagram holds: every one renamed as the owner, in order, and a
    failure in a later request says exactly how many were published before it."""
    assert NOBODY is not None
    uid = NOBODY.pw_uid
    count = 1200  # (names of ~120 bytes: ~300 KB of JSON, five requests or more)
    items: list[tuple[str, str, float | None]] = []
    for i in range(count):
        temp = public_dir / f"{'t' * 100}{i:05d}.tmp"
        temp.write_bytes(b"x")
        os.chown(temp, uid, NOBODY.pw_gid)
        temp.chmod(0o600)
        items.append((temp.name, f"{'f' * 100}{i:05d}", 1_445_412_480.0))
    broken = 1000
    os.chown(public_dir / items[broken][0], 0, 0)  # (not the owner's: refused, left alone)
    done, error = owners.publish_batch(uid, None, str(public_dir), str(public_dir), 0o644, items)
    assert done == broken
    assert isinstance(error, OSError) and error.errno == errno.EACCES
    for i, (temp, target, _) in enumerate(items):
        assert (public_dir / target).exists() == (i < broken), i
        assert (public_dir / temp).exists() == (i >= broken), i
    st = (public_dir / items[0][1]).stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_mtime) == (uid, 0o644, 1_445_412_480.0)
    (helper,) = owners.helpers()
    os.chown(public_dir / items[broken][0], uid, NOBODY.pw_gid)
    done, error = owners.publish_batch(uid, None, str(public_dir), str(public_dir), 0o644, items[broken:])
    assert (done, error) == (count - broken, None)
    assert owners.helpers() == [helper], "one helper answered every request"


@pytest.mark.parametrize("answer", [None, [5, 0, ""], [1, 0, ""], [-1, 13, "x"], ["1", 0, ""], [0, 0]])
def test_a_batch_answer_that_cannot_be_is_nonsense(answer: object) -> None:
    assert owner_module._batch_answer(answer, 2) == (0, errno.EIO, "the owner's helper answered nonsense")
    assert owner_module._batch_answer([1, errno.EACCES, "no"], 2) == (1, errno.EACCES, "no")
    assert owner_module._batch_answer([2, 0, ""], 2) == (2, 0, "")
    # every file renamed, then an error (closing a directory): they are published, no one blamed
    assert owner_module._batch_answer([2, errno.EIO, "close"], 2) == (2, 0, "")
