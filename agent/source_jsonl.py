"""`jsonl` sources: append-only logs, shipped from the last saved offset.

For each log (a file, or every ``*.jsonl*`` file of a directory) the previous scan
recorded its size, inode and BLAKE3 of the first and last 64 KiB it had saved. If
the log still has that inode, is at least that long, and both windows still hash
the same, only the appended tail is read and chunked; the entry keeps the old
chunk list and adds the new chunks. Otherwise (rotation, truncation, rewrite) the
whole log is chunked again. An incrementally saved entry has no whole-file digest:
its content is covered by the keyed ids of its chunks.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from amber.protocol.records import Entry

from .chunking import cdc_pieces
from .sources import ScanContext, ScanResult, open_for_read, source_root, walk

WINDOW = 64 * 1024


def _window_hashes(fh: BinaryIO, size: int) -> tuple[bytes, bytes]:
    fh.seek(0)
    head = blake3.blake3(fh.read(min(WINDOW, size))).digest()
    start = max(0, size - WINDOW)
    fh.seek(start)
    tail = blake3.blake3(fh.read(size - start)).digest()
    return head, tail


async def scan_jsonl(ctx: ScanContext) -> ScanResult:
    src = ctx.source
    root = source_root(src)
    cdc = ctx.make_cdc("files")
    entries: list[Entry] = []
    state: dict[str, Any] = {}
    for rel, st in walk(root, src.exclude):
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path=rel, type="d", mode=stat.S_IMODE(st.st_mode)))
            continue
        if not stat.S_ISREG(st.st_mode) or (root.is_dir() and ".jsonl" not in rel):
            continue
        full = root if not root.is_dir() else root / rel
        entry, saved = await _scan_log(
            ctx, full, rel, st, state_of=ctx.prev_state.get(rel), cdc=cdc
        )
        entries.append(entry)
        state[rel] = saved
    meta: dict[str, Any] = {"root_is_dir": root.is_dir(), "root_name": root.name}
    if root.is_dir():
        meta["root_mode"] = stat.S_IMODE(root.stat().st_mode)
    return ScanResult(entries, meta, state)


async def _scan_log(
    ctx: ScanContext, full: Path, rel: str, st: Any, *, state_of: Any, cdc: Any
) -> tuple[Entry, dict[str, Any]]:
    prev = ctx.prev_entry(rel)
    with open_for_read(full, ctx.source.name) as fh:
        start, chunks, digest = 0, [], True
        if prev is not None and isinstance(state_of, dict):
            old = int(state_of.get("size", -1))
            if (
                state_of.get("ino") == st.st_ino
                and 0 <= old <= st.st_size
                and old == prev.size
                and list(_window_hashes(fh, old)) == [state_of.get("head"), state_of.get("tail")]
            ):
                start, chunks, digest = old, list(prev.chunks), False
        fh.seek(start)
        res = await ctx.writer.write_stream(cdc_pieces(fh, cdc), digest=digest and start == 0)
        size = start + res.size
        head, tail = _window_hashes(fh, size)
    saved = {"size": size, "ino": st.st_ino, "head": head, "tail": tail}
    if prev is not None and start > 0 and res.size == 0 and prev.mode == stat.S_IMODE(st.st_mode):
        return prev, saved  # nothing appended: the same entry, so the manifest is reused
    entry = Entry(
        path=rel,
        type="f",
        mode=stat.S_IMODE(st.st_mode),
        size=size,
        mtime_ns=st.st_mtime_ns,
        digest=res.digest if start == 0 else None,
        chunks=tuple(chunks + res.chunks),
    )
    return entry, saved
