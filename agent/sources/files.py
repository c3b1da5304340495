"""`files` and `model` sources: a file or a directory tree, content-defined chunks.

Unchanged files are skipped by (size, mtime, inode, ctime) against the previous
scan, unless their mtime is too close to that scan to be trusted ("racy": the file
could have changed in the same clock tick), in which case they are re-read; a
re-read unchanged file costs hashing only, since its chunks dedup.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amber.agent.sources.registry import (
    ScanContext,
    ScanResult,
    open_listed,
    read_pieces,
    source_root,
    utf8_name,
    walk,
)
from amber.protocol.records import Entry

RACY_NS = 2_000_000_000


def _stat_key(st: Any) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


async def scan_files(ctx: ScanContext) -> ScanResult:
    src = ctx.source
    root = source_root(src)
    scan_start = time.time_ns()
    prev_files: dict[str, list[int]] = ctx.prev_state.get("files", {})
    prev_scan = int(ctx.prev_state.get("scan_ns", 0))
    cdc = ctx.make_cdc(src.kind)
    entries: list[Entry | None] = []
    state: dict[str, list[int]] = {}
    todo: list[tuple[int, Path, str, Any]] = []  # files to read: slot, path, rel, listed stat
    for rel, st in walk(root, src.exclude):
        full = root if not root.is_dir() else root / rel
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path=rel, type="d", mode=mode, mtime_ns=st.st_mtime_ns))
        elif stat.S_ISLNK(st.st_mode):
            target = str(full.readlink())
            if utf8_name(target):
                entries.append(Entry(path=rel, type="l", mode=mode, target=target))
        elif stat.S_ISREG(st.st_mode):
            key = _stat_key(st)
            prev = ctx.prev_entry(rel)
            trusted = st.st_mtime_ns < prev_scan - RACY_NS
            if prev is not None and prev_files.get(rel) == key and trusted:
                entries.append(prev)
            else:
                todo.append((len(entries), full, rel, st))
                entries.append(None)
            state[rel] = key
    # every changed file through one pipeline: it does not drain between files
    swapped: set[str] = set()  # swapped between listing and reading: not read
    streams = (_file_pieces(full, rel, st, src.name, cdc, swapped) for _, full, rel, st in todo)
    results = await ctx.writer.write_streams(streams)
    for (slot, _, rel, st), res in zip(todo, results, strict=True):
        if rel in swapped:  # the previous version stays, if there is one
            entries[slot] = ctx.prev_entry(rel)
            state.pop(rel, None)
            continue
        entries[slot] = Entry(
            path=rel,
            type="f",
            mode=stat.S_IMODE(st.st_mode),
            size=res.size,
            mtime_ns=st.st_mtime_ns,
            digest=res.digest,
            chunks=tuple(res.chunks),
        )
    done = [e for e in entries if e is not None]
    meta: dict[str, Any] = {"root_is_dir": root.is_dir(), "root_name": root.name}
    if root.is_dir():  # restored onto the root too: a 0700 secrets dir must not come back 0755
        meta["root_mode"] = stat.S_IMODE(root.stat().st_mode)
    if src.kind == "model":
        meta["artifacts"] = {
            e.path: {"size": e.size, "blake3": (e.digest or b"").hex()}
            for e in done
            if e.type == "f"
        }
    return ScanResult(done, meta, {"files": state, "scan_ns": scan_start})


def _file_pieces(
    full: Path, rel: str, listed: Any, name: str, cdc: Any, swapped: set[str]
) -> Iterator[bytes]:
    """One file's content-defined chunks; opened when the reader thread gets to it, and
    only if it still is the file that was listed (else ``rel`` goes into ``swapped``)."""
    fh = open_listed(full, name, listed)
    if fh is None:
        swapped.add(rel)
        return
    with fh:
        yield from read_pieces(fh, 0, cdc, full, name)
