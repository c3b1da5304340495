"""Restores stay inside their target and scans read what they listed (issue #14).

Each test plays an attacker: the holder of the vault key who signs a crafted manifest
(a source named ``../../etc``, ``../`` and NUL paths, setuid modes, a symlink at a
source's root), and a local user who swaps a listed file for a symlink to a secret
between the scan's listing and its read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import pytest

from amber.agent.config import load_config
from amber.agent.identity import NodeIdentity
from amber.agent.restore.restorer import Restorer
from amber.agent.sources import files as source_files
from amber.agent.sources import jsonl as source_jsonl
from amber.protocol.chunk import encode_chunk
from amber.protocol.errors import AmberError, IntegrityError
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import (
    Checkpoint,
    Entry,
    Manifest,
    encode_checkpoint,
    encode_manifest,
    record_id,
)
from tests.support.data import rand, write
from tests.support.node import Node

KEYS = VaultKeys.from_master(bytes(range(32)))
SIGNER = SigningKey(bytes(range(32, 64)))  # the attacker holds the vault key and signs
IDENT = NodeIdentity("v", "n1", KEYS, SIGNER)


class Crafted:
    """Records and chunks a crafted hub or bundle serves, built with the vault key."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}
        self.blobs: dict[bytes, bytes] = {}

    async def record(self, rid: bytes) -> bytes | None:
        return self.records.get(rid)

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        return {i: self.blobs[i] for i in ids if i in self.blobs}

    def file(self, path: str, data: bytes, mode: int = 0o644) -> Entry:
        cid, blob = encode_chunk(KEYS, data)
        self.blobs[cid] = blob
        refs = ((cid, len(data)),) if data else ()
        return Entry(path, "f", mode, len(data), 10**18, blake3.blake3(data).digest(), refs)

    def checkpoint(self, entries: Sequence[Entry], source: str = "src", **meta: Any) -> bytes:
        meta = {"root_is_dir": True, **meta}
        m = Manifest("v", "n1", source, "files", "warm", 1, tuple(entries), meta)
        mdata = encode_manifest(m, KEYS, SIGNER)
        self.records[record_id(mdata)] = mdata
        cp = Checkpoint("v", "n1", 0, None, 1, {source: record_id(mdata)})
        data = encode_checkpoint(cp, KEYS, SIGNER)
        self.records[record_id(data)] = data
        return record_id(data)


def restore(store: Crafted, cp_id: bytes, dest: Path) -> None:
    async def go() -> None:
        with ThreadPoolExecutor(2) as pool:
            await Restorer(IDENT, store, store, pool).restore_to(cp_id, dest)  # type: ignore[arg-type]

    asyncio.run(go())


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- restore: the holder of the vault key crafts a manifest ---------------------------


@pytest.mark.parametrize("name", ["../../escape", "..", "a/b", ""])
def test_a_source_named_to_escape_the_target_is_refused(tmp_path: Path, name: str) -> None:
    store = Crafted()
    cp = store.checkpoint([store.file("planted", b"owned")], source=name)
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(AmberError, match="source name"):
        restore(store, cp, dest)
    assert everything_under(tmp_path) == []


@pytest.mark.parametrize("path", ["../x", "/tmp/x", "a/../../x", "a/\0b", ".", "a//b", "a/"])
def test_entry_paths_that_leave_the_root_are_refused(tmp_path: Path, path: str) -> None:
    store = Crafted()
    cp = store.checkpoint([store.file(path, b"owned")])
    # a NUL is refused by every string field's check, the rest by the path check
    with pytest.raises(AmberError, match=r"escapes its source root|NUL"):
        restore(store, cp, tmp_path / "out")
    assert everything_under(tmp_path) in ([], ["out"])


def test_setuid_setgid_and_sticky_bits_never_come_back(tmp_path: Path) -> None:
    store = Crafted()
    entries = [
        Entry("bin", "d", 0o3775, mtime_ns=10**18),
        store.file("bin/shell", b"#!/bin/sh\n", mode=0o4755),
        store.file("bin/group", b"g", mode=0o2750),
    ]
    cp = store.checkpoint(entries, root_mode=0o1777)
    restore(store, cp, tmp_path / "out")
    root = tmp_path / "out" / "src"
    modes = {p: (root / p).stat().st_mode & 0o7777 for p in ("", "bin", "bin/shell", "bin/group")}
    assert modes == {"": 0o777, "bin": 0o775, "bin/shell": 0o755, "bin/group": 0o750}


def test_a_symlink_at_a_sources_root_is_refused_at_restore(tmp_path: Path) -> None:
    """A files source whose root is a file holds that file; a crafted one holding a
    symlink would, swapped in place, point the source (and the app's writes) anywhere."""
    store = Crafted()
    link = Entry("memory.db", "l", 0o777, target=str(tmp_path / "elsewhere"))
    cp = store.checkpoint([link], root_is_dir=False, root_name="memory.db")
    with pytest.raises(IntegrityError, match="symlink"):
        restore(store, cp, tmp_path / "out")
    assert not (tmp_path / "out" / "src").exists()


