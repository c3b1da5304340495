"""The ingest stream: JetStream stream AMBER_INGEST and the hub's workers on it.

Nodes publish chunks and records to ``amber.<vault>.<node>.ingest``; the stream is a
work queue. One fetcher per hub process hands batches to a few concurrent batch
tasks, and every hub process shares one durable pull consumer, so more hub processes
scale ingest out. The requests nodes make (``rpc``) and their heartbeats (``status``)
are answered by :mod:`amber.hub.nodeapi`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import FetchTimeoutError

from amber.hub.catalog import Catalog
from amber.hub.ingest import PACK_BYTES, Ingestor
from amber.hub.limits import QUOTA_REASON, Quotas
from amber.protocol import wire
from amber.protocol.errors import AmberError, FormatError, NotFoundError, StoreError
from amber.protocol.records import record_id

log = logging.getLogger("amber.hub.ingest_stream")
STREAM = "AMBER_INGEST"
DURABLE = "hub-ingest"
BATCH = 64  # messages per fetch: nats-py 2.x's pull fetch has no max_bytes, so one
# fetch holds at most BATCH x wire.MAX_MESSAGE_SIZE bytes (PROTOCOL.md, "Ingest")
MAX_BATCH = 512  # messages per batch handled (and per pack object, at most)
GATHER_SECONDS = 0.1  # how long a fetched batch waits for more messages to fill a pack
# A message fetched by a hub process that then died is redelivered after ACK_WAIT; a live
# worker tells JetStream every ACK_WAIT/3 that its batch is still in progress, so a slow
# store never causes a redelivery, and a SIGKILLed hub stalls ingest only briefly.
ACK_WAIT = 10.0
RETRY_DELAY = 0.5  # a record whose prerequisites are still in flight is redelivered after
MAX_RETRIES = 1200  # ... at most this many times (about 10 minutes), then dropped


def _deliveries(m: Msg) -> int:
    try:
        return int(m.metadata.num_delivered)
    except Exception:  # not a JetStream message (tests): no limit
        return 0


async def ensure_stream(js: Any, max_bytes: int = 16 * 1024**3, per_node: int = 65_536) -> None:
    """The stream is bounded: ``max_bytes`` in all and ``per_node`` messages per node's
    subject, with discard-new, so a flood from one node is refused at publish (the
    node's PubAck is an error) once its own subject is full, and never fills the disk."""
    cfg = StreamConfig(
        name=STREAM,
        subjects=[wire.any_node("ingest")],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_msg_size=8 * 1024 * 1024,
        duplicate_window=600.0,
        max_bytes=max_bytes,
        max_msgs_per_subject=per_node,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
    )
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError:
        await js.update_stream(cfg)


class IngestStream:
    """The ingest stream's consumer and its batch workers in one hub process."""

    def __init__(
        self,
        nc: Any,
        catalog: Catalog,
        ingestor: Ingestor,
        workers: int = 2,
        quotas: Quotas | None = None,
        bounds: tuple[int, int] = (16 * 1024**3, 65_536),
    ) -> None:
        self.nc, self.catalog, self.ingestor = nc, catalog, ingestor
        self.quotas, self.bounds = quotas, bounds
        self.js = nc.jetstream(timeout=10)
        self.workers = workers
        self.tasks: list[asyncio.Task[None]] = []
        self.batches: set[asyncio.Task[None]] = set()  # ingest batches being handled
        self.subs: list[Any] = []

    async def start(self) -> None:
        await ensure_stream(self.js, *self.bounds)
        psub = await self.js.pull_subscribe(
            wire.any_node("ingest"),
            durable=DURABLE,
            stream=STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_ack_pending=4096,
                max_deliver=-1,
            ),
        )
        # Unsubscribed on stop() like the others: left subscribed, its pending fetch
        # status messages are never marked done and nc.drain() waits out its timeout (30 s).
        self.subs.append(psub)
        self.tasks.append(asyncio.create_task(self._ingest_loop(psub), name="ingest"))

    async def stop(self) -> None:
        for t in [*self.tasks, *self.batches]:
            t.cancel()
        await asyncio.gather(*self.tasks, *self.batches, return_exceptions=True)
        for s in self.subs:
            try:
                await s.unsubscribe()
            except Exception:
                pass

    async def _ingest_loop(self, psub: Any) -> None:
        """One fetcher hands batches to up to ``workers`` concurrent batch tasks. A batch
        is a run of consecutive stream messages, so the chunks a node sent in file order
        land in a pack in file order (two fetchers would interleave them)."""
        gate = asyncio.Semaphore(self.workers)
        while True:
            await gate.acquire()
            try:
                msgs = await psub.fetch(BATCH, timeout=0.25)
            except (FetchTimeoutError, TimeoutError):
                gate.release()
                continue
            except Exception as exc:
                gate.release()
                log.warning("ingest fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                gate.release()
                continue
            msgs = await self._top_up(psub, msgs)
            task = asyncio.create_task(self._run_batch(msgs))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)
            task.add_done_callback(lambda _: gate.release())

    async def _top_up(self, psub: Any, msgs: list[Msg]) -> list[Msg]:
        """A fetch returns what the stream holds at that moment, often a few messages
        while a node is still sending: wait up to GATHER_SECONDS for more, so a batch,
        and the pack object made of it, holds up to MAX_BATCH messages or PACK_BYTES
        (fetched BATCH at a time, so a batch never exceeds PACK_BYTES by more than one
        fetch of large messages)."""
        size = sum(len(m.data) for m in msgs)
        until = time.monotonic() + GATHER_SECONDS
        while len(msgs) < MAX_BATCH and size < PACK_BYTES:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                more = await psub.fetch(min(BATCH, MAX_BATCH - len(msgs)), timeout=left)
            except Exception:  # nothing more came (or the fetch failed): go with what we have
                break
            msgs += more
            size += sum(len(m.data) for m in more)
        return msgs

    async def _run_batch(self, msgs: list[Msg]) -> None:
        ticker = asyncio.create_task(self._in_progress(msgs))
        try:
            await self._ingest_batch(msgs)
        except Exception:  # a bug, not the node's fault: the batch is redelivered
            log.exception("ingest batch of %d message(s) failed", len(msgs))
        finally:
            ticker.cancel()

    async def _in_progress(self, msgs: list[Msg]) -> None:
        while True:
            await asyncio.sleep(ACK_WAIT / 3)
            for m in msgs:
                if not m.is_acked:
                    try:
                        await m.in_progress()
                    except Exception:
                        pass

    async def _ingest_batch(self, msgs: list[Msg]) -> None:
        plain = await _decode_all(msgs)
        decoded = [(m, self._decode(m, msg)) for m, msg in zip(msgs, plain, strict=True)]
        for m, d in decoded:
            if d[2] is None:
                await m.term()
        chunks = [(m, d) for m, d in decoded if isinstance(d[2], wire.ChunkPut)]
        records = [(m, d) for m, d in decoded if isinstance(d[2], wire.RecordPut)]
        by_vault: dict[str, list[tuple[Msg, tuple[str, str, Any]]]] = {}
        for m, d in chunks:
            by_vault.setdefault(d[0], []).append((m, d))
        for vault, items in by_vault.items():
            items = await self._within_quota(vault, items)
            # the vault's new chunks go into pack objects; acks only once indexed
            try:
                results = await self.ingestor.put_chunks(vault, [d[2] for _, d in items])
            except Exception as exc:  # the catalog's trouble: every chunk is redelivered
                log.error("indexing chunks of vault %s failed: %s", vault, exc)
                for m, _ in items:
                    await m.nak(delay=2)
                continue
            await self._charge(vault, items, results)
            for (m, (_, node, _msg)), res in zip(items, results, strict=True):
                if isinstance(res, StoreError):
                    await self._retry_later(m, "chunk", vault, node, res)
                elif isinstance(res, AmberError):
                    self.ingestor.reject(vault, node, res)
                    await m.term()
                else:
                    await m.ack()
        for m, (vault, node, msg) in records:
            await self._ingest_record(m, vault, node, msg)

    async def _within_quota(
        self, vault: str, items: list[tuple[Msg, tuple[str, str, Any]]]
    ) -> list[tuple[Msg, tuple[str, str, Any]]]:
        """The chunks of nodes under their quotas; those of a node over one are refused
        (terminated, counted): a node that skips the chunk query still cannot go on."""
        if self.quotas is None:
            return items
        over: dict[str, str] = {}
        for node in {d[1] for _, d in items}:
            try:
                await self.quotas.check(vault, node)
            except AmberError as exc:
                self.ingestor.reject(vault, node, exc)
                over[node] = QUOTA_REASON + str(exc)
        for node, reason in over.items():  # the node learns it by receipt (exit 43)
            ids = [d[2].id for _, d in items if d[1] == node]
            await self.catalog.refuse_many(vault, node, ids, reason)
        for m, d in items:
            if d[1] in over:
                await m.term()
        return [(m, d) for m, d in items if d[1] not in over]

    async def _charge(
        self, vault: str, items: list[tuple[Msg, tuple[str, str, Any]]], results: list[Any]
    ) -> None:
        if self.quotas is None:
            return
        usage: dict[str, int] = {}
        for (_, (_, node, msg)), res in zip(items, results, strict=True):
            if res == "stored":
                usage[node] = usage.get(node, 0) + len(msg.blob)
        await self.quotas.add(vault, usage)

    async def _retry_later(
        self, m: Msg, what: str, vault: str, node: str, exc: BaseException
    ) -> None:
        """The store's (or the hub's) trouble, not the node's: redelivered in 2 s."""
        log.error(
            "storing %s from %s/%s failed: %s",
            what,
            vault,
            node,
            exc,
            extra={"vault": vault, "node": node},
        )
        await m.nak(delay=2)

    def _decode(self, m: Msg, msg: wire.Message | AmberError) -> tuple[str, str, Any]:
        try:
            vault, node = wire.subject_owner(m.subject)
        except AmberError:
            return "?", "?", None
        try:
            if isinstance(msg, AmberError):
                raise msg
            if not isinstance(msg, wire.ChunkPut | wire.RecordPut):
                raise NotFoundError(f"{msg.TYPE} is not an ingest message")
            return vault, node, msg
        except AmberError as exc:
            self.ingestor.reject(vault, node, exc)
            return vault, node, None

    async def _ingest_record(self, m: Msg, vault: str, node: str, msg: wire.RecordPut) -> None:
        try:
            outcome = await self.ingestor.put_record(vault, node, msg)
        except Exception as exc:
            if isinstance(exc, AmberError) and not isinstance(exc, StoreError):
                self.ingestor.reject(vault, node, exc)  # the node's fault: refused for good
                if record_id(msg.data) == msg.id:  # the id is of these bytes: the node
                    await self.catalog.refuse(vault, node, msg.id, str(exc))  # learns by receipt
                await m.term()
                return
            await self._retry_later(m, "record", vault, node, exc)
            return
        if outcome == "retry" and _deliveries(m) >= MAX_RETRIES:
            # its prerequisites never came: drop it (not a refusal: a later re-send that
            # brings them is accepted); the node's receipt wait ends and its next pass
            # sends again whatever the hub lacks
            self.ingestor.reject(
                vault,
                node,
                FormatError(
                    f"record {msg.id.hex()[:16]} waited {MAX_RETRIES} deliveries for chunks, "
                    "manifests or an earlier checkpoint that never arrived"
                ),
            )
            await m.term()
        elif outcome == "retry":
            await m.nak(delay=RETRY_DELAY)
        else:
            await m.ack()


async def _decode_all(msgs: list[Msg]) -> list[wire.Message | AmberError]:
    """Decode a batch; in a worker thread when it is large (up to MAX_BATCH messages of
    8 MB each), so the event loop keeps serving requests, heartbeats and acks."""
    datas = [m.data for m in msgs]
    if sum(map(len, datas)) <= wire.DECODE_OFF_LOOP_BYTES:
        return _decode_many(datas)
    return await asyncio.to_thread(_decode_many, datas)


def _decode_many(datas: list[bytes]) -> list[wire.Message | AmberError]:
    out: list[wire.Message | AmberError] = []
    for data in datas:
        try:
            out.append(wire.decode(data))
        except AmberError as exc:
            out.append(exc)
    return out
