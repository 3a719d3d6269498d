"""Upload and upload-reply jobs through the command lines (SPEC §8, issue 14): `openbits
create --type`, `add`, `get`, `reply`, `complete`, `upload`, and bitsadmin's /CREATE
/UPLOAD-REPLY, /GETTYPE, /GETREPLYFILENAME, /SETREPLYFILENAME, /GETREPLYPROGRESS and
/GETREPLYDATA, as subprocesses against a real daemon, which is restarted to show what is
stored.  No upload runs here (the upload client is issue 14's helper C): the jobs stay
SUSPENDED, or fail before they are resumed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from openbits.model import BG_SIZE_UNKNOWN, JobState
from openbits.store.sqlite import SqliteStore
from tests.support.daemon import Daemon

URL = "http://127.0.0.1:9/inbox/report.bin"


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args[3:]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _refused(result: subprocess.CompletedProcess[str], name: str) -> str:
    where = f"{result.args[3:]}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 1 and name in result.stderr, where
    return result.stderr


def _source(tmp_path: Path, size: int = 4321) -> Path:
    source = tmp_path / "outbox" / "report.bin"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(b"u" * size)
    return source


def test_openbits_upload_reply_job_from_create_to_restart(daemon: Daemon, tmp_path: Path) -> None:
    source = _source(tmp_path)
    job = json.loads(_ok(daemon.cli("create", "report", "--type", "upload-reply", "--json")))["JobId"]
    _ok(daemon.cli("add", job, URL, str(source)))
    instance = json.loads(_ok(daemon.cli("get", job, "--json")))
    assert instance["JobType"] == 2 and instance["State"] == JobState.SUSPENDED
    assert instance["Files"][0]["BytesTotal"] == 4321 and instance["Files"][0]["LocalFile"] == str(source)
    default = str(source.parent / f"{job}.reply")
    assert instance["ReplyFileName"] == default
    assert instance["ReplyProgress"] == {"BytesTotal": BG_SIZE_UNKNOWN, "BytesTransferred": 0}
    shown = _ok(daemon.cli("get", job))
    assert "UPLOAD-REPLY" in shown and default in shown and f"{source} -> {URL}" in shown

    # WQL sees the upload's properties
    rows = json.loads(
        _ok(daemon.cli("query", "SELECT ReplyFileName FROM BitsClientJob WHERE JobType = 2", "--json"))
    )
    assert rows == [{"ReplyFileName": default}]

    # the reply's file name and progress
    assert json.loads(_ok(daemon.cli("reply", job, "--json")))["ReplyFileName"] == default
    _refused(
        daemon.cli("reply", job, "--file", str(tmp_path / "nowhere" / "r.xml")), "HRESULT_PATH_NOT_FOUND"
    )
    wanted = tmp_path / "answer.xml"
    _ok(daemon.cli("reply", job, "--file", str(wanted)))
    text = _ok(daemon.cli("reply", job))
    assert f"ReplyFileName: {wanted}" in text and "ReplyProgress: 0 B of ?" in text

    # the upload's rules, each with its HRESULT
    _refused(daemon.cli("add", job, URL, str(source)), "BG_E_TOO_MANY_FILES")
    _refused(daemon.cli("add-ranges", job, URL, str(source), "0:10"), "E_NOTIMPL")
    _refused(daemon.cli("complete", job), "BG_E_INVALID_STATE")
    _refused(daemon.cli("reply", job, "--data"), "BG_E_INVALID_STATE")

    # stored: the job, its reply file name and the upload's state survive a restart
    daemon.stop()
    store = SqliteStore(str(daemon.state_dir / "jobs.sqlite"))
    try:
        stored = store.load_job(job)
    finally:
        store.close()
    assert stored is not None and stored.upload is not None
    assert (stored.upload.source_size, stored.upload.source_mtime_ns) == (4321, source.stat().st_mtime_ns)
    daemon.start()
    after = json.loads(_ok(daemon.cli("get", job, "--json")))
    assert after["ReplyFileName"] == str(wanted) and after["Files"][0]["BytesTotal"] == 4321
    _ok(daemon.cli("cancel", job))


def test_openbits_refuses_bad_uploads_with_the_bits_error(daemon: Daemon, tmp_path: Path) -> None:
    source = _source(tmp_path)
    job = _ok(daemon.cli("create", "bad", "--type", "upload")).strip()
    _refused(daemon.cli("add", job, "file:///etc/hosts", str(source)), "E_INVALIDARG")
    _refused(daemon.cli("add", job, URL, str(tmp_path / "missing.bin")), "0x80070002")
    _refused(daemon.cli("add", job, URL, str(tmp_path)), "E_INVALIDARG")
    assert json.loads(_ok(daemon.cli("get", job, "--json")))["FilesTotal"] == 0
    _refused(daemon.cli("reply", job), "E_NOTIMPL")  # (a plain upload has no reply)
    _refused(daemon.cli("reply", job, "--file", str(tmp_path / "r.xml")), "E_NOTIMPL")
    # the one-shot: a source that is not there fails before anything starts, and leaves no job
    err = _refused(daemon.cli("upload", str(tmp_path / "missing.bin"), URL, "--quiet"), "0x80070002")
    assert "upload failed" in err
    live = json.loads(_ok(daemon.cli("get", "--json")))
    assert [j["JobId"] for j in live] == [job]


def test_bitsadmin_upload_reply_switches(daemon: Daemon, tmp_path: Path) -> None:
    source = _source(tmp_path, 10)

    def bitsadmin(*args: str) -> subprocess.CompletedProcess[str]:
        return daemon.cli(*args, prog="bitsadmin")

    created = _ok(bitsadmin("/create", "/upload-reply", "answers"))
    job = created.split()[-1].rstrip(".")
    assert created.startswith("Created job {")
    assert _ok(bitsadmin("/rawreturn", "/gettype", job)) == "UPLOAD-REPLY"
    assert _ok(bitsadmin("/rawreturn", "/getreplyfilename", job)) == "(null)"  # (no file yet)
    _ok(bitsadmin("/addfile", job, URL, str(source)))
    assert _ok(bitsadmin("/rawreturn", "/getreplyfilename", job)) == str(source.parent / f"{job}.reply")
    wanted = str(tmp_path / "reply.xml")
    assert _ok(bitsadmin("/setreplyfilename", job, wanted)).strip() == f"Reply file name set to {wanted}."
    assert _ok(bitsadmin("/getreplyfilename", job)).strip() == wanted
    assert _ok(bitsadmin("/rawreturn", "/getreplyprogress", job)) == "0 / UNKNOWN"
    assert "TYPE: UPLOAD-REPLY" in _ok(bitsadmin("/info", job, "/verbose"))
    _refused(bitsadmin("/getreplydata", job), "BG_E_INVALID_STATE")
    _refused(bitsadmin("/setreplyfilename", job, "reply.xml"), "E_INVALIDARG")
    upload = _ok(bitsadmin("/create", "/upload", "plain")).split()[-1].rstrip(".")
    assert _ok(bitsadmin("/rawreturn", "/gettype", upload)) == "UPLOAD"
    assert "Unable to get reply file name" in _refused(bitsadmin("/getreplyfilename", upload), "E_NOTIMPL")
    _refused(bitsadmin("/getreplydata", upload), "E_NOTIMPL")
    _refused(bitsadmin("/getreplyprogress", upload), "E_NOTIMPL")
    _refused(bitsadmin("/setreplyfilename", upload, wanted), "E_NOTIMPL")
