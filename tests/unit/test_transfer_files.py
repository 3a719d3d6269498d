"""Unit tests of openbits.transfer.files: destination checks, temporary files, publish, errno mapping."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.errors import (
    AccessDenied,
    DiskFull,
    HResult,
    InvalidArgument,
    LocalFileError,
    PathNotFound,
    TransferError,
)
from openbits.model import ErrorContext
from openbits.transfer import files, fsops
from openbits.transfer.files import (
    check_destination,
    http_date_to_unix,
    local_error,
    local_source_path,
    publish,
    remove_quietly,
    translating,
)
from openbits.transfer.owner import Owners

UID = os.geteuid()
GID = os.getegid()
OTHER_UID = 65534 if UID != 65534 else 65533  # a user that is not us (nobody)
OTHER_GID = 65534 if GID != 65534 else 65533
TEMP_NAME = re.compile(r"^\.BIT[0-9A-F]{8}\.tmp$")
is_root = UID == 0


# -- check_destination -----------------------------------------------------------------------


def test_check_destination_writable_directory_is_ok(owners: Owners, tmp_path: Path) -> None:
    check_destination(owners, str(tmp_path / "new.bin"), UID, GID)


def test_check_destination_existing_file_is_ok(owners: Owners, tmp_path: Path) -> None:
    (tmp_path / "old.bin").write_bytes(b"x")
    check_destination(owners, str(tmp_path / "old.bin"), UID, GID)


def test_check_destination_missing_directory_is_path_not_found(owners: Owners, tmp_path: Path) -> None:
    with pytest.raises(PathNotFound) as info:
        check_destination(owners, str(tmp_path / "missing" / "file.bin"), UID, GID)
    assert info.value.hresult == 0x80070003


def test_check_destination_file_used_as_directory_is_path_not_found(owners: Owners, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(PathNotFound) as info:
        check_destination(owners, str(tmp_path / "plain" / "file.bin"), UID, GID)
    assert info.value.hresult == HResult.HRESULT_PATH_NOT_FOUND


def test_check_destination_below_a_file_is_path_not_found(owners: Owners, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(PathNotFound):
        check_destination(owners, str(tmp_path / "plain" / "sub" / "file.bin"), UID, GID)


def test_check_destination_existing_directory_as_local_file_is_invalid_argument(
    owners: Owners, tmp_path: Path
) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(InvalidArgument) as info:
        check_destination(owners, str(tmp_path / "adir"), UID, GID)
    assert info.value.hresult == HResult.E_INVALIDARG


@pytest.mark.skipif(is_root, reason="root may write anywhere")
def test_check_destination_unwritable_directory_is_access_denied(owners: Owners, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(AccessDenied) as info:
            check_destination(owners, str(locked / "file.bin"), UID, GID)
        assert info.value.hresult == HResult.E_ACCESSDENIED
    finally:
        locked.chmod(0o700)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory that every user can reach (unlike tmp_path, whose ancestor is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="openbits-unit-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_check_destination_for_another_owner_uses_the_mode_bits(owners: Owners, public_dir: Path) -> None:
    d = public_dir / "shared"
    d.mkdir()
    d.chmod(0o755)
    with pytest.raises(AccessDenied) as info:
        check_destination(owners, str(d / "file.bin"), OTHER_UID, OTHER_GID)
    assert info.value.hresult == HResult.E_ACCESSDENIED
    d.chmod(0o777)
    check_destination(owners, str(d / "file.bin"), OTHER_UID, OTHER_GID)


def test_check_destination_for_another_owner_needs_search_permission(
    owners: Owners, public_dir: Path
) -> None:
    d = public_dir / "noexec"
    d.mkdir()
    d.chmod(0o776)  # others may write but not search
    with pytest.raises(AccessDenied):
        check_destination(owners, str(d / "file.bin"), OTHER_UID, OTHER_GID)


def test_check_destination_for_another_owner_needs_search_permission_on_ancestors(
    owners: Owners, public_dir: Path
) -> None:
    hidden = public_dir / "hidden"
    hidden.mkdir()
    hidden.chmod(0o700)  # only we may pass
    inner = hidden / "open"
    inner.mkdir()
    inner.chmod(0o777)
    with pytest.raises(AccessDenied):
        check_destination(owners, str(inner / "file.bin"), OTHER_UID, OTHER_GID)


@pytest.mark.skipif(not is_root, reason="needs root to give a directory to another user")
def test_check_destination_for_the_directory_owner_uses_owner_bits(owners: Owners, public_dir: Path) -> None:
    d = public_dir / "owned"
    d.mkdir()
    os.chown(d, OTHER_UID, OTHER_GID)
    d.chmod(0o700)
    check_destination(owners, str(d / "file.bin"), OTHER_UID, OTHER_GID)
    d.chmod(0o077)  # everyone but the owner
    with pytest.raises(AccessDenied):
        check_destination(owners, str(d / "file.bin"), OTHER_UID, OTHER_GID)


# -- temporary files -------------------------------------------------------------------------


def test_temp_names_follow_the_pattern_and_are_stable_and_distinct() -> None:
    job_a, job_b = "{11111111-2222-3333-4444-555555555555}", "{AAAAAAAA-2222-3333-4444-555555555555}"
    names = {files.temp_name_for(job, i) for job in (job_a, job_b) for i in range(50)}
    assert len(names) == 100
    assert all(TEMP_NAME.match(n) for n in names)
    assert files.temp_name_for(job_a, 3) == files.temp_name_for(job_a, 3)


def test_temp_names_are_derived_as_ever() -> None:
    """The name is found again after a restart from the JobId and the position alone: its
    derivation (the first 8 hex digits of sha256("<JobId>/<position>")) never changes."""
    job = "{11111111-2222-3333-4444-555555555555}"
    for i in (0, 3, 1999):
        expected = hashlib.sha256(f"{job}/{i}".encode()).hexdigest()[:8].upper()
        assert files.temp_name_for(job, i) == f".BIT{expected}.tmp"


def test_open_temp_creates_owner_only_files(owners: Owners, tmp_path: Path) -> None:
    path = tmp_path / files.temp_name_for("{11111111-2222-3333-4444-555555555555}", 0)
    fd = files.open_temp(owners, str(path), UID, GID)
    try:
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 0
        os.write(fd, b"data")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"data"


def test_open_temp_in_a_missing_directory(owners: Owners, tmp_path: Path) -> None:
    with pytest.raises(TransferError) as info:
        files.open_temp(owners, str(tmp_path / "missing" / ".BIT00000000.tmp"), UID, GID)
    assert info.value.hresult == HResult.HRESULT_PATH_NOT_FOUND
    assert info.value.context is ErrorContext.LOCAL_FILE
    assert not info.value.transient


@pytest.mark.skipif(not is_root, reason="only root can give files away")
def test_open_temp_gives_the_file_to_the_job_owner(owners: Owners, public_dir: Path) -> None:
    public_dir.chmod(0o777)
    fd = files.open_temp(owners, str(public_dir / ".BIT00000001.tmp"), OTHER_UID, OTHER_GID)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    assert (st.st_uid, st.st_gid) == (OTHER_UID, OTHER_GID)


def test_open_temp_reopens_without_truncating(owners: Owners, tmp_path: Path) -> None:
    path = tmp_path / ".BIT12345678.tmp"
    path.write_bytes(b"prefix")
    fd = files.open_temp(owners, str(path), UID, GID)
    os.close(fd)
    assert path.read_bytes() == b"prefix"


def test_open_temp_recreates_a_vanished_file(owners: Owners, tmp_path: Path) -> None:
    path = tmp_path / ".BIT12345678.tmp"
    fd = files.open_temp(owners, str(path), UID, GID)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)


def test_open_temp_refuses_a_symlink(owners: Owners, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    link = tmp_path / ".BIT12345678.tmp"
    link.symlink_to(target)
    with pytest.raises(TransferError):
        files.open_temp(owners, str(link), UID, GID)
    assert target.read_bytes() == b"precious"


def test_open_temp_refuses_a_hard_link_to_another_file(owners: Owners, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"precious")
    os.link(target, tmp_path / ".BIT12345678.tmp")
    with pytest.raises(LocalFileError) as info:
        files.open_resumable(owners, str(tmp_path / ".BIT12345678.tmp"), UID, GID, 0)
    assert info.value.hresult == HResult.E_ACCESSDENIED
    assert target.read_bytes() == b"precious", "never truncated"


def test_open_temp_refuses_a_symlinked_directory_on_the_way(owners: Owners, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    if is_root:  # (a user's link: root's are the system's layout, followed)
        os.lchown(tmp_path / "link", OTHER_UID, OTHER_GID)
    with pytest.raises(LocalFileError) as info:
        files.open_temp(owners, str(tmp_path / "link" / ".BIT12345678.tmp"), UID, GID)
    assert info.value.hresult == HResult.E_ACCESSDENIED
    assert list(real.iterdir()) == []
    with pytest.raises(AccessDenied):
        check_destination(owners, str(tmp_path / "link" / "f.bin"), UID, GID)


def test_a_path_without_links_is_opened_in_one_call_and_any_link_left_to_the_walk(tmp_path: Path) -> None:
    """The small-file path's fast way to a temporary file's directory (openat2 with
    RESOLVE_NO_SYMLINKS): the same directory the walk reaches, in one call; a path with a
    symlink on it, root's too, is declined (-1) so the walk decides, following root's and
    refusing a user's (the tests above and below)."""
    real = tmp_path / "a" / "b"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    fd = fsops._open_without_links(str(real))
    assert fd >= 0, "openat2 unavailable: every file walks its path one component at a time"
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(real))
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert fsops._open_without_links(str(tmp_path / "link")) == -1
    assert fsops._open_without_links(str(tmp_path / "missing")) == -1
    fd = fsops.open_dir(str(tmp_path / "a" / "." / "b"))
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(real))
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        fsops.open_dir(str(tmp_path / "a" / ".." / "a"))
    assert info.value.errno == errno.EINVAL


