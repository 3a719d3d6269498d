"""Download one file into its temporary file, resumably: the transfer layer's entry.

The :class:`Downloader` knows files, not jobs: it reads a :class:`JobFile`, and reports
through :class:`Progress` (which the scheduler binds to the service) before each durable
step.  It picks how to fetch a file: a whole file over HTTP(S) (``fetch.FileDownload``),
AddFileWithRanges ranges (``ranges.py``), or a local source (``local.py``); a file whose
content changed under the transfer is started again from byte 0, a few times at most.

HTTP and HTTPS go through ``h1`` (lean, pipelined), directly or by the routes
``proxy.Proxies`` gives (HTTP proxies, CONNECT tunnels, SOCKS5).
"""

from __future__ import annotations

from collections.abc import Sequence

from openbits.errors import DigestMismatch
from openbits.model import AuthTarget, JobFile
from openbits.transfer import files as fs
from openbits.transfer import segments
from openbits.transfer.auth import Authenticator
from openbits.transfer.certs import ClientContexts
from openbits.transfer.checks import Restart
from openbits.transfer.fetch import Ahead, Fetched, FileDownload, Progress
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import TLSContexts, invalid_response
from openbits.transfer.local import download_local
from openbits.transfer.options import ProxyAuthFactory, RequestOptions
from openbits.transfer.owner import Owners
from openbits.transfer.pace import Priority
from openbits.transfer.proxy import Proxies
from openbits.transfer.proxylist import ProxyEntry
from openbits.transfer.ranges import download_ranges
from openbits.transfer.routing import Owner, Transport, Tuning
from openbits.transfer.throttle import Throttle
from openbits.transfer.tickets import PROCESS, DefaultCredentials, OwnerTickets

__all__ = ["Downloader", "Fetched", "Owner", "Progress", "RequestOptions", "Tuning"]

#: attempts at a file whose content keeps changing during the transfer
ATTEMPTS = 3


def proxy_authenticator(
    options: RequestOptions, entry: ProxyEntry, defaults: DefaultCredentials = PROCESS
) -> Authenticator | None:
    """What answers a proxy's 407s for a job's requests through it (GET in absolute form and
    CONNECT): the job's proxy credentials (Target PROXY), the strongest scheme the proxy
    offers first; None when the job has none.  Credentials with no names use ``defaults``,
    as for servers (``fetch.FileDownload._default_credentials``)."""
    if not any(c.target is AuthTarget.PROXY for c in options.credentials):
        return None
    return Authenticator(
        AuthTarget.PROXY,
        options.credentials,
        entry.host,
        secure=entry.scheme == "https",
        defaults=defaults,
    )


class Downloader:
    """Downloads files over HTTP(S) and from local paths, with the client, TLS contexts,
    throttle, tuning and proxies it is given (the composition root owns and closes them;
    no ``proxies``: direct); client certificates of the LOCAL_MACHINE stores are found
    under ``machine_cert_dir``."""

    def __init__(
        self,
        h1: H1Client,
        tuning: Tuning | None = None,
        throttle: Throttle | None = None,
        tls: TLSContexts | None = None,
        proxies: Proxies | None = None,
        proxy_auth: ProxyAuthFactory | None = None,
        machine_cert_dir: str = "/etc/openbits/certs",
        owners: Owners | None = None,
        tickets: OwnerTickets | None = None,
    ) -> None:
        tls = tls if tls is not None else TLSContexts()
        owners = owners if owners is not None else Owners()
        self.transport = Transport(
            h1=h1,
            proxies=proxies if proxies is not None else Proxies(),
            tls=tls,
            throttle=throttle if throttle is not None else Throttle(),
            tuning=tuning or Tuning(),
            free_space=fs.FreeSpace(),
            proxy_auth=proxy_auth if proxy_auth is not None else proxy_authenticator,
            certs=ClientContexts(tls.fresh, machine_cert_dir, owners=owners),
            owners=owners,
            tickets=tickets if tickets is not None else OwnerTickets(owners),
        )

    async def download(
        self,
        file: JobFile,
        owner: Owner,
        progress: Progress,
        priority: Priority = 2,
        options: RequestOptions | None = None,
        *,
        defer_sync: bool = False,
        upcoming: Sequence[JobFile] = (),
        connections: int = 1,
    ) -> Fetched:
        """Bring ``file``'s temporary file to its full content within the bandwidth limits of
        ``priority`` (BG_JOB_PRIORITY; a function: the job's as it is at each read), durably
        unless ``defer_sync`` lets a file that needed no checkpoint skip its own fdatasync
        (see :class:`Fetched`).

        ``upcoming`` are the files the caller will ask for next, with the same options: their
        requests may be sent ahead on the same connection (pipelining).  ``connections``:
        how many the file may use at once, in segments (``segments.py``).

        The last checkpoint is left to the caller, which records the size and the file's
        completion in one commit.
        """
        one = FileDownload(
            self.transport, file, owner, progress, priority, options or RequestOptions(), connections
        )
        for _attempt in range(ATTEMPTS):
            try:
                fetched = await self._attempt(one, defer_sync, upcoming)
            except DigestMismatch:
                self._discard(file, owner, progress)
                raise
            if not isinstance(fetched, Restart):
                return fetched
        raise invalid_response("the server's content kept changing during the transfer")

    def _discard(self, file: JobFile, owner: Owner, progress: Progress) -> None:
        """Bytes that do not match an expected digest are never kept: the file restarts from
        byte 0 (committed first) and its temporary file is removed as its owner."""
        progress.begin(None, None, None)
        fs.remove_quietly(self.transport.owners, owner.uid, owner.gid, file.temp_path)

    async def open_sync_handle(self, owner: Owner, directory: str) -> int:
        """A ``syncfs`` handle of ``directory`` as ``owner`` reaches it (``SyncBatch``)."""
        return await fs.open_sync_handle(self.transport.owners, owner.uid, owner.gid, directory)

    def job_ended(self, job_id: str) -> None:
        """A job's run is over (transferred, failed, pre-empted, cancelled): let go of what
        was kept for it (the SSLContext holding its client certificate's key, its
        BackgroundYield controllers)."""
        if self.transport.certs is not None:
            self.transport.certs.forget(job_id)
        self.transport.throttle.politeness.forget(job_id)

    @staticmethod
    async def _attempt(one: FileDownload, defer_sync: bool, upcoming: Sequence[JobFile]) -> Fetched | Restart:
        """One try at the file from its last checkpoint; RESTART when its content changed."""
        source = fs.local_source_path(one.file.remote_url)
        if source is not None:
            return await download_local(one, source)
        if one.file.ranges is not None:
            return await download_ranges(one)
        if one.file.segments is not None and not one.file.completed:
            return await segments.resume(one)
        ahead = Ahead(upcoming, dict(one.options.headers))
        if one.takes_small(defer_sync):
            fetched = await one.small(ahead)
            if fetched is not None:
                return fetched
        return await one.whole(defer_sync, ahead, segments.start)
