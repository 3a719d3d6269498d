"""`bitsadmin` as a subprocess against a real daemon and a real nginx (SPEC §4, §6; bits-spec §7.1).

The transcript test replays the session of Microsoft's "bitsadmin examples" page (create, addfile,
resume, info, complete) and compares the output line by line with the documented format, GUIDs
and times normalised. The other tests run every switch at least once; switches whose daemon
method is not built yet must answer either their success line or E_NOTIMPL (the daemon grows
them while these tests stay valid).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from openbits.cli.bitsadmin.context import _fit
from openbits.cli.bitsadmin.parsing import parse_file_set, parse_ranges
from openbits.cli.bitsadmin.usage import switch_usage
from openbits.model import BG_LENGTH_TO_EOF, FILETIME_UNIX_EPOCH, JobPriority, JobState
from tests.support.daemon import CLASS, Daemon, wait_until
from tests.support.fixtures import make_file, sha256_file
from tests.support.nginx import Nginx

GUID = r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}"
TIME = r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M"
E_NOTIMPL = 0x80004001


def bitsadmin(
    daemon: Daemon | None,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    socket_path: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m openbits.cli.bitsadmin ARGS`` with OPENBITS_SOCKET set."""
    sock = socket_path if socket_path is not None else (daemon.socket if daemon else "")
    full_env = dict(os.environ, OPENBITS_SOCKET=sock, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "openbits.cli.bitsadmin", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args[3:]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int, name: str, prefix: str | None = None) -> None:
    """Exit 1 with ``Unable to … - 0x… NAME: …`` on stderr (bitsadmin's line, SPEC §6's code and name)."""
    where = f"{result.args[3:]}: rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    assert result.returncode == 1, where
    assert f"- 0x{code:08x} {name}" in result.stderr, where
    if prefix is not None:
        assert result.stderr.startswith(prefix + " - "), where


def done_or_not_implemented(result: subprocess.CompletedProcess[str], success: str, prefix: str) -> bool:
    """A switch whose daemon method may not exist yet: its success output, or E_NOTIMPL."""
    if result.returncode == 0:
        assert result.stdout == success, (result.stdout, result.stderr)
        return True
    failed(result, E_NOTIMPL, "E_NOTIMPL", prefix)
    assert result.stdout == ""
    return False


def usage_error(result: subprocess.CompletedProcess[str], reason: str, switch: str | None = None) -> None:
    """Bad usage: exit 1, the reason, then the usage text (of that switch, or of all)."""
    where = f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    assert result.returncode == 1, where
    assert result.stdout == "", where
    lines = result.stderr.splitlines()
    assert lines[0] == reason, where
    assert lines[1] == "USAGE: BITSADMIN [/RAWRETURN] [/WRAP | /NOWRAP] command", where
    if switch is not None:
        assert lines[2].startswith(switch + " "), where


def api_jobs(daemon: Daemon) -> list[dict[str, Any]]:
    status, body = daemon.api("GET", CLASS)
    assert status == 200, body
    return list(body)


def create(daemon: Daemon, name: str) -> str:
    match = re.fullmatch(r"Created job (" + GUID + r")\.\n", ok(bitsadmin(daemon, "/create", name)))
    assert match
    return match.group(1)


def local_time(filetime: int) -> str:
    """What bitsadmin shows for a FILETIME: local time, M/D/YYYY h:mm:ss AM|PM."""
    moment = datetime.fromtimestamp((filetime - FILETIME_UNIX_EPOCH) / 10_000_000)
    return moment.strftime("%m/%d/%Y %I:%M:%S %p").lstrip("0").replace("/0", "/").replace(" 0", " ")


def normalise(text: str) -> str:
    return re.sub(TIME, "<TIME>", re.sub(GUID, "{GUID}", text))


# -- the transcript ---------------------------------------------------------------------------


