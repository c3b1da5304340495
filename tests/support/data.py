"""Test data: random bytes and trees, SQLite databases, agent memory and models, and
comparisons (trees with modes and digests, database dumps).

Plain Python, no pytest imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OLD = 3600  # seconds: mtimes this old are past the racy-file window


# --------------------------------------------------------------------------- bytes and files


def rand(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def age_tree(root: Path, seconds: int = OLD) -> None:
    """Give every file and directory under ``root`` an mtime ``seconds`` in the past."""
    t = time.time_ns() - seconds * 1_000_000_000
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if not p.is_symlink():
            os.utime(p, ns=(t, t))


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def make_files_tree(root: Path, seed: int = 1) -> Path:
    """A small prompts/policies-like tree: text, binary, nested, symlinks, an empty dir."""
    write(root / "prompts" / "system.txt", "You are a careful assistant.\n" * 40)
    write(root / "prompts" / "tools" / "search.md", "# search\nuse it wisely\n")
    write(root / "policies" / "allow.json", json.dumps({"allow": list(range(500))}))
    write(root / "blob.bin", rand(300_000, seed))
    write(root / "empty-file", b"")
    (root / "empty-dir" / "deeper").mkdir(parents=True)
    os.symlink("prompts/system.txt", root / "current-prompt")
    os.symlink("does-not-exist", root / "dangling")
    os.chmod(root / "policies" / "allow.json", 0o640)
    os.chmod(root / "blob.bin", 0o600)
    return root


def make_model(root: Path, size: int, seed: int = 7) -> Path:
    """A model directory: incompressible weights of ``size`` bytes and a small config."""
    write(root / "weights.bin", rand(size, seed))
    write(root / "config.json", json.dumps({"layers": 12, "seed": seed}))
    age_tree(root)
    return root


def write_machine_state(data: Path, label: str, seed: int, model_size: int = 96 * 1024) -> None:
    """Replace a machine's three sources under ``data`` with state ``seed`` (every source
    differs per seed): ``db/memory.db`` (SQLite), ``files/`` (prompts, a policy with mode
    0640, a blob) and ``model/`` (weights and a config)."""
    for sub in ("db", "files", "model"):
        shutil.rmtree(data / sub, ignore_errors=True)
    make_sqlite(data / "db" / "memory.db", rows=150 + seed % 50, body=120, seed=seed)
    files = data / "files"
    write(files / "prompts" / "system.txt", f"You are {label}, state {seed}.\n" * 40)
    write(files / "policy.json", json.dumps({"seed": seed, "allow": list(range(seed % 97))}))
    write(files / "blobs" / f"state-{seed}.bin", rand(40_000 + seed % 1000, seed))
    os.chmod(files / "policy.json", 0o640)
    write(data / "model" / "weights.bin", rand(model_size, seed + 10_000))
    write(data / "model" / "config.json", json.dumps({"layers": seed % 13}))


# --------------------------------------------------------------------------- SQLite


def make_sqlite(
    path: Path, rows: int = 500, body: int = 200, mode: str = "wal", seed: int | None = None
) -> Path:
    """A database with a ``msgs`` table (created if missing) and ``rows`` more rows of
    ``body`` bytes each: random per call, or the same for the same ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE IF NOT EXISTS msgs(id INTEGER PRIMARY KEY, role TEXT, body BLOB)")
    roles = ["user" if i % 2 else "assistant" for i in range(rows)]
    if seed is None:
        sql = "INSERT INTO msgs(role, body) VALUES(?, randomblob(?))"
        con.executemany(sql, [(role, body) for role in roles])
    else:
        rng = random.Random(seed)
        sql = "INSERT INTO msgs(role, body) VALUES(?, ?)"
        con.executemany(sql, [(role, rng.randbytes(body)) for role in roles])
    con.commit()
    con.close()
    return path


