"""S3 (AWS, MinIO, SeaweedFS, Ceph) as an object store, with Object Lock retention.

boto3 is synchronous, so every call runs in this store's own bounded thread pool
(``max_workers`` threads, and as many pooled HTTP connections). One boto3 client is
shared by all threads: clients are thread-safe, sessions are not, so the session
is used once, to make the client, and never again.

- put is a conditional create: ``PutObject`` with ``If-None-Match: *``, answered
  with 412 PreconditionFailed when the key exists. AWS (since 2024), MinIO, Ceph
  RGW and SeaweedFS (tested: 4.48 holds it under ten concurrent PUTs of one key,
  on plain and versioned buckets) implement it. A server that ignored the header
  would overwrite, which stays harmless here: keys are content-addressed so a
  racing writer stores identical bytes, and on a versioned (Object Lock) bucket an
  overwrite only adds a version and never destroys the retained one. If botocore
  retries a PUT whose first response was lost, the retry meets our own object and
  put returns False although this call wrote it: harmless, the bytes are the same.
- Retention: with ``retain_until`` on a bucket with Object Lock, the PUT carries
  ``ObjectLockMode=COMPLIANCE`` and ``ObjectLockRetainUntilDate``, so no one, not
  even the bucket's owner, can delete that version early. Whether the bucket has
  Object Lock is asked once (``GetObjectLockConfiguration``); on a bucket without
  it retention is skipped with one warning (the server would reject the PUT).
- delete removes every version and delete marker of the key, each by VersionId
  (a plain DELETE on a versioned bucket only hides the object behind a marker). It
  first reads each version's retention and refuses with ObjectLockedError, deleting
  nothing, if any is still retained or under legal hold; an AccessDenied from the
  server on a locked version (clock skew, races) maps to ObjectLockedError too.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from amber.hub.store.base import (
    ObjectInfo,
    retention_deadline,
    retention_in_force,
    validate_key,
    validate_prefix,
    validate_range,
)
from amber.protocol.errors import AmberError, NotFoundError, ObjectLockedError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_PUT_ATTEMPTS = 3


class S3Store:
    """Objects under ``prefix`` in one S3 bucket; see the module docstring.

    Pass either ``client_factory`` (called once, in a worker thread, to make the
    boto3 S3 client) or boto3 client keyword arguments (``endpoint_url``,
    ``region_name``, ``aws_access_key_id``, ``aws_secret_access_key``, ``config``);
    without credentials boto3 falls back to ``AWS_ACCESS_KEY_ID`` and friends.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client_factory: Callable[[], Any] | None = None,
        max_workers: int = 8,
        **client_kwargs: Any,
    ) -> None:
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if not bucket or "/" in bucket:
            raise StoreError(f"invalid bucket name {bucket!r}", hint="name one S3 bucket")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.name = f"s3://{bucket}/{self.prefix}"
        self._endpoint = client_kwargs.get("endpoint_url") or "the default AWS endpoint"
        self._owns_client = client_factory is None
        self._factory = client_factory or partial(_default_client, max_workers, client_kwargs)
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="amber-s3")
        self._object_lock: bool | None = None
        self._object_lock_check = asyncio.Lock()
        self._closed = False
        self._warned_no_lock = False

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, endpoint={self._endpoint!r})"

    # --- the ObjectStore interface ----------------------------------------------

    async def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> bool:
        """See :meth:`amber.hub.store.base.ObjectStore.put` (a conditional create here)."""
        validate_key(key)
        deadline = retention_deadline(retain_until)
        # Conditional create (If-None-Match: *): the server refuses with 412 if the key
        # exists, atomically, so put never overwrites; see the module docstring.
        args: dict[str, Any] = {"Key": self._full(key), "Body": bytes(data), "IfNoneMatch": "*"}
        if deadline is not None and await self._retention_supported(key):
            args.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=deadline)
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            try:
                await self._call("put_object", **args)
                return True
            except ClientError as exc:
                code = _code(exc)
                if code == "PreconditionFailed":
                    return False
                # 409: a concurrent create or delete of the key; S3 asks to retry.
                if code == "ConditionalRequestConflict" and attempt < _PUT_ATTEMPTS:
                    continue
                raise self._error(exc, "put", key) from exc
            except BotoCoreError as exc:
                raise self._error(exc, "put", key) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def retain(self, key: str, retain_until: datetime) -> None:
        """See :meth:`amber.hub.store.base.ObjectStore.retain` (PutObjectRetention in
        COMPLIANCE mode, after a HEAD: S3 refuses to shorten a COMPLIANCE retention)."""
        validate_key(key)
        deadline = retention_deadline(retain_until)
        info = await self.head(key)
        if info is None:
            raise self._not_found(key)
        if deadline is None or not await self._retention_supported(key):
            return
        if info.retain_until is not None and info.retain_until >= deadline:
            return
        try:
            await self._call(
                "put_object_retention",
                Key=self._full(key),
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": deadline},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "retain", key) from exc

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """See :meth:`amber.hub.store.base.ObjectStore.get` (``Range: bytes=a-b``)."""
        validate_key(key)
        validate_range(offset, length)
        if length == 0:
            if await self.head(key) is None:
                raise self._not_found(key)
            return b""
        byte_range = ""
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            byte_range = f"bytes={offset}-{end}"
        try:
            return await self._run(partial(_read_object, self.bucket, self._full(key), byte_range))
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # the object exists but ends before offset
                return b""
            raise self._error(exc, "get", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "get", key) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`amber.hub.store.base.ObjectStore.head`."""
        validate_key(key)
        try:
            meta = await self._call("head_object", Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "head", key)
            if isinstance(error, NotFoundError):
                return None
            raise error from exc
        return ObjectInfo(key, meta["ContentLength"], _utc(meta.get("ObjectLockRetainUntilDate")))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """See :meth:`amber.hub.store.base.ObjectStore.list`; keys outside the alphabet are skipped.

        Servers do not all list in key order (SeaweedFS 4.48 walks its directory
        tree and sorts directory ``a`` as ``a``, not ``a/``), so the store lists one
        level at a time (``Delimiter="/"``), sorts each level itself with
        sub-prefixes ending in ``/``, and descends depth-first: keys come out sorted
        on any server, and memory is bounded by the widest level, not the bucket.
        """
        validate_prefix(prefix)
        stack: builtins.list[tuple[str, bool]] = [(prefix, True)]
        while stack:
            name, is_level = stack.pop()
            if not is_level:
                yield name
                continue
            stack.extend(reversed(await self._list_level(name)))

    async def delete(self, key: str) -> None:
        """See :meth:`amber.hub.store.base.ObjectStore.delete`: every version, or none."""
        validate_key(key)
        versions, markers = await self._versions(key)
        if not versions:
            raise self._not_found(key)
        if await self._object_lock_enabled():
            for version_id in versions:
                await self._refuse_if_retained(key, version_id)
        for version_id in versions + markers:
            try:
                await self._call("delete_object", Key=self._full(key), VersionId=version_id)
            except ClientError as exc:
                if _code(exc) in _DENIED and await self._object_lock_enabled():
                    raise ObjectLockedError(
                        f"S3 refused to delete a version of {key!r} in {self.name}: "
                        f"it is locked ({_code(exc)})"
                    ) from exc
                raise self._error(exc, "delete", key) from exc
            except BotoCoreError as exc:
                raise self._error(exc, "delete", key) from exc

    async def close(self) -> None:
        """Close the client (if this store made it) and stop the thread pool."""
        self._closed = True
        async with self._client_lock:
            client, self._client = self._client, None
        if client is not None and self._owns_client and hasattr(client, "close"):
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False)

    # --- helpers -----------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + key

    async def _run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` in the pool, making the client on first use."""
        if self._closed:
            raise StoreError(f"{self.name} is closed", hint="open the store again")
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    loop = asyncio.get_running_loop()
                    self._client = await loop.run_in_executor(self._executor, self._factory)
        client = self._client
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, client)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await self._run(lambda client: getattr(client, method)(Bucket=self.bucket, **kwargs))

    async def _paginate(self, method: str, op: str, **kwargs: Any) -> AsyncIterator[Any]:
        """Yield a paginator's pages, fetching each one in the pool."""
        try:
            pages = iter(
                await self._run(
                    lambda client: client.get_paginator(method).paginate(
                        Bucket=self.bucket, **kwargs
                    )
                )
            )
            while (page := await self._run(lambda _client: next(pages, None))) is not None:
                yield page
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, op, kwargs.get("Prefix", "")) from exc

    async def _list_level(self, prefix: str) -> builtins.list[tuple[str, bool]]:
        """Keys (False) and sub-prefixes (True) directly under ``prefix``, sorted."""
        entries: builtins.list[tuple[str, bool]] = []
        strip = len(self.prefix)
        args = {"Prefix": self.prefix + prefix, "Delimiter": "/"}
        async for page in self._paginate("list_objects_v2", "list", **args):
            for obj in page.get("Contents", ()):
                if _valid_key(obj["Key"][strip:]):
                    entries.append((obj["Key"][strip:], False))
            for sub in page.get("CommonPrefixes", ()):
                if _valid_key(sub["Prefix"][strip:].rstrip("/")):
                    entries.append((sub["Prefix"][strip:], True))
        entries.sort()
        return entries

    async def _versions(self, key: str) -> tuple[builtins.list[str], builtins.list[str]]:
        """Version ids of ``key``'s object versions and of its delete markers."""
        full = self._full(key)
        versions: builtins.list[str] = []
        markers: builtins.list[str] = []
        async for page in self._paginate("list_object_versions", "delete", Prefix=full):
            versions += [v["VersionId"] for v in page.get("Versions", ()) if v["Key"] == full]
            markers += [m["VersionId"] for m in page.get("DeleteMarkers", ()) if m["Key"] == full]
        return versions, markers

    async def _refuse_if_retained(self, key: str, version_id: str) -> None:
        """Raise ObjectLockedError if this version is retained or under legal hold."""
        try:
            meta = await self._call("head_object", Key=self._full(key), VersionId=version_id)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "delete", key) from exc
        retain_until = _utc(meta.get("ObjectLockRetainUntilDate"))
        if retain_until is not None and retention_in_force(retain_until):
            raise ObjectLockedError(
                f"object {key!r} in {self.name} is retained until {retain_until.isoformat()}"
            )
        if meta.get("ObjectLockLegalHoldStatus") == "ON":
            raise ObjectLockedError(
                f"object {key!r} in {self.name} is under a legal hold",
                hint="release the legal hold first if the deletion is really wanted",
            )

    async def _object_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock, asked once."""
        async with self._object_lock_check:
            if self._object_lock is None:
                try:
                    reply = await self._call("get_object_lock_configuration")
                    config = reply.get("ObjectLockConfiguration", {})
                    self._object_lock = config.get("ObjectLockEnabled") == "Enabled"
                except ClientError as exc:
                    if _code(exc) != "ObjectLockConfigurationNotFoundError":
                        raise self._error(exc, "object lock check", "") from exc
                    self._object_lock = False
                except BotoCoreError as exc:
                    raise self._error(exc, "object lock check", "") from exc
            return self._object_lock

    async def _retention_supported(self, key: str) -> bool:
        if await self._object_lock_enabled():
            return True
        if not self._warned_no_lock:
            self._warned_no_lock = True
            log.warning(
                "bucket %r at %s has no Object Lock: objects such as %r are stored "
                "without retention; create the bucket with Object Lock to make them immutable",
                self.bucket,
                self._endpoint,
                key,
            )
        return False

    def _not_found(self, key: str) -> NotFoundError:
        return NotFoundError(
            f"no object {key!r} in {self.name}",
            hint="check the key; list the store to see what it holds",
        )

    def _error(self, exc: Exception, op: str, key: str) -> AmberError:
        """Map a boto3 error to NotFoundError or a StoreError with a hint."""
        where = f"bucket {self.bucket!r} at {self._endpoint}"
        if isinstance(exc, NoCredentialsError):
            hint = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or pass credentials"
            return StoreError(f"S3 {op} in {self.name}: no credentials", hint=hint)
        if not isinstance(exc, ClientError):
            hint = f"check that the endpoint {self._endpoint} is reachable, then retry"
            return StoreError(f"S3 {op} of {key!r} in {self.name} failed: {exc}", hint=hint)
        code = _code(exc)
        if code in _NOT_FOUND:
            return self._not_found(key)
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"S3 {op} of {key!r} in {self.name} failed: {code} {message}".rstrip()
        if code == "NoSuchBucket":
            hint = f"create {where} (with Object Lock for retention) or fix the store URL"
        elif code in _DENIED:
            hint = f"check the credentials and their permissions on {where}"
        else:
            hint = f"check {where}, then retry"
        return StoreError(text, hint=hint)


def _default_client(max_workers: int, kwargs: dict[str, Any]) -> Any:
    """A boto3 S3 client with a connection pool as large as the thread pool."""
    import boto3
    from botocore.config import Config

    kwargs = dict(kwargs)
    config = Config(
        max_pool_connections=max_workers,
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        # custom endpoints (MinIO, SeaweedFS, Ceph) rarely have wildcard DNS
        s3={"addressing_style": "path" if kwargs.get("endpoint_url") else "auto"},
    )
    if kwargs.get("config") is not None:
        config = config.merge(kwargs.pop("config"))
    kwargs["config"] = config
    client = boto3.session.Session().client("s3", **kwargs)
    # Objects are small (a chunk is at most a few MiB): an "Expect: 100-continue" round
    # trip before every upload only costs time. (Checksums stay on: AWS requires one on
    # uploads that carry Object Lock retention.)
    from botocore.handlers import add_expect_header

    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def _read_object(bucket: str, key: str, byte_range: str, client: Any) -> bytes:
    """GET an object (or a range of it) and read the whole body, in a worker thread."""
    args = {"Bucket": bucket, "Key": key}
    if byte_range:
        args["Range"] = byte_range
    body = client.get_object(**args)["Body"]
    try:
        return body.read()
    finally:
        body.close()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except StoreError:
        return False
    return True