@pytest.mark.skipif(not is_root, reason="needs root to make root's symlinks")
def test_roots_symlinks_on_the_way_are_followed(owners: Owners, tmp_path: Path) -> None:
    real = tmp_path / "var" / "home"
    real.mkdir(parents=True)
    (tmp_path / "home").symlink_to("var/home")  # relative, as Silverblue's /home
    (tmp_path / "abs").symlink_to(tmp_path / "home")  # absolute, to another link
    (tmp_path / "up").symlink_to("var/../var/home")
    for via in ("home", "abs", "up"):
        fd = files.open_temp(owners, str(tmp_path / via / f".BIT{via}.tmp"), UID, GID)
        os.close(fd)
        assert (real / f".BIT{via}.tmp").exists()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(LocalFileError):
        files.open_temp(owners, str(tmp_path / "loop" / ".BIT.tmp"), UID, GID)
    (tmp_path / "last.tmp").symlink_to(real / ".BIThome.tmp")
    with pytest.raises(LocalFileError):  # the last name is never followed
        files.open_temp(owners, str(tmp_path / "last.tmp"), UID, GID)


def test_open_temp_refuses_a_fifo_without_blocking(owners: Owners, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".BIT12345678.tmp")
    with pytest.raises(LocalFileError) as info:
        files.open_temp(owners, str(tmp_path / ".BIT12345678.tmp"), UID, GID)
    assert info.value.hresult == HResult.E_ACCESSDENIED


