"""Bad input: each failure has its stable exit code, a message naming the problem,
and leaves the journal exactly as it was."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.agent.journal import PACK_DIR
from amber.agent.packs import ENTRY
from amber.agent.sources import jsonl as source_jsonl
from amber.agent.sources import registry as sources
from tests.support.data import listing, make_files_tree, make_sqlite, rand, sqlite_rows, tree, write
from tests.support.node import Node, cli
from tests.support.procs import permissions_bind, run_no_dac


@pytest.fixture
def saved(node: Node, data: Path) -> Node:
    """A node with a files source and one checkpoint already in its journal."""
    make_files_tree(data / "tree")
    node.add("prompts", "files", data / "tree")
    node.checkpoint("--label", "model=v1")
    return node


def refused(node: Node, code: int, *args: object, says: tuple[str, ...] = ()) -> str:
    """Run a command that must fail with ``code`` and change nothing in the journal."""
    before = node.snapshot()
    res = node.run(*args)
    assert res.code == code, res
    assert res.err.startswith("error: ") and "\nhint: " in res.err, res.err
    assert "Traceback" not in res.err
    for text in says:
        assert text in res.err, (text, res.err)
    assert node.snapshot() == before, "the journal changed"
    return res.err


def test_missing_source_path(saved: Node, data: Path) -> None:
    write(data / "fresh" / "new-model.bin", rand(600_000, 5))  # would add chunks first
    saved.add("fresh", "model", data / "fresh")
    saved.add("gone", "files", data / "gone")
    refused(saved, 30, "checkpoint", says=("'gone'", str(data / "gone"), "does not exist"))
    refused(saved, 30, "checkpoint", "--source", "gone")
    # the other sources still checkpoint on their own
    assert saved.checkpoint("--source", "fresh")["changed"] == ["fresh"]


@pytest.mark.parametrize("kind", ["jsonl", "files"])
def test_read_error_midway_is_a_source_error(
    saved: Node, data: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """An I/O error while a file is being read (a failing disk, a stale network mount)
    names the file, and the checkpoint leaves the journal as it was."""
    log = write(data / "logs" / "agent.jsonl", '{"step": 1}\n' * 5000)
    saved.add("logs", kind, data / "logs")

    def failing(fh: object, cdc: object) -> Iterator[bytes]:
        yield b"x" * 1000
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sources, "cdc_pieces", failing)
    refused(saved, 30, "checkpoint", says=("'logs'", f"reading {log}", "Input/output error"))


def test_read_error_checking_a_logs_saved_prefix_is_a_source_error(
    saved: Node, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write(data / "logs" / "agent.jsonl", '{"step": 1}\n' * 500)
    saved.add("logs", "jsonl", data / "logs")
    saved.checkpoint()
    with open(log, "a") as fh:
        fh.write('{"step": 2}\n')

    def failing(fh: object, size: int) -> tuple[bytes, bytes]:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(source_jsonl, "_window_hashes", failing)
    refused(saved, 30, "checkpoint", says=("'logs'", f"reading {log}", "Input/output error"))


def test_unreadable_file_even_for_root(saved: Node, data: Path, tmp_path: Path) -> None:
    if not permissions_bind(tmp_path):
        pytest.skip("cannot make a file unreadable here: root keeps CAP_DAC_OVERRIDE")
    tree_root = data / "tree"
    secret = write(tree_root / "prompts" / "locked.txt", "no peeking")
    secret.chmod(0)
    before = saved.snapshot()

    def attempt(*args: object) -> str:
        res = run_no_dac("-m", "amber.agent.cli", "--config", saved.config, "checkpoint", *args)
        assert res.code == 30, res
        assert "Traceback" not in res.err and "hint:" in res.err
        assert saved.snapshot() == before
        return res.err

    err = attempt()
    assert str(secret) in err and "ermission denied" in err
    # an unreadable directory inside the tree
    secret.chmod(0o600)
    (tree_root / "policies").chmod(0)
    try:
        err = attempt()
        assert str(tree_root / "policies") in err
        # and an unreadable source root
        (tree_root / "policies").chmod(0o755)
        tree_root.chmod(0)
        err = attempt("--source", "prompts")
        assert str(tree_root) in err and "not readable" in err
    finally:
        tree_root.chmod(0o755)
        (tree_root / "policies").chmod(0o755)


def test_fifo_in_a_tree_is_skipped_not_read(saved: Node, data: Path, tmp_path: Path) -> None:
    os.mkfifo(data / "tree" / "pipe")
    cp = saved.checkpoint()  # reading a FIFO with no writer would block forever
    assert cp["changed"] == []
    saved.restore_to("latest", tmp_path / "r")
    assert not (tmp_path / "r" / "prompts" / "pipe").exists()


def test_sqlite_locked_longer_than_busy_timeout(saved: Node, data: Path) -> None:
    db = make_sqlite(data / "memory.db", mode="delete")
    saved.add("memory", "sqlite", db)
    saved.configure(busy_timeout=1.0)
    saved.checkpoint("--source", "memory")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM msgs WHERE id > 100")
    con.commit()
    con.close()
    hold = (
        "import sqlite3, sys, time\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE')\n"
        "con.execute(\"INSERT INTO msgs(role, body) VALUES('user', 'x')\")\n"
        "print('locked', flush=True)\n"
        "time.sleep(30)\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", hold, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        start = time.monotonic()
        err = refused(saved, 31, "checkpoint", says=(str(db), "locked", "busy_timeout"))
        took = time.monotonic() - start
        assert 1.0 <= took < 10, took
        assert "1s" in err
        # an in-place restore cannot take its safety checkpoint: it touches nothing
        refused(saved, 31, "restore", "latest", "--in-place", "--source", "memory")
    finally:
        locker.kill()
        locker.wait()
    assert sqlite_rows(db) == 100
    # once the writer is gone the same checkpoint works
    assert "memory" in saved.checkpoint()["changed"]


def test_wrong_vault_key(saved: Node, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    res = cli("keygen", "--out", other)
    assert res.code == 0
    other_fp = res.out.split("fingerprint ")[1].split(")")[0]
    before = saved.snapshot()
    os.replace(other, saved.state / "vault.key")
    for args in (("checkpoints",), ("checkpoint",), ("restore", "latest", "--to", tmp_path / "r")):
        r = saved.run(*args)
        assert r.code == 21, r
        assert saved.fingerprint in r.err and other_fp in r.err
    assert not (tmp_path / "r").exists()
    assert saved.snapshot() == before


def test_corrupted_journal_header(saved: Node, tmp_path: Path) -> None:
    journal = saved.journal
    with open(journal, "r+b") as fh:
        fh.write(b"NOT A JOURNAL...")
    damaged = journal.read_bytes()
    for args in (("checkpoints",), ("checkpoint",), ("status",), ("verify",)):
        r = saved.run(*args)
        assert r.code == 40, r
        assert str(journal) in r.err and "corrupted" in r.err and "hint:" in r.err
    assert journal.read_bytes() == damaged, "a failed command wrote to the damaged journal"


def corrupt_a_chunk(node: Node) -> None:
    """Flip one bit in the middle of the largest chunk's blob, in its pack file."""
    con = sqlite3.connect(node.journal)
    try:
        pack, off, stored = con.execute(
            "SELECT pack, off, stored FROM chunks ORDER BY stored DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    path = node.journal.parent / PACK_DIR / f"{pack:08d}.pack"
    with open(path, "r+b") as fh:
        fh.seek(off + ENTRY.size + stored // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte ^ 0x01]))


def test_corrupted_chunk_fails_verify_and_restore(saved: Node, data: Path, tmp_path: Path) -> None:
    corrupt_a_chunk(saved)
    refused(saved, 12, "verify", says=("chunk",))
    dest = tmp_path / "restore"
    refused(saved, 12, "restore", "latest", "--to", dest)
    assert listing(dest) == [], "a failed restore left content behind"
    # a retry into the same directory is not refused as "not empty"
    refused(saved, 12, "restore", "latest", "--to", dest)

    # in place: the live sources are left untouched
    live = tree(data / "tree")
    write(data / "tree" / "prompts" / "system.txt", "edited after the checkpoint\n")
    edited = tree(data / "tree")
    assert edited != live
    r = saved.run("restore", "seq:0", "--in-place")
    assert r.code == 12, r
    assert tree(data / "tree") == edited
    assert not [n for n in os.listdir(data) if n.startswith(".amber")]


def test_unknown_journal_version(saved: Node) -> None:
    con = sqlite3.connect(saved.journal)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    con.commit()
    con.close()
    refused(saved, 11, "checkpoints", says=("version 99",))
    refused(saved, 11, "checkpoint", says=("version 99",))


def test_restore_into_non_empty_directory(saved: Node, tmp_path: Path) -> None:
    dest = write(tmp_path / "busy" / "keep.txt", "mine").parent
    refused(saved, 70, "restore", "latest", "--to", dest, says=(str(dest), "not empty"))
    assert listing(dest) == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"
    refused(saved, 70, "restore", "latest", "--to", dest / "keep.txt", says=("not a directory",))
    assert (dest / "keep.txt").read_text() == "mine"


def test_unknown_checkpoint_id(saved: Node, tmp_path: Path) -> None:
    refused(saved, 44, "restore", "deadbeef", "--to", tmp_path / "r", says=("'deadbeef'",))
    refused(saved, 44, "verify", "seq:7", says=("'seq:7'",))
    refused(saved, 44, "restore", "latest", "--to", tmp_path / "r", "--source", "nope")
    assert not (tmp_path / "r").exists() or listing(tmp_path / "r") == []


def test_bad_label_syntax(saved: Node, data: Path) -> None:
    write(data / "tree" / "new.txt", "would be checkpointed")
    refused(
        saved, 2, "checkpoint", "--label", "novalue", says=("'novalue'", "KEY=VALUE", "--label")
    )
    refused(saved, 2, "checkpoint", "--label", "ok=1", "--label", "=v")
    r = saved.run("source", "add", "x", "--kind", "files", "--path", data, "--lineage", "bad")
    assert r.code == 2 and "'bad'" in r.err


def test_journal_size_bound(saved: Node, data: Path) -> None:
    held = saved.status()["journal_bytes"]
    saved.configure(journal_max_bytes=held + 100_000)
    write(data / "tree" / "big.bin", rand(400_000, 8))
    refused(saved, 41, "checkpoint", says=("bound",))
    saved.configure(journal_max_bytes=held + 10_000_000)
    assert saved.checkpoint()["changed"] == ["prompts"]
