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
from typing import Any

from nats.aio.msg import Msg

from amber.hub.catalog import Catalog
from amber.hub.limits import QUOTA_REASON, Quotas, UploadLeases
from amber.hub.store.base import ObjectStore
from amber.hub.store.layout import object_key
from amber.hub.store.ranged import read_objects
from amber.protocol import wire
from amber.protocol.errors import AmberError, FormatError, NotFoundError, QuotaExceededError

log = logging.getLogger("amber.hub.nodeapi")
MAX_REPLY = 6 * 1024 * 1024
MAX_LIST = 256


class NodeApi:
    """Answers nodes' requests and records their heartbeats, in one hub process."""

    def __init__(
        self,
        nc: Any,
        store: ObjectStore,
        catalog: Catalog,
        leases: UploadLeases | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.nc, self.store, self.catalog = nc, store, catalog
        self.subs: list[Any] = []
        self.coordinator: Any = None  # set by the hub once restores are set up
        # the leases' tables exist once UploadLeases.setup() was awaited (the hub does)
        self.leases = leases if leases is not None else UploadLeases(catalog)
        self.quotas = quotas

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
            lacking = [i for i in dict.fromkeys(req.ids) if i not in have]
            if lacking and self.quotas is not None:
                await self.quotas.check(vault, node)
                if await self.catalog.refusals(vault, node, lacking):  # under quota again
                    await self.catalog.forget_refusals(vault, node, lacking)
            upload = await self.leases.grant(vault, node, lacking)  # leases: hub/limits.py
            return wire.ChunkQueryReply(missing=tuple(upload))
        if isinstance(req, wire.ReceiptQuery):
            have = await self.catalog.present(vault, req.ids)
            lacking = [i for i in req.ids if i not in have]
            refused = await self.catalog.refusals(vault, node, lacking)
            for reason in refused.values():  # chunks refused at ingest: over a quota
                if reason.startswith(QUOTA_REASON):
                    raise QuotaExceededError(reason.removeprefix(QUOTA_REASON))
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