@pytest.mark.skipif(not is_root, reason="needs root to act as another user")
def test_another_owners_temp_file_is_not_reopened(owners: Owners, public_dir: Path) -> None:
    public_dir.chmod(0o1777)
    theirs = public_dir / ".BIT12345678.tmp"
    theirs.write_bytes(b"root's")
    theirs.chmod(0o666)  # even writable by the owner: it is not his
    with pytest.raises(LocalFileError):
        files.open_temp(owners, str(theirs), OTHER_UID, OTHER_GID)
    assert theirs.read_bytes() == b"root's"
    assert owners.helpers(), "the other owner's actions ran in a helper"


# -- publish ---------------------------------------------------------------------------------

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


def test_http_date_to_unix() -> None:
    assert http_date_to_unix(LAST_MODIFIED) == 1_445_412_480.0
    assert http_date_to_unix("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "yesterday", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_http_date_to_unix_garbage_is_none(value: str | None) -> None:
    assert http_date_to_unix(value) is None


def test_publish_renames_sets_mtime_and_keeps_content(owners: Owners, tmp_path: Path) -> None:
    content = os.urandom(70_000)
    temp = tmp_path / ".BITAAAAAAAA.tmp"
    temp.write_bytes(content)
    temp.chmod(0o600)
    final = tmp_path / "final.bin"
    publish(owners, UID, GID, str(temp), str(final), http_date_to_unix(LAST_MODIFIED), 0o644)
    assert not temp.exists()
    assert final.read_bytes() == content
    assert final.stat().st_mtime == 1_445_412_480.0
    assert stat.S_IMODE(final.stat().st_mode) == 0o644


def test_publish_without_mtime_keeps_the_current_time(owners: Owners, tmp_path: Path) -> None:
    temp = tmp_path / ".BITAAAAAAAA.tmp"
    temp.write_bytes(b"abc")
    before = temp.stat().st_mtime
    final = tmp_path / "final.bin"
    publish(owners, UID, GID, str(temp), str(final), None, 0o644)
    assert final.read_bytes() == b"abc"
    assert final.stat().st_mtime == before


def test_publish_replaces_an_existing_local_file(owners: Owners, tmp_path: Path) -> None:
    temp = tmp_path / ".BITAAAAAAAA.tmp"
    temp.write_bytes(b"new")
    final = tmp_path / "final.bin"
    final.write_bytes(b"old contents")
    publish(owners, UID, GID, str(temp), str(final), None, 0o644)
    assert final.read_bytes() == b"new"


def test_publish_never_follows_a_symlinked_temp_file(owners: Owners, tmp_path: Path) -> None:
    # the destination directory is the job owner's: a link put in place of the temporary
    # file must not make a root daemon change the mode or time of what it points to
    target = tmp_path / "secret"
    target.write_bytes(b"x")
    target.chmod(0o600)
    temp = tmp_path / ".BITAAAAAAAA.tmp"
    temp.symlink_to(target)
    with pytest.raises(TransferError):
        publish(
            owners, UID, GID, str(temp), str(tmp_path / "final.bin"), http_date_to_unix(LAST_MODIFIED), 0o644
        )
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_mtime != 1_445_412_480.0


def test_publish_of_a_missing_temp_file(owners: Owners, tmp_path: Path) -> None:
    with pytest.raises(TransferError) as info:
        publish(
            owners, UID, GID, str(tmp_path / ".BITAAAAAAAA.tmp"), str(tmp_path / "final.bin"), None, 0o644
        )
    assert info.value.hresult == HResult.HRESULT_PATH_NOT_FOUND
    assert info.value.context is ErrorContext.LOCAL_FILE
    assert not (tmp_path / "final.bin").exists()


# -- errno mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_local_error_disk_full_is_transient(code: int) -> None:
    err = local_error(OSError(code, os.strerror(code)), "write")
    assert isinstance(err, DiskFull)
    assert err.transient is True
    assert err.hresult == 0x80070070
    assert err.context is ErrorContext.LOCAL_FILE
    assert int(err.context) == 4


@pytest.mark.parametrize(
    ("code", "hresult"),
    [
        (errno.EACCES, HResult.E_ACCESSDENIED),
        (errno.EPERM, HResult.E_ACCESSDENIED),
        (errno.EROFS, HResult.E_ACCESSDENIED),
        (errno.ENOENT, HResult.HRESULT_PATH_NOT_FOUND),
        (errno.ENOTDIR, HResult.HRESULT_PATH_NOT_FOUND),
        (errno.EISDIR, HResult.HRESULT_DIRECTORY),
        (errno.EIO, HResult.E_FAIL),
    ],
    ids=["EACCES", "EPERM", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EIO"],
)
def test_local_error_fatal_codes(code: int, hresult: HResult) -> None:
    err = local_error(OSError(code, os.strerror(code)), "open")
    assert isinstance(err, LocalFileError)
    assert err.transient is False
    assert err.hresult == hresult
    assert err.context is ErrorContext.LOCAL_FILE
    assert err.message.startswith("open: ")


def test_local_error_eacces_is_e_accessdenied_value() -> None:
    assert local_error(OSError(errno.EACCES, "denied"), "x").hresult == 0x80070005


def test_local_error_enoent_is_path_not_found_value() -> None:
    assert local_error(OSError(errno.ENOENT, "missing"), "x").hresult == 0x80070003


def test_local_error_keeps_a_given_context() -> None:
    err = local_error(OSError(errno.ENOENT, "missing"), "read", ErrorContext.REMOTE_FILE)
    assert err.context is ErrorContext.REMOTE_FILE


def test_translating_turns_oserror_into_bits_error() -> None:
    with pytest.raises(DiskFull) as info, translating("write"):
        raise OSError(errno.ENOSPC, "full")
    assert isinstance(info.value.__cause__, OSError)


def test_translating_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError), translating("x"):
        raise KeyError("k")


# -- small helpers ---------------------------------------------------------------------------


def test_remove_quietly(owners: Owners, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert remove_quietly(owners, UID, GID, str(f)) is True
    assert not f.exists()
    assert remove_quietly(owners, UID, GID, str(f)) is True
    assert remove_quietly(owners, UID, GID, None) is True
    d = tmp_path / "d"
    d.mkdir()
    assert remove_quietly(owners, UID, GID, str(d)) is False


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("/srv/a.bin", "/srv/a.bin"),
        ("file:///srv/a%20b.bin", "/srv/a b.bin"),
        ("FILE:///srv/x", "/srv/x"),
        ("file://localhost/srv/x", "/srv/x"),
        ("http://example.com/x", None),
        ("https://example.com/x", None),
    ],
)
def test_local_source_path(url: str, path: str | None) -> None:
    assert local_source_path(url) == path


