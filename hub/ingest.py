"""Ingest: validate what nodes send, store it immutably, index it.

Rules, checked on every message before anything is stored:
- the vault and node come from the NATS subject (the node's credentials allow it
  only its own), never from the payload; records must name the same ones;
- chunk blobs must have a valid header and size (the hub cannot decrypt them);
- records must carry a valid Ed25519 signature by the node's pinned key (the first
  key to sign for a node is pinned; ``amber-hub node replace`` unpins it); a manifest
  (or manifest part) is accepted only once every chunk it names is durable, a version 2
  manifest head only once its parts are, a checkpoint only once its manifests are and it
  continues the node's hash chain (the next seq, naming the head as prev).
A message that arrived too early (its prerequisites are still in flight) is
retried later; a bad one is rejected, counted and logged with the node's name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from blake3 import blake3

from amber.hub.catalog import CHUNK, PACK, RECORD, Catalog
from amber.hub.store.base import ObjectStore
from amber.hub.store.layout import DEFAULT_RETENTION_DAYS, object_key, retain_until, tier_days
from amber.protocol import packfile, wire
from amber.protocol.chunk import ID_SIZE, parse_chunk_header
from amber.protocol.errors import AmberError, ChainError, FormatError
from amber.protocol.records import (
    KIND_CHECKPOINT,
    KIND_MANIFEST,
    KIND_PART,
    SOURCE_KINDS,
    TIERS,
    Checkpoint,
    checkpoint_public,
    manifest_public,
    parse,
    part_public,
    record_id,
)

log = logging.getLogger("amber.hub.ingest")
Outcome = Literal["stored", "duplicate", "retry"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LOCKED_MEMO = 100_000  # pack keys remembered as locked (then forgotten, and re-checked)
PACK_BYTES = 16 * 1024 * 1024
"""New chunks of one ingest batch are stored in pack objects of about this size."""


@dataclass
class IngestStats:
    chunks: int = 0
    chunk_bytes: int = 0
    records: int = 0
    duplicates: int = 0
    retries: int = 0
    rejected: Counter[str] | None = None
    quota_refused: Counter[str] | None = None  # "vault/node/quota" -> refusals

    def __post_init__(self) -> None:
        self.rejected = Counter()
        self.quota_refused = Counter()


class Ingestor:
    def __init__(
        self, store: ObjectStore, catalog: Catalog, retention: dict[str, int] | None = None
    ) -> None:
        self.store, self.catalog = store, catalog
        self.retention = retention if retention is not None else dict(DEFAULT_RETENTION_DAYS)
        self.stats = IngestStats()
        self.locked: dict[str, datetime] = {}  # store key -> retention this process set

    async def put_chunks(
        self, vault: str, msgs: Sequence[wire.ChunkPut]
    ) -> list[Outcome | AmberError]:
        """Store the new chunks among ``msgs`` in pack objects of about PACK_BYTES and
        index them; returns each message's outcome, or the error that refused it
        (:class:`StoreError` when the store failed: the message should be redelivered).
        Every "stored" or "duplicate" chunk is durable and indexed when this returns."""
        results: list[Outcome | AmberError | None] = [None] * len(msgs)
        first: dict[bytes, int] = {}
        for i, msg in enumerate(msgs):
            try:
                if len(msg.id) != ID_SIZE:
                    raise FormatError("chunk id must have 32 bytes")
                parse_chunk_header(msg.blob)
            except AmberError as exc:
                results[i] = exc
                continue
            first.setdefault(msg.id, i)
        have = await self.catalog.present(vault, list(first))
        groups: list[list[int]] = []  # the new chunks, in pack objects of <= PACK_BYTES
        size = 0
        for cid, i in first.items():
            if cid in have:
                continue
            if not groups or size + len(msgs[i].blob) > PACK_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += len(msgs[i].blob)
        stored = await asyncio.gather(
            *(self._store_pack(vault, [msgs[i] for i in g]) for g in groups),
            return_exceptions=True,
        )
        for group, outcome in zip(groups, stored, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, AmberError):
                raise outcome
            for i in group:
                results[i] = outcome if isinstance(outcome, AmberError) else "stored"
        out: list[Outcome | AmberError] = []
        for i, msg in enumerate(msgs):
            res = results[i]
            if res is None:  # held already, or a repeat in this batch: as its first went
                earlier = results[first[msg.id]]
                res = earlier if isinstance(earlier, AmberError) else "duplicate"
            if res == "stored":
                self.stats.chunks += 1
                self.stats.chunk_bytes += len(msg.blob)
            elif res == "duplicate":
                self.stats.duplicates += 1
            out.append(res)
        return out

    async def _store_pack(self, vault: str, msgs: Sequence[wire.ChunkPut]) -> None:
        """Stored without Object Lock: a pack is locked only once a record the hub
        accepted names one of its chunks (:meth:`_lock_chunks`), so chunks a node
        uploads and never references can be swept (OPERATIONS.md, "Unreferenced packs")."""
        data, pid, index = await asyncio.to_thread(_pack, msgs)
        await self.store.put(object_key(vault, pid, PACK), data)
        await self.catalog.add_packed(vault, pid, index)

    async def _lock_chunks(self, vault: str, chunks: Sequence[bytes], days: int) -> None:
        """Extend Object Lock on the pack objects (or own objects) holding ``chunks`` to
        ``days`` from now; a pack this process locked recently enough is skipped."""
        until = retain_until(days)
        if until is None:
            return
        where = await self.catalog.locate(vault, chunks)
        keys = {
            object_key(vault, loc.pack, PACK) if loc.pack else object_key(vault, cid, CHUNK)
            for cid, loc in where.items()
        }
        slack = timedelta(days=max(1, days // 10))
        if len(self.locked) > LOCKED_MEMO:
            self.locked.clear()
        for key in sorted(keys):
            if self.locked.get(key, until - 2 * slack) >= until - slack:
                continue
            await self.store.retain(key, until)
            self.locked[key] = until

    async def put_record(self, vault: str, node: str, msg: wire.RecordPut) -> Outcome:
        if record_id(msg.data) != msg.id:
            raise FormatError("record id does not match its bytes")
        raw = parse(msg.data)
        if raw.kind != msg.kind:
            raise FormatError("record kind does not match the message")
        if await self.catalog.present(vault, [msg.id]):
            self.stats.duplicates += 1
            return "duplicate"
        await self.catalog.pin_signer(vault, node, raw.signer)  # the node's key, or refused
        if raw.kind == KIND_MANIFEST:
            return await self._manifest(vault, node, msg, raw.signer)
        if raw.kind == KIND_PART:
            return await self._part(vault, node, msg)
        if raw.kind == KIND_CHECKPOINT:
            return await self._checkpoint(vault, node, msg, raw.signer)
        raise FormatError(f"record kind {raw.kind} cannot be ingested")

    async def _manifest(self, vault: str, node: str, msg: wire.RecordPut, signer: bytes) -> Outcome:
        pub = manifest_public(msg.data)
        _check_owner(pub["vault"], pub["node"], vault, node)
        _check_fields("manifest", time_us=pub["time_us"], size=pub["size"])
        if pub["kind"] not in SOURCE_KINDS or pub["tier"] not in TIERS:
            raise FormatError(f"manifest has unknown kind {pub['kind']!r} or tier {pub['tier']!r}")
        # a version 2 head names its parts; each part was accepted only once its chunks were
        needs = pub["parts"] if "parts" in pub else pub["chunks"]
        have = await self.catalog.present(vault, needs)
        if len(have) < len(needs):
            self.stats.retries += 1
            return "retry"
        days = tier_days(self.retention, [pub["tier"]])
        if "parts" not in pub:  # a version 2 head's chunks were locked with its parts
            await self._lock_chunks(vault, pub["chunks"], days)
        until = retain_until(days)
        await self.store.put(object_key(vault, msg.id, RECORD), msg.data, retain_until=until)
        await self.catalog.add_manifest(vault, msg.id, pub)
        await self.catalog.add_objects(vault, [(msg.id, RECORD, len(msg.data))])
        self.stats.records += 1
        return "stored"

    async def _part(self, vault: str, node: str, msg: wire.RecordPut) -> Outcome:
        """A part of a version 2 manifest: stored once its chunks are durable. Its head,
        which arrives after it, binds it to the manifest by its id."""
        pub = part_public(msg.data)
        _check_owner(pub["vault"], pub["node"], vault, node)
        have = await self.catalog.present(vault, pub["chunks"])
        if len(have) < len(pub["chunks"]):
            self.stats.retries += 1
            return "retry"
        days = tier_days(self.retention, [])  # its head's tier is not known yet
        await self._lock_chunks(vault, pub["chunks"], days)
        until = retain_until(days)
        await self.store.put(object_key(vault, msg.id, RECORD), msg.data, retain_until=until)
        await self.catalog.add_objects(vault, [(msg.id, RECORD, len(msg.data))])
        self.stats.records += 1
        return "stored"

    async def _checkpoint(
        self, vault: str, node: str, msg: wire.RecordPut, signer: bytes
    ) -> Outcome:
        cp = checkpoint_public(msg.data)
        _check_owner(cp.vault, cp.node, vault, node)
        _check_fields("checkpoint", seq=cp.seq, time_us=cp.time_us)
        have = await self.catalog.present(vault, list(cp.manifests.values()))
        head = await self.catalog.head(vault, node)
        next_seq = 0 if head is None else head[0] + 1
        if len(have) < len(cp.manifests) or cp.seq > next_seq:
            self.stats.retries += 1
            return "retry"
        if cp.seq < next_seq or cp.prev != (head[1] if head else None):
            raise ChainError(
                f"checkpoint seq {cp.seq} from {vault}/{node} forks its chain at the hub "
                f"(hub head is seq {next_seq - 1})"
            )
        tiers = await self.catalog.manifest_tiers(vault, cp.manifests.values())
        until = retain_until(tier_days(self.retention, tiers))
        await self.store.put(object_key(vault, msg.id, RECORD), msg.data, retain_until=until)
        await self.catalog.add_checkpoint(cp, msg.id, signer)
        await self._check_won(cp, msg.id)
        await self.catalog.add_objects(vault, [(msg.id, RECORD, len(msg.data))])
        await self.catalog.seen(vault, node)
        self.stats.records += 1
        log.info(
            "checkpoint %s seq %d of %s/%s is durable",
            msg.id.hex()[:16],
            cp.seq,
            vault,
            node,
            extra={
                "vault": vault,
                "node": node,
                "checkpoint": msg.id.hex(),
                "seq": cp.seq,
                "source": ",".join(sorted(cp.manifests)),
            },
        )
        return "stored"

    async def _check_won(self, cp: Checkpoint, cid: bytes) -> None:
        """Two checkpoints with one seq that raced past the chain check (two hub
        processes, or two deliveries at once) both reach the catalog, which keeps the
        first: the loser is refused (its node learns it by receipt), never acked as durable."""
        rows = await self.catalog.checkpoints(cp.vault, cp.node, after_seq=cp.seq - 1, limit=1)
        if rows and rows[0].seq == cp.seq and rows[0].id == cid:
            return
        winner = rows[0].id.hex()[:16] if rows and rows[0].seq == cp.seq else "?"
        raise ChainError(
            f"checkpoint seq {cp.seq} of {cp.vault}/{cp.node} ({cid.hex()[:16]}) lost a race: "
            f"checkpoint {winner} took seq {cp.seq} first, so its chain forks at the hub",
            hint="the node's credentials may be used from two machines: check "
            "'amber-hub checkpoints' for the node and replace its credentials if so",
        )

    def reject(self, vault: str, node: str, exc: AmberError) -> None:
        assert self.stats.rejected is not None
        self.stats.rejected[f"{vault}/{node}"] += 1
        log.warning(
            "rejected a message from node %s/%s: %s",
            vault,
            node,
            exc,
            extra={"vault": vault, "node": node},
        )


def _pack(msgs: Sequence[wire.ChunkPut]) -> tuple[bytes, bytes, list[tuple[bytes, int, int]]]:
    """A pack object of ``msgs``' blobs: its bytes, its id (their BLAKE3) and its index."""
    data, index = packfile.build([(m.id, m.blob) for m in msgs])
    return data, blake3(data).digest(), index


def _check_fields(what: str, **values: int) -> None:
    """Integers the catalog stores must fit SQLite's INTEGER: a signed record with a
    larger one would fail to index after it was stored, and be retried forever."""
    for name, value in values.items():
        if not INT64_MIN <= value <= INT64_MAX:
            raise FormatError(f"{what} {name} {value} is out of range")


def _check_owner(rv: str, rn: str, vault: str, node: str) -> None:
    if (rv, rn) != (vault, node):
        raise FormatError(f"a record of {rv}/{rn} was sent by node {vault}/{node}")