def sqlite_rows(path: Path, sql: str = "SELECT count(*) FROM msgs") -> Any:
    """The first column of the first row ``sql`` returns."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def sqlite_dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def integrity(path: Path) -> str:
    return str(sqlite_rows(path, "PRAGMA integrity_check"))


def query_ro(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` on ``db`` opened read-only (a journal or a catalog in use)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def has_table(db: Path, table: str) -> bool:
    return bool(query_ro(db, "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)))


# --------------------------------------------------------------------------- agent memory


def make_memory(root: Path, seed: int = 1) -> Path:
    """Agent memory: a SQLite database, a JSONL conversation log, prompts and policies."""
    make_sqlite(root / "memory.db", rows=400, seed=seed)
    write(
        root / "logs" / "conversation.jsonl",
        "".join(
            json.dumps({"turn": i, "text": f"message {i} seed {seed}"}) + "\n" for i in range(300)
        ),
    )
    write(root / "prompts" / "system.txt", f"You are a careful assistant ({seed}).\n" * 50)
    write(root / "policies" / "allow.json", json.dumps({"allow": list(range(200))}))
    age_tree(root / "prompts")
    age_tree(root / "policies")
    return root


def grow_memory(root: Path, rows: int = 50, seed: int = 99) -> None:
    """What an agent does between checkpoints: new rows, new log lines."""
    make_sqlite(root / "memory.db", rows=rows, seed=seed)
    with open(root / "logs" / "conversation.jsonl", "a") as fh:
        for i in range(rows):
            fh.write(json.dumps({"turn": 1000 + i, "text": f"later {seed}"}) + "\n")


# --------------------------------------------------------------------------- comparisons


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` (not ``root`` itself; ``root`` may be a file): type,
    mode, size and content digest, or a link's target."""
    out: dict[str, tuple[Any, ...]] = {}
    paths = sorted(root.rglob("*")) if root.is_dir() else [root]
    for p in paths:
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", mode)
        else:
            out[rel] = ("f", mode, st.st_size, sha256(p.read_bytes()))
    return out


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


@dataclass
class Snapshot:
    """What a memory/model root held when a checkpoint was taken."""

    files: dict[str, dict[str, tuple[Any, ...]]]  # source dir name -> tree
    db_dump: list[str] | None


def snapshot(sources: dict[str, Path], db: Path | None = None) -> Snapshot:
    return Snapshot(
        {name: tree(path) for name, path in sources.items()},
        sqlite_dump(db) if db is not None else None,
    )


def assert_restored(dest: Path, snap: Snapshot, db_source: str | None = None) -> None:
    """``dest/<source>`` matches the snapshot bit for bit; the db passes integrity_check."""
    for name, expected in snap.files.items():
        assert tree(dest / name) == expected, f"source {name} differs after restore"
    if db_source is not None:
        dbs = list((dest / db_source).glob("*.db"))
        assert len(dbs) == 1, f"restored {db_source}: {sorted(dest.rglob('*'))}"
        assert integrity(dbs[0]) == "ok"
        assert sqlite_dump(dbs[0]) == snap.db_dump


# --------------------------------------------------------------------------- a live writer

WRITER = r"""
import os, sqlite3, sys
db, mode, log = sys.argv[1], sys.argv[2], sys.argv[3]
batch, body = int(sys.argv[4]), int(sys.argv[5])
con = sqlite3.connect(db, timeout=60, isolation_level=None)
con.execute("PRAGMA journal_mode=" + mode)
con.execute("CREATE TABLE IF NOT EXISTS msgs(id INTEGER PRIMARY KEY, role TEXT, body BLOB)")
con.execute("CREATE TABLE IF NOT EXISTS tally(n INTEGER)")
if con.execute("SELECT count(*) FROM tally").fetchone()[0] == 0:
    con.execute("INSERT INTO tally SELECT count(*) FROM msgs")
n = con.execute("SELECT count(*) FROM msgs").fetchone()[0]
with open(log, "a") as out:
    out.write(f"{n}\n")
    out.flush()
    while not os.path.exists(db + ".stop"):
        con.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            con.execute("INSERT INTO msgs(role, body) VALUES('user', randomblob(?))", (body,))
        # an update elsewhere in the file: a torn copy would disagree with the rows
        con.execute("UPDATE tally SET n = n + ?", (batch,))
        con.execute("DELETE FROM msgs WHERE id IN (SELECT id FROM msgs ORDER BY id LIMIT 1)")
        con.execute("INSERT INTO msgs(role, body) VALUES('system', randomblob(?))", (body,))
        con.execute("COMMIT")
        n += batch
        out.write(f"{n}\n")
        out.flush()
"""


class SqliteWriter:
    """A separate process committing batches of rows and logging each committed count."""

    def __init__(self, db: Path, mode: str, batch: int = 20, body: int = 1000) -> None:
        self.db, self.log = db, db.with_name(db.name + ".log")
        self.stop_file = db.with_name(db.name + ".stop")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), mode, str(self.log), str(batch), str(body)]
        )

    def counts(self) -> list[int]:
        if not self.log.exists():
            return []
        return [int(x) for x in self.log.read_text().split()]

    def wait_commits(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.counts())
        while len(self.counts()) < start + n:
            assert self.proc.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.02)

    def stop(self) -> list[int]:
        self.stop_file.touch()
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.counts()
