#!/usr/bin/env python3
"""CPU a file of one lane of small files: the daemon's ``Downloader`` in-process, one file
after the other with the next ones sent ahead, as the fetch worker's lane runs it; this tree
against another, alternated.

Run from the repository root::

    .venv/bin/python bench/profile_lane.py [--files N] [--size BYTES] [--rounds N]
                                           [--other-src /old/checkout/src] [--calls]

It writes N random files, starts its own nginx, and runs each round one lane per tree in
a child process (``PYTHONPATH`` picks the tree: ``--other-src`` is another checkout's
``src``), each into its own fresh directory: wall and CPU seconds, and µs of CPU a file.
CPU time on a VM whose speed swings from minute to minute (bench/RESULTS.md) is noisy, so
the trees alternate and medians are compared; ``--calls`` also counts the Python calls a
file under cProfile (deterministic).  No daemon, no store, no sync: the download path
alone.  Writes ``bench/out/profile_lane.json``; cleans up as ``common.Session`` says.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_small import write_dataset
from common import (
    KIB,
    OUT_DIR,
    BenchError,
    Services,
    Session,
    add_keep_arg,
    add_output_args,
    cpu_probe_ms,
    find_tools,
    log,
    new_parser,
    parse_common_args,
    untimed_sync,
)

#: requests of the next files sent ahead (the fetch worker's ``LOOKAHEAD``)
LOOKAHEAD = 16


class _Progress:
    """A file's ``Progress`` as the daemon's keeps it in memory (no store)."""

    __slots__ = ("file",)

    def __init__(self, file: Any) -> None:
        self.file = file

    def connected(self) -> None:
        pass

    def begin(self, total: int | None, etag: str | None, last_modified: str | None) -> None:
        f = self.file
        f.bytes_total, f.etag, f.last_modified, f.segments = total, etag, last_modified, None

    def checkpoint(self, offset: int) -> None:
        self.file.bytes_transferred = offset

    def redirected(self, url: str) -> None:
        self.file.remote_url = url

    def responded(self, range_support: bool | None, headers: str) -> None:
        self.file.range_support, self.file.response_headers = range_support, headers


async def _lane(urls: list[str], out: Path, calls: bool) -> dict[str, Any]:
    """One lane over ``urls`` (the first, which opens the connection, not counted)."""
    from openbits.model import JobFile
    from openbits.transfer.download import Downloader, Owner
    from openbits.transfer.fetchworker import unpaced_throttle
    from openbits.transfer.files import temp_name_for
    from openbits.transfer.h1 import H1Client
    from openbits.transfer.options import RequestOptions

    h1 = H1Client(connect_timeout_s=30, read_timeout_s=60, default_headers={"User-Agent": "profile_lane"})
    downloader = Downloader(h1, throttle=unpaced_throttle())
    files = [
        JobFile(url, str(out / url.rsplit("/", 1)[1]), temp_name=temp_name_for("profile_lane", i))
        for i, url in enumerate(urls)
    ]
    owner, options = Owner(os.getuid(), os.getgid()), RequestOptions()

    async def fetch(i: int) -> None:
        f = files[i]
        await downloader.download(
            f, owner, _Progress(f), 0, options, defer_sync=True, upcoming=files[i + 1 : i + 1 + LOOKAHEAD]
        )

    try:
        await fetch(0)
        profile = None
        if calls:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(1, len(files)):
            await fetch(i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result: dict[str, Any] = {"files": len(files) - 1, "cpu_s": cpu, "wall_s": wall}
        if profile is not None:
            import pstats

            profile.disable()
            result["calls"] = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        return result
    finally:
        await h1.close()


def _child(argv: list[str]) -> int:
    urls_file, out, calls = argv[0], Path(argv[1]), argv[2] == "1"
    out.mkdir(parents=True)
    urls = Path(urls_file).read_text().split()
    print(json.dumps(asyncio.run(_lane(urls, out, calls))))
    return 0


def _run_lane(tree: str, src: str, urls_file: Path, out: Path, calls: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(urls_file), str(out), "1" if calls else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"the lane of {tree} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = new_parser(__doc__)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, default=16 * KIB)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--other-src", help="another checkout's src directory, run alternately with this one")
    p.add_argument(
        "--calls", action="store_true", help="also count Python calls a file (one run each, cProfile)"
    )
    add_keep_arg(p, "files, logs")
    add_output_args(p, OUT_DIR / "profile_lane.json")
    args = parse_common_args(p, argv, settings=False)
    tools = find_tools("profile_lane")
    if tools is None:
        return 2
    here = str(Path(__file__).resolve().parent.parent / "src")
    trees = {"this": here} | ({"other": str(Path(args.other_src).resolve())} if args.other_src else {})
    session = Session("profile_lane", args, ["www", "dl"])
    services = Services(session.work, tools.nginx, tools.venv_python, {})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    calls: dict[str, float] = {}
    with session.guard(lambda: session.stop_services(services)):
        data = write_dataset(session.work / "www" / "small", args.files, args.size)
        first = f"/small/{data.names[0]}"
        base = services.start_nginx(first, args.size).removesuffix(first) + "/small"
        urls_file = session.work / "urls.txt"
        urls_file.write_text("\n".join(f"{base}/{n}" for n in data.names))
        untimed_sync()
        log(f"CPU probe: {cpu_probe_ms()} ms; {args.files} files of {args.size} bytes, {args.rounds} rounds")
        for r in range(args.rounds):
            for name, src in trees.items():
                res = _run_lane(name, src, urls_file, session.work / "dl" / f"r{r}-{name}", False)
                runs[name].append(res)
                per_file = 1e6 * res["cpu_s"] / res["files"]
                log(f"  [round {r + 1}] {name:5}  {per_file:6.1f} µs/file  wall {res['wall_s']:.3f} s")
        if args.calls:
            for name, src in trees.items():
                res = _run_lane(name, src, urls_file, session.work / "dl" / f"calls-{name}", True)
                calls[name] = res["calls"] / res["files"]
    if session.failures:
        log("\n".join(session.failures))
        return 1
    summary = {
        name: {
            "median_cpu_us_per_file": statistics.median(1e6 * r["cpu_s"] / r["files"] for r in rs),
            "median_wall_s": statistics.median(r["wall_s"] for r in rs),
            **({"calls_per_file": calls[name]} if name in calls else {}),
        }
        for name, rs in runs.items()
    }
    for name, s in summary.items():
        extra = f", {s['calls_per_file']:.1f} calls/file" if "calls_per_file" in s else ""
        log(f"{name:5}  median {s['median_cpu_us_per_file']:.1f} µs of CPU a file{extra}  ({trees[name]})")
    if "other" in summary:
        ratio = summary["this"]["median_cpu_us_per_file"] / summary["other"]["median_cpu_us_per_file"]
        log(f"this / other CPU a file: {ratio:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"benchmark": "profile_lane", "trees": trees, "runs": runs, "summary": summary}, indent=2)
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(sys.argv[2:]))
    sys.exit(main())
