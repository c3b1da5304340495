"""A full disk during a checkpoint: DiskFullError (exit 42), the journal as it was.

The node's state directory (journal, keys, scratch copies) lives on a small
filesystem of its own, a tmpfs mounted for the test (a loop-mounted ext4 image where
tmpfs is refused); the sources live on the ordinary disk. A checkpoint that does not
fit fails with exit 42 and a hint to free space, the previous checkpoints stay intact
and verify, nothing tentative is left, and once there is room the checkpoint goes
through.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.agent.cli import parser as cli
from amber.agent.config import load_config
from amber.agent.journal import TENTATIVE
from amber.protocol.errors import DiskFullError
from tests.support.node import cli_ok, cli_proc
from tests.support.procs import Result

pytestmark = pytest.mark.servers  # agent processes on a small loop-mounted filesystem

MiB = 1024 * 1024
FS_SIZE = 8 * MiB


# --- a small filesystem of its own -----------------------------------------------------


class SmallFs:
    def __init__(self, path: Path, how: str, image: Path | None = None) -> None:
        self.path, self.how, self.image = path, how, image

    def grow(self, size: int) -> None:
        """Make room (as an operator freeing space would); no agent process runs now."""
        if self.how == "tmpfs":
            run_ok(["mount", "-o", f"remount,size={size}", str(self.path)])
            return
        assert self.image is not None
        run_ok(["umount", str(self.path)])
        run_ok(["truncate", "-s", str(size), str(self.image)])
        subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True)
        run_ok(["resize2fs", str(self.image)])
        run_ok(["mount", "-o", "loop", str(self.image), str(self.path)])


def run_ok(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def _try_mount(mnt: Path, tmp: Path) -> tuple[SmallFs | None, list[str]]:
    reasons = []
    if os.geteuid() != 0:
        return None, [f"mounting needs root (running as uid {os.geteuid()})"]
    tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mnt)]
    proc = subprocess.run(tmpfs, capture_output=True, text=True)
    if proc.returncode == 0:
        return SmallFs(mnt, "tmpfs"), reasons
    reasons.append(f"mount -t tmpfs: {proc.stderr.strip() or proc.returncode}")
    if not (shutil.which("mkfs.ext4") and shutil.which("losetup")):
        return None, [*reasons, "no mkfs.ext4/losetup for a loop-mounted image"]
    image = tmp / "state.img"
    subprocess.run(["truncate", "-s", str(FS_SIZE), str(image)], check=True)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if mkfs.returncode != 0:
        return None, [*reasons, f"mkfs.ext4: {mkfs.stderr.strip()}"]
    proc = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True
    )
    if proc.returncode == 0:
        return SmallFs(mnt, "loop", image), reasons
    return None, [*reasons, f"mount -o loop: {proc.stderr.strip() or proc.returncode}"]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    mnt = tmp_path / "state"
    mnt.mkdir()
    fs, reasons = _try_mount(mnt, tmp_path)
    if fs is None:
        pytest.skip(
            "cannot mount a small filesystem for the state directory: " + "; ".join(reasons)
        )
    try:
        yield fs
    finally:
        proc = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        if proc.returncode != 0:  # a straggler still has a file open: detach lazily
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, text=True)


# --- small local helpers --------------------------------------------------------------


def journal_view(cfg: Path) -> tuple[list[str], int]:
    """(checkpoint ids, tentative chunk rows), read straight from the file."""
    con = sqlite3.connect(f"file:{load_config(cfg).journal_path}?mode=ro", uri=True)
    try:
        ids = [bytes(r[0]).hex() for r in con.execute("SELECT id FROM checkpoints ORDER BY seq")]
        n = con.execute("SELECT count(*) FROM chunks WHERE state = ?", (TENTATIVE,)).fetchone()
    finally:
        con.close()
    return ids, int(n[0])


def make_node(state: Path, data: Path) -> Path:
    rng = random.Random(42)
    (data / "prompts").mkdir(parents=True)
    for i in range(10):
        (data / "prompts" / f"p{i}.md").write_bytes(rng.randbytes(20_000))
    assert cli.main(["init", "--dir", str(state), "--node", "edge-1", "--vault", "fleet"]) == 0
    cfg = state / "agent.toml"
    argv = ["--config", str(cfg), "source", "add", "prompts", "--kind", "files"]
    assert cli.main([*argv, "--path", str(data / "prompts")]) == 0
    return cfg


def add_source(cfg: Path, name: str, kind: str, path: Path) -> None:
    argv = ["--config", str(cfg), "source", "add", name, "--kind", kind, "--path", str(path)]
    assert cli.main(argv) == 0


def assert_disk_full(proc: Result) -> None:
    assert proc.code == DiskFullError.exit_code == 42, f"expected 42 (disk full): {proc}"
    assert "no space left" in proc.err
    assert "free space" in proc.err.split("hint:", 1)[1]


# --- the tests ------------------------------------------------------------------------


def test_journal_filling_the_disk_fails_with_disk_full_and_keeps_the_journal(
    small_fs: SmallFs, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    cfg = make_node(small_fs.path, data)
    cli_ok("--config", cfg, "checkpoint")
    (data / "model.bin").write_bytes(random.Random(1).randbytes(24 * MiB))  # cannot fit
    add_source(cfg, "model", "model", data / "model.bin")
    before = journal_view(cfg)
    assert len(before[0]) == 1 and before[1] == 0

    proc = cli_proc("--config", cfg, "checkpoint")
    assert_disk_full(proc)
    assert journal_view(cfg) == before  # same checkpoints, nothing tentative left
    cli_ok("--config", cfg, "verify")
    again = cli_proc("--config", cfg, "checkpoint")  # still no room: the same clean failure
    assert_disk_full(again)
    assert journal_view(cfg) == before

    small_fs.grow(128 * MiB)
    out = cli_ok("--config", cfg, "checkpoint", "--json").json()
    assert out["seq"] == 1 and out["changed"] == ["model"]
    assert journal_view(cfg) == ([*before[0], out["id"]], 0)
    cli_ok("--config", cfg, "verify")


def test_sqlite_copy_filling_the_disk_fails_with_disk_full(
    small_fs: SmallFs, tmp_path: Path
) -> None:
    """The consistent copy of a SQLite source is made in the state directory; a copy
    that does not fit there is a full disk too, not an unreadable source."""
    data = tmp_path / "data"
    cfg = make_node(small_fs.path, data)
    cli_ok("--config", cfg, "checkpoint")
    rng = random.Random(2)
    con = sqlite3.connect(data / "memory.db")
    con.execute("CREATE TABLE m(id INTEGER PRIMARY KEY, emb BLOB)")
    con.executemany("INSERT INTO m(emb) VALUES(?)", ((rng.randbytes(4096),) for _ in range(3000)))
    con.commit()
    con.close()
    add_source(cfg, "memory", "sqlite", data / "memory.db")
    before = journal_view(cfg)

    proc = cli_proc("--config", cfg, "checkpoint")
    assert_disk_full(proc)
    assert journal_view(cfg) == before
    assert not list((small_fs.path / "tmp").glob("*.backup.db*"))  # no half copy left
    cli_ok("--config", cfg, "verify")

    small_fs.grow(128 * MiB)
    out = cli_ok("--config", cfg, "checkpoint", "--json").json()
    assert out["changed"] == ["memory"]
    cli_ok("--config", cfg, "verify")
