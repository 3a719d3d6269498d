"""Reference clients for the authenticating test servers: curl, and pyspnego where curl cannot.

They prove what a server does before openbits is pointed at it (the smoke tests of
``tests/integration/test_auth_servers.py``), and give a test a known-good answer to compare
with. curl covers Basic, Digest, Kerberos Negotiate (with a ticket cache) and SOCKS5; its NTLM
is refused by gss-ntlmssp, so NTLM (and Negotiate from a password, without ``kinit``) goes
through :func:`spnego_fetch`, which runs the multi-leg exchange on one connection.

Example::

    code = curl(apache.origin_url + "/basic/f.txt", "--basic", "-u", f"{USER}:{PASSWORD}")
    assert code.http == 200
    answer = spnego_fetch(apache.port, "GET", "/ntlm/f.txt", scheme="NTLM", protocol="ntlm",
                          user=USER, password=PASSWORD)
    assert answer.status == 200 and answer.mech == "NTLM/NTLM"
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import spnego
import spnego.exceptions

from tests.support.kdc import SERVICE_HOST
from tests.support.process import HOST

_MAX_LEGS = 4


@dataclass(frozen=True)
class CurlResult:
    http: int  # the final status (0: no HTTP answer)
    connect: int  # the proxy's answer to CONNECT (0: none)
    exit_code: int  # curl's exit status (97: SOCKS handshake refused, 56: CONNECT refused)
    headers: str  # the response headers, as curl received them (all legs)


def curl(url: str, *args: str, env: Mapping[str, str] | None = None) -> CurlResult:
    """Run curl on ``url`` with ``args``; ``env`` is added to our environment."""
    proc = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{http_connect}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
        check=False,
    )
    headers, _, codes = proc.stdout.rpartition("\n")
    http_code, connect_code = codes.split()
    return CurlResult(int(http_code), int(connect_code), proc.returncode, headers)


@dataclass(frozen=True)
class SpnegoAnswer:
    status: int
    mech: str | None  # the server's X-GSS-Mech header (Apache's GSS_MECH), if any
    protocol: str  # what pyspnego negotiated: "kerberos" or "ntlm"
    legs: int  # requests sent


def spnego_fetch(
    port: int,
    method: str,
    target: str,
    *,
    scheme: Literal["NTLM", "Negotiate"],
    protocol: Literal["ntlm", "kerberos", "negotiate"],
    user: str,
    password: str,
    proxy: bool = False,
    tls_through: ssl.SSLContext | None = None,
    tunnel_path: str = "/",
) -> SpnegoAnswer:
    """Authenticate ``method target`` on 127.0.0.1:``port`` with pyspnego, on one connection.

    ``proxy``: the server is a proxy (Proxy-Authorization, 407); ``target`` is then an absolute
    URL, or ``host:port`` with ``method="CONNECT"``. With ``tls_through`` a successful CONNECT
    is followed by a TLS handshake and a GET of ``tunnel_path`` through the tunnel, whose status is the
    answer's. The service principal is ``HTTP/localhost``.
    """
    send, receive, refused = (
        ("Proxy-Authorization", "Proxy-Authenticate", 407)
        if proxy
        else ("Authorization", "WWW-Authenticate", 401)
    )
    client = spnego.client(user, password, hostname=SERVICE_HOST, service="HTTP", protocol=protocol)
    host = target.split("/")[2] if "://" in target else f"{SERVICE_HOST}:{port}"
    if method == "CONNECT":
        host = target
    with socket.create_connection((HOST, port), timeout=20) as sock:
        token = client.step()
        legs = 0
        while legs < _MAX_LEGS:
            legs += 1
            assert token is not None
            auth = f"{scheme} {base64.b64encode(token).decode()}"
            sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{send}: {auth}\r\n\r\n".encode())
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            if not (method == "CONNECT" and response.status == 200):
                response.read()  # the body, so that the connection can carry the next leg
            response.close()
            challenge = _challenge(response, receive, scheme)
            if response.status != refused or challenge is None or client.complete:
                break
            try:
                token = client.step(challenge)
            except spnego.exceptions.SpnegoError:
                break  # the server's final token rejects us: the refusal is the answer
        status = response.status
        if method == "CONNECT" and status == 200 and tls_through is not None:
            status = _get_through(sock, tls_through, target, tunnel_path)
        return SpnegoAnswer(status, response.getheader("X-GSS-Mech"), _protocol(client), legs)


def _challenge(response: http.client.HTTPResponse, header: str, scheme: str) -> bytes | None:
    """The server's next token for ``scheme`` (None when it sent none)."""
    for value in response.headers.get_all(header) or []:
        name, _, data = value.partition(" ")
        if name.lower() == scheme.lower() and data.strip():
            return base64.b64decode(data.strip())
    return None


def _protocol(client: spnego.ContextProxy) -> str:
    try:
        return str(client.negotiated_protocol)
    except Exception:  # not yet negotiated: the exchange failed before
        return ""


def _get_through(sock: socket.socket, context: ssl.SSLContext, authority: str, path: str) -> int:
    """GET ``path`` over TLS inside an established CONNECT tunnel; the status."""
    with context.wrap_socket(sock, server_hostname=authority.rsplit(":", 1)[0]) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        response.read()
        response.close()
        return response.status
