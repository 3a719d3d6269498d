"""Download one file into its temporary file, resumably: the transfer layer's entry.

The :class:`Downloader` knows files, not jobs: it reads a :class:`JobFile`, and reports
through :class:`Progress` (which the scheduler binds to the service) before each durable
step.  It picks how to fetch a file: a whole file over HTTP(S) (``fetch.FileDownload``),
AddFileWithRanges ranges (``ranges.py``), or a local source (``local.py``); a file whose
content changed under the transfer is started again from byte 0, a few times at most.

HTTP and HTTPS go through ``h1`` (lean, pipelined); only proxied requests go through the
aiohttp session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp

from openbits.model import JobFile
from openbits.transfer import files as fs
from openbits.transfer.checks import Restart
from openbits.transfer.fetch import (
    Ahead,
    Fetched,
    FileDownload,
    Owner,
    Progress,
    RequestOptions,
    Transport,
    Tuning,
)
from openbits.transfer.h1 import H1Client
from openbits.transfer.http import TLSContexts, invalid_response
from openbits.transfer.local import download_local
from openbits.transfer.owner import Owners
from openbits.transfer.ranges import download_ranges
from openbits.transfer.throttle import Throttle

__all__ = ["Downloader", "Fetched", "Owner", "Progress", "RequestOptions", "Tuning"]

#: attempts at a file whose content keeps changing during the transfer
ATTEMPTS = 3


class Downloader:
    """Downloads files over HTTP(S) and from local paths, with the clients, TLS contexts,
    throttle, tuning and proxies it is given (the composition root owns and closes them;
    no ``proxies``: no proxy)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tuning: Tuning | None = None,
        throttle: Throttle | None = None,
        h1: H1Client | None = None,
        tls: TLSContexts | None = None,
        proxies: Mapping[str, str] | None = None,
        owners: Owners | None = None,
    ) -> None:
        self.transport = Transport(
            session=session,
            h1=h1,
            proxies=proxies or {},
            tls=tls if tls is not None else TLSContexts(),
            throttle=throttle if throttle is not None else Throttle(),
            tuning=tuning or Tuning(),
            free_space=fs.FreeSpace(),
            owners=owners if owners is not None else Owners(),
        )

    async def download(
        self,
        file: JobFile,
        owner: Owner,
        progress: Progress,
        priority: int = 2,
        options: RequestOptions | None = None,
        *,
        defer_sync: bool = False,
        upcoming: Sequence[JobFile] = (),
    ) -> Fetched:
        """Bring ``file``'s temporary file to its full content within the bandwidth limits of
        ``priority`` (BG_JOB_PRIORITY), durably unless ``defer_sync`` lets a file that needed
        no checkpoint skip its own fdatasync (see :class:`Fetched`).

        ``upcoming`` are the files the caller will ask for next, with the same options: their
        requests may be sent ahead on the same connection (pipelining).

        The last checkpoint is left to the caller, which records the size and the file's
        completion in one commit.
        """
        one = FileDownload(self.transport, file, owner, progress, priority, options or RequestOptions())
        for _attempt in range(ATTEMPTS):
            fetched = await self._attempt(one, defer_sync, upcoming)
            if not isinstance(fetched, Restart):
                return fetched
        raise invalid_response("the server's content kept changing during the transfer")

    @staticmethod
    async def _attempt(one: FileDownload, defer_sync: bool, upcoming: Sequence[JobFile]) -> Fetched | Restart:
        """One try at the file from its last checkpoint; RESTART when its content changed."""
        source = fs.local_source_path(one.file.remote_url)
        if source is not None:
            return await download_local(one, source)
        if one.file.ranges is not None:
            return await download_ranges(one)
        return await one.whole(defer_sync, Ahead(upcoming, dict(one.options.headers)))
