"""Unit tests of openbits.transfer.handover (TakeOwnership's copies), in-process: the old
and the new owner are both this process, which is enough for what is copied, what starts
again from byte 0 and what is removed (the two-user cases are in test_isolation.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from openbits.transfer import handover
from openbits.transfer.files import fresh_temp_name
from openbits.transfer.owner import Owners

ME = os.geteuid()


def _move(tmp_path: Path, old: Path, length: int) -> handover.Move:
    return handover.Move(str(old), str(tmp_path / fresh_temp_name()), length, needed=True)


def test_the_bytes_to_the_checkpoint_are_copied_into_a_new_file(tmp_path: Path) -> None:
    old = tmp_path / ".BITOLD.tmp"
    old.write_bytes(b"a" * 70_000 + b"beyond the checkpoint")
    move = _move(tmp_path, old, 70_000)
    handover.prepare(Owners(in_process=True), [str(tmp_path / "f.bin")], ME, ME, None, [move])
    new = Path(move.new_path)
    assert move.kept and move.made and new.read_bytes() == b"a" * 70_000
    assert stat.S_IMODE(new.stat().st_mode) == 0o600 and new.stat().st_ino != old.stat().st_ino
    handover.remove_old(Owners(in_process=True), ME, [move])
    assert not old.exists() and new.exists()


def test_what_is_not_a_regular_file_long_enough_starts_again(tmp_path: Path) -> None:
    link, fifo, short = tmp_path / ".BITLNK.tmp", tmp_path / ".BITFIFO.tmp", tmp_path / ".BITSHORT.tmp"
    (tmp_path / "target").write_bytes(b"x" * 100)
    link.symlink_to(tmp_path / "target")
    os.mkfifo(fifo)
    short.write_bytes(b"x" * 10)
    moves = [_move(tmp_path, p, 100) for p in (link, fifo, short, tmp_path / ".BITGONE.tmp")]
    handover.prepare(Owners(in_process=True), [], ME, ME, None, moves)
    assert not any(m.kept or m.made for m in moves)
    assert not any(os.path.exists(m.new_path) for m in moves)
    handover.remove_old(Owners(in_process=True), ME, moves)
    assert not os.path.lexists(link) and not fifo.exists() and (tmp_path / "target").exists()


def test_discard_removes_the_copies(tmp_path: Path) -> None:
    old = tmp_path / ".BITOLD.tmp"
    old.write_bytes(b"b" * 5)
    move = _move(tmp_path, old, 5)
    handover.prepare(Owners(in_process=True), [], ME, ME, None, [move])
    handover.discard(Owners(in_process=True), ME, None, [move])
    assert not os.path.exists(move.new_path) and not move.made and old.exists()
