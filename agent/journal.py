"""The agent's journal: an SQLite database (WAL, synchronous=FULL) via aiosqlite.

It holds encrypted chunk blobs (in append-only pack files next to it, ``packs.py``;
the ``chunks`` table is their index), signed records (manifests, checkpoints), an
index of checkpoints, per-source incremental state (sealed), and sync and restore
state. Only ids, sizes, sequence numbers and times are in the clear.

Crash safety: chunks written while a checkpoint runs are *tentative* (state 0); the
checkpoint's records, its index row, the sources' state and the promotion of its
chunks to *committed* (state 1) happen in one transaction. A crash at any instant
leaves either the old head or the new one, never a partial checkpoint; tentative
leftovers are deleted the next time the journal is opened for writing.
Schema in docs/FORMAT.md ("Journal").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amber.agent.packs import ENTRY, PackStore
from amber.agent.vouches import INSERT as INSERT_VOUCH
from amber.agent.vouches import LINK, SELF, VOUCHES_DDL, migrate_to_3, vouch_row
from amber.protocol.errors import (
    AmberError,
    DiskFullError,
    IntegrityError,
    JournalError,
    JournalFullError,
    NotFoundError,
    UnknownVersionError,
    WrongKeyError,
)
from amber.protocol.keys import VaultKeys, derive_subkey
from amber.protocol.records import KIND_CHECKPOINT, Checkpoint, check_chain
from amber.sqlitetx import begin_immediate, rollback_if_open

log = logging.getLogger("amber.agent.journal")
JOURNAL_FORMAT = "amber-journal"
JOURNAL_VERSION = 3
TENTATIVE, COMMITTED, DURABLE = 0, 1, 2
PAGE_SIZE = 65536
PACK_DIR = "packs"  # next to the journal file
HELD = "(pack IS NOT NULL OR blob IS NOT NULL)"  # the journal still holds the chunk's blob
COMPACT_BELOW = 0.5  # rewrite a pack once less than this share of it is still held

SCHEMA = (
    """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY, size INTEGER NOT NULL, stored INTEGER NOT NULL,
    state INTEGER NOT NULL, used_us INTEGER NOT NULL, blob BLOB, pack INTEGER, off INTEGER);
