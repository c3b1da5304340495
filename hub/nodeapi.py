"""The node API: what the hub answers nodes over NATS (the counterpart of the admin API).

Subjects (``amber.<vault>.<node>.<kind>``):
- ``rpc``: requests (chunk query, receipts, fetch, checkpoint list, restore reports),
  answered by a queue group of all hub processes;
- ``status``: heartbeats.
The vault and node of every request come from its subject, which the node's NATS
credentials limit to its own. The ingest stream is :mod:`amber.hub.ingest_stream`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nats.aio.msg import Msg

from amber.hub.catalog import Catalog
from amber.hub.store.base import ObjectStore
from amber.hub.store.layout import object_key
from amber.hub.store.ranged import read_objects
from amber.protocol import wire
from amber.protocol.errors import AmberError, FormatError, NotFoundError

log = logging.getLogger("amber.hub.nodeapi")
LEASE_SECONDS = 60.0  # how long a node told to upload a chunk keeps others from sending it
LEASE_MAX = 1_000_000  # leases kept before expired ones are swept
MAX_REPLY = 6 * 1024 * 1024
MAX_LIST = 256


class NodeApi:
    """Answers nodes' requests and records their heartbeats, in one hub process."""

    def __init__(self, nc: Any, store: ObjectStore, catalog: Catalog) -> None:
        self.nc, self.store, self.catalog = nc, store, catalog
        self.subs: list[Any] = []
        self.coordinator: Any = None  # set by the hub once restores are set up
        self.leases: dict[tuple[str, bytes], tuple[str, float]] = {}

    async def start(self) -> None:
        self.subs.append(await self.nc.subscribe(wire.any_node("rpc"), queue="hub", cb=self._rpc))
        self.subs.append(await self.nc.subscribe(wire.any_node("status"), cb=self._status))

    async def stop(self) -> None:
        for s in self.subs:
            try:
                await s.unsubscribe()
            except Exception:
                pass

    async def _rpc(self, m: Msg) -> None:
        if not m.reply:
            return
        try:
            vault, node = wire.subject_owner(m.subject)
            reply = await self._answer(vault, node, wire.decode(m.data))
        except AmberError as exc:
            log.warning("refused a request from %s: %s", m.subject, exc)
            reply = wire.ErrorReply(code=type(exc).__name__, message=str(exc))
        except Exception as exc:
            log.exception("request on %s failed", m.subject)
            reply = wire.ErrorReply(code="internal", message=str(exc))
        try:
            await m.respond(wire.encode(reply))
        except Exception as exc:
            log.warning("could not answer %s: %s", m.subject, exc)

    async def _answer(self, vault: str, node: str, req: wire.Message) -> wire.Message:
        if isinstance(req, wire.ChunkQuery):
            have = await self.catalog.present(vault, req.ids)
            return wire.ChunkQueryReply(missing=self._lease(vault, node, req.ids, have))
        if isinstance(req, wire.ReceiptQuery):
            have = await self.catalog.present(vault, req.ids)
            refused = await self.catalog.refusals(vault, [i for i in req.ids if i not in have])
            return wire.Receipt(
                durable=tuple(i for i in req.ids if i in have),
                missing=tuple(i for i in req.ids if i not in have and i not in refused),
                refused=tuple(refused),
                reason="; ".join(sorted(set(refused.values())))[:1000],
            )
        if isinstance(req, wire.FetchRequest):
            return await self._fetch(vault, req)
        if isinstance(req, wire.RestoreReport) and self.coordinator is not None:
            return wire.ReportAck(ok=await self.coordinator.report(vault, node, req))
        if isinstance(req, wire.ListCheckpoints):
            return await self._list(vault, node, req)
        raise NotFoundError(f"{req.TYPE} is not a request the hub answers")

    def _lease(
        self, vault: str, node: str, ids: tuple[bytes, ...], have: dict[bytes, str]
    ) -> tuple[bytes, ...]:
        """The ids this node should upload: those the hub lacks, less those another node
        was just told to upload (an upload lease), so a fleet syncing the same model at
        once sends it about once. A node told to skip a leased chunk waits for it in its
        receipt poll; if the lease holder never delivers, the lease lapses and the next
        pass uploads it."""
        now = time.monotonic()
        if len(self.leases) > LEASE_MAX:
            self.leases = {k: v for k, v in self.leases.items() if v[1] > now}
        missing = []
        for cid in ids:
            if cid in have:
                continue
            holder = self.leases.get((vault, cid))
            if holder is not None and holder[0] != node and holder[1] > now:
                continue
            self.leases[(vault, cid)] = (node, now + LEASE_SECONDS)
            missing.append(cid)
        return tuple(missing)

    async def _fetch(self, vault: str, req: wire.FetchRequest) -> wire.FetchReply:
        """Objects by id, up to MAX_REPLY bytes (the node asks again for what did not
        fit); packed chunks are read as merged ranges of their packs."""
        known = await self.catalog.locate(vault, req.ids)
        chosen, missing, size = [], [], 0
        for oid in req.ids:
            if oid not in known:
                missing.append(oid)
            elif size < MAX_REPLY:
                chosen.append((oid, known[oid]))
                size += known[oid].size
        blobs = await read_objects(self.store, vault, chosen)
        return wire.FetchReply(
            ids=tuple(oid for oid, _ in chosen), blobs=tuple(blobs), missing=tuple(missing)
        )

    async def _list(self, vault: str, node: str, req: wire.ListCheckpoints) -> wire.Message:
        if req.node != node:
            raise NotFoundError("a node may list only its own checkpoints")
        if not -1 <= req.after_seq < 2**63:  # SQLite's INTEGER range
            raise FormatError(f"checkpoints.list.after_seq {req.after_seq} is out of range")
        rows = await self.catalog.checkpoints(vault, node, after_seq=req.after_seq, limit=MAX_LIST)
        records, size = [], 0
        for row in rows:
            data = await self.store.get(object_key(vault, row.id, "r"))
            records.append(data)
            size += len(data)
            if size > MAX_REPLY:
                break
        return wire.CheckpointList(
            records=tuple(records), more=len(records) < len(rows) or len(rows) == MAX_LIST
        )

    async def _status(self, m: Msg) -> None:
        try:
            vault, node = wire.subject_owner(m.subject)
            beat = wire.decode(m.data, wire.Heartbeat)
        except AmberError as exc:
            log.warning("bad heartbeat on %s: %s", m.subject, exc)
            return
        assert isinstance(beat, wire.Heartbeat)
        log.debug("heartbeat from %s/%s", vault, node, extra={"vault": vault, "node": node})
        await self.catalog.heartbeat(
            vault,
            node,
            {
                "time_us": beat.time_us,
                "backlog_bytes": beat.backlog_bytes,
                "backlog_chunks": beat.backlog_chunks,
                "last_seq": beat.last_seq,
                "last_checkpoint_us": beat.last_checkpoint_us,
                "rpo_seconds": beat.rpo_seconds,
                "agent_version": beat.agent_version,
            },
        )
