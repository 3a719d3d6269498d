"""Complete's renames: every transferred file of a download job made its LocalFile.

The files are published in the job's order, in runs of consecutive files of one directory
(a temporary file sits beside its LocalFile; ``files.publish_batch``: the directory opened
once per run, one round trip to the owner's helper for many files, not one per file); the
first failure stops them (bits-spec §3.2: the job keeps its state, the
files renamed before it stay published).
"""

from __future__ import annotations

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
    names: list[tuple[str, str, float | None]] = []
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
        if directory != run_dir and run:
            _publish_run(owners, job, mode, run_dir, run, names)
            run, names = [], []
        run_dir = directory
        run.append(f)
        names.append((f.temp_name, f.local_file[cut + 1 :], fs.http_date_to_unix(f.last_modified)))
        directories.add(directory)
    if run:
        _publish_run(owners, job, mode, run_dir, run, names)
    return dropped, directories


def _publish_run(
    owners: Owners,
    job: Job,
    mode: int,
    directory: str,
    run: list[JobFile],
    names: list[tuple[str, str, float | None]],
) -> None:
    """Publish ``run`` (files of ``directory``; ``names`` their temporary and final names and
    mtimes), in order.  A file whose rename fails but whose temporary file is gone and whose
    LocalFile exists was renamed already, by a Complete that crashed before its commit: it
    is published, and the rest follow; any other failure is raised."""
    uid = job.owner_uid
    start = 0
    while start < len(run):
        done, error = fs.publish_batch(owners, uid, None, directory, names[start:], mode)
        for f in run[start : start + done]:
            f.published = True
        if error is None:
            return
        failed = run[start + done]
        temp = failed.temp_path or ""
        if fs.exists(owners, uid, None, temp) or not fs.exists(owners, uid, None, failed.local_file):
            raise error
        failed.published = True
        start += done + 1