def test_publish_batch_refuses_what_is_not_a_name_in_its_directory(tmp_path: Path) -> None:
    """A batch names files in its directories: a path, '.' or '..' is EINVAL, nothing renamed."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "t").write_bytes(b"x")
    for temp, target in [("../t", "f"), ("t", "sub/f"), ("t", ".."), ("", "f"), ("t", "a\0b")]:
        assert fsops.publish_batch(str(tmp_path / "sub"), str(tmp_path), 0o644, [[temp, target, None]])[
            :2
        ] == [
            0,
            errno.EINVAL,
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t"]
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Tue, 29 Feb 2028 23:59:59 GMT",
        "Thu, 31 Dec 2026 00:00:00 GMT",
        "Wed, 30 Feb 2026 00:00:00 GMT",  # (no such day)
        "Wed, 21 Oct 2015 24:00:00 GMT",
        "Wed, 21 Oct 2015 07:60:00 GMT",
        "Wed, 21 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 07:28:00 UTC",
        "Wed, 21 Oct 2015 07:28:00 +0200",
        "Wednesday, 21-Oct-15 07:28:00 GMT",
        "Wed Oct 21 07:28:00 2015",
        "Wed, x1 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 07-28-00 GMT",
        "Wed, 21 Oct 2015 +7:28:00 GMT",
        "Wed, 21 Oct 2015 0\u00b2:28:00 GMT",
        "Wed, 21 ct 20155 07:28:00 GMT",
    ],
)
def test_http_date_to_unix_reads_every_form_as_the_email_parser_does(value: str) -> None:
    """The sliced IMF-fixdate and the email parser's fallback agree with the email parser."""
    from email.utils import parsedate_to_datetime

    try:
        expected: float | None = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        expected = None
    assert http_date_to_unix.__wrapped__(value) == expected


