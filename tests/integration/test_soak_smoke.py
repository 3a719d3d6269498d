"""bench/soak.py runs to the end with tiny parameters and writes its results.

The soak's targets (RSS and fds stable, idle CPU, read p99) are judged by the benchmark
itself at full size (``make soak``), never here: this only keeps the script from rotting.
``--report-only`` makes its exit status depend on its checks alone (every job completed,
every file's sha256 right, no client error, the daemon exiting 0 on SIGTERM).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nginx import find_nginx

ROOT = Path(__file__).resolve().parents[2]
JOBS = 200


def test_soak_runs_to_the_end_and_writes_its_json(tmp_path: Path) -> None:
    if find_nginx() is None:
        pytest.skip("nginx binary not found on PATH or in /usr/sbin")
    out = tmp_path / "soak.json"
    argv = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        f"--jobs={JOBS}",
        "--clients=4",
        "--drivers=2",
        "--inflight=20",
        "--idle=2",
        "--settle=0.2",
        "--sample-every=50",
        "--baseline=100",
        "--report-only",
        f"--work-parent={tmp_path}",
        f"--json={out}",
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "target" in proc.stdout and "read API p99" in proc.stdout

    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "soak" and doc["ok"] and doc["failures"] == []
    res = doc["results"]
    assert res["jobs_done"] == JOBS and not res["job_errors"]
    assert res["files_checked"] == res["files_done"] >= JOBS
    assert res["leftovers"] == [] and res["stop_status"] == 0
    assert res["read_calls"]["all"] > 0 and res["read_errors"] == {}
    curve = [s["jobs"] for s in res["samples"] if not s["label"]]
    assert curve == [50, 100, 150, 200]
    assert {s["label"] for s in res["samples"]} >= {"daemon started", "clients disconnected", "after idle"}
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 for s in res["samples"])
    assert res["idle_s"] > 0
    names = " ".join(t["name"] for t in doc["targets"])
    for part in ("RSS stable", "open fds stable", "idle CPU", "idle wake-ups", "read API p99"):
        assert part in names
    # the work directory is removed (no --keep)
    assert [p.name for p in tmp_path.iterdir()] == ["soak.json"]
