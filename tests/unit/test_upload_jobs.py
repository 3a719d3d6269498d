"""Upload and upload-reply jobs in the service (SPEC §8): CreateJob Type 1 and 2, the one
file and its source, SetReplyFileName, GetReplyData, Complete and Cancel, through the real
Service and SQLite store of tests/support/driver.py (no daemon; the scheduler is not ticked,
so no transfer runs)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from openbits.errors import BitsError
from openbits.model import BG_SIZE_UNKNOWN, REPLY_DATA_MAX_BYTES, Job, JobState, JobType, UploadState
from openbits.transfer import files as fs
from tests.support.driver import ME, Driver

URL = "http://127.0.0.1:9/upload/target.bin"


def _source(tmp_path: Path, data: bytes = b"x" * 1000) -> Path:
    source = tmp_path / "src" / "report.bin"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    return source


async def _upload_job(d: Driver, job_type: JobType = JobType.UPLOAD, **props: Any) -> Job:
    return await d.service.create_job(ME, {"DisplayName": "up", "Type": int(job_type), **props})


async def _refused(call: Any) -> str:
    with pytest.raises(BitsError) as info:
        await call
    return info.value.name


def _stored(d: Driver, job: Job) -> Job:
    loaded = d.store.load_job(job.job_id)
    assert loaded is not None
    return loaded


async def test_create_job_with_the_file_takes_the_sources_size_and_mtime(tmp_path: Path) -> None:
    source = _source(tmp_path)
    st = source.stat()
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, RemoteUrl=URL, LocalFile=str(source))
        for found in (job, _stored(d, job)):
            assert found.job_type is JobType.UPLOAD and found.state is JobState.QUEUED
            [file] = found.files
            assert (file.remote_url, file.local_file, file.bytes_total) == (URL, str(source), 1000)
            assert file.temp_name is None  # (an upload writes nothing beside its source)
            assert found.upload == UploadState(source_size=1000, source_mtime_ns=st.st_mtime_ns)
            assert found.reply_file_name is None
        cim = job.to_cim()
        assert cim["JobType"] == 1 and cim["BytesTotal"] == 1000
        assert cim["ReplyFileName"] is None and cim["ReplyProgress"] is None


async def test_add_file_to_an_upload_reply_job_sets_the_default_reply_file_name(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, JobType.UPLOAD_REPLY)
        assert job.state is JobState.SUSPENDED and job.reply_file_name is None
        await d.service.add_file(ME, job.job_id, {"RemoteUrl": URL, "LocalFile": str(source)})
        expected = str(source.parent / f"{job.job_id}.reply")
        for found in (job, _stored(d, job)):
            assert found.reply_file_name == expected
            assert found.upload is not None and found.upload.source_size == 1000
        assert job.to_cim()["ReplyProgress"] == {"BytesTotal": BG_SIZE_UNKNOWN, "BytesTransferred": 0}
        assert d.service.resume(job) == 0 and job.state is JobState.QUEUED


async def test_an_upload_job_has_exactly_one_file(tmp_path: Path) -> None:
    source = _source(tmp_path)
    pair = {"RemoteUrl": URL, "LocalFile": str(source)}
    async with Driver(tmp_path) as d:
        job = await _upload_job(d)
        two = {"Files": [pair, {**pair, "RemoteUrl": URL + "2"}]}
        assert await _refused(d.service.add_file_set(ME, job.job_id, two)) == "BG_E_TOO_MANY_FILES"
        assert job.files == [] and _stored(d, job).files == []
        await d.service.add_file_set(ME, job.job_id, {"Files": [pair]})  # one file: accepted
        assert len(job.files) == 1
        assert await _refused(d.service.add_file(ME, job.job_id, pair)) == "BG_E_TOO_MANY_FILES"
        ranges = {**pair, "Ranges": [{"InitialOffset": 0, "Length": 10}]}
        assert await _refused(d.service.add_file_with_ranges(ME, job.job_id, ranges)) == "E_NOTIMPL"
        assert len(_stored(d, job).files) == 1


@pytest.mark.parametrize(
    ("remote", "local", "hresult"),
    [
        ("file:///etc/hosts", "{source}", "E_INVALIDARG"),
        ("/etc/hosts", "{source}", "E_INVALIDARG"),
        ("ftp://127.0.0.1/x", "{source}", "E_INVALIDARG"),
        (URL, "relative/file", "E_INVALIDARG"),
        (URL, "{dir}/missing.bin", "HRESULT_FILE_NOT_FOUND"),
        (URL, "{dir}/nowhere/missing.bin", "HRESULT_FILE_NOT_FOUND"),
        (URL, "{source}/below", "HRESULT_PATH_NOT_FOUND"),
        (URL, "{dir}", "E_INVALIDARG"),
    ],
    ids=["file-url", "path", "ftp", "relative", "missing", "missing-dir", "below-a-file", "directory"],
)
async def test_a_bad_upload_file_is_refused_with_the_bits_error(
    tmp_path: Path, remote: str, local: str, hresult: str
) -> None:
    source = _source(tmp_path)
    pair = {"RemoteUrl": remote, "LocalFile": local.format(source=source, dir=source.parent)}
    async with Driver(tmp_path) as d:
        job = await _upload_job(d)
        assert await _refused(d.service.add_file(ME, job.job_id, pair)) == hresult
        assert job.files == [] and job.upload is None
        # and CreateJob with the file creates no job
        before = len(d.service.jobs)
        assert await _refused(_upload_job(d, JobType.UPLOAD_REPLY, **pair)) == hresult
        assert len(d.service.jobs) == before


async def test_complete_of_an_upload_job_needs_transferred(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        for job_type in (JobType.UPLOAD, JobType.UPLOAD_REPLY):
            job = await _upload_job(d, job_type, RemoteUrl=URL, LocalFile=str(source), Suspend=True)
            assert await _refused(d.service.complete(job)) == "BG_E_INVALID_STATE"
            d.service.resume(job)
            assert await _refused(d.service.complete(job)) == "BG_E_INVALID_STATE"
            assert job.state is JobState.QUEUED


async def test_set_reply_file_name(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        download = await d.service.create_job(ME, {"DisplayName": "down"})
        upload = await _upload_job(d)
        reply_job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        name = str(tmp_path / "dest" / "answer.xml")
        for other in (download, upload):
            call = d.service.invoke(ME, other.job_id, "SetReplyFileName", {"ReplyFileName": name})
            assert await _refused(call) == "E_NOTIMPL"
        for bad, hresult in (
            ("answer.xml", "E_INVALIDARG"),
            ("", "E_INVALIDARG"),
            (str(tmp_path / "nowhere" / "answer.xml"), "HRESULT_PATH_NOT_FOUND"),
            (str(tmp_path / "dest"), "E_INVALIDARG"),
        ):
            call = d.service.invoke(ME, reply_job.job_id, "SetReplyFileName", {"ReplyFileName": bad})
            assert await _refused(call) == hresult, bad
        result = await d.service.invoke(ME, reply_job.job_id, "setreplyfilename", {"ReplyFileName": name})
        assert result == {"ReturnValue": 0}
        assert reply_job.reply_file_name == name == _stored(d, reply_job).reply_file_name
        assert reply_job.to_cim()["ReplyFileName"] == name
        # a name set before the file is added is kept by AddFile
        early = await _upload_job(d, JobType.UPLOAD_REPLY)
        await d.service.invoke(ME, early.job_id, "SetReplyFileName", {"ReplyFileName": name})
        await d.service.add_file(ME, early.job_id, {"RemoteUrl": URL, "LocalFile": str(source)})
        assert early.reply_file_name == name


async def test_set_reply_file_name_moves_a_part_fetched_but_not_a_whole_reply(tmp_path: Path) -> None:
    source = _source(tmp_path)
    (tmp_path / "new").mkdir()
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        assert job.upload is not None and job.reply_file_name is not None
        # every byte acknowledged, the reply fetched in part beside the default name
        job.upload.fragments_done, job.upload.reply_url = True, "http://127.0.0.1:9/reply/1"
        part = Path(job.reply_file_name).parent / fs.reply_temp_name(job.job_id)
        part.write_bytes(b"<ok")
        name = str(tmp_path / "new" / "answer.xml")
        await d.service.invoke(ME, job.job_id, "SetReplyFileName", {"ReplyFileName": name})
        assert _stored(d, job).reply_file_name == name
        assert not part.exists()  # (fetched again beside the new name: nothing left behind)
        # the reply whole (TRANSFERRED or not): it stays beside the name it was fetched for
        job.upload.reply_done = True
        again = d.service.invoke(ME, job.job_id, "SetReplyFileName", {"ReplyFileName": str(source) + ".x"})
        assert await _refused(again) == "BG_E_INVALID_STATE"
        assert job.reply_file_name == name


async def test_get_reply_data_of_a_reply_gone_speaks_of_the_reply(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        _transferred(d, job, b"<ok/>").unlink()
        with pytest.raises(BitsError) as info:
            await d.service.invoke(ME, job.job_id, "GetReplyData", None)
        assert info.value.name == "HRESULT_FILE_NOT_FOUND"
        assert "the reply" in info.value.message and "upload source" not in info.value.message
        # a directory where a local name is expected: E_INVALIDARG, the reply's as the source's
        temp = Path(job.reply_file_name or "").parent / fs.reply_temp_name(job.job_id)
        temp.mkdir()
        with pytest.raises(BitsError) as info:
            await d.service.invoke(ME, job.job_id, "GetReplyData", None)
        assert info.value.name == "E_INVALIDARG" and "the reply" in info.value.message


def _transferred(d: Driver, job: Job, reply: bytes | None) -> Path:
    """The job as the upload client leaves it at TRANSFERRED (issue 14's helper C): the
    reply (if any) whole in its temporary file beside ReplyFileName."""
    assert job.reply_file_name is not None and job.upload is not None
    temp = Path(job.reply_file_name).parent / fs.reply_temp_name(job.job_id)
    if reply is not None:
        temp.write_bytes(reply)
        job.upload.reply_done = True
    job.upload.fragments_done = job.upload.closed = True
    d.service._enter(job, JobState.TRANSFERRED)
    return temp


async def test_get_reply_data(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        download = await d.service.create_job(ME, {"DisplayName": "down"})
        upload = await _upload_job(d, RemoteUrl=URL, LocalFile=str(source))
        for other in (download, upload):
            assert await _refused(d.service.invoke(ME, other.job_id, "GetReplyData", None)) == "E_NOTIMPL"
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        assert await _refused(d.service.invoke(ME, job.job_id, "GetReplyData", None)) == "BG_E_INVALID_STATE"
        # TRANSFERRED, the server application sent no reply: 0 bytes
        _transferred(d, job, None)
        empty = await d.service.invoke(ME, job.job_id, "GetReplyData", {})
        assert empty == {"ReturnValue": 0, "ReplyData": "", "ReplySize": 0}
        job.upload.reply_done = True  # type: ignore[union-attr]
        temp = _transferred(d, job, b"<ok id='7'/>\x00\xff")
        got = await d.service.invoke(ME, job.job_id, "GetReplyData", None)
        assert got == {
            "ReturnValue": 0,
            "ReplyData": base64.b64encode(b"<ok id='7'/>\x00\xff").decode(),
            "ReplySize": 14,
        }
        temp.write_bytes(b"r" * (REPLY_DATA_MAX_BYTES + 1))
        assert await _refused(d.service.invoke(ME, job.job_id, "GetReplyData", None)) == "BG_E_TOO_LARGE"
        temp.write_bytes(b"r" * REPLY_DATA_MAX_BYTES)
        whole = await d.service.invoke(ME, job.job_id, "GetReplyData", None)
        assert whole["ReplySize"] == REPLY_DATA_MAX_BYTES


async def test_complete_publishes_the_reply_and_get_reply_data_reads_it_after(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        temp = _transferred(d, job, b"the reply")
        assert await d.service.complete(job) == 0
        assert job.state is JobState.ACKNOWLEDGED and _stored(d, job).state is JobState.ACKNOWLEDGED
        assert job.reply_file_name is not None
        assert Path(job.reply_file_name).read_bytes() == b"the reply" and not temp.exists()
        assert os.stat(job.reply_file_name).st_mode & 0o777 == d.service.published_mode
        got = await d.service.invoke(ME, job.job_id, "GetReplyData", None)
        assert base64.b64decode(got["ReplyData"]) == b"the reply"
        # a plain upload job: Complete acknowledges, nothing to publish
        plain = await _upload_job(d, RemoteUrl=URL, LocalFile=str(source))
        d.service._enter(plain, JobState.TRANSFERRED)
        assert await d.service.complete(plain) == 0 and plain.state is JobState.ACKNOWLEDGED


async def test_cancel_of_an_upload_reply_job_removes_the_reply_and_asks_for_cancel_session(
    tmp_path: Path,
) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        asked: list[str] = []
        d.transfers.cancel_upload = lambda job: asked.append(job.job_id)  # type: ignore[method-assign]
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        assert job.reply_file_name is not None and job.upload is not None
        temp = Path(job.reply_file_name).parent / fs.reply_temp_name(job.job_id)
        temp.write_bytes(b"half a reply")
        job.upload.session_id = "{SESSION}"
        assert await d.service.cancel(job) == 0
        assert job.state is JobState.CANCELLED and not temp.exists() and source.exists()
        assert asked == [job.job_id]
        # no session open (or closed already): no Cancel-Session
        for session in (None, "closed"):
            other = await _upload_job(d, RemoteUrl=URL, LocalFile=str(source))
            assert other.upload is not None
            other.upload.session_id = session
            other.upload.closed = session == "closed"
            await d.service.cancel(other)
        assert asked == [job.job_id]


async def test_set_remote_name_of_an_upload_job_stays_refused(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, RemoteUrl=URL, LocalFile=str(source))
        call = d.service.invoke(ME, job.job_id, "SetRemoteName", {"LocalFile": str(source), "RemoteUrl": URL})
        assert await _refused(call) == "E_NOTIMPL"


async def test_a_reply_left_by_a_cancel_that_crashed_is_removed_at_the_next_start(tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with Driver(tmp_path) as d:
        job = await _upload_job(d, JobType.UPLOAD_REPLY, RemoteUrl=URL, LocalFile=str(source))
        assert job.reply_file_name is not None
        temp = Path(job.reply_file_name).parent / fs.reply_temp_name(job.job_id)
        temp.write_bytes(b"half a reply")
        # stored CANCELLED, then the daemon died before it removed the reply's temporary file
        d.service._enter(job, JobState.CANCELLED)
        d.store.save_job(job)
    async with Driver(tmp_path):
        assert not temp.exists() and source.exists()
