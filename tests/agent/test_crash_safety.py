"""A SIGKILL at any instant of a checkpoint leaves the previous checkpoint intact.

The issue's key requirement, tested for real: a node with a source of each file kind
(model, files, sqlite, jsonl: ~50 MB), a few good checkpoints, then many rounds of
"change the data, start ``amber-agent checkpoint`` as a process, SIGKILL it":

- most rounds kill at a random instant (seeded) drawn across the measured duration of
  an uninterrupted checkpoint, and a little past it. The clock starts when the process
  takes the state directory's write lock (seen in /proc/locks, without touching the
  process), so a slow interpreter start on a busy machine does not skew where kills
  land; a kill due after the process let go of the lock lands right then, after the
  commit with the journal still open;
- every fourth round kills the moment a reader sees the new checkpoint, and every
  eighth at a random instant of start-up (opening and recovering the journal).

After every kill, a fresh reader and then the agent (``checkpoints --json``,
``verify``) must find exactly the previous checkpoints, or those plus one complete
new one; the previous head and any new one re-read completely; the hash chain is
intact. Every third round the journal is opened for writing, which must remove all
tentative chunks the killed process left; the others leave them to the next killed
checkpoint. At the end an uninterrupted checkpoint succeeds, nothing tentative is
left, and every checkpoint verifies.

Each kill is classified (before the lock, mid-checkpoint, after the commit, or the
process finished first) and the test insists on enough mid-checkpoint kills (most of
them with tentative chunks or a half-made SQLite copy on disk) and enough after the
commit, so it proves it hit both.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber.agent.config import load_config
from amber.agent.identity import NodeIdentity, load_identity
from amber.agent.journal import TENTATIVE
from amber.agent.runtime import AgentRuntime
from amber.protocol.records import KIND_CHECKPOINT, check_chain, decode_checkpoint, record_id
from tests.support.node import cli, cli_ok

pytestmark = pytest.mark.servers  # agent processes, SIGKILLed

MiB = 1024 * 1024
SEED = 20240611
MIN_ROUNDS, MAX_ROUNDS = 25, 30
LOOP_BUDGET_S = 36.0  # no new rounds after this long once the counts below are reached,
HARD_LIMIT_S = 60.0  # nor after this long in any case (a busy machine)
MIN_MID = 5  # kills that must land between taking the write lock and the commit
MIN_AFTER = 2  # kills that must land after the commit (the process still running)


# --- small local helpers --------------------------------------------------------------


def amber(cfg: Path, *args: str) -> str:
    """``amber-agent --config CFG ARGS`` run in this process (the same code path as the
    command, without an interpreter start); it must succeed. Returns its stdout."""
    res = cli("--config", cfg, *args)
    assert res.code == 0, res
    return res.out


def spawn_checkpoint(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "amber.agent.cli", "--config", str(cfg), "checkpoint"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class Snapshot:
    """The journal as a fresh reader sees it, read straight from the SQLite file."""

    rows: list[tuple[int, bytes]]  # (seq, id) of the checkpoint index
    records: dict[bytes, bytes]  # checkpoint record id -> bytes
    tentative: int

    @property
    def ids(self) -> list[str]:
        return [cid.hex() for _, cid in self.rows]


def snapshot(journal: Path) -> Snapshot:
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = [(int(s), bytes(i)) for s, i in con.execute("SELECT seq, id FROM checkpoints")]
        records = {
            bytes(rid): bytes(data)
            for rid, data in con.execute(
                "SELECT id, data FROM records WHERE kind = ?", (KIND_CHECKPOINT,)
            )
        }
        tentative = con.execute("SELECT count(*) FROM chunks WHERE state = ?", (TENTATIVE,))
        n = int(tentative.fetchone()[0])
    finally:
        con.close()
    return Snapshot(sorted(rows), records, n)


def check_hash_chain(snap: Snapshot, ident: NodeIdentity) -> None:
    """Contiguous seqs from 0; each record hashes to its id, is signed by this node,
    decrypts under the vault key and names the previous checkpoint."""
    assert [s for s, _ in snap.rows] == list(range(len(snap.rows)))
    prev_id: bytes | None = None
    prev_seq: int | None = None
    for seq, cid in snap.rows:
        data = snap.records[cid]
        assert record_id(data) == cid
        cp = decode_checkpoint(data, ident.keys, trusted=ident.signer.public)
        assert cp.seq == seq
        check_chain(prev_id, prev_seq, cp)
        assert cp.prev == prev_id
        prev_id, prev_seq = cid, seq


def listed(cfg: Path) -> list[dict]:
    return json.loads(amber(cfg, "checkpoints", "--json"))


def count_checkpoints(journal: Path) -> int:
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
    finally:
        con.close()


# --- the node's data ------------------------------------------------------------------


def make_data(root: Path, rng: random.Random) -> None:
    """~50 MB: a model, a prompt tree, an agent-memory SQLite database, JSONL logs."""
    (root / "prompts").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "model.bin").write_bytes(rng.randbytes(24 * MiB))
    for i in range(60):
        body = f"# prompt {i}\n" + "You are a careful assistant. " * 200
        (root / "prompts" / f"p{i:03d}.md").write_text(body + rng.randbytes(30_000).hex())
    con = sqlite3.connect(root / "memory.db")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, role TEXT, text TEXT, emb BLOB)")
    con.executemany(
        "INSERT INTO messages(role, text, emb) VALUES(?,?,?)",
        (("user", f"message {i} " * 20, rng.randbytes(3072)) for i in range(4000)),
    )
    con.commit()
    con.close()
    for name in ("agent.jsonl", "tools.jsonl"):
        with open(root / "logs" / name, "w") as fh:
            for i in range(12_000):
                fh.write(json.dumps({"i": i, "msg": "step " * 20, "r": rng.random()}) + "\n")


def mutate(root: Path, rng: random.Random, round_no: int) -> None:
    """What happens on a node between two checkpoints."""
    model = root / "model.bin"
    size = model.stat().st_size
    with open(model, "r+b") as fh:  # ~4 MB of weights rewritten in a few regions
        for _ in range(3):
            fh.seek(rng.randrange(0, size - 2 * MiB))
            fh.write(rng.randbytes(rng.randrange(MiB, 2 * MiB)))
    con = sqlite3.connect(root / "memory.db")
    con.executemany(  # rows come and go; the database keeps its size
        "INSERT INTO messages(role, text, emb) VALUES(?,?,?)",
        (("assistant", f"reply {round_no}-{i} " * 20, rng.randbytes(3072)) for i in range(60)),
    )
    con.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 60)")
    ids = [rid for (rid,) in con.execute("SELECT id FROM messages ORDER BY id")]
    con.executemany(
        "UPDATE messages SET emb = ? WHERE id = ?",
        ((rng.randbytes(3072), rid) for rid in rng.sample(ids, 200)),
    )
    con.commit()
    con.close()
    log = root / "logs" / "agent.jsonl"
    if round_no % 7 == 6:  # a rotated log: full re-chunking
        lines = (json.dumps({"rotated": round_no, "i": i}) + "\n" for i in range(9000))
        log.write_text("".join(lines))
    else:
        with open(log, "a") as fh:
            for i in range(1500):
                fh.write(json.dumps({"round": round_no, "i": i, "r": rng.random()}) + "\n")
    for _ in range(3):
        p = root / "prompts" / f"p{rng.randrange(60):03d}.md"
        p.write_text(p.read_text() + f"\nrevision {round_no}: " + rng.randbytes(2000).hex())
    (root / "prompts" / f"new{round_no % 5}.md").write_text(rng.randbytes(40_000).hex())


def setup_node(tmp_path: Path, rng: random.Random) -> Path:
    data, state = tmp_path / "data", tmp_path / "state"
    make_data(data, rng)
    assert cli("init", "--dir", state, "--node", "edge-1", "--vault", "fleet").code == 0
    cfg = state / "agent.toml"
    for name, kind, path in (
        ("model", "model", data / "model.bin"),
        ("prompts", "files", data / "prompts"),
        ("memory", "sqlite", data / "memory.db"),
        ("logs", "jsonl", data / "logs"),
    ):
        argv = ["--config", str(cfg), "source", "add", name, "--kind", kind, "--path", str(path)]
        assert cli(*argv).code == 0
    return cfg


def holds_lock(pid: int, inode: int) -> bool:
    """Whether ``pid`` holds the flock on the file with ``inode`` (per /proc/locks).

    Every writing command holds the state directory's lock from just after opening the
    journal until its checkpoint is committed (or abandoned): the checkpoint proper.
    Reading /proc/locks does not disturb the process under test.
    """
    with open("/proc/locks") as fh:
        for line in fh:  # "1: FLOCK  ADVISORY  WRITE 4242 00:1f:123456 0 EOF"
            f = line.split()
            if len(f) > 5 and f[1] == "FLOCK" and f[4] == str(pid) and f[5].endswith(f":{inode}"):
                return True
    return False


@dataclass
class Run:
    """What happened to one checkpoint process."""

    lock_s: float | None = None  # when it took the lock, from spawn
    held_s: float | None = None  # how long it held it (None: killed while holding it)
    killed_at: float | None = None  # seconds after taking the lock (negative: before)
    killed_holding: bool = False


def run_checkpoint(
    cfg: Path, lock_inode: int, journal: Path, *, mode: str, delay: float = 0.0
) -> tuple[subprocess.Popen[bytes], Run]:
    """Start ``amber-agent checkpoint`` and SIGKILL it per ``mode``:

    - ``none``: let it finish (measures how long it holds the lock);
    - ``early``: ``delay`` seconds after the spawn, whatever it is doing;
    - ``held``: ``delay`` seconds after it took the lock, or the moment it lets go of
      the lock if that comes first (right after the commit, the journal still open);
    - ``commit``: the moment a reader sees one checkpoint more in the journal.
    """
    count = count_checkpoints(journal)
    proc = spawn_checkpoint(cfg)
    run = Run()
    t0 = time.monotonic()
    while proc.poll() is None:
        now = time.monotonic() - t0
        held = holds_lock(proc.pid, lock_inode)
        if held and run.lock_s is None:
            run.lock_s = now
        if run.lock_s is not None and not held and run.held_s is None:
            run.held_s = now - run.lock_s
        since_lock = None if run.lock_s is None else now - run.lock_s
        if mode == "early":
            fire = now >= delay
        elif mode == "held":
            fire = since_lock is not None and (since_lock >= delay or not held)
        elif mode == "commit":
            fire = count_checkpoints(journal) > count
        else:
            fire = now > 120
        if fire:
            os.kill(proc.pid, signal.SIGKILL)
            run.killed_at = -now if run.lock_s is None else since_lock
            run.killed_holding = held
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    return proc, run


async def _open_for_writing(cfg_path: Path) -> None:
    """Open the journal and take the write lock, as every writing command does first."""
    async with AgentRuntime.open(load_config(cfg_path)) as rt, rt.writing(timeout=5):
        pass


# --- the test -------------------------------------------------------------------------


def test_sigkill_at_random_moments_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cfg = setup_node(tmp_path, rng)
    config = load_config(cfg)
    journal = config.journal_path
    ident = load_identity(config)
    copy_leftovers = config.state_dir / "tmp"

    cli_ok("--config", cfg, "checkpoint")  # the first, full checkpoint
    lock_inode = (config.state_dir / "agent.lock").stat().st_ino
    # How long an uninterrupted incremental checkpoint holds the lock, and how long the
    # process takes to get there.
    runs = []
    for i in range(3):
        mutate(tmp_path / "data", rng, -1 - i)
        proc, run = run_checkpoint(cfg, lock_inode, journal, mode="none")
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert run.lock_s is not None and run.held_s is not None
        runs.append(run)
    duration = sorted(r.held_s or 0.0 for r in runs)[1]
    to_lock = sorted(r.lock_s or 0.0 for r in runs)[1]
    before = listed(cfg)
    assert len(before) == 4

    kinds: Counter[str] = Counter()
    with_leftovers = 0
    delays: dict[str, list[float]] = {}
    started = time.monotonic()
    round_no = 0

    def more_rounds() -> bool:
        elapsed = time.monotonic() - started
        enough = (
            round_no >= MIN_ROUNDS
            and kinds["mid"] >= MIN_MID
            and kinds["after_commit"] >= MIN_AFTER
        )
        if enough:
            return round_no < MAX_ROUNDS and elapsed < LOOP_BUDGET_S
        return elapsed < HARD_LIMIT_S

    while more_rounds():
        round_no += 1
        mutate(tmp_path / "data", rng, round_no)
        if round_no % 8 == 0:  # while the process starts and opens the journal
            proc, run = run_checkpoint(
                cfg, lock_inode, journal, mode="early", delay=rng.uniform(0, to_lock)
            )
        elif round_no % 4 == 0:  # the instant the new checkpoint becomes visible
            proc, run = run_checkpoint(cfg, lock_inode, journal, mode="commit")
        else:  # a random instant across the checkpoint, and a little past its end
            delay = rng.uniform(0.0, 1.15) * duration
            proc, run = run_checkpoint(cfg, lock_inode, journal, mode="held", delay=delay)
        err = proc.stderr.read() if proc.stderr else b""
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, f"checkpoint failed ({proc.returncode}): {err!r}"

        # A fresh reader, straight from the file, before any agent touches it again.
        snap = snapshot(journal)
        # Then through the agent: the list, and a full re-read of the previous head
        # (which must have survived) and of the new head if there is one.
        now = listed(cfg)
        assert [r["id"] for r in now] == snap.ids
        grew = len(now) == len(before) + 1
        assert now == before or (grew and now[:-1] == before), (
            f"round {round_no}: journal holds {len(now)} checkpoints after {run}; "
            f"expected {len(before)} or {len(before) + 1}"
        )
        check_hash_chain(snap, ident)
        assert amber(cfg, "verify", f"seq:{before[-1]['seq']}").startswith(before[-1]["id"][:16])
        if grew:
            assert now[-1]["seq"] == before[-1]["seq"] + 1
            assert sorted(now[-1]["sources"]) == ["logs", "memory", "model", "prompts"]
            assert amber(cfg, "verify", "latest").startswith(now[-1]["id"][:16])

        if not killed:
            kind = "finished"
        elif grew:
            kind = "after_commit"
        elif run.killed_holding:
            kind = "mid"  # between taking the lock and committing
            with_leftovers += bool(snap.tentative or any(copy_leftovers.glob("*.backup.db*")))
        else:
            kind = "before_lock"  # interpreter start, journal open and recovery
        kinds[kind] += 1
        delays.setdefault(kind, []).append(round(run.killed_at or 0.0, 3))

        # Every third round, open the journal for writing now (as the next command
        # does); other rounds leave the leftovers to the next, killed, checkpoint.
        if round_no % 3 == 0:
            asyncio.run(_open_for_writing(cfg))
            assert snapshot(journal).tentative == 0
            assert [r["id"] for r in listed(cfg)] == snap.ids
        before = now

    report = (
        f"{round_no} rounds in {time.monotonic() - started:.1f}s; an uninterrupted checkpoint "
        f"holds the lock {duration:.2f}s after {to_lock:.2f}s of start-up; kills: "
        f"{dict(kinds)}, {with_leftovers} mid-checkpoint ones left tentative chunks or a "
        f"half-made SQLite copy behind; seconds after taking the lock: {delays}"
    )
    print(report)
    assert kinds["mid"] >= MIN_MID, report
    assert with_leftovers >= MIN_MID // 2, report
    assert kinds["after_commit"] >= MIN_AFTER, report

    # Opened for writing again: the next checkpoint succeeds, nothing tentative is left,
    # the chain is whole, and every checkpoint verifies (in a process of its own).
    out = cli_ok("--config", cfg, "checkpoint", "--json").json()
    assert out["seq"] == before[-1]["seq"] + 1
    final = snapshot(journal)
    assert final.tentative == 0
    check_hash_chain(final, ident)
    assert len(final.rows) == len(before) + 1
    verified = cli_ok("--config", cfg, "verify").out
    assert f"verified {len(final.rows)} checkpoint(s)" in verified
    assert not any(copy_leftovers.glob("*.backup.db*"))
