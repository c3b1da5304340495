"""The restore file pipeline (agent/restore/files.py), driven through Restorer with records
and chunks held in memory: batching, bounded memory, sync before rename, failures."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest

from amber.agent.identity import NodeIdentity
from amber.agent.restore import files as filerestore
from amber.agent.restore.restorer import Restorer
from amber.protocol.chunk import encode_chunk
from amber.protocol.errors import IntegrityError, NotFoundError
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import (
    Checkpoint,
    Entry,
    Manifest,
    encode_checkpoint,
    encode_manifest,
    record_id,
)

KEYS = VaultKeys.from_master(bytes(range(32)))
SIGNER = SigningKey(bytes(range(32, 64)))
IDENT = NodeIdentity("v", "n1", KEYS, SIGNER)
WINDOW = 64 * 1024


class Store:
    """Records and chunk blobs in memory; counts fetches and the bytes handed out."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.plain: dict[bytes, int] = {}
        self.calls = 0
        self.fetched = 0  # plaintext bytes handed out so far

    async def record(self, rid: bytes) -> bytes | None:
        return self.records.get(rid)

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        self.calls += 1
        found = {i: self.blobs[i] for i in ids if i in self.blobs}
        self.fetched += sum(self.plain[i] for i in found)
        return found

    def file(self, path: str, data: bytes, piece: int = 16 * 1024) -> Entry:
        refs = []
        for at in range(0, len(data), piece):
            cid, blob = encode_chunk(KEYS, data[at : at + piece])
            self.blobs[cid], self.plain[cid] = blob, len(data[at : at + piece])
            refs.append((cid, len(data[at : at + piece])))
        digest = blake3.blake3(data).digest()
        return Entry(path, "f", 0o640, len(data), 10**18, digest, tuple(refs))

    def checkpoint(self, entries: Sequence[Entry]) -> bytes:
        m = Manifest("v", "n1", "src", "files", "warm", 1, tuple(entries), {"root_is_dir": True})
        mdata = encode_manifest(m, KEYS, SIGNER)
        self.records[record_id(mdata)] = mdata
        cp = Checkpoint("v", "n1", 0, None, 1, {"src": record_id(mdata)})
        data = encode_checkpoint(cp, KEYS, SIGNER)
        self.records[record_id(data)] = data
        return record_id(data)


def restore(store: Store, cp_id: bytes, dest: Path, progress: object = None) -> Restorer:
    async def go() -> Restorer:
        with ThreadPoolExecutor(2) as pool:
            r = Restorer(IDENT, store, store, pool, progress=progress)  # type: ignore[arg-type]
            await r.restore_to(cp_id, dest)
            return r

    return asyncio.run(go())


def contents(n: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size + i.to_bytes(4, "big") for i in range(n)]


@pytest.fixture(autouse=True)
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filerestore, "WINDOW_BYTES", WINDOW)
    monkeypatch.setattr(filerestore, "FLUSH_BYTES", 2 * WINDOW)  # big files flush early


def test_small_files_share_a_fetch_and_big_files_span_windows(tmp_path: Path) -> None:
    store = Store()
    small = contents(40, 300)
    big = os.urandom(5 * WINDOW + 123)
    entries = [store.file(f"notes/{i}.txt", d) for i, d in enumerate(small)]
    entries += [store.file("big.bin", big), store.file("empty", b""), store.file("z.txt", b"z")]
    r = restore(store, store.checkpoint(entries), tmp_path / "out")
    root = tmp_path / "out" / "src"
    for i, d in enumerate(small):
        assert (root / "notes" / f"{i}.txt").read_bytes() == d
    assert (root / "big.bin").read_bytes() == big
    assert (root / "empty").read_bytes() == b"" and (root / "z.txt").read_bytes() == b"z"
    assert (root / "big.bin").stat().st_mode & 0o777 == 0o640
    assert r.stats.files == 43 and r.stats.bytes == sum(map(len, small)) + len(big) + 1
    # one fetch per window, not one (or more) per file
    assert store.calls <= 8, store.calls


def test_memory_stays_bounded_by_windows(tmp_path: Path) -> None:
    store = Store()
    cp = store.checkpoint([store.file("a.bin", os.urandom(40 * WINDOW))])
    written = [0]
    ahead: list[int] = []

    def progress(n: int) -> None:
        written[0] += n
        ahead.append(store.fetched - written[0])

    restore(store, cp, tmp_path / "out", progress)
    assert written[0] == 40 * WINDOW
    # fetched but not yet written: the windows queued between fetch and write, no more
    assert max(ahead) <= (filerestore.DEPTH + 2) * WINDOW, max(ahead) // WINDOW


def test_every_file_is_synced_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store()
    cp = store.checkpoint([store.file(f"f{i}", os.urandom(3000 * i)) for i in range(1, 30)])
    synced: set[int] = set()
    at_rename: list[set[int]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    def rename(a: object, b: object) -> None:
        at_rename.append(set(synced))
        real_rename(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    restore(store, cp, tmp_path / "out")
    inodes = {p.stat().st_ino for p in (tmp_path / "out" / "src").iterdir()}
    assert len(inodes) == 29 and at_rename and inodes <= at_rename[0]


def test_a_missing_chunk_late_in_the_restore_leaves_nothing_and_no_open_file(
    tmp_path: Path,
) -> None:
    store = Store()
    entries = [store.file(f"f{i}", os.urandom(WINDOW // 3)) for i in range(12)]
    del store.blobs[entries[-1].chunks[-1][0]]
    cp = store.checkpoint(entries)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(NotFoundError, match="f11"):
        restore(store, cp, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []  # no staging directory left behind
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("under", ["f", "l"])
def test_nothing_is_ever_written_through_a_restored_symlink(tmp_path: Path, under: str) -> None:
    store = Store()
    outside = tmp_path / "outside"
    outside.mkdir()
    link = Entry("esc", "l", 0o777, 0, 0, None, (), str(outside))
    if under == "f":
        planted = store.file("esc/planted", b"x")
    else:
        planted = Entry("esc/planted", "l", 0o777, 0, 0, None, (), "anywhere")
    cp = store.checkpoint([link, planted])
    with pytest.raises(IntegrityError, match="esc"):
        restore(store, cp, tmp_path / "out")
    assert os.listdir(outside) == [] and os.listdir(tmp_path / "out") == []


def test_cancelling_a_restore_stops_its_threads_and_closes_its_files(tmp_path: Path) -> None:
    store = Store()
    cp = store.checkpoint([store.file(f"f{i}", os.urandom(WINDOW // 2)) for i in range(20)])
    served = asyncio.Event()

    class Stalling:
        async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
            if store.calls >= 3:
                served.set()
                await asyncio.Event().wait()  # the hub went quiet
            return await store.get_chunks(ids)

    async def go() -> None:
        with ThreadPoolExecutor(2) as pool:
            r = Restorer(IDENT, store, Stalling(), pool)  # type: ignore[arg-type]
            work = asyncio.create_task(r.materialize(*(await r.load(cp))[1].values(), tmp_path))
            await asyncio.wait_for(served.wait(), 30)
            await asyncio.sleep(0.05)
            work.cancel()
            with pytest.raises(asyncio.CancelledError):
                await work

    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    threads = {t.name for t in threading.enumerate()}
    asyncio.run(go())
    assert {t.name for t in threading.enumerate()} <= threads
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds
