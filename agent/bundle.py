"""Bundles on the node: import a hub's bundle (and run the restore order it carries),
export checkpoints for a hub the node cannot reach, and sign receipts.

Import verifies everything before anything becomes visible: every member is streamed
into a staging directory (``<state_dir>/bundle-staging/<bundle id>``) after its own
checks (chunks decrypted and hashed back to their ids, records decrypted under the
vault key), then the index and the signature by a trusted hub key, the completeness of
every checkpoint and the hash chain against the journal. Only then does one journal
transaction add the chunks and records and index the checkpoints. A carried order then
runs through :class:`OrderExecutor` exactly like an online order (safety checkpoint,
hooks, the checks it names, rollback), with no link: chunks come from the journal. An
order that carries a command line (version 1) or names a check this node does not define
refuses the whole import before anything is committed (``OrderRefusedError``).
Importing again adds nothing; an order runs at most once (``restore_jobs``).
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiosqlite

from amber.agent.config import AgentConfig
from amber.agent.enrolment import load_installed
from amber.agent.journal import DURABLE, HELD, checkpoint_row
from amber.agent.manifests import GetRecord, load_manifest, manifest_records
from amber.agent.restore.checks import resolve
from amber.agent.restore.jobs import Job
from amber.agent.restore.orders import OrderExecutor, error_code, report_detail
from amber.agent.runtime import AgentRuntime
from amber.agent.vouches import HUB, UPGRADE, vouch_row
from amber.bundlefile import BundleStream, BundleWriter, iso, open_input
from amber.protocol import bundle as b
from amber.protocol import wire
from amber.protocol.chunk import decode_chunk
from amber.protocol.errors import (
    AmberError,
    ConfigError,
    DiskFullError,
    FormatError,
    IntegrityError,
    JournalError,
    NotFoundError,
    OrderReplayError,
    RestoreError,
    SignatureError,
    UsageError,
    WrongTargetError,
)
from amber.protocol.keys import parse_public_key
from amber.protocol.records import (
    Checkpoint,
    checkpoint_public,
    decode_checkpoint,
    decode_manifest,
    manifest_chunk_ids,
)

STAGING = "bundle-staging"
STALE_STAGING_S = 86400.0
BATCH = 64
T = TypeVar("T")


@dataclass
class ImportState:
    """What an import learnt so far (also when it fails: the receipt says it)."""

    bundle_id: bytes = b""
    hub_key: bytes = b""  # the trusted hub key that signed the bundle: it vouches
    checkpoints: dict[bytes, Checkpoint] = field(default_factory=dict)
    manifests: dict[bytes, list[bytes]] = field(default_factory=dict)  # id -> chunk ids
    chunks: dict[bytes, int] = field(default_factory=dict)  # id -> plaintext size
    order: wire.RestoreOrder | wire.RestoreOrderV1 | None = None
    accepted: list[tuple[bytes, Checkpoint]] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    added: int = 0  # checkpoints committed to the journal's index
    new_chunks: int = 0
    outcome: str = "imported"
    job: Job | None = None


def trusted_hub_keys(cfg: AgentConfig, explicit: str | None) -> set[bytes]:
    """``--hub-key``, else agent.toml ``[hub] key``, else the enrolment's ``hub_key``."""
    text = explicit or (str(cfg.hub["key"]) if cfg.hub.get("key") else None)
    if text is not None:
        try:
            return {parse_public_key(text)}
        except FormatError as exc:
            raise UsageError(f"hub key: {exc}", hint="give the 64 hex digits of the key") from None
    enr = load_installed(cfg.state_dir)
    if enr is not None and enr.hub_key:
        return {enr.hub_key}
    raise ConfigError(
        "no hub key is known to check the bundle's signature",
        hint="pass --hub-key HEX (the 'hub_key' of the node's enrolment file), set "
        "[hub] key in agent.toml, or install the enrolment file with 'amber-agent enroll'",
    )


# --- import -------------------------------------------------------------------------


async def import_bundle(rt: AgentRuntime, path: str, trusted: set[bytes], st: ImportState) -> None:
    """Verify, stage and commit a hub-export bundle; then run the order it carries."""
    staging = None
    try:
        with open_input(path) as fh:
            stream = BundleStream(fh)
            header = stream.header()
            st.bundle_id = stream.bundle_id
            _check_header(rt.cfg, header, trusted)
            st.hub_key = header.signer
            staging = _staging_dir(rt.cfg, st.bundle_id)
            await _stage(rt, stream, staging, st)
        await _check_complete(rt, st)
        await _check_order(rt, st)
        async with rt.writing():
            await _plan_index(rt, st)
            await _commit(rt, staging, st)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if st.order is not None:
        await _execute(rt, st)


