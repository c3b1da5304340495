"""A failed fsync is never retried into a false success (amber.fsutil.fsync_dir and the
journal's packs; the hub's local store). The failure is injected into ``os.fsync`` /
``fsync_dir`` for one call, as a dying disk would report it."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

import amber.hub.store.local as local_store
from amber import fsutil
from amber.agent.packs import PackStore
from amber.hub.store.local import LocalStore
from amber.protocol.errors import JournalError, StoreError


def _eio(*_: Any) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_fsync_dir_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsutil.fsync_dir(tmp_path)
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(OSError):
        fsutil.fsync_dir(tmp_path)


def test_a_failed_pack_sync_fails_every_later_sync_until_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packs = PackStore(tmp_path / "packs")
    (tmp_path / "packs").mkdir()
    packs.append([(b"\x01" * 32, b"blob one")])
    real = os.fsync
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(JournalError):
        packs.sync()
    monkeypatch.setattr(os, "fsync", real)  # the disk "recovers": a retry could succeed
    with pytest.raises(JournalError):
        packs.sync()
    packs.append([(b"\x02" * 32, b"blob two")])
    with pytest.raises(JournalError):
        packs.sync()
    packs.close()  # the journal discards what was appended since, then appends anew
    packs.append([(b"\x03" * 32, b"blob three")])
    packs.sync()
    packs.close()


def test_a_put_whose_directory_fsync_failed_is_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    calls: list[Path] = []

    def failing_once(path: Path) -> None:
        calls.append(Path(path))
        if len(calls) == 1:
            _eio()
        fsutil.fsync_dir(path)

    async def run() -> None:
        monkeypatch.setattr(local_store, "fsync_dir", failing_once)
        with pytest.raises(StoreError):
            await store.put("chunks/ab/cd", b"data")
        assert await store.put("chunks/ab/cd", b"data") is True  # not "already there"
        assert await store.get("chunks/ab/cd") == b"data"

    asyncio.run(run())
