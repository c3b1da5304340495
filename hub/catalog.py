"""The hub's catalog: an SQLite index (aiosqlite) over what the store holds.

Nodes and their NATS users, which objects are durable in the store, checkpoints
and manifests with their public metadata. Everything here except node credentials
and heartbeats can be rebuilt from the store (``amber-hub catalog rebuild``), since
manifests and checkpoints are stored objects too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import bcrypt

from amber.logs import register_secret
from amber.protocol.errors import JournalError, NotFoundError, SignatureError
from amber.protocol.records import Checkpoint
from amber.sqlitetx import immediate

CHUNK, RECORD, PACK = "c", "r", "p"
BCRYPT_ROUNDS = 10  # about 0.1 s per check: paid by nats-server at each node connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes(
    vault TEXT NOT NULL, node TEXT NOT NULL, user TEXT NOT NULL UNIQUE, password TEXT NOT NULL,
    created_us INTEGER NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
    last_seen_us INTEGER, heartbeat TEXT, signer BLOB,
    PRIMARY KEY(vault, node));
CREATE TABLE IF NOT EXISTS objects(
    vault TEXT NOT NULL, id BLOB NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    stored_us INTEGER NOT NULL, pack BLOB, off INTEGER, PRIMARY KEY(vault, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(
    vault TEXT NOT NULL, node TEXT NOT NULL, seq INTEGER NOT NULL, id BLOB NOT NULL,
    prev BLOB, time_us INTEGER NOT NULL, kind TEXT NOT NULL, labels TEXT NOT NULL,
    manifests TEXT NOT NULL, signer BLOB NOT NULL, received_us INTEGER NOT NULL,
    PRIMARY KEY(vault, node, seq));
CREATE UNIQUE INDEX IF NOT EXISTS checkpoints_id ON checkpoints(vault, id);
CREATE TABLE IF NOT EXISTS refusals(
    vault TEXT NOT NULL, node TEXT NOT NULL, id BLOB NOT NULL, reason TEXT NOT NULL,
    at_us INTEGER NOT NULL, PRIMARY KEY(vault, node, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests(
    vault TEXT NOT NULL, id BLOB NOT NULL, node TEXT NOT NULL, source TEXT NOT NULL,
    kind TEXT NOT NULL, tier TEXT NOT NULL, time_us INTEGER NOT NULL, size INTEGER NOT NULL,
    chunks INTEGER NOT NULL, PRIMARY KEY(vault, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signer_pins(
    vault TEXT NOT NULL, node TEXT NOT NULL, signer BLOB, pinned_us INTEGER,
    retired TEXT NOT NULL DEFAULT '[]', PRIMARY KEY(vault, node));
"""
CATALOG_VERSION = 1
"""PRAGMA user_version: 1 = node signing keys pinned in signer_pins."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where an object's bytes are in the store."""

    kind: str
    size: int
    pack: bytes | None = None
    """The pack object holding it (a chunk), or None: the object has its own key."""
    off: int | None = None
    """Offset of its bytes in the pack."""


@dataclass(frozen=True)
class NodeRow:
    vault: str
    node: str
    user: str
    password: str  # its bcrypt hash ($2a$...): nats-server checks passwords against it
    created_us: int
    labels: dict[str, str]
    last_seen_us: int | None
    heartbeat: dict[str, Any] | None
    signer: bytes | None


@dataclass(frozen=True)
class CheckpointEntry:
    vault: str
    node: str
    seq: int
    id: bytes
    prev: bytes | None
    time_us: int
    kind: str
    labels: dict[str, str]
    manifests: dict[str, str]  # source -> manifest id hex
    signer: bytes
    received_us: int

    def to_json(self) -> dict[str, Any]:
        return {
            "vault": self.vault,
            "node": self.node,
            "seq": self.seq,
            "id": self.id.hex(),
            "prev": self.prev.hex() if self.prev else None,
            "time_us": self.time_us,
            "kind": self.kind,
            "labels": self.labels,
            "sources": sorted(self.manifests),
            "signer": self.signer.hex(),
            "received_us": self.received_us,
        }


