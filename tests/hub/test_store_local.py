"""LocalStore specifics: file modes, crash leftovers, layout, opening by URL."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amber.hub.store.base import open_store
from amber.hub.store.local import TEMP_PREFIX, LocalStore
from amber.protocol.errors import ConfigError, ObjectLockedError, StoreError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_objects_are_read_only_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    until = datetime.now(UTC) + timedelta(days=1)
    await store.put("chunks/ab/abcd", b"data", retain_until=until)
    assert mode_of(tmp_path / "objects/chunks/ab/abcd") == 0o444
    assert mode_of(tmp_path / "retention/chunks/ab/abcd") == 0o444
    assert (tmp_path / "objects/chunks/ab/abcd").read_bytes() == b"data"
    recorded = (tmp_path / "retention/chunks/ab/abcd").read_text().strip()
    assert datetime.fromisoformat(recorded) >= until
    # nothing but the object and its retention record is left behind
    assert files_under(tmp_path) == ["objects/chunks/ab/abcd", "retention/chunks/ab/abcd"]


async def test_leftover_temp_file_is_ignored_and_swept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put("a/real", b"kept")
    leftover = tmp_path / "objects/a" / f"{TEMP_PREFIX}0123456789abcdef"
    leftover.write_bytes(b"half a chunk")  # what a crash mid-put leaves
    stale = tmp_path / "objects" / f"{TEMP_PREFIX}stale"
    stale.write_bytes(b"older")
    old = datetime.now().timestamp() - 7200
    os.utime(stale, (old, old))

    assert [k async for k in store.list("")] == ["a/real"]
    assert [k async for k in store.list("a/")] == ["a/real"]
    with pytest.raises(StoreError):  # not a key: '~' is outside the alphabet
        await store.head(f"a/{leftover.name}")

    assert await store.sweep_temp() == 1  # only the one older than an hour
    assert not stale.exists() and leftover.exists()
    assert await store.sweep_temp(older_than=0) == 1
    assert not leftover.exists()
    assert await store.get("a/real") == b"kept"


async def test_temp_file_name_cannot_block_a_put(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "objects").mkdir(parents=True)
    (tmp_path / "objects" / f"{TEMP_PREFIX}x").write_bytes(b"junk")
    assert await store.put("x", b"fresh") is True
    assert await store.get("x") == b"fresh"


async def test_key_that_is_a_directory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put("a/b", b"1")
    assert await store.head("a") is None
    with pytest.raises(StoreError) as info:
        await store.put("a", b"2")
    assert "directory" in info.value.hint
    with pytest.raises(StoreError):
        await store.put("a/b/c", b"3")


async def test_damaged_retention_record_refuses_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put("r", b"x", retain_until=datetime.now(UTC) + timedelta(days=1))
    sidecar = tmp_path / "retention/r"
    sidecar.chmod(0o644)
    sidecar.write_text("not a date\n")
    with pytest.raises(StoreError) as info:
        await store.delete("r")
    assert not isinstance(info.value, ObjectLockedError)
    assert await store.get("r") == b"x"


async def test_retention_record_only_grows(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    later = datetime.now(UTC) + timedelta(days=10)
    sooner = datetime.now(UTC) + timedelta(days=1)
    # a crash between the retention record and the object leaves only the record
    store._extend_retention("k", later.replace(microsecond=0))
    assert await store.put("k", b"x", retain_until=sooner) is True
    info = await store.head("k")
    assert info is not None and info.retain_until == later.replace(microsecond=0)


async def test_event_loop_stays_responsive(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(store.put(f"t/{i}", os.urandom(1 << 20)) for i in range(8)))
    task.cancel()
    assert ticks > 8  # the loop ran while the writes were in threads


def test_open_store_by_path_and_url(tmp_path: Path) -> None:
    by_path = open_store(str(tmp_path))
    by_url = open_store(tmp_path.as_uri())
    assert isinstance(by_path, LocalStore) and isinstance(by_url, LocalStore)
    assert by_path.root == by_url.root == tmp_path
    assert by_url.name == tmp_path.as_uri()
    for bad in ("ftp://host/dir", "file://otherhost/dir", "s3:///prefix-without-bucket"):
        with pytest.raises(ConfigError):
            open_store(bad)
