"""Shared parts of the end-to-end upload tests (issue 14's acceptance): a small server
application on 127.0.0.1 for upload-reply (by-value notifications, answered with a reply that
names the bytes it got), the upload server's own records and counters, and a job driven to
TRANSFERRED with an immediate retry at each transient error.

Everything here reads what the real processes leave: the server's session records
(``<state>/sessions/*.json``) and its log line at publish ("N bytes written by this process,
M fragments refused: 416"), which is the server's count of the bytes it wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from openbits.model import JobPriority, JobState, JobType
from tests.support.bitsupload import UploadServer
from tests.support.daemon import Daemon, wait_until
from tests.support.process import HOST, free_ports

MiB = 1024 * 1024


def reply_of(digest: str) -> bytes:
    """The reply the application gives to an upload whose SHA-256 is ``digest``."""
    return f"reply:{digest}".encode()


class ReplyApplication:
    """The server application of upload-reply (by-value): it hashes each POSTed upload as
    it streams in and answers ``reply:<sha256>``, asking the server to publish the upload
    too; ``received`` has the digests it got, in order."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="reply-app", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/app"

    async def _handle(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        async for chunk in request.content.iter_chunked(1 << 20):
            digest.update(chunk)
        self.received.append(digest.hexdigest())
        # (without BITS-Copy-File-To-Destination the server drops the upload: bits-spec §6.4)
        headers = {"BITS-Copy-File-To-Destination": "1"}
        return web.Response(body=reply_of(digest.hexdigest()), headers=headers)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_post("/app", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def write_source(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, MiB))
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def session_records(server: UploadServer, name: str) -> list[dict[str, Any]]:
    """The server's session records (live and tombstones) of uploads named ``name``."""
    records = []
    for path in sorted((server.state_dir / "sessions").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # (being replaced)
        if record["name"] == name:
            records.append(record)
    return records


def server_offset(server: UploadServer, name: str) -> int:
    """How far the server holds the upload ``name``: its open session's partial file's length
    (what a restarted server goes on from: the records are saved only now and then), else
    the offset its records say."""
    offsets = [0]
    for record in session_records(server, name):
        partial = server.root.joinpath(*record["parts"], f".bits-{record['session_id'].strip('{}')}.part")
        try:
            offsets.append(partial.stat().st_size if record["state"] == "open" else record["offset"])
        except FileNotFoundError:
            offsets.append(record["offset"])
    return max(offsets)


def created_sessions(server: UploadServer, relative: str) -> list[str]:
    """The ids of the sessions the server created for ``/relative``, from its log."""
    return re.findall(r"session (\{[0-9A-F-]+\}) created for /" + re.escape(relative) + r" ", server.logs())


def published(server: UploadServer, session: str) -> tuple[int, int]:
    """The server's count at publish of ``session``: (bytes written by the process that
    published it, fragments it refused with 416)."""
    match = re.search(
        re.escape(session) + r": published /\S+ \((\d+) bytes written by this process, (\d+) fragments",
        server.logs(),
    )
    assert match, f"{session} not published:\n{server.logs()[-3000:]}"
    return int(match.group(1)), int(match.group(2))


def drive(daemon: Daemon, job: str, timeout_s: float = 40.0) -> int:
    """Wait for ``job`` to be TRANSFERRED, resuming it at once after each transient error
    (instead of after MinimumRetryDelay); the number of transient errors met."""
    retries = 0

    def transferred() -> bool:
        nonlocal retries
        state = JobState(daemon.job(job)["State"])
        if state is JobState.TRANSIENT_ERROR:
            retries += 1
            daemon.client.resume(job)
        assert state is not JobState.ERROR, daemon.client.get_error(job)
        return state is JobState.TRANSFERRED

    wait_until(transferred, timeout_s, f"{job} to be transferred")
    return retries


#: NORMAL jobs are throttled, so that a test can strike mid-upload; FOREGROUND ones are not
THROTTLE = "8M"
#: the directories of the upload server's root, and what each one does
SERVER_CONFIG = """
[directories."reply"]
notification_type = "by-value"
notification_url = "{app_url}"

[directories."small"]
max_upload_bytes = 1000

[directories."short"]
session_timeout_s = 1.5
"""


@dataclass
class Rig:
    """The processes of an end-to-end upload test: the daemon, the upload server (its root
    has the directories in, reply, small, short, faults), the server application."""

    daemon: Daemon
    server: UploadServer
    app: ReplyApplication
    outbox: Path

    def url(self, relative: str) -> str:
        return f"{self.server.url}/{relative}"


@contextmanager
def running_rig(base: Path) -> Iterator[Rig]:
    app = ReplyApplication()
    app.start()
    server = UploadServer(base / "srv", SERVER_CONFIG.format(app_url=app.url))
    for directory in ("in", "reply", "small", "short", "faults"):
        (server.root / directory).mkdir()
    daemon = Daemon(base / "state", config={"normal_priority_bandwidth": THROTTLE, "read_timeout_s": 3})
    try:
        server.start()
        daemon.start()
        yield Rig(daemon, server, app, base / "outbox")
    finally:
        daemon.stop()
        server.stop()
        app.stop()


def new_job(rig: Rig, relative: str, source: Path, kind: JobType, priority: JobPriority) -> str:
    """An upload job of ``source`` to ``/relative``, suspended."""
    client = rig.daemon.client
    job = client.create_job(relative, job_type=kind, priority=priority).job_id
    client.add_file(job, rig.url(relative), str(source))
    return job


def start_throttled(rig: Rig, relative: str, size: int, url: str | None = None) -> tuple[str, Path, str]:
    """A NORMAL (throttled) upload job of ``size`` bytes to ``url`` (else ``/relative``),
    resumed; (job, source, its SHA-256)."""
    source = rig.outbox / relative
    digest = write_source(source, size)
    client = rig.daemon.client
    job = client.create_job(relative, job_type=JobType.UPLOAD, priority=JobPriority.NORMAL).job_id
    client.add_file(job, url or rig.url(relative), str(source))
    client.resume(job)
    return job, source, digest


def mid_upload(rig: Rig, name: str) -> int:
    """Wait until the server acknowledged 2 MiB or more of upload ``name``; its offset."""
    return int(wait_until(lambda: server_offset(rig.server, name) >= 2 * MiB, 20, f"{name} under way"))
