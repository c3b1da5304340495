"""What the agent does with the hub: sync, heartbeats, adopting the hub's checkpoints.

Used by the CLI (`sync --once`, `checkpoints`, `restore`, `init --enroll`) and by the
daemon. Every function works with a connected :class:`HubLink`; when the hub is
unreachable callers carry on offline.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from amber import __version__
from amber.protocol import wire
from amber.protocol.errors import AmberError
from amber.protocol.records import checkpoint_public, record_id

if TYPE_CHECKING:
    from amber.agent.hublink import HubLink
    from amber.agent.metrics import AgentMetrics
    from amber.agent.runtime import AgentRuntime
    from amber.agent.sync import SyncStats

log = logging.getLogger("amber.agent.remote")
EVICT_LOCK_WAIT = 2.0  # seconds a sync pass waits for the write lock before evicting later


async def adopt_from_hub(rt: AgentRuntime, link: HubLink) -> int:
    """Index the checkpoints the hub holds for this node that the journal lacks."""
    records = await link.list_checkpoints(-1)
    rows = []
    for data in records:
        cp = checkpoint_public(data)
        if (cp.vault, cp.node) != (rt.cfg.vault, rt.cfg.node):
            continue
        rows.append((record_id(data), data, cp))
    return await rt.journal.adopt(rows)


async def sync(
    rt: AgentRuntime,
    link: HubLink,
    deadline: float | None = None,
    metrics: AgentMetrics | None = None,
) -> SyncStats:
    from amber.agent.sync import Syncer

    syncer = Syncer(rt.journal, link, rt.ident.keys, rt.cfg.journal_cache_bytes, metrics)
    stats = await syncer.sync_once(deadline)
    # eviction deletes and rewrites pack files: only while no other process (a checkpoint
    # or restore command next to the daemon) appends to them, i.e. under the write lock;
    # if a writer holds it now, the next pass evicts
    async with rt.writing(timeout=EVICT_LOCK_WAIT, or_skip=True) as locked:
        if locked:
            stats.evicted_bytes += await rt.journal.evict(rt.cfg.journal_cache_bytes)
        else:
            log.info("journal eviction postponed: another command is writing the journal")
    return stats


async def heartbeat(rt: AgentRuntime, link: HubLink) -> None:
    head = await rt.journal.head()
    backlog_bytes, backlog_chunks = await rt.journal.backlog()
    rpo = min((rt.cfg.tiers[s.tier].rpo for s in rt.cfg.sources), default=0)
    try:
        await link.heartbeat(
            wire.Heartbeat(
                node=rt.cfg.node,
                time_us=time.time_ns() // 1000,
                backlog_bytes=backlog_bytes,
                backlog_chunks=backlog_chunks,
                last_seq=head.seq if head else -1,
                last_checkpoint_us=head.time_us if head else 0,
                rpo_seconds=rpo,
                agent_version=__version__,
            )
        )
    except AmberError as exc:
        log.debug("heartbeat failed: %s", exc)
