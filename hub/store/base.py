"""The hub's object store interface: immutable objects named by string keys.

Everything the hub keeps durably (pack objects of chunks, manifests, checkpoints) is
an immutable object in an :class:`ObjectStore`. The interface is deliberately small,
in the manner of restic's backend interface: each method's docstring is its
contract, and ``tests/hub/test_store_conformance.py`` runs one suite against every
backend. Retries, rate limits and caches belong in wrappers that implement this same
interface, not in the backends.

Backends (one module each, registered in :data:`BACKENDS`, the one list of them):

- ``file``: :class:`amber.hub.store.local.LocalStore`, a local directory (default);
- ``s3``: :class:`amber.hub.store.s3.S3Store`, S3 via boto3 with Object Lock.

Keys are ``/``-separated paths over the alphabet ``[A-Za-z0-9._-]``: no leading or
trailing ``/``, no empty segment, no ``..`` anywhere, at most
:data:`MAX_KEY_LENGTH` characters. Any other key raises :class:`StoreError`.

Retention dates are kept at whole-second precision, rounded up, so that an object
is never released earlier than asked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from amber.protocol.errors import ConfigError, StoreError

MAX_KEY_LENGTH = 1024
"""Longest key accepted (the S3 limit; well above any key Amber makes)."""

_KEY_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._/-]*")
_KEY_HINT = (
    "keys are '/'-separated segments of [A-Za-z0-9._-], with no leading or trailing "
    "'/', no empty segment and no '..'"
)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What :meth:`ObjectStore.head` knows about a stored object."""

    key: str
    size: int
    retain_until: datetime | None = None
    """End of retention (UTC), or None if the object was stored without any."""


