"""Restoring over the live sources: safety checkpoint, staging beside each source, swap.

Before anything is overwritten, a *safety* checkpoint records what is there now
(sources whose path no longer exists have nothing to save and are skipped). Each
source is then written and verified in a staging directory next to it (same
filesystem), and only when every chosen source verified are they swapped in by
rename, through the journaled swap of ``restore/swap.py`` that the hub's orders use
too: the restore is a job in ``restore_jobs`` (action ``in_place``), the previous
content is kept aside until the job is finished, and a process killed midway is
rolled back by the next one that takes the write lock. A SQLite database's stale
``-wal``/``-shm`` files go aside with it.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from amber.agent.checkpointer import Checkpointer
from amber.agent.config import AgentConfig
from amber.agent.restore import swap
from amber.agent.restore.jobs import IN_PLACE, RestoreJobs
from amber.agent.restore.restorer import Restorer, RestoreStats, select_sources
from amber.protocol.errors import AmberError


async def restore_in_place(
    cfg: AgentConfig,
    restorer: Restorer,
    checkpointer: Checkpointer,
    cp_id: bytes,
    sources: Sequence[str] | None = None,
    *,
    plan_id: str = "",
) -> tuple[bytes | None, RestoreStats]:
    """Return the safety checkpoint's id (None if nothing existed to save) and stats.
    Call with the state directory's write lock held."""
    jobs = RestoreJobs(checkpointer.journal)
    await jobs.setup()
    _, manifests = await restorer.load(cp_id)
    chosen = select_sources(manifests, sources)
    targets = {name: cfg.source(name) for name in chosen}
    present = [n for n, s in targets.items() if s.path.exists()]
    safety_id = None
    if present:  # before the job exists: a failure here leaves the journal as it was
        res = await checkpointer.checkpoint(
            present, {"amber.safety_for": cp_id.hex()}, kind="safety"
        )
        safety_id = res.id
    job = f"local-{uuid.uuid4().hex}"
    await jobs.add(job, plan_id, IN_PLACE, cp_id)
    await jobs.update(job, state="fetching", safety=safety_id or b"")
    staged: dict[str, Path] = {}
    swaps: list[dict[str, str]] = []
    try:
        for name, m in chosen.items():
            staged[name] = swap.new_stage(targets[name])
            await restorer.materialize(m, staged[name])
        swaps = swap.plan(targets, staged)
        root_is_dir = {n: bool(m.meta.get("root_is_dir", True)) for n, m in chosen.items()}
        await swap.swap_all(jobs, job, swaps, targets, root_is_dir)
    except BaseException as exc:
        swap.undo(swaps, targets.values())
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)
        # the swaps are undone: the job is finished (else the next writer rolls it back)
        with contextlib.suppress(AmberError, OSError):
            await jobs.update(job, state="failed", detail=f"{exc}; nothing changed")
        raise
    await jobs.update(job, state="healthy", detail=f"restored in place from {cp_id.hex()[:16]}")
    swap.drop_old(swaps)
    return safety_id, restorer.stats