class Transaction:
    """Writes inside one :meth:`Catalog.transaction` (reads here see its own writes)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self._db.execute(sql, args)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db.executemany(sql, rows)

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())


def now_us() -> int:
    return time.time_ns() // 1000


class Catalog:
    """One writer connection (transactions serialised by a lock) and one reader, so
    readers only ever see committed rows."""

    def __init__(self, db: aiosqlite.Connection, rdb: aiosqlite.Connection, path: Path) -> None:
        self.db, self.rdb, self.path = db, rdb, path
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Catalog:
        try:
            db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(SCHEMA)
            await _migrate(db)
            rdb = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise JournalError(
                f"hub catalog {path}: {exc}", hint="run 'amber-hub catalog rebuild' to recreate it"
            ) from None
        return cls(db, rdb, path)

    async def close(self) -> None:
        await self.rdb.close()
        await self.db.close()

    # --- the query and transaction interface (every SQL statement of the hub) ---------

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read on the reader connection: only committed rows."""
        async with self.rdb.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One write statement in its own transaction."""
        await self.execute_many(sql, [args])

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One write statement for each of ``rows``, all in one transaction."""
        async with self.transaction() as tx:
            await tx.execute_many(sql, rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer connection, serialised with
        every other write; rolled back on any error or cancellation (amber.sqlitetx), so
        a cancelled task never leaves a transaction open for the next writer."""
        async with self.lock, immediate(self.db):
            yield Transaction(self.db)

    async def ensure_schema(self, script: str) -> None:
        """Create the tables and indexes of ``script`` (``CREATE ... IF NOT EXISTS``):
        modules that keep their own tables in the catalog database (restore plans,
        bundles) declare them with this."""
        async with self.lock:
            await self.db.executescript(script)

    # --- nodes ----------------------------------------------------------------------

    async def add_node(
        self, vault: str, node: str, user: str, password: str, labels: dict[str, str]
    ) -> None:
        register_secret(password)
        hashed = await asyncio.to_thread(password_hash, password)
        try:
            await self.execute(
                "INSERT INTO nodes(vault, node, user, password, created_us, labels) "
                "VALUES(?,?,?,?,?,?)",
                (vault, node, user, hashed, now_us(), json.dumps(labels)),
            )
        except sqlite3.IntegrityError:
            raise JournalError(
                f"node {vault}/{node} is already enrolled",
                hint="use another name, or 'amber-hub node rekey'",
            ) from None

    async def set_password(self, vault: str, node: str, password: str) -> None:
        register_secret(password)
        hashed = await asyncio.to_thread(password_hash, password)
        await self.execute(
            "UPDATE nodes SET password=? WHERE vault=? AND node=?", (hashed, vault, node)
        )

    async def nodes(self) -> list[NodeRow]:
        rows = await self.query("SELECT * FROM nodes ORDER BY vault, node")
        return [
            NodeRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                json.loads(r[5]),
                r[6],
                json.loads(r[7]) if r[7] else None,
                r[8],
            )
            for r in rows
        ]

    async def node(self, vault: str, node: str) -> NodeRow:
        for row in await self.nodes():
            if (row.vault, row.node) == (vault, node):
                return row
        raise NotFoundError(f"node {vault}/{node} is not enrolled")

    async def heartbeat(self, vault: str, node: str, beat: dict[str, Any]) -> None:
        await self.execute(
            "UPDATE nodes SET last_seen_us=?, heartbeat=? WHERE vault=? AND node=?",
            (now_us(), json.dumps(beat), vault, node),
        )

    async def seen(self, vault: str, node: str, signer: bytes | None = None) -> None:
        if signer is None:
            await self.execute(
                "UPDATE nodes SET last_seen_us=? WHERE vault=? AND node=?", (now_us(), vault, node)
            )
        else:
            await self.execute(
                "UPDATE nodes SET last_seen_us=?, signer=? WHERE vault=? AND node=?",
                (now_us(), signer, vault, node),
            )

    # --- pinned node signing keys -----------------------------------------------------

    async def pinned(self, vault: str, node: str) -> tuple[bytes | None, list[str]]:
        """The node's pinned signing key (None: none yet) and its retired keys (hex)."""
        rows = await self.query(
            "SELECT signer, retired FROM signer_pins WHERE vault=? AND node=?", (vault, node)
        )
        return (rows[0][0], json.loads(rows[0][1])) if rows else (None, [])

    async def check_signer(self, vault: str, node: str, signer: bytes) -> bool:
        """Raise :class:`SignatureError` unless ``signer`` may sign for the node; True if
        it is pinned already, False if it would be pinned on first use."""
        pin, retired = await self.pinned(vault, node)
        if pin is not None and pin != signer:
            raise SignatureError(
                f"a record for {vault}/{node} is signed by key {signer.hex()[:16]}, but the "
                f"node's pinned key is {pin.hex()[:16]}",
                hint="if the node's hardware was replaced, run 'amber-hub node replace NAME "
                "--vault V --out FILE' and enrol the new device with that file",
            )
        if pin is None and signer.hex() in retired:
            raise SignatureError(
                f"key {signer.hex()[:16]} of {vault}/{node} was retired by 'node replace'",
                hint="only the replacement device, enrolled with the new file, may sign now",
            )
        return pin is not None

    async def pin_signer(self, vault: str, node: str, signer: bytes) -> None:
        """Check ``signer`` (:meth:`check_signer`) and pin it if the node has no key yet
        (trust on first use: a node makes its key after the hub wrote its enrolment)."""
        if await self.check_signer(vault, node, signer):
            return
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO signer_pins(vault, node, signer, pinned_us) VALUES(?,?,?,?) "
                "ON CONFLICT(vault, node) DO UPDATE SET signer=excluded.signer, "
                "pinned_us=excluded.pinned_us WHERE signer_pins.signer IS NULL",
                (vault, node, signer, now_us()),
            )
            await tx.execute(
                "UPDATE nodes SET signer=? WHERE vault=? AND node=?", (signer, vault, node)
            )
        await self.check_signer(vault, node, signer)  # another key won the race: refused

    async def unpin(self, vault: str, node: str) -> bytes | None:
        """Forget the node's pinned key and retire it for good (a replaced device);
        the next key to sign for the node is pinned. Returns the key retired."""
        pin, retired = await self.pinned(vault, node)
        if pin is not None:
            retired = [*retired, pin.hex()]
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO signer_pins(vault, node, signer, pinned_us, retired) "
                "VALUES(?,?,NULL,NULL,?) ON CONFLICT(vault, node) DO UPDATE SET signer=NULL, "
                "pinned_us=NULL, retired=excluded.retired",
                (vault, node, json.dumps(retired)),
            )
            await tx.execute("UPDATE nodes SET signer=NULL WHERE vault=? AND node=?", (vault, node))
        return pin

    # --- objects --------------------------------------------------------------------

    async def add_objects(self, vault: str, rows: Iterable[tuple[bytes, str, int]]) -> None:
        """Index objects stored under their own key (records; chunks of older hubs)."""
        t = now_us()
        await self.execute_many(
            "INSERT OR IGNORE INTO objects(vault, id, kind, size, stored_us) VALUES(?,?,?,?,?)",
            [(vault, oid, kind, size, t) for oid, kind, size in rows],
        )

    async def add_packed(
        self, vault: str, pack: bytes, rows: Iterable[tuple[bytes, int, int]]
    ) -> None:
        """Index chunks stored in pack object ``pack``: rows of (chunk id, blob offset,
        blob length). A chunk already indexed (in another pack) keeps its first place."""
        t = now_us()
        await self.execute_many(
            "INSERT OR IGNORE INTO objects(vault, id, kind, size, stored_us, pack, off) "
            "VALUES(?,?,?,?,?,?,?)",
            [(vault, cid, CHUNK, size, t, pack, off) for cid, off, size in rows],
        )

    async def _by_ids(
        self, select: str, vault: str, ids: Sequence[bytes], where: str = "", args: Any = ()
    ) -> list[Any]:
        """Rows of ``SELECT id, ... FROM table WHERE [where] vault=? AND id IN (...)``,
        in batches."""
        rows: list[Any] = []
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            sql = f"{select} WHERE {where}vault=? AND id IN ({marks})"
            rows += await self.query(sql, [*args, vault, *part])
        return rows

    async def present(self, vault: str, ids: Sequence[bytes]) -> dict[bytes, str]:
        """Which ids are durable in the store, with their kind."""
        rows = await self._by_ids("SELECT id, kind FROM objects", vault, ids)
        return {r[0]: r[1] for r in rows}

    async def locate(self, vault: str, ids: Sequence[bytes]) -> dict[bytes, Location]:
        """Where each stored id's bytes are: its own object, or a range of a pack."""
        rows = await self._by_ids("SELECT id, kind, size, pack, off FROM objects", vault, ids)
        return {r[0]: Location(r[1], r[2], r[3], r[4]) for r in rows}

    async def refuse(self, vault: str, node: str, oid: bytes, reason: str) -> None:
        """Remember that ingest refused a record ``node`` sent, so that node's receipt
        query says so. Per node: one node's refused bytes never refuse another's id."""
        await self.execute(
            "INSERT OR REPLACE INTO refusals VALUES(?,?,?,?,?)",
            (vault, node, oid, reason[:500], now_us()),
        )

    async def refuse_many(self, vault: str, node: str, ids: Sequence[bytes], reason: str) -> None:
        t = now_us()
        await self.execute_many(
            "INSERT OR REPLACE INTO refusals VALUES(?,?,?,?,?)",
            [(vault, node, oid, reason[:500], t) for oid in ids],
        )

    async def forget_refusals(self, vault: str, node: str, ids: Sequence[bytes]) -> None:
        """The node may send these again (e.g. chunks refused while it was over a quota)."""
        await self.execute_many(
            "DELETE FROM refusals WHERE vault=? AND node=? AND id=?",
            [(vault, node, oid) for oid in ids],
        )

    async def refusals(self, vault: str, node: str, ids: Sequence[bytes]) -> dict[bytes, str]:
        rows = await self._by_ids(
            "SELECT id, reason FROM refusals", vault, ids, "node=? AND ", [node]
        )
        return {r[0]: r[1] for r in rows}

    async def object_count(self) -> tuple[int, int]:
        rows = await self.query("SELECT count(*), coalesce(sum(size),0) FROM objects")
        return int(rows[0][0]), int(rows[0][1])

    # --- manifests and checkpoints --------------------------------------------------

    async def add_manifest(self, vault: str, mid: bytes, pub: dict[str, Any]) -> None:
        await self.execute(
            "INSERT OR IGNORE INTO manifests VALUES(?,?,?,?,?,?,?,?,?)",
            (
                vault,
                mid,
                pub["node"],
                pub["source"],
                pub["kind"],
                pub["tier"],
                pub["time_us"],
                pub["size"],
                pub["nchunks"] if "nchunks" in pub else len(pub["chunks"]),  # v2 head: parts
            ),
        )

    async def manifest_tiers(self, vault: str, ids: Iterable[bytes]) -> list[str]:
        out = []
        for mid in ids:
            rows = await self.query(
                "SELECT tier FROM manifests WHERE vault=? AND id=?", (vault, mid)
            )
            out += [r[0] for r in rows]
        return out

    async def head(self, vault: str, node: str) -> tuple[int, bytes] | None:
        rows = await self.query(
            "SELECT seq, id FROM checkpoints WHERE vault=? AND node=? ORDER BY seq DESC LIMIT 1",
            (vault, node),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def head_times(self) -> dict[tuple[str, str], int]:
        """(vault, node) -> time_us of each node's newest checkpoint (for metrics)."""
        rows = await self.query(
            "SELECT c.vault, c.node, c.time_us FROM checkpoints c JOIN "
            "(SELECT vault, node, max(seq) AS seq FROM checkpoints GROUP BY vault, node) h "
            "ON c.vault = h.vault AND c.node = h.node AND c.seq = h.seq"
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def add_checkpoint(self, cp: Checkpoint, cid: bytes, signer: bytes) -> None:
        await self.execute(
            "INSERT OR IGNORE INTO checkpoints VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (
                cp.vault,
                cp.node,
                cp.seq,
                cid,
                cp.prev,
                cp.time_us,
                cp.kind,
                json.dumps(cp.labels),
                json.dumps({k: v.hex() for k, v in cp.manifests.items()}),
                signer,
                now_us(),
            ),
        )

    async def checkpoints(
        self,
        vault: str | None = None,
        node: str | None = None,
        after_seq: int = -1,
        limit: int = 100_000,
    ) -> list[CheckpointEntry]:
        sql, args = "SELECT * FROM checkpoints WHERE seq > ?", [after_seq]
        if vault:
            sql, args = sql + " AND vault = ?", [*args, vault]
        if node:
            sql, args = sql + " AND node = ?", [*args, node]
        sql += f" ORDER BY vault, node, seq LIMIT {int(limit)}"
        return [
            CheckpointEntry(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                json.loads(r[7]),
                json.loads(r[8]),
                r[9],
                r[10],
            )
            for r in await self.query(sql, args)
        ]

    async def clear_index(self) -> None:
        """Forget objects, manifests and checkpoints (before a rebuild from the store)."""
        async with self.transaction() as tx:
            for table in ("objects", "manifests", "checkpoints"):
                await tx.execute(f"DELETE FROM {table}")


async def _migrate(db: aiosqlite.Connection) -> None:
    """Catalogs made before pack objects lack the objects' ``pack`` and ``off`` columns;
    those made before refusals were kept per node have a ``refusals`` table without
    ``node`` (its rows, refusals anyone could have planted under another node's id, are
    dropped: a node whose record was really refused is refused again at its next send)."""
    async with db.execute("PRAGMA table_info(objects)") as cur:
        columns = {row[1] for row in await cur.fetchall()}
    for name, decl in (("pack", "BLOB"), ("off", "INTEGER")):
        if name not in columns:
            await db.execute(f"ALTER TABLE objects ADD COLUMN {name} {decl}")
    async with db.execute("PRAGMA user_version") as cur:
        version = (await cur.fetchone() or (0,))[0]
    if version < 1:
        await _pin_existing_nodes(db)
    await _hash_passwords(db)
    async with db.execute("PRAGMA table_info(refusals)") as cur:
        columns = {row[1] for row in await cur.fetchall()}
    if "node" not in columns:
        await db.execute("DROP TABLE refusals")
        await db.executescript(SCHEMA)


async def _pin_existing_nodes(db: aiosqlite.Connection) -> None:
    """Catalogs made before pinning: each node's key is pinned from its latest accepted
    checkpoint (else the key the catalog last saw it sign with, e.g. a bundle's)."""
    async with immediate(db):
        await db.execute(
            "INSERT OR IGNORE INTO signer_pins(vault, node, signer, pinned_us) "
            "SELECT c.vault, c.node, c.signer, ? FROM checkpoints c WHERE c.seq = "
            "(SELECT MAX(seq) FROM checkpoints d WHERE d.vault=c.vault AND d.node=c.node)",
            (now_us(),),
        )
        await db.execute(
            "INSERT OR IGNORE INTO signer_pins(vault, node, signer, pinned_us) "
            "SELECT vault, node, signer, ? FROM nodes WHERE signer IS NOT NULL",
            (now_us(),),
        )
        await db.execute(
            "UPDATE nodes SET signer=(SELECT p.signer FROM signer_pins p "
            "WHERE p.vault=nodes.vault AND p.node=nodes.node)"
        )
        await db.execute(f"PRAGMA user_version={CATALOG_VERSION}")


def password_hash(password: str) -> str:
    """A node's NATS password as a bcrypt hash in the form nats-server reads (``$2a$``)."""
    salt = bcrypt.gensalt(rounds=BCRYPT_ROUNDS, prefix=b"2a")
    return bcrypt.hashpw(password.encode(), salt).decode()


async def _hash_passwords(db: aiosqlite.Connection) -> None:
    """Catalogs made before node passwords were hashed keep them in clear: hash them
    (the nodes' enrolments keep working, since nats-server checks against the hash)."""
    async with db.execute("SELECT vault, node, password FROM nodes") as cur:
        clear = [r for r in await cur.fetchall() if not str(r[2]).startswith("$2")]
    if not clear:
        return
    register_secret(*(r[2] for r in clear))
    rows = [(await asyncio.to_thread(password_hash, r[2]), r[0], r[1]) for r in clear]
    async with immediate(db):  # rolled back on any error, like every other catalog write
        await db.executemany("UPDATE nodes SET password=? WHERE vault=? AND node=?", rows)