@runtime_checkable
class ObjectStore(Protocol):
    """Immutable objects named by string keys.

    Objects are written once and never changed; content-addressed callers (chunk
    ids, manifest digests) rely on that. Every method may raise :class:`StoreError`
    when the backend fails (disk, network, credentials); other exceptions are
    documented per method. All methods are safe to call concurrently.
    """

    name: str
    """A short description for logs and metrics, e.g. ``file:///srv/amber``."""

    async def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> bool:
        """Store ``data`` under ``key`` if no object exists there yet.

        Returns True if this call wrote the object, False if an object already
        existed (then nothing is changed, whatever ``data`` holds). Never overwrites,
        also under concurrent puts of one key: exactly one of them returns True.
        When it returns, the object is durable (local: file and directory fsynced;
        S3: the PUT succeeded). ``retain_until`` (timezone-aware) asks that the
        object cannot be deleted before that time; it applies only when this call
        writes the object, and a date in the past means no retention. A backend that
        cannot hold retention (an S3 bucket without Object Lock) stores the object,
        logs a warning once and ignores ``retain_until``.
        """
        ...

    async def retain(self, key: str, retain_until: datetime) -> None:
        """Ask that the stored object cannot be deleted before ``retain_until``.

        Retention only grows: a date before the object's current one (or in the past)
        changes nothing. Raises :class:`NotFoundError` if no object exists. A backend
        that cannot hold retention ignores it, as :meth:`put` does.
        """
        ...

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of the object from ``offset`` (all of the rest if None).

        Fewer bytes come back if the object ends first, and ``b""`` if ``offset``
        is at or past its end. Raises :class:`NotFoundError` if no object exists.
        """
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Return the object's size and retention, or None if it does not exist."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key starting with ``prefix`` (a plain string prefix), sorted.

        Used as ``async for key in store.list("chunks/")``. Keys stored while the
        listing runs may or may not appear.
        """
        ...

    async def delete(self, key: str) -> None:
        """Delete the object if its retention allows it.

        Raises :class:`ObjectLockedError` while retention is in force (or a legal
        hold is set), and then nothing is deleted. Raises :class:`NotFoundError` if
        no object exists. On versioned backends every stored version goes.
        """
        ...

    async def close(self) -> None:
        """Release threads and connections; the store is unusable afterwards."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`StoreError`."""
    if (
        not isinstance(key, str)
        or len(key) > MAX_KEY_LENGTH
        or ".." in key
        or not _KEY_RE.fullmatch(key)
    ):
        raise StoreError(f"invalid object key {key!r}", hint=_KEY_HINT)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys could start with it, else raise :class:`StoreError`."""
    if (
        not isinstance(prefix, str)
        or len(prefix) > MAX_KEY_LENGTH
        or ".." in prefix
        or prefix.startswith("/")
        or "//" in prefix
        or not _PREFIX_RE.fullmatch(prefix)
    ):
        raise StoreError(f"invalid key prefix {prefix!r}", hint=_KEY_HINT)
    return prefix


def validate_range(offset: int, length: int | None) -> None:
    """Raise :class:`StoreError` unless ``offset``/``length`` make a byte range."""
    if offset < 0 or (length is not None and length < 0):
        raise StoreError(
            f"invalid byte range offset={offset} length={length}",
            hint="offset and length must not be negative",
        )


def retention_deadline(retain_until: datetime | None) -> datetime | None:
    """Normalise a requested retention date: UTC, rounded up to whole seconds.

    Returns None when there is nothing to retain (None, or a date already past).
    Raises :class:`StoreError` for a naive datetime, whose meaning is ambiguous.
    """
    if retain_until is None:
        return None
    if retain_until.tzinfo is None or retain_until.utcoffset() is None:
        raise StoreError(
            f"retain_until {retain_until.isoformat()} has no timezone",
            hint="pass a timezone-aware datetime, e.g. datetime.now(UTC) + timedelta(days=30)",
        )
    utc = retain_until.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return utc if utc > datetime.now(UTC) else None


def retention_in_force(retain_until: datetime | None) -> bool:
    """True while ``retain_until`` lies in the future."""
    return retain_until is not None and retain_until > datetime.now(UTC)


# --- opening a store from a URL -------------------------------------------------------


def _open_file(url: SplitResult, options: dict[str, Any]) -> ObjectStore:
    from amber.hub.store.local import LocalStore

    if url.netloc not in ("", "localhost") or url.query:
        raise ConfigError(
            f"unsupported file store URL {url.geturl()!r}",
            hint="write a local store as file:///absolute/dir or as a plain path",
        )
    return LocalStore(Path(unquote(url.path)), **options)


def _open_s3(url: SplitResult, options: dict[str, Any]) -> ObjectStore:
    from amber.hub.store.s3 import S3Store

    query = dict(parse_qsl(url.query, keep_blank_values=True))
    renames = {"endpoint": "endpoint_url", "region": "region_name"}
    unknown = sorted(set(query) - set(renames))
    if not url.netloc or unknown:
        raise ConfigError(
            f"unsupported S3 store URL {url.geturl()!r}",
            hint="write it as s3://bucket/prefix?endpoint=https://host:port&region=name",
        )
    for name, value in query.items():
        options.setdefault(renames[name], value)
    return S3Store(url.netloc, url.path.lstrip("/"), **options)


BACKENDS: dict[str, Callable[[SplitResult, dict[str, Any]], ObjectStore]] = {
    "file": _open_file,
    "s3": _open_s3,
}
"""URL scheme -> opener: the one list of store backends."""


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the store a URL names.

    ``file:///dir`` or a plain path opens a :class:`LocalStore`;
    ``s3://bucket/prefix?endpoint=URL&region=NAME`` opens an :class:`S3Store`,
    with credentials from ``options`` (``aws_access_key_id``,
    ``aws_secret_access_key``, or a ``client_factory``) or else boto3's usual
    sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles). Other
    ``options`` go to the backend's constructor. Raises :class:`ConfigError` for a
    URL no backend handles.
    """
    parsed = urlsplit(url)
    if "://" not in url:  # a plain path (relative or absolute)
        parsed = SplitResult("file", "", url, "", "")
    opener = BACKENDS.get(parsed.scheme)
    if opener is None:
        raise ConfigError(
            f"no object store backend for {url!r}",
            hint=f"use one of the schemes {', '.join(sorted(BACKENDS))}, or a plain path",
        )
    return opener(parsed, dict(options))
