"""The hub stores chunks in pack objects and reads them back as merged ranges.

Real parts throughout: a LocalStore directory, a catalog in SQLite, chunk blobs made
by the real encoder. What matters to an operator: one object per ~16 MiB instead of
one per chunk (the per-object cost dominated S3 and the local store), every chunk
readable back byte for byte in any order, damaged input refused per chunk without
losing the rest of the batch, and hubs upgraded in place keep reading what older hubs
wrote.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from blake3 import blake3

from amber.hub.catalog import CHUNK, PACK, Catalog, Location
from amber.hub.ingest import PACK_BYTES, Ingestor
from amber.hub.store.layout import object_key
from amber.hub.store.local import LocalStore
from amber.hub.store.ranged import read_objects
from amber.protocol import packfile, wire
from amber.protocol.chunk import encode_chunk
from amber.protocol.errors import FormatError, IntegrityError
from amber.protocol.keys import VaultKeys
from amber.protocol.records import decode_manifest
from tests.support.data import make_model
from tests.support.hub import HubProcess, new_agent

VAULT = "fleet"
KiB = 1024


class CountingStore(LocalStore):
    """A real LocalStore that also counts the calls made to it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0
        self.puts: list[str] = []

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        self.gets += 1
        return await super().get(key, offset=offset, length=length)

    async def put(self, key: str, data: bytes, **kw) -> bool:  # type: ignore[no-untyped-def]
        self.puts.append(key)
        return await super().put(key, data, **kw)


def chunks(n: int, size: int, seed: int = 0) -> list[wire.ChunkPut]:
    keys = VaultKeys.generate()
    out = []
    for i in range(n):
        plain = os.urandom(size - 64) + seed.to_bytes(4, "big") + i.to_bytes(60, "big")
        cid, blob = encode_chunk(keys, plain)
        out.append(wire.ChunkPut(id=cid, blob=blob))
    return out


@pytest.fixture
async def hub_parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = CountingStore(tmp_path / "store")
    catalog = await Catalog.open(tmp_path / "catalog.db")
    try:
        yield store, catalog, Ingestor(store, catalog)
    finally:
        await catalog.close()


def stored_keys(root: Path) -> list[str]:
    objects = root / "store" / "objects"
    return sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())


async def test_a_batch_becomes_few_pack_objects_that_read_back_exactly(
    hub_parts, tmp_path: Path
) -> None:
    store, catalog, ing = hub_parts
    msgs = chunks(80, 300 * KiB)  # 23 MiB: two packs
    assert await ing.put_chunks(VAULT, msgs) == ["stored"] * 80
    keys = stored_keys(tmp_path)
    assert len(keys) == 2 and all(k.startswith(f"{VAULT}/packs/") for k in keys)
    for key in keys:  # content-addressed: the name is the BLAKE3 of the bytes
        data = (tmp_path / "store/objects" / key).read_bytes()
        assert key.rsplit("/", 1)[1] == blake3(data).hexdigest()
        assert len(data) <= PACK_BYTES

    where = await catalog.locate(VAULT, [m.id for m in msgs])
    assert {loc.kind for loc in where.values()} == {CHUNK}
    assert len({loc.pack for loc in where.values()}) == 2

    # a restore asks in upload order: 32 chunks come back in one or two ranged reads
    store.gets = 0
    wanted = [(m.id, where[m.id]) for m in msgs[10:42]]
    assert await read_objects(store, VAULT, wanted) == [m.blob for m in msgs[10:42]]
    assert store.gets <= 2
    # any order, gaps and repeats included, still byte for byte
    order = [msgs[i] for i in (79, 3, 3, 40, 0, 41, 17)]
    got = await read_objects(store, VAULT, [(m.id, where[m.id]) for m in order])
    assert got == [m.blob for m in order]

    # sent again (a node's re-send after a reconnect): duplicates, nothing new stored
    store.puts.clear()
    assert await ing.put_chunks(VAULT, msgs[:5]) == ["duplicate"] * 5
    assert store.puts == []


async def test_a_bad_chunk_is_refused_alone(hub_parts, tmp_path: Path) -> None:
    _store, catalog, ing = hub_parts
    good = chunks(4, 64 * KiB)
    bad = wire.ChunkPut(id=good[0].id[:31] + b"\x00", blob=b"AMBX" + good[0].blob[4:])
    short_id = wire.ChunkPut(id=b"\x01" * 8, blob=good[1].blob)
    batch = [good[0], bad, good[1], good[0], short_id, good[2], good[3]]
    res = await ing.put_chunks(VAULT, batch)
    assert res[0] == res[2] == res[5] == res[6] == "stored"
    assert res[3] == "duplicate"  # the same chunk twice in one batch is stored once
    assert isinstance(res[1], FormatError) and "magic" in str(res[1])
    assert isinstance(res[4], FormatError) and "32 bytes" in str(res[4])
    assert len(stored_keys(tmp_path)) == 1
    assert set(await catalog.present(VAULT, [m.id for m in batch])) == {m.id for m in good}
    # the other vault holds none of it: packs and their index are per vault
    assert await catalog.present("other", [m.id for m in good]) == {}


