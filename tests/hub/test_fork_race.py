"""A lost checkpoint fork race at the hub is reported, not acked as durable (issue #14).

The attacker holds a node's stolen credentials and signing key and sends, at the same
moment as the real node, another checkpoint with the same seq to a second hub process.
Both pass the chain check before either is indexed; the catalog keeps the first. The
loser must be refused (its sender learns it by receipt), not answered "stored".
Real parts: two catalogs open on one SQLite file (two hub processes), one LocalStore.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from amber.hub.catalog import Catalog
from amber.hub.ingest import Ingestor
from amber.hub.store.local import LocalStore
from amber.protocol import wire
from amber.protocol.errors import ChainError
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import KIND_CHECKPOINT, Checkpoint, encode_checkpoint, record_id

KEYS = VaultKeys.from_master(bytes(range(32)))
SIGNER = SigningKey(bytes(range(32, 64)))


class RacingStore(LocalStore):
    """A real LocalStore whose record puts wait until both hub processes got there:
    the interleaving a race produces, made certain."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.both = asyncio.Barrier(2)

    async def put(self, key: str, data: bytes, **kw: object) -> None:  # type: ignore[override]
        await super().put(key, data, **kw)  # type: ignore[arg-type]
        await self.both.wait()


def put(seq_time: int) -> wire.RecordPut:
    data = encode_checkpoint(Checkpoint("v", "n1", 0, None, seq_time, {}), KEYS, SIGNER)
    return wire.RecordPut(id=record_id(data), kind=KIND_CHECKPOINT, data=data)


async def test_the_loser_of_a_checkpoint_fork_race_is_refused(tmp_path: Path) -> None:
    store = RacingStore(tmp_path / "store")
    cat_a = await Catalog.open(tmp_path / "catalog.db")
    cat_b = await Catalog.open(tmp_path / "catalog.db")
    try:
        real, forged = put(1), put(2)
        outcomes = await asyncio.gather(
            Ingestor(store, cat_a).put_record("v", "n1", real),
            Ingestor(store, cat_b).put_record("v", "n1", forged),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, ChainError)]
        assert outcomes.count("stored") == 1 and len(refused) == 1, outcomes
        assert "lost a race" in str(refused[0]) and refused[0].hint
        loser = forged if outcomes[1] is refused[0] else real
        winner = real if loser is forged else forged
        # only the winner is durable at the hub: the loser's receipt can never say so
        assert await cat_a.present("v", [loser.id]) == {}
        assert winner.id in await cat_b.present("v", [winner.id])
        assert await cat_a.head("v", "n1") == (0, winner.id)
    finally:
        await cat_a.close()
        await cat_b.close()


async def test_the_same_checkpoint_delivered_twice_at_once_is_stored(tmp_path: Path) -> None:
    store = RacingStore(tmp_path / "store")
    cat_a = await Catalog.open(tmp_path / "catalog.db")
    cat_b = await Catalog.open(tmp_path / "catalog.db")
    try:
        msg = put(1)
        outcomes = await asyncio.gather(
            Ingestor(store, cat_a).put_record("v", "n1", msg),
            Ingestor(store, cat_b).put_record("v", "n1", msg),
        )
        assert outcomes == ["stored", "stored"]
    finally:
        await cat_a.close()
        await cat_b.close()