def test_a_path_named_twice_is_refused_not_overwritten(tmp_path: Path) -> None:
    store = Crafted()
    cp = store.checkpoint([store.file("a", b"first"), store.file("a", b"second")])
    with pytest.raises(IntegrityError, match="twice"):
        restore(store, cp, tmp_path / "out")
    assert everything_under(tmp_path) == ["out"]


# --- checkpoint: a symlink at a source's root, a file swapped during a scan ----------


def test_a_symlink_at_a_sources_root_is_refused_at_checkpoint(
    node: Node, data: Path, tmp_path: Path
) -> None:
    """``source add`` records the resolved path; agent.toml edited by hand (or a
    directory replaced by a symlink later) may still name one."""
    secret = write(tmp_path / "secrets" / "shadow", "root:hash")
    node.add("tree", "files", secret.parent)
    (data / "tree").symlink_to(secret.parent)
    cfg = load_config(node.config)
    node.configure(sources=(dataclasses.replace(cfg.sources[0], path=data / "tree"),))
    res = node.run("checkpoint", "--source", "tree")
    assert res.code == 30 and "is a symlink" in res.err and "hint: " in res.err, res
    assert node.checkpoints() == []


def _swap_after_listing(
    monkeypatch: pytest.MonkeyPatch, module: Any, victim: Path, secret: Path
) -> None:
    """Replace ``victim`` by a symlink to ``secret`` right after the scan listed it."""
    real_walk = module.walk

    def walk(root: Path, exclude: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
        listed = real_walk(root, exclude)
        victim.unlink()
        victim.symlink_to(secret)
        return listed

    monkeypatch.setattr(module, "walk", walk)


@pytest.mark.parametrize("kind", ["files", "jsonl"])
def test_a_file_swapped_for_a_symlink_after_listing_is_not_read(
    node: Node,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    secret = write(tmp_path / "etc" / "shadow", "root:$6$secret-hash\n" * 50)
    write(data / "logs" / "a.jsonl", '{"step": 1}\n')
    victim = write(data / "logs" / "b.jsonl", '{"step": 2}\n' * 20)
    node.add("logs", kind, data / "logs")
    first = node.checkpoint()
    write(victim, '{"step": 3}\n' * 30)  # changed: the next scan must read it again
    module = source_files if kind == "files" else source_jsonl
    _swap_after_listing(monkeypatch, module, victim, secret)
    second = node.checkpoint()
    assert "changed between listing and reading" in caplog.text
    for cp, step in ((first, 2), (second, 2)):  # the previous version is kept
        out = tmp_path / f"out-{cp['id'][:8]}"
        node.restore_to(cp["id"], out)
        restored = [p.read_bytes() for p in (out / "logs").rglob("*") if p.is_file()]
        assert restored and not any(b"secret-hash" in b for b in restored)
        assert (out / "logs" / "b.jsonl").read_text() == f'{{"step": {step}}}\n' * 20


def test_a_new_file_swapped_after_listing_is_skipped(
    node: Node, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = write(tmp_path / "etc" / "shadow", "root:$6$secret-hash\n")
    victim = write(data / "tree" / "fresh.txt", rand(5000, 1))
    write(data / "tree" / "kept.txt", b"kept")
    node.add("tree", "files", data / "tree")
    _swap_after_listing(monkeypatch, source_files, victim, secret)
    cp = node.checkpoint()
    node.restore_to(cp["id"], tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out" / "tree")) == ["kept.txt"]


# --- a failed fsync surfaces and commits nothing ---------------------------------------


def test_a_failed_fsync_fails_the_checkpoint_and_commits_nothing(
    node: Node, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(data / "tree" / "model.bin", rand(300_000, 2))
    node.add("tree", "files", data / "tree")
    before = node.snapshot()

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    res = node.run("checkpoint")
    monkeypatch.undo()
    assert res.code != 0 and "Input/output error" in res.err and "Traceback" not in res.err
    assert node.snapshot()[0] == before[0] == []  # no checkpoint committed
    assert node.checkpoint()["seq"] == 0  # the next one, on a healthy disk, is the first


def test_a_name_that_is_not_utf8_is_skipped_not_a_traceback(node: Node, data: Path) -> None:
    """A file system allows any bytes in a name; records carry UTF-8. One such file (or
    a symlink pointing at one) is skipped with a warning naming it, and the rest of the
    source is backed up: it neither stops the checkpoint nor ends in a traceback."""
    tree = data / "odd"
    write(tree / "good.txt", "kept")
    with open(os.path.join(bytes(tree), b"bad\xff.txt"), "wb") as fh:
        fh.write(b"skipped")
    os.symlink(os.path.join(bytes(tree), b"bad\xff.txt"), os.path.join(bytes(tree), b"link"))
    node.add("odd", "files", tree)
    res = node.run("checkpoint")
    assert res.code == 0 and "Traceback" not in res.err, res
    assert "not valid UTF-8" in res.err, res
    dest = data.parent / "restored"
    node.ok("restore", "latest", "--to", dest)
    assert sorted(p.name for p in (dest / "odd").iterdir()) == ["good.txt"]
