"""Sync: move committed checkpoints from the journal to the hub, oldest first.

For each checkpoint not yet durable at the hub:
1. ask the hub which of the needed chunk ids it lacks (a model already at the hub
   from another node of the vault never crosses the network again);
2. publish only those chunks, pipelined with a bounded number in flight and an
   optional bandwidth limit, each under its id as JetStream message id;
3. publish the manifests (a large one's parts first, then its head; docs/FORMAT.md
   "Manifest parts"), then the checkpoint record;
4. poll for the hub's receipt that every chunk and record is durable in its object
   store — a JetStream PubAck is not enough — and only then mark them durable and
   let the journal evict chunk blobs beyond its local cache.
Interrupted anywhere, the next pass starts again at step 1 and re-sends only what
the hub still lacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amber.agent.hublink import HubLink
from amber.agent.journal import DURABLE, Journal
from amber.protocol import wire
from amber.protocol.errors import HubUnavailableError, JournalError, ProtocolError
from amber.protocol.records import (
    KIND_CHECKPOINT,
    decode_checkpoint,
    decode_manifest,
    manifest_part_ids,
    part_entries,
)

if TYPE_CHECKING:
    from amber.agent.metrics import AgentMetrics

log = logging.getLogger("amber.agent.sync")
QUERY_BATCH = 4096
IN_FLIGHT = 32
RECEIPT_TIMEOUT = 120.0
REASK_SECONDS = 5.0  # chunks still missing this long are asked about (and sent) again


@dataclass
class SyncStats:
    checkpoints: int = 0
    chunks_sent: int = 0
    chunks_skipped: int = 0
    bytes_sent: int = 0
    evicted_bytes: int = 0


class Syncer:
    def __init__(
        self,
        journal: Journal,
        link: HubLink,
        keys: object,
        cache_bytes: int,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.journal, self.link, self.keys, self.cache_bytes = journal, link, keys, cache_bytes
        self.metrics = metrics
        self.stats = SyncStats()

    async def sync_once(self, deadline: float | None = None) -> SyncStats:
        deadline = deadline or time.monotonic() + 3600
        rows = await self.journal.unsynced()
        log.debug(
            "sync pass: %d checkpoint(s) to send",
            len(rows),
            extra={"vault": self.link.enr.vault, "node": self.link.enr.node},
        )
        for row in rows:
            await self._sync_checkpoint(row.seq, row.id, deadline)
            self.stats.checkpoints += 1
        return self.stats

    async def _sync_checkpoint(self, seq: int, cp_id: bytes, deadline: float) -> None:
        cp_data = await self.journal.record(cp_id)
        if cp_data is None:
            raise JournalError(f"checkpoint seq {seq} has no record in the journal")
        cp = decode_checkpoint(cp_data, self.keys)  # type: ignore[arg-type]
        states = await self.journal.record_states(list(cp.manifests.values()))
        manifests: list[bytes] = []  # record ids to send, a manifest's parts before its head
        # chunks in manifest (file) order, each once: the hub packs them in the order they
        # arrive, and a restore reads them back in file order, in a few ranged reads
        chunk_ids: dict[bytes, None] = {}
        for mid in cp.manifests.values():
            if states.get(mid, DURABLE) == DURABLE:
                continue  # already at the hub (or adopted from it)
            manifests += await self._manifest_chunks(mid, chunk_ids)
        ids = list(chunk_ids)
        missing = await self._missing(ids)
        self.stats.chunks_skipped += len(ids) - len(missing)
        if self.metrics is not None:
            self.metrics.chunks_at_hub(len(ids) - len(missing))
        await self._send_chunks(missing, deadline)
        for rid in manifests:  # read one at a time: a large manifest's parts add up
            data = await self.journal.record(rid)
            assert data is not None  # _manifest_chunks read it
            await self.link.publish_ingest(
                wire.RecordPut(id=rid, kind=data[5], data=data), rid.hex(), deadline
            )
        await self.link.publish_ingest(
            wire.RecordPut(id=cp_id, kind=KIND_CHECKPOINT, data=cp_data), cp_id.hex(), deadline
        )
        records = [*manifests, cp_id]
        await self._await_receipts(ids + records, deadline, set(ids).difference(missing))
        await self.journal.mark_durable(ids, records, seq)
        log.info(
            "checkpoint seq %d is durable at the hub (%d chunks sent, %d already there)",
            seq,
            len(missing),
            len(ids) - len(missing),
            extra={
                "vault": self.link.enr.vault,
                "node": self.link.enr.node,
                "source": ",".join(sorted(cp.manifests)),
                "checkpoint": cp_id.hex(),
                "seq": seq,
            },
        )

    async def _manifest_chunks(self, mid: bytes, chunk_ids: dict[bytes, None]) -> list[bytes]:
        """Add the chunk ids of manifest ``mid`` to ``chunk_ids`` in file order; return its
        record ids, parts first. A version 2 manifest is read one part at a time."""
        head = await self.journal.record(mid)
        if head is None:
            raise JournalError(f"manifest {mid.hex()[:16]} has no record in the journal")
        part_ids = manifest_part_ids(head)
        if not part_ids:
            m = await asyncio.to_thread(decode_manifest, head, self.keys)  # type: ignore[arg-type]
            chunk_ids.update(dict.fromkeys(cid for e in m.entries for cid, _ in e.chunks))
            return [mid]
        for i, pid in enumerate(part_ids):
            data = await self.journal.record(pid)
            if data is None:
                raise JournalError(f"part {i} of manifest {mid.hex()[:16]} is not in the journal")
            run = await asyncio.to_thread(part_entries, head, i, data, self.keys)  # type: ignore[arg-type]
            chunk_ids.update(dict.fromkeys(cid for e in run for cid, _ in e.chunks))
        return [*part_ids, mid]

    async def _missing(self, ids: list[bytes]) -> list[bytes]:
        missing: list[bytes] = []
        for i in range(0, len(ids), QUERY_BATCH):
            reply = await self.link.request(
                wire.ChunkQuery(ids=tuple(ids[i : i + QUERY_BATCH])), wire.ChunkQueryReply
            )
            missing.extend(reply.missing)
        return missing

    async def _send_chunks(self, ids: list[bytes], deadline: float) -> None:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def send(cid: bytes, blob: bytes) -> None:
            try:
                await self.link.publish_ingest(
                    wire.ChunkPut(id=cid, blob=blob), cid.hex(), deadline
                )
                self.stats.chunks_sent += 1
                self.stats.bytes_sent += len(blob)
                if self.metrics is not None:
                    self.metrics.chunk_uploaded(len(blob))
            finally:
                sem.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for i in range(0, len(ids), 64):
                part = ids[i : i + 64]
                blobs = await self.journal.get_chunks(part)
                lost = [c for c in part if c not in blobs]
                if lost:
                    raise JournalError(
                        f"{len(lost)} chunk(s) the hub lacks are no longer in the journal",
                        hint="run 'amber-agent verify' and take a new checkpoint",
                    )
                for cid in part:
                    await sem.acquire()
                    tasks.append(asyncio.create_task(send(cid, blobs[cid])))
                tasks = [t for t in tasks if not t.done() or t.exception() is not None]
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _await_receipts(
        self, ids: list[bytes], deadline: float, skipped: set[bytes] | None = None
    ) -> None:
        """Poll receipts until every id is durable. ``skipped`` chunks (another node
        held their upload lease) still missing are asked about again every REASK_SECONDS:
        if that lease lapsed (its holder never sent them), the hub hands them to this
        node, which sends them (once)."""
        pending = list(ids)
        limit = min(deadline, time.monotonic() + RECEIPT_TIMEOUT)
        delay = 0.05
        reask = time.monotonic() + REASK_SECONDS
        while pending:
            if skipped and time.monotonic() > reask:
                reask = time.monotonic() + REASK_SECONDS
                handed = await self._missing([i for i in pending if i in skipped])
                skipped.difference_update(handed)
                await self._send_chunks(handed, deadline)
            still: list[bytes] = []
            for i in range(0, len(pending), QUERY_BATCH):
                reply = await self.link.request(
                    wire.ReceiptQuery(ids=tuple(pending[i : i + QUERY_BATCH])), wire.Receipt
                )
                still.extend(reply.missing)
                if reply.refused:
                    raise ProtocolError(
                        f"the hub refused {len(reply.refused)} upload(s): {reply.reason}",
                        hint="this node's history no longer matches the hub's; see "
                        "docs/OPERATIONS.md 'The hub refuses a node's checkpoints'",
                    )
            # while the hub is working through the backlog, ask again soon; back off
            # only while nothing moves
            delay = 0.1 if len(still) < len(pending) else min(delay * 2, 1.0)
            pending = still
            if not pending:
                return
            if time.monotonic() > limit:
                raise HubUnavailableError(
                    f"the hub has not confirmed {len(pending)} upload(s) as durable yet",
                    hint="the hub may be busy or its store failing; the next sync resumes",
                )
            await asyncio.sleep(delay)
