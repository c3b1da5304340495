"""A local directory as an object store: the hub's default backend.

Layout under ``root``::

    objects/<key>      the object's bytes, mode 0444
    retention/<key>    ISO 8601 UTC end of retention, only for retained objects

A put writes ``~tmp-<random>`` in the target's directory, fsyncs it, then
``os.link``\\ s it to the final name (atomic, and it fails if the name exists: that
is what makes put never overwrite), unlinks the temp file and fsyncs the directory.
``~`` is outside the key alphabet, so temp files left by a crash can never be taken
for objects; list/head/get ignore them and :meth:`LocalStore.sweep_temp` removes
them.

Retention here is advisory: a local directory cannot enforce immutability against
root or the hub's own user, who can chmod and unlink anything. The store refuses
to delete a retained object; real immutability needs S3 Object Lock.

A key cannot also be a directory of other keys (``a`` and ``a/b``): the file system
forbids it, and the put of the second one fails with :class:`StoreError`.
Amber's content-addressed key layouts never do this.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from amber.fsutil import fsync_dir
from amber.hub.store.base import (
    ObjectInfo,
    retention_deadline,
    retention_in_force,
    validate_key,
    validate_prefix,
    validate_range,
)
from amber.protocol.errors import NotFoundError, ObjectLockedError, StoreError

TEMP_PREFIX = "~tmp-"
"""Name prefix of in-flight files; ``~`` never occurs in a key."""

_READ_ONLY = 0o444

P = ParamSpec("P")
T = TypeVar("T")


class LocalStore:
    """Objects as read-only files under ``root/objects``; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.name = self.root.as_uri()
        self._objects = self.root / "objects"
        self._retention = self.root / "retention"
        # retention only grows: read-modify-write per key, under one of a few striped
        # locks (a single lock made every upload queue behind every other one)
        self._retention_locks = [threading.Lock() for _ in range(64)]

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # --- the ObjectStore interface ----------------------------------------------

    async def put(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> bool:
        """See :meth:`amber.hub.store.base.ObjectStore.put`."""
        validate_key(key)
        deadline = retention_deadline(retain_until)
        return await self._run(self._put_sync, key, bytes(data), deadline)

    async def retain(self, key: str, retain_until: datetime) -> None:
        """See :meth:`amber.hub.store.base.ObjectStore.retain`."""
        validate_key(key)
        deadline = retention_deadline(retain_until)
        await self._run(self._retain_sync, key, deadline)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """See :meth:`amber.hub.store.base.ObjectStore.get`."""
        validate_key(key)
        validate_range(offset, length)
        return await self._run(self._get_sync, key, offset, length)

    async def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`amber.hub.store.base.ObjectStore.head`."""
        validate_key(key)
        return await self._run(self._head_sync, key)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """See :meth:`amber.hub.store.base.ObjectStore.list`.

        Walks depth-first, one directory per thread hop, ordering siblings with
        directories as ``name/``: that visits keys in exactly sorted order, so keys
        stream out without collecting the whole tree first.
        """
        validate_prefix(prefix)
        base, _, first = prefix.rpartition("/")
        stack: builtins.list[tuple[str, bool]] = [(base, True)]
        at_top = True
        while stack:
            rel, is_dir = stack.pop()
            if not is_dir:
                yield rel
                continue
            entries = await self._run(self._scan_sync, rel)
            if at_top:
                entries = [e for e in entries if e[0].startswith(first)]
                at_top = False
            for name, child_is_dir in reversed(entries):
                stack.append((f"{rel}/{name}" if rel else name, child_is_dir))

    async def delete(self, key: str) -> None:
        """See :meth:`amber.hub.store.base.ObjectStore.delete` (retention is advisory here)."""
        validate_key(key)
        await self._run(self._delete_sync, key)

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    async def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove temp files older than ``older_than`` seconds; return how many.

        Temp files are what a crash mid-put leaves. The age bound spares the temp
        files of puts still running; pass 0 only when no put can be in flight.
        """
        return await self._run(self._sweep_sync, older_than)

    # --- blocking parts, run in a worker thread ---------------------------------

    @staticmethod
    async def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            raise _store_error(exc) from exc

    def _put_sync(self, key: str, data: bytes, deadline: datetime | None) -> bool:
        final = self._objects / key
        if _exists_as_file(final):
            return False
        _makedirs_durable(final.parent, self.root)
        if deadline is not None:
            self._extend_retention(key, deadline)
        tmp = _write_temp(final.parent, data)
        try:
            os.link(tmp, final)
            written = True
        except FileExistsError:
            written = False
        finally:
            tmp.unlink()
        try:
            fsync_dir(final.parent)
        except OSError:
            if written:  # not durable: a retried put must write it again, not find it
                final.unlink(missing_ok=True)
            raise
        return written

    def _get_sync(self, key: str, offset: int, length: int | None) -> bytes:
        try:
            with open(self._objects / key, "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _not_found(key) from None

    def _head_sync(self, key: str) -> ObjectInfo | None:
        try:
            st = (self._objects / key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key=key, size=st.st_size, retain_until=self._read_retention(key))

    def _scan_sync(self, rel: str) -> builtins.list[tuple[str, bool]]:
        """Sorted (name, is_dir) of one directory, as the list walk must order them."""
        entries: builtins.list[tuple[str, bool]] = []
        try:
            with os.scandir(self._objects / rel) as it:
                for entry in it:
                    if entry.name.startswith(TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((entry.name, True))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append((entry.name, False))
        except (FileNotFoundError, NotADirectoryError):
            return []
        entries.sort(key=lambda e: e[0] + "/" if e[1] else e[0])
        return entries

    def _delete_sync(self, key: str) -> None:
        path = self._objects / key
        if self._head_sync(key) is None:
            raise _not_found(key)
        retain_until = self._read_retention(key)
        if retain_until is not None and retention_in_force(retain_until):
            raise ObjectLockedError(
                f"object {key!r} in {self.name} is retained until {retain_until.isoformat()}"
            )
        path.unlink()
        fsync_dir(path.parent)
        sidecar = self._retention / key
        if sidecar.exists():
            sidecar.unlink()
            fsync_dir(sidecar.parent)

    def _sweep_sync(self, older_than: float) -> int:
        removed = 0
        now = time.time()
        for top in (self._objects, self._retention):
            for dirpath, _dirs, files in os.walk(top):
                for name in files:
                    path = Path(dirpath, name)
                    if name.startswith(TEMP_PREFIX) and _age(path, now) >= older_than:
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    # --- retention sidecars ------------------------------------------------------

    def _read_retention(self, key: str) -> datetime | None:
        try:
            text = (self._retention / key).read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise StoreError(
                f"retention record of {key!r} in {self.name} is damaged: {text[:40]!r}",
                hint="restore retention/<key> from a backup or an ISO 8601 UTC date; "
                "until then the object is treated as locked",
            ) from None

    def _retain_sync(self, key: str, deadline: datetime | None) -> None:
        if not _exists_as_file(self._objects / key):
            raise NotFoundError(f"no object {key!r} in {self.name}")
        if deadline is not None:
            self._extend_retention(key, deadline)

    def _extend_retention(self, key: str, deadline: datetime) -> None:
        """Record ``deadline`` unless a later one is recorded: retention only grows."""
        sidecar = self._retention / key
        with self._retention_locks[hash(key) % len(self._retention_locks)]:
            current = self._read_retention(key)
            if current is not None and current >= deadline:
                return
            _makedirs_durable(sidecar.parent, self.root)
            tmp = _write_temp(sidecar.parent, deadline.isoformat().encode("ascii") + b"\n")
            os.replace(tmp, sidecar)
            fsync_dir(sidecar.parent)


# --- file system helpers ----------------------------------------------------------------


def _write_temp(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a new read-only temp file in ``directory``, fsynced."""
    tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, _READ_ONLY)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _makedirs_durable(directory: Path, root: Path) -> None:
    """Create ``directory`` and missing parents, fsyncing each new entry's parent."""
    missing: builtins.list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        if directory == root or directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        fsync_dir(path.parent)


def _exists_as_file(path: Path) -> bool:
    """True for a regular file; raises for a directory, which no key may be."""
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EISDIR, "not a regular file", str(path))
    return True


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(
        f"no object {key!r} in the local store",
        hint="check the key; list the store to see what it holds",
    )


def _store_error(exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free space, then retry (nothing was half-written)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the hub's user cannot write the store directory: check owner and mount"
    elif exc.errno in (errno.ENOTDIR, errno.EISDIR):
        hint = "a key collides with another key's directory (e.g. 'a' and 'a/b')"
    else:
        hint = "check the store directory and its disk, then retry"
    return StoreError(f"local store: {exc.strerror or exc} ({exc.filename})", hint=hint)
