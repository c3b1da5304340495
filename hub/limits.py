"""What one node may take from the hub: upload leases and byte quotas.

Both live in the catalog database (tables of their own, declared here), so every hub
process that shares the catalog sees the same leases and the same usage.

**Upload leases.** Before uploading, a node asks which chunk ids the hub lacks. The hub
answers with those it lacks less those another node was just told to upload (leased),
so a fleet syncing one model at once sends it about once. A lease is granted once and
never renewed: a node that asks again about an id it holds gets the id again (it should
upload it) but the lease keeps its first deadline; once it lapses, the next other node
to ask takes it, and the node that let it lapse gets no new lease on it (it may still
upload it). A node holds at most ``per_node`` unexpired leases; ids beyond that are
answered without a lease. So a stolen node that queries a shared model in a loop stalls
another node's chunk for one lease term at most.

**Quotas.** Bytes of new chunks a node caused the hub to store, per UTC day and in
total. A node at or over a limit is refused (:class:`QuotaExceededError`) at its chunk
query, its receipt query and at ingest; other nodes are not affected.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from amber.hub.catalog import Catalog, Transaction
from amber.protocol.errors import QuotaExceededError

log = logging.getLogger("amber.hub.limits")

SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_leases(
    vault TEXT NOT NULL, id BLOB NOT NULL, node TEXT NOT NULL, until_us INTEGER NOT NULL,
    PRIMARY KEY(vault, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_leases_node ON upload_leases(vault, node, until_us);
CREATE INDEX IF NOT EXISTS upload_leases_until ON upload_leases(until_us);
CREATE TABLE IF NOT EXISTS node_usage(
    vault TEXT NOT NULL, node TEXT NOT NULL, day INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY(vault, node, day)) WITHOUT ROWID;
"""
SWEEP_EVERY = 60.0  # seconds between sweeps of long-lapsed leases (per hub process)
KEEP_LAPSED = 10  # lease terms a lapsed lease is remembered (so its node cannot retake it)
DAY_US = 86_400 * 1_000_000
QUOTA_REASON = "quota: "
"""How a refusal for being over a quota starts (the refusals table, per node and id)."""


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Limits:
    """Per node limits (hub.toml ``[limits]``)."""

    upload_lease: float = 60.0
    leases_per_node: int = 65_536
    bytes_per_day: int = 200 * 1024**3
    bytes_held: int = 4 * 1024**4


class UploadLeases:
    """Upload leases in the catalog database, shared by every hub process using it."""

    def __init__(self, catalog: Catalog, term: float = 60.0, per_node: int = 65_536) -> None:
        self.catalog, self.term_us, self.per_node = catalog, int(term * 1e6), per_node
        self._swept = 0.0

    async def setup(self) -> None:
        await self.catalog.ensure_schema(SCHEMA)

    async def grant(self, vault: str, node: str, ids: Sequence[bytes]) -> list[bytes]:
        """Of ``ids`` (which the hub lacks), those ``node`` should upload now."""
        if not ids:
            return []
        now = _now_us()
        async with self.catalog.transaction() as tx:
            await self._sweep(tx, now)
            held = await _leases(tx, vault, ids)
            rows = await tx.query(
                "SELECT count(*) FROM upload_leases WHERE vault=? AND node=? AND until_us>?",
                (vault, node, now),
            )
            room = self.per_node - int(rows[0][0])
            out, fresh = [], []
            for cid in ids:
                holder = held.get(cid)
                if holder is not None and holder[0] != node and holder[1] > now:
                    continue  # another node is uploading it
                out.append(cid)
                if holder is not None and holder[0] == node:
                    continue  # its own lease (or one it let lapse): never renewed
                if room > 0:
                    fresh.append((vault, cid, node, now + self.term_us))
                    room -= 1
            await tx.execute_many("INSERT OR REPLACE INTO upload_leases VALUES(?,?,?,?)", fresh)
        return out

    async def _sweep(self, tx: Transaction, now: int) -> None:
        if time.monotonic() - self._swept < SWEEP_EVERY:
            return
        self._swept = time.monotonic()
        await tx.execute(
            "DELETE FROM upload_leases WHERE until_us < ?", (now - KEEP_LAPSED * self.term_us,)
        )


async def _leases(
    tx: Transaction, vault: str, ids: Sequence[bytes]
) -> dict[bytes, tuple[str, int]]:
    out: dict[bytes, tuple[str, int]] = {}
    for i in range(0, len(ids), 500):
        part = list(ids[i : i + 500])
        marks = ",".join("?" * len(part))
        rows = await tx.query(
            f"SELECT id, node, until_us FROM upload_leases WHERE vault=? AND id IN ({marks})",
            [vault, *part],
        )
        out.update({r[0]: (r[1], int(r[2])) for r in rows})
    return out


class Quotas:
    """Bytes each node caused the hub to store, per UTC day and in total, against
    :class:`Limits`. Refusals are counted in ``refused`` ("vault/node/quota" -> n)."""

    def __init__(
        self, catalog: Catalog, limits: Limits, refused: Counter[str] | None = None
    ) -> None:
        self.catalog, self.limits = catalog, limits
        self.refused: Counter[str] = refused if refused is not None else Counter()

    async def setup(self) -> None:
        await self.catalog.ensure_schema(SCHEMA)

    async def add(self, vault: str, usage: dict[str, int]) -> None:
        """Charge each node of ``vault`` the bytes of new chunks it had stored."""
        day = _now_us() // DAY_US
        await self.catalog.execute_many(
            "INSERT INTO node_usage VALUES(?,?,?,?) ON CONFLICT(vault, node, day) "
            "DO UPDATE SET bytes = bytes + excluded.bytes",
            [(vault, node, day, n) for node, n in usage.items() if n > 0],
        )

    async def usage(self, vault: str, node: str) -> tuple[int, int]:
        """(bytes stored today, bytes stored in total) for the node."""
        rows = await self.catalog.query(
            "SELECT coalesce(sum(CASE WHEN day=? THEN bytes END),0), coalesce(sum(bytes),0) "
            "FROM node_usage WHERE vault=? AND node=?",
            (_now_us() // DAY_US, vault, node),
        )
        return int(rows[0][0]), int(rows[0][1])

    async def check(self, vault: str, node: str) -> None:
        """Raise QuotaExceededError (counted and logged) if the node is at a limit."""
        today, held = await self.usage(vault, node)
        over = None
        if held >= self.limits.bytes_held:
            over = ("bytes_held", held, self.limits.bytes_held, "in total")
        elif today >= self.limits.bytes_per_day:
            over = ("bytes_per_day", today, self.limits.bytes_per_day, "today (UTC)")
        if over is None:
            return
        name, used, limit, when = over
        self.refused[f"{vault}/{node}/{name}"] += 1
        log.warning(
            "node %s/%s is over its %s quota: %d of %d bytes %s; its uploads are refused",
            vault,
            node,
            name,
            used,
            limit,
            when,
            extra={"vault": vault, "node": node},
        )
        raise QuotaExceededError(
            f"node {vault}/{node} is over the hub's {name} quota: it stored {used} of "
            f"{limit} bytes {when}",
            hint=f"ask the hub operator to raise [limits] {name} in hub.toml"
            + (" or wait for the next UTC day" if name == "bytes_per_day" else "")
            + "; the node's checkpoints stay in its journal until then",
        )
