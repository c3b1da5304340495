"""Restoring over the live sources: safety checkpoint, staging beside each source, swap.

Before anything is overwritten, a *safety* checkpoint records what is there now
(sources whose path no longer exists have nothing to save and are skipped). Each
source is then written and verified in a staging directory next to it (same
filesystem), and only when every chosen source verified are they swapped in by
rename. A SQLite database's stale ``-wal``/``-shm`` files are removed with it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from amber.agent.checkpointer import Checkpointer
from amber.agent.config import AgentConfig, SourceConfig
from amber.agent.restore.restorer import Restorer, RestoreStats, select_sources
from amber.fsutil import fsync_dir

SQLITE_KINDS = ("sqlite", "state")


async def restore_in_place(
    cfg: AgentConfig,
    restorer: Restorer,
    checkpointer: Checkpointer,
    cp_id: bytes,
    sources: Sequence[str] | None = None,
) -> tuple[bytes | None, RestoreStats]:
    """Return the safety checkpoint's id (None if nothing existed to save) and stats."""
    _, manifests = await restorer.load(cp_id)
    chosen = select_sources(manifests, sources)
    targets = {name: cfg.source(name) for name in chosen}
    present = [n for n, s in targets.items() if s.path.exists()]
    safety_id = None
    if present:
        res = await checkpointer.checkpoint(
            present, {"amber.safety_for": cp_id.hex()}, kind="safety"
        )
        safety_id = res.id
    staged: dict[str, Path] = {}
    try:
        for name, m in chosen.items():
            parent = targets[name].path.parent
            parent.mkdir(parents=True, exist_ok=True)
            stage = parent / f".amber-restore-{name}-{uuid.uuid4().hex[:8]}"
            staged[name] = stage
            await restorer.materialize(m, stage)
        for name, stage in staged.items():
            swap_in(targets[name], stage, bool(chosen[name].meta.get("root_is_dir", True)))
    finally:
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)
    return safety_id, restorer.stats


def swap_in(src: SourceConfig, stage: Path, root_is_dir: bool) -> None:
    """Move a verified staging copy over the source path."""
    path = src.path
    if not root_is_dir:
        staged_file = stage / path.name
        if not staged_file.exists():  # the manifest names the file under its saved name
            staged_file = next(p for p in stage.iterdir())
        if src.kind in SQLITE_KINDS:
            for suffix in ("-wal", "-shm", "-journal"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        os.replace(staged_file, path)
        fsync_dir(path.parent)
        return
    old = None
    if path.exists():
        old = path.with_name(f".amber-old-{path.name}-{uuid.uuid4().hex[:8]}")
        os.rename(path, old)
    os.rename(stage, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
