"""The upload sessions' operations: Create-Session, Fragment, Close, Cancel, expiry.

No HTTP here but the body stream and the notification: the handlers in ``app`` turn a
request into these calls and an `UploadFailure` or a return value into an Ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

from openbits.errors import HResult
from openbits.transfer import diskio
from openbits.uploadserver import notify, paths
from openbits.uploadserver.config import DirSettings, ServerSettings
from openbits.uploadserver.protocol import HTTP_ERROR_BASE, Range, UploadFailure, invalid, session_not_found
from openbits.uploadserver.sessions import CLOSED, COMPLETE, OPEN, Session, SessionStore
from openbits.uploadserver.urls import RequestUrls

#: a fragment's bytes are handed to the disk in pieces this long as they arrive
WRITEBACK_BYTES = 8 * 1024 * 1024
#: a fragment that ends this long after the partial file was last made durable makes it
#: durable again (fdatasync, the record saved) before its Ack; the others are acknowledged
#: from the page cache (what a restart believes: ``sessions``), so the link never waits for
#: the disk between fragments: a power cut costs the client at most this long of resending
DURABLE_EVERY_S = 1.0
# The pwrite of each body chunk (≤ 1 MiB, mostly ~64 KiB) stays on the event loop: it only
# copies into the page cache. Batches written by a worker thread while the next arrived cost
# more (bench_upload --size 512 MiB --runs 3, idle machine: median 0.924 s, 0.60 upload-server
# CPU s, against 0.641 s and 0.40 on the loop; the same order in 2 pairs on a busy machine).
# What waits for the disk (fdatasync, fsync, rename, the session records) is a worker thread's.

log = logging.getLogger("openbits.uploadserver")


@dataclass(slots=True)
class Counters:
    """What the server did (tests read them to prove no byte was written twice)."""

    sessions_created: int = 0
    fragments_accepted: int = 0
    fragments_refused_416: int = 0
    bytes_written: int = 0
    sessions_published: int = 0
    sessions_expired: int = 0
    by_session_bytes: dict[str, int] = field(default_factory=dict)
    by_session_416: dict[str, int] = field(default_factory=dict)

    def end_session(self, session_id: str) -> tuple[int, int]:
        """Drop a session's entries (it is published, dropped or expired): (bytes, 416s)."""
        return self.by_session_bytes.pop(session_id, 0), self.by_session_416.pop(session_id, 0)


