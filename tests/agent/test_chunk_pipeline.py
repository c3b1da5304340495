"""The checkpoint chunk pipeline (agent/pipeline.py) on a real journal: several streams
through one pipeline, streams written concurrently, and journal writes that finish
before the commit whatever order they were queued in."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import pytest

from amber.agent.journal import Journal
from amber.agent.pipeline import WINDOW_BYTES, ChunkWriter
from amber.protocol.chunk import chunk_id
from amber.protocol.keys import VaultKeys
from tests.support.data import age_tree, rand, tree, write
from tests.support.node import Node

KEYS = VaultKeys.from_master(bytes(range(32)))
PIECE = 64 * 1024


def pieces(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data), PIECE):
        yield data[at : at + PIECE]


async def with_writer(tmp_path: Path, body: Any) -> Any:
    journal = await Journal.open(tmp_path / "journal.db", KEYS, vault="v", node="n", create=True)
    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(2) as reader:
        writer = ChunkWriter(journal, KEYS, pool, reader, level=1, budget=1 << 40)
        try:
            return await body(journal, writer)
        finally:
            await writer.flush()
            await journal.close()


def count_journal_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows per ``Journal.put_chunks`` call, appended as the calls are made."""
    writes: list[int] = []
    put = Journal.put_chunks

    async def counted(self: Journal, rows: Any, now_us: int) -> None:
        writes.append(len(rows))
        await put(self, rows, now_us)

    monkeypatch.setattr(Journal, "put_chunks", counted)
    return writes


def test_streams_share_one_pipeline_and_keep_their_own_results(tmp_path: Path) -> None:
    """Windows span streams; every stream still gets its chunks, size and digest, empty
    ones included (between others and at the end)."""
    big = rand(WINDOW_BYTES + 3 * PIECE + 17, 1)  # ends inside the second window
    datas = [b"", big, b"", rand(5000, 2), rand(3 * PIECE, 3), b""]

    async def body(journal: Journal, writer: ChunkWriter) -> Any:
        return await writer.write_streams(pieces(d) for d in datas)

    results = asyncio.run(with_writer(tmp_path, body))
    assert len(results) == len(datas)
    for data, res in zip(datas, results, strict=True):
        assert res.size == len(data)
        assert res.digest == blake3.blake3(data).digest()
        assert res.chunks == [(chunk_id(KEYS, p), len(p)) for p in pieces(data)]


def test_cancelled_while_the_reader_is_in_a_stream_closes_it_after(tmp_path: Path) -> None:
    """A checkpoint cancelled (SIGTERM) while the reader thread is inside a stream: the
    stream is closed once the thread is out of it, and the task ends cancelled (closing
    it at once raised 'generator already executing' and the daemon exited with 1)."""
    inside, release = threading.Event(), threading.Event()
    closed: list[bool] = []

    def stream() -> Iterator[bytes]:
        try:
            yield rand(PIECE, 5)
            inside.set()
            release.wait(10)  # the reader thread is busy here when the task is cancelled
            yield rand(PIECE, 6)
        finally:
            closed.append(release.is_set())

    async def body(journal: Journal, writer: ChunkWriter) -> Any:
        task = asyncio.create_task(writer.write_streams([stream()]))
        await asyncio.to_thread(inside.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the reader thread to come out
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(closed)

    assert asyncio.run(with_writer(tmp_path, body)) == [True]


def test_small_files_of_a_source_share_journal_writes(
    node: Node, data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two hundred prompt files cost a few journal writes, not one (plus a dedup query
    and a pool round trip) per file, and restore byte for byte."""
    for i in range(200):
        write(data / "prompts" / f"p{i:03}.md", f"# prompt {i}\n" + "be careful. " * (i + 5))
    write(data / "prompts" / "empty.md", b"")
    age_tree(data / "prompts")
    node.add("prompts", "files", data / "prompts")
    writes = count_journal_writes(monkeypatch)
    assert node.checkpoint()["new_chunks"] == 201 - 1  # the empty file has no chunk
    assert sum(writes) == 200 and len(writes) <= 2, writes
    node.restore_to("latest", tmp_path / "out")
    assert tree(tmp_path / "out" / "prompts") == tree(data / "prompts")


def test_many_logs_share_journal_writes_and_append_only_their_tails(
    node: Node, data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    logs = data / "logs"
    for i in range(120):
        write(
            logs / f"run-{i:03}.jsonl", "".join(f'{{"run": {i}, "step": {s}}}\n' for s in range(40))
        )
    age_tree(logs)
    node.add("logs", "jsonl", logs)
    writes = count_journal_writes(monkeypatch)
    node.checkpoint()
    assert len(writes) <= 2, writes
    for i in (3, 50, 119):
        with open(logs / f"run-{i:03}.jsonl", "a") as fh:
            fh.write(f'{{"run": {i}, "step": 40}}\n')
    second = node.checkpoint()
    assert second["read_bytes"] == 3 * len('{"run": 50, "step": 40}\n')  # the tails only
    node.restore_to("latest", tmp_path / "out")
    assert tree(tmp_path / "out" / "logs") == tree(logs)


def test_concurrent_streams_write_a_shared_chunk_once(tmp_path: Path) -> None:
    """Two sources holding the same bytes, scanned at once: each new chunk is encoded and
    appended once, and both results list it."""
    shared = rand(2 * WINDOW_BYTES, 4)

    async def body(journal: Journal, writer: ChunkWriter) -> Any:
        a, b = await asyncio.gather(
            writer.write_streams([pieces(shared)]), writer.write_streams([pieces(shared)])
        )
        await writer.flush()
        return a[0], b[0], writer.stats, journal.packs.dir

    a, b, stats, pack_dir = asyncio.run(with_writer(tmp_path, body))
    unique = len(shared) // PIECE
    assert a.chunks == b.chunks and len(a.chunks) == unique
    assert stats.new_chunks == unique and stats.dedup_chunks == unique
    stored = sum(p.stat().st_size for p in Path(pack_dir).iterdir())
    assert stored < len(shared) * 1.1, "a shared chunk was appended twice"


@pytest.mark.parametrize("seed", range(4))
def test_flush_waits_for_every_journal_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """With three streams queueing writes of random speeds, no write is left running
    when flush returns (the commit would then reference chunks not in the journal)."""
    speeds = random.Random(seed)
    running: set[int] = set()
    done: list[int] = []
    put = Journal.put_chunks

    async def uneven(self: Journal, rows: Any, now_us: int) -> None:
        n = len(done) + len(running)
        running.add(n)
        await asyncio.sleep(speeds.choice([0, 0.02, 0.15]))
        await put(self, rows, now_us)
        running.discard(n)
        done.append(n)

    monkeypatch.setattr(Journal, "put_chunks", uneven)

    async def body(journal: Journal, writer: ChunkWriter) -> Any:
        datas = [rand(3 * WINDOW_BYTES // 2, 10 * seed + i) for i in range(3)]
        await asyncio.gather(*(writer.write_streams([pieces(d)]) for d in datas))
        await writer.flush()
        return set(running), len(done)

    still_running, finished = asyncio.run(with_writer(tmp_path, body))
    assert still_running == set() and finished >= 6
