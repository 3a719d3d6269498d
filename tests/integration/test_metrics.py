"""``GET /metrics``: Prometheus text from a real daemon after real transfers."""

from __future__ import annotations

import re
from pathlib import Path

from openbits.model import JobState
from tests.support.daemon import Daemon, UnixHTTP
from tests.support.faults import FaultServer, Status
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

SAMPLE = re.compile(
    r'^(?P<name>[a-z_]+)(?P<labels>\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (?P<value>[0-9.e+-]+)$'
)


def scrape(daemon: Daemon) -> tuple[str, dict[str, float]]:
    conn = UnixHTTP(daemon.socket)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        content_type = resp.getheader("Content-Type") or ""
    finally:
        conn.close()
    samples: dict[str, float] = {}
    declared: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        assert m["name"] in declared, f"{m['name']} has no # TYPE"
        samples[m["name"] + (m["labels"] or "")] = float(m["value"])
    return content_type, samples


def test_metrics_count_jobs_bytes_files_and_transient_errors(
    daemon: Daemon, nginx: Nginx, fault_server: FaultServer, dest: Path
) -> None:
    make_file(nginx.www, "metrics/f.bin", 300_000, seed=77)
    content_type, before = scrape(daemon)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert before["openbits_bytes_transferred_total"] == 0
    assert before['openbits_jobs{state="TRANSFERRED",priority="NORMAL"}'] == 0

    job = daemon.client.create_job("metrics").job_id
    daemon.client.add_file(job, f"{nginx.url}/metrics/f.bin", str(dest / "f.bin"))
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    _, after = scrape(daemon)
    assert after['openbits_jobs{state="TRANSFERRED",priority="NORMAL"}'] == 1
    assert after["openbits_bytes_transferred_total"] == 300_000
    assert after["openbits_files_transferred_total"] == 1

    fault_server.routes["/busy"] = Status(503)
    failing = daemon.client.create_job("busy").job_id
    daemon.client.add_file(failing, f"{fault_server.url}/busy", str(dest / "busy.bin"))
    daemon.client.resume(failing)
    daemon.wait_state(failing, JobState.TRANSIENT_ERROR)
    _, later = scrape(daemon)
    assert later["openbits_transient_errors_total"] >= 1
    assert later['openbits_jobs{state="TRANSIENT_ERROR",priority="NORMAL"}'] == 1
    assert later["openbits_throttled_seconds_total"] == 0  # no limit configured
    assert 'openbits_build_info{version="' in "".join(later)