async def test_a_truncated_pack_is_an_integrity_error_naming_it(hub_parts, tmp_path: Path) -> None:
    store, catalog, ing = hub_parts
    msgs = chunks(6, 100 * KiB)
    await ing.put_chunks(VAULT, msgs)
    (key,) = stored_keys(tmp_path)
    path = tmp_path / "store/objects" / key
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[: 3 * 100 * KiB])
    where = await catalog.locate(VAULT, [m.id for m in msgs])
    with pytest.raises(IntegrityError, match=key.rsplit("/", 1)[1]) as err:
        await read_objects(store, VAULT, [(m.id, where[m.id]) for m in msgs])
    assert "catalog rebuild" in (err.value.hint or "")
    # what the pack still holds intact reads back, and a rebuild keeps exactly that
    assert await read_objects(store, VAULT, [(msgs[0].id, where[msgs[0].id])]) == [msgs[0].blob]
    with pytest.raises(FormatError, match="truncated"):
        list(packfile.entries(path.read_bytes(), key))


async def test_chunk_objects_of_older_hubs_still_read_and_old_catalogs_migrate(
    tmp_path: Path,
) -> None:
    # a catalog made before packs: the objects table has no pack/off columns
    db = tmp_path / "catalog.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE objects(vault TEXT NOT NULL, id BLOB NOT NULL, kind TEXT NOT NULL, "
        "size INTEGER NOT NULL, stored_us INTEGER NOT NULL, PRIMARY KEY(vault, id)) WITHOUT ROWID"
    )
    (old,) = chunks(1, 50 * KiB)
    con.execute("INSERT INTO objects VALUES(?,?,?,?,?)", (VAULT, old.id, CHUNK, len(old.blob), 1))
    con.commit()
    con.close()
    store = LocalStore(tmp_path / "store")
    await store.put(object_key(VAULT, old.id, CHUNK), old.blob)

    catalog = await Catalog.open(db)
    try:
        where = await catalog.locate(VAULT, [old.id])
        assert where == {old.id: Location(CHUNK, len(old.blob), None, None)}
        assert await read_objects(store, VAULT, [(old.id, where[old.id])]) == [old.blob]
        # new chunks next to it go into packs; both kinds read in one call
        new = chunks(3, 50 * KiB, seed=1)
        assert await Ingestor(store, catalog).put_chunks(VAULT, new) == ["stored"] * 3
        where = await catalog.locate(VAULT, [old.id, *(m.id for m in new)])
        assert where[new[0].id].pack is not None
        both = [(m.id, where[m.id]) for m in (new[2], old, new[0])]
        assert await read_objects(store, VAULT, both) == [new[2].blob, old.blob, new[0].blob]
    finally:
        await catalog.close()


def test_pack_layout_names_packs_by_their_hash() -> None:
    pid = bytes(range(32))
    assert object_key(VAULT, pid, PACK) == f"{VAULT}/packs/00/{pid.hex()}"


def test_a_synced_file_sits_in_its_packs_in_file_order(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    # nodes upload in manifest (file) order, so a restore, which reads in file order,
    # reads each pack front to back in a few ranged reads
    agent = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    agent.add("model", "model", make_model(tmp_path / "model", 6 * 1024 * KiB))
    agent.checkpoint()
    assert agent.sync()["checkpoints"] == 1
    keys = VaultKeys.from_file_bytes(vault_key.read_bytes())
    ((data,),) = agent.journal_query("SELECT data FROM records WHERE kind=1")
    weights = next(e for e in decode_manifest(data, keys).entries if e.path == "weights.bin")
    in_file = [cid for cid, _ in weights.chunks]
    assert len(in_file) > 10
    rows = hub.catalog_query("SELECT id, pack, off FROM objects WHERE vault=?", (VAULT,))
    at_hub = {cid: (pack, off) for cid, pack, off in rows if cid in set(in_file)}
    runs: list[tuple[bytes, list[int]]] = []  # (pack, offsets) of consecutive chunks
    for cid in in_file:
        pack, off = at_hub[cid]
        if not runs or runs[-1][0] != pack:
            runs.append((pack, []))
        runs[-1][1].append(off)
    assert len({pack for pack, _ in runs}) == len(runs) <= 3  # one run per pack
    assert all(offs == sorted(offs) for _, offs in runs)  # front to back


async def test_a_catalog_write_cancelled_at_any_point_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    # ingest batches are cancelled when the hub stops; the catalog must stay writable
    catalog = await Catalog.open(tmp_path / "catalog.db")
    try:
        for ticks in range(40):
            rows = [(bytes([ticks]) * 32, 8, 10)]
            task = asyncio.create_task(catalog.add_packed(VAULT, b"p" * 32, rows))
            for _ in range(ticks):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await catalog.add_objects(VAULT, [(b"r" * 31 + bytes([ticks]), "r", 1)])
            assert not catalog.db.in_transaction
    finally:
        await catalog.close()
