"""`sqlite` and `state` sources: a consistent copy through SQLite's online backup API.

Never a raw copy of a live database: the backup API copies page by page inside a
read transaction, so a writer in another process cannot tear the copy. The copy
keeps the source's page layout, so it is cut into fixed page-aligned blocks and a
changed page maps to a changed block.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from pathlib import Path

from amber.agent.sources.chunking import aligned_block_size, block_pieces
from amber.agent.sources.registry import ScanContext, ScanResult, source_root
from amber.protocol.errors import DiskFullError, SourceBusyError, SourceError
from amber.protocol.records import Entry


def _stat_key(path: Path) -> list[int]:
    """Size, mtime and inode of the database and its WAL (ctime is left out: readers
    touch the WAL's ctime without changing it). An empty WAL counts as no WAL: a
    reader (our own backup connection) creates one without changing any content."""
    out: list[int] = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
        except FileNotFoundError:
            st = None
        if st is None or (p is not path and st.st_size == 0):
            out += [-1, -1, -1]
        else:
            out += [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def backup_copy(src: Path, dst: Path, timeout: float, name: str) -> int:
    """Copy ``src`` to ``dst`` with the backup API; return the page size."""
    uri = f"file:{src}?mode=ro"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(uri, uri=True, timeout=timeout) as con:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                dst.unlink(missing_ok=True)
                out = sqlite3.connect(dst)
                try:
                    con.backup(out)
                    page_size = out.execute("PRAGMA page_size").fetchone()[0]
                finally:
                    out.close()
            con.close()
            return int(page_size)
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if ("locked" in text or "busy" in text) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if "full" in text:  # the copy in the state directory's tmp/ did not fit
                raise DiskFullError(
                    f"no space left for the copy of source {name!r} in {dst.parent}: "
                    "nothing was committed"
                ) from None
            if "locked" in text or "busy" in text:
                raise SourceBusyError(
                    f"source {name!r}: {src} stayed locked by a writer for over {timeout:g}s"
                ) from None
            raise SourceError(
                f"source {name!r}: {src} is not a readable SQLite database: {text}"
            ) from None


def _check_same_file(path: Path, listed: os.stat_result, name: str) -> None:
    """SQLite opens a path following symlinks: refuse a copy if the database was
    swapped (for a symlink, or another file) while it was being copied."""
    try:
        now = os.lstat(path)
    except OSError as exc:
        raise SourceError(f"source {name!r}: {path} vanished: {exc.strerror}") from None
    if stat.S_ISLNK(now.st_mode) or (now.st_dev, now.st_ino) != (listed.st_dev, listed.st_ino):
        raise SourceError(
            f"source {name!r}: {path} was replaced while it was being copied",
            hint="nothing was committed; the next checkpoint copies it again",
        )


async def scan_sqlite(ctx: ScanContext) -> ScanResult:
    src = ctx.source
    path = source_root(src)
    if path.is_dir():
        raise SourceError(f"source {src.name!r}: {path} is a directory, not a SQLite database")
    key = _stat_key(path)
    prev = ctx.prev_entry(path.name)
    if prev is not None and ctx.prev_state.get("stat") == key and ctx.prev_manifest:
        return ScanResult([prev], dict(ctx.prev_manifest.meta), dict(ctx.prev_state))
    ctx.tmp_dir.mkdir(parents=True, exist_ok=True)
    copy = ctx.tmp_dir / f"{src.name}.backup.db"
    listed = os.lstat(path)
    try:
        page_size = await asyncio.to_thread(backup_copy, path, copy, ctx.busy_timeout, src.name)
        _check_same_file(path, listed, src.name)
        block = aligned_block_size(page_size)
        with os.fdopen(os.open(copy, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
            res = await ctx.writer.write_stream(block_pieces(fh, block))
    finally:  # with the copy's rollback journal, which a failed copy can leave behind
        for leftover in (copy, copy.with_name(copy.name + "-journal")):
            leftover.unlink(missing_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    entry = Entry(
        path=path.name,
        type="f",
        mode=mode,
        size=res.size,
        mtime_ns=time.time_ns(),
        digest=res.digest,
        chunks=tuple(res.chunks),
    )
    meta = {
        "root_is_dir": False,
        "root_name": path.name,
        "page_size": page_size,
        "block_size": block,
    }
    return ScanResult([entry], meta, {"stat": key})
