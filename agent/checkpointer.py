"""Taking a checkpoint: scan sources, write manifests, commit one signed checkpoint.

A checkpoint always names a manifest for every configured source: the ones scanned
now, and the previous manifests of the others, so every checkpoint is a complete
restore point. An unchanged source keeps its previous manifest id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from amber.agent.config import AgentConfig, SourceConfig
from amber.agent.identity import NodeIdentity
from amber.agent.journal import Journal
from amber.agent.manifests import load_manifest
from amber.agent.pipeline import ChunkWriter, Progress, WriteStats
from amber.agent.sources.chunking import FILES_CDC, MODEL_CDC, make_cdc
from amber.agent.sources.files import scan_files
from amber.agent.sources.jsonl import scan_jsonl
from amber.agent.sources.registry import ScanContext, Scanner, pack_state, unpack_state
from amber.agent.sources.sqlite import scan_sqlite
from amber.protocol.errors import AmberError
from amber.protocol.records import (
    Checkpoint,
    Manifest,
    decode_checkpoint,
    encode_checkpoint,
    encode_manifest_records,
    record_id,
)

log = logging.getLogger("amber.agent.checkpoint")

SCANS_AT_ONCE = 2  # sources scanned concurrently (they share the reader and the pool)

SCANNERS: dict[str, Scanner] = {
    "files": scan_files,
    "model": scan_files,
    "sqlite": scan_sqlite,
    "state": scan_sqlite,
    "jsonl": scan_jsonl,
}


@dataclass(frozen=True)
class CheckpointResult:
    id: bytes
    checkpoint: Checkpoint
    stats: WriteStats
    changed: list[str]


Scanned = tuple[bytes, list[tuple[bytes, bytes]] | None, dict, Manifest]
"""A scanned source: manifest id, its new records (None: unchanged), state, manifest."""


class Checkpointer:
    def __init__(
        self,
        cfg: AgentConfig,
        ident: NodeIdentity,
        journal: Journal,
        pool: Executor,
        reader: Executor,
        progress: Progress | None = None,
    ) -> None:
        self.cfg, self.ident, self.journal = cfg, ident, journal
        self.pool, self.reader, self.progress = pool, reader, progress
        self._cdc = {
            "files": make_cdc(ident.keys, FILES_CDC),
            "model": make_cdc(ident.keys, MODEL_CDC),
        }

    async def checkpoint(
        self,
        sources: list[str] | None = None,
        labels: dict[str, str] | None = None,
        *,
        kind: str = "regular",
        note: str = "",
    ) -> CheckpointResult:
        selected = [self.cfg.source(n) for n in sources] if sources else list(self.cfg.sources)
        budget = self.cfg.journal_max_bytes - await self.journal.held_bytes()
        writer = ChunkWriter(
            self.journal,
            self.ident.keys,
            self.pool,
            self.reader,
            level=self.cfg.compression_level,
            budget=budget,
            progress=self.progress,
        )
        try:
            return await self._run(selected, labels or {}, kind, note, writer)
        except BaseException:
            await writer.abort()
            try:
                await self.journal.discard_tentative()
            except AmberError as exc:  # the next writer discards them (runtime.writing)
                log.warning("could not discard the cancelled checkpoint's chunks yet: %s", exc)
            raise

    async def _run(
        self,
        selected: list[SourceConfig],
        labels: dict[str, str],
        kind: str,
        note: str,
        writer: ChunkWriter,
    ) -> CheckpointResult:
        keys, signer = self.ident.keys, self.ident.signer
        head = await self.journal.head()
        carried: dict[str, bytes] = {}
        if head is not None:
            data = await self.journal.record(head.id)
            assert data is not None
            carried = dict(decode_checkpoint(data, keys).manifests)
        configured = {s.name for s in self.cfg.sources}
        manifests = {k: v for k, v in carried.items() if k in configured}
        new_records: list[tuple[bytes, bytes]] = []
        states: dict[str, tuple[bytes, bytes]] = {}
        referenced: set[bytes] = set()
        changed: list[str] = []
        scans = await self._scan_all(selected, writer)
        for src, (mid, data, state, m) in zip(selected, scans, strict=True):
            if data is not None:
                new_records.extend(data)
                changed.append(src.name)
            manifests[src.name] = mid
            sealed = self.journal.seal_state(pack_state(state, time.time_ns() // 1000))
            states[src.name] = (mid, sealed)
            referenced.update(m.chunk_ids())
        await writer.flush()
        cp = Checkpoint(
            vault=self.ident.vault,
            node=self.ident.node,
            seq=0 if head is None else head.seq + 1,
            prev=None if head is None else head.id,
            time_us=time.time_ns() // 1000,
            manifests=manifests,
            labels=labels,
            kind=kind,
            note=note,
        )
        cp_data = encode_checkpoint(cp, keys, signer)
        cp_id = record_id(cp_data)
        await self.journal.commit_checkpoint(
            cp, cp_id, cp_data, new_records, states, referenced, self.cfg.journal_max_bytes
        )
        st = writer.stats
        log.info(
            "checkpoint %s seq %d committed (%s): %d new chunks, %d bytes, %d deduplicated",
            cp_id.hex()[:16],
            cp.seq,
            ",".join(changed) + " changed" if changed else "nothing changed",
            st.new_chunks,
            st.new_bytes,
            st.dedup_chunks,
            extra={
                "vault": cp.vault,
                "node": cp.node,
                "source": ",".join(s.name for s in selected),
                "checkpoint": cp_id.hex(),
                "seq": cp.seq,
            },
        )
        return CheckpointResult(cp_id, cp, writer.stats, changed)

    async def _scan_all(self, selected: list[SourceConfig], writer: ChunkWriter) -> list[Scanned]:
        """Scan the sources, ``SCANS_AT_ONCE`` at a time, results in ``selected`` order.

        Two at once keep both cores busy across the gaps of one source (an SQLite
        backup copy, a model file's first window, a log's prefix check) and let small
        sources finish while a large one is chunked. The first failure cancels the rest.
        """
        gate = asyncio.Semaphore(SCANS_AT_ONCE)

        async def one(src: SourceConfig) -> Scanned:
            async with gate:
                return await self._scan(src, writer)

        tasks = [asyncio.create_task(one(src)) for src in selected]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # nothing left running when the checkpoint is discarded
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _scan(self, src: SourceConfig, writer: ChunkWriter) -> Scanned:
        keys = self.ident.keys
        prev = await self.journal.source_state(src.name)
        prev_manifest, prev_state = None, {}
        if prev is not None:
            prev_manifest = await load_manifest(self.journal.record, prev[0], keys)
            if prev_manifest is not None:
                prev_state = unpack_state(prev[1])
        ctx = ScanContext(
            source=src,
            writer=writer,
            prev_manifest=prev_manifest
            if prev_manifest and prev_manifest.kind == src.kind
            else None,
            prev_state=prev_state,
            tmp_dir=self.cfg.state_dir / "tmp",
            busy_timeout=self.cfg.busy_timeout,
            make_cdc=lambda k: self._cdc["model" if k == "model" else "files"],
        )
        result = await SCANNERS[src.kind](ctx)
        m = Manifest(
            vault=self.ident.vault,
            node=self.ident.node,
            source=src.name,
            kind=src.kind,
            tier=src.tier,
            time_us=time.time_ns() // 1000,
            entries=tuple(result.entries),
            meta=result.meta,
            lineage=dict(src.lineage),
            parent=prev[0] if prev else None,
        )
        if prev_manifest is not None and _same_content(prev_manifest, m):
            return prev[0], None, result.state, prev_manifest  # type: ignore[index]
        recs = await asyncio.to_thread(encode_manifest_records, m, keys, self.ident.signer)
        return record_id(recs[0]), [(record_id(r), r) for r in recs], result.state, m


def _same_content(a: Manifest, b: Manifest) -> bool:
    return (a.entries, a.meta, a.lineage, a.kind, a.tier) == (
        b.entries,
        b.meta,
        b.lineage,
        b.kind,
        b.tier,
    )
