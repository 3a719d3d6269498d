"""Unit tests of openbits.service.publish: Complete's renames, in runs of one directory.

Real files in a temporary directory, published by this process (its own uid: in process).
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from openbits.errors import BitsError, HResult
from openbits.model import Job, JobFile, JobState
from openbits.service.publish import SLICE_FILES, publish_files
from openbits.transfer.owner import Owners

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


def _job(directories: list[Path], names: list[str]) -> Job:
    """A job of completed files ``names`` in ``directories`` (one each, in turn), each with
    its temporary file written (its name as content)."""
    job = Job(job_id="{00000000-0000-0000-0000-000000000001}", owner="me", owner_uid=os.geteuid())
    for i, name in enumerate(names):
        d = directories[i % len(directories)]
        temp = d / f".BIT{i:08d}.tmp"
        temp.write_bytes(name.encode())
        temp.chmod(0o600)
        job.files.append(
            JobFile(
                remote_url=f"http://127.0.0.1/{name}",
                local_file=str(d / name),
                completed=True,
                temp_name=temp.name,
                last_modified=LAST_MODIFIED,
            )
        )
    return job


async def test_every_file_is_published_with_its_mode_and_mtime_in_every_directory(
    owners: Owners, tmp_path: Path
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    job = _job(dirs, [f"f{i}" for i in range(7)])  # (a, b, a, b...: a run per file)
    job.files.append(
        JobFile(remote_url="http://127.0.0.1/x", local_file=str(dirs[0] / "x"), temp_name=".BITx.tmp")
    )
    dropped, directories = await publish_files(owners, job, 0o640)
    assert dropped == [str(dirs[0] / ".BITx.tmp")], "the file not transferred is dropped"
    assert directories == {str(d) for d in dirs}
    for f in job.files[:-1]:
        st = os.stat(f.local_file)
        assert f.published
        assert Path(f.local_file).read_bytes() == os.path.basename(f.local_file).encode()
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime == 1_445_412_480.0
        assert not os.path.exists(f.temp_path or "")


async def test_a_file_renamed_by_a_crashed_complete_is_published_and_the_run_goes_on(
    owners: Owners, tmp_path: Path
) -> None:
    job = _job([tmp_path], ["a", "b", "c"])
    second = job.files[1]
    os.rename(second.temp_path or "", second.local_file)  # (a Complete killed before its commit)
    await publish_files(owners, job, 0o644)
    assert [f.published for f in job.files] == [True, True, True]
    assert (tmp_path / "c").read_bytes() == b"c"


async def test_the_first_failure_stops_the_renames_and_is_raised(owners: Owners, tmp_path: Path) -> None:
    """bits-spec §3.2: the files renamed before it stay published, the others as they were."""
    job = _job([tmp_path], ["a", "b", "c"])
    target = tmp_path / "secret"
    target.write_bytes(b"s")
    target.chmod(0o600)
    second = Path(job.files[1].temp_path or "")
    second.unlink()
    second.symlink_to(target)  # (never followed: neither chmod'ed nor renamed)
    with pytest.raises(BitsError) as caught:
        await publish_files(owners, job, 0o644)
    assert caught.value.hresult == HResult.E_ACCESSDENIED
    assert "/b" in caught.value.message
    assert [f.published for f in job.files] == [True, False, False]
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert Path(job.files[2].temp_path or "").exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_the_loop_runs_between_slices_and_a_cancel_stops_the_renames(
    owners: Owners, tmp_path: Path
) -> None:
    """Other callers run between two slices of renames; a Cancel among them (the job final)
    stops the renames there: the files renamed stay published, the others are untouched."""
    job = _job([tmp_path], [f"f{i}" for i in range(SLICE_FILES * 2 + 5)])
    job.state = JobState.TRANSFERRED
    seen: list[int] = []

    def cancel() -> None:  # (runs at the first turn the renames leave the loop)
        seen.append(sum(f.published for f in job.files))
        job.state = JobState.CANCELLED

    asyncio.get_running_loop().call_soon(cancel)
    await publish_files(owners, job, 0o644)
    assert seen == [SLICE_FILES], "the loop ran after the first slice"
    assert [f.published for f in job.files] == [True] * SLICE_FILES + [False] * (SLICE_FILES + 5)
    assert all(Path(f.temp_path or "").exists() for f in job.files[SLICE_FILES:])
    assert not any(Path(f.local_file).exists() for f in job.files[SLICE_FILES:])