def _check_header(cfg: AgentConfig, h: b.BundleHeader, trusted: set[bytes]) -> None:
    if h.kind != b.HUB_EXPORT:
        raise WrongTargetError(
            f"this is a {h.kind} bundle made by a node; a node imports only bundles a hub made",
            hint="import node exports and receipts on the hub: 'amber-hub bundle import FILE'",
        )
    if (h.vault, h.node) != (cfg.vault, cfg.node):
        raise WrongTargetError(
            f"the bundle is for {h.vault}/{h.node}, this node is {cfg.vault}/{cfg.node}"
        )
    if h.signer not in trusted:
        raise SignatureError(
            f"the bundle is signed by {h.signer.hex()[:16]}, which is not this node's hub key",
            hint="check where the bundle came from; pass the right --hub-key if the hub's "
            "key really changed",
        )


def _staging_dir(cfg: AgentConfig, bundle_id: bytes) -> Path:
    root = cfg.state_dir / STAGING
    if root.is_dir():  # leftovers of imports killed long ago
        for old in root.iterdir():
            if time.time() - old.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)
    path = root / bundle_id.hex()
    for sub in ("records", "chunks"):
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


async def _stage(rt: AgentRuntime, stream: BundleStream, staging: Path, st: ImportState) -> None:
    loop = asyncio.get_running_loop()
    keys = rt.ident.keys
    heads: list[bytes] = []
    for m in stream.members():
        try:
            if m.role == "chunk":
                plain = await loop.run_in_executor(rt.pool, decode_chunk, keys, m.id, m.data)
                st.chunks[m.id] = len(plain)
            elif m.checkpoint is not None:
                st.checkpoints[m.id] = decode_checkpoint(m.data, keys)
            elif m.manifest is not None and "parts" in m.manifest:
                heads.append(m.id)  # version 2: decoded with its parts at the end
            elif m.manifest is not None:
                st.manifests[m.id] = decode_manifest(m.data, keys).chunk_ids()
            elif m.order is not None:
                st.order = m.order
        except (IntegrityError, FormatError) as exc:
            raise type(exc)(f"bundle member {m.name}: {exc}", hint=exc.hint) from None
        _write(staging / m.name, m.data)
    stream.finish()
    for mid in heads:
        try:
            m = await load_manifest(_staged_record(staging, rt), mid, keys)
        except (IntegrityError, FormatError, NotFoundError) as exc:
            raise type(exc)(f"bundle manifest {mid.hex()[:16]}: {exc}", hint=exc.hint) from None
        assert m is not None
        st.manifests[mid] = m.chunk_ids()


def _staged_record(staging: Path, rt: AgentRuntime) -> GetRecord:
    """Records from the bundle being imported, else from the journal."""

    async def get(rid: bytes) -> bytes | None:
        path = staging / f"{b.RECORD_DIR}{rid.hex()}"
        return path.read_bytes() if path.exists() else await rt.journal.record(rid)

    return get


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"no space left for the bundle's staging area {path.parent}"
            ) from None
        raise JournalError(f"cannot write the bundle's staging area: {exc}") from None


async def _check_complete(rt: AgentRuntime, st: ImportState) -> None:
    """Every manifest of every checkpoint is in the bundle or in the journal."""
    named = sorted({m for cp in st.checkpoints.values() for m in cp.manifests.values()})
    present = set(st.manifests) | set(await rt.journal.record_states(named))
    for cp in st.checkpoints.values():
        lacking = [m for m in cp.manifests.values() if m not in present]
        if lacking:
            raise IntegrityError(
                f"the bundle lacks manifest {lacking[0].hex()[:16]} of checkpoint seq {cp.seq}",
                hint="export the bundle again from the hub",
            )


async def _plan_index(rt: AgentRuntime, st: ImportState) -> None:
    """Which checkpoints extend the journal's index (run under the write lock)."""
    ids = {r.seq: r.id for r in await rt.journal.checkpoints()}
    for cid, cp in sorted(st.checkpoints.items(), key=lambda kv: kv[1].seq):
        if ids.get(cp.seq) == cid:
            continue
        if cp.seq in ids or not await _fits(rt, ids, cid, cp):
            st.conflicts.append(cp.seq)  # a fork: its records are kept, not indexed
            continue
        ids[cp.seq] = cid
        st.accepted.append((cid, cp))


