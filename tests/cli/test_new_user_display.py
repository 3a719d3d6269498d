"""The CLIs as a new user meets them (issue 12, item 8): what they print, as subprocesses
against a real daemon, on a pipe or a terminal as each point needs.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.daemon import Daemon


def run_into_closed_pipe(daemon: Daemon, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``… | head -0``, deterministically: stdout is a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


# -- a closed stdout is not a daemon failure ---------------------------------------------------


def test_a_reader_that_went_away_ends_the_command_quietly(daemon: Daemon) -> None:
    daemon.cli("create", "piped", check=True)
    for module, args in (
        ("openbits", ("get",)),
        ("openbits", ("get", "piped")),
        ("openbits", ("get", "--json")),
        ("openbits.cli.bitsadmin", ("/list",)),
    ):
        result = run_into_closed_pipe(daemon, module, *args)
        # as `cat | head` ends: SIGPIPE's status for the shell, and not a word on stderr
        assert (result.returncode, result.stderr) == (141, ""), (module, args, result)
