"""Upload jobs run by the scheduler (scheduler/uploads.py) in this process (tests/support/
driver.py: the real service, store and scheduler, a manual clock), against the strict BITS
server of tests/support/bitsserver.py: TRANSFERRED only once the session is closed, the
offset and session checkpointed, errors and retries as downloads, upload-reply's reply
beside ReplyFileName, Cancel-Session.

Until CreateJob Type 1/2 and AddFile of uploads land (helper A), a job is made an upload job
in memory: created as a download of the upload URL, then given its type, source and
``UploadState`` as AddFile will."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from openbits.errors import HResult
from openbits.model import ErrorContext, Job, JobState, JobType, UploadState
from openbits.transfer import files as fs
from tests.support.bitsserver import BitsServer, bits_server
from tests.support.driver import Driver

MiB = 1024 * 1024


async def upload_job(d: Driver, url: str, source: Path, job_type: JobType = JobType.UPLOAD) -> Job:
    job = await d.job(url, resume=False)
    file = job.files[0]
    file.local_file = str(source)
    st = source.stat()
    file.bytes_total = st.st_size
    job.job_type = job_type
    job.upload = UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    if job_type is JobType.UPLOAD_REPLY:
        job.reply_file_name = str(source.parent / f"{job.job_id}.reply")
    d.service.resume(job)
    return job


def make_source(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


async def test_an_upload_job_is_transferred_once_its_session_is_closed(tmp_path: Path) -> None:
    async with bits_server() as server, Driver(tmp_path) as d:
        path, data = make_source(tmp_path, 2 * MiB + 7)
        job = await upload_job(d, f"{server.url}/in/a.bin", path)
        await d.settle()
        assert job.state is JobState.TRANSFERRED
        assert server.uploads["/in/a.bin"] == data
        assert job.upload is not None and job.upload.closed
        f = job.files[0]
        assert f.completed and f.bytes_transferred == f.bytes_total == len(data)
        assert d.service.counters.bytes_transferred == len(data)


async def test_a_transient_failure_retries_in_the_same_session(tmp_path: Path) -> None:
    async with bits_server() as server, Driver(tmp_path) as d:
        path, data = make_source(tmp_path, 3 * MiB)
        server.inject("fragment", "ok")
        server.inject("fragment", "500")
        job = await upload_job(d, f"{server.url}/t.bin", path)
        await d.settle()
        assert job.state is JobState.TRANSIENT_ERROR
        assert job.error is not None and job.error.hresult == 0x80004005
        assert job.error.context is ErrorContext.REMOTE_FILE
        assert job.files[0].bytes_transferred == MiB  # (checkpointed at the end of the run)
        assert job.upload is not None
        session = job.upload.session_id
        d.advance_to(job.retry_at_ns)
        await d.settle()
        assert job.state is JobState.TRANSFERRED, job.error
        assert job.upload.session_id == session
        assert server.uploads["/t.bin"] == data and server.bytes_resent == 0
        assert server.count("create-session") == 1


async def test_a_changed_source_is_a_fatal_local_file_error(tmp_path: Path) -> None:
    async with bits_server() as server, Driver(tmp_path) as d:
        path, _ = make_source(tmp_path, 1000)
        job = await upload_job(d, f"{server.url}/c.bin", path)
        path.write_bytes(b"other content, other size")
        await d.settle()
        assert job.state is JobState.ERROR
        assert job.error is not None
        assert job.error.hresult == HResult.BG_E_LOCAL_FILE_CHANGED
        assert job.error.context is ErrorContext.LOCAL_FILE


async def test_upload_reply_fetches_the_reply_beside_reply_file_name(tmp_path: Path) -> None:
    async with bits_server(BitsServer(reply=True)) as server, Driver(tmp_path) as d:
        path, data = make_source(tmp_path, 4000)
        job = await upload_job(d, f"{server.url}/r.bin", path, JobType.UPLOAD_REPLY)
        await d.settle()
        assert job.state is JobState.TRANSFERRED
        reply = BitsServer.reply_of(data)
        assert (tmp_path / fs.reply_temp_name(job.job_id)).read_bytes() == reply
        assert job.reply_bytes_total == job.reply_bytes_transferred == len(reply)
        assert job.upload is not None and job.upload.reply_done
        kinds = [k for k, _ in server.packets]
        assert kinds[-1] == "close-session"


async def test_cancel_upload_sends_cancel_session(tmp_path: Path) -> None:
    async with bits_server() as server, Driver(tmp_path) as d:
        path, _ = make_source(tmp_path, 3 * MiB)
        server.inject("fragment", "ok")
        server.inject("fragment", "500")
        job = await upload_job(d, f"{server.url}/x.bin", path)
        await d.settle()
        assert job.upload is not None and job.upload.session_id in server.sessions
        d.transfers.cancel_upload(job)
        deadline = time.monotonic() + 10
        while server.count("cancel-session") == 0 or server.sessions:
            assert time.monotonic() < deadline, "no Cancel-Session"
            await asyncio.sleep(0.01)
        cancel = next(h for k, h in server.packets if k == "cancel-session")
        assert cancel["BITS-Session-Id"] == job.upload.session_id
