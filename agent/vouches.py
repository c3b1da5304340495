"""Who vouched for each checkpoint the journal knows: the ``vouches`` table.

A checkpoint is restorable without the hub when its signer is this node's own key, or
when the key that signed it was vouched for, for that very checkpoint id, by someone the
node trusts:

- ``self``: the node made it (checkpointer); ``key`` is empty.
- ``hub``: a bundle signed by the hub key the node trusts named it in its index (or its
  restore order named it); ``key`` is that hub key.
- ``link``: adopted from the enrolled hub over its NATS link (the hub pins node keys);
  ``key`` is empty.
- ``migrated``: indexed before journal version 3, when nothing was recorded; ``key`` is
  empty.

A vouch is for one (checkpoint id, signer) pair: the restorer accepts the checkpoint and
its manifests signed by that signer, nothing else signed by it. Schema in docs/FORMAT.md
("Journal").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amber.protocol.records import parse

if TYPE_CHECKING:
    import aiosqlite

SELF, HUB, LINK, MIGRATED = "self", "hub", "link", "migrated"
VOUCHES_DDL = """CREATE TABLE vouches(
    checkpoint BLOB PRIMARY KEY, signer BLOB NOT NULL, voucher TEXT NOT NULL, key BLOB NOT NULL);
"""
INSERT = "INSERT OR IGNORE INTO vouches(checkpoint, signer, voucher, key) VALUES(?,?,?,?)"
# a hub's signature is a stronger word than a link's answer or a migrated row: it replaces
# them (never a row of the node's own, and only for the same signer)
UPGRADE = (
    "INSERT INTO vouches(checkpoint, signer, voucher, key) VALUES(?,?,?,?) "
    "ON CONFLICT(checkpoint) DO UPDATE SET voucher = excluded.voucher, key = excluded.key "
    f"WHERE voucher IN ('{LINK}', '{MIGRATED}') AND signer = excluded.signer"
)


@dataclass(frozen=True)
class Vouch:
    signer: bytes
    voucher: str
    key: bytes


def record_signer(data: bytes) -> bytes:
    """The key that signed a record (its signature checked)."""
    return parse(data).signer


def vouch_row(cid: bytes, data: bytes, voucher: str, key: bytes = b"") -> tuple[Any, ...]:
    return (cid, record_signer(data), voucher, key)


def fingerprint(key: bytes) -> str:
    """How a signing key is shown: its first 16 hex digits."""
    return key.hex()[:16]


def signer_label(v: Vouch | None, own: bytes) -> str:
    """The ``signer`` column of ``amber-agent checkpoints``: self, hub or a key."""
    if v is None:
        return "unknown"
    if v.signer == own:
        return SELF
    if v.voucher == HUB:
        return HUB
    return fingerprint(v.signer)


async def migrate_to_3(db: aiosqlite.Connection) -> None:
    """In the migration's transaction: the table, and a ``migrated`` row for each indexed
    checkpoint whose record the journal holds."""
    await db.execute(VOUCHES_DDL)
    async with db.execute(
        "SELECT c.id, r.data FROM checkpoints c JOIN records r ON r.id = c.id"
    ) as cur:
        rows = await cur.fetchall()
    await db.executemany(INSERT, [vouch_row(cid, data, MIGRATED) for cid, data in rows])


Query = Callable[[str, Any], Awaitable[list[Any]]]


async def vouches(query: Query, ids: Iterable[bytes] | None = None) -> dict[bytes, Vouch]:
    """The vouches of ``ids`` (all when None), through ``Journal.query``."""
    if ids is None:
        rows = await query("SELECT checkpoint, signer, voucher, key FROM vouches", ())
        return {r[0]: Vouch(r[1], r[2], r[3]) for r in rows}
    out: dict[bytes, Vouch] = {}
    part = list(ids)
    for i in range(0, len(part), 500):
        chunk = part[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT checkpoint, signer, voucher, key FROM vouches WHERE checkpoint IN ({marks})"
        out.update((r[0], Vouch(r[1], r[2], r[3])) for r in await query(sql, chunk))
    return out


def vouched_signer(query: Query) -> Callable[[bytes], Awaitable[bytes | None]]:
    """For the restorer: checkpoint id -> the signer vouched for it, or None."""

    async def get(cid: bytes) -> bytes | None:
        v = (await vouches(query, [cid])).get(cid)
        return v.signer if v is not None else None

    return get
