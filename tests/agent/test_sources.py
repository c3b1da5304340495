"""Source kinds: what each one reads, what it skips, and that what it saved restores."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from tests.support.data import (
    SqliteWriter,
    age_tree,
    integrity,
    make_files_tree,
    make_sqlite,
    rand,
    sqlite_rows,
    tree,
    write,
)
from tests.support.node import Node
from tests.support.procs import run_measured

MiB = 1024 * 1024

# --- sqlite ---------------------------------------------------------------------------


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_copy_is_consistent_while_another_process_writes(
    node: Node, data: Path, tmp_path: Path, journal_mode: str
) -> None:
    db = make_sqlite(data / "memory.db", rows=2000, body=1000, mode=journal_mode)
    node.add("memory", "sqlite", db, "--tier", "hot")
    writer = SqliteWriter(db, journal_mode)
    try:
        cps = []
        for _ in range(2):
            writer.wait_commits(3)
            committed_before = writer.counts()[-1]
            cps.append((node.checkpoint(), committed_before))
        writer.wait_commits(2)
    finally:
        committed = writer.stop()
    assert len(committed) > 8

    seen = []
    for i, (cp, committed_before) in enumerate(cps):
        out = tmp_path / f"restored-{i}"
        node.restore_to(cp["id"], out)
        copy = out / "memory" / "memory.db"
        assert integrity(copy) == "ok"
        n = sqlite_rows(copy)
        # a state some commit produced, at least as new as the last one before the checkpoint
        assert n in committed, (n, committed)
        assert n >= committed_before
        # the tally is updated in the same transactions: a torn copy would disagree
        assert sqlite_rows(copy, "SELECT n FROM tally") == n
        seen.append(n)
    assert seen[0] < seen[1]
    assert not list((node.state / "tmp").glob("*")), "the temporary copy was left behind"


def test_sqlite_changed_pages_map_to_few_new_blocks(node: Node, data: Path, tmp_path: Path) -> None:
    db = make_sqlite(data / "memory.db", rows=6000, body=2000)
    size = db.stat().st_size
    assert size > 10 * MiB
    node.add("memory", "sqlite", db)
    first = node.checkpoint()
    assert first["new_bytes"] > size // 2  # random bodies barely compress

    con = sqlite3.connect(db)
    con.executemany("INSERT INTO msgs(role, body) VALUES('user', ?)", [(b"hello" * 20,)] * 5)
    con.execute("UPDATE msgs SET role = 'tool' WHERE id = 3000")
    con.commit()
    con.close()
    second = node.checkpoint()
    assert second["changed"] == ["memory"]
    assert second["new_bytes"] < size // 25, second  # a few 64 KiB blocks, not the file
    assert second["dedup_chunks"] > 150

    node.restore_to(second["id"], tmp_path / "r")
    copy = tmp_path / "r" / "memory" / "memory.db"
    assert integrity(copy) == "ok"
    assert sqlite_rows(copy) == 6005
    assert sqlite_rows(copy, "SELECT role FROM msgs WHERE id = 3000") == "tool"

    # nothing written since: the database is not even copied again
    third = node.checkpoint()
    assert third["changed"] == [] and third["read_bytes"] == 0


# --- files and model -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["files", "model"])
def test_unchanged_files_are_not_reread(node: Node, data: Path, tmp_path: Path, kind: str) -> None:
    root = make_files_tree(data / "tree")
    write(root / "weights" / "layer0.bin", rand(400_000, 7))
    age_tree(root)
    node.add("src", kind, root)
    first = node.checkpoint()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    assert first["read_bytes"] == total

    second = node.checkpoint()
    assert second["read_bytes"] == 0
    assert second["changed"] == [] and second["new_chunks"] == 0

    # a changed file (old mtime, so only the stat key gives it away) is re-read alone
    changed = root / "prompts" / "system.txt"
    write(changed, "You are a terse assistant.\n")
    age_tree(changed)
    third = node.checkpoint()
    assert third["read_bytes"] == changed.stat().st_size
    assert third["changed"] == ["src"]

    node.restore_to(third["id"], tmp_path / "r3")
    assert tree(tmp_path / "r3" / "src") == tree(root)


def test_same_size_and_mtime_but_new_ctime_or_inode_is_detected(
    node: Node, data: Path, tmp_path: Path
) -> None:
    root = data / "tree"
    target = write(root / "policy.yaml", "allow: [search, fetch]\n" * 100)
    write(root / "other.txt", "unrelated\n")
    age_tree(root)
    node.add("policies", "files", root)
    node.checkpoint()
    st = target.stat()

    # same size, same mtime (put back with utime), same inode: only ctime moved
    with open(target, "r+b") as fh:
        fh.write(b"deny ")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    a = node.checkpoint()
    assert a["read_bytes"] == st.st_size and a["changed"] == ["policies"]
    node.restore_to(a["id"], tmp_path / "a")
    assert (tmp_path / "a" / "policies" / "policy.yaml").read_bytes() == target.read_bytes()

    # same size and mtime, new inode (an editor's write-and-rename)
    tmp = write(root / ".policy.yaml.swp", target.read_bytes().replace(b"deny", b"DENY"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, target)
    assert target.stat().st_ino != st.st_ino
    b = node.checkpoint()
    assert b["read_bytes"] == st.st_size
    node.restore_to(b["id"], tmp_path / "b")
    assert (tmp_path / "b" / "policies" / "policy.yaml").read_bytes().startswith(b"DENY")


def test_recently_modified_file_is_reread_when_unsure(node: Node, data: Path) -> None:
    """A file written in the same instant as the scan could change unseen: re-hash it."""
    root = data / "tree"
    fresh = write(root / "scratch.txt", "draft 1\n")
    node.add("notes", "files", root)
    node.checkpoint()
    second = node.checkpoint()  # mtime is within the racy window of the last scan
    assert second["read_bytes"] == fresh.stat().st_size
    assert second["new_chunks"] == 0  # re-hashed, deduplicated


@pytest.mark.servers  # an agent process, its peak RSS measured
def test_large_model_streams_in_bounded_memory(node: Node, data: Path) -> None:
    size = 300 * MiB
    model = data / "model.safetensors"
    with open(model, "wb") as fh:
        for _ in range(size // (4 * MiB)):
            fh.write(os.urandom(4 * MiB))
    node.add("weights", "model", model, "--tier", "cold")
    res, peak_mib = run_measured(
        ["-m", "amber.agent.cli", "--config", node.config, "checkpoint", "--json"], data
    )
    assert res.code == 0, res
    assert res.json()["read_bytes"] == size
    assert res.json()["new_bytes"] >= size
    model.unlink()  # 600 MiB between the file and the journal: do not keep them around
    node.journal.unlink()
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB while checkpointing a 300 MiB model"


# --- jsonl -------------------------------------------------------------------------------


def log_lines(n: int, seed: int) -> bytes:
    r = random.Random(seed)
    return b"".join(
        json.dumps(
            {"turn": i, "role": r.choice(["user", "assistant"]), "text": r.randbytes(60).hex()}
        ).encode()
        + b"\n"
        for i in range(n)
    )


def test_jsonl_append_reads_only_the_tail(node: Node, data: Path, tmp_path: Path) -> None:
    log = write(data / "logs" / "conversation.jsonl", log_lines(4000, 1))
    write(data / "logs" / "README.txt", "not a log")  # ignored in a log directory
    node.add("logs", "jsonl", data / "logs")
    first = node.checkpoint()
    v1 = log.read_bytes()
    assert first["read_bytes"] == len(v1)
    assert node.source_status("logs")["drift"] == "unchanged"  # README.txt is not a log

    tail = log_lines(300, 2)
    with open(log, "ab") as fh:
        fh.write(tail)
    assert node.source_status("logs")["drift"] == "changed"
    second = node.checkpoint()
    assert second["read_bytes"] == len(tail)
    v2 = log.read_bytes()

    node.restore_to(first["id"], tmp_path / "r1")
    node.restore_to(second["id"], tmp_path / "r2")
    assert (tmp_path / "r1" / "logs" / "conversation.jsonl").read_bytes() == v1
    assert (tmp_path / "r2" / "logs" / "conversation.jsonl").read_bytes() == v2
    assert not (tmp_path / "r2" / "logs" / "README.txt").exists()

    # unchanged: nothing read
    assert node.checkpoint()["read_bytes"] == 0


@pytest.mark.parametrize("rewrite", ["same-size", "shorter", "rotated"])
def test_jsonl_rewrite_falls_back_to_full_chunking(
    node: Node, data: Path, tmp_path: Path, rewrite: str
) -> None:
    log = write(data / "agent.jsonl", log_lines(3000, 1))
    node.add("log", "jsonl", log)
    node.checkpoint()
    old = log.read_bytes()
    if rewrite == "same-size":
        new = log_lines(3000, 9)[: len(old)].ljust(len(old), b"\n")
        with open(log, "r+b") as fh:  # same inode, same size, other content
            fh.write(new)
    elif rewrite == "shorter":
        new = log_lines(1000, 5)
        with open(log, "r+b") as fh:
            fh.write(new)
            fh.truncate()
    else:  # rotated: a new file under the old name, starting with the same lines
        new = old[: len(old) // 2] + log_lines(2000, 4)
        write(data / "agent.jsonl.tmp", new)
        os.replace(data / "agent.jsonl.tmp", log)
    assert log.read_bytes() == new and new != old
    cp = node.checkpoint()
    assert cp["read_bytes"] == len(new)
    node.restore_to(cp["id"], tmp_path / "r")
    assert (tmp_path / "r" / "log" / "agent.jsonl").read_bytes() == new

    # and appending after the fallback is incremental again
    with open(log, "ab") as fh:
        fh.write(b'{"turn": "late"}\n')
    assert node.checkpoint()["read_bytes"] == len(b'{"turn": "late"}\n')


# --- trees --------------------------------------------------------------------------------


def test_symlinks_empty_dirs_and_excludes(node: Node, data: Path, tmp_path: Path) -> None:
    root = make_files_tree(data / "tree")
    write(root / "cache" / "huge.bin", rand(2 * MiB, 3))
    write(root / "prompts" / "draft.tmp", "scratch")
    write(root / "prompts" / "keep.txt", "keep")
    node.add("prompts", "files", root, "--exclude", "cache", "--exclude", "*.tmp")
    cp = node.checkpoint()
    assert cp["read_bytes"] < MiB  # the excluded cache was never read

    node.restore_to(cp["id"], tmp_path / "r")
    got = tree(tmp_path / "r" / "prompts")
    want = {
        k: v for k, v in tree(root).items() if not (k.startswith("cache") or k.endswith(".tmp"))
    }
    assert got == want
    assert got["current-prompt"] == ("l", "prompts/system.txt")
    assert got["dangling"] == ("l", "does-not-exist")
    assert got["empty-dir/deeper"][0] == "d" and got["empty-file"][2] == 0
    assert got["blob.bin"][1] == 0o600 and got["policies/allow.json"][1] == 0o640
