"""AddFileWithRanges: the ranges of a remote file appended to the output in their order.

Small ranges go several to a request (``multipart/byteranges``), others one request each;
a server that will not do several at once is asked one at a time.  The output offset maps
back to (range, position in it), so an interruption resumes inside the range it stopped
in.  Every part must be exactly the range asked for; 416 is BG_E_INVALID_RANGE; a 200
means the content changed (If-Range) and the file starts again, or, with nothing to
compare, that the server cannot do ranges.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from openbits.errors import RangeNotSupported
from openbits.model import BG_LENGTH_TO_EOF
from openbits.transfer import checks
from openbits.transfer.byteranges import (
    ByteRangesError,
    ByteRangesParser,
    Data,
    Part,
    boundary_from_content_type,
)
from openbits.transfer.checks import RESTART, Restart
from openbits.transfer.fetch import Body, Fetched, FileDownload
from openbits.transfer.http import invalid_response, parse_unsatisfied_range

#: ranges up to this long go several to a request, up to MULTI_RANGE_COUNT of them
MULTI_RANGE_MAX_BYTES = 16 * 1024 * 1024
MULTI_RANGE_COUNT = 64
MULTI_RANGE_HEADER_CHARS = 2000


async def download_ranges(d: FileDownload) -> Fetched | Restart:
    """The file's ranges from where the output stopped, each checkpointed once whole."""
    ranges = d.file.ranges
    assert ranges is not None
    out = await d.open()
    multi = True  # until the server shows it will not send several ranges at once
    try:
        d.begin_check(out)  # (the digest is of the output: the ranges in order)
        i = 0
        done = 0  # output bytes of the ranges before range i
        while i < len(ranges):
            start, length = ranges[i]
            if length != BG_LENGTH_TO_EOF and out >= done + length:
                done += length
                i += 1
                continue
            first = start + (out - done)
            batch = _multi_batch(first, length - (out - done), ranges[i + 1 :]) if multi else []
            if len(batch) > 1:
                got = await _ranges_multi(d, out, batch)
                if isinstance(got, Restart):
                    return got
                out, multi = got
                continue  # the ranges done are skipped above
            end = await _range_single(d, out, first, start, length)
            if isinstance(end, Restart):
                return end
            out = max(out, end)  # (a range found whole already leaves the output as it is)
            done = end
            i += 1
        await d.verify(out)
        return Fetched(out)
    finally:
        d.close()


