"""`make demo`: the main job end to end, in about half a minute.

A hub in a box; an edge node with agent memory (SQLite + JSONL), prompts and a
model; checkpoint; sync; the node's disk is lost; a fresh node with the same vault
key and enrolment restores from the hub; every file is verified bit for bit.
Everything happens under ./demo-work, which is recreated on each run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("demo-work").resolve()
PY = sys.executable


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(*args: str) -> str:
    print("$ " + " ".join(a.replace(str(WORK), "demo-work") for a in args), flush=True)
    res = subprocess.run(args, capture_output=True, text=True)
    if res.stdout.strip():
        print(res.stdout.replace(str(WORK), "demo-work").rstrip())
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        raise SystemExit(f"demo failed: {args[0]} exited {res.returncode}")
    return res.stdout


def agent(state: Path, *args: str) -> str:
    return run(PY, "-m", "amber.agent.cli", "--config", str(state / "agent.toml"), *args)


def hub(*args: str) -> str:
    return run(PY, "-m", "amber.hub.cli", "--data", str(WORK / "hub"), *args)


def make_node_data(root: Path) -> None:
    rng = random.Random(7)
    (root / "prompts").mkdir(parents=True)
    for i in range(20):
        (root / "prompts" / f"policy-{i:02}.md").write_text(f"# Policy {i}\nBe careful. {i}\n")
    (root / "model").mkdir()
    with open(root / "model" / "adapter.safetensors", "wb") as fh:
        for _ in range(24):  # 24 MiB of bf16-like weights: random mantissas, narrow exponents
            low = rng.randbytes(1 << 19)
            high = bytes(0x3C + (b & 3) for b in rng.randbytes(1 << 19))
            fh.write(bytes(x for pair in zip(low, high, strict=True) for x in pair))
    db = sqlite3.connect(root / "memory.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, role TEXT, text TEXT, emb BLOB)")
    db.executemany(
        "INSERT INTO messages(role, text, emb) VALUES(?,?,?)",
        [("user" if i % 2 else "agent", f"message {i}", rng.randbytes(384)) for i in range(5000)],
    )
    db.commit()
    db.close()
    with open(root / "conversations.jsonl", "w") as fh:
        for i in range(20000):
            fh.write(json.dumps({"turn": i, "text": f"hello {i}"}) + "\n")


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file; a SQLite database by its content (a consistent copy is not
    byte-identical to a live file: its header counters differ)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".db":
            rows = sqlite3.connect(p).execute("SELECT * FROM messages ORDER BY id").fetchall()
            out[p.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
        else:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def start_hub() -> subprocess.Popen[bytes]:
    log = open(WORK / "hub.log", "wb")
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "amber.hub.cli",
            "--data",
            str(WORK / "hub"),
            "serve",
            "--nats-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        if (WORK / "hub" / "hub.json").exists():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("demo failed: the hub did not start; see demo-work/hub.log")


def stop_hub(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    step("hub in a box: its own nats-server, a local object store, a SQLite catalog")
    proc = start_hub()
    try:
        demo(started)
    finally:
        stop_hub(proc)


def demo(started: float) -> None:
    data, state = WORK / "node" / "data", WORK / "node" / "state"
    hub("node", "add", "edge-1", "--vault", "fleet", "--out", str(WORK / "edge-1.enrol"))
    enrolment = json.loads((WORK / "edge-1.enrol").read_text())
    if not enrolment["ca"] or not all(u.startswith("tls://") for u in enrolment["nats_servers"]):
        raise SystemExit("demo failed: the enrolment does not carry TLS settings")
    print(f"links: {enrolment['nats_servers'][0]} (TLS, verified against the hub's own CA)")
    step("an edge node with agent memory, conversation logs, prompts and a model")
    make_node_data(data)
    agent(
        state,
        "init",
        "--dir",
        str(state),
        "--node",
        "edge-1",
        "--vault",
        "fleet",
        "--enroll",
        str(WORK / "edge-1.enrol"),
    )
    shutil.copy(state / "vault.key", WORK / "vault.key.backup")
    os.chmod(WORK / "vault.key.backup", 0o600)
    for name, kind, path in (
        ("memory", "sqlite", "memory.db"),
        ("logs", "jsonl", "conversations.jsonl"),
        ("prompts", "files", "prompts"),
        ("model", "model", "model"),
    ):
        agent(state, "source", "add", name, "--kind", kind, "--path", str(data / path))
    before = digests(data)
    step("checkpoint into the encrypted journal, then sync the deltas to the hub")
    cp = agent(state, "checkpoint", "--label", "model_version=1.0").strip()
    agent(state, "sync", "--once")
    hub("checkpoints")
    step("disaster: the node's disk is lost (data, journal and keys)")
    shutil.rmtree(WORK / "node")
    step("replacement node: same vault key and enrolment; restore from the hub")
    state2 = WORK / "node2" / "state"
    agent(
        state2,
        "init",
        "--dir",
        str(state2),
        "--node",
        "edge-1",
        "--vault",
        "fleet",
        "--vault-key",
        str(WORK / "vault.key.backup"),
        "--enroll",
        str(WORK / "edge-1.enrol"),
    )
    agent(state2, "checkpoints")
    restored = WORK / "node2" / "restored"
    agent(state2, "restore", cp[:16], "--to", str(restored))
    step("verify: every file bit for bit, and the database's integrity")
    after = {**digests(restored / "memory"), **digests(restored / "logs")}
    for src in ("prompts", "model"):
        for k, v in digests(restored / src).items():
            after[f"{src}/{k}"] = v
    wanted = {k: v for k, v in before.items()}
    if after != wanted:
        diff = sorted(set(after.items()) ^ set(wanted.items()))[:5]
        raise SystemExit(f"demo failed: restored files differ: {diff}")
    check = (
        sqlite3.connect(restored / "memory" / "memory.db")
        .execute("PRAGMA integrity_check")
        .fetchone()[0]
    )
    if check != "ok":
        raise SystemExit(f"demo failed: restored database: {check}")
    print(
        f"{len(after)} files identical (SHA-256; memory.db row for row), integrity_check: {check}"
    )
    print(f"\ndemo passed in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
