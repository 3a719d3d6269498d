"""The Windows client's request sequence of [MC-BUP] §4.1 replayed against the upload server.

Where this comes from: the Create-Session request below is byte for byte the one of [MC-BUP]
§4.1 ("Successful Upload", a BITS 6.7 client uploading rfc2119.txt to IIS as
/upload/2000mb-rfc2119.txt). The rest of that capture (Fragments, the Ping, Close-Session and
IIS's Acks) could not be read here: the requests after Create-Session are rebuilt in the same
shape (the same headers, in the same order) and the Acks are checked against what issue 14
records of IIS in those captures: Create-Session → 200 with ``BITS-Packet-Type: Ack``,
``BITS-Protocol``, ``BITS-Session-Id: {UPPER-CASE GUID}``, ``Accept-encoding: identity``,
``Content-Length: 0``; Fragment and Close-Session Acks → 200 with only ``BITS-Packet-Type``,
``Content-Length: 0`` and (Fragment) ``BITS-Received-Content-Range``, no BITS-Session-Id; a
Ping mid-session → 200 Ack. Session ids differ from the capture's: their shape is compared.
"""

from __future__ import annotations

import http.client
import re
import socket
from pathlib import Path

from tests.support.bitsupload import UploadServer

RFC2119 = (
    b"Network Working Group                                         S. Bradner\r\n"
    b"Request for Comments: 2119                            Harvard University\r\n"
    b"BCP: 14                                                       March 1997\r\n"
    b"Category: Best Current Practice\r\n\r\n"
    b"        Key words for use in RFCs to Indicate Requirement Levels\r\n"
) * 40

CREATE_SESSION = (  # [MC-BUP] §4.1, as captured
    b"BITS_POST /upload/2000mb-rfc2119.txt HTTP/1.1\r\n"
    b"Accept: */*\r\n"
    b"BITS-Packet-Type: Create-Session\r\n"
    b"BITS-Supported-Protocols: {7df0354d-249b-430f-820d-3d2a9bef4931}\r\n"
    b"Content-Name: rfc2119.txt\r\n"
    b"User-Agent: Microsoft BITS/6.7\r\n"
    b"Host: frankcao8\r\n"
    b"Content-Length: 0\r\n"
    b"Connection: Keep-Alive\r\n"
    b"\r\n"
)


def _request(packet: str, session: str = "", extra: str = "", body: bytes = b"") -> bytes:
    head = (
        "BITS_POST /upload/2000mb-rfc2119.txt HTTP/1.1\r\n"
        "Accept: */*\r\n"
        f"BITS-Packet-Type: {packet}\r\n"
        + (f"BITS-Session-Id: {session}\r\n" if session else "")
        + "Content-Name: rfc2119.txt\r\n"
        + extra
        + "User-Agent: Microsoft BITS/6.7\r\n"
        "Host: frankcao8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: Keep-Alive\r\n"
        "\r\n"
    )
    return head.encode() + body


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str]]:
    sock.sendall(request)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    assert body == b""
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def _bits_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("bits-")}


def test_the_windows_sequence_gets_iis_answers(tmp_path: Path) -> None:
    with UploadServer(tmp_path / "srv") as server:
        (server.root / "upload").mkdir()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            status, headers = _exchange(sock, CREATE_SESSION)
            assert status == 200
            session = headers["bits-session-id"]
            assert re.fullmatch(r"\{[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}\}", session)
            assert _bits_headers(headers) == {
                "bits-packet-type": "Ack",
                "bits-protocol": "{7df0354d-249b-430f-820d-3d2a9bef4931}",
                "bits-session-id": session,
            }
            assert headers["accept-encoding"].lower() == "identity"
            assert headers["content-length"] == "0"

            total = len(RFC2119)
            half = total // 2
            first = _request(
                "Fragment", session, f"Content-Range: bytes 0-{half - 1}/{total}\r\n", RFC2119[:half]
            )
            status, headers = _exchange(sock, first)
            assert status == 200
            assert _bits_headers(headers) == {
                "bits-packet-type": "Ack",
                "bits-received-content-range": str(half),
            }
            assert headers["content-length"] == "0"

            status, headers = _exchange(sock, _request("Ping"))
            assert (status, _bits_headers(headers), headers["content-length"]) == (
                200,
                {"bits-packet-type": "Ack"},
                "0",
            )

            last = _request(
                "Fragment", session, f"Content-Range: bytes {half}-{total - 1}/{total}\r\n", RFC2119[half:]
            )
            status, headers = _exchange(sock, last)
            assert status == 200
            assert _bits_headers(headers) == {
                "bits-packet-type": "Ack",
                "bits-received-content-range": str(total),
            }

            status, headers = _exchange(sock, _request("Close-Session", session))
            assert (status, _bits_headers(headers), headers["content-length"]) == (
                200,
                {"bits-packet-type": "Ack"},
                "0",
            )
        assert (server.root / "upload" / "2000mb-rfc2119.txt").read_bytes() == RFC2119
