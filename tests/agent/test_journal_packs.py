"""Chunk blobs in the journal's pack files (docs/FORMAT.md §14, "Pack files").

Blobs are written once to append-only packs with the ``chunks`` table as their index;
what a cancelled or crashed checkpoint appended is trimmed by the next writer; eviction
gives the space back (deleting and compacting packs); damaged or missing packs give a
typed error naming the pack; a version 1 journal (blobs in SQLite) is migrated on open
and its old blobs stay readable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from amber.agent import packs
from amber.agent.journal import COMMITTED, DURABLE, PACK_DIR, Journal
from amber.protocol.chunk import chunk_id, encode_chunk
from amber.protocol.errors import IntegrityError
from amber.protocol.keys import VaultKeys

KEYS = VaultKeys.generate()


def blobs(n: int, size: int = 20_000) -> list[tuple[bytes, int, bytes]]:
    out = []
    for _ in range(n):
        plain = os.urandom(size)  # incompressible: the blob is about as big
        cid = chunk_id(KEYS, plain)
        out.append((cid, len(plain), encode_chunk(KEYS, plain, level=1, cid=cid)[1]))
    return out


async def open_journal(path: Path) -> Journal:
    return await Journal.open(path, KEYS, vault="v", node="n", create=True)


def pack_files(tmp_path: Path) -> dict[str, int]:
    d = tmp_path / PACK_DIR
    return {p.name: p.stat().st_size for p in sorted(d.glob("*.pack"))} if d.is_dir() else {}


def sql(path: Path, query: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute(query, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


async def test_blobs_live_in_pack_files_not_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rows = blobs(20)
    async with await open_journal(path) as j:
        await j.put_chunks(rows, 1)
        got = await j.get_chunks([cid for cid, _, _ in rows])
    assert got == {cid: blob for cid, _, blob in rows}
    assert sql(path, "SELECT count(*) FROM chunks WHERE blob IS NOT NULL") == [(0,)]
    files = pack_files(tmp_path)
    assert list(files) == ["00000000.pack"]
    entries = sum(packs.ENTRY.size + len(b) for _, _, b in rows)
    assert files["00000000.pack"] == len(packs.HEADER) + entries  # each byte written once
    assert stat.S_IMODE((tmp_path / PACK_DIR / "00000000.pack").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / PACK_DIR).stat().st_mode) == 0o700


async def test_discard_trims_what_a_cancelled_checkpoint_appended(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    kept, dropped = blobs(10), blobs(10)
    async with await open_journal(path) as j:
        await j.put_chunks(kept, 1)
        sql(path, "UPDATE chunks SET state = ?", (COMMITTED,))  # as a commit would
        size_kept = pack_files(tmp_path)["00000000.pack"]
        await j.put_chunks(dropped, 2)  # tentative: a checkpoint that never commits
        assert pack_files(tmp_path)["00000000.pack"] > size_kept
        await j.discard_tentative()
        assert pack_files(tmp_path) == {"00000000.pack": size_kept}
        assert await j.get_chunks([c for c, _, _ in dropped]) == {}
        assert len(await j.get_chunks([c for c, _, _ in kept])) == 10
        # the next append lands right after the kept entries and reads back
        await j.put_chunks(dropped[:3], 3)
        assert len(await j.get_chunks([c for c, _, _ in dropped])) == 3
    async with await open_journal(path) as j:  # nothing referenced at all: the pack goes
        sql(path, "DELETE FROM chunks")
        await j.discard_tentative()
    assert pack_files(tmp_path) == {}


async def test_eviction_deletes_and_compacts_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packs, "ROLL_BYTES", 100_000)
    path = tmp_path / "journal.db"
    rows = blobs(60)  # ~20 KB each: about a dozen packs
    async with await open_journal(path) as j:
        for i in range(0, 60, 5):
            await j.put_chunks(rows[i : i + 5], i)  # used_us rises with i
        assert len(pack_files(tmp_path)) >= 10
        on_disk = sum(pack_files(tmp_path).values())
        # every other chunk of the older half is newer (cached); the rest is durable
        sql(path, "UPDATE chunks SET state = ?", (DURABLE,))
        for n, (cid, _, _) in enumerate(rows[:30]):
            if n % 2:
                sql(path, "UPDATE chunks SET used_us = 1000 WHERE id = ?", (cid,))
        keep = {c for n, (c, _, _) in enumerate(rows[:30]) if n % 2}
        cache = sum(len(b) for c, _, b in rows if c in keep)
        before = dict(sql(path, "SELECT id, pack FROM chunks"))
        await j.evict(cache)
        held = dict(sql(path, "SELECT id, stored FROM chunks WHERE pack IS NOT NULL"))
        assert set(held) == keep
        after = dict(sql(path, "SELECT id, pack FROM chunks WHERE pack IS NOT NULL"))
        assert any(after[c] != before[c] for c in keep), "no pack was compacted"
        assert await j.get_chunks([c for c, _, _ in rows]) == {
            c: b for c, _, b in rows if c in keep
        }
        files = pack_files(tmp_path)
        # evicted packs are gone; half-used ones were rewritten: at most ~2x what is held
        assert sum(files.values()) < on_disk / 2
        assert sum(files.values()) <= 2 * sum(held.values()) + packs.ROLL_BYTES + 40_000


async def test_damaged_or_missing_pack_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    rows = blobs(4)
    async with await open_journal(path) as j:
        await j.put_chunks(rows, 1)
    pack = tmp_path / PACK_DIR / "00000000.pack"
    (off,) = sql(path, "SELECT off FROM chunks WHERE id = ?", (rows[1][0],))[0]
    with open(pack, "r+b") as fh:  # the entry's id no longer matches the index
        fh.seek(off)
        fh.write(b"\x00" * 4)
    async with await open_journal(path) as j:
        with pytest.raises(IntegrityError, match=r"00000000\.pack.*does not hold chunk"):
            await j.get_chunks([rows[1][0]])
        assert len(await j.get_chunks([rows[0][0]])) == 1  # its neighbours still read
    os.truncate(pack, 4)  # not even a whole header: refused as damaged, no IndexError
    async with await open_journal(path) as j:
        with pytest.raises(IntegrityError, match=r"00000000\.pack does not start with"):
            await j.get_chunks([rows[0][0]])
    pack.unlink()
    async with await open_journal(path) as j:
        with pytest.raises(IntegrityError, match="missing"):
            await j.get_chunks([rows[0][0]])


V1_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY, size INTEGER NOT NULL, stored INTEGER NOT NULL,
    state INTEGER NOT NULL, used_us INTEGER NOT NULL, blob BLOB);
CREATE INDEX chunks_state ON chunks(state);
CREATE TABLE records(
    id BLOB PRIMARY KEY, kind INTEGER NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE checkpoints(
    seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, time_us INTEGER NOT NULL,
    kind TEXT NOT NULL, labels TEXT NOT NULL, sources TEXT NOT NULL, state INTEGER NOT NULL);
CREATE TABLE source_state(source TEXT PRIMARY KEY, manifest_id BLOB NOT NULL, data BLOB NOT NULL);
"""


