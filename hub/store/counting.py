"""A wrapper that counts an object store's backend failures for the hub's metrics.

It implements the same interface as the store it wraps (restic's wrappers pattern): the
documented outcomes (NotFoundError, ObjectLockedError) are not failures and are not counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from amber.hub.store.base import ObjectInfo, ObjectStore
from amber.protocol.errors import NotFoundError, ObjectLockedError

T = TypeVar("T")


class Counter(Protocol):
    def inc(self) -> None: ...


class CountingStore:
    """An :class:`ObjectStore` that counts its backend's failures (not the documented
    outcomes NotFoundError and ObjectLockedError) and re-raises them unchanged."""

    EXPECTED = (NotFoundError, ObjectLockedError)

    def __init__(self, inner: ObjectStore, errors: Counter) -> None:
        self.inner, self.errors = inner, errors
        self.name = inner.name

    async def _count(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except self.EXPECTED:
            raise
        except Exception:
            self.errors.inc()
            raise

    async def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> bool:
        return await self._count(self.inner.put(key, data, retain_until=retain_until))

    async def retain(self, key: str, retain_until: datetime) -> None:
        await self._count(self.inner.retain(key, retain_until))

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self._count(self.inner.get(key, offset=offset, length=length))

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._count(self.inner.head(key))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        try:
            async for key in self.inner.list(prefix):
                yield key
        except self.EXPECTED:
            raise
        except Exception:
            self.errors.inc()
            raise

    async def delete(self, key: str) -> None:
        await self._count(self.inner.delete(key))

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend extras (bucket, root, ...)
        return getattr(self.inner, name)
