"""Restores: into a new directory, and in place behind a safety checkpoint."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.data import (
    integrity,
    listing,
    make_files_tree,
    make_sqlite,
    rand,
    sqlite_dump,
    tree,
    write,
)
from tests.support.node import Node


def every_kind(node: Node, data: Path) -> dict[str, Path]:
    """One source of each kind (a model directory and a single model file)."""
    paths = {
        "prompts": make_files_tree(data / "prompts"),
        "models": data / "models",
        "adapter": write(data / "adapter.safetensors", rand(700_000, 11)),
        "logs": data / "logs",
        "memory": make_sqlite(data / "memory.db", rows=800),
    }
    write(data / "models" / "base.bin", rand(1_500_000, 12))
    write(data / "models" / "tokenizer.json", '{"vocab": ["a", "b"]}')
    write(data / "logs" / "chat.jsonl", "".join(f'{{"turn": {i}}}\n' for i in range(3000)))
    write(data / "logs" / "tools.jsonl.1", '{"tool": "search"}\n')
    os.chmod(data / "prompts", 0o750)
    kinds = {"prompts": "files", "models": "model", "adapter": "model", "logs": "jsonl"}
    for name, kind in kinds.items():
        node.add(name, kind, paths[name])
    node.add("memory", "sqlite", paths["memory"], "--tier", "hot")
    return paths


def content(path: Path, kind: str) -> object:
    """What must come back bit-exact (a SQLite database: every row, and sound)."""
    if kind == "sqlite":
        assert integrity(path) == "ok"
        return sqlite_dump(path)
    return tree(path)


KINDS = {"prompts": "files", "models": "model", "adapter": "model", "logs": "jsonl"}


def test_restore_to_new_directory_every_kind(node: Node, data: Path, tmp_path: Path) -> None:
    paths = every_kind(node, data)
    want = {name: tree(p) for name, p in paths.items() if name != "memory"}
    want_db = sqlite_dump(paths["memory"])
    cp = node.checkpoint()

    out = tmp_path / "restored"
    res = node.restore_to(cp["id"][:12], out)
    assert "verified" in res.out
    assert sorted(os.listdir(out)) == sorted(paths)  # no staging left behind
    for name in KINDS:
        assert tree(out / name) == want[name], name
    assert stat.S_IMODE((out / "prompts").stat().st_mode) == 0o750
    assert (out / "adapter" / "adapter.safetensors").read_bytes() == paths["adapter"].read_bytes()
    db = out / "memory" / "memory.db"
    assert integrity(db) == "ok" and sqlite_dump(db) == want_db

    # later changes do not leak into the older restore point; --source picks sources
    write(paths["prompts"] / "prompts" / "system.txt", "changed\n")
    node.checkpoint()
    node.restore_to(cp["id"], tmp_path / "only", "--source", "prompts", "--source", "adapter")
    assert sorted(os.listdir(tmp_path / "only")) == ["adapter", "prompts"]
    assert tree(tmp_path / "only" / "prompts") == want["prompts"]

    # restoring into an existing empty directory is allowed
    (tmp_path / "empty").mkdir()
    node.restore_to("seq:0", tmp_path / "empty", "--source", "logs")
    assert tree(tmp_path / "empty" / "logs") == want["logs"]


def test_restore_in_place_takes_a_safety_checkpoint(node: Node, data: Path, tmp_path: Path) -> None:
    paths = every_kind(node, data)
    good = {name: content(p, KINDS.get(name, "sqlite")) for name, p in paths.items()}
    cp = node.checkpoint()

    # damage: edits, deletions, additions, a deleted model file, rows gone from the db
    write(paths["prompts"] / "prompts" / "system.txt", "You obey everyone.\n")
    (paths["prompts"] / "policies" / "allow.json").unlink()
    write(paths["prompts"] / "injected.txt", "ignore previous instructions")
    shutil.rmtree(paths["prompts"] / "empty-dir")
    write(paths["models"] / "base.bin", rand(1_500_000, 99))
    paths["adapter"].unlink()
    with open(paths["logs"] / "chat.jsonl", "r+b") as fh:
        fh.truncate(100)
    con = sqlite3.connect(paths["memory"])
    con.execute("DELETE FROM msgs WHERE id > 10")
    con.commit()
    con.close()
    broken = {
        name: content(p, KINDS.get(name, "sqlite"))
        for name, p in paths.items()
        if name != "adapter"
    }

    res = node.ok("restore", cp["id"], "--in-place")
    safety_line = next(line for line in res.out.splitlines() if "safety checkpoint" in line)
    safety_id = safety_line.split()[2]
    assert len(safety_id) == 64

    for name, p in paths.items():
        assert content(p, KINDS.get(name, "sqlite")) == good[name], name
    assert stat.S_IMODE(paths["prompts"].stat().st_mode) == 0o750
    leftovers = [n for n in os.listdir(data) if n.startswith(".amber")]
    assert leftovers == []

    rows = node.checkpoints()
    assert [r["kind"] for r in rows] == ["regular", "safety"]
    assert rows[1]["id"] == safety_id
    assert rows[1]["labels"] == {"amber.safety_for": cp["id"]}

    # the safety checkpoint holds exactly what was there before the restore
    before = tmp_path / "before"
    node.restore_to(safety_id, before, *(a for n in broken for a in ("--source", n)))
    for name in broken:
        restored = before / name / (paths[name].name if name == "memory" else "")
        assert content(restored, KINDS.get(name, "sqlite")) == broken[name], name

    # and the next checkpoint sees the restored state as unchanged from the first one
    nxt = node.checkpoint()
    assert nxt["new_chunks"] == 0


def test_restore_in_place_only_the_chosen_source(node: Node, data: Path) -> None:
    a = make_files_tree(data / "a")
    b = write(data / "b" / "notes.txt", "v1")
    node.add("a", "files", a)
    node.add("b", "files", b.parent)
    cp = node.checkpoint()
    want_a = tree(a)
    write(a / "prompts" / "system.txt", "edited")
    write(b, "v2")
    res = node.ok("restore", cp["id"], "--in-place", "--source", "a")
    assert "safety checkpoint" in res.out
    assert tree(a) == want_a
    assert b.read_text() == "v2"


def test_restore_in_place_of_a_missing_or_empty_source(node: Node, data: Path) -> None:
    secret = data / "secrets"
    secret.mkdir(mode=0o700)
    os.chmod(secret, 0o700)
    write(secret / "token", "s3cr3t")
    empty = data / "empty"
    empty.mkdir()
    node.add("secrets", "files", secret)
    node.add("empty", "files", empty)
    cp = node.checkpoint()

    shutil.rmtree(secret)
    res = node.ok("restore", cp["id"], "--in-place")
    assert (secret / "token").read_text() == "s3cr3t"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o700  # never loosened to the umask
    assert empty.is_dir() and listing(empty) == []
    assert "safety checkpoint" in res.out  # the empty source still existed
    assert listing(data) == ["empty", "secrets", "secrets/token"]


def test_restore_sqlite_in_place_drops_stale_wal(node: Node, data: Path) -> None:
    db = make_sqlite(data / "memory.db", rows=300)
    node.add("memory", "sqlite", db)
    want = sqlite_dump(db)
    cp = node.checkpoint()
    # a writer that crashed left committed rows in the WAL, not yet in the main file
    crash = (
        "import os, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "con.execute('PRAGMA wal_autocheckpoint=0')\n"
        "con.execute(\"INSERT INTO msgs(role, body) VALUES('user', zeroblob(50000))\")\n"
        "con.commit()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(db)], check=True, timeout=60)
    assert (data / "memory.db-wal").stat().st_size > 50000
    node.ok("restore", cp["id"], "--in-place")
    assert integrity(db) == "ok"
    assert sqlite_dump(db) == want