async def test_version_1_journal_is_migrated_and_keeps_its_blobs(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old, new = blobs(3), blobs(3)
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    meta = {"format": "amber-journal", "version": "1", "vault": "v", "node": "n"}
    meta["fingerprint"] = KEYS.fingerprint
    con.executemany("INSERT INTO meta VALUES(?,?)", meta.items())
    con.executemany(
        "INSERT INTO chunks VALUES(?,?,?,?,?,?)",
        [(c, n, len(b), DURABLE, 1, b) for c, n, b in old],
    )
    con.commit()
    con.close()
    async with await Journal.open(path, KEYS, vault="v", node="n") as j:
        assert await j.get_chunks([c for c, _, _ in old]) == {c: b for c, _, b in old}
        await j.put_chunks(new, 2)
        assert await j.get_chunks([c for c, _, _ in new]) == {c: b for c, _, b in new}
        assert await j.held_bytes() == sum(len(b) for _, _, b in old + new)
        await j.evict(0)  # the old blobs are durable: evicted from SQLite as before
        assert await j.get_chunks([c for c, _, _ in old]) == {}
    assert sql(path, "SELECT value FROM meta WHERE key = 'version'") == [("3",)]


async def test_writers_taking_turns_record_where_their_blobs_really_are(tmp_path: Path) -> None:
    # the daemon and a CLI command write the same journal in turns (the state directory's
    # lock); each must append where the pack ends now, not where it last wrote, or its
    # index points into the other's entries (a restore would then fail on them)
    path = tmp_path / "journal.db"
    first, second, third = blobs(5), blobs(5), blobs(5)
    async with await open_journal(path) as daemon:
        await daemon.discard_tentative()  # taking the lock, as runtime.writing does
        await daemon.put_chunks(first, 1)
        sql(path, "UPDATE chunks SET state = ?", (COMMITTED,))
        async with await open_journal(path) as cli:  # `amber-agent checkpoint`, its turn
            await cli.discard_tentative()
            await cli.put_chunks(second, 2)
            sql(path, "UPDATE chunks SET state = ?", (COMMITTED,))
        await daemon.discard_tentative()  # the daemon's next turn
        await daemon.put_chunks(third, 3)
        rows = first + second + third
        assert await daemon.get_chunks([c for c, _, _ in rows]) == {c: b for c, _, b in rows}


async def test_a_write_cancelled_at_any_point_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    # a checkpoint cancelled (SIGTERM, a failing source) while its chunk insert waits on
    # SQLite's thread: the next writer must still be able to start a transaction
    path = tmp_path / "journal.db"
    rows = blobs(3, size=2_000)
    async with await open_journal(path) as j:
        for ticks in range(40):  # cancel after 0, 1, 2, ... turns of the event loop
            task = asyncio.create_task(j.put_chunks(rows, ticks))
            for _ in range(ticks):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await j.discard_tentative()  # raised "cannot start a transaction within a
            assert not j.db.in_transaction  # transaction" when the BEGIN was cancelled
            assert await j._one("PRAGMA synchronous") == (2,)  # FULL again for the next
        await j.put_chunks(rows, 99)
        assert set(await j.get_chunks([c for c, _, _ in rows])) == {c for c, _, _ in rows}


async def test_tentative_inserts_do_not_wait_for_the_disk(tmp_path: Path) -> None:
    """Tentative chunk rows are garbage after a crash, so their commits skip the WAL
    fsync (one per window, a long wait on an SD card); every other commit keeps it."""
    path = tmp_path / "journal.db"
    statements: list[str] = []
    async with await open_journal(path) as j:
        await j.db.set_trace_callback(statements.append)
        await j.put_chunks(blobs(3), 1)
        await j.discard_tentative()
        await j.db.set_trace_callback(None)
        assert await j._one("PRAGMA synchronous") == (2,)
    kinds = [s.split("(")[0].split(" WHERE")[0] for s in statements]
    kinds = [k for k in kinds if k.startswith(("PRAGMA synchronous", "INSERT", "DELETE"))]
    assert kinds == [
        "PRAGMA synchronous=NORMAL",
        *["INSERT OR IGNORE INTO chunks"] * 3,  # one per row of the executemany
        "PRAGMA synchronous=FULL",
        "DELETE FROM chunks",  # the discard commits durably, as before
    ]
