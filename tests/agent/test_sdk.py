"""amber.agent.sdk: event streams, checkpoints, time travel, concurrency, backup/restore."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from amber.agent import sdk
from amber.agent.cli import main
from amber.agent.sdk import Event, StateStore
from amber.protocol.errors import FormatError, NotFoundError, UnknownVersionError, UsageError


async def fill(
    store: StateStore, thread: str, n: int, expected: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Append n more events (messages, an update every third one) to a thread whose
    expected states so far are ``expected``; return the expected state after each seq,
    index 0 being the empty state."""
    expected = list(expected or [{}])
    for i in range(len(expected), len(expected) + n):
        state = dict(expected[-1])
        if i % 3 == 0:
            payload: dict[str, Any] = {"step": i, "tool": f"t{i}"}
            state.update(payload)
            seq = await store.append(thread, "update", payload)
        else:
            payload = {"role": "user" if i % 2 else "assistant", "content": f"m{i}"}
            state["messages"] = [*state.get("messages", []), payload]
            seq = await store.append(thread, "message", payload)
        assert seq == i
        expected.append(state)
    return expected


async def test_append_checkpoint_load_round_trip(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as store:
        assert (await store.load("t1")).state == {}
        expected = await fill(store, "t1", 7)
        cp = await store.checkpoint("t1", expected[7], label="seven")
        assert (cp.thread, cp.seq, cp.label) == ("t1", 7, "seven")
        mixed = {"b": b"\x00\xff", "n": None, "f": 1.5, "i": -(2**40), "nest": {"x": [True]}}
        await store.append("t2", "update", mixed)
        loaded = await store.load("t1")
        assert (loaded.seq, loaded.state, loaded.base, loaded.replayed) == (7, expected[7], cp, 0)
        assert (await store.load("t2")).state == mixed
        events = [e async for e in store.events("t1")]
        assert [e.seq for e in events] == list(range(1, 8))
        assert events[2].type == "update" and events[2].payload == {"step": 3, "tool": "t3"}
        assert await store.threads() == ["t1", "t2"]
        assert await store.checkpoints("t1") == [cp]
        assert await store.checkpoints("t2") == []


async def test_time_travel_to_every_seq_and_to_a_label(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as store:
        expected = await fill(store, "t", 5)
        five = await store.checkpoint("t", expected[5], label="five")
        await fill(store, "other", 3)  # another thread's events do not show up in "t"
        expected = await fill(store, "t", 7, expected)
        twelve = await store.checkpoint("t", expected[12], label="twelve")
        expected = await fill(store, "t", 2, expected)
        for seq in range(15):
            got = await store.load("t", at=seq)
            assert (got.seq, got.state) == (seq, expected[seq]), seq
            base = None if seq < 5 else five if seq < 12 else twelve
            assert (got.base, got.replayed) == (base, seq - (base.seq if base else 0)), seq
        assert (await store.load("t")).state == expected[14]
        for label, cp in (("five", five), ("twelve", twelve)):
            got = await store.load("t", at=label)
            assert (got.seq, got.state, got.base, got.replayed) == (cp.seq, expected[cp.seq], cp, 0)


async def test_time_travel_uses_snapshots_as_authoritative(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as store:
        expected = await fill(store, "t", 4)
        summary = {"summary": "four messages", "messages": []}
        cp = await store.checkpoint("t", summary, label="compacted")
        await store.append("t", "message", {"content": "after"})
        await store.append("t", "update", {"done": True})
        assert (await store.load("t", at=3)).state == expected[3]  # before the snapshot
        at4 = await store.load("t", at=4)
        assert (at4.state, at4.base, at4.replayed) == (summary, cp, 0)
        at6 = await store.load("t", at=6)
        assert at6.state == {**summary, "messages": [{"content": "after"}], "done": True}
        assert (at6.base, at6.replayed) == (cp, 2)
        assert (await store.load("t", at="compacted")).state == summary
        # A label taken later at the same seq names exactly what was recorded then.
        await store.checkpoint("t", {"other": 1}, label="late")
        assert (await store.load("t", at="late")).state == {"other": 1}
        assert (await store.load("t", at="compacted")).state == summary


async def test_custom_reducer(tmp_path: Path) -> None:
    def counter(state: dict[str, Any], event: Event) -> dict[str, Any]:
        if event.type == "add":
            return {**state, "total": state.get("total", 0) + event.payload["n"]}
        if event.type == "reset":
            return {"total": 0}
        return state

    async with StateStore.open(tmp_path / "s.db", reducer=counter) as store:
        for n in (5, 7, 11):
            await store.append("c", "add", {"n": n})
        await store.append("c", "reset", {})
        await store.append("c", "add", {"n": 2})
        await store.append("c", "note", {"text": "ignored"})
        assert (await store.load("c")).state == {"total": 2}
        assert (await store.load("c", at=3)).state == {"total": 23}
        assert (await store.load("c", at=2)).state == {"total": 12}

    def broken(state: dict[str, Any], event: Event) -> dict[str, Any]:
        return [event.seq]  # type: ignore[return-value]

    async with StateStore.open(tmp_path / "s.db", reducer=broken) as store:
        with pytest.raises(UsageError, match="reducer returned list"):
            await store.load("c")


async def test_replay_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with StateStore.open(path) as store:
        await fill(store, "t", 30)
        await store.checkpoint("t", (await store.load("t", at=30)).state)
        await fill(store, "u", 9)
        first = [await store.load("t", at=s) for s in (0, 10, 29, 30)]
        second = [await store.load("t", at=s) for s in (0, 10, 29, 30)]
        assert first == second
    async with StateStore.open(path) as store:
        assert [await store.load("t", at=s) for s in (0, 10, 29, 30)] == first
        assert [e async for e in store.events("t", after=10, until=29)] == [
            e async for e in store.events("t", after=10, until=29)
        ]


async def test_events_iterator_pages_and_bounds(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sdk, "PAGE", 4)
    async with StateStore.open(tmp_path / "s.db") as store:
        await fill(store, "t", 13)
        assert [e.seq async for e in store.events("t")] == list(range(1, 14))
        assert [e.seq async for e in store.events("t", after=3, until=11)] == list(range(4, 12))
        assert [e.seq async for e in store.events("t", after=13)] == []
        seen = []
        async for e in store.events("t", until=8):  # other calls may run while iterating
            seen.append(e.seq)
            if e.seq == 2:
                await store.append("t", "note", {})
        assert seen == list(range(1, 9))
        assert (await store.load("t")).seq == 14


async def test_concurrent_tasks_get_unique_gapless_seqs(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as store:

        async def writer(w: int) -> list[tuple[str, int]]:
            out = []
            for i in range(25):
                thread = f"t{(w + i) % 3}"
                out.append((thread, await store.append(thread, "message", {"w": w, "i": i})))
                if i % 10 == 0:
                    await store.load(thread)
            return out

        results = await asyncio.gather(*(writer(w) for w in range(8)))
        by_thread: dict[str, list[int]] = {}
        for thread, seq in (pair for r in results for pair in r):
            by_thread.setdefault(thread, []).append(seq)
        assert sum(len(v) for v in by_thread.values()) == 200
        for thread, seqs in by_thread.items():
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), thread
            stored = [e.seq async for e in store.events(thread)]
            assert stored == sorted(seqs)
            assert len((await store.load(thread)).state["messages"]) == len(seqs)


CHILD = """
import asyncio, sys
from amber.agent.sdk import StateStore

async def run(path, n):
    async with StateStore.open(path) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(n):
            await store.append("shared", "message", {"who": "child", "i": i})
            await store.append("child-only", "update", {"i": i})

asyncio.run(run(sys.argv[1], int(sys.argv[2])))
"""


async def test_second_process_appends_concurrently(tmp_path: Path) -> None:
    path, n = tmp_path / "s.db", 150
    async with StateStore.open(path) as store:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"ready\n"
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        for i in range(n):
            await store.append("shared", "message", {"who": "parent", "i": i})
        assert await asyncio.wait_for(child.wait(), 120) == 0
        events = [e async for e in store.events("shared")]
        assert [e.seq for e in events] == list(range(1, 2 * n + 1))
        for who in ("parent", "child"):  # each writer's events in its own order
            assert [e.payload["i"] for e in events if e.payload["who"] == who] == list(range(n))
        assert (await store.load("child-only")).state == {"i": n - 1}
        assert len((await store.load("shared")).state["messages"]) == 2 * n
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


async def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with StateStore.open(path) as store:
        await store.append("t", "message", {"content": "hi"})
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    con.close()
    with pytest.raises(UnknownVersionError, match="version 99"):
        async with StateStore.open(path):
            pass
    con = sqlite3.connect(path)  # refused, not damaged: the data is still there
    assert con.execute("SELECT count(*) FROM events").fetchone() == (1,)
    con.close()


async def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    with con:
        con.execute("CREATE TABLE notes (x)")
    con.close()
    before = other.read_bytes()
    with pytest.raises(FormatError, match="not an Amber state store"):
        await StateStore.open(other)
    assert other.read_bytes() == before  # refused files are left as they were
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(FormatError):
        await StateStore.open(junk)
    assert junk.read_bytes() == b"definitely not sqlite" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db", "other.db"]
    with pytest.raises(NotFoundError):
        await StateStore.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


async def test_bad_values_and_arguments_are_usage_errors(tmp_path: Path) -> None:
    store = await StateStore.open(tmp_path / "s.db")
    await store.append("t", "message", {"content": "ok"})
    bad_payloads: list[Any] = [
        ["not", "a", "dict"],
        {"s": {1, 2}},
        {"t": (1, 2)},
        {"o": object()},
        {"big": 2**64},
        OrderedDict(a=1),
    ]
    for bad in bad_payloads:
        with pytest.raises(UsageError, match="event payload"):
            await store.append("t", "message", bad)
    with pytest.raises(UsageError, match="state"):
        await store.checkpoint("t", {"when": sdk})  # type: ignore[dict-item]
    with pytest.raises(UsageError, match="thread_id"):
        await store.append("", "message", {})
    with pytest.raises(UsageError, match="event type"):
        await store.append("t", None, {})  # type: ignore[arg-type]
    await store.checkpoint("t", {}, label="a")
    with pytest.raises(UsageError, match="already has a checkpoint labelled 'a'"):
        await store.checkpoint("t", {}, label="a")
    with pytest.raises(NotFoundError, match=r"has 1 event\(s\); there is no seq 2"):
        await store.load("t", at=2)
    with pytest.raises(NotFoundError):
        await store.load("t", at=-1)
    with pytest.raises(NotFoundError, match="labelled 'nope'"):
        await store.load("t", at="nope")
    with pytest.raises(UsageError):
        await store.load("t", at=True)
    assert [e.seq async for e in store.events("t")] == [1]  # nothing half-written
    assert len(await store.checkpoints("t")) == 1
    await store.close()
    await store.close()
    with pytest.raises(UsageError, match="closed"):
        await store.append("t", "message", {})


def test_backup_and_restore_with_amber_agent(tmp_path: Path, capsys: Any) -> None:
    node, db = tmp_path / "node", tmp_path / "agent-state.db"
    cfg = ["--config", str(node / "agent.toml")]
    assert main(["init", "--dir", str(node), "--node", "n1", "--vault", "v1"]) == 0
    add = ["source", "add", "st", "--kind", "state", "--path", str(db), "--tier", "hot"]
    assert main([*cfg, *add]) == 0

    async def write(thread: str, n: int, label: str | None) -> dict[str, Any]:
        async with StateStore.open(db) as store:
            expected = await fill(store, thread, n) if n else []
            if label:
                await store.checkpoint(thread, expected[-1], label=label)
            await store.append(thread, "message", {"content": f"last of {label}"})
            return (await store.load(thread)).state

    asyncio.run(write("warm-up", 0, None))
    keeper = sqlite3.connect(db)  # an open reader keeps new commits in the WAL file
    keeper.execute("SELECT count(*) FROM events").fetchone()
    at_checkpoint = asyncio.run(write("run-1", 10, "plan"))
    assert Path(f"{db}-wal").stat().st_size > 0  # the backup must read through the WAL
    capsys.readouterr()
    assert main([*cfg, "checkpoint", "--json"]) == 0
    cp_id = json.loads(capsys.readouterr().out)["id"]
    later = asyncio.run(write("run-2", 4, None))
    asyncio.run(write("run-1", 0, None))
    keeper.close()
    assert main([*cfg, "restore", cp_id, "--to", str(tmp_path / "restored")]) == 0

    async def read(path: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        async with StateStore.open(path, create=False) as store:
            plan = (await store.load("run-1", at="plan")).state
            return await store.threads(), (await store.load("run-1")).state, plan

    threads, state, plan = asyncio.run(read(tmp_path / "restored" / "st" / db.name))
    assert threads == ["run-1", "warm-up"]
    assert state == at_checkpoint
    assert plan["messages"][-1]["content"] == "m10"
    live_threads, live_state, _ = asyncio.run(read(db))
    assert live_threads == ["run-1", "run-2", "warm-up"] and live_state != at_checkpoint
    assert later["messages"][-1]["content"] == "last of None"
