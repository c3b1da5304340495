"""Swapping verified staging copies over the live sources, journaled so a crash rolls back.

Every restore that overwrites sources — ``amber-agent restore --in-place``, a restore
order from the hub or from a bundle, and a plan's rollback — swaps through here:

1. :func:`plan` names, per source, its path, its staging directory and where its
   previous content will be kept (``.amber-old-<name>-<random>`` beside it);
2. :func:`swap_all` journals that plan in the job's ``restore_jobs`` row (state
   ``swapping``) *before* the first rename, then renames each source aside and its
   staging copy into place (a database's ``-wal``/``-shm``/``-journal`` go aside with it);
3. the caller finishes the job (a terminal state), and only then :func:`drop_old`
   deletes the previous content; or on any failure :func:`undo` renames it back.

A process killed anywhere in between leaves a job that is not finished; the next process
that takes the state directory's write lock calls :func:`roll_back_interrupted`, which
puts every source of such a job back as it was (``swap_back`` is idempotent) and marks
the job ``rolled_back``. Leftovers of a finished job (an old copy a crash kept from
being deleted) are deleted then too. docs/OPERATIONS.md ("Restore on the same node").
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from amber.agent.config import SourceConfig
from amber.agent.restore.jobs import RestoreJobs
from amber.fsutil import fsync_dir

log = logging.getLogger("amber.agent.restore.swap")
SQLITE_KINDS = ("sqlite", "state")
SIDECARS = ("-wal", "-shm", "-journal")
STAGE_PREFIX = ".amber-restore-"
OLD_PREFIX = ".amber-old-"


def new_stage(src: SourceConfig) -> Path:
    """A fresh staging directory name beside the source (same filesystem as its path)."""
    parent = src.path.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent / f"{STAGE_PREFIX}{src.name}-{uuid.uuid4().hex[:8]}"


def plan(targets: Mapping[str, SourceConfig], staged: Mapping[str, Path]) -> list[dict[str, str]]:
    """The swap plan journaled in ``restore_jobs.swaps`` (docs/FORMAT.md)."""
    return [
        {
            "source": name,
            "path": str(targets[name].path),
            "stage": str(stage),
            "old": str(_old_name(targets[name].path)),
            "existed": "1" if targets[name].path.exists() else "",
        }
        for name, stage in staged.items()
    ]


async def swap_all(
    jobs: RestoreJobs,
    job_id: str,
    swaps: list[dict[str, str]],
    targets: Mapping[str, SourceConfig],
    root_is_dir: Mapping[str, bool],
    **fields: Any,
) -> None:
    """Journal ``swaps`` (state ``swapping``), then swap each staged copy in."""
    await jobs.update(job_id, state="swapping", swaps=swaps, **fields)
    for s in swaps:
        name = s["source"]
        swap_keep_old(targets[name], Path(s["stage"]), Path(s["old"]), root_is_dir[name])


def swap_keep_old(src: SourceConfig, stage: Path, old: Path, root_is_dir: bool) -> None:
    """Swap the staged copy in; the previous content is moved to ``old``, not deleted."""
    path = src.path
    if path.exists() or path.is_symlink():
        os.rename(path, old)
    if src.kind in SQLITE_KINDS:
        for suffix in SIDECARS:
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                os.rename(sidecar, old.with_name(old.name + suffix))
    if root_is_dir:
        os.rename(stage, path)
    else:  # the manifest names the file under its saved name
        staged = stage / path.name
        if not staged.exists():
            staged = next(stage.iterdir())
        os.rename(staged, path)
        shutil.rmtree(stage, ignore_errors=True)
    fsync_dir(path.parent)


def swap_back(path: Path, old: Path, existed: bool) -> None:
    """Undo :func:`swap_keep_old` (idempotent: safe to repeat after a crash)."""
    if not existed:
        _remove(path)  # the source was absent before: absent again
        fsync_dir(path.parent)
        return
    if not old.exists() and not old.with_name(old.name + "-wal").exists():
        return  # never swapped, or already swapped back
    if old.exists():
        _remove(path)
        os.rename(old, path)
    for suffix in SIDECARS:
        side_old = old.with_name(old.name + suffix)
        side = path.with_name(path.name + suffix)
        if side_old.exists():
            side.unlink(missing_ok=True)
            os.rename(side_old, side)
    fsync_dir(path.parent)


def undo(swaps: list[dict[str, str]], sources: Iterable[SourceConfig]) -> None:
    """Put every swapped source back, last first, and delete the staging directories."""
    for s in reversed(swaps):
        swap_back(Path(s["path"]), Path(s["old"]), bool(s.get("existed")))
        shutil.rmtree(s["stage"], ignore_errors=True)
    clean_stages(sources)


def drop_old(swaps: list[dict[str, str]]) -> None:
    """Delete the previous content kept aside (once the job is finished)."""
    for s in swaps:
        _remove(Path(s["old"]))


def clean_stages(sources: Iterable[SourceConfig]) -> None:
    for s in sources:
        parent = s.path.parent
        if parent.is_dir():
            for leftover in parent.glob(f"{STAGE_PREFIX}{s.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)


async def roll_back_interrupted(jobs: RestoreJobs, sources: Iterable[SourceConfig]) -> list[str]:
    """After a crash (call with the write lock held): roll back every job that was cut
    short while it staged or swapped, and delete what finished jobs left aside. Jobs
    still ``queued`` touched nothing on disk and are left to their owner. Returns the
    ids of the jobs rolled back (their state is reported later, like any other)."""
    await jobs.setup()
    rolled: list[str] = []
    sources = tuple(sources)
    for job in await jobs.all():
        if job.finished:
            if job.state == "healthy":  # a crash came between finishing and drop_old
                drop_old(job.swaps)
            continue
        if job.state == "queued":
            continue
        try:
            undo(job.swaps, sources)
        except OSError as exc:
            log.error("rolling back the interrupted restore %s: %s", job.order_id, exc)
            raise
        await jobs.update(
            job.order_id,
            state="rolled_back",
            detail="interrupted (the agent stopped); rolled back to the previous state",
        )
        log.warning("restore %s was interrupted: rolled back", job.order_id)
        rolled.append(job.order_id)
    return rolled


def _old_name(path: Path) -> Path:
    return path.with_name(f"{OLD_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    for suffix in SIDECARS:
        path.with_name(path.name + suffix).unlink(missing_ok=True)