async def _fits(rt: AgentRuntime, ids: dict[int, bytes], cid: bytes, cp: Checkpoint) -> bool:
    """Whether ``cp`` links to its neighbours in the index (if they are there)."""
    before = ids.get(cp.seq - 1)
    if before is not None and cp.prev != before:
        return False
    after = ids.get(cp.seq + 1)
    if after is None:
        return True
    data = await rt.journal.record(after)
    return data is not None and checkpoint_public(data).prev == cid


async def _check_order(rt: AgentRuntime, st: ImportState) -> None:
    order = st.order
    if order is None:
        return
    ex = OrderExecutor(rt, None)
    await ex.jobs.setup()
    job = await ex.jobs.get(order.order_id)
    if job is not None:
        if not job.finished:
            await ex.recover()  # cut short by a crash: rolled back, as at the daemon's start
            job = await ex.jobs.get(order.order_id)
        st.outcome, st.job = "replayed", job
        raise OrderReplayError(
            f"restore order {order.order_id} (plan {order.plan_id}) was already run on this "
            f"node: {job.state if job else '?'}; it never runs twice"
        )
    if order.expires_us < time.time_ns() // 1000:
        raise RestoreError(
            f"restore order {order.order_id} expired at {iso(order.expires_us)}",
            hint="export a new bundle with a fresh order: amber-hub bundle export --restore-order",
        )
    st.order = order = wire.current_order(order)  # never a command line from the hub
    resolve(rt.cfg, order.checks if order.action == "restore" else ())
    await _check_order_chunks(rt, st, order)


async def _check_order_chunks(rt: AgentRuntime, st: ImportState, order: wire.RestoreOrder) -> None:
    cp = st.checkpoints.get(order.checkpoint)
    if cp is None:
        data = await rt.journal.record(order.checkpoint)
        if data is None:
            raise IntegrityError(
                f"the order's checkpoint {order.checkpoint.hex()[:16]} is neither in the "
                "bundle nor in the journal",
                hint="export the bundle again from the hub",
            )
        cp = decode_checkpoint(data, rt.ident.keys)
    needed: set[bytes] = set()
    for name, mid in cp.manifests.items():
        if order.sources and name not in order.sources:
            continue
        if mid not in st.manifests:
            recs = await manifest_records(rt.journal.record, mid)
            assert recs is not None  # _check_complete saw every manifest
            st.manifests[mid] = manifest_chunk_ids(recs[0][1], [d for _, d in recs[1:]])
        needed.update(st.manifests[mid])
    lacking = (
        needed - set(st.chunks) - await rt.journal.held_chunks(sorted(needed - set(st.chunks)))
    )
    if lacking:
        raise IntegrityError(
            f"the bundle lacks {len(lacking)} chunk(s) the restore needs and the journal "
            "does not hold",
            hint="export the bundle again from the hub",
        )


async def _commit(rt: AgentRuntime, staging: Path | None, st: ImportState) -> None:
    """One transaction: chunks, records and the new index rows, or nothing."""
    assert staging is not None
    j = rt.journal
    st.new_chunks = len(st.chunks) - len(await j.known_chunks(sorted(st.chunks)))
    wanted = sorted(set(st.chunks) - await rt.journal.held_chunks(sorted(st.chunks)))
    async with j.appending() as append:  # blobs into the packs first, then one transaction
        placed: dict[bytes, tuple[int, int, int]] = {}
        try:
            for batch in batches(wanted):
                rows = [(cid, (staging / f"chunks/{cid.hex()}").read_bytes()) for cid in batch]
                for (cid, blob), (num, off) in zip(rows, await append(rows), strict=True):
                    placed[cid] = (num, off, len(blob))
        except OSError as exc:  # the staging area went away (another import of it ended)
            raise JournalError(f"cannot read the bundle's staging area: {exc}") from None
        await j.sync_packs()
        try:
            async with j.transaction() as db:
                await _commit_body(db, staging, st, placed)
                await j.check_bound(rt.cfg.journal_max_bytes)
        except OSError as exc:  # the staging area went away (another import of it ended)
            raise JournalError(f"cannot read the bundle's staging area: {exc}") from None
    st.added = len(st.accepted)


