"""Proxies named by the environment (BITS' PRECONFIG proxy usage), through a real tinyproxy."""

from __future__ import annotations

from pathlib import Path

from openbits.model import JobState
from tests.support.daemon import Daemon
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx
from tests.support.proxy import Tinyproxy


def fetch(daemon: Daemon, url: str, local: Path) -> None:
    job = daemon.client.create_job(local.name).job_id
    daemon.client.add_file(job, url, str(local))
    daemon.client.resume(job)
    daemon.wait_state(job, JobState.TRANSFERRED)
    daemon.client.complete(job)


def test_http_proxy_from_the_environment_and_no_proxy(
    tmp_path: Path, nginx: Nginx, tinyproxy: Tinyproxy, dest: Path
) -> None:
    digest = make_file(nginx.www, "proxy/f.bin", 300_000, seed=120)
    url = f"{nginx.url}/proxy/f.bin"
    via = Daemon(tmp_path / "via", env={"http_proxy": tinyproxy.url, "no_proxy": ""})
    via.start()
    try:
        fetch(via, url, dest / "via.bin")
    finally:
        via.stop()
    assert sha256_file(dest / "via.bin") == digest
    assert "/proxy/f.bin" in tinyproxy.log(), "the request went through the proxy"

    direct = Daemon(tmp_path / "direct", env={"http_proxy": tinyproxy.url, "no_proxy": "127.0.0.1"})
    direct.start()
    try:
        before = tinyproxy.log().count("/proxy/f.bin")
        fetch(direct, url, dest / "direct.bin")
    finally:
        direct.stop()
    assert sha256_file(dest / "direct.bin") == digest
    assert tinyproxy.log().count("/proxy/f.bin") == before, "no_proxy bypasses the proxy"
