"""Bundles at the hub: export a node's restore points for an air-gapped site, import what
such a node sends back (its checkpoints, and receipts of restore orders).

These run beside a serving hub (or without one) on its data directory: the catalog is
SQLite in WAL mode and objects are immutable, so both processes may work at once.

- **Export**: the chosen checkpoint(s), all their manifests and only the chunks of the
  chosen sources, read from the store as they are (still encrypted), signed with the
  hub key; with a restore order, a plan ``bundle-<id>`` in state ``exported`` whose node
  row waits for the receipt (the coordinator leaves such plans alone).
- **Import**: every member is checked and staged (``DATA/bundle-staging/<id>``) and the
  signature checked against the node's signer key before anything is stored; then the
  chunks and records go through :class:`Ingestor` exactly as NATS ingest sends them.
- **Receipts** update the plan's node row and state and are kept in ``bundle_receipts``.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.bundlefile import BundleStream, open_input
from amber.hub.catalog import Catalog, now_us
from amber.hub.config import HubConfig, load_hub_key
from amber.hub.ingest import Ingestor
from amber.hub.plans import NodeState, PlanBook, PlanState
from amber.hub.store.base import ObjectStore, open_store
from amber.protocol import bundle as b
from amber.protocol import wire
from amber.protocol.errors import (
    AmberError,
    ChainError,
    ConfigError,
    DiskFullError,
    JournalError,
    NotFoundError,
    StoreError,
    WrongTargetError,
)
from amber.protocol.keys import SigningKey
from amber.protocol.records import (
    KIND_CHECKPOINT,
    KIND_MANIFEST,
    KIND_PART,
    Checkpoint,
    record_id,
)

STAGING = "bundle-staging"
BATCH = 64
FINAL = frozenset((NodeState.HEALTHY, NodeState.FAILED, NodeState.ROLLED_BACK))
BUNDLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundle_exports(
    bundle BLOB PRIMARY KEY, vault TEXT NOT NULL, node TEXT NOT NULL, created_us INTEGER NOT NULL,
    checkpoints INTEGER NOT NULL, chunks INTEGER NOT NULL, bytes INTEGER NOT NULL,
    order_id TEXT NOT NULL, plan_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bundle_imports(
    bundle BLOB PRIMARY KEY, kind TEXT NOT NULL, vault TEXT NOT NULL, node TEXT NOT NULL,
    checkpoints INTEGER NOT NULL, new_checkpoints INTEGER NOT NULL, chunks INTEGER NOT NULL,
    imported_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bundle_receipts(
    receipt BLOB PRIMARY KEY, bundle BLOB NOT NULL, vault TEXT NOT NULL, node TEXT NOT NULL,
    order_id TEXT NOT NULL, plan_id TEXT NOT NULL, outcome TEXT NOT NULL, state TEXT NOT NULL,
    detail TEXT NOT NULL, safety BLOB NOT NULL, error TEXT NOT NULL, received_us INTEGER NOT NULL);
"""
RECEIPT_COLS = (
    "receipt, bundle, vault, node, order_id, plan_id, outcome, state, detail, safety, error, "
    "received_us"
)


@dataclass
class HubData:
    cfg: HubConfig
    catalog: Catalog
    store: ObjectStore
    plans: PlanBook
    signer: SigningKey

    @property
    def ingestor(self) -> Ingestor:
        return Ingestor(self.store, self.catalog, self.cfg.retention)


@contextlib.asynccontextmanager
async def open_hub_data(cfg: HubConfig) -> AsyncIterator[HubData]:
    """The hub's catalog, store and key, opened from its data directory."""
    if not cfg.catalog_path.exists():
        raise ConfigError(
            f"no hub data in {cfg.data_dir}",
            hint="pass the hub's data directory with --data (and its --config)",
        )
    catalog = await Catalog.open(cfg.catalog_path)
    store = open_store(cfg.store())
    try:
        plans = PlanBook(catalog)
        await plans.setup()
        await catalog.ensure_schema(BUNDLE_SCHEMA)
        yield HubData(cfg, catalog, store, plans, load_hub_key(cfg.data_dir))
    finally:
        await store.close()
        await catalog.close()


