"""A real Apache (``apache2 -DFOREGROUND``) that authenticates, as origin server and as proxy.

One process, started once per session by the ``apache`` fixture (~0.5 s), serves:

* the origin, over HTTP (``apache.origin_url``) and HTTPS (``apache.origin_https_url``,
  certificate from a trustme CA whose PEM is ``apache.ca_path``), where every file put in
  ``apache.www`` is served under five prefixes:

  - ``/``           no authentication
  - ``/basic/``     Basic (mod_auth_basic)
  - ``/digest/``    Digest, realm ``openbits`` (mod_auth_digest)
  - ``/ntlm/``      NTLM (mod_auth_gssapi + gss-ntlmssp, passwords checked against a real
                    user file); offers ``NTLM`` and ``Negotiate`` (SPNEGO with NTLMSSP only), as
                    IIS does: raw NTLM tokens in ``Authorization: NTLM ...`` work
  - ``/negotiate/`` Negotiate: Kerberos (keytab of ``HTTP/localhost`` from the ``kdc``), with
                    the NTLM fallback inside SPNEGO; offers ``Negotiate`` and ``NTLM``

* four forward proxies (``ProxyRequests On``, ``AllowCONNECT`` to any port), one per scheme,
  each demanding that scheme with 407: ``apache.proxy_urls["basic"|"digest"|"ntlm"|"negotiate"]``.

Everyone is :data:`USER` / :data:`PASSWORD` (NTLM: domain :data:`NTLM_DOMAIN`, also accepted
without a domain; Kerberos: ``alice@OPENBITS.TEST``). URLs use the host ``localhost``, which
Kerberos needs (the ticket is for ``HTTP/localhost``); it resolves to 127.0.0.1 only.

Proof of the mechanism: the GSSAPI locations answer a success with ``X-GSS-Mech`` (mod_auth_gssapi's
``GSS_MECH``: ``Negotiate/krb5`` for Kerberos, ``Negotiate/NTLM`` or ``NTLM/NTLM`` for NTLM),
and :meth:`Apache.requests` reads the access log (user and mechanism of every request, proxied
ones included).

Example::

    def test_negotiate(apache: Apache, kdc: Kdc, tmp_path: Path) -> None:
        (apache.www / "f.txt").write_text("hello")
        env = kdc.kinit(tmp_path / "cc")
        out = subprocess.run(["curl", "-si", "--negotiate", "-u", ":",
                              apache.origin_url + "/negotiate/f.txt"], env={**os.environ, **env}, ...)
        assert "X-GSS-Mech: Negotiate/krb5" in out.stdout
        assert apache.requests()[-1].mech == "Negotiate/krb5"

curl's own NTLM is refused by gss-ntlmssp ("Failed to decode data"): drive NTLM with pyspnego.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import trustme

from tests.support.kdc import PASSWORD, SERVICE_HOST, USER, Kdc
from tests.support.process import (
    ServerError,
    ServerProcess,
    chown_tree,
    find_program,
    free_ports,
    remove_server_dir,
    server_dir,
)

NTLM_DOMAIN = "OPENBITS"
DIGEST_REALM = "openbits"
SCHEMES = ("basic", "digest", "ntlm", "negotiate")
MODULES_DIR = Path("/usr/lib/apache2/modules")
_WORKER_USER = "www-data"
_MODULES = (
    ("mpm_event", "authn_core", "authn_file", "authz_core", "authz_user"),
    ("auth_basic", "auth_digest", "auth_gssapi", "alias", "headers"),
    ("proxy", "proxy_http", "proxy_connect", "socache_shmcb", "ssl"),
)


@dataclass(frozen=True)
class Request:
    """One line of the access log."""

    method: str
    uri: str  # the path, or host:port for CONNECT
    status: int
    user: str | None  # the authenticated user (alice, OPENBITS\\alice, alice@OPENBITS.TEST)
    mech: str | None  # GSS_MECH: "Negotiate/krb5", "Negotiate/NTLM", "NTLM/NTLM"; None otherwise
    port: int  # the port it came in on: tells origin from which proxy


def missing() -> str | None:
    """Why Apache cannot run here (a program or module not installed), else None."""
    if find_program("apache2") is None:
        return "apache2 is not installed"
    for module in ("auth_gssapi",):
        if not (MODULES_DIR / f"mod_{module}.so").exists():
            return f"mod_{module} is not installed (libapache2-mod-auth-gssapi)"
    ntlm_mechs = Path("/etc/gss/mech.d")
    if not any(ntlm_mechs.glob("*ntlmssp*")):
        return "gss-ntlmssp is not installed"
    return None


class Apache:
    """Apache serving ``www`` as authenticating origin and proxies; see the module docstring."""

    def __init__(self, kdc: Kdc) -> None:
        self.kdc = kdc
        self.user = USER
        self.password = PASSWORD
        self.ntlm_domain = NTLM_DOMAIN
        self.workdir = Path()
        self.www = Path()  # workdir/www, world-readable: put the files to serve here
        self.port = 0
        self.https_port = 0
        self.proxy_ports: dict[str, int] = {}
        self._server: ServerProcess | None = None

    # -- URLs -----------------------------------------------------------------------------

    @property
    def origin_url(self) -> str:
        """``http://localhost:PORT`` (no trailing slash)."""
        return f"http://{SERVICE_HOST}:{self.port}"

    @property
    def origin_https_url(self) -> str:
        """``https://localhost:PORT`` (no trailing slash); trust ``ca_path``."""
        return f"https://{SERVICE_HOST}:{self.https_port}"

    @property
    def proxy_urls(self) -> dict[str, str]:
        """scheme -> ``http://localhost:PORT`` of the proxy that demands it."""
        return {scheme: f"http://{SERVICE_HOST}:{port}" for scheme, port in self.proxy_ports.items()}

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.pem"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir = server_dir("apache", _WORKER_USER)
        self.www = self.workdir / "www"
        try:
            self._prepare()
            for _attempt in range(3):  # a port taken between the probe and the bind: retry
                ports = free_ports(2 + len(SCHEMES))
                self.port, self.https_port = ports[:2]
                self.proxy_ports = dict(zip(SCHEMES, ports[2:], strict=True))
                (self.workdir / "httpd.conf").write_text(self._config())
                server = ServerProcess(
                    "apache2",
                    [
                        find_program("apache2") or "apache2",
                        "-f",
                        str(self.workdir / "httpd.conf"),
                        "-DFOREGROUND",
                    ],
                    ports=ports,
                    log_path=self.workdir / "apache2.out",
                    env=self._env(),
                    extra_logs=[self.workdir / "error.log"],
                )
                try:
                    server.start()
                except ServerError as exc:
                    if "in use" not in str(exc):
                        raise
                    continue
                self._server = server
                return
            raise ServerError("apache2 found no free ports")
        except BaseException:
            remove_server_dir(self.workdir)
            raise

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        remove_server_dir(self.workdir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- logs -----------------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request logged so far, oldest first (Apache logs a request once answered)."""
        try:
            text = (self.workdir / "access.log").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) != 6:
                continue  # a line being written
            method, uri, status, user, mech, port = fields
            found.append(
                Request(
                    method=method,
                    uri=uri,
                    status=int(status),
                    user=None if user == "-" else user,
                    mech=None if mech == "-" else mech,
                    port=int(port),
                )
            )
        return found

    def error_log(self) -> str:
        return self._server.logs() if self._server is not None else ""

    # -- internals ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "KRB5_CONFIG": str(w / "krb5.conf"),
            # The keytab through the environment, not GssapiCredStore (which breaks NTLM).
            "KRB5_KTNAME": f"FILE:{w / 'http.keytab'}",
            "KRB5RCACHEDIR": str(w / "rcache"),
            "NTLM_USER_FILE": str(w / "ntlm_users"),
        }

    def _prepare(self) -> None:
        """Credentials, certificates and directories in the workdir, readable by the workers."""
        w = self.workdir
        (w / "rcache").mkdir()
        shutil.copyfile(self.kdc.keytab, w / "http.keytab")
        shutil.copyfile(self.kdc.krb5_conf, w / "krb5.conf")
        sha1 = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
        (w / "htpasswd").write_text(f"{USER}:{{SHA}}{sha1}\n")
        ha1 = hashlib.md5(f"{USER}:{DIGEST_REALM}:{PASSWORD}".encode()).hexdigest()
        (w / "htdigest").write_text(f"{USER}:{DIGEST_REALM}:{ha1}\n")
        # gss-ntlmssp: DOMAIN:user:password; an empty domain matches a client that sends none.
        (w / "ntlm_users").write_text(f"{NTLM_DOMAIN}:{USER}:{PASSWORD}\n:{USER}:{PASSWORD}\n")
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(w / "ca.pem"))
        ca.issue_cert(SERVICE_HOST, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(w / "server.pem")
        )
        chown_tree(w, _WORKER_USER)
        self.www.mkdir(mode=0o755)  # ours: tests write here, the workers read

    def _locations(self) -> str:
        """The protected prefixes of the origin, each an alias of ``www``."""
        blocks = []
        for scheme in SCHEMES:
            blocks.append(
                f'Alias "/{scheme}/" "{self.www}/"\n<Location "/{scheme}/">\n'
                f"{self._auth(scheme)}</Location>\n"
            )
        return "".join(blocks)

    def _auth(self, scheme: str) -> str:
        """Directives demanding ``scheme`` (in a <Location> or, for proxies, <Proxy *>)."""
        w = self.workdir
        common = f'    AuthName "{DIGEST_REALM}"\n    Require valid-user\n'
        if scheme == "basic":
            return (
                f'    AuthType Basic\n    AuthBasicProvider file\n    AuthUserFile "{w}/htpasswd"\n' + common
            )
        if scheme == "digest":
            return (
                f'    AuthType Digest\n    AuthDigestProvider file\n    AuthUserFile "{w}/htdigest"\n'
                + common
            )
        gssapi = (
            "    AuthType GSSAPI\n    GssapiConnectionBound On\n    GssapiPublishMech On\n"
            '    Header set X-GSS-Mech "%{GSS_MECH}e" env=GSS_MECH\n'
        )
        if scheme == "ntlm":
            # NTLM only: SPNEGO restricted to NTLMSSP. The module offers "Negotiate" and "NTLM"
            # (as IIS does) and cannot be made to drop the first (gssapi-no-negotiate drops both).
            return gssapi + "    GssapiAllowedMech ntlmssp\n" + common
        return gssapi + "    GssapiAllowedMech krb5\n    GssapiAllowedMech ntlmssp\n" + common

    def _proxies(self) -> str:
        return "".join(
            f"<VirtualHost 127.0.0.1:{port}>\n    ProxyRequests On\n    AllowCONNECT 1-65535\n"
            f'    <Proxy "*">\n{self._auth(scheme)}    </Proxy>\n</VirtualHost>\n'
            for scheme, port in self.proxy_ports.items()
        )

    def _config(self) -> str:
        w = self.workdir
        modules = "".join(
            f"LoadModule {m}_module {MODULES_DIR}/mod_{m}.so\n" for group in _MODULES for m in group
        )
        listens = "".join(
            f"Listen 127.0.0.1:{p}\n" for p in [self.port, self.https_port, *self.proxy_ports.values()]
        )
        user = f"User {_WORKER_USER}\nGroup {_WORKER_USER}\n" if os.geteuid() == 0 else ""
        return f"""ServerRoot "{w}"
PidFile "{w}/httpd.pid"
ServerName {SERVICE_HOST}
{user}{listens}{modules}ErrorLog "{w}/error.log"
LogLevel info
LogFormat "%m\\t%U\\t%>s\\t%u\\t%{{GSS_MECH}}e\\t%{{local}}p" openbits
CustomLog "{w}/access.log" openbits
DocumentRoot "{self.www}"
<Directory "{self.www}">
    Require all granted
</Directory>
SSLSessionCache "shmcb:{w}/ssl_scache(512000)"
KeepAliveTimeout 30
MaxKeepAliveRequests 0

<VirtualHost 127.0.0.1:{self.port}>
{self._locations()}</VirtualHost>

<VirtualHost 127.0.0.1:{self.https_port}>
    SSLEngine on
    SSLCertificateFile "{w}/server.pem"
{self._locations()}</VirtualHost>

{self._proxies()}"""


@pytest.fixture(scope="session")
def apache(kdc: Kdc) -> Iterator[Apache]:
    """The session's Apache: origin (HTTP, HTTPS) and four authenticating proxies."""
    reason = missing()
    if reason is not None:
        pytest.skip(f"{reason}; make test-deps installs it")
    with Apache(kdc) as server:
        yield server
