"""`bitsadmin`: the Windows switches that map to built features, same wording.

The full switch set comes with the management-surface issue; this covers the
core verbs so scripts written for bitsadmin's basic lifecycle run unchanged.
"""

from __future__ import annotations

import os
import sys
import time

from openbits.client import Client, DaemonUnavailable
from openbits.errors import BitsError
from openbits.model import JobPriority, JobState

USAGE = """\
BITSADMIN version 3.0 (openbits)
USAGE: bitsadmin [/RAWRETURN] /SWITCH [arguments]
  /CREATE [/DOWNLOAD] display_name     Creates a job
  /ADDFILE job remote_url local_name   Adds a file to the job
  /RESUME job                          Starts the job
  /SUSPEND job                         Suspends the job
  /CANCEL job                          Cancels the job
  /COMPLETE job                        Completes the job
  /GETSTATE job                        Prints the job state
  /GETBYTESTRANSFERRED job             Prints the bytes transferred
  /GETBYTESTOTAL job                   Prints the total bytes
  /LIST                                Lists your jobs
  /TRANSFER name [/PRIORITY p] remote local ...   Transfers files and waits
"""


def _state(value: int) -> str:
    return JobState(value).bitsadmin_name


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    raw = False
    if args and args[0].upper() == "/RAWRETURN":
        raw, args = True, args[1:]
    if not args or args[0].upper() in ("/?", "/HELP"):
        print(USAGE)
        sys.exit(0 if args else 1)
    switch, rest = args[0].upper(), args[1:]
    try:
        with Client() as client:
            sys.exit(_run(client, switch, rest, raw))
    except BitsError as e:
        print(f"Unable to complete the operation - {e.hex} {e.name}: {e.message}", file=sys.stderr)
        sys.exit(1)
    except DaemonUnavailable as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)


def _run(client: Client, switch: str, rest: list[str], raw: bool) -> int:
    if switch == "/CREATE":
        if rest and rest[0].upper() == "/DOWNLOAD":
            rest = rest[1:]
        if len(rest) != 1:
            return _usage()
        job = client.create_job(DisplayName=rest[0])
        print(job if raw else f"Created job {job}.")
        return 0
    if switch == "/ADDFILE" and len(rest) == 3:
        client.add_file(rest[0], rest[1], os.path.abspath(rest[2]))
        if not raw:
            print(f"Added {rest[1]} -> {rest[2]} to job.")
        return 0
    verbs = {
        "/CANCEL": (0, "canceled"),
        "/COMPLETE": (1, "completed"),
        "/RESUME": (2, "resumed"),
        "/SUSPEND": (3, "suspended"),
    }
    if switch in verbs and len(rest) == 1:
        code, word = verbs[switch]
        result = client.set_job_state(rest[0], code)
        if raw:
            print(result)
        else:
            print(f"Job {word}." if switch != "/COMPLETE" or result == 0 else "Job partially completed.")
        return 0
    if switch in ("/GETSTATE", "/GETBYTESTRANSFERRED", "/GETBYTESTOTAL") and len(rest) == 1:
        instance = client.get_job(rest[0])
        value = {
            "/GETSTATE": _state(instance["State"]),
            "/GETBYTESTRANSFERRED": str(instance["BytesTransferred"]),
            "/GETBYTESTOTAL": str(instance["BytesTotal"]),
        }[switch]
        print(value)
        return 0
    if switch == "/LIST" and not rest:
        jobs = client.list_jobs()
        for j in jobs:
            print(
                f"{j['JobId']} '{j['DisplayName']}' {_state(j['State'])} "
                f"{j['FilesTransferred']} / {j['FilesTotal']} {j['BytesTransferred']} / {j['BytesTotal']}"
            )
        if not raw:
            print(f"Listed {len(jobs)} job(s).")
        return 0
    if switch == "/TRANSFER" and rest:
        return _transfer(client, rest)
    return _usage()


def _transfer(client: Client, rest: list[str]) -> int:
    name, rest = rest[0], rest[1:]
    priority = JobPriority.NORMAL
    while rest and rest[0].startswith("/"):
        opt = rest.pop(0).upper()
        if opt == "/PRIORITY" and rest:
            priority = JobPriority[rest.pop(0).upper()]
        elif opt not in ("/DOWNLOAD",):
            return _usage()
    if not rest or len(rest) % 2:
        return _usage()
    job = client.create_job(DisplayName=name, Priority=int(priority))
    for i in range(0, len(rest), 2):
        client.add_file(job, rest[i], os.path.abspath(rest[i + 1]))
    client.resume(job)
    print(f"DISPLAY: '{name}' TRANSFERRING")
    while True:
        state = JobState(client.get_job(job)["State"])
        if state is JobState.TRANSFERRED:
            client.complete(job)
            print("Transfer complete.")
            return 0
        if state is JobState.ERROR:
            err = client.get_error(job)
            client.cancel(job)
            code, name, text = err["ErrorCode"], err["Name"], err["ErrorDescription"]
            print(f"Unable to complete transfer - 0x{code:08X} {name}: {text}")
            return 1
        time.sleep(0.1)


def _usage() -> int:
    print(USAGE, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
