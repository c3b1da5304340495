"""Restore jobs in the journal: one row per restore order, so an order runs at most once
and an interrupted restore is finished or rolled back when the agent comes back.

    restore_jobs(order_id PK, plan_id, action, state, checkpoint, safety,
                 swaps JSON, detail, done, total, reported, updated_us)

``state``: queued, fetching, verifying, swapping, swapped, healthy, failed, rolled_back,
cancelled. ``action``: ``restore`` or ``rollback`` for an order of the hub (online or in a
bundle), ``in_place`` for a restore over the sources that this node ran by itself
(``amber-agent restore --in-place``, or a plan's rollback to its safety checkpoint): such a
job is journaled for its swap only and never reported (``reported`` stays 1). ``swaps``
lists, per swapped source, the path and where its previous content was moved, written
*before* the first rename (``restore/swap.py``). ``reported`` is 0 until the hub has
acknowledged the latest state. Documented in docs/FORMAT.md ("Journal").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from amber.agent.journal import Journal

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS restore_jobs(
    order_id TEXT PRIMARY KEY, plan_id TEXT NOT NULL, action TEXT NOT NULL,
    state TEXT NOT NULL, checkpoint BLOB NOT NULL, safety BLOB NOT NULL DEFAULT x'',
    swaps TEXT NOT NULL DEFAULT '[]', detail TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
    reported INTEGER NOT NULL DEFAULT 0, updated_us INTEGER NOT NULL);
"""
TERMINAL = ("healthy", "failed", "rolled_back", "cancelled")
IN_PLACE = "in_place"  # the action of a restore the node ran by itself
_COLS = (
    "order_id",
    "plan_id",
    "action",
    "state",
    "checkpoint",
    "safety",
    "swaps",
    "detail",
    "done",
    "total",
    "reported",
    "updated_us",
)


@dataclass
class Job:
    order_id: str
    plan_id: str
    action: str
    state: str
    checkpoint: bytes
    safety: bytes
    swaps: list[dict[str, str]]
    detail: str
    done: int
    total: int
    reported: bool
    updated_us: int

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def local(self) -> bool:
        """Run by the node itself: the hub never hears of it."""
        return self.action == IN_PLACE


class RestoreJobs:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def setup(self) -> None:
        await self.journal.execute_script(JOBS_SCHEMA)

    def _job(self, row: Any) -> Job:
        d = dict(zip(_COLS, row, strict=True))
        d["swaps"] = json.loads(d["swaps"])
        d["reported"] = bool(d["reported"])
        return Job(**d)

    async def get(self, order_id: str) -> Job | None:
        rows = await self.journal.query(
            f"SELECT {','.join(_COLS)} FROM restore_jobs WHERE order_id = ?", (order_id,)
        )
        return self._job(rows[0]) if rows else None

    async def all(self) -> list[Job]:
        rows = await self.journal.query(
            f"SELECT {','.join(_COLS)} FROM restore_jobs ORDER BY updated_us"
        )
        return [self._job(r) for r in rows]

    async def add(self, order_id: str, plan_id: str, action: str, checkpoint: bytes) -> bool:
        """Record a new order; False if it was seen before (it then never runs again)."""
        if await self.get(order_id) is not None:
            return False
        await self.journal.write(
            "INSERT OR IGNORE INTO restore_jobs(order_id, plan_id, action, state, checkpoint,"
            " reported, updated_us) VALUES(?,?,?,?,?,?,?)",
            [
                (
                    order_id,
                    plan_id,
                    action,
                    "queued",
                    checkpoint,
                    int(action == IN_PLACE),
                    time.time_ns() // 1000,
                )
            ],
        )
        return True

    async def update(self, order_id: str, **fields: Any) -> None:
        if "swaps" in fields:
            fields["swaps"] = json.dumps(fields["swaps"])
        fields.setdefault("reported", 0)  # a node's own jobs are never reported: stays 1
        fields["updated_us"] = time.time_ns() // 1000
        cols = ", ".join(
            f"{k} = max(?, action = '{IN_PLACE}')" if k == "reported" else f"{k} = ?"
            for k in fields
        )
        await self.journal.write(
            f"UPDATE restore_jobs SET {cols} WHERE order_id = ?", [(*fields.values(), order_id)]
        )

    async def mark_reported(self, order_id: str, updated_us: int) -> None:
        await self.journal.write(
            "UPDATE restore_jobs SET reported = 1 WHERE order_id = ? AND updated_us = ?",
            [(order_id, updated_us)],
        )
