"""A daemon SIGKILLed in the middle of Complete: its renames are half done, its commit never
happened.  Restarted, the job is still TRANSFERRED (or ACKNOWLEDGED, had the commit won the
race) and a second Complete publishes the rest: the files renamed by the first are taken as
published (their temporary file gone, their LocalFile there), every file ends byte-identical
and no temporary file is left.  Real daemon, real nginx, real files."""

from __future__ import annotations

import threading
from pathlib import Path

from openbits.client import Client
from openbits.model import JobState
from tests.support.daemon import Daemon, wait_until
from tests.support.fixtures import make_file
from tests.support.nginx import Nginx

FILES = 1500  # (several slices of renames: the kill lands between two of them, or in one)


def test_a_sigkill_mid_complete_is_completed_by_the_next_complete(tmp_path: Path, nginx: Nginx) -> None:
    daemon = Daemon(tmp_path / "state", config={"max_files_per_job": FILES})
    dest = tmp_path / "dest"
    dest.mkdir()
    names = [f"f{i:04d}.bin" for i in range(FILES)]
    for i, name in enumerate(names):
        make_file(nginx.www, f"cc/{name}", 64 + i % 7, seed=i)
    daemon.start()
    try:
        job = daemon.client.create_job("complete-crash").job_id
        daemon.client.add_file_set(job, [(f"{nginx.url}/cc/{n}", str(dest / n)) for n in names])
        daemon.client.resume(job)
        daemon.wait_state(job, JobState.TRANSFERRED, timeout=120)
        outcome: list[object] = []

        def complete() -> None:
            try:
                with Client(daemon.socket) as client:
                    outcome.append(client.complete(job))
            except Exception as e:  # (the kill cuts the call: any error will do)
                outcome.append(e)

        caller = threading.Thread(target=complete)
        caller.start()
        wait_until(lambda: (dest / names[0]).exists() or outcome, 30, "the first rename")
        daemon.kill()
        caller.join(30)
        published_at_kill = sum((dest / n).exists() for n in names)
        assert published_at_kill > 0
        daemon.start()
        state = JobState(daemon.job(job)["State"])
        assert state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
        if state is JobState.TRANSFERRED:
            assert daemon.client.complete(job) == 0
        assert JobState(daemon.job(job)["State"]) is JobState.ACKNOWLEDGED
        for name in names:
            assert (dest / name).read_bytes() == (nginx.www / "cc" / name).read_bytes(), name
        assert sorted(p.name for p in dest.iterdir()) == names, "no temporary file is left"
    finally:
        daemon.stop()
