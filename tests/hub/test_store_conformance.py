"""The one conformance suite every object store backend must pass.

Backends: ``local`` (a temp directory), ``s3`` (SeaweedFS, a bucket with Object
Lock) and ``s3-nolock`` (SeaweedFS, a plain bucket, where retention is ignored:
the retention tests skip it; tests/hub/test_store_s3.py covers its warning).
Each test gets a fresh store: its own directory, or its own key prefix.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import pytest

from amber.hub.store.base import ObjectInfo, ObjectStore, open_store
from amber.protocol.errors import NotFoundError, ObjectLockedError, StoreError

# the S3 backends talk to the session's SeaweedFS (requested lazily by `store`)
BACKENDS = [
    "local",
    pytest.param("s3", marks=pytest.mark.servers),
    pytest.param("s3-nolock", marks=pytest.mark.servers),
]
RETAINING = {"local", "s3"}


def _open_s3(server: Any, bucket: str) -> ObjectStore:
    query = urlencode({"endpoint": server.endpoint_url, "region": server.region})
    return open_store(
        f"s3://{bucket}/t-{uuid4().hex[:12]}?{query}",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectStore]:
    if backend == "local":
        opened = open_store((tmp_path / "store").as_uri())
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("lock_bucket" if backend == "s3" else "plain_bucket")
        opened = _open_s3(server, bucket)
    assert isinstance(opened, ObjectStore)
    try:
        yield opened
    finally:
        await opened.close()


def needs_retention(backend: str) -> None:
    if backend not in RETAINING:
        pytest.skip("this backend cannot hold retention (no Object Lock)")


async def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return [key async for key in store.list(prefix)]


async def test_put_get_round_trip(store: ObjectStore) -> None:
    assert await store.put("chunks/ab/abcdef", b"hello world") is True
    assert await store.get("chunks/ab/abcdef") == b"hello world"
    assert await store.head("chunks/ab/abcdef") == ObjectInfo("chunks/ab/abcdef", 11, None)
    assert isinstance(store.name, str) and store.name


async def test_empty_object(store: ObjectStore) -> None:
    assert await store.put("empty", b"") is True
    assert await store.get("empty") == b""
    assert await store.get("empty", offset=0, length=10) == b""
    assert await store.head("empty") == ObjectInfo("empty", 0, None)


async def test_put_twice_never_overwrites(store: ObjectStore) -> None:
    assert await store.put("k/one", b"first") is True
    assert await store.put("k/one", b"first") is False
    assert await store.put("k/one", b"second, longer bytes") is False
    assert await store.get("k/one") == b"first"
    assert (await store.head("k/one")) == ObjectInfo("k/one", 5, None)


async def test_ranged_get(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    await store.put("r/blob", data)
    assert await store.get("r/blob", offset=10, length=20) == data[10:30]
    assert await store.get("r/blob", offset=1000) == data[1000:]
    assert await store.get("r/blob", length=5) == data[:5]
    assert await store.get("r/blob", offset=1020, length=100) == data[1020:]
    assert await store.get("r/blob", offset=1024) == b""
    assert await store.get("r/blob", offset=5000, length=3) == b""
    assert await store.get("r/blob", offset=7, length=0) == b""
    with pytest.raises(StoreError):
        await store.get("r/blob", offset=-1)
    with pytest.raises(StoreError):
        await store.get("r/blob", length=-1)


async def test_absent_object(store: ObjectStore) -> None:
    assert await store.head("no/such/key") is None
    with pytest.raises(NotFoundError):
        await store.get("no/such/key")
    with pytest.raises(NotFoundError):
        await store.get("no/such/key", offset=3, length=0)
    with pytest.raises(NotFoundError):
        await store.delete("no/such/key")
    assert await keys_of(store) == []


async def test_list_prefix_sorted(store: ObjectStore) -> None:
    # '-' < '.' < '/' < digits < letters: a depth-first walk must still come out sorted
    keys = ["p/a.c", "p/a/b", "p/a-b/x", "p/ab", "p/a/c/d", "p/a0", "q/z", "p/B"]
    for key in reversed(keys):
        assert await store.put(key, key.encode())
    assert await keys_of(store) == sorted(keys)
    assert await keys_of(store, "p/") == sorted(k for k in keys if k.startswith("p/"))
    assert await keys_of(store, "p/a") == sorted(k for k in keys if k.startswith("p/a"))
    assert await keys_of(store, "p/a/") == ["p/a/b", "p/a/c/d"]
    assert await keys_of(store, "p/ab") == ["p/ab"]
    assert await keys_of(store, "q") == ["q/z"]
    assert await keys_of(store, "nothing/") == []


async def test_delete_unlocked_object(store: ObjectStore) -> None:
    await store.put("d/x", b"bye")
    await store.put("d/y", b"stays")
    await store.delete("d/x")
    assert await store.head("d/x") is None
    with pytest.raises(NotFoundError):
        await store.get("d/x")
    with pytest.raises(NotFoundError):
        await store.delete("d/x")
    assert await keys_of(store, "d/") == ["d/y"]
    assert await store.put("d/x", b"again") is True  # a deleted key can be written anew
    assert await store.get("d/x") == b"again"


async def test_retained_object_cannot_be_deleted(store: ObjectStore, backend: str) -> None:
    needs_retention(backend)
    until = datetime.now(UTC) + timedelta(hours=1, microseconds=1)
    assert await store.put("locked/a", b"keep me", retain_until=until) is True
    with pytest.raises(ObjectLockedError):
        await store.delete("locked/a")
    assert await store.get("locked/a") == b"keep me"
    info = await store.head("locked/a")
    assert info is not None and info.size == 7
    assert info.retain_until is not None
    assert until <= info.retain_until < until + timedelta(seconds=1)  # whole seconds, up
    assert info.retain_until.utcoffset() == timedelta(0)
    assert await keys_of(store, "locked/") == ["locked/a"]


async def test_retain_extends_and_never_shortens(store: ObjectStore, backend: str) -> None:
    needs_retention(backend)
    assert await store.put("later/a", b"unlocked at first") is True
    info = await store.head("later/a")
    assert info is not None and info.retain_until is None
    until = datetime.now(UTC) + timedelta(hours=2)
    await store.retain("later/a", until)
    await store.retain("later/a", until - timedelta(hours=1))  # shorter: changes nothing
    info = await store.head("later/a")
    assert info is not None and info.retain_until is not None
    assert until <= info.retain_until < until + timedelta(seconds=1)
    with pytest.raises(ObjectLockedError):
        await store.delete("later/a")
    with pytest.raises(NotFoundError):
        await store.retain("later/absent", until)


async def test_retention_ends(store: ObjectStore, backend: str) -> None:
    needs_retention(backend)
    until = datetime.now(UTC) + timedelta(seconds=2)
    await store.put("brief", b"short-lived", retain_until=until)
    with pytest.raises(ObjectLockedError):
        await store.delete("brief")
    await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.1)
    await store.delete("brief")
    assert await store.head("brief") is None


async def test_retention_in_the_past_or_naive(store: ObjectStore) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    assert await store.put("old", b"x", retain_until=past) is True
    assert (await store.head("old")) == ObjectInfo("old", 1, None)
    await store.delete("old")
    with pytest.raises(StoreError):
        await store.put("naive", b"x", retain_until=datetime.now() + timedelta(days=1))
    assert await store.head("naive") is None


BAD_KEYS = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    "..",
    "a/../b",
    "a/..",
    "x..y",
    "sp ace",
    "tab\t",
    "back\\slash",
    "ümlaut",
    "~tmp-1234",
    "q?x",
    "new\nline",
    "k" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys(store: ObjectStore, key: str) -> None:
    with pytest.raises(StoreError):
        await store.put(key, b"x")
    with pytest.raises(StoreError):
        await store.get(key)
    with pytest.raises(StoreError):
        await store.head(key)
    with pytest.raises(StoreError):
        await store.delete(key)


@pytest.mark.parametrize("prefix", ["/a", "a//", "..", "a/../", "sp ace"])
async def test_invalid_prefix(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(StoreError):
        await keys_of(store, prefix)


async def test_concurrent_puts_of_one_key(store: ObjectStore) -> None:
    payloads = [f"writer {i} ".encode() * (i + 1) for i in range(10)]
    results = await asyncio.gather(*(store.put("race/k", p) for p in payloads))
    assert results.count(True) == 1
    winner = payloads[results.index(True)]
    assert await store.get("race/k") == winner
    assert await keys_of(store, "race/") == ["race/k"]
    assert await store.put("race/k", payloads[0]) is False


async def test_large_object(store: ObjectStore) -> None:
    data = os.urandom(8 * 1024 * 1024)
    assert await store.put("big/model.bin", data) is True
    assert await store.get("big/model.bin") == data
    info = await store.head("big/model.bin")
    assert info is not None and info.size == len(data)
    middle = 3 * 1024 * 1024 + 17
    assert (
        await store.get("big/model.bin", offset=middle, length=65536)
        == data[middle : middle + 65536]
    )
