"""Restoring regular files: windows of chunks through fetch, decode, write and sync.

The files to restore are cut into *windows*: runs of chunk refs of about
``WINDOW_BYTES``, in file order, so one window may hold the tail of one file and many
whole small files after it. Four stages work on different windows at the same time:

1. fetch: one ``get_chunks`` call for the window's distinct ids, one call at a time
   (a hub link keeps its own requests in flight, DECISIONS.md D21), the next one as
   soon as the last returned;
2. decode, on the pool: authenticate, decrypt, decompress and hash every chunk back to
   its id, the window split across the pool's workers;
3. write, on one writer thread, in file order: write each file's pieces, feed its
   whole-file BLAKE3 and, when the file is complete, check its size and digest;
4. sync, on a few sync threads: fsync and close each complete file. Several files
   sync at once (a filesystem commits their fsyncs together), and a large file's
   written pages are sent to disk every ``FLUSH_BYTES`` while it is still being written,
   so its final fsync has little left to wait for.

At most ``DEPTH`` windows wait between fetch and write, plus one being written and
one waiting for a place in the queue, so memory stays bounded whatever the file
sizes. ``run`` returns only when every chunk and every file verified and every file
is on disk; the caller renames into place only after that.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from amber.agent.restore.chunksource import ChunkSource
from amber.protocol.chunk import decode_chunk
from amber.protocol.errors import IntegrityError, NotFoundError
from amber.protocol.keys import VaultKeys
from amber.protocol.records import Entry

WINDOW_BYTES = 8 * 1024 * 1024
DEPTH = 2  # windows fetched (and being decoded) ahead of the one being written
MAX_UNSYNCED = 128  # complete files waiting for their fsync before the writer waits
SYNC_THREADS = 4  # fsync waits on the disk, not the CPU
FLUSH_BYTES = 32 * 1024 * 1024


@dataclass(eq=False)
class FileTask:
    """One regular file to restore (``target`` None: verify only)."""

    entry: Entry
    target: Path | None
    # made when the file's first piece is written and dropped once checked: a BLAKE3
    # hasher holds about 2 KB, so one per file of a million-file source would take 2 GB
    hasher: blake3.blake3 | None = None
    written: int = 0
    fh: BinaryIO | None = None
    unflushed: int = 0
    flushing: Future[None] | None = None  # the early writeback of this file, if any

    def check(self) -> None:
        e, digest = self.entry, (self.hasher or blake3.blake3()).digest()
        self.hasher = None
        if self.written != e.size or (e.digest is not None and digest != e.digest):
            raise IntegrityError(f"{e.path}: restored content does not match its recorded digest")


@dataclass
class Part:
    """The refs of one file that fall into one window."""

    file: FileTask
    refs: Sequence[tuple[bytes, int]]
    first: bool
    last: bool


@dataclass
class Window:
    parts: list[Part]
    ids: list[bytes]  # distinct chunk ids, in first-use order
    size: int


def plan_windows(files: Iterable[FileTask], limit: int) -> Iterator[Window]:
    """Cut the files' chunk lists into windows of about ``limit`` bytes, in order."""
    parts: list[Part] = []
    ids: dict[bytes, None] = {}
    size = 0
    for f in files:
        refs = f.entry.chunks
        start = 0
        while True:
            end = start
            while end < len(refs) and size < limit:
                ids.setdefault(refs[end][0])
                size += refs[end][1]
                end += 1
            parts.append(Part(f, refs[start:end], start == 0, end == len(refs)))
            start = end
            if size >= limit:
                yield Window(parts, list(ids), size)
                parts, ids, size = [], {}, 0
            if start == len(refs):
                break
    if parts:
        yield Window(parts, list(ids), size)


