"""Restoring a checkpoint: fetch, verify, write into staging, then swap into place.

Every chunk is authenticated and hashed back to its id, and every file is checked
against its size and digest before anything is moved into place. Files are written
(through the pipeline in restore/files.py) into a staging directory on the target's
filesystem and renamed into place only when all of them verified and were fsynced,
so a failure leaves the target as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from amber.agent.identity import NodeIdentity
from amber.agent.manifests import check_record_id, load_manifest
from amber.agent.restore.chunksource import ChunkSource, RecordSource
from amber.agent.restore.files import FileRestore, FileTask, Window
from amber.protocol.errors import AmberError, IntegrityError, NotFoundError, RestoreError
from amber.protocol.records import Checkpoint, Manifest, check_entry_path, decode_checkpoint
from amber.protocol.wire import check_name

MODE_MASK = 0o777  # no setuid, setgid or sticky bit ever comes back from a backup


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
        vouched: Callable[[bytes], Awaitable[bytes | None]] | None = None,
    ) -> None:
        """``trusted``: signer keys accepted; "own" = this node's key; None = any valid
        signature (records fetched from the hub may carry a replaced node key; they are
        still authenticated by the vault key). ``vouched``: checkpoint id -> the signer
        the journal records as vouched for that checkpoint (agent/vouches.py), accepted
        for that checkpoint and its manifests besides ``trusted``."""
        self.ident, self.records, self.chunks, self.pool = ident, records, chunks, pool
        self.trusted: set[bytes] | None = (
            {ident.signer.public} if trusted == "own" else trusted  # type: ignore[assignment]
        )
        self.progress = progress
        self.vouched = vouched
        self.stats = RestoreStats()

    async def load(self, cp_id: bytes) -> tuple[Checkpoint, dict[str, Manifest]]:
        """The checkpoint ``cp_id`` and its manifests, each record checked to be the one
        asked for (its bytes hash to the id) and each manifest to be the one of the
        checkpoint's source: a hub cannot hand over another genuine record instead."""
        data = await self.records.record(cp_id)
        if data is None:
            raise NotFoundError(f"checkpoint {cp_id.hex()[:16]} is not available")
        check_record_id(cp_id, data, "checkpoint")
        trusted = await self._trusted_for(cp_id)
        cp = decode_checkpoint(data, self.ident.keys, trusted=trusted)
        manifests: dict[str, Manifest] = {}
        for name, mid in sorted(cp.manifests.items()):
            m = await load_manifest(self.records.record, mid, self.ident.keys, trusted=trusted)
            if m is None:
                raise NotFoundError(f"manifest {mid.hex()[:16]} of source {name!r} is missing")
            check_manifest_owner(cp, name, mid, m)
            manifests[name] = m
        return cp, manifests

    async def _trusted_for(self, cp_id: bytes) -> set[bytes] | None:
        """The keys accepted for checkpoint ``cp_id``: ``trusted`` and its vouched signer."""
        if self.trusted is None or self.vouched is None:
            return self.trusted
        signer = await self.vouched(cp_id)
        return self.trusted if signer is None else self.trusted | {signer}

    # --- writing manifests' entries under their roots --------------------------------

    async def materialize(self, m: Manifest, root: Path | None) -> None:
        """Write (or with ``root=None`` only verify) every entry of ``m`` under ``root``."""
        await self.materialize_all([(m, root)])

    async def materialize_all(self, jobs: Sequence[tuple[Manifest, Path | None]]) -> None:
        """Materialize several manifests through one file pipeline (see restore/files.py):
        directories first, then every regular file, then symlinks, modes and mtimes."""
        files: list[FileTask] = []
        for m, root in jobs:
            _check_root(m)
            targets = [(e, None if root is None else root / _safe_rel(e.path)) for e in m.entries]
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)  # an empty source is still restored
            for e, target in targets:
                if e.type == "d" and target is not None:
                    target.mkdir(parents=True, exist_ok=True)
                elif e.type == "f":
                    files.append(FileTask(e, target))
        await FileRestore(self.ident.keys, self.chunks, self.pool, self._done).run(files)
        for m, root in jobs:
            if root is not None:
                _finish_tree(m, root)
            self.stats.sources.append(m.source)

    def _done(self, w: Window) -> None:
        for p in w.parts:
            self.stats.chunks += len(p.refs)
            if p.last:
                self.stats.files += 1
                self.stats.bytes += p.file.written
        if self.progress:
            self.progress(w.size)

    # --- whole checkpoints ----------------------------------------------------------

    async def verify(self, cp_id: bytes, sources: Sequence[str] | None = None) -> RestoreStats:
        _, manifests = await self.load(cp_id)
        await self.materialize_all(
            [(m, None) for name, m in manifests.items() if not sources or name in sources]
        )
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
        chosen = select_sources(manifests, sources)
        dest.mkdir(parents=True, exist_ok=True)
        staging = dest / f".amber-staging-{uuid.uuid4().hex[:8]}"
        try:
            await self.materialize_all([(m, staging / name) for name, m in chosen.items()])
            for name in chosen:
                src_dir = staging / name
                if src_dir.exists():
                    os.rename(src_dir, dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.stats


def check_manifest_owner(cp: Checkpoint, name: str, mid: bytes, m: Manifest) -> None:
    """A manifest must be of the vault, node and source of the checkpoint naming it."""
    if (m.vault, m.node, m.source) != (cp.vault, cp.node, name):
        raise IntegrityError(
            f"manifest {mid.hex()[:16]} is of {m.vault}/{m.node} source {m.source!r}, but "
            f"checkpoint seq {cp.seq} of {cp.vault}/{cp.node} names it for source {name!r}",
            hint="the checkpoint is not a consistent restore point: nothing was restored; "
            "restore another checkpoint",
        )


def select_sources(
    manifests: dict[str, Manifest], sources: Sequence[str] | None
) -> dict[str, Manifest]:
    """The manifests of the chosen sources (all when none are named); an unknown name
    raises ``NotFoundError`` listing what the checkpoint holds."""
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
    try:
        check_entry_path(path, "manifest entry")
    except AmberError as exc:
        raise IntegrityError(str(exc), hint=_CRAFTED) from None
    return Path(path)


_CRAFTED = (
    "the record was crafted by someone holding the vault key, or is damaged: "
    "restore an earlier checkpoint and check who can read vault.key"
)


def _check_root(m: Manifest) -> None:
    """A source's name becomes a directory under the target, and a source whose root is
    a file holds that one regular file: a symlink at the root would point the restored
    source (and every later write of the application) anywhere."""
    try:
        check_name(m.source, "source")
    except AmberError as exc:
        raise IntegrityError(str(exc), hint=_CRAFTED) from None
    if not m.meta.get("root_is_dir", True) and any(e.type != "f" for e in m.entries):
        raise IntegrityError(
            f"source {m.source!r}: its root is a symlink or not a regular file", hint=_CRAFTED
        )


def _finish_tree(m: Manifest, root: Path) -> None:
    """Symlinks (after every file, so no write follows one), then modes and mtimes."""
    for e in m.entries:
        if e.type == "l":
            rel = _safe_rel(e.path)
            if (root / rel.parent).resolve() != root.resolve() / rel.parent:
                raise IntegrityError(f"manifest entry {e.path!r} lies under a symlink")
            (root / rel.parent).mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(e.target, root / rel)
            except FileExistsError:
                raise IntegrityError(
                    f"manifest entry {e.path!r} is a symlink and also holds other entries"
                ) from None
    for e in reversed(m.entries):
        if e.type in ("f", "d"):
            target = root / _safe_rel(e.path)
            os.chmod(target, e.mode & MODE_MASK)
            os.utime(target, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
    if m.meta.get("root_is_dir") and isinstance(m.meta.get("root_mode"), int):
        os.chmod(root, m.meta["root_mode"] & MODE_MASK)