async def write_rows(cat: Catalog, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Several catalog writes in one transaction (the catalog's, cancellation-safe)."""
    try:
        async with cat.transaction() as tx:
            for sql, args in rows:
                await tx.execute(sql, args)
    except sqlite3.Error as exc:
        raise JournalError(f"hub catalog {cat.path}: {exc}") from None


# --- import -------------------------------------------------------------------------


@dataclass
class Staged:
    header: b.BundleHeader
    bundle_id: bytes
    root: Path
    checkpoints: dict[bytes, Checkpoint] = field(default_factory=dict)
    manifests: dict[bytes, list[bytes]] = field(default_factory=dict)  # id -> chunk ids
    parts: dict[bytes, list[bytes]] = field(default_factory=dict)  # manifest part -> chunk ids
    heads: dict[bytes, list[bytes]] = field(default_factory=dict)  # v2 manifest -> its parts
    chunks: list[bytes] = field(default_factory=list)
    receipt: b.BundleReceipt | None = None

    def read(self, role: str, oid: bytes) -> bytes:
        return (self.root / f"{role}s" / oid.hex()).read_bytes()


async def import_bundle(hd: HubData, path: str) -> dict[str, Any]:
    """A node's export (ingested like NATS ingest) or a receipt (into restore status)."""
    staged = None
    try:
        with open_input(path) as fh:
            stream = BundleStream(fh)
            header = stream.header()
            pin = await _check_signer(hd, header)
            staged = Staged(header, stream.bundle_id, _staging(hd, stream.bundle_id))
            for m in stream.members():
                _stage(staged, m)
            stream.finish()
        _resolve_heads(staged)
        if pin:  # verified in full now: the node's first key, pinned on first use
            await hd.catalog.pin_signer(header.vault, header.node, header.signer)
        if header.kind == b.RECEIPT:
            return await apply_receipt(hd, staged)
        return await _ingest(hd, staged)
    finally:
        if staged is not None:
            shutil.rmtree(staged.root, ignore_errors=True)


async def _check_signer(hd: HubData, h: b.BundleHeader) -> bool:
    """Whether the bundle's key must be pinned as the node's (it has none yet)."""
    if h.kind == b.HUB_EXPORT:
        raise WrongTargetError(
            f"this bundle was made by a hub for node {h.vault}/{h.node}",
            hint="import it on that node: amber-agent bundle import FILE",
        )
    await hd.catalog.node(h.vault, h.node)  # enrolled, or NotFoundError
    return not await hd.catalog.check_signer(h.vault, h.node, h.signer)


def _staging(hd: HubData, bundle_id: bytes) -> Path:
    root = hd.cfg.data_dir / STAGING / bundle_id.hex()
    for sub in ("records", "chunks"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def _stage(st: Staged, m: b.Member) -> None:
    if m.role == "receipt":
        st.receipt = m.receipt
        return
    if m.checkpoint is not None:
        st.checkpoints[m.id] = m.checkpoint
    elif m.manifest is not None:
        st.manifests[m.id] = list(m.manifest.get("chunks", []))
        if "parts" in m.manifest:  # version 2: its chunks are its parts' (see _resolve_heads)
            st.heads[m.id] = list(m.manifest["parts"])
    elif m.part is not None:
        st.parts[m.id] = list(m.part["chunks"])
    else:
        st.chunks.append(m.id)
    try:
        (st.root / f"{m.role}s" / m.id.hex()).write_bytes(m.data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left to stage the bundle under {st.root}") from None
        raise StoreError(f"cannot stage the bundle under {st.root}: {exc}") from None


def _resolve_heads(st: Staged) -> None:
    """A version 2 manifest needs the chunks of its parts, which the bundle must carry
    (the hub checks again at ingest that they are the ones its signed head names)."""
    for mid, parts in st.heads.items():
        lacking = [p for p in parts if p not in st.parts]
        if lacking:
            raise NotFoundError(
                f"the bundle lacks {len(lacking)} part(s) of manifest {mid.hex()[:16]}",
                hint="export again from the node",
            )
        st.manifests[mid] = sorted({c for p in parts for c in st.parts[p]})


async def _ingest(hd: HubData, st: Staged) -> dict[str, Any]:
    h = st.header
    new = await _plan_chain(hd, st)
    ing, stored = hd.ingestor, 0
    for i in range(0, len(st.chunks), BATCH):
        msgs = [
            wire.ChunkPut(id=cid, blob=st.read("chunk", cid)) for cid in st.chunks[i : i + BATCH]
        ]
        for res in await ing.put_chunks(h.vault, msgs):  # as the NATS worker does
            if isinstance(res, AmberError):
                raise res
            stored += res == "stored"
    for pid in st.parts:
        await _put_record(hd, st, pid, KIND_PART)
    for mid in st.manifests:
        await _put_record(hd, st, mid, KIND_MANIFEST)
    for cid, _ in sorted(st.checkpoints.items(), key=lambda kv: kv[1].seq):
        await _put_record(hd, st, cid, KIND_CHECKPOINT)
    await hd.catalog.execute(
        "INSERT OR IGNORE INTO bundle_imports VALUES(?,?,?,?,?,?,?,?)",
        (st.bundle_id, h.kind, h.vault, h.node, len(st.checkpoints), new, len(st.chunks), now_us()),
    )
    return {
        "bundle": st.bundle_id.hex(),
        "kind": h.kind,
        "vault": h.vault,
        "node": h.node,
        "checkpoints": len(st.checkpoints),
        "new_checkpoints": new,
        "chunks": len(st.chunks),
        "new_chunks": stored,
    }


async def _plan_chain(hd: HubData, st: Staged) -> int:
    """Refuse a bundle that would fork or skip the node's chain, before storing anything."""
    h = st.header
    have = {e.seq: e.id for e in await hd.catalog.checkpoints(h.vault, h.node)}
    head = max(have) if have else -1
    new = 0
    for cid, cp in sorted(st.checkpoints.items(), key=lambda kv: kv[1].seq):
        if have.get(cp.seq) == cid:
            continue
        if cp.seq in have:
            raise ChainError(
                f"checkpoint seq {cp.seq} of {h.vault}/{h.node} forks its chain at the hub"
            )
        if cp.seq != head + 1 or cp.prev != have.get(head):
            raise ChainError(
                f"checkpoint seq {cp.seq} does not follow the hub's head (seq {head})",
                hint="export from the node with --since the hub's newest checkpoint (or --all)",
            )
        await _check_complete(hd, st, cp)
        have[cp.seq], head, new = cid, cp.seq, new + 1
    return new


async def _check_complete(hd: HubData, st: Staged, cp: Checkpoint) -> None:
    vault = st.header.vault
    mids = list(cp.manifests.values())
    held = set(st.manifests) | set(await hd.catalog.present(vault, mids))
    if any(m not in held for m in mids):
        raise NotFoundError(f"the bundle lacks a manifest of checkpoint seq {cp.seq}")
    needed = sorted({c for m in mids if m in st.manifests for c in st.manifests[m]})
    have = set(st.chunks) | set(await hd.catalog.present(vault, needed))
    lacking = [c for c in needed if c not in have]
    if lacking:
        raise NotFoundError(
            f"the bundle lacks {len(lacking)} chunk(s) of checkpoint seq {cp.seq} that the "
            "hub does not hold",
            hint="export again from the node; chunks it evicted were already at the hub",
        )


async def _put_record(hd: HubData, st: Staged, rid: bytes, kind: int) -> None:
    h, data = st.header, st.read("record", rid)
    try:
        outcome = await hd.ingestor.put_record(
            h.vault, h.node, wire.RecordPut(id=rid, kind=kind, data=data)
        )
    except StoreError:
        raise
    except AmberError as exc:
        if record_id(data) == rid:  # as NATS ingest remembers it: per node, verified ids
            await hd.catalog.refuse(h.vault, h.node, rid, str(exc))
        raise
    if outcome == "retry":  # only a missing prerequisite makes ingest wait
        raise ChainError(f"record {rid.hex()[:16]} lacks what it builds on at the hub")


# --- receipts -----------------------------------------------------------------------


async def apply_receipt(hd: HubData, st: Staged) -> dict[str, Any]:
    r, h = st.receipt, st.header
    assert r is not None
    cat = hd.catalog
    rows = await cat.query(
        "SELECT plan_id FROM bundle_exports WHERE vault=? AND node=? AND "
        "((order_id != '' AND order_id=?) OR bundle=?)",
        (h.vault, h.node, r.order_id, r.bundle),
    )
    plan_id = rows[0][0] if rows else ""
    fresh = not await cat.query("SELECT 1 FROM bundle_receipts WHERE receipt=?", (st.bundle_id,))
    if plan_id and fresh:  # the plan first: a receipt row means it was applied
        await _update_plan(hd, plan_id, h, r)
    await cat.execute(
        f"INSERT OR IGNORE INTO bundle_receipts({RECEIPT_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            st.bundle_id,
            r.bundle,
            h.vault,
            h.node,
            r.order_id,
            plan_id,
            r.outcome,
            r.state,
            r.detail[:500],
            r.safety,
            r.error,
            now_us(),
        ),
    )
    return {"receipt": st.bundle_id.hex(), "plan": plan_id or None, "new": fresh, **receipt_view(r)}


async def _update_plan(hd: HubData, plan_id: str, h: b.BundleHeader, r: b.BundleReceipt) -> None:
    state = receipt_node_state(r)
    if state is None:
        plan = await hd.plans.get(plan_id)
        if any(n.state in FINAL for n in plan.nodes if n.node == h.node):
            return  # a refused copy does not undo what the order already did
        state = NodeState.FAILED
    detail = r.detail if r.outcome != "refused" else f"refused on the node ({r.error}): {r.detail}"
    await hd.plans.set_node(plan_id, h.vault, h.node, state=state, detail=detail[:500])
    if state == NodeState.HEALTHY:
        await hd.plans.set_state(plan_id, PlanState.DONE)
    elif state in (NodeState.FAILED, NodeState.ROLLED_BACK):
        await hd.plans.set_state(plan_id, PlanState.HALTED, f"{h.node} {state}: {detail}"[:500])


def receipt_node_state(r: b.BundleReceipt) -> NodeState | None:
    """The plan node state a receipt reports, or None: the node refused the order (or
    named no state) and the plan's node counts as failed unless already settled."""
    state = {"cancelled": "rolled_back", "swapping": "verifying"}.get(r.state, r.state)
    if r.outcome == "refused" or not state:
        return None
    try:
        return NodeState(state)
    except ValueError:
        return None


def receipt_view(r: b.BundleReceipt) -> dict[str, Any]:
    return {
        "bundle": r.bundle.hex(),
        "outcome": r.outcome,
        "order_id": r.order_id,
        "plan_id": r.plan_id,
        "state": r.state,
        "detail": r.detail,
        "safety": r.safety.hex(),
        "error": r.error,
        "exit_code": r.exit_code,
    }


async def list_receipts(hd: HubData) -> list[dict[str, Any]]:
    rows = await hd.catalog.query(
        f"SELECT {RECEIPT_COLS} FROM bundle_receipts ORDER BY received_us"
    )
    keys = [c.strip() for c in RECEIPT_COLS.split(",")]
    out = []
    for row in rows:
        d = dict(zip(keys, row, strict=True))
        for k in ("receipt", "bundle", "safety"):
            d[k] = d[k].hex()
        out.append(d)
    return out
