"""Upload jobs through both Python clients against a real daemon (SPEC §8, issue 14):
create_job(job_type=), set_reply_file_name, get_reply_data, the typed reply fields and
transfer(job_type=, reply_file_name=).  No upload runs (issue 14's helper C builds it):
the calls stop before a job is resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbits import AsyncClient, BitsError, JobState, JobType
from openbits.errors import InvalidState, LimitExceeded, NotImplementedValue
from openbits.jobs import ReplyProgress
from tests.support.daemon import Daemon

URL = "http://127.0.0.1:9/inbox/up.bin"


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "up.bin"
    source.write_bytes(b"s" * 300)
    return source


def test_the_sync_client_makes_an_upload_reply_job(daemon: Daemon, tmp_path: Path) -> None:
    client = daemon.client
    source = _source(tmp_path)
    job = client.create_job("up", URL, str(source), job_type=JobType.UPLOAD_REPLY)
    assert job.job_type is JobType.UPLOAD_REPLY and job.state is JobState.SUSPENDED
    assert job.files[0].bytes_total == 300 and job.bytes_total == 300
    assert job.reply_file_name == str(tmp_path / f"{job.job_id}.reply")
    assert job.reply_progress == ReplyProgress(None, 0)
    client.set_reply_file_name(job.job_id, str(tmp_path / "reply.xml"))
    assert client.get_job(job.job_id).reply_file_name == str(tmp_path / "reply.xml")
    with pytest.raises(InvalidState):
        client.get_reply_data(job.job_id)  # (not TRANSFERRED)
    with pytest.raises(LimitExceeded) as more:
        client.add_file(job.job_id, URL, str(source))
    assert more.value.name == "BG_E_TOO_MANY_FILES"
    download = client.create_job("down")
    with pytest.raises(NotImplementedValue):
        client.get_reply_data(download.job_id)
    assert download.reply_file_name is None and download.reply_progress is None


def test_transfer_of_a_missing_source_fails_and_cancels_its_job(daemon: Daemon, tmp_path: Path) -> None:
    client = daemon.client
    with pytest.raises(BitsError) as failed:
        client.transfer(
            [(URL, str(tmp_path / "missing.bin"))],
            "gone",
            job_type=JobType.UPLOAD_REPLY,
            reply_file_name=str(tmp_path / "reply.xml"),
        )
    assert failed.value.hresult == 0x80070002
    assert client.list_jobs() == []
    # a reply file name in a directory that is not there fails first
    with pytest.raises(BitsError) as nowhere:
        client.transfer(
            [(URL, str(_source(tmp_path)))],
            job_type=JobType.UPLOAD_REPLY,
            reply_file_name=str(tmp_path / "nowhere" / "reply.xml"),
        )
    assert nowhere.value.name == "HRESULT_PATH_NOT_FOUND" and client.list_jobs() == []


async def test_the_async_client_has_the_same_calls(daemon: Daemon, tmp_path: Path) -> None:
    source = _source(tmp_path)
    async with AsyncClient(daemon.socket) as client:
        job = await client.create_job("up", job_type=JobType.UPLOAD_REPLY)
        assert job.reply_file_name is None  # (set when the file is added)
        await client.add_file(job.job_id, URL, str(source))
        await client.set_reply_file_name(job.job_id, str(tmp_path / "a.xml"))
        found = await client.get_job(job.job_id)
        assert found.reply_file_name == str(tmp_path / "a.xml") and found.files[0].bytes_total == 300
        with pytest.raises(InvalidState):
            await client.get_reply_data(job.job_id)
        plain = await client.create_job("plain", job_type=JobType.UPLOAD)
        with pytest.raises(NotImplementedValue):
            await client.set_reply_file_name(plain.job_id, str(tmp_path / "b.xml"))
