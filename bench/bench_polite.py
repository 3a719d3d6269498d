#!/usr/bin/env python3
"""Politeness (issue 15 benchmark (d)): does a background job yield to other traffic?

Run from the repository root as root (``make bench-polite``)::

    .venv/bin/python bench/bench_polite.py [--rate-mbit 200] [--probe-mib 48] [--runs 3] [--keep]

It creates two network namespaces joined by a veth pair, with a ``tbf`` bottleneck (a bounded
queue: ``--latency-ms``) on the server side's egress; nginx serves in one, the clients run in the
other (the openbits daemon too), and it removes them again on every exit path.  Then:

1. a curl download of ``--probe-mib`` alone across the bottleneck;
2. the same curl while an openbits NORMAL job (BackgroundYield on) downloads a large file across
   it, and that job's throughput for ``--tail-s`` once curl stopped;
3. the same with ``aria2c`` in openbits' place.

Those three are repeated ``--runs`` times (nginx and the daemon stay up; a new job each time).
It prints curl's throughput beside each peer as a share of its solo throughput (target ≥ 90%
beside openbits) and each peer's throughput once curl stopped as a share of the link (target
≥ 70% for openbits): the median of the runs, and each run's figure.  Targets are reported
(met / NOT met), not asserted.  Exit status 2 when ``ip``, ``tc``, network namespaces, nginx or
curl are not available (or not root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
SRV_ADDR, CLI_ADDR = "10.231.0.1", "10.231.0.2"
PORT = 8080
NGINX_CONF = """daemon off;
worker_processes 1;
{user}pid {work}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen {addr}:{port};
        root {work}/www;
    }}
}}
"""


class Missing(Exception):
    """A tool or a kernel feature the benchmark needs is not available (exit 2)."""


def log(msg: str, end: str = "\n") -> None:
    print(msg, end=end, flush=True)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Netns:
    """Two namespaces and a veth pair with a tbf bottleneck on the server side; removed on exit."""

    def __init__(self, rate_mbit: int, latency_ms: int) -> None:
        tag = os.getpid() % 100000
        self.srv, self.cli = f"obp-srv-{tag}", f"obp-cli-{tag}"
        self.vsrv, self.vcli = f"obps{tag}", f"obpc{tag}"
        self.rate_mbit, self.latency_ms = rate_mbit, latency_ms

    def create(self) -> None:
        run("ip", "netns", "add", self.srv)
        run("ip", "netns", "add", self.cli)
        run("ip", "link", "add", self.vsrv, "type", "veth", "peer", "name", self.vcli)
        run("ip", "link", "set", self.vsrv, "netns", self.srv)
        run("ip", "link", "set", self.vcli, "netns", self.cli)
        for ns, dev, addr in ((self.srv, self.vsrv, SRV_ADDR), (self.cli, self.vcli, CLI_ADDR)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        burst = max(64 * 1024, self.rate_mbit * 1_000_000 // 8 // 250)  # ~4 ms of the rate
        run(
            "tc", "-n", self.srv, "qdisc", "add", "dev", self.vsrv, "root", "tbf",
            "rate", f"{self.rate_mbit}mbit", "burst", str(burst), "latency", f"{self.latency_ms}ms",
        )  # fmt: skip

    def remove(self) -> None:
        for ns in (self.srv, self.cli):  # deleting a namespace deletes its end of the pair
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)

    def exec(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


def check_tools() -> None:
    if os.geteuid() != 0:
        raise Missing("network namespaces need root")
    for tool in ("ip", "tc", "nginx", "curl"):
        if shutil.which(tool) is None:
            raise Missing(f"{tool} is not installed (scripts/ensure-debian-packages.sh)")
    probe = f"obp-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode:
        raise Missing("cannot create a network namespace here (ip netns add)")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)


@contextmanager
def process(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session, stopped (SIGTERM, then SIGKILL) on the way out."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for(what: str, ok: Callable[[], bool], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not ok():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def curl_mbps(net: Netns, url: str) -> float:
    """One curl download across the bottleneck; its throughput in Mbit/s."""
    out = subprocess.run(
        net.exec(net.cli, "curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", url),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout) * 8 / 1e6


def rate_of(progress: Callable[[], int], seconds: float) -> float:
    """Mbit/s of a byte counter over ``seconds``."""
    b0, t0 = progress(), time.monotonic()
    time.sleep(seconds)  # the measuring window itself
    return (progress() - b0) * 8 / 1e6 / (time.monotonic() - t0)


def beside(
    net: Netns, url: str, progress: Callable[[], int], warm_s: float, tail_s: float
) -> tuple[float, float]:
    """With a peer running (its byte counter ``progress``): curl's Mbit/s beside it, then the
    peer's Mbit/s alone over ``tail_s``."""
    wait_for("the peer to start moving bytes", lambda: progress() > 0)
    time.sleep(warm_s)  # let the peer settle on the link before curl arrives
    curl = curl_mbps(net, url)
    return curl, rate_of(progress, tail_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate-mbit", type=int, default=200, help="the bottleneck's rate (default 200)")
    p.add_argument("--latency-ms", type=int, default=150, help="tbf's queue bound in ms (default 150)")
    p.add_argument("--probe-mib", type=int, default=48, help="curl's download (default 48 MiB)")
    p.add_argument("--warm-s", type=float, default=4.0, help="peer alone before curl starts")
    p.add_argument("--tail-s", type=float, default=4.0, help="peer alone after curl stops")
    p.add_argument("--target-ms", type=float, help="the daemon's yield_target_delay_ms (default: its own)")
    p.add_argument("--runs", type=int, default=3, help="rounds of the measurements, medians (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", default=str(OUT_DIR / "bench_polite.json"))
    args = p.parse_args()
    try:
        check_tools()
    except Missing as e:
        log(f"bench_polite: skipped: {e}")
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_polite-", dir=OUT_DIR))
    net = Netns(args.rate_mbit, args.latency_ms)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        with ExitStack() as stack:
            stack.callback(net.remove)
            net.create()
            runs = measure(net, work, args, stack)
        report(runs, args)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


def measure(net: Netns, work: Path, args: argparse.Namespace, stack: ExitStack) -> list[dict[str, float]]:
    """nginx and the daemon started once; then ``--runs`` rounds of curl alone, beside an
    openbits NORMAL job, beside aria2c (a new job, a new aria2c each round)."""
    (work / "www").mkdir()
    (work / "tmp").mkdir()
    link_bytes_s = args.rate_mbit * 1e6 / 8
    big = int(link_bytes_s * (args.warm_s + args.tail_s + 30))  # outlasts every phase
    with open(work / "www" / "probe", "wb") as f:
        f.truncate(args.probe_mib * 1024 * 1024)  # sparse: served from the page cache
    with open(work / "www" / "big", "wb") as f:
        f.truncate(big)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(NGINX_CONF.format(user=user, work=work, addr=SRV_ADDR, port=PORT))
    nginx = net.exec(
        net.srv,
        "nginx",
        "-p",
        f"{work}/",
        "-e",
        str(work / "nginx-error.log"),
        "-c",
        str(work / "nginx.conf"),
    )
    stack.enter_context(process(nginx, work / "nginx.log"))
    base = f"http://{SRV_ADDR}:{PORT}"
    wait_for(
        "nginx",
        lambda: (
            subprocess.run(
                net.exec(net.cli, "curl", "-sfI", f"{base}/probe"), capture_output=True, check=False
            ).returncode
            == 0
        ),
    )
    sock = work / "ob.sock"
    config = work / "openbits.toml"
    target = "" if args.target_ms is None else f"yield_target_delay_ms = {args.target_ms}\n"
    config.write_text(target)
    daemon = net.exec(
        net.cli, sys.executable, "-m", "openbits", "serve",
        "--state-dir", str(work / "state"), "--socket", str(sock), "--config", str(config),
    )  # fmt: skip
    stack.enter_context(process(daemon, work / "daemon.log"))
    wait_for("the openbits daemon", sock.exists)
    cli = [sys.executable, "-m", "openbits", "--socket", str(sock)]
    runs = []
    for i in range(args.runs):
        log(f"run {i + 1}/{args.runs}")
        runs.append(one_run(net, work, args, base, cli))
    return runs


def one_run(net: Netns, work: Path, args: argparse.Namespace, base: str, cli: list[str]) -> dict[str, float]:
    out: dict[str, float] = {"link_mbit": float(args.rate_mbit)}
    out["curl_alone_mbit"] = curl_mbps(net, f"{base}/probe")
    log(f"  curl alone: {out['curl_alone_mbit']:.1f} Mbit/s")
    job = subprocess.run(
        [*cli, "transfer", "--async", "-p", "normal", f"{base}/big", str(work / "ob-big")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    def ob_bytes() -> int:
        got = subprocess.run([*cli, "get", job, "--json"], capture_output=True, text=True, check=True)
        return int(json.loads(got.stdout)["BytesTransferred"])

    try:
        curl, peer = beside(net, f"{base}/probe", ob_bytes, args.warm_s, args.tail_s)
    finally:
        subprocess.run([*cli, "cancel", job], capture_output=True, check=False)
    out["curl_beside_openbits_mbit"], out["openbits_after_mbit"] = curl, peer
    log(f"  beside openbits NORMAL: curl {curl:.1f} Mbit/s, then openbits alone {peer:.1f} Mbit/s")

    if shutil.which("aria2c") is not None:
        target = work / "aria-big"
        target.unlink(missing_ok=True)
        aria = net.exec(
            net.cli, "aria2c", "-q", "--file-allocation=none", "--allow-overwrite=true",
            "-d", str(work), "-o", target.name, f"{base}/big",
        )  # fmt: skip
        with process(aria, work / "aria2c.log"):
            size = lambda: target.stat().st_size if target.exists() else 0  # noqa: E731
            curl, peer = beside(net, f"{base}/probe", size, args.warm_s, args.tail_s)
        target.unlink(missing_ok=True)
        out["curl_beside_aria2c_mbit"], out["aria2c_after_mbit"] = curl, peer
        log(f"  beside aria2c: curl {curl:.1f} Mbit/s, then aria2c alone {peer:.1f} Mbit/s")
    out["curl_kept_beside_openbits"] = out["curl_beside_openbits_mbit"] / out["curl_alone_mbit"]
    out["openbits_link_share"] = out["openbits_after_mbit"] / out["link_mbit"]
    if "curl_beside_aria2c_mbit" in out:
        out["curl_kept_beside_aria2c"] = out["curl_beside_aria2c_mbit"] / out["curl_alone_mbit"]
        out["aria2c_link_share"] = out["aria2c_after_mbit"] / out["link_mbit"]
    return out


def report(runs: list[dict[str, float]], args: argparse.Namespace) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def figure(key: str) -> tuple[float, str]:
        values = sorted(r[key] for r in runs)
        spread = "" if len(values) == 1 else f" (runs: {', '.join(f'{v:.0%}' for v in values)})"
        return statistics.median(values), spread

    kept, kept_runs = figure("curl_kept_beside_openbits")
    took, took_runs = figure("openbits_link_share")
    log(f"median of {len(runs)} run(s):")
    log(f"curl keeps {kept:.0%} of its solo throughput beside openbits NORMAL{kept_runs}", end="")
    log(f" (target ≥ 90%: {met(kept >= 0.9)})")
    log(f"openbits takes {took:.0%} of the link once curl stops{took_runs}", end="")
    log(f" (target ≥ 70%: {met(took >= 0.7)})")
    if all("curl_kept_beside_aria2c" in r for r in runs):
        aria_kept, aria_kept_runs = figure("curl_kept_beside_aria2c")
        aria_took, aria_took_runs = figure("aria2c_link_share")
        log(f"peer aria2c: curl keeps {aria_kept:.0%}{aria_kept_runs},", end="")
        log(f" aria2c takes {aria_took:.0%} of the link{aria_took_runs}")
    summary: dict[str, object] = {
        "runs": runs,
        "curl_kept_beside_openbits": kept,
        "openbits_link_share": took,
    }
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"results: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
