"""The pure parts of `openbits watch`'s live table (cli/render.py)."""

from __future__ import annotations

import pytest

from openbits.cli.render import Rates, bytes_pair, duration, print_job, short_ids
from openbits.model import Job, JobFile, JobState, JobType, new_job_id

MiB = 1024 * 1024


def test_short_ids_are_unique_prefixes_as_git_shortens_hashes() -> None:
    a, b, c = (
        "{AA277882-E135-40FA-8160-645F3DAB0EE7}",
        "{AA277882-E1FF-40FA-8160-645F3DAB0EE7}",
        "{12345678-0000-4000-8000-000000000000}",
    )
    assert short_ids([c]) == {c: "12345678"}
    assert short_ids([a, b, c]) == {a: "AA277882-E13", b: "AA277882-E1F", c: "12345678-000"}
    assert short_ids([a, "{AA277882-0000-4000-8000-000000000000}"])[a] == "AA277882-E"  # never ends at '-'


def test_bytes_pair_and_duration() -> None:
    assert bytes_pair(3 * MiB + MiB // 2, 16 * MiB) == "3.5/16.0 MiB"
    assert bytes_pair(512, 1000) == "512/1000 B"
    assert bytes_pair(0, 0) == "-" and bytes_pair(2048, 0xFFFFFFFFFFFFFFFF) == "2.0 KiB"
    assert [duration(s) for s in (4.6, 185, 7620, 3 * 86400 + 4 * 3600)] == ["5s", "3m05s", "2h07m", "3d04h"]


def test_rates_follow_the_changes_of_a_transferring_job() -> None:
    rates = Rates()
    job = {"State": JobState.TRANSFERRING, "BytesTransferred": 0, "BytesTotal": 10 * MiB}
    rates.update({"j": job}, now=100.0)
    assert rates.cells("j", job) == ("-", "-")  # one sample: no rate yet
    job = dict(job, BytesTransferred=MiB)
    rates.update({"j": job}, now=101.0)
    assert rates.cells("j", job) == ("1.0 MiB/s", "9s")
    job = dict(job, BytesTransferred=3 * MiB)
    rates.update({"j": job}, now=102.0)  # 2 MiB/s now, smoothed: 1.3 MiB/s
    assert rates.cells("j", job)[0] == "1.3 MiB/s"
    suspended = dict(job, State=JobState.SUSPENDED)
    rates.update({"j": suspended}, now=103.0)
    assert rates.cells("j", suspended) == ("-", "-")
    rates.update({}, now=104.0)
    assert rates.rate("j") is None


def test_print_job_shows_an_upload_and_its_reply(capsys: pytest.CaptureFixture[str]) -> None:
    source = JobFile("https://host/inbox/a.bin", "/srv/a.bin", 2048, 1024)
    job = Job(
        job_id=new_job_id(), owner="alice", owner_uid=1000, job_type=JobType.UPLOAD_REPLY, files=[source]
    )
    job.reply_file_name = "/srv/a.reply"
    print_job(job.to_cim())
    shown = capsys.readouterr().out
    assert "JobType" in shown and "UPLOAD-REPLY" in shown
    assert "/srv/a.reply" in shown and "ReplyProgress        0 B of ?" in shown
    assert "File 0: /srv/a.bin -> https://host/inbox/a.bin (1.0 KiB of 2.0 KiB)" in shown
    job.reply_bytes_total, job.reply_bytes_transferred = 4096, 2048
    job.job_type = JobType.UPLOAD
    print_job(job.to_cim())
    plain = capsys.readouterr().out
    assert "UPLOAD" in plain and "Reply" not in plain
    download = Job(job_id=new_job_id(), owner="alice", owner_uid=1000, files=[source])
    print_job(download.to_cim())
    shown = capsys.readouterr().out
    assert "JobType" not in shown and "File 0: https://host/inbox/a.bin -> /srv/a.bin" in shown
