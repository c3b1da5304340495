"""Helpers for the edge agent's tests: run the CLI, build source trees, compare restores.

The CLI is driven in-process through ``amber.agent.cli.parser.main`` (fast) or as a real
``python -m amber.agent.cli.parser`` subprocess where a separate process matters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.agent.cli import main
from amber.agent.config import load_config, save_config

OLD = 3600  # seconds: mtimes this old are past the racy-file window


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def cli(*args: object) -> Result:
    """Run ``amber-agent ARGS`` in this process and capture its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def cli_proc(
    *args: object, env: dict[str, str] | None = None, timeout: float = 120, prelude: str = ""
) -> Result:
    """Run ``amber-agent ARGS`` as a real process (``prelude``: Python run before main)."""
    code = f"import sys\n{prelude}\nfrom amber.agent.cli import main\nsys.exit(main(sys.argv[1:]))"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Node:
    """One initialised agent: its state directory and agent.toml."""

    def __init__(self, state: Path, fingerprint: str) -> None:
        self.state = state
        self.config = state / "agent.toml"
        self.fingerprint = fingerprint

    @classmethod
    def init(
        cls, state: Path, node: str = "n1", vault: str = "v1", vault_key: Path | None = None
    ) -> Node:
        args: list[object] = ["init", "--dir", state, "--node", node, "--vault", vault]
        if vault_key is not None:
            args += ["--vault-key", vault_key]
        res = cli(*args)
        assert res.code == 0, res
        return cls(state, fingerprint_of(res.out))

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    def run(self, *args: object) -> Result:
        return cli("--config", self.config, *args)

    def ok(self, *args: object) -> Result:
        res = self.run(*args)
        assert res.code == 0, res
        return res

    def add(self, name: str, kind: str, path: Path, *extra: object) -> None:
        self.ok("source", "add", name, "--kind", kind, "--path", path, *extra)

    def checkpoint(self, *args: object) -> dict[str, Any]:
        return self.ok("checkpoint", "--json", *args).json()

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.ok("checkpoints", "--json").json()

    def status(self) -> dict[str, Any]:
        return self.ok("status", "--json").json()

    def source_status(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["sources"] if s["name"] == name)

    def restore_to(self, cp: str, dest: Path, *extra: object) -> Result:
        return self.ok("restore", cp, "--to", dest, *extra)

    def configure(self, **changes: Any) -> None:
        """Change agent.toml options (AgentConfig field names)."""
        cfg = load_config(self.config)
        save_config(dataclasses.replace(cfg, **changes))

    def snapshot(self) -> tuple[list[Any], str]:
        """The checkpoint list and a digest of everything else the journal holds, read
        with sqlite3 directly (to prove that a failed command changed nothing)."""
        con = sqlite3.connect(self.journal)
        try:
            rows = con.execute("SELECT seq, hex(id), kind, labels FROM checkpoints ORDER BY seq")
            listed = rows.fetchall()
            h = hashlib.sha256()
            for line in con.iterdump():
                h.update(line.encode() + b"\n")
            return listed, h.hexdigest()
        finally:
            con.close()


FINGERPRINT = re.compile(r"fingerprint:? ([0-9a-f]{4}(?:-[0-9a-f]{4}){3})")


def fingerprint_of(text: str) -> str:
    m = FINGERPRINT.search(text)
    assert m, f"no fingerprint in {text!r}"
    return m.group(1)


# --- source trees ------------------------------------------------------------------


def rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


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


def make_sqlite(path: Path, rows: int = 500, body: int = 200, mode: str = "wal") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE msgs(id INTEGER PRIMARY KEY, role TEXT, body BLOB)")
    con.executemany(
        "INSERT INTO msgs(role, body) VALUES(?, randomblob(?))",
        [("user" if i % 2 else "assistant", body) for i in range(rows)],
    )
    con.commit()
    con.close()
    return path


def sqlite_rows(path: Path, sql: str = "SELECT count(*) FROM msgs") -> Any:
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


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` (not ``root`` itself): type, mode, content digest, link."""
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
            out[rel] = ("f", mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# --- another process writing a SQLite database ----------------------------------------

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


# --- peak memory of a process --------------------------------------------------------------

# Linux charges a child with the peak RSS of the process it was forked from (the
# address space it had until exec), so a child of a big pytest process reports
# pytest's peak. A tiny launcher in between keeps the measurement clean.
LAUNCHER = r"""
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "maxrss_kib": peak}, fh)
"""


def run_measured(args: list[object], workdir: Path, timeout: float = 300) -> tuple[Result, float]:
    """Run ``python ARGS``; return its result and its peak RSS in MiB."""
    report = workdir / "peak.json"
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(report), sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    got = json.loads(report.read_text())
    return Result(got["code"], proc.stdout, proc.stderr), got["maxrss_kib"] / 1024


# --- running as root without root's power over file permissions --------------------------

NO_DAC = r"""
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_CAPBSET_DROP CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: lost for good at exec
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            sys.exit(99)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def run_no_dac(*python_args: object, timeout: float = 120) -> Result:
    """``python ARGS`` in a process for which mode 000 means unreadable, even as root.

    Exit code 99: this machine does not let the test drop those capabilities.
    """
    proc = subprocess.run(
        [sys.executable, "-c", NO_DAC, *map(str, python_args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def permissions_bind(probe_dir: Path) -> bool:
    """Whether a ``run_no_dac`` process is really refused a mode-000 file."""
    probe = write(probe_dir / "probe", "x")
    probe.chmod(0)
    try:
        res = run_no_dac("-c", "import sys; open(sys.argv[1]).read()", probe)
    finally:
        probe.unlink()
    return res.code not in (0, 99) and "PermissionError" in res.err
