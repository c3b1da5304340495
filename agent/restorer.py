"""Restoring a checkpoint: fetch, verify, write into staging, then swap into place.

Every chunk is authenticated and hashed back to its id, and every file is checked
against its size and digest before anything is moved into place. Files are written
into a staging directory on the target's filesystem and renamed into place only
when all of them verified, so a failure leaves the target as it was.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import blake3

from amber.protocol.chunk import decode_chunk
from amber.protocol.errors import IntegrityError, NotFoundError, RestoreError
from amber.protocol.records import Checkpoint, Entry, Manifest, decode_checkpoint, decode_manifest

from .identity import NodeIdentity

WINDOW_BYTES = 16 * 1024 * 1024


class ChunkSource(Protocol):
    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]: ...


class RecordSource(Protocol):
    async def record(self, rid: bytes) -> bytes | None: ...


class ChainedChunks:
    """Ask each source in turn for what the earlier ones lacked (journal, then hub)."""

    def __init__(self, *sources: ChunkSource) -> None:
        self.sources = sources

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for src in self.sources:
            missing = [i for i in ids if i not in found]
            if not missing:
                break
            found.update(await src.get_chunks(missing))
        return found


class ChainedRecords:
    """Records from the journal, else from the hub."""

    def __init__(self, *sources: RecordSource) -> None:
        self.sources = sources

    async def record(self, rid: bytes) -> bytes | None:
        for src in self.sources:
            data = await src.record(rid)
            if data is not None:
                return data
        return None


@dataclass
class RestoreStats:
    files: int = 0
    bytes: int = 0
    chunks: int = 0
    sources: list[str] = field(default_factory=list)


class Restorer:
    def __init__(
        self,
        ident: NodeIdentity,
        records: RecordSource,
        chunks: ChunkSource,
        pool: Executor,
        *,
        trusted: set[bytes] | str | None = "own",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """``trusted``: signer keys accepted; "own" = this node's key; None = any valid
        signature (records fetched from the hub may carry a replaced node key; they are
        still authenticated by the vault key)."""
        self.ident, self.records, self.chunks, self.pool = ident, records, chunks, pool
        self.trusted: set[bytes] | None = (
            {ident.signer.public} if trusted == "own" else trusted  # type: ignore[assignment]
        )
        self.progress = progress
        self.stats = RestoreStats()

    async def load(self, cp_id: bytes) -> tuple[Checkpoint, dict[str, Manifest]]:
        data = await self.records.record(cp_id)
        if data is None:
            raise NotFoundError(f"checkpoint {cp_id.hex()[:16]} is not available")
        cp = decode_checkpoint(data, self.ident.keys, trusted=self.trusted)
        manifests: dict[str, Manifest] = {}
        for name, mid in sorted(cp.manifests.items()):
            mdata = await self.records.record(mid)
            if mdata is None:
                raise NotFoundError(f"manifest {mid.hex()[:16]} of source {name!r} is missing")
            manifests[name] = decode_manifest(mdata, self.ident.keys, trusted=self.trusted)
        return cp, manifests

    # --- writing a manifest's entries under a root -----------------------------------

    async def materialize(self, m: Manifest, root: Path | None) -> None:
        """Write (or with ``root=None`` only verify) every entry of ``m`` under ``root``."""
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)  # an empty source is still restored
        for e in m.entries:
            target = None if root is None else root / _safe_rel(e.path)
            if e.type == "d" and target is not None:
                target.mkdir(parents=True, exist_ok=True)
            elif e.type == "l" and target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(e.target, target)
            elif e.type == "f":
                await self._write_file(e, target)
        if root is not None:
            for e in reversed(m.entries):
                target = root / _safe_rel(e.path)
                if e.type in ("f", "d"):
                    os.chmod(target, e.mode)
                    os.utime(target, ns=(e.mtime_ns, e.mtime_ns))
            if m.meta.get("root_is_dir") and isinstance(m.meta.get("root_mode"), int):
                os.chmod(root, m.meta["root_mode"])
        self.stats.sources.append(m.source)

    async def _write_file(self, e: Entry, target: Path | None) -> None:
        """Fetch, decode and write one file as a pipeline: while one window of chunks is
        decoded, the next is fetched and the previous is hashed and written."""
        loop = asyncio.get_running_loop()
        fh = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = open(target, "wb")
        hasher = blake3.blake3()
        windows = _windows(e.chunks)
        fetch = asyncio.ensure_future(self._fetch(windows[0], e)) if windows else None
        pending: asyncio.Future[None] | None = None
        try:
            for idx, window in enumerate(windows):
                assert fetch is not None
                ids, blobs = await fetch
                if idx + 1 < len(windows):
                    fetch = asyncio.ensure_future(self._fetch(windows[idx + 1], e))
                by_id = await self._decode(ids, blobs)
                data = [by_id[cid] for cid, _ in window]
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(self.pool, _consume, data, hasher, fh)
                self.stats.chunks += len(window)
                if self.progress:
                    self.progress(sum(n for _, n in window))
            if pending is not None:
                await pending
                pending = None
            if fh is not None:
                await loop.run_in_executor(self.pool, _sync, fh)
        finally:
            if fetch is not None and not fetch.done():
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            if fh is not None:
                fh.close()
        size = sum(n for _, n in e.chunks)
        if size != e.size or (e.digest is not None and hasher.digest() != e.digest):
            raise IntegrityError(f"{e.path}: restored content does not match its recorded digest")
        self.stats.files += 1
        self.stats.bytes += size

    async def _fetch(
        self, window: list[tuple[bytes, int]], e: Entry
    ) -> tuple[list[bytes], dict[bytes, bytes]]:
        ids = list(dict.fromkeys(cid for cid, _ in window))
        blobs = await self.chunks.get_chunks(ids)
        lost = [i.hex()[:16] for i in ids if i not in blobs]
        if lost:
            raise NotFoundError(
                f"{len(lost)} chunk(s) of {e.path} are not available: " + ", ".join(lost[:3]),
                hint="sync with the hub, or restore from a bundle that holds them",
            )
        return ids, blobs

    async def _decode(self, ids: list[bytes], blobs: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """Authenticate and decrypt a window, split across the pool's workers."""
        loop = asyncio.get_running_loop()
        workers = max(1, getattr(self.pool, "_max_workers", 2))
        groups = [ids[i::workers] for i in range(workers)]
        done = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, _decode_many, self.ident.keys, g, blobs)
                for g in groups
                if g
            )
        )
        return {cid: plain for part in done for cid, plain in part}

    # --- whole checkpoints ----------------------------------------------------------

    async def verify(self, cp_id: bytes, sources: Sequence[str] | None = None) -> RestoreStats:
        _, manifests = await self.load(cp_id)
        for name, m in manifests.items():
            if not sources or name in sources:
                await self.materialize(m, None)
        return self.stats

    async def restore_to(
        self, cp_id: bytes, dest: Path, sources: Sequence[str] | None = None
    ) -> RestoreStats:
        """Restore into ``dest/<source>/...``; ``dest`` must not exist or be empty."""
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RestoreError(
                f"{dest} is not empty" if dest.is_dir() else f"{dest} is not a directory",
                hint="restore into a new directory, or use --in-place",
            )
        _, manifests = await self.load(cp_id)
        chosen = _select(manifests, sources)
        dest.mkdir(parents=True, exist_ok=True)
        staging = dest / f".amber-staging-{uuid.uuid4().hex[:8]}"
        try:
            for name, m in chosen.items():
                await self.materialize(m, staging / name)
            for name in chosen:
                src_dir = staging / name
                if src_dir.exists():
                    os.rename(src_dir, dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.stats


def _select(manifests: dict[str, Manifest], sources: Sequence[str] | None) -> dict[str, Manifest]:
    if not sources:
        return manifests
    unknown = [s for s in sources if s not in manifests]
    if unknown:
        raise NotFoundError(
            f"the checkpoint has no source(s) {', '.join(unknown)}",
            hint=f"it holds: {', '.join(manifests)}",
        )
    return {s: manifests[s] for s in sources}


def _safe_rel(path: str) -> Path:
    p = Path(path)
    if p.is_absolute() or ".." in p.parts or not path:
        raise IntegrityError(f"manifest entry path {path!r} escapes its source root")
    return p


def _windows(chunks: Sequence[tuple[bytes, int]]) -> list[list[tuple[bytes, int]]]:
    out: list[list[tuple[bytes, int]]] = [[]]
    size = 0
    for ref in chunks:
        if size >= WINDOW_BYTES:
            out.append([])
            size = 0
        out[-1].append(ref)
        size += ref[1]
    return [w for w in out if w]


def _decode_many(
    keys: object, ids: list[bytes], blobs: dict[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [(cid, decode_chunk(keys, cid, blobs[cid])) for cid in ids]  # type: ignore[arg-type]


def _consume(data: list[bytes], hasher: blake3.blake3, fh: object) -> None:
    for piece in data:
        hasher.update(piece)
        if fh is not None:
            fh.write(piece)  # type: ignore[attr-defined]


def _sync(fh: object) -> None:
    fh.flush()  # type: ignore[attr-defined]
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