def _multi_batch(first: int, length: int, following: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first byte, length) of the ranges to ask in one multi-range request, starting with
    the rest of the current range; empty if the current range is too long for it."""
    if length > MULTI_RANGE_MAX_BYTES or length == BG_LENGTH_TO_EOF or length <= 0:
        return []
    batch = [(first, length)]
    chars = len(f"{first}-{first + length - 1}")
    for start, n in following:
        if n > MULTI_RANGE_MAX_BYTES or len(batch) >= MULTI_RANGE_COUNT:
            break  # (BG_LENGTH_TO_EOF is larger than the limit too)
        chars += len(f",{start}-{start + n - 1}")
        if chars > MULTI_RANGE_HEADER_CHARS:
            break
        batch.append((start, n))
    return batch


async def _range_single(d: FileDownload, out: int, first: int, start: int, length: int) -> int | Restart:
    """One range (``start``, ``length``), from where the output stopped inside it (``first``),
    in one request: the output offset where the range ends, checkpointed."""
    file, progress = d.file, d.progress
    spec = f"{first}-" if length == BG_LENGTH_TO_EOF else f"{first}-{start + length - 1}"
    headers, validator = d.resume_headers(spec)
    async with d.get(headers) as resp:
        if resp.status == 200:
            if validator:
                progress.begin(file.bytes_total, None, None)
                return RESTART
            raise RangeNotSupported("the server ignored the Range header")
        if resp.status == 416 and length == BG_LENGTH_TO_EOF:
            # A range to the end of the file whose length was not known when the output
            # went past it (it is not stored): the 416 tells the file's size.
            total = parse_unsatisfied_range(resp.headers.get("Content-Range"))
            if total is not None and start < total <= first:
                return out - (first - total)  # the output holds it all already
        if resp.status != 206:
            raise checks.range_refused(resp, first)
        last = checks.piece_end(resp, headers["Range"], first, start, length)
        if out > 0:
            checks.check_same_content(resp, file)
        progress.responded(True, checks.header_text(resp))
        if out == 0:
            progress.begin(file.bytes_total, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
        progress.connected()
        piece_end = out + (last - first + 1)
        fetched = await d.stream(resp.content, out, piece_end)
        if fetched.size != piece_end:
            raise invalid_response(f"the server sent {fetched.size - out} of {piece_end - out} bytes")
    progress.checkpoint(piece_end)
    return piece_end


async def _ranges_multi(
    d: FileDownload, out: int, batch: list[tuple[int, int]]
) -> tuple[int, bool] | Restart:
    """Several ranges (first byte, length) in one request, as a multipart/byteranges answer;
    each part is written and checkpointed once the delimiter after it was seen (a part
    that was not the length its Content-Range said never reaches a checkpoint).

    Returns the new output offset, and whether to go on asking several ranges at once
    (False when the server answered otherwise: it is then asked one range at a time)."""
    file, progress = d.file, d.progress
    spec = ",".join(f"{first}-{first + n - 1}" for first, n in batch)
    headers, validator = d.resume_headers(spec)
    async with d.get(headers) as resp:
        if resp.status == 200:
            if validator and not checks.same_content(resp, file):
                progress.begin(file.bytes_total, None, None)
                return RESTART  # the content changed (If-Range)
            return out, False  # same content, whole: no multi-range here
        if resp.status != 206:
            raise checks.range_refused(resp, batch[0][0])
        boundary = boundary_from_content_type(resp.headers.get("Content-Type"))
        if boundary is None:
            return out, False  # one part (perhaps coalesced): ask one range at a time
        if out > 0:
            checks.check_same_content(resp, file)
        progress.responded(True, checks.header_text(resp))
        if out == 0:
            progress.begin(file.bytes_total, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
        progress.connected()
        parts = _PartsReader(resp.content, ByteRangesParser(boundary))
        try:
            for first, n in batch:
                part = await parts.next_part()
                if part is None or part.start != first or part.end != first + n - 1:
                    return out, False  # other parts than asked (reordered, coalesced, fewer)
                end = out + n
                fetched = await d.stream(parts, out, end, checkpoints=False)
                if fetched.size != end:
                    raise invalid_response(f"a part of {n} bytes ended after {fetched.size - out}")
                out = end
                progress.checkpoint(out)
            await parts.finish()
        except ByteRangesError as e:
            raise invalid_response(f"bad multipart/byteranges answer: {e}") from e
    return out, True


class _PartsReader:
    """The parts of a multipart/byteranges body, each read like a body of its own.

    The last bytes of a part are handed out only once what follows them (the next part's
    header or the closing delimiter) was seen, so a part that was not the length its
    Content-Range said never gets written whole."""

    __slots__ = ("content", "eof", "events", "left", "parser")

    def __init__(self, content: Body, parser: ByteRangesParser) -> None:
        self.content, self.parser = content, parser
        self.events: collections.deque[Part | Data] = collections.deque()
        self.left = 0  # bytes of the current part not yet handed out
        self.eof = False

    async def _more(self) -> bool:
        """Feed the parser; False once the body has ended (checked to be complete)."""
        if self.eof:
            return False
        chunk = await self.content.readany()
        if not chunk:
            self.eof = True
            self.parser.finish()
            return False
        self.events.extend(self.parser.feed(chunk))
        return True

    async def next_part(self) -> Part | None:
        while not self.events:
            if self.parser.done or not await self._more():
                return None
        event = self.events.popleft()
        if not isinstance(event, Part):
            raise ByteRangesError("part data where a part header was expected")
        self.left = event.end - event.start + 1
        return event

    async def read(self, n: int = -1) -> bytes:
        if self.left == 0:
            return b""
        while not self.events:
            if not await self._more():
                raise ByteRangesError("the body ended inside a part")
        event = self.events[0]
        if not isinstance(event, Data):
            raise ByteRangesError("a part ended early")
        data = event.data
        if 0 <= n < len(data):
            self.events[0] = Data(data[n:])
            data = data[:n]
        else:
            self.events.popleft()
        self.left -= len(data)
        if self.left == 0:
            while not self.events and not self.parser.done:  # confirm the part's end
                if not await self._more():
                    break
        return data

    async def readany(self) -> bytes:
        return await self.read()

    async def finish(self) -> None:
        """After the last part asked for: the body must end there."""
        while not self.parser.done:
            if not await self._more():
                break
        if self.events:
            raise ByteRangesError("more parts than ranges asked for")
        while await self._more():  # the epilogue, if any, up to the body's end
            pass
