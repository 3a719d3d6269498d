"""The upload server through a fault-injecting relay: connections reset or cut while Acks are
on their way, refused; a client that goes on from the server's offset always ends with the
right file, and the server never writes an acknowledged byte twice (its own count says so)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.bitsupload import BitsUploadClient, UploadServer, upload_through_faults
from tests.support.faultproxy import Chaos, Fault, FaultProxy, Kind


def _written(logs: str, session: str) -> tuple[int, int]:
    match = re.search(
        re.escape(session) + r": published /\S+ \((\d+) bytes written by this process, (\d+)", logs
    )
    assert match, logs
    return int(match.group(1)), int(match.group(2))


def test_lost_acks_and_resets_never_leave_a_wrong_file(tmp_path: Path) -> None:
    data = os.urandom(6 << 20)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    plan = [
        Fault.reset(at=700),
        Fault.truncate(at=500),
        Fault.refuse(),
        Fault.reset(at=1500),
        Fault.truncate(at=90),
    ]
    with UploadServer(tmp_path / "srv") as server, FaultProxy(server.port, plan=plan) as relay:
        client = BitsUploadClient(relay.port, timeout_s=10)
        session, errors = upload_through_faults(client, "/f.bin", source)
        client.close()
        assert (server.root / "f.bin").read_bytes() == data
        assert errors >= 4 and relay.fired[Kind.RESET] == 2
        written, refused = _written(server.logs(), session)
        assert written == len(data)  # no acknowledged byte written twice
        assert refused <= errors  # at most one 416 a lost Ack


def test_chaos(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chaos = Chaos(rate=0.5, max_offset=4000, budget=12, forever=0.0)
    with UploadServer(tmp_path / "srv") as server, FaultProxy(server.port, chaos=chaos, seed=14) as relay:
        client = BitsUploadClient(relay.port, timeout_s=5, keep_alive=False)  # chaos draws a connection
        session, _errors = upload_through_faults(client, "/c.bin", source, fragment_bytes=128 << 10)
        client.close()
        assert (server.root / "c.bin").read_bytes() == data
        assert _written(server.logs(), session)[0] == len(data)
        assert relay.errors >= 1