class Uploads:
    """The sessions of one server: its root fd, its store, the HTTP client for notifications."""

    def __init__(self, settings: ServerSettings, root_fd: int, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.root_fd = root_fd
        self.http = http
        self.store = SessionStore(settings.state_dir)
        self.counters = Counters()
        #: the tasks of fragments still reading their body, by session: a newer request of
        #: the session means the client gave up on it (one request at a time, bits-spec §6.1)
        self._readers: dict[str, asyncio.Task[object]] = {}
        #: when each session's partial file was last made durable (time.monotonic())
        self._durable_at: dict[str, float] = {}
        self._recover()

    def _recover(self) -> None:
        """After a restart, set where each open session goes on from (``sessions`` says why):
        in the same boot, from its partial file's length; after another, from its durable
        offset, the partial file cut back to it (bytes past it may be garbage)."""
        for session in self.store:
            if session.state != OPEN:
                continue
            try:
                dir_fd = paths.open_directory(self.root_fd, session.target.parts)
            except UploadFailure:
                continue  # its directory is gone: the session expires in time
            try:
                self._recover_partial(dir_fd, session)
            except OSError:
                pass  # no partial file yet, or not ours to cut: the next fragment decides
            finally:
                os.close(dir_fd)

    def _recover_partial(self, dir_fd: int, session: Session) -> None:
        st = os.stat(session.partial_name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return
        durable = min(session.durable_offset, session.offset)
        same_boot = bool(session.boot_id) and session.boot_id == self.store.boot_id
        keep = st.st_size if same_boot else durable
        if session.total is not None:
            keep = min(keep, session.total)
        if keep < durable:
            return  # it lost durable bytes: the next fragment finds it damaged
        session.offset = keep
        if st.st_size > keep:
            fd = os.open(session.partial_name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.ftruncate(fd, keep)
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- Create-Session ----------------------------------------------------------------------------

    async def create(self, target: paths.Target, client: str, new_id: Callable[[], str]) -> Session:
        """A new session for ``target``: the directory exists (no symlink) and may take it."""
        settings = self.settings.for_directory(target.parts)
        if not settings.allow_uploads:
            raise UploadFailure(501, HResult.E_ACCESSDENIED, "uploads are not enabled here")
        if self.store.live_count(client) >= self.settings.max_sessions_per_client:
            raise UploadFailure(503, HTTP_ERROR_BASE + 503, "too many sessions from this address")
        dir_fd = paths.open_directory(self.root_fd, target.parts)
        try:
            paths.check_target_file(dir_fd, target.name, settings.allow_overwrite)
        finally:
            os.close(dir_fd)
        session = self.store.new(new_id(), target, client)  # counted at once: no race past the limit
        try:
            await self.store.save(session)
        except BaseException:
            self.store.forget(session)
            raise
        self._durable_at[session.session_id] = time.monotonic()  # (nothing to make durable yet)
        self.counters.sessions_created += 1
        log.info("session %s created for /%s by %s", session.session_id, target.relative, client)
        return session

    def find(self, session_id: str, target: paths.Target) -> Session:
        """The live session ``session_id`` of this URL, else BG_E_SESSION_NOT_FOUND."""
        session = self.store.get(session_id)
        if session is None or session.target != target:
            raise session_not_found()
        return session

    # -- Fragment ----------------------------------------------------------------------------------

    def preempt(self, session_id: str) -> None:
        """A new request of the session: a fragment of it still reading its body is abandoned
        (its client vanished mid-body and sent again on a new connection; without this the
        new request would wait behind a half-open connection for as long as TCP keeps it)."""
        reader = self._readers.get(session_id)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()

    async def fragment(
        self, session: Session, rng: Range, body: AsyncIterator[bytes], urls: RequestUrls
    ) -> tuple[int, str | None]:
        """Write one fragment at the session's offset; (the next offset, the reply URL).

        Once every byte is in, a fragment that ends at the last byte (whatever its start) is
        answered as the last one was: 200 and the same BITS-Reply-URL (the client may have
        lost the first Ack, or resumed from an older offset of its own).
        """
        settings = self.settings.for_directory(session.target.parts)
        if session.state == CLOSED:
            raise session_not_found()
        if settings.max_upload_bytes and rng.total > settings.max_upload_bytes:
            raise UploadFailure(413, HResult.BG_E_TOO_LARGE, "the upload is larger than this server takes")
        if session.total is not None and rng.total != session.total:
            raise invalid("the total length changed within the session")
        if session.state == OPEN and 0 < rng.total == session.offset:
            # every byte came before a restart, whose process died before the last Ack
            session.total = rng.total
            await self._completed(session, settings)
        if session.state == COMPLETE and rng.is_last and settings.notifies:
            return await self._finish(session, settings, urls)  # the last Ack again
        if rng.first != session.offset or session.state != OPEN:
            self.counters.fragments_refused_416 += 1
            session_counts = self.counters.by_session_416
            session_counts[session.session_id] = session_counts.get(session.session_id, 0) + 1
            raise UploadFailure(416, 0, "fragment not at the server's offset", offset=session.offset)
        session.total = rng.total
        since_s = time.monotonic() - self._durable_at.get(session.session_id, 0.0)
        durable = rng.is_last or since_s >= DURABLE_EVERY_S
        written = await self._write(session, settings, rng, body, durable=durable)
        self.counters.fragments_accepted += 1
        self.counters.bytes_written += written
        self.counters.by_session_bytes[session.session_id] = (
            self.counters.by_session_bytes.get(session.session_id, 0) + written
        )
        session.offset = rng.last + 1
        session.last_activity_s = time.time()
        if not durable:
            return session.offset, None
        if not rng.is_last:
            await self._saved_durable(session)
            return session.offset, None
        session.state = COMPLETE
        await self._saved_durable(session)
        log.info("session %s: all %d bytes received", session.session_id, rng.total)
        return await self._finish(session, settings, urls)

    async def _saved_durable(self, session: Session) -> None:
        """The record saved, saying that the partial file's bytes are on the disk (they are)."""
        session.durable_offset = session.offset
        self._durable_at[session.session_id] = time.monotonic()
        await self.store.save(session)

    async def _completed(self, session: Session, settings: DirSettings) -> None:
        """The partial file, found whole after a restart, made durable; the session COMPLETE."""
        fd = await asyncio.to_thread(self._open_partial_in_place, session, settings)
        try:
            await asyncio.to_thread(os.fdatasync, fd)
        except OSError:  # (as in `_write`: back to the last durable point)
            session.offset = min(session.offset, session.durable_offset)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, session.offset)
            raise
        finally:
            os.close(fd)
        session.state = COMPLETE
        await self._saved_durable(session)

    async def _write(
        self,
        session: Session,
        settings: DirSettings,
        rng: Range,
        body: AsyncIterator[bytes],
        *,
        durable: bool,
    ) -> int:
        """The body into the partial file at the offset (``durable``: fdatasync'd); a short one
        → nothing of it kept."""
        fd = await asyncio.to_thread(self._open_partial_in_place, session, settings)
        task = asyncio.current_task()
        if task is not None:
            self._readers[session.session_id] = task
        try:
            position = unflushed = rng.first
            end = rng.last + 1
            async for chunk in body:
                if position + len(chunk) > end:
                    raise invalid("the body is longer than Content-Range says")
                view = memoryview(chunk)
                while view:
                    done = os.pwrite(fd, view, position)
                    position += done
                    view = view[done:]
                if position - unflushed >= WRITEBACK_BYTES:
                    # start the disk writing what came so far while the rest arrives: the
                    # fdatasync before the Ack then waits for the tail only
                    diskio.start_writeback(fd, unflushed, position - unflushed)
                    unflushed = position
            if position != end:
                raise invalid("the body ended before Content-Range's end")
            self._readers.pop(session.session_id, None)  # all in: nothing left to abandon
            if durable:
                try:
                    await asyncio.to_thread(os.fdatasync, fd)
                except OSError:
                    # a write-back error: what came since the last durable point may be lost
                    # (the kernel reports it once): back to that point, the client resends
                    session.offset = min(session.offset, session.durable_offset)
                    raise
            return rng.length
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, session.offset)  # unacknowledged bytes are not kept
            raise
        finally:
            if task is not None and self._readers.get(session.session_id) is task:
                del self._readers[session.session_id]
            os.close(fd)

    def _open_partial_in_place(self, session: Session, settings: DirSettings) -> int:
        """`_open_partial` from the root (a worker thread's: a new file's directory is synced)."""
        dir_fd = paths.open_directory(self.root_fd, session.target.parts)
        try:
            return self._open_partial(dir_fd, session, settings)
        finally:
            os.close(dir_fd)

    def _open_partial(self, dir_fd: int, session: Session, settings: DirSettings) -> int:
        """The partial file (created with the directory's mode and owner), cut to the offset."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(session.partial_name, flags, settings.file_mode, dir_fd=dir_fd)
        except OSError:
            raise UploadFailure(500, HResult.E_ACCESSDENIED, "cannot write the partial file") from None
        try:
            st = os.fstat(fd)
            if st.st_size == 0 and session.offset == 0:
                os.fchmod(fd, settings.file_mode)
                if os.geteuid() == 0 and (settings.owner_uid is not None or settings.group_gid is not None):
                    os.fchown(fd, _id(settings.owner_uid), _id(settings.group_gid))
                paths.fsync_dir(dir_fd)  # the partial file's name is as durable as its bytes
            if st.st_size != session.offset:
                if st.st_size < session.offset:
                    raise UploadFailure(500, HResult.BG_E_SESSION_NOT_FOUND, "the partial file lost bytes")
                os.ftruncate(fd, session.offset)
            return fd
        except BaseException:
            os.close(fd)
            raise

    async def _finish(
        self, session: Session, settings: DirSettings, urls: RequestUrls
    ) -> tuple[int, str | None]:
        """The complete upload: the application told (once it answers 2xx), the reply URL."""
        offset = session.offset
        if not settings.notifies:
            return offset, None
        if not session.notified:
            data_fd = await asyncio.to_thread(self._open_complete_partial, session)
            try:
                answer = await notify.notify(
                    self.http,
                    notify.Notification(
                        kind=settings.notification_type,
                        url=notify.notification_target(settings.notification_url, urls.own),
                        original_url=str(urls.original),
                        data_path=self.partial_path(session),
                        data_fd=data_fd if settings.notification_type == "by-value" else None,
                        reply_path=self.store.reply_path(session.session_id),
                        timeout_s=settings.notification_timeout_s,
                        max_reply_bytes=settings.max_reply_bytes,
                    ),
                )
            finally:
                os.close(data_fd)
            session.notified = True
            session.reply_url = answer.static_url
            session.copy_to_destination = answer.copy_to_destination
            await self.store.save(session)
        reply = session.reply_url or str(urls.client.with_query({"bits-reply": session.session_id}))
        return offset, reply

    def _open_complete_partial(self, session: Session) -> int:
        """The complete partial file, read-only, opened from the root without following a
        symlink, and checked to be a regular file of one link and the session's length: no
        file swapped in by a user of the directory is ever sent to the application."""
        dir_fd = paths.open_directory(self.root_fd, session.target.parts)
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(session.partial_name, flags, dir_fd=dir_fd)
            except OSError:
                raise _partial_damaged() from None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != session.offset:
            os.close(fd)
            raise _partial_damaged()
        return fd

    def partial_path(self, session: Session) -> str:
        return os.path.join(self.settings.root, *session.parts, session.partial_name)

    # -- Close-Session, Cancel-Session, expiry -----------------------------------------------------

    async def close(self, session: Session) -> None:
        """Publish a complete upload atomically (else drop the partial file); a tombstone stays."""
        if session.state == CLOSED:
            return
        settings = self.settings.for_directory(session.target.parts)
        publish = session.state == COMPLETE and session.copy_to_destination
        await asyncio.to_thread(self._close_files, session, settings, publish)
        written, refused = self._ended(session.session_id)
        if publish:
            self.counters.sessions_published += 1
            log.info(
                "session %s: published /%s (%d bytes written by this process, %d fragments refused: 416)",
                session.session_id,
                session.target.relative,
                written,
                refused,
            )
        else:
            log.info("session %s: closed, nothing published", session.session_id)
        await self._tombstone(session)

    def _close_files(self, session: Session, settings: DirSettings, publish: bool) -> None:
        """Close-Session's disk work (a worker thread's): publish, or drop the partial file."""
        dir_fd = paths.open_directory(self.root_fd, session.target.parts)
        try:
            if publish:
                self._publish(dir_fd, session, settings)
            else:
                paths.unlink_quietly(dir_fd, session.partial_name)
        finally:
            os.close(dir_fd)

    def _publish(self, dir_fd: int, session: Session, settings: DirSettings) -> None:
        """Rename the (already durable) partial file to its name; sync the directory.

        The partial file must still be a regular file of one link (not a symlink or a link
        someone planted beside the upload): else 500 and nothing is published."""
        name, partial = session.name, session.partial_name
        st = os.stat(partial, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise _partial_damaged()
        if settings.allow_overwrite:
            paths.check_target_file(dir_fd, name, allow_overwrite=True)
            os.rename(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            try:  # a link fails if the name exists: no replacing, even in a race
                os.link(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise UploadFailure(
                    409, HResult.E_ACCESSDENIED, "the file exists and may not be overwritten"
                ) from None
            os.unlink(partial, dir_fd=dir_fd)
        paths.fsync_dir(dir_fd)

    async def cancel(self, session: Session) -> None:
        """Drop the partial file and the reply."""
        if session.state != CLOSED:
            await asyncio.to_thread(self._drop_partial, session)
            self._ended(session.session_id)
            log.info("session %s: cancelled", session.session_id)
            await self._tombstone(session)

    async def _tombstone(self, session: Session) -> None:
        session.state = CLOSED
        session.last_activity_s = time.time()
        await self.store.save(session)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.store.reply_path(session.session_id))

    def _ended(self, session_id: str) -> tuple[int, int]:
        """Forget what this process kept of a session that ended: (bytes written, 416s)."""
        self._durable_at.pop(session_id, None)
        return self.counters.end_session(session_id)

    def _drop_partial(self, session: Session) -> None:
        try:
            dir_fd = paths.open_directory(self.root_fd, session.target.parts)
        except UploadFailure:
            return
        try:
            paths.unlink_quietly(dir_fd, session.partial_name)
        finally:
            os.close(dir_fd)

    def expire(self, now_s: float) -> int:
        """Remove the sessions idle longer than their directory's timeout; how many."""
        removed = 0
        for session in self.store:
            timeout_s = self.settings.for_directory(session.target.parts).session_timeout_s
            if now_s - session.last_activity_s <= timeout_s or self.store.lock(session.session_id).locked():
                continue
            self._ended(session.session_id)
            if session.state != CLOSED:
                self._drop_partial(session)
                self.counters.sessions_expired += 1
                log.info("session %s: abandoned, removed", session.session_id)
            self.store.forget(session)
            removed += 1
        return removed

    def reply_file(self, session_id: str) -> str | None:
        """The reply file of a session whose application answered, if it is kept here."""
        session = self.store.get(session_id)
        if session is None or session.state != COMPLETE or not session.notified or session.reply_url:
            return None
        path = self.store.reply_path(session_id)
        return path if os.path.exists(path) else None

    def remove_damaged_leftovers(self) -> int:
        """The partial files of session records that could not be read, removed (they can
        never be resumed or published: the record naming their target is lost), then the
        records themselves; how many partial files. Walks the root without following
        symlinks; a worker thread's job, once after a start that found damaged records."""
        wanted = {
            f"{paths.PARTIAL_PREFIX}{sid.strip('{}')}{paths.PARTIAL_SUFFIX}": sid
            for sid in self.store.damaged
        }
        removed = 0
        if wanted:
            for directory, _dirs, files, dir_fd in os.fwalk(self.settings.root, follow_symlinks=False):
                for name in files:
                    if name in wanted:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=dir_fd)
                            removed += 1
                            log.info("removed %s/%s: its session record was damaged", directory, name)
        for sid in list(wanted.values()):
            self.store.forget_files(sid)
        return removed


def _partial_damaged() -> UploadFailure:
    """The partial file is gone or replaced (not a regular file of one link, or short)."""
    return UploadFailure(500, HResult.E_ACCESSDENIED, "the partial file is not the session's")


def _id(value: int | None) -> int:
    return -1 if value is None else value


__all__ = ["OPEN", "Counters", "Uploads"]