CREATE INDEX chunks_state ON chunks(state);
CREATE TABLE records(
    id BLOB PRIMARY KEY, kind INTEGER NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE checkpoints(
    seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, time_us INTEGER NOT NULL,
    kind TEXT NOT NULL, labels TEXT NOT NULL, sources TEXT NOT NULL, state INTEGER NOT NULL);
CREATE TABLE source_state(source TEXT PRIMARY KEY, manifest_id BLOB NOT NULL, data BLOB NOT NULL);
"""
    + VOUCHES_DDL
)


def checkpoint_row(cp: Checkpoint, cid: bytes, state: int) -> tuple[Any, ...]:
    """The values of a ``checkpoints`` index row for ``cp`` (column order of SCHEMA)."""
    return (
        cp.seq,
        cid,
        cp.time_us,
        cp.kind,
        json.dumps(cp.labels),
        json.dumps(sorted(cp.manifests)),
        state,
    )


@dataclass(frozen=True)
class CheckpointRow:
    seq: int
    id: bytes
    time_us: int
    kind: str
    labels: dict[str, str]
    sources: list[str]
    synced: bool


def _db_error(exc: sqlite3.Error, path: Path) -> AmberError:
    text = str(exc)
    if "full" in text:
        return DiskFullError(f"no space left for the journal {path}: nothing was committed")
    if "not a database" in text or "malformed" in text:
        return JournalError(
            f"journal {path} is corrupted: {text}",
            hint="move it aside and re-create it; checkpoints already at the hub stay restorable",
        )
    if "locked" in text or "busy" in text:
        return JournalError(
            f"journal {path} is locked by another process",
            hint="another amber-agent command holds the journal; retry when it ends",
        )
    return JournalError(f"journal {path}: {text}")


class Journal:
    """Async access to one journal file. Use ``async with await Journal.open(...)``."""

    def __init__(self, db: aiosqlite.Connection, path: Path, keys: VaultKeys) -> None:
        self.db = db
        self.path = path
        self._reader: aiosqlite.Connection | None = None  # read-only, for dedup lookups
        self._tx_lock = asyncio.Lock()  # the checkpointer and the sync loop share this connection
        self._state_key = AESGCM(derive_subkey(keys.master, b"journal-state"))
        self.packs = PackStore(path.parent / PACK_DIR)
        self._pack_thread = ThreadPoolExecutor(1, thread_name_prefix="amber-pack")
        self._pack_lock = asyncio.Lock()  # pack appends and their rows vs trimming

    async def _in_packs(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pack_thread, fn, *args)

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path, keys: VaultKeys, *, vault: str, node: str, create: bool = False
    ) -> Journal:
        if not create and not path.exists():
            raise JournalError(
                f"journal {path} does not exist", hint="run 'amber-agent init' first"
            )
        try:
            db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise _db_error(exc, path) from None
        journal = cls(db, path, keys)
        try:
            await journal._setup(keys, vault, node, create)
        except BaseException:
            await db.close()
            raise
        return journal

    async def _setup(self, keys: VaultKeys, vault: str, node: str, create: bool) -> None:
        try:
            tables = await self.query("SELECT name FROM sqlite_master WHERE type='table'")
            if not tables and create:
                await self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                await self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                await self.db.execute("PRAGMA journal_mode=WAL")
                await self.db.executescript(SCHEMA)
                meta = {
                    "format": JOURNAL_FORMAT,
                    "version": str(JOURNAL_VERSION),
                    "vault": vault,
                    "node": node,
                    "fingerprint": keys.fingerprint,
                }
                await self.db.executemany("INSERT INTO meta VALUES(?,?)", meta.items())
                os.chmod(self.path, 0o600)
            await self.db.execute("PRAGMA journal_mode=WAL")
            await self.db.execute("PRAGMA synchronous=FULL")
            meta = dict(await self.query("SELECT key, value FROM meta"))
            if meta.get("format") == JOURNAL_FORMAT and meta.get("version") == "1":
                await self._migrate_from_1()
                meta["version"] = "2"
            if meta.get("format") == JOURNAL_FORMAT and meta.get("version") == "2":
                await self._migrate_from_2()
                meta["version"] = "3"
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None
        self._check_meta(meta, keys, vault, node)

    async def _migrate_from_1(self) -> None:
        """Version 1 kept every blob in ``chunks.blob``; version 2 adds the pack index
        columns. Old blobs stay where they are and are read from there."""
        async with self.transaction():
            await self.db.execute("ALTER TABLE chunks ADD COLUMN pack INTEGER")
            await self.db.execute("ALTER TABLE chunks ADD COLUMN off INTEGER")
            await self.db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
        log.info("journal %s migrated from format version 1 to 2", self.path)

    async def _migrate_from_2(self) -> None:
        """Version 3 adds ``vouches`` (agent/vouches.py): who vouched for each checkpoint.
        The checkpoints indexed before are recorded as ``migrated``, with their signer."""
        async with self.transaction() as db:
            await migrate_to_3(db)
            await db.execute("UPDATE meta SET value = '3' WHERE key = 'version'")
        log.info("journal %s migrated from format version 2 to 3", self.path)

    def _check_meta(self, meta: dict[str, str], keys: VaultKeys, vault: str, node: str) -> None:
        if meta.get("format") != JOURNAL_FORMAT:
            raise JournalError(f"{self.path} is not an Amber journal")
        if meta.get("version") != str(JOURNAL_VERSION):
            raise UnknownVersionError(f"journal format version {meta.get('version')} is unknown")
        if meta.get("fingerprint") != keys.fingerprint:
            raise WrongKeyError(
                f"journal {self.path} belongs to vault key {meta.get('fingerprint')}, "
                f"but the configured vault key is {keys.fingerprint}"
            )
        if meta.get("vault") != vault or meta.get("node") != node:
            raise JournalError(
                f"journal {self.path} belongs to {meta.get('vault')}/{meta.get('node')}, "
                f"not {vault}/{node}",
                hint="point state_dir in agent.toml at this node's own journal",
            )

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        await self._in_packs(self.packs.close)
        self._pack_thread.shutdown(wait=True)
        await self.db.close()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- SQL, for this module and for modules that keep their own tables in the journal
    # (restore/jobs.py) or write its tables in their own transaction (bundle import) ---

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """All rows of one statement; SQLite errors become typed errors."""
        try:
            async with self.db.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None

    async def execute_script(self, script: str) -> None:
        """Run a schema script (``CREATE ... IF NOT EXISTS``) between transactions."""
        async with self._tx_lock:
            try:
                await self.db.executescript(script)
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = await self.query(sql, args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, one at a time on this connection; rolled back on
        any error or cancellation; SQLite errors become typed errors. Yields the
        connection, to run the transaction's statements on (and nothing else).

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL``:
        still atomic, but a power cut may take it back). Only for rows that are worthless
        after a crash anyway (tentative chunks): the next durable commit syncs the whole
        WAL, them included, before anything that references them becomes visible."""
        async with self._tx_lock:
            try:
                if not durable:
                    await self.db.execute("PRAGMA synchronous=NORMAL")
                await begin_immediate(self.db)
                try:
                    yield self.db
                    await self.db.execute("COMMIT")
                except BaseException:
                    await rollback_if_open(self.db)
                    raise
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None
            finally:
                if not durable:  # shielded: the next writer must not inherit NORMAL
                    try:
                        await asyncio.shield(self.db.execute("PRAGMA synchronous=FULL"))
                    except sqlite3.Error as exc:
                        raise _db_error(exc, self.path) from None

    async def write(self, sql: str, rows: Iterable[Sequence[Any]], *, durable: bool = True) -> None:
        """One statement for each of ``rows``, in one transaction."""
        async with self.transaction(durable=durable):
            await self.db.executemany(sql, rows)

    # --- chunks ---------------------------------------------------------------------

    async def known_chunks(self, ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``ids`` the journal has a committed row for (held, or durable at the
        hub). Asked on a second, read-only connection, so the lookup never waits behind
        the writer's chunk inserts (which the checkpointer tracks itself)."""
        if self._reader is None:
            try:
                self._reader = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
                await self._reader.execute("PRAGMA query_only=1")
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None
        found: set[bytes] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            try:
                async with self._reader.execute(
                    f"SELECT id FROM chunks WHERE id IN ({marks})", part
                ) as cur:
                    found.update(r[0] for r in await cur.fetchall())
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None
        return found

    async def put_chunks(self, rows: Sequence[tuple[bytes, int, bytes]], now_us: int) -> None:
        """Store tentative chunks ``(id, plaintext size, blob)``; existing ids are kept.
        The blobs are appended to the active pack; ``commit_checkpoint`` makes them
        durable before the checkpoint that references them becomes visible."""
        async with self._pack_lock:
            locs = await self._in_packs(self.packs.append, [(cid, blob) for cid, _, blob in rows])
            await self.write(
                "INSERT OR IGNORE INTO chunks(id, size, stored, state, used_us, pack, off) "
                "VALUES(?,?,?,0,?,?,?)",
                [
                    (cid, size, len(blob), now_us, num, off)
                    for (cid, size, blob), (num, off) in zip(rows, locs, strict=True)
                ],
                durable=False,  # tentative: commit_checkpoint makes them durable
            )

    @asynccontextmanager
    async def appending(self) -> AsyncIterator[Callable[[Sequence[tuple[bytes, bytes]]], Any]]:
        """For writers that insert their own rows (bundle import): yields an async
        ``append([(id, blob)]) -> [(pack, offset)]``; on exit the packs are synced. Trimming
        waits meanwhile, so blobs whose rows are not committed yet are not cut off."""
        async with self._pack_lock:

            async def append(rows: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
                return await self._in_packs(self.packs.append, list(rows))  # type: ignore[no-any-return]

            yield append

    async def sync_packs(self) -> None:
        await self._in_packs(self.packs.sync)

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """Blobs the journal still holds for ``ids`` (evicted or unknown ones are absent)."""
        out: dict[bytes, bytes] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            sql = f"SELECT id, blob, pack, off, stored FROM chunks WHERE {HELD} AND id IN ({marks})"
            rows = await self.query(sql, part)
            in_packs = []
            for cid, blob, num, off, stored in rows:
                if blob is not None:
                    out[cid] = blob
                else:
                    in_packs.append((cid, num, off, stored))
            if in_packs:
                try:
                    out.update(await self._in_packs(self.packs.read, in_packs))
                except IntegrityError:
                    # another process may have compacted a pack meanwhile: ask again once
                    again = await self.query(sql, [r[0] for r in in_packs])
                    out.update(
                        await self._in_packs(
                            self.packs.read, [(r[0], r[2], r[3], r[4]) for r in again]
                        )
                    )
        return out

    async def held_chunks(self, ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``ids`` the journal still holds the blob of."""
        found: set[bytes] = set()
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            rows = await self.query(f"SELECT id FROM chunks WHERE {HELD} AND id IN ({marks})", part)
            found.update(r[0] for r in rows)
        return found

    async def chunk_states(self, ids: Sequence[bytes]) -> dict[bytes, tuple[int, bool]]:
        """``id -> (state, blob still held)`` for the ids the journal has a row for."""
        out: dict[bytes, tuple[int, bool]] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            sql = f"SELECT id, state, {HELD} FROM chunks WHERE id IN ({marks})"
            out.update((r[0], (r[1], bool(r[2]))) for r in await self.query(sql, part))
        return out

    async def discard_tentative(self) -> None:
        """Delete chunks a crashed or cancelled checkpoint left behind, and their blobs.

        Called whenever this process takes the state directory's write lock. Another
        process may have written since this one last held it (appended to, compacted or
        removed packs), so the pack store forgets its open pack and finds the end anew."""
        async with self._pack_lock:
            await self._in_packs(self.packs.close)
            await self.write("DELETE FROM chunks WHERE state = ?", [(TENTATIVE,)])
            await self._trim()

    async def _trim(self) -> int:
        """Cut what no row references off the packs (call with ``_pack_lock`` held)."""
        rows = await self.query(
            f"SELECT pack, max(off + {ENTRY.size} + stored) FROM chunks"
            " WHERE pack IS NOT NULL GROUP BY pack"
        )
        return int(await self._in_packs(self.packs.trim, {r[0]: r[1] for r in rows}))

    async def held_bytes(self) -> int:
        row = await self._one(
            f"SELECT (SELECT coalesce(sum(stored),0) FROM chunks WHERE {HELD})"
            " + (SELECT coalesce(sum(length(data)),0) FROM records)"
        )
        return int(row[0])

    async def backlog(self) -> tuple[int, int]:
        """(bytes, chunks) committed locally and not yet durable at the hub."""
        row = await self._one(
            "SELECT coalesce(sum(stored),0), count(*) FROM chunks WHERE state = ?", (COMMITTED,)
        )
        return int(row[0]), int(row[1])

    # --- checkpoints ----------------------------------------------------------------

    async def commit_checkpoint(
        self,
        cp: Checkpoint,
        cp_id: bytes,
        cp_data: bytes,
        manifests: Sequence[tuple[bytes, bytes]],
        states: dict[str, tuple[bytes, bytes]],
        referenced: Iterable[bytes],
        max_bytes: int,
    ) -> None:
        """Make a checkpoint visible, atomically. ``states``: source -> (manifest id, sealed).
        The packs are synced first: a committed row never points at bytes a power cut
        could take back."""
        await self.sync_packs()
        async with self.transaction():
            await self._commit_body(cp, cp_id, cp_data, manifests, states, referenced)
            await self.check_bound(max_bytes)

    async def _commit_body(
        self,
        cp: Checkpoint,
        cp_id: bytes,
        cp_data: bytes,
        manifests: Sequence[tuple[bytes, bytes]],
        states: dict[str, tuple[bytes, bytes]],
        referenced: Iterable[bytes],
    ) -> None:
        db = self.db
        async with db.execute("SELECT seq, id FROM checkpoints ORDER BY seq DESC LIMIT 1") as cur:
            head = await cur.fetchone()
        check_chain(head[1] if head else None, head[0] if head else None, cp)
        await db.executemany(
            "INSERT OR IGNORE INTO records(id, kind, state, data) VALUES(?,?,?,?)",
            [(mid, data[5], COMMITTED, data) for mid, data in manifests],  # kind: header byte 5
        )
        await db.execute(
            "INSERT INTO records(id, kind, state, data) VALUES(?,?,?,?)",
            (cp_id, KIND_CHECKPOINT, COMMITTED, cp_data),
        )
        await db.execute(
            "INSERT INTO checkpoints VALUES(?,?,?,?,?,?,?)", checkpoint_row(cp, cp_id, COMMITTED)
        )
        await db.execute(INSERT_VOUCH, vouch_row(cp_id, cp_data, SELF))
        await db.executemany(
            "INSERT OR REPLACE INTO source_state VALUES(?,?,?)",
            [(src, mid, data) for src, (mid, data) in states.items()],
        )
        await db.execute("CREATE TEMP TABLE IF NOT EXISTS ref(id BLOB PRIMARY KEY)")
        await db.execute("DELETE FROM temp.ref")
        await db.executemany("INSERT OR IGNORE INTO temp.ref VALUES(?)", ((r,) for r in referenced))
        await db.execute(  # what the newest checkpoint uses stays longest in the cache (LRU)
            "UPDATE chunks SET used_us = ? WHERE id IN (SELECT id FROM temp.ref)",
            (cp.time_us,),
        )
        await db.execute(
            "UPDATE chunks SET state = ? WHERE state = ? AND id IN (SELECT id FROM temp.ref)",
            (COMMITTED, TENTATIVE),
        )
        await db.execute("DELETE FROM chunks WHERE state = ?", (TENTATIVE,))

    async def check_bound(self, max_bytes: int) -> None:
        async with self.db.execute(
            f"SELECT (SELECT coalesce(sum(stored),0) FROM chunks WHERE {HELD})"
            " + (SELECT coalesce(sum(length(data)),0) FROM records)"
        ) as cur:
            row = await cur.fetchone()
        if row and row[0] > max_bytes:
            raise JournalFullError(
                f"the checkpoint would grow the journal to {row[0]} bytes, over its bound of "
                f"{max_bytes} bytes; nothing was committed"
            )

    async def head(self) -> CheckpointRow | None:
        rows = await self.checkpoints(limit=1, newest_first=True)
        return rows[0] if rows else None

    async def checkpoints(
        self, *, limit: int | None = None, newest_first: bool = False
    ) -> list[CheckpointRow]:
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM checkpoints ORDER BY seq {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [
            CheckpointRow(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6] == 2)
            for r in await self.query(sql)
        ]

    async def resolve(self, ref: str) -> CheckpointRow:
        """A checkpoint by hex id prefix (at least 4 digits), ``latest`` or ``seq:N``."""
        rows = await self.checkpoints()
        if ref == "latest" and rows:
            return rows[-1]
        if ref.startswith("seq:"):
            hits = [r for r in rows if str(r.seq) == ref[4:]]
        else:
            hits = [r for r in rows if len(ref) >= 4 and r.id.hex().startswith(ref.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise NotFoundError(f"checkpoint id {ref!r} is ambiguous", hint="give more digits")
        raise NotFoundError(f"no checkpoint {ref!r} in the local journal")

    async def record(self, rid: bytes) -> bytes | None:
        row = await self._one("SELECT data FROM records WHERE id = ?", (rid,))
        return row[0] if row else None

    async def add_records(self, rows: Sequence[tuple[bytes, int, bytes]], state: int) -> None:
        """Add records fetched from elsewhere (e.g. the hub) without touching the index."""
        await self.write(
            "INSERT OR IGNORE INTO records(id, kind, state, data) VALUES(?,?,?,?)",
            [(rid, kind, state, data) for rid, kind, data in rows],
        )

    # --- sync state -------------------------------------------------------------------

    async def unsynced(self) -> list[CheckpointRow]:
        return [r for r in await self.checkpoints() if not r.synced]

    async def record_states(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            rows = await self.query(f"SELECT id, state FROM records WHERE id IN ({marks})", part)
            out.update((r[0], r[1]) for r in rows)
        return out

    async def mark_durable(
        self, chunk_ids: Sequence[bytes], record_ids: Sequence[bytes], seq: int
    ) -> None:
        """The hub's receipt says these are durable in its object store."""
        async with self.transaction():
            await self.db.executemany(
                "UPDATE chunks SET state = ? WHERE id = ? AND state = ?",
                [(DURABLE, c, COMMITTED) for c in chunk_ids],
            )
            await self.db.executemany(
                "UPDATE records SET state = ? WHERE id = ?",
                [(DURABLE, r) for r in record_ids],
            )
            await self.db.execute("UPDATE checkpoints SET state = ? WHERE seq = ?", (DURABLE, seq))

    async def evict(self, cache_bytes: int) -> int:
        """Drop blobs of chunks durable at the hub, keeping the newest ``cache_bytes``,
        then give the space back: packs nothing references are deleted, packs mostly
        dropped are rewritten (``compact``)."""
        sql = (
            "UPDATE chunks SET blob = NULL, pack = NULL, off = NULL WHERE id IN (SELECT id FROM ("
            " SELECT id, sum(stored) OVER (ORDER BY used_us DESC, id) AS cum FROM chunks"
            f" WHERE state = ? AND {HELD}) WHERE cum > ?)"
        )
        before = await self.held_bytes()
        await self.write(sql, [(DURABLE, cache_bytes)])
        async with self._tx_lock:
            try:
                await self.db.execute("PRAGMA incremental_vacuum")  # version 1 rows' blobs
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None
        await self.compact()
        return before - await self.held_bytes()

    async def compact(self) -> int:
        """Reclaim pack space: delete unreferenced packs and tails, and rewrite each
        closed pack of which less than ``COMPACT_BELOW`` is still referenced into the
        active one (copy, sync, repoint the rows in one transaction, then delete the old
        file; a crash in between leaves an unreferenced copy that the next trim drops).
        Returns the bytes freed on disk."""
        async with self._pack_lock:
            freed = await self._trim()
            sizes: dict[int, int] = await self._in_packs(self.packs.sizes)
            live = await self.query(
                f"SELECT pack, sum({ENTRY.size} + stored) FROM chunks"
                " WHERE pack IS NOT NULL GROUP BY pack"
            )
            active = max(sizes, default=-1)
            for num, used in live:
                size = sizes.get(num, 0)
                if num == active or size == 0 or used >= COMPACT_BELOW * size:
                    continue
                rows = await self.query(
                    "SELECT id, pack, off, stored FROM chunks WHERE pack = ? ORDER BY off", (num,)
                )
                for i in range(0, len(rows), 256):
                    part = rows[i : i + 256]
                    blobs = await self._in_packs(self.packs.read, part)
                    locs = await self._in_packs(
                        self.packs.append, [(r[0], blobs[r[0]]) for r in part]
                    )
                    await self._in_packs(self.packs.sync)
                    await self.write(
                        "UPDATE chunks SET pack = ?, off = ? WHERE id = ? AND pack = ? AND off = ?",
                        [
                            (new[0], new[1], r[0], r[1], r[2])
                            for r, new in zip(part, locs, strict=True)
                        ],
                    )
                await self._in_packs(self.packs.remove, num)
                freed += size - used
            return freed

    async def adopt(self, rows: Sequence[tuple[bytes, bytes, Checkpoint]]) -> int:
        """Add checkpoints the hub holds (e.g. after the node's disk was lost) to the
        index, so they can be listed, restored and continued. Returns how many were new."""
        have = {r.seq: r.id for r in await self.checkpoints()}
        new = []
        for cid, data, cp in sorted(rows, key=lambda r: r[2].seq):
            if cp.seq in have:
                continue
            if cp.seq > 0 and have.get(cp.seq - 1, cp.prev) != cp.prev:
                log.warning(
                    "not adopting checkpoint seq %d: it does not continue this journal's chain",
                    cp.seq,
                )
                continue  # never splice a forked history into the index
            have[cp.seq] = cid
            new.append((cid, data, cp))
        async with self.transaction() as db:  # the record, its index row and its vouch
            await db.executemany(
                "INSERT OR IGNORE INTO records(id, kind, state, data) VALUES(?,?,?,?)",
                [(cid, KIND_CHECKPOINT, DURABLE, data) for cid, data, _ in new],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO checkpoints VALUES(?,?,?,?,?,?,?)",
                [checkpoint_row(cp, cid, DURABLE) for cid, _, cp in new],
            )
            await db.executemany(INSERT_VOUCH, [vouch_row(c, d, LINK) for c, d, _ in new])
        return len(new)

    # --- per-source incremental state -----------------------------------------------

    def seal_state(self, obj: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._state_key.encrypt(nonce, obj, b"amber-source-state")

    def open_state(self, data: bytes) -> bytes:
        try:
            return self._state_key.decrypt(data[:12], data[12:], b"amber-source-state")
        except InvalidTag:
            raise IntegrityError("source state in the journal failed authentication") from None

    async def source_state(self, source: str) -> tuple[bytes, bytes] | None:
        row = await self._one(
            "SELECT manifest_id, data FROM source_state WHERE source = ?", (source,)
        )
        return (row[0], self.open_state(row[1])) if row else None

    async def integrity_check(self) -> list[str]:
        rows = await self.query("PRAGMA integrity_check")
        return [r[0] for r in rows if r[0] != "ok"]
