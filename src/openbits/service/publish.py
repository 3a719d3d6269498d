"""Complete's renames: every transferred file of a download job made its LocalFile.

The files are published in the job's order, in runs of consecutive files whose temporary
files share a directory and whose LocalFiles share one (``files.publish_batch``: each
directory opened once per run, one round trip to the owner's helper for many files, not
one per file); the first failure stops them (bits-spec §3.2: the job keeps its state, the
files renamed before it stay published).
"""

from __future__ import annotations

import os

from openbits.model import Job, JobFile
from openbits.transfer import files as fs
from openbits.transfer.owner import Owners


def publish_files(owners: Owners, job: Job, mode: int) -> tuple[list[str | None], set[str]]:
    """Rename every transferred file of ``job`` to its LocalFile (``published`` set on each
    as it is); (the temporary files of the files not transferred, removed once the job is
    stored ACKNOWLEDGED; the directories to fsync before the renames are durable).  Raises
    the BitsError of the first file that could not be published."""
    dropped: list[str | None] = []
    directories: set[str] = set()
    run: list[JobFile] = []
    run_dirs: tuple[str, str] | None = None
    for f in job.files:
        if f.published:
            continue
        temp = f.temp_path
        if not f.completed or temp is None:
            dropped.append(temp)
            continue
        dirs = (os.path.dirname(temp), os.path.dirname(f.local_file))
        if dirs != run_dirs and run:
            _publish_run(owners, job, mode, run)
            run = []
        run_dirs = dirs
        run.append(f)
        directories.add(dirs[1])
    if run:
        _publish_run(owners, job, mode, run)
    return dropped, directories


def _publish_run(owners: Owners, job: Job, mode: int, run: list[JobFile]) -> None:
    """Publish ``run`` (files whose temporary files share a directory, and whose LocalFiles
    do), in order.  A file whose rename fails but whose temporary file is gone and whose
    LocalFile exists was renamed already, by a Complete that crashed before its commit: it
    is published, and the rest follow; any other failure is raised."""
    uid = job.owner_uid
    items = [(f.temp_path or "", f.local_file, fs.http_date_to_unix(f.last_modified)) for f in run]
    start = 0
    while start < len(run):
        done, error = fs.publish_batch(owners, uid, None, items[start:], mode)
        for f in run[start : start + done]:
            f.published = True
        if error is None:
            return
        failed = start + done
        temp, local_file, _ = items[failed]
        if fs.exists(owners, uid, None, temp) or not fs.exists(owners, uid, None, local_file):
            raise error
        run[failed].published = True
        start = failed + 1
