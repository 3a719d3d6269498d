"""A damaged store is refused at start, never emptied; `openbits store check|backup|restore`
find the damage and put a backup in place, keeping the damaged file aside."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import Daemon

JOBS = 200


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openbits", *args], capture_output=True, text=True, timeout=120, check=False
    )


def serve_once(state: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Start a daemon that is expected to refuse to start."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "openbits",
            "serve",
            "--state-dir",
            str(state),
            "--socket",
            str(tmp_path / "x.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill(daemon: Daemon, dest: Path) -> set[str]:
    return {
        daemon.client.create_job(
            f"job-{i}", f"http://127.0.0.1:9/file-{i}.bin", str(dest / f"file-{i}.bin"), description="d" * 500
        ).job_id
        for i in range(JOBS)
    }


def damage(store: Path) -> None:
    """Overwrite part of a page in the middle of the file (a disk's bad write)."""
    pages = store.stat().st_size // 4096
    assert pages > 20, "the store is too small to damage its middle"
    with store.open("r+b") as f:
        f.seek(pages // 2 * 4096 + 100)
        f.write(b"\xff" * 3000)


def test_a_damaged_store_is_refused_and_a_backup_brings_every_job_back(tmp_path: Path, dest: Path) -> None:
    state = tmp_path / "state"
    daemon = Daemon(state)
    daemon.start()
    jobs = fill(daemon, dest)
    backup = tmp_path / "backup.sqlite"
    made = cli("store", "backup", str(backup), "--state-dir", str(state), "--json")
    assert made.returncode == 0, made.stderr  # while the daemon runs
    report = json.loads(made.stdout)
    assert report["ok"] and report["jobs"] == JOBS and report["problems"] == []
    assert daemon.stop() == 0

    store = state / "jobs.sqlite"
    damage(store)
    damaged = digest(store)
    refused = serve_once(state, tmp_path)
    assert refused.returncode != 0
    assert "is damaged" in refused.stderr and "openbits store restore" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert digest(store) == damaged, "a damaged store is not written to"

    checked = cli("store", "check", "--state-dir", str(state))
    assert checked.returncode == 1 and "DAMAGED" in checked.stderr

    restored = cli("store", "restore", str(backup), "--state-dir", str(state), "--json")
    assert restored.returncode == 0, restored.stderr
    answer = json.loads(restored.stdout)
    assert answer["Restored"]["ok"] and answer["Restored"]["jobs"] == JOBS
    kept = [Path(p) for p in answer["KeptAside"]]
    assert kept and digest(kept[0]) == damaged, "the damaged file is kept aside, unchanged"

    daemon.start()
    try:
        assert {j.job_id for j in daemon.client.list_jobs()} == jobs
        assert cli("store", "check", "--state-dir", str(state)).returncode == 0
    finally:
        daemon.stop()


def test_restore_waits_for_the_daemon_to_stop_and_backup_keeps_what_exists(
    tmp_path: Path, dest: Path
) -> None:
    state = tmp_path / "state"
    daemon = Daemon(state)
    daemon.start()
    try:
        daemon.client.create_job("one")
        backup = tmp_path / "b.sqlite"
        assert cli("store", "backup", str(backup), "--state-dir", str(state)).returncode == 0
        again = cli("store", "backup", str(backup), "--state-dir", str(state))
        assert again.returncode == 1 and "exists already" in again.stderr
        assert cli("store", "backup", str(backup), "--force", "--state-dir", str(state)).returncode == 0
        running = cli("store", "restore", str(backup), "--state-dir", str(state))
        assert running.returncode == 1 and "stop it first" in running.stderr
        healthy = cli("store", "check", "--state-dir", str(state), "--json")
        assert healthy.returncode == 0 and json.loads(healthy.stdout)["jobs"] == 1
        # a damaged backup is not restored
        damaged_copy = tmp_path / "not-a-store.sqlite"
        damaged_copy.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    finally:
        daemon.stop()
    bad = cli("store", "restore", str(damaged_copy), "--state-dir", str(state))
    assert bad.returncode == 1 and "fails its check" in bad.stderr
    assert not list(state.glob("jobs.sqlite.replaced-*")), "nothing moved for a refused restore"


def test_a_row_openbits_cannot_read_is_refused_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = Daemon(state)
    daemon.start()
    job = daemon.client.create_job("odd").job_id
    assert daemon.stop() == 0
    with sqlite3.connect(state / "jobs.sqlite") as db:  # intact for SQLite, not for openbits
        db.execute("UPDATE jobs SET state = 99 WHERE job_id = ?", (job,))
    refused = serve_once(state, tmp_path)
    assert refused.returncode != 0
    assert "cannot read" in refused.stderr and "openbits store" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
