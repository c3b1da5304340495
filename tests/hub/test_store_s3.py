"""S3Store specifics against a real SeaweedFS: Object Lock, versions, error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from amber.hub.store.s3 import S3Store
from amber.protocol.errors import NotFoundError, ObjectLockedError, StoreError


def make_store(server: Any, bucket: str, **kwargs: Any) -> S3Store:
    options: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "region_name": server.region,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
    }
    options.update(kwargs)
    return S3Store(bucket, f"s3t-{uuid4().hex[:12]}", **options)


@pytest.fixture
async def locked_store(s3_server: Any, lock_bucket: str) -> AsyncIterator[S3Store]:
    store = make_store(s3_server, lock_bucket)
    yield store
    await store.close()


def versions_of(server: Any, store: S3Store, key: str) -> list[dict[str, Any]]:
    full = store.prefix + key
    return [v for v in server.iter_object_versions(store.bucket) if v["Key"] == full]


async def test_locked_version_refuses_raw_delete(s3_server: Any, locked_store: S3Store) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    assert await locked_store.put("anchor/head", b"audit head", retain_until=until)
    (version,) = versions_of(s3_server, locked_store, "anchor/head")
    raw = s3_server.client()
    with pytest.raises(ClientError) as info:
        raw.delete_object(
            Bucket=locked_store.bucket,
            Key=locked_store.prefix + "anchor/head",
            VersionId=version["VersionId"],
        )
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    retention = raw.head_object(Bucket=locked_store.bucket, Key=locked_store.prefix + "anchor/head")
    assert retention["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ObjectLockedError):
        await locked_store.delete("anchor/head")
    assert await locked_store.get("anchor/head") == b"audit head"
    assert len(versions_of(s3_server, locked_store, "anchor/head")) == 1  # nothing deleted


async def test_no_lock_bucket_ignores_retention_with_one_warning(
    s3_server: Any, plain_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(s3_server, plain_bucket)
    until = datetime.now(UTC) + timedelta(days=30)
    with caplog.at_level(logging.WARNING, logger="amber.hub.store.s3"):
        assert await store.put("a", b"1", retain_until=until) is True
        assert await store.put("b", b"2", retain_until=until) is True
    warnings = [r for r in caplog.records if "Object Lock" in r.getMessage()]
    assert len(warnings) == 1 and plain_bucket in warnings[0].getMessage()
    info = await store.head("a")
    assert info is not None and info.retain_until is None
    await store.delete("a")  # nothing holds it
    assert await store.head("a") is None
    await store.close()


async def test_delete_removes_every_version_and_marker(
    s3_server: Any, locked_store: S3Store
) -> None:
    await locked_store.put("v/k", b"one")
    raw = s3_server.client()
    full = locked_store.prefix + "v/k"
    raw.put_object(Bucket=locked_store.bucket, Key=full, Body=b"two")  # unconditional
    raw.delete_object(Bucket=locked_store.bucket, Key=full)  # only adds a delete marker
    assert await locked_store.head("v/k") is None
    assert len(versions_of(s3_server, locked_store, "v/k")) == 3
    await locked_store.delete("v/k")  # hidden versions are still stored: clean them
    assert versions_of(s3_server, locked_store, "v/k") == []
    with pytest.raises(NotFoundError):
        await locked_store.delete("v/k")


async def test_one_locked_version_protects_the_key(s3_server: Any, locked_store: S3Store) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    await locked_store.put("m/k", b"retained", retain_until=until)
    raw = s3_server.client()
    raw.put_object(Bucket=locked_store.bucket, Key=locked_store.prefix + "m/k", Body=b"newer")
    with pytest.raises(ObjectLockedError):
        await locked_store.delete("m/k")
    assert len(versions_of(s3_server, locked_store, "m/k")) == 2  # neither was deleted


async def test_concurrent_puts_make_one_version(s3_server: Any, locked_store: S3Store) -> None:
    results = await asyncio.gather(*(locked_store.put("c/k", b"%d" % i) for i in range(10)))
    assert results.count(True) == 1
    assert len(versions_of(s3_server, locked_store, "c/k")) == 1


async def test_prefix_isolates_stores(s3_server: Any, lock_bucket: str) -> None:
    first, second = make_store(s3_server, lock_bucket), make_store(s3_server, lock_bucket)
    await first.put("same/key", b"first")
    assert await second.put("same/key", b"second") is True
    assert [k async for k in first.list("")] == ["same/key"]
    assert await second.get("same/key") == b"second"
    # objects outside the key alphabet (e.g. console "folders") are not listed
    s3_server.client().put_object(Bucket=lock_bucket, Key=first.prefix + "dir/", Body=b"")
    assert [k async for k in first.list("")] == ["same/key"]
    await first.close()
    await second.close()


async def test_missing_bucket_is_a_store_error(s3_server: Any) -> None:
    store = make_store(s3_server, f"no-such-{uuid4().hex[:8]}")
    with pytest.raises(StoreError) as info:
        await store.put("k", b"x")
    assert "NoSuchBucket" in str(info.value) and store.bucket in info.value.hint
    with pytest.raises(StoreError):
        [k async for k in store.list("")]
    await store.close()


async def test_bad_credentials_are_a_store_error(s3_server: Any, lock_bucket: str) -> None:
    store = make_store(s3_server, lock_bucket, aws_secret_access_key="wrong")
    with pytest.raises(StoreError) as info:
        await store.get("k")
    assert not isinstance(info.value, NotFoundError)
    assert "credentials" in info.value.hint
    await store.close()


async def test_unreachable_endpoint_is_a_store_error(s3_server: Any, lock_bucket: str) -> None:
    store = make_store(
        s3_server,
        lock_bucket,
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(StoreError) as info:
        await store.head("k")
    assert "127.0.0.1:9" in info.value.hint
    await store.close()


async def test_client_factory_is_used(s3_server: Any, lock_bucket: str) -> None:
    made: list[Any] = []

    def factory() -> Any:
        made.append(s3_server.client())
        return made[-1]

    store = S3Store(lock_bucket, "factory", client_factory=factory, max_workers=2)
    await asyncio.gather(*(store.put(f"f/{i}", b"x") for i in range(5)))
    assert len(made) == 1
    assert [k async for k in store.list("f/")] == [f"f/{i}" for i in range(5)]
    await store.close()
    with pytest.raises(StoreError):
        await store.head("f/0")
