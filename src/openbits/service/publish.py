"""Complete's renames: every transferred file of a download job made its LocalFile.

The files are published in the job's order, in runs of consecutive files of one directory
(a temporary file sits beside its LocalFile; ``files.publish_batch``: the directory opened
once per run, one round trip to the owner's helper for many files, not one per file); the
first failure stops them (bits-spec §3.2: the job keeps its state, the files renamed before
it stay published).
"""

from __future__ import annotations

import asyncio

from openbits.model import Job, JobFile
from openbits.transfer import files as fs
from openbits.transfer.owner import Owners

#: files renamed between two turns of the event loop: ~4 ms of renames in process, one
#: round trip to an owner's helper
SLICE_FILES = 256


async def publish_files(owners: Owners, job: Job, mode: int) -> tuple[list[str | None], set[str]]:
    """Rename every transferred file of ``job`` to its LocalFile (``published`` set on each
    as it is), as the owner the job had when this began; (the temporary files of the files
    not transferred, removed once the job is stored ACKNOWLEDGED; the directories to fsync
    before the renames are durable).  Raises the BitsError of the first file that could not
    be published.

    At most ``SLICE_FILES`` files are renamed between two turns of the event loop, so a
    Complete of thousands of files does not hold up every other caller for its whole length;
    a job cancelled meanwhile stops the renames there (the files renamed stay published, as
    when Cancel comes while the directories are synced; the caller sees the job final)."""
    uid = job.owner_uid
    dropped: list[str | None] = []
    runs: list[tuple[str, list[JobFile], list[tuple[str, str, float | None]]]] = []
    run_dir = ""
    for f in job.files:
        if f.published:
            continue
        if not f.completed or f.temp_name is None:
            dropped.append(f.temp_path)
            continue
        # (LocalFile is absolute and normalised, its temporary file beside it: no split)
        cut = f.local_file.rfind("/")
        directory = f.local_file[:cut] or "/"
        if directory != run_dir or not runs:
            runs.append((directory, [], []))
            run_dir = directory
        runs[-1][1].append(f)
        runs[-1][2].append((f.temp_name, f.local_file[cut + 1 :], fs.http_date_to_unix(f.last_modified)))
    directories: set[str] = set()
    renamed = 0
    for directory, run, names in runs:
        for start in range(0, len(run), SLICE_FILES):
            if renamed:
                await asyncio.sleep(0)  # (a turn for everyone else)
                if job.state.is_final:
                    return dropped, directories
            directories.add(directory)
            end = start + SLICE_FILES
            _publish_run(owners, uid, mode, directory, run[start:end], names[start:end])
            renamed += len(run[start:end])
    return dropped, directories


def _publish_run(
    owners: Owners,
    uid: int,
    mode: int,
    directory: str,
    run: list[JobFile],
    names: list[tuple[str, str, float | None]],
) -> None:
    """Publish ``run`` (files of ``directory``; ``names`` their temporary and final names and
    mtimes), in order.  A file whose rename fails but whose temporary file is gone and whose
    LocalFile exists was renamed already, by a Complete that crashed before its commit: it
    is published, and the rest follow; any other failure is raised."""
    start = 0
    while start < len(run):
        done, error = fs.publish_batch(owners, uid, None, directory, names[start:], mode)
        for f in run[start : start + done]:
            f.published = True
        if error is None or start + done >= len(run):
            return  # (every file renamed: an error after the last, closing a directory, is moot)
        failed = run[start + done]
        temp = failed.temp_path or ""
        if fs.exists(owners, uid, None, temp) or not fs.exists(owners, uid, None, failed.local_file):
            raise error
        failed.published = True
        start += done + 1
