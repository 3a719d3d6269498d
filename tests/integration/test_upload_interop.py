"""The upload client (``transfer/upload.Uploader``) against the project's own BITS upload
server (``openbits upload-server``, helper B's, as a process: tests/support/bitsupload.py):
a whole upload, and one that goes on in the same session after the server was killed and
started again.  Skipped until that server is merged."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openbits.errors import BitsError
from openbits.model import JobFile, UploadState
from openbits.transfer.download import Owner, RequestOptions
from openbits.transfer.upload import Uploader
from tests.support.bitsserver import UploadRecorder, uploader_client

bitsupload = pytest.importorskip("tests.support.bitsupload")

MiB = 1024 * 1024


@pytest.fixture
async def uploader() -> AsyncIterator[Uploader]:
    async with uploader_client(read_timeout_s=10) as u:
        yield u


def source(tmp_path: Path, size: int) -> tuple[Path, bytes, UploadState]:
    data = os.urandom(size)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    st = path.stat()
    return path, data, UploadState(source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)


async def test_an_upload_to_openbits_upload_server(uploader: Uploader, tmp_path: Path) -> None:
    with bitsupload.UploadServer(tmp_path / "server") as server:
        (server.root / "inbox").mkdir()
        path, data, state = source(tmp_path, 5 * MiB + 77)
        file = JobFile(f"{server.url}/inbox/a.bin", str(path), bytes_total=len(data))
        await uploader.upload(
            file, state, Owner(os.geteuid(), os.getegid()), UploadRecorder(file), 2, RequestOptions()
        )
        assert state.closed
        assert (server.root / "inbox" / "a.bin").read_bytes() == data


async def test_the_same_session_after_the_server_restarted(uploader: Uploader, tmp_path: Path) -> None:
    server = bitsupload.UploadServer(tmp_path / "server")
    server.start()
    try:
        path, data, state = source(tmp_path, 3 * MiB)
        file = JobFile(f"{server.url}/b.bin", str(path), bytes_total=len(data))
        owner, options = Owner(os.geteuid(), os.getegid()), RequestOptions()

        class KillAfterFirst(UploadRecorder):
            def saved(self, offset: int, *, urgent: bool) -> None:
                super().saved(offset, urgent=urgent)
                if offset > 0:
                    server.kill()

        with pytest.raises(BitsError):
            await uploader.upload(file, state, owner, KillAfterFirst(file), 2, options)
        session, offset = state.session_id, file.bytes_transferred
        assert session is not None and offset > 0
        server.start()
        await uploader.upload(file, state, owner, UploadRecorder(file), 2, options)
        assert state.closed and state.session_id == session
        assert (server.root / "b.bin").read_bytes() == data
    finally:
        server.stop()