class FileRestore:
    """Restore (or verify) a sequence of files from a chunk source; see the module doc."""

    def __init__(
        self,
        keys: VaultKeys,
        chunks: ChunkSource,
        pool: Executor,
        on_window: Callable[[Window], None] = lambda w: None,
    ) -> None:
        self.keys, self.chunks, self.pool, self.on_window = keys, chunks, pool, on_window
        self.workers = max(1, getattr(pool, "_max_workers", 2))
        self.opened: list[FileTask] = []
        self.fetching = asyncio.Lock()  # FIFO: windows are fetched in order
        self.unsynced: deque[Future[None]] = deque()

    async def run(self, files: Iterable[FileTask]) -> None:
        writer = ThreadPoolExecutor(1, thread_name_prefix="amber-write")
        syncer = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="amber-sync")
        try:
            queue: asyncio.Queue[tuple[Window, asyncio.Task[dict[bytes, bytes]]] | None]
            queue = asyncio.Queue(DEPTH)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._fetch_all(plan_windows(files, WINDOW_BYTES), queue, tg))
                    tg.create_task(self._write_all(queue, writer, syncer))
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None  # the typed error, not a group of one
            while self.unsynced:
                await asyncio.wrap_future(self.unsynced.popleft())
        finally:
            await _shutdown(writer, syncer)
            for f in self.opened:
                if f.fh is not None:
                    f.fh.close()

    async def _fetch_all(
        self,
        windows: Iterator[Window],
        queue: asyncio.Queue[tuple[Window, asyncio.Task[dict[bytes, bytes]]] | None],
        tg: asyncio.TaskGroup,
    ) -> None:
        for w in windows:
            await queue.put((w, tg.create_task(self._fetch(w))))
        await queue.put(None)

    async def _fetch(self, w: Window) -> dict[bytes, bytes]:
        """Fetch a window, then authenticate and decrypt it across the pool's workers."""
        async with self.fetching:
            blobs = await self.chunks.get_chunks(w.ids) if w.ids else {}
        _check_found(w, blobs)
        loop = asyncio.get_running_loop()
        groups = [w.ids[i :: self.workers] for i in range(self.workers)]
        done = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, _decode_many, self.keys, g, blobs)
                for g in groups
                if g
            )
        )
        return {cid: plain for part in done for cid, plain in part}

    async def _write_all(
        self,
        queue: asyncio.Queue[tuple[Window, asyncio.Task[dict[bytes, bytes]]] | None],
        writer: Executor,
        syncer: Executor,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            w, decoding = item
            plain = await decoding
            await loop.run_in_executor(writer, self._write_window, w, plain, syncer)
            self.on_window(w)

    def _write_window(self, w: Window, plain: dict[bytes, bytes], syncer: Executor) -> None:
        """(writer thread) Write and hash each part in order; check and sync whole files."""
        for p in w.parts:
            f = p.file
            if p.first and f.target is not None:
                f.target.parent.mkdir(parents=True, exist_ok=True)
                self.opened.append(f)
                f.fh = _create(f.target, f.entry.path)  # closed by the sync thread or run()
            if p.first:
                f.hasher = blake3.blake3()
            for cid, n in p.refs:
                piece = plain[cid]
                if len(piece) != n:
                    raise IntegrityError(f"{f.entry.path}: chunk {cid.hex()[:16]} has a bad length")
                assert f.hasher is not None
                f.hasher.update(piece)
                f.written += n
                if f.fh is not None:
                    f.fh.write(piece)
                    f.unflushed += n
            if f.fh is not None and not p.last and f.unflushed >= FLUSH_BYTES:
                if f.flushing is None or f.flushing.done():
                    f.unflushed = 0
                    f.flushing = syncer.submit(os.fdatasync, f.fh.fileno())
            if p.last:
                f.check()
                if f.fh is not None:
                    if len(self.unsynced) >= MAX_UNSYNCED:
                        self.unsynced.popleft().result()
                    self.unsynced.append(syncer.submit(_sync_close, f))


def _check_found(w: Window, blobs: dict[bytes, bytes]) -> None:
    lost = {i for i in w.ids if i not in blobs}
    if not lost:
        return
    path = next(p.file.entry.path for p in w.parts if any(c in lost for c, _ in p.refs))
    raise NotFoundError(
        f"{len(lost)} chunk(s) of {path} are not available: "
        + ", ".join(i.hex()[:16] for i in list(lost)[:3]),
        hint="sync with the hub, or restore from a bundle that holds them",
    )


def _decode_many(
    keys: VaultKeys, ids: list[bytes], blobs: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [(cid, decode_chunk(keys, cid, blobs[cid])) for cid in ids]


def _create(target: Path, rel: str) -> BinaryIO:
    """A new file in the staging directory: never an existing one, never through a
    symlink (a manifest naming one path twice, or a path a symlink took, is refused)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except (FileExistsError, IsADirectoryError):
        raise IntegrityError(f"manifest entry {rel!r} names a path restored twice") from None
    return os.fdopen(fd, "wb")


def _sync_close(f: FileTask) -> None:
    fh = f.fh
    assert fh is not None
    if f.flushing is not None:
        f.flushing.result()  # submitted earlier, so running or done: never a deadlock
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    f.fh = None


async def _shutdown(*executors: ThreadPoolExecutor) -> None:
    """Wait (off the loop) until no thread of ours still touches the files."""

    def stop() -> None:
        for ex in executors:
            ex.shutdown(wait=True, cancel_futures=True)

    done = asyncio.get_running_loop().run_in_executor(None, stop)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        stop()  # cancelled while waiting: still never leave a thread writing
        raise
