"""The chunk pipeline: read → id → dedup against the journal → zstd/AES-GCM → journal.

Reading and cutting run in a dedicated reader thread, ids and encryption in a
thread pool (BLAKE3, zstd and AES-GCM release the GIL), pack appends in the
journal's pack thread; the event loop only coordinates. Work moves in windows of
``WINDOW_BYTES`` so memory stays flat whatever the file size: the next window is read
while up to ``DEPTH`` windows are being encoded, each split into small groups queued
on the pool, so the workers never wait for a window to drain before starting on the
next one. A window may span several streams (the changed files of one source), so small
files share dedup queries, pool tasks and journal writes, and the pipeline does not
drain between files.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import blake3

from amber.agent.journal import Journal
from amber.protocol.chunk import chunk_id, encode_chunk
from amber.protocol.errors import JournalFullError
from amber.protocol.keys import VaultKeys

WINDOW_BYTES = 8 * 1024 * 1024
DEPTH = 2  # windows being encoded at once
GROUP_BYTES = 2 * 1024 * 1024  # plaintext per pool task

Progress = Callable[[int], None]


@dataclass
class WriteStats:
    read_bytes: int = 0
    new_chunks: int = 0
    new_bytes: int = 0  # encrypted bytes added to the journal
    dedup_chunks: int = 0


@dataclass
class StreamResult:
    chunks: list[tuple[bytes, int]] = field(default_factory=list)
    size: int = 0
    digest: bytes = b""


class _StreamReader:
    """Reader-thread side of :meth:`ChunkWriter.write_streams`.

    Walks the streams in order and cuts windows that may span several of them, so a
    tree of small files costs one dedup query, a few pool tasks and one journal write
    per window instead of per file. Only the reader thread calls :meth:`read_window`;
    the event loop reads ``digests`` and ``count`` once the window that ended a stream
    is back.
    """

    def __init__(self, streams: Iterable[Iterator[bytes]], keys: VaultKeys, digest: bool):
        self._streams = iter(streams)
        self._keys = keys
        self._digest = digest
        self._cur: Iterator[bytes] | None = None
        self._hasher: blake3.blake3 | None = None
        self.count = 0  # streams started so far
        self.digests: dict[int, bytes] = {}

    def read_window(self) -> list[tuple[int, bytes, bytes]]:
        """Cut the next window of ``(stream, id, piece)`` (ids computed here)."""
        out: list[tuple[int, bytes, bytes]] = []
        total = 0
        while total < WINDOW_BYTES:
            if self._cur is None:
                nxt = next(self._streams, None)
                if nxt is None:
                    break
                self._cur, self.count = nxt, self.count + 1
                self._hasher = blake3.blake3() if self._digest else None
            idx, hasher, keys = self.count - 1, self._hasher, self._keys
            for piece in self._cur:
                if hasher is not None:
                    hasher.update(piece)
                out.append((idx, chunk_id(keys, piece), piece))
                total += len(piece)
                if total >= WINDOW_BYTES:
                    break
            else:  # this stream is done
                if hasher is not None:
                    self.digests[idx] = hasher.digest()
                self._cur = None
        return out

    def close(self) -> None:
        """Close the stream being read (its file), once the reader thread is idle."""
        cur, self._cur = self._cur, None
        close = getattr(cur, "close", None)
        if close is not None:
            close()


async def _settle(fut: Future[Any]) -> None:
    """Wait until a call queued on an executor has finished or was cancelled before it
    started, even if this task is cancelled again meanwhile (it is already unwinding)."""
    while not fut.done():
        try:
            await asyncio.shield(asyncio.wrap_future(fut))
        except BaseException:  # the call's own error, or a second cancellation: wait on
            pass


def _encode_many(
    keys: VaultKeys, level: int, items: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    return [encode_chunk(keys, p, level=level, cid=cid) for cid, p in items]


@dataclass
class _Pending:
    """A window whose new chunks are being encoded on the pool."""

    window: list[tuple[int, bytes, bytes]]  # (stream, id, plaintext)
    todo: dict[bytes, int]  # id -> plaintext size of the chunks being encoded
    jobs: list[asyncio.Future[list[tuple[bytes, bytes]]]]


def _groups(items: list[tuple[bytes, bytes]]) -> Iterator[list[tuple[bytes, bytes]]]:
    group: list[tuple[bytes, bytes]] = []
    size = 0
    for item in items:
        group.append(item)
        size += len(item[1])
        if size >= GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


class ChunkWriter:
    """Writes chunk plaintexts into the journal as tentative chunks, deduplicated."""

    def __init__(
        self,
        journal: Journal,
        keys: VaultKeys,
        pool: Executor,
        reader: Executor,
        *,
        level: int,
        budget: int,
        progress: Progress | None = None,
    ) -> None:
        self.journal = journal
        self.keys = keys
        self.pool = pool
        self.reader = reader
        self.level = level
        self.budget = budget  # journal bytes this checkpoint may still add
        self.progress = progress
        self.stats = WriteStats()
        self._seen: set[bytes] = set()
        self._pending_put: asyncio.Task[None] | None = None

    async def write_stream(self, pieces: Iterator[bytes], *, digest: bool = True) -> StreamResult:
        """Consume ``pieces`` (run in the reader thread) and return the chunk list."""
        return (await self.write_streams([pieces], digest=digest))[0]

    async def write_streams(
        self, streams: Iterable[Iterator[bytes]], *, digest: bool = True
    ) -> list[StreamResult]:
        """Write several streams through one pipeline, one result per stream in order.

        ``streams`` and each stream are consumed in the reader thread, so a stream may
        open its file lazily (a generator); the stream being read when this fails or
        is cancelled is closed before it returns.
        """
        reader = _StreamReader(streams, self.keys, digest)
        results: list[StreamResult] = []
        nxt = self.reader.submit(reader.read_window)
        pending: deque[_Pending] = deque()
        try:
            while True:
                window = await asyncio.wrap_future(nxt)
                if not window:
                    break
                nxt = self.reader.submit(reader.read_window)
                pending.append(await self._submit(window))
                if len(pending) >= DEPTH:
                    await self._finish(pending.popleft(), results)
            while pending:
                await self._finish(pending.popleft(), results)
        finally:
            # never close a stream (a file the caller may close next) while the reader
            # thread is in it: a cancelled await leaves that thread running
            await _settle(nxt)
            reader.close()
            for p in pending:  # nor leave encode jobs running unobserved
                await asyncio.gather(*p.jobs, return_exceptions=True)
        while len(results) < reader.count:  # empty streams at the end
            results.append(StreamResult())
        for idx, res in enumerate(results):
            res.digest = reader.digests.get(idx, b"")
        return results

    async def _submit(self, window: list[tuple[int, bytes, bytes]]) -> _Pending:
        """Deduplicate a window and queue its new chunks on the pool."""
        loop = asyncio.get_running_loop()
        fresh = list(dict.fromkeys(cid for _, cid, _ in window if cid not in self._seen))
        # marked before the lookup: a window of another stream, cut meanwhile, neither
        # asks for these again nor writes them a second time
        self._seen.update(fresh)
        known = await self.journal.known_chunks(fresh) if fresh else set()
        new = set(fresh) - known
        items = list({cid: p for _, cid, p in window if cid in new}.items())
        jobs = [
            loop.run_in_executor(self.pool, _encode_many, self.keys, self.level, g)
            for g in _groups(items)
        ]
        return _Pending(window, {cid: len(p) for cid, p in items}, jobs)

    async def _finish(self, job: _Pending, results: list[StreamResult]) -> None:
        """Collect a window's blobs (in order) and hand them to the journal."""
        encoded = await asyncio.gather(*job.jobs)
        rows = [(cid, job.todo[cid], blob) for group in encoded for cid, blob in group]
        self._charge(rows)
        if self._pending_put is not None:  # one journal write in flight while we encode
            await self._pending_put
        if rows:  # chained: the last write finishes after every earlier one
            self._pending_put = asyncio.create_task(self._put(self._pending_put, rows))
        size = 0
        for idx, cid, p in job.window:
            while len(results) <= idx:  # streams before this one may have been empty
                results.append(StreamResult())
            res = results[idx]
            res.chunks.append((cid, len(p)))
            res.size += len(p)
            size += len(p)
        self.stats.read_bytes += size
        self.stats.dedup_chunks += len(job.window) - len(rows)
        if self.progress:
            self.progress(size)

    def _charge(self, rows: list[tuple[bytes, int, bytes]]) -> None:
        added = sum(len(b) for _, _, b in rows)
        self.stats.new_chunks += len(rows)
        self.stats.new_bytes += added
        if self.stats.new_bytes > self.budget:
            raise JournalFullError(
                f"this checkpoint needs more than the {self.budget} bytes left under the "
                "journal's size bound; nothing was committed"
            )

    async def _put(
        self, after: asyncio.Task[None] | None, rows: list[tuple[bytes, int, bytes]]
    ) -> None:
        if after is not None:
            await after  # its failure fails this write too
        await self.journal.put_chunks(rows, time.time_ns() // 1000)

    async def flush(self) -> None:
        """Wait for every journal write so far; call before committing."""
        while self._pending_put is not None:
            task = self._pending_put
            await task
            if self._pending_put is task:
                self._pending_put = None

    async def abort(self) -> None:
        if self._pending_put is not None:
            task, self._pending_put = self._pending_put, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
