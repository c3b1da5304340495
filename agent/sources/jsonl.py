"""`jsonl` sources: append-only logs, shipped from the last saved offset.

For each log (a file, or every ``*.jsonl*`` file of a directory) the previous scan
recorded its size, inode and BLAKE3 of the first and last 64 KiB it had saved. If
the log still has that inode, is at least that long, and both windows still hash
the same, only the appended tail is read and chunked; the entry keeps the old
chunk list and adds the new chunks. Otherwise (rotation, truncation, rewrite) the
whole log is chunked again. An incrementally saved entry has no whole-file digest:
its content is covered by the keyed ids of its chunks. The logs of a source go
through one pipeline, ``LOGS_AT_ONCE`` open at a time, so a directory of many small
logs costs a few journal writes rather than one per log.
"""

from __future__ import annotations

import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from amber.agent.sources.registry import (
    ScanContext,
    ScanResult,
    open_listed,
    read_pieces,
    reading,
    source_root,
    walk,
)
from amber.protocol.records import Entry

WINDOW = 64 * 1024
LOGS_AT_ONCE = 256  # logs open and streamed through one pipeline together


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
    entries: list[Entry | None] = []
    logs: list[tuple[int, Path, str, Any]] = []  # (slot in entries, path, rel, stat)
    for rel, st in walk(root, src.exclude):
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(path=rel, type="d", mode=stat.S_IMODE(st.st_mode)))
            continue
        if not stat.S_ISREG(st.st_mode) or (root.is_dir() and ".jsonl" not in rel):
            continue
        logs.append((len(entries), root if not root.is_dir() else root / rel, rel, st))
        entries.append(None)
    state: dict[str, Any] = {}
    for i in range(0, len(logs), LOGS_AT_ONCE):
        batch = logs[i : i + LOGS_AT_ONCE]
        for (slot, _, rel, _), done in zip(batch, await _scan_logs(ctx, batch, cdc), strict=True):
            if done is None:  # swapped between listing and reading: the previous version
                entries[slot] = ctx.prev_entry(rel)
                if entries[slot] is not None and rel in ctx.prev_state:
                    state[rel] = ctx.prev_state[rel]
                continue
            entries[slot], state[rel] = done
    meta: dict[str, Any] = {"root_is_dir": root.is_dir(), "root_name": root.name}
    if root.is_dir():
        meta["root_mode"] = stat.S_IMODE(root.stat().st_mode)
    return ScanResult([e for e in entries if e is not None], meta, state)


def _resume_at(fh: BinaryIO, st: Any, prev: Entry | None, state_of: Any) -> int:
    """Where to start reading: the saved size if the saved prefix is unchanged, else 0."""
    if prev is None or not isinstance(state_of, dict):
        return 0
    old = int(state_of.get("size", -1))
    if (
        state_of.get("ino") == st.st_ino
        and 0 <= old <= st.st_size
        and old == prev.size
        and list(_window_hashes(fh, old)) == [state_of.get("head"), state_of.get("tail")]
    ):
        return old
    return 0


async def _scan_logs(
    ctx: ScanContext, batch: list[tuple[int, Path, str, Any]], cdc: Any
) -> list[tuple[Entry, dict[str, Any]] | None]:
    """Scan a batch of logs through one pipeline (appended tails and rewritten logs);
    None for a log that is no longer the file listed (registry.open_listed)."""
    with ExitStack() as files:
        plans: list[tuple[BinaryIO, int, Entry | None] | None] = []
        for _, full, rel, st in batch:
            opened = open_listed(full, ctx.source.name, st)
            if opened is None:
                plans.append(None)
                continue
            fh = files.enter_context(opened)
            prev = ctx.prev_entry(rel)
            with reading(full, ctx.source.name):
                start = _resume_at(fh, st, prev, ctx.prev_state.get(rel))
            plans.append((fh, start, prev))
        todo = [(log, plan) for log, plan in zip(batch, plans, strict=True) if plan is not None]
        results = iter(
            await ctx.writer.write_streams(
                read_pieces(fh, start, cdc, full, ctx.source.name)
                for (_, full, _, _), (fh, start, _) in todo
            )
        )
        return [
            None if plan is None else _logged(log, plan, next(results), ctx.source.name)
            for log, plan in zip(batch, plans, strict=True)
        ]


def _logged(
    log: tuple[int, Path, str, Any], plan: tuple[BinaryIO, int, Entry | None], res: Any, name: str
) -> tuple[Entry, dict[str, Any]]:
    """The entry and saved state of one log read from ``start`` (``res``: what was read)."""
    (_, full, rel, st), (fh, start, prev) = log, plan
    size = start + res.size
    with reading(full, name):
        head, tail = _window_hashes(fh, size)
    saved = {"size": size, "ino": st.st_ino, "head": head, "tail": tail}
    mode = stat.S_IMODE(st.st_mode)
    if prev is not None and start > 0 and res.size == 0 and prev.mode == mode:
        return prev, saved  # nothing appended: the manifest is reused
    chunks = list(prev.chunks) if start > 0 and prev is not None else []
    entry = Entry(
        path=rel,
        type="f",
        mode=mode,
        size=size,
        mtime_ns=st.st_mtime_ns,
        digest=res.digest if start == 0 else None,  # a tail's digest says nothing
        chunks=tuple(chunks + res.chunks),
    )
    return entry, saved
