"""A real MIT Kerberos realm (``krb5kdc``) on 127.0.0.1, for Negotiate tests.

The realm ``OPENBITS.TEST`` lives in a temporary directory: its database (``kdb5_util
create -s``), the principals ``alice`` (password :data:`PASSWORD`, the same user and
password as the Basic/Digest/NTLM servers) and ``HTTP/localhost`` (a random key, exported to
``http.keytab`` for Apache), a ``krb5.conf`` for clients and servers, and ``krb5kdc -n`` on a
free TCP+UDP port. Setting the realm up takes about 50 ms; the ``kdc`` fixture is session
scoped.

Clients name the service by host: use ``localhost`` in URLs (``http://localhost:PORT``), so
that the client asks for a ticket for ``HTTP/localhost``; ``127.0.0.1`` would not match.

``krb5.conf`` turns off DNS and reverse DNS (``dns_lookup_kdc``, ``dns_canonicalize_hostname``,
``rdns``) and asks for TCP (``udp_preference_limit = 1``); each ``REALM = {`` stands on its own
line, as MIT parses it (a one-line form is silently ignored and clients fall back to NTLM).

Example::

    def test_negotiate(kdc: Kdc, tmp_path: Path) -> None:
        env = kdc.kinit(tmp_path / "ccache")           # {"KRB5_CONFIG": ..., "KRB5CCNAME": ...}
        subprocess.run(["curl", "--negotiate", "-u", ":", url], env={**os.environ, **env})

    # or without a ticket cache, as a daemon would (pyspnego gets the ticket itself):
    os.environ.update(kdc.client_env())   # KRB5_CONFIG only
    spnego.client("alice", PASSWORD, hostname="localhost", service="HTTP", protocol="kerberos")
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.process import ServerError, ServerProcess, find_program, free_ports

REALM = "OPENBITS.TEST"
USER = "alice"
PASSWORD = "Op3n-Bits!pw"
SERVICE_HOST = "localhost"
SERVICE_PRINCIPAL = f"HTTP/{SERVICE_HOST}"
_MASTER_PASSWORD = "kdc-master-password"
PROGRAMS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")


def missing_programs() -> list[str]:
    """The Kerberos programs this module needs that are not installed."""
    return [name for name in PROGRAMS if find_program(name) is None]


class Kdc:
    """An MIT KDC for realm :data:`REALM` with its database and keytab in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.realm = REALM
        self.user = USER
        self.password = PASSWORD
        self.principal = f"{USER}@{REALM}"
        self.service_principal = f"{SERVICE_PRINCIPAL}@{REALM}"
        self.krb5_conf = self.workdir / "krb5.conf"
        self.kdc_conf = self.workdir / "kdc.conf"
        self.keytab = self.workdir / "http.keytab"
        self.log_path = self.workdir / "kdc.log"
        self.port = 0
        self._server: ServerProcess | None = None

    # -- environments ---------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """What any Kerberos client or server process needs: ``KRB5_CONFIG``."""
        return {"KRB5_CONFIG": str(self.krb5_conf)}

    def kinit(
        self, ccache: Path, principal: str | None = None, password: str | None = None
    ) -> dict[str, str]:
        """Get a TGT for ``principal`` (default alice) into the file ``ccache``.

        Returns the environment a client process needs (``KRB5_CONFIG``, ``KRB5CCNAME``).
        The password goes to kinit on stdin, never on its command line.
        """
        env = {**self.client_env(), "KRB5CCNAME": f"FILE:{ccache}"}
        subprocess.run(
            ["kinit", principal or self.principal],
            input=(password if password is not None else self.password) + "\n",
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return env

    def add_principal(self, name: str, password: str | None = None) -> str:
        """Add a principal (random key when no password); returns ``name@REALM``."""
        key = f"-pw {password}" if password is not None else "-randkey"
        self._kadmin(f"addprinc {key} {name}")
        return f"{name}@{self.realm}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a port taken between the probe and the bind: retry
            (self.port,) = free_ports(1)
            self._write_configs()
            if not (self.workdir / "principal").exists():
                self._create_realm()
            server = ServerProcess(
                "krb5kdc",
                ["krb5kdc", "-n", "-P", str(self.workdir / "kdc.pid")],
                ports=[self.port],
                log_path=self.workdir / "krb5kdc.out",
                env={**os.environ, **self._admin_env()},
                extra_logs=[self.log_path],
            )
            try:
                server.start()
            except ServerError as exc:
                if "in use" not in str(exc):
                    raise
                continue
            self._server = server
            return
        raise ServerError(f"krb5kdc found no free port:\n{self.log_path}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _admin_env(self) -> dict[str, str]:
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}

    def _kadmin(self, *queries: str) -> None:
        """Run kadmin.local queries (one per line on stdin: one process for all of them)."""
        subprocess.run(
            ["kadmin.local", "-r", self.realm],
            input="".join(f"{q}\n" for q in queries),
            env={**os.environ, **self._admin_env()},
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )

    def _create_realm(self) -> None:
        subprocess.run(
            ["kdb5_util", "create", "-s", "-r", self.realm, "-P", _MASTER_PASSWORD],
            env={**os.environ, **self._admin_env()},
            capture_output=True,
            check=True,
            timeout=10,
        )
        self._kadmin(
            f"addprinc -pw {self.password} {self.user}",
            f"addprinc -randkey {SERVICE_PRINCIPAL}",
            f"ktadd -k {self.keytab} {SERVICE_PRINCIPAL}",
        )
        self.keytab.chmod(0o644)  # read by Apache's workers (www-data); a test-only key

    def _write_configs(self) -> None:
        w = self.workdir
        listen = f"127.0.0.1:{self.port}"
        # Each "REALM = {" on its own line: MIT ignores the one-line form.
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_listen = {listen}
    kdc_tcp_listen = {listen}

[realms]
    {self.realm} = {{
        database_name = {w / "principal"}
        key_stash_file = {w / "stash"}
        acl_file = {w / "kadm5.acl"}
        kdc_listen = {listen}
        kdc_tcp_listen = {listen}
    }}

[logging]
    kdc = FILE:{self.log_path}
    admin_server = FILE:{w / "kadmin.log"}
"""
        )
        (w / "kadm5.acl").touch()
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {self.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1

[realms]
    {self.realm} = {{
        kdc = {listen}
    }}

[domain_realm]
    {SERVICE_HOST} = {self.realm}
"""
        )
        self.krb5_conf.chmod(0o644)


@pytest.fixture(scope="session")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdc]:
    """The session's Kerberos realm (started once, ~50 ms); see the module docstring."""
    missing = missing_programs()
    if missing:
        pytest.skip(f"Kerberos programs not installed ({', '.join(missing)}); make test-deps installs them")
    with Kdc(tmp_path_factory.mktemp("kdc")) as server:
        yield server
