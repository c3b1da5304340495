"""The chunk pipeline: read → id → dedup against the journal → zstd/AES-GCM → journal.

Reading and cutting run in a dedicated reader thread, ids and encryption in a
thread pool (BLAKE3, zstd and AES-GCM release the GIL), pack appends in the
journal's pack thread; the event loop only coordinates. Work moves in windows of
``WINDOW_BYTES`` so memory stays flat whatever the file size: the next window is read
while up to ``DEPTH`` windows are being encoded, each split into small groups queued
on the pool, so the workers never wait for a window to drain before starting on the
next one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import blake3

from amber.protocol.chunk import chunk_id, encode_chunk
from amber.protocol.errors import JournalFullError
from amber.protocol.keys import VaultKeys

from .journal import Journal

WINDOW_BYTES = 16 * 1024 * 1024
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


def _read_window(
    it: Iterator[bytes], hasher: blake3.blake3 | None, keys: VaultKeys
) -> list[tuple[bytes, bytes]]:
    """Cut the next window of pieces and compute their ids (in the reader thread)."""
    out: list[tuple[bytes, bytes]] = []
    total = 0
    for piece in it:
        if hasher is not None:
            hasher.update(piece)
        out.append((chunk_id(keys, piece), piece))
        total += len(piece)
        if total >= WINDOW_BYTES:
            break
    return out


def _encode_many(
    keys: VaultKeys, level: int, items: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    return [encode_chunk(keys, p, level=level, cid=cid) for cid, p in items]


@dataclass
class _Pending:
    """A window whose new chunks are being encoded on the pool."""

    window: list[tuple[bytes, bytes]]
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
        loop = asyncio.get_running_loop()
        hasher = blake3.blake3() if digest else None
        result = StreamResult()
        nxt = loop.run_in_executor(self.reader, _read_window, pieces, hasher, self.keys)
        pending: deque[_Pending] = deque()
        try:
            while True:
                window = await nxt
                if not window:
                    break
                nxt = loop.run_in_executor(self.reader, _read_window, pieces, hasher, self.keys)
                pending.append(await self._submit(window))
                if len(pending) >= DEPTH:
                    await self._finish(pending.popleft(), result)
            while pending:
                await self._finish(pending.popleft(), result)
        finally:  # never leave the reader thread reading a file the caller is closing
            if not nxt.done():
                await asyncio.gather(nxt, return_exceptions=True)
            for p in pending:  # nor encode jobs running unobserved
                await asyncio.gather(*p.jobs, return_exceptions=True)
        if hasher is not None:
            result.digest = hasher.digest()
        return result

    async def _submit(self, window: list[tuple[bytes, bytes]]) -> _Pending:
        """Deduplicate a window and queue its new chunks on the pool."""
        loop = asyncio.get_running_loop()
        fresh = list(dict.fromkeys(cid for cid, _ in window if cid not in self._seen))
        known = await self.journal.known_chunks(fresh) if fresh else set()
        self._seen.update(cid for cid, _ in window)  # a later window never asks again
        new = set(fresh) - known
        items = list({cid: p for cid, p in window if cid in new}.items())
        jobs = [
            loop.run_in_executor(self.pool, _encode_many, self.keys, self.level, g)
            for g in _groups(items)
        ]
        return _Pending(window, {cid: len(p) for cid, p in items}, jobs)

    async def _finish(self, job: _Pending, result: StreamResult) -> None:
        """Collect a window's blobs (in order) and hand them to the journal."""
        encoded = await asyncio.gather(*job.jobs)
        rows = [(cid, job.todo[cid], blob) for group in encoded for cid, blob in group]
        self._charge(rows)
        await self.flush()
        if rows:
            self._pending_put = asyncio.create_task(
                self.journal.put_chunks(rows, time.time_ns() // 1000)
            )
        size = 0
        for cid, p in job.window:
            result.chunks.append((cid, len(p)))
            size += len(p)
        result.size += size
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

    async def flush(self) -> None:
        """Wait for the last journal write; call before committing."""
        if self._pending_put is not None:
            task, self._pending_put = self._pending_put, None
            await task

    async def abort(self) -> None:
        if self._pending_put is not None:
            task, self._pending_put = self._pending_put, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