def test_transcript_of_a_documented_session(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    """create, addfile, resume, info, complete: the documented output format, line by line."""
    digest = make_file(nginx.www, "bitsadmin/transcript.bin", 50_000, seed=50)
    url = f"{nginx.url}/bitsadmin/transcript.bin"
    local = str(dest / "transcript.bin")
    owner = pwd.getpwuid(os.geteuid()).pw_name
    transcript: list[str] = []

    def step(*args: str) -> str:
        out = ok(bitsadmin(daemon, *args))
        transcript.append("> bitsadmin " + " ".join(args))
        transcript.extend(out.splitlines())
        return out

    job = re.fullmatch(r"Created job (" + GUID + r")\.\n", step("/create", "myDownloadJob"))
    assert job, transcript
    job_id = job.group(1)
    step("/addfile", "myDownloadJob", url, local)
    step("/info", "myDownloadJob")
    step("/resume", "myDownloadJob")
    daemon.wait_state(job_id, JobState.TRANSFERRED)
    step("/info", "myDownloadJob", "/verbose")
    instance = daemon.job(job_id)
    step("/complete", "myDownloadJob")

    expected = [
        "> bitsadmin /create myDownloadJob",
        "Created job {GUID}.",
        f"> bitsadmin /addfile myDownloadJob {url} {local}",
        f"Added {url} -> {local} to job.",
        "> bitsadmin /info myDownloadJob",
        "{GUID} 'myDownloadJob' SUSPENDED 0 / 1 0 / UNKNOWN",
        "> bitsadmin /resume myDownloadJob",
        "Job resumed.",
        "> bitsadmin /info myDownloadJob /verbose",
        "GUID: {GUID} DISPLAY: 'myDownloadJob'",
        f"TYPE: DOWNLOAD STATE: TRANSFERRED OWNER: {owner}",
        "PRIORITY: NORMAL FILES: 1 / 1 BYTES: 50000 / 50000",
        "CREATION TIME: <TIME> MODIFICATION TIME: <TIME>",
        "COMPLETION TIME: <TIME>",
        "NOTIFY INTERFACE: UNREGISTERED NOTIFICATION FLAGS: 3",
        "RETRY DELAY: 600 NO PROGRESS TIMEOUT: 1209600 ERROR COUNT: 0",
        "PROXY USAGE: PRECONFIG PROXY LIST: NULL PROXY BYPASS LIST: NULL",
        "DESCRIPTION:",
        "JOB FILES:",
        f"\t50000 / 50000 COMPLETED {url} -> {local}",
        "NOTIFICATION COMMAND LINE: none",
        "> bitsadmin /complete myDownloadJob",
        "Job completed.",
    ]
    got = [normalise(line) for line in transcript]
    for number, (want, have) in enumerate(zip(expected, got, strict=False), 1):
        assert have == want, f"line {number}: {have!r} != {want!r}\n" + "\n".join(transcript)
    assert len(got) == len(expected), "\n".join(transcript)

    # the GUIDs are the job's, the times its FILETIMEs in local time
    assert {g for line in transcript for g in re.findall(GUID, line)} == {job_id}
    verbose = "\n".join(transcript)
    assert f"CREATION TIME: {local_time(instance['JobCreationTime'])} " in verbose
    assert f"MODIFICATION TIME: {local_time(instance['JobLastModificationTime'])}\n" in verbose
    assert f"COMPLETION TIME: {local_time(instance['JobCompletionTime'])}\n" in verbose
    assert sha256_file(dest / "transcript.bin") == digest
    assert api_jobs(daemon) == []


# -- /GET* and /SET* ------------------------------------------------------------------------


def test_every_get_switch(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    job = create(daemon, "getters")
    url = f"{nginx.url}/bitsadmin/never-fetched.bin"
    ok(bitsadmin(daemon, "/addfile", job, url, str(dest / "g.bin")))
    instance = daemon.job(job)
    owner = pwd.getpwuid(os.geteuid()).pw_name
    expected = {
        "/getdisplayname": "getters",
        "/getdescription": "",
        "/getpriority": "NORMAL",
        "/getstate": "SUSPENDED",
        "/gettype": "DOWNLOAD",
        "/getbytestotal": str(0xFFFFFFFFFFFFFFFF),  # BG_SIZE_UNKNOWN, as bitsadmin prints it
        "/getbytestransferred": "0",
        "/getfilestotal": "1",
        "/getfilestransferred": "0",
        "/getcreationtime": local_time(instance["JobCreationTime"]),
        "/getmodificationtime": local_time(instance["JobLastModificationTime"]),
        "/getcompletiontime": "WORKING",
        "/geterrorcount": "0",
        "/getminretrydelay": "600",
        "/getnoprogresstimeout": "1209600",
        "/getowner": owner,
        "/getnotifyflags": "3",
        "/getnotifyinterface": "UNREGISTERED",
        "/getnotifycmdline": "the notification command line is NULL NULL",
        "/getproxyusage": "PRECONFIG",
        "/getproxylist": "NULL",
        "/getproxybypasslist": "NULL",
        "/getcustomheaders": "NULL",
        "/getsecurityflags": "0",
        "/getmaxdownloadtime": "7776000",
        "/getaclflags": "",
        "/gethttpmethod": "GET",
        "/getpeercachingflags": "0",
    }
    for switch, value in expected.items():
        assert ok(bitsadmin(daemon, switch, job)) == value + "\n", switch
        assert ok(bitsadmin(daemon, switch.upper(), "getters")) == value + "\n", switch  # by name
    assert ok(bitsadmin(daemon, "/rawreturn", "/getstate", job)) == "SUSPENDED"
    assert ok(bitsadmin(daemon, "/rawreturn", "/getfilestotal", job)) == "1"

    cert = bitsadmin(daemon, "/getclientcertificate", job)  # none set
    failed(cert, 0x800706F7, "RPC_X_BAD_STUB_DATA", "Unable to get client certificate")
    failed(
        bitsadmin(daemon, "/getstate", "no such job"), 0x80200001, "BG_E_NOT_FOUND", "Unable to get job state"
    )
    failed(
        bitsadmin(daemon, "/geterror", job),
        0x8020000F,
        "BG_E_ERROR_INFORMATION_UNAVAILABLE",
        "Unable to get error",
    )


def test_set_switches_change_the_instance(daemon: Daemon) -> None:
    job = create(daemon, "setters")
    outputs = [
        (("/setdisplayname", job, "renamed"), "Display name set to renamed.\n"),
        (("/setdescription", "renamed", "the nightly sync"), "Description set to the nightly sync.\n"),
        (("/setpriority", job, "foreground"), "Priority set to FOREGROUND.\n"),
        (("/setminretrydelay", job, "60"), "Minimum retry delay set to 60.\n"),
        (("/setnoprogresstimeout", job, "0x100"), "No progress timeout set to 256.\n"),
        (("/setsecurityflags", job, "0x0100"), "Security flags set to 256.\n"),
        (("/setmaxdownloadtime", job, "600"), "Maximum download time set to 600.\n"),
        (("/setcustomheaders", job, "X-Trace: 1", "X-Team:ops"), "Custom headers set (2).\n"),
    ]
    for args, expected in outputs:
        assert ok(bitsadmin(daemon, *args)) == expected, args
    instance = daemon.job(job)
    assert (instance["DisplayName"], instance["Description"]) == ("renamed", "the nightly sync")
    assert (instance["Priority"], instance["MinimumRetryDelay"], instance["NoProgressTimeout"]) == (
        0,
        60,
        256,
    )
    assert (instance["SecurityFlags"], instance["MaximumDownloadTime"]) == (0x100, 600)
    assert instance["CustomHeaders"] == "X-Trace: 1\r\nX-Team:ops\r\n"
    assert ok(bitsadmin(daemon, "/getcustomheaders", job)) == "X-Trace: 1\nX-Team:ops\n"
    assert ok(bitsadmin(daemon, "/getpriority", job)) == "FOREGROUND\n"

    assert ok(bitsadmin(daemon, "/setcustomheaders", job, "NULL")) == "Custom headers removed.\n"
    assert daemon.job(job)["CustomHeaders"] is None
    write_only = daemon.client.create_job("write-only").job_id
    ok(bitsadmin(daemon, "/setcustomheaders", write_only, "Authorization: Bearer t0ken"))
    said = ok(bitsadmin(daemon, "/makecustomheaderswriteonly", write_only))
    assert said == "Custom headers are now write-only.\n"
    assert ok(bitsadmin(daemon, "/getcustomheaders", write_only)) == "(write-only)\n"
    assert "t0ken" not in ok(bitsadmin(daemon, "/info", write_only, "/verbose"))

    # the daemon's own checks come back as bitsadmin error lines
    failed(
        bitsadmin(daemon, "/setsecurityflags", job, "0x4000"),
        E_NOTIMPL,
        "E_NOTIMPL",
        "Unable to set security flags",
    )
    failed(
        bitsadmin(daemon, "/setdisplayname", job, "n" * 257),
        0x80200021,
        "BG_E_STRING_TOO_LONG",
        "Unable to set display name",
    )
    usage_error(bitsadmin(daemon, "/setpriority", job, "urgent"), "Invalid priority.", "/SETPRIORITY")
    usage_error(
        bitsadmin(daemon, "/setminretrydelay", job, "-1"), "'-1' is out of range.", "/SETMINRETRYDELAY"
    )
    assert daemon.job(job)["Priority"] == JobPriority.FOREGROUND


def test_switches_of_methods_not_built_yet_parse_and_call_the_daemon(daemon: Daemon) -> None:
    job = create(daemon, "pending")
    password = "s3cret-Pa55"
    cases = [
        (("/setnotifyflags", job, "3"), "Notification flags set to 3.\n", "Unable to set notification flags"),
        (
            ("/setnotifycmdline", job, "/usr/bin/logger", "logger done"),
            "notification command line set to '/usr/bin/logger' 'logger done'.\n",
            "Unable to set the notification command line",
        ),
        (
            ("/setnotifycmdline", job, "NULL", "NULL"),
            "notification command line set to 'NULL' 'NULL'.\n",
            "Unable to set the notification command line",
        ),
        (
            ("/setcredentials", job, "SERVER", "BASIC", "edward", password),
            "OK.\n",
            "Unable to add credentials",
        ),
        (("/setcredentials", job, "proxy", "ntlm", "NULL", "NULL"), "OK.\n", "Unable to add credentials"),
        (("/removecredentials", job, "SERVER", "basic"), "OK.\n", "Unable to remove credentials"),
        (
            ("/setproxysettings", job, "NO_PROXY"),
            "Proxy usage set to NO_PROXY.\n",
            "Unable to set proxy settings",
        ),
        (
            ("/setproxysettings", job, "OVERRIDE", "proxy1:80,proxy2:8080", "<local>"),
            "Proxy usage set to OVERRIDE.\nProxy list set to proxy1:80,proxy2:8080.\n"
            "Proxy bypass list set to <local>.\n",
            "Unable to set proxy settings",
        ),
        (
            ("/removeclientcertificate", job),  # none set: S_FALSE, still a success
            "Client certificate removed.\n",
            "Unable to remove the client certificate",
        ),
        (("/takeownership", job), f"Took ownership of {job}.\n", "Unable to take ownership"),
    ]
    # client certificates are built: the daemon looks for them (tests/integration/test_client_certs.py)
    unable = "Unable to set the client certificate"
    short = (
        "/setclientcertificatebyid",
        job,
        "BG_CERT_STORE_LOCATION_CURRENT_USER",
        "MY",
        "A106B52356D3FBCD1853",
    )
    failed(bitsadmin(daemon, *short), 0x80070057, "E_INVALIDARG", unable)  # not a SHA-1 hash
    by_name = ("/setclientcertificatebyname", job, "1", f"no-such-store-{os.getpid()}", "myCertificate")
    failed(bitsadmin(daemon, *by_name), 0x80092004, "CRYPT_E_NOT_FOUND", unable)
    for args, success, prefix in cases:
        result = bitsadmin(daemon, *args)
        assert password not in result.stdout + result.stderr  # secrets are never echoed
        if not done_or_not_implemented(result, success, prefix):
            continue
        if args[0] == "/setnotifyflags":
            assert daemon.job(job)["NotifyFlags"] == 3
        if args[:3] == ("/setnotifycmdline", job, "/usr/bin/logger"):
            assert ok(bitsadmin(daemon, "/getnotifycmdline", job)) == (
                "the notification command line is '/usr/bin/logger' 'logger done'\n"
            )
            verbose = ok(bitsadmin(daemon, "/info", job, "/verbose")).splitlines()
            assert verbose[-1] == "NOTIFICATION COMMAND LINE: '/usr/bin/logger' 'logger done'"
        if args[:3] == ("/setnotifycmdline", job, "NULL"):
            assert (
                ok(bitsadmin(daemon, "/getnotifycmdline", job))
                == "the notification command line is NULL NULL\n"
            )

    # ACL propagation (SMB only) is no feature: refused after its arguments are checked
    failed(bitsadmin(daemon, "/setaclflags", job, "OG"), E_NOTIMPL, "E_NOTIMPL", "Unable to set ACL flags")
    usage_error(
        bitsadmin(daemon, "/setaclflags", job, "OX"),
        "'OX' is not a valid ACL flag set: use the letters O, G, D and S.",
        "/SETACLFLAGS",
    )
    # bad arguments never reach the daemon, and never echo the password
    bad = bitsadmin(daemon, "/setcredentials", job, "SERVR", "BASIC", "edward", password)
    usage_error(
        bad, "'SERVR' is not a valid credential target.  It must be 'proxy' or 'server'.", "/SETCREDENTIALS"
    )
    assert password not in bad.stdout + bad.stderr
    usage_error(
        bitsadmin(daemon, "/setcredentials", job, "SERVER", "BASIC", "edward"), "Invalid number of arguments."
    )
    usage_error(
        bitsadmin(daemon, "/setproxysettings", job, "OVERRIDE", "proxy1:80"),
        "OVERRIDE must be followed by a proxy list and a proxy bypass list",
        "/SETPROXYSETTINGS",
    )
    usage_error(
        bitsadmin(daemon, "/setproxysettings", job, "SOMETIMES"),
        "proxy usage must be one of OVERRIDE, NO_PROXY, AUTODETECT or PRECONFIG",
    )
    usage_error(
        bitsadmin(daemon, "/setclientcertificatebyname", job, "9", "MY", "x"),
        "'9' is not a certificate store location.",
    )
    usage_error(
        bitsadmin(daemon, "/setclientcertificatebyid", job, "1", "MY", "XYZ"),
        "'XYZ' is not a hexadecimal certificate hash.",
    )
    unknown = bitsadmin(daemon, "/setnotifyflags", "no such job", "3")  # NOT_FOUND once it is built
    assert unknown.returncode == 1 and re.search(
        r" - 0x(80200001 BG_E_NOT_FOUND|80004001 E_NOTIMPL)", unknown.stderr
    )


# -- lifecycle switches, lists, errors --------------------------------------------------------


def test_suspend_cancel_list_listfiles_and_reset(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    first = create(daemon, "alpha")
    second = create(daemon, "beta")
    url = f"{nginx.url}/bitsadmin/list.bin"
    ok(bitsadmin(daemon, "/addfile", "beta", url, str(dest / "l.bin")))

    listed = ok(bitsadmin(daemon, "/list"))
    assert listed.splitlines() == [
        f"{first} 'alpha' SUSPENDED 0 / 0 0 / 0",
        f"{second} 'beta' SUSPENDED 0 / 1 0 / UNKNOWN",
        "Listed 2 job(s).",
    ]
    assert ok(bitsadmin(daemon, "/rawreturn", "/list")).splitlines() == listed.splitlines()[:2]
    verbose = ok(bitsadmin(daemon, "/list", "/verbose")).split("\n\n")
    assert len(verbose) == 3 and verbose[2] == "Listed 2 job(s).\n", verbose
    assert verbose[0].startswith(f"GUID: {first} DISPLAY: 'alpha'\n")
    assert verbose[1].endswith(
        f"\t0 / UNKNOWN WORKING {url} -> {dest / 'l.bin'}\nNOTIFICATION COMMAND LINE: none"
    )
    everyone = bitsadmin(daemon, "/list", "/allusers")  # administrators only
    if everyone.returncode == 0:
        assert set(listed.splitlines()[:2]) <= set(everyone.stdout.splitlines())
    else:
        failed(everyone, 0x80070005, "E_ACCESSDENIED", "Unable to enum jobs")

    assert ok(bitsadmin(daemon, "/listfiles", second)).splitlines() == [
        f"0 / UNKNOWN WORKING {url} -> {dest / 'l.bin'}",
        "Listed 1 file(s).",
    ]
    assert ok(bitsadmin(daemon, "/listfiles", first)) == "Listed 0 file(s).\n"
    moved = f"{nginx.url}/elsewhere/list.bin"
    assert ok(
        bitsadmin(
            daemon, "/replaceremoteprefix", second, f"{nginx.url}/bitsadmin/", f"{nginx.url}/elsewhere/"
        )
    ) == (f"1 file(s) changed to {nginx.url}/elsewhere/.\n")
    assert (
        ok(bitsadmin(daemon, "/listfiles", second)).splitlines()[0]
        == f"0 / UNKNOWN WORKING {moved} -> {dest / 'l.bin'}"
    )

    assert ok(bitsadmin(daemon, "/suspend", first)) == "Job suspended.\n"
    failed(bitsadmin(daemon, "/resume", first), 0x80200003, "BG_E_EMPTY", "Unable to resume job")
    assert ok(bitsadmin(daemon, "/cancel", first)) == "Job canceled.\n"
    failed(bitsadmin(daemon, "/cancel", first), 0x80200001, "BG_E_NOT_FOUND", "Unable to cancel job")
    failed(bitsadmin(daemon, "/complete", first), 0x80200001, "BG_E_NOT_FOUND", "Unable to complete job")

    third = create(daemon, "gamma")
    reset = ok(bitsadmin(daemon, "/reset"))
    assert sorted(reset.splitlines()[:2]) == sorted([f"{second} canceled.", f"{third} canceled."])
    assert reset.splitlines()[2:] == ["2 out of 2 jobs canceled."]
    assert api_jobs(daemon) == []
    assert ok(bitsadmin(daemon, "/reset")) == "0 out of 0 jobs canceled.\n"
    assert ok(bitsadmin(daemon, "/list")) == "Listed 0 job(s).\n"


def test_geterror_and_the_error_block_of_info(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    url = f"{nginx.url}/bitsadmin/missing.bin"
    job = create(daemon, "broken")
    ok(bitsadmin(daemon, "/setpriority", job, "FOREGROUND"))
    ok(bitsadmin(daemon, "/addfile", job, url, str(dest / "missing.bin")))
    ok(bitsadmin(daemon, "/resume", job))
    daemon.wait_state(job, JobState.ERROR)

    assert ok(bitsadmin(daemon, "/getstate", job)) == "ERROR\n"
    block = ok(bitsadmin(daemon, "/geterror", job)).splitlines()
    assert block[0] == f"ERROR FILE:    {url} -> {dest / 'missing.bin'}"
    assert re.fullmatch(r"ERROR CODE:    0x80190194 - .+", block[1]), block
    assert re.fullmatch(r"ERROR CONTEXT: 0x00000005 - .+", block[2]), block
    assert len(block) == 3

    verbose = ok(bitsadmin(daemon, "/info", job, "/verbose")).splitlines()
    at = verbose.index(block[0])
    assert verbose[at - 1].startswith("PROXY USAGE: ")
    assert verbose[at : at + 3] == block
    assert verbose[at + 3] == "DESCRIPTION:"
    assert ok(bitsadmin(daemon, "/info", job)) == f"{job} 'broken' ERROR 0 / 1 0 / UNKNOWN\n"
    ok(bitsadmin(daemon, "/cancel", job))


# -- adding files ---------------------------------------------------------------------------------


def test_addfile_refuses_a_local_name_that_is_not_a_full_path(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    """Windows refuses a LocalFile that is not a full path (an unexpanded %temp%\\x.ps1),
    and scripts rely on it: bitsadmin passes the name unchanged, the daemon answers
    E_INVALIDARG and nothing is added; /TRANSFER the same, leaving no job behind."""
    job = create(daemon, "relative")
    for name in ("relative\\name.bin", "sub/name.bin", "%temp%\\x.ps1"):
        failed(
            bitsadmin(daemon, "/addfile", job, f"{nginx.url}/bitsadmin/x.bin", name, cwd=dest),
            0x80070057,
            "E_INVALIDARG",
            "Unable to add file to job",
        )
    assert daemon.job(job)["Files"] == []
    failed(
        bitsadmin(daemon, "/transfer", "rel", f"{nginx.url}/bitsadmin/x.bin", "x.bin", cwd=dest),
        0x80070057,
        "E_INVALIDARG",
    )
    assert [j["DisplayName"] for j in api_jobs(daemon)] == ["relative"]
    assert list(dest.iterdir()) == []


def test_addfileset_reads_bitsadmin_file_sets(
    daemon: Daemon, nginx: Nginx, dest: Path, tmp_path: Path
) -> None:
    digests = {n: make_file(nginx.www, f"bitsadmin/set{n}.bin", 20_000 + n, seed=60 + n) for n in (1, 2)}
    (dest / "sub").mkdir()
    listing = tmp_path / "files.txt"
    listing.write_text(
        "# remote local, one pair a line\n"
        f"{nginx.url}/bitsadmin/set1.bin   {dest / 'one.bin'}\n"
        "\n"
        f"   {nginx.url}/bitsadmin/set2.bin\tsub/two.bin\n"  # relative to bitsadmin's directory
        "#  a comment\n"
    )
    job = create(daemon, "file set")
    assert (
        ok(bitsadmin(daemon, "/addfileset", "file set", str(listing), cwd=dest))
        == "Added 2 file(s) to job.\n"
    )
    files = daemon.job(job)["Files"]
    assert [f["LocalFile"] for f in files] == [str(dest / "one.bin"), str(dest.resolve() / "sub" / "two.bin")]

    ok(bitsadmin(daemon, "/resume", job))
    daemon.wait_state(job, JobState.TRANSFERRED)
    ok(bitsadmin(daemon, "/complete", job))
    assert sha256_file(dest / "one.bin") == digests[1]
    assert sha256_file(dest / "sub" / "two.bin") == digests[2]

    # all or none: one bad line adds nothing; a malformed file is bad usage
    other = create(daemon, "bad set")
    listing.write_text(
        f"{nginx.url}/bitsadmin/set1.bin {dest / 'x.bin'}\nftp://host/y.bin {dest / 'y.bin'}\n"
    )
    failed(
        bitsadmin(daemon, "/addfileset", other, str(listing)),
        0x80070057,
        "E_INVALIDARG",
        "Unable to add file set to job",
    )
    assert daemon.job(other)["Files"] == []
    listing.write_text("only-one-word\n")
    usage_error(
        bitsadmin(daemon, "/addfileset", other, str(listing)),
        "Line 1 of the file set is not 'remote_url local_name': only-one-word",
        "/ADDFILESET",
    )
    usage_error(
        bitsadmin(daemon, "/addfileset", other, str(tmp_path / "absent.txt")),
        f"Unable to read the file set {tmp_path / 'absent.txt'}: No such file or directory.",
    )


def test_addfilewithranges_downloads_the_ranges(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    make_file(nginx.www, "bitsadmin/ranges.bin", 6000, seed=70)
    content = (nginx.www / "bitsadmin" / "ranges.bin").read_bytes()
    url = f"{nginx.url}/bitsadmin/ranges.bin"
    job = create(daemon, "ranges")
    out = ok(
        bitsadmin(daemon, "/addfilewithranges", job, url, str(dest / "r.bin"), "0:100,2000:100,5000:eof")
    )
    assert out == f"Added {url} -> {dest / 'r.bin'} to job.\n"
    ranges = daemon.job(job)["Files"][0]["Ranges"]
    assert ranges == [
        {"InitialOffset": 0, "Length": 100},
        {"InitialOffset": 2000, "Length": 100},
        {"InitialOffset": 5000, "Length": BG_LENGTH_TO_EOF},
    ]
    ok(bitsadmin(daemon, "/resume", job))
    daemon.wait_state(job, JobState.TRANSFERRED)
    ok(bitsadmin(daemon, "/complete", job))
    assert (dest / "r.bin").read_bytes() == content[:100] + content[2000:2100] + content[5000:]

    other = create(daemon, "overlapping")
    failed(
        bitsadmin(daemon, "/addfilewithranges", other, url, str(dest / "o.bin"), "0:100,50:100"),
        0x8020002C,
        "BG_E_OVERLAPPING_RANGES",
        "Unable to add file to job",
    )
    usage_error(
        bitsadmin(daemon, "/addfilewithranges", other, url, str(dest / "o.bin"), "0-100"),
        "'0-100' is not a range: use offset:length or offset:eof.",
        "/ADDFILEWITHRANGES",
    )


# -- /TRANSFER --------------------------------------------------------------------------------


def test_transfer_shows_progress_and_completes(daemon: Daemon, nginx: Nginx, dest: Path) -> None:
    digests = [make_file(nginx.www, f"bitsadmin/t{n}.bin", 40_000 * n, seed=80 + n) for n in (1, 2)]
    result = bitsadmin(
        daemon,
        "/transfer",
        "myDownloadJob",
        "/download",
        "/priority",
        "normal",
        "/DYNAMIC",
        f"{nginx.url}/bitsadmin/t1.bin",
        str(dest / "t1.bin"),
        f"{nginx.url}/bitsadmin/t2.bin",
        str(dest / "t2.bin"),
    )
    lines = ok(result).splitlines()
    assert lines[-1] == "Transfer complete.", lines
    assert lines[-3:-1] == [
        "DISPLAY: 'myDownloadJob' TYPE: DOWNLOAD STATE: TRANSFERRED",
        "PRIORITY: NORMAL FILES: 2 / 2 BYTES: 120000 / 120000 (100%)",
    ]
    progress = lines[:-1]
    assert len(progress) % 2 == 0
    for display, counts in zip(progress[::2], progress[1::2], strict=True):
        assert re.fullmatch(r"DISPLAY: 'myDownloadJob' TYPE: DOWNLOAD STATE: [A-Z_]+", display), display
        assert re.fullmatch(r"PRIORITY: NORMAL FILES: \d / 2 BYTES: \d+ / (\d+ \(\d+%\)|UNKNOWN)", counts), (
            counts
        )
    assert [sha256_file(dest / f"t{n}.bin") for n in (1, 2)] == digests
    assert api_jobs(daemon) == []


def test_a_failed_transfer_prints_the_error_and_cancels_its_job(
    daemon: Daemon, nginx: Nginx, dest: Path
) -> None:
    url = f"{nginx.url}/bitsadmin/absent.bin"
    result = bitsadmin(
        daemon, "/transfer", "doomed", "/priority", "FOREGROUND", url, str(dest / "absent.bin")
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[-4] == f"ERROR FILE:    {url} -> {dest / 'absent.bin'}"
    assert lines[-3].startswith("ERROR CODE:    0x80190194 - ")
    assert lines[-2].startswith("ERROR CONTEXT: 0x00000005 - ")
    assert lines[-1] == "Unable to complete transfer."
    assert "Unable to complete transfer - 0x80190194 BG_E_HTTP_ERROR_404" in result.stderr
    assert api_jobs(daemon) == []
    assert list(dest.iterdir()) == []

    # refused before anything is created
    usage_error(
        bitsadmin(daemon, "/transfer", "x", "/priority", "urgent", url, str(dest / "x")), "Invalid priority."
    )
    usage_error(bitsadmin(daemon, "/transfer", "x", url), "Invalid number of arguments.", "/TRANSFER")
    failed(
        bitsadmin(daemon, "/transfer", "x", "/ACLFlags", "OG", url, str(dest / "x")),
        E_NOTIMPL,
        "E_NOTIMPL",
        "Unable to set ACL flags",
    )
    # refused by the daemon at AddFile: the job is cancelled
    failed(bitsadmin(daemon, "/transfer", "x", "ftp://host/x", str(dest / "x")), 0x80070057, "E_INVALIDARG")
    assert api_jobs(daemon) == []


# -- /MONITOR ---------------------------------------------------------------------------------


def test_monitor_refreshes_the_listing(daemon: Daemon) -> None:
    job = create(daemon, "watched")
    result = bitsadmin(
        daemon, "/monitor", "/refresh", "1", env={"OPENBITS_BITSADMIN_MONITOR_ITERATIONS": "2"}
    )
    frame = ["MONITORING BACKGROUND COPY MANAGER(1 second refresh)", f"{job} 'watched' SUSPENDED 0 / 0 0 / 0"]
    assert ok(result).splitlines() == frame + frame
    usage_error(
        bitsadmin(daemon, "/monitor", "/refresh"), "/REFRESH is missing the refresh rate.", "/MONITOR"
    )
    usage_error(bitsadmin(daemon, "/monitor", "/often"), "Invalid argument.", "/MONITOR")


def test_monitor_stops_on_ctrl_c(daemon: Daemon, tmp_path: Path) -> None:
    create(daemon, "watched")
    output = tmp_path / "monitor.out"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openbits.cli.bitsadmin", "/monitor", "/refresh", "60"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
        )
    try:
        wait_until(lambda: "'watched' SUSPENDED" in output.read_text(), 30, "the first /monitor frame")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert output.read_text().startswith("MONITORING BACKGROUND COPY MANAGER(60 second refresh)\n")


# -- global options and usage ----------------------------------------------------------------


def test_rawreturn_wrap_and_nowrap(daemon: Daemon) -> None:
    raw = ok(bitsadmin(daemon, "/RAWRETURN", "/create", "raw"))
    assert re.fullmatch(GUID, raw), repr(raw)  # the bare GUID, no newline
    assert ok(bitsadmin(daemon, "/rawreturn", "/getdisplayname", raw)) == "raw"
    assert ok(bitsadmin(daemon, "/rawreturn", "/listfiles", raw)) == ""
    for option in ("/wrap", "/nowrap"):  # no console: lines go out whole
        assert ok(bitsadmin(daemon, option, "/info", raw)) == f"{raw} 'raw' SUSPENDED 0 / 0 0 / 0\n"
    assert ok(bitsadmin(daemon, "/rawreturn", "/nowrap", "/getstate", raw)) == "SUSPENDED"

    # what a console of 10 columns shows
    assert _fit("0123456789abcdef", 10, wrap=True) == ["0123456789", "abcdef"]
    assert _fit("0123456789abcdef", 10, wrap=False) == ["0123456789"]
    assert _fit("short", 10, wrap=False) == ["short"]
    assert _fit("0123456789abcdef", None, wrap=False) == ["0123456789abcdef"]


def test_unknown_switches_and_bad_usage_print_usage(daemon: Daemon) -> None:
    bad = bitsadmin(daemon, "/frobnicate", "job")
    usage_error(bad, "Invalid command")
    assert "/ADDFILEWITHRANGES job remote_url local_name range_list" in bad.stderr  # the whole usage
    usage_error(bitsadmin(daemon, "/info"), "Invalid number of arguments.", "/INFO")
    usage_error(bitsadmin(daemon, "/info", "job", "/loud"), "Invalid argument.", "/INFO")
    usage_error(bitsadmin(daemon, "/create", "/sideways", "x"), "Invalid argument.", "/CREATE")
    usage_error(bitsadmin(daemon, "/list", "/everything"), "Invalid argument.", "/LIST")
    usage_error(bitsadmin(daemon, "/reset", "/verbose"), "Invalid argument.", "/RESET")
    nothing = bitsadmin(daemon)
    assert nothing.returncode == 1 and "USAGE: BITSADMIN" in nothing.stderr
    for help_switch in ("/?", "/HELP"):
        shown = bitsadmin(daemon, help_switch)
        assert shown.returncode == 0 and "/SETNOTIFYCMDLINE job program_name" in shown.stdout
    assert api_jobs(daemon) == []

    # upload jobs are a feature (SPEC §8): /create /upload makes one
    assert ok(bitsadmin(daemon, "/create", "/upload", "up")).startswith("Created job {")


def test_without_a_daemon_bitsadmin_exits_3(tmp_path: Path) -> None:
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    for sock in (str(tmp_path / "nowhere" / "openbits.sock"), stale):
        for args in (("/list",), ("/create", "x"), ("/getstate", "x"), ("/monitor",)):
            result = bitsadmin(None, *args, socket_path=sock)
            assert result.returncode == 3, (args, result.stdout, result.stderr)
            assert "openbits serve" in result.stderr


# -- parsing (pure functions) -----------------------------------------------------------------


def test_parsers_of_ranges_file_sets_and_usage() -> None:
    assert parse_ranges("0:100, 2000:100,5000:EOF") == [
        {"InitialOffset": 0, "Length": 100},
        {"InitialOffset": 2000, "Length": 100},
        {"InitialOffset": 5000, "Length": BG_LENGTH_TO_EOF},
    ]
    assert parse_file_set("# c\n\n a b \nc\td\n") == [("a", "b"), ("c", "d")]
    assert switch_usage("/GETSTATE").startswith("/GETSTATE job ")
    assert switch_usage("/SETCREDENTIALS").splitlines()[1:] == [
        "    Adds credentials to a job.",
        "    <target> may be either SERVER or PROXY",
        "    <scheme> may be BASIC, DIGEST, NTLM, NEGOTIATE, or PASSPORT.",
        "    <password> * (or -) reads it from stdin, or asks for it on a terminal.",
    ]


@pytest.mark.parametrize("text", ["", "1", "a:1", "1:b", "-1:5", "1:-5"])
def test_bad_range_lists_are_usage_errors(text: str) -> None:
    from openbits.cli.bitsadmin import Usage

    with pytest.raises(Usage):
        parse_ranges(text)


def test_ctrl_c_cancels_a_transfer(tmp_path: Path, nginx: Nginx, dest: Path) -> None:
    """bitsadmin /TRANSFER interrupted: its job is cancelled, nothing is left (exit 130)."""
    slow = Daemon(tmp_path / "slow-state", config={"bandwidth_limit": "32k"})  # background jobs crawl
    slow.start()
    try:
        make_file(nginx.www, "bitsadmin/slow.bin", 2_000_000, seed=90)
        output = tmp_path / "transfer.out"
        source = ["/priority", "low", f"{nginx.url}/bitsadmin/slow.bin", str(dest / "slow.bin")]
        with output.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "openbits.cli.bitsadmin", "/transfer", "slow", *source],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, OPENBITS_SOCKET=slow.socket),
            )
        try:
            wait_until(lambda: "DISPLAY: 'slow'" in output.read_text(), 30, "the first progress lines")
            assert len(api_jobs(slow)) == 1
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130, output.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert output.read_text().endswith("Transfer canceled.\n")
        assert api_jobs(slow) == []
        assert list(dest.iterdir()) == []
    finally:
        slow.stop()


def test_wrap_and_nowrap_on_a_terminal(daemon: Daemon) -> None:
    """On a console of 40 columns, /WRAP (default) wraps long lines and /NOWRAP cuts them."""
    import pty

    job = create(daemon, "a display name long enough to pass the edge")
    summary = f"{job} 'a display name long enough to pass the edge' SUSPENDED 0 / 0 0 / 0"

    def on_terminal(*args: str) -> list[str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "openbits.cli.bitsadmin", *args],
            stdout=slave,
            stderr=subprocess.PIPE,
            env=dict(os.environ, OPENBITS_SOCKET=daemon.socket, COLUMNS="40"),
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        proc.stderr.close()
        return b"".join(chunks).decode().replace("\r\n", "\n").splitlines()

    assert on_terminal("/info", job) == [summary[i : i + 40] for i in range(0, len(summary), 40)]
    assert on_terminal("/wrap", "/info", job) == [summary[i : i + 40] for i in range(0, len(summary), 40)]
    assert on_terminal("/nowrap", "/info", job) == [summary[:40]]


def test_a_proxy_and_credentials_script_runs_unchanged(daemon: Daemon) -> None:
    """What public bitsadmin scripts do: /setproxysettings … AUTODETECT, /setcredentials,
    then read the settings back with bitsadmin's wording (issue 13: they stop on a failure)."""
    job = create(daemon, "script")
    assert ok(bitsadmin(daemon, "/setproxysettings", job, "AUTODETECT")) == "Proxy usage set to AUTODETECT.\n"
    assert ok(bitsadmin(daemon, "/getproxyusage", job)) == "AUTODETECT\n"
    assert ok(bitsadmin(daemon, "/getproxylist", job)) == "NULL\n"
    said = ok(bitsadmin(daemon, "/setproxysettings", job, "override", "proxy1:80,proxy2:8080", "<local>"))
    assert said == (
        "Proxy usage set to OVERRIDE.\nProxy list set to proxy1:80,proxy2:8080.\n"
        "Proxy bypass list set to <local>.\n"
    )
    assert ok(bitsadmin(daemon, "/getproxyusage", job)) == "OVERRIDE\n"
    assert ok(bitsadmin(daemon, "/getproxylist", job)) == "proxy1:80 proxy2:8080\n"
    assert ok(bitsadmin(daemon, "/getproxybypasslist", job)) == "<local>\n"
    failed(
        bitsadmin(daemon, "/setproxysettings", job, "OVERRIDE", "ftp://proxy:21", "NULL"),
        0x80070057,
        "E_INVALIDARG",
        "Unable to set proxy settings",
    )
    assert ok(bitsadmin(daemon, "/setproxysettings", job, "NO_PROXY")) == "Proxy usage set to NO_PROXY.\n"
    assert ok(bitsadmin(daemon, "/getproxybypasslist", job)) == "NULL\n"

    # the password from stdin for * or - (bitsadmin's argv form works too, as scripts use it)
    secret = "from-stdin-Pa55"
    for star, target in (("*", "SERVER"), ("-", "PROXY")):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "openbits.cli.bitsadmin",
                "/setcredentials",
                job,
                target,
                "basic",
                "ann",
                star,
            ],
            input=secret + "\n",
            capture_output=True,
            text=True,
            env=dict(os.environ, OPENBITS_SOCKET=daemon.socket),
            timeout=60,
            check=False,
        )
        assert ok(result) == "OK." + "\n" and secret not in result.stdout + result.stderr
    assert ok(bitsadmin(daemon, "/setcredentials", job, "SERVER", "DIGEST", "ann", "on-argv")) == "OK.\n"
    assert daemon.job(job)["Credentials"] == [
        {"Target": 0, "Scheme": 0, "UserName": "ann"},
        {"Target": 1, "Scheme": 0, "UserName": "ann"},
        {"Target": 0, "Scheme": 1, "UserName": "ann"},
    ]
    failed(
        bitsadmin(daemon, "/setcredentials", job, "SERVER", "PASSPORT", "ann", "x"),
        E_NOTIMPL,
        "E_NOTIMPL",
        "Unable to add credentials",
    )
    failed(
        bitsadmin(daemon, "/setcredentials", job, "SERVER", "BASIC", "NULL", "NULL"),
        0x80070057,
        "E_INVALIDARG",
        "Unable to add credentials",
    )
    assert ok(bitsadmin(daemon, "/removecredentials", job, "server", "basic")) == "OK.\n"
    said = ok(bitsadmin(daemon, "/removecredentials", job, "server", "basic"))
    assert said == "no matching credential was found.\n"
    assert len(daemon.job(job)["Credentials"]) == 2