# -- DirectoryNames: which LocalFiles are directories, one listing per directory ------------


def _names_case(tmp_path: Path, count: int) -> list[str]:
    (tmp_path / "d3").mkdir()
    (tmp_path / "l5").symlink_to(tmp_path / "d3")
    (tmp_path / "r7").write_bytes(b"x")
    (tmp_path / "s9").symlink_to(tmp_path / "r7")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    names = ["d3", "l5", "r7", "s9", "dangling"] + [f"n{i}" for i in range(count)]
    return [str(tmp_path / n) for n in names]


@pytest.mark.parametrize("count", [0, 40])
def test_directory_names_agree_with_isdir(tmp_path: Path, count: int) -> None:
    """Listed (40 more names) or not (5 names): the same answers as os.path.isdir, symlinks
    followed; a path it was not built with is asked of the file system."""
    locals_ = _names_case(tmp_path, count)
    names = files.DirectoryNames(locals_)
    other = str(tmp_path / "d3" / "inner")
    (tmp_path / "d3" / "inner").mkdir()
    for local in [*locals_, other, "/"]:
        assert names.is_dir(local) == os.path.isdir(local), local


def test_directory_names_list_a_shared_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locals_ = _names_case(tmp_path, 40)
    stats: list[str] = []
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: stats.append(p) or real_isdir(p))
    names = files.DirectoryNames(locals_)
    assert [local for local in locals_ if names.is_dir(local)] == locals_[:2]
    assert stats == []


def test_directory_names_give_up_a_long_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory of many more entries than files asked about is not read to its end: each
    file is stat-ed instead (and still found a directory)."""
    locals_ = _names_case(tmp_path, 20)
    for i in range(files.DirectoryNames.LIST_PER_FILE * len(locals_)):
        (tmp_path / f"other{i}").touch()
    stats: list[str] = []
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: stats.append(p) or real_isdir(p))
    names = files.DirectoryNames(locals_)
    assert [local for local in locals_ if names.is_dir(local)] == locals_[:2]
    assert stats == locals_