async def _commit_body(
    db: aiosqlite.Connection,
    staging: Path,
    st: ImportState,
    placed: dict[bytes, tuple[int, int, int]],
) -> None:
    """In the journal's transaction ``db``; ``placed``: chunk id -> (pack, offset, stored)
    of the blobs appended for this import."""
    now = time.time_ns() // 1000
    for batch in batches(sorted(placed)):
        await db.executemany(
            "INSERT OR IGNORE INTO chunks(id, size, stored, state, used_us, pack, off) "
            "VALUES(?,?,?,?,?,?,?)",
            [
                (cid, st.chunks[cid], placed[cid][2], DURABLE, now, *placed[cid][:2])
                for cid in batch
            ],
        )
        await db.executemany(  # a chunk the journal evicted gets its blob back
            f"UPDATE chunks SET pack = ?, off = ?, stored = ? WHERE id = ? AND NOT {HELD}",
            [(*placed[cid], cid) for cid in batch],
        )
    for batch in batches(sorted(p.name for p in (staging / "records").iterdir())):
        rows = []
        for name in batch:
            rid = bytes.fromhex(name)
            data = (staging / "records" / name).read_bytes()
            rows.append((rid, data[5], DURABLE, data))  # the kind: header byte 5
        await db.executemany(
            "INSERT OR IGNORE INTO records(id, kind, state, data) VALUES(?,?,?,?)", rows
        )
    await db.executemany(
        "INSERT INTO checkpoints VALUES(?,?,?,?,?,?,?)",
        [checkpoint_row(cp, cid, DURABLE) for cid, cp in st.accepted],
    )
    await _vouch(db, staging, st)


async def _vouch(db: aiosqlite.Connection, staging: Path, st: ImportState) -> None:
    """The hub's signature over the index (and the order in it) vouches for every
    checkpoint they name, with the key that signed it (agent/vouches.py)."""
    rows = [
        vouch_row(cid, (staging / f"{b.RECORD_DIR}{cid.hex()}").read_bytes(), HUB, st.hub_key)
        for cid in st.checkpoints
    ]
    order = st.order
    if order is not None and order.checkpoint not in st.checkpoints:  # in the journal
        async with db.execute("SELECT data FROM records WHERE id = ?", (order.checkpoint,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            rows.append(vouch_row(order.checkpoint, row[0], HUB, st.hub_key))
    await db.executemany(UPGRADE, rows)


def batches(ids: list[T]) -> Iterator[list[T]]:
    for i in range(0, len(ids), BATCH):
        yield ids[i : i + BATCH]


async def _execute(rt: AgentRuntime, st: ImportState) -> None:
    order = st.order
    assert order is not None
    ex = OrderExecutor(rt, None)  # reports stay queued in restore_jobs; the receipt carries them
    if not await ex.accept(order):
        st.outcome, st.job = "replayed", await ex.jobs.get(order.order_id)
        raise OrderReplayError(f"restore order {order.order_id} was already run on this node")
    st.outcome = "executed"
    try:
        await ex.execute(order)
    finally:
        st.job = await ex.jobs.get(order.order_id)


# --- receipts -----------------------------------------------------------------------


def make_receipt(st: ImportState, error: AmberError | None) -> b.BundleReceipt:
    job, order = st.job, st.order
    outcome = st.outcome if error is None or isinstance(error, OrderReplayError) else "refused"
    if error is not None and st.outcome == "executed":
        outcome = "executed"  # the order ran; its job row says how it ended
    return b.BundleReceipt(
        bundle=st.bundle_id,
        outcome=outcome,
        order_id=order.order_id if order else "",
        plan_id=order.plan_id if order else "",
        state=job.state if job is not None else "",
        # codes and counts only: paths and the output of hooks and checks stay on the node
        detail=report_detail(job.state, job.detail)
        if job is not None and job.detail
        else (error_code(error) if error else ""),
        safety=job.safety if job is not None else b"",
        checkpoint=order.checkpoint if order else b"",
        added=st.added,
        error=type(error).__name__ if error is not None else "",
        exit_code=error.exit_code if error is not None else 0,
        time_us=time.time_ns() // 1000,
    )


def write_receipt(rt: AgentRuntime, out: str, receipt: b.BundleReceipt) -> None:
    header = b.BundleHeader(
        b.RECEIPT, rt.cfg.vault, rt.cfg.node, time.time_ns() // 1000, rt.ident.signer.public
    )
    with BundleWriter(out, header) as w:
        w.add(b.RECEIPT_NAME, receipt.encode())
        w.finish(rt.ident.signer)
