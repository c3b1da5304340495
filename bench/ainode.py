"""A deterministic 1 GiB "AI node" for the end-to-end benches, and its mutation.

What a production AI node holds, with the byte statistics that matter to a backup
tool (see ``datagen.py`` for the model-like generators):

``models/``   three model files of bf16/fp16/fp32-like weights (512 + 208 + 90 MiB =
              810 MiB, about 850 MB): barely compressible, the bulk of the node;
``memory/agent.db``  an agent-memory SQLite database (~80 MB, WAL mode, 4 KiB pages):
              threads, messages (text) with an index on (thread, time), and one
              768-dim float32 embedding per message (a BLOB);
``logs/``     five days of JSONL agent logs (~50 MB): one JSON object per line;
``prompts/``  200 prompt, tool, template and policy files (text and YAML-ish, 1-24 KiB).

:func:`mutate` then makes the changes of a day of operation: ~1 % of the largest model
rewritten in four contiguous regions (a fine-tune patch), 1,000 messages (with their
embeddings) inserted into the database, 2 MiB appended to the newest log, and 5 prompts
edited.

Everything is a pure function of ``(seed, scale)``. The generated tree is cached under
``bench/.work/ainode/`` (gitignored) keyed by seed, scale and generator version, so a
rerun only copies it; benches mutate a *copy* (:func:`working_copy`), never the cache.

    .venv/bin/python bench/ainode.py                  # build (or find) the 1 GiB node
    .venv/bin/python bench/ainode.py --quick          # 1/8 scale (~125 MiB)
    .venv/bin/python bench/ainode.py --copy DIR --mutate   # a mutated copy in DIR

Sources, as an Amber agent (and restic, on the same paths) protects them: see
:data:`SOURCES`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import blake3
from datagen import model_like_block, text_like_bytes, write_model_file

MiB = 1024 * 1024
GEN_VERSION = 1  # bump when the generated content changes, to invalidate caches
DEFAULT_SEED = 2026
QUICK_SCALE = 0.125
BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"

# (file name, size in MiB at scale 1, dtype)
MODELS = (
    ("llm-7b-instruct.bf16.safetensors", 512, "bf16"),
    ("vision-encoder.fp16.safetensors", 208, "fp16"),
    ("embedder.fp32.bin", 90, "fp32"),
)
DB_TARGET = 80_000_000  # bytes at scale 1
EMBED_DIM = 768
LOG_DAYS = 5
LOG_TARGET = 50_000_000  # bytes at scale 1, over all days
PROMPT_DIRS = (("system", 60, ".md"), ("tools", 60, ".yaml"), ("templates", 40, ".j2"))
POLICY_COUNT = 40

# name -> (Amber source kind, path relative to the node root)
SOURCES: dict[str, tuple[str, str]] = {
    "models": ("model", "models"),
    "memory": ("sqlite", "memory/agent.db"),
    "logs": ("jsonl", "logs"),
    "prompts": ("files", "prompts"),
}

# mutation: fraction of the largest model rewritten, in this many contiguous regions
MUTATE_MODEL_FRACTION = 0.01
MUTATE_REGIONS = 4
MUTATE_ROWS = 1000
MUTATE_LOG_BYTES = 2 * MiB
MUTATE_PROMPTS = 5


# --------------------------------------------------------------------------- generation


def _rng(seed: int | str, what: str) -> random.Random:
    h = blake3.blake3(f"amber/bench/ainode/v{GEN_VERSION}/{seed}/{what}".encode()).digest(8)
    return random.Random(int.from_bytes(h, "big"))


class _Text:
    """Sequential reader over the seekable text stream of one seed."""

    def __init__(self, seed: str) -> None:
        self.seed, self.block, self.buf, self.off = seed, 0, "", 0

    def take(self, n: int) -> str:
        if self.off + n > len(self.buf):
            fresh = text_like_bytes(max(n, MiB), f"{self.seed}@{self.block}").decode("ascii")
            self.buf, self.off, self.block = self.buf[self.off :] + fresh, 0, self.block + 1
        out = self.buf[self.off : self.off + n]
        self.off += n
        return out


def _write_models(root: Path, seed: int, scale: float) -> None:
    for name, mib, dtype in MODELS:
        size = int(mib * MiB * scale) // 4 * 4
        write_model_file(root / "models" / name, size, f"{seed}/{name}", dtype)


_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE threads(id INTEGER PRIMARY KEY, title TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE messages(
    id INTEGER PRIMARY KEY, thread_id INTEGER NOT NULL, role TEXT NOT NULL,
    content TEXT NOT NULL, tokens INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE INDEX messages_thread ON messages(thread_id, created_at);
CREATE TABLE embeddings(
    message_id INTEGER PRIMARY KEY, model TEXT NOT NULL, dim INTEGER NOT NULL,
    vec BLOB NOT NULL);
CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ROLES = ("user", "assistant", "assistant", "tool", "system")
_T0 = 1_795_000_000.0  # a fixed epoch (late 2026) for generated timestamps


def _insert_messages(
    con: sqlite3.Connection,
    rng: random.Random,
    text: _Text,
    emb_seed: str,
    first_id: int,
    count: int,
    threads: list[int],
    t_start: float,
) -> None:
    """``count`` messages (ids from ``first_id``) with one embedding each."""
    width = EMBED_DIM * 4
    vecs = model_like_block(emb_seed, "fp32", (first_id - 1) * width, count * width, sigma=0.036)
    msgs, embs = [], []
    for k in range(count):
        mid = first_id + k
        length = int(min(4000, max(40, rng.lognormvariate(6.0, 0.8))))
        msgs.append(
            (
                mid,
                rng.choice(threads),
                rng.choice(_ROLES),
                text.take(length),
                length // 4,
                t_start + k * 7.5 + rng.random(),
            )
        )
        embs.append((mid, "nomic-embed-text-v1.5", EMBED_DIM, vecs[k * width : (k + 1) * width]))
    con.executemany("INSERT INTO messages VALUES(?,?,?,?,?,?)", msgs)
    con.executemany("INSERT INTO embeddings VALUES(?,?,?,?)", embs)


def _write_db(root: Path, seed: int, scale: float) -> None:
    path = root / "memory" / "agent.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    target = int(DB_TARGET * scale)
    rng, text = _rng(seed, "db"), _Text(f"{seed}/db")
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.executescript(_SCHEMA)
        n_threads = max(20, int(1500 * scale))
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO threads VALUES(?,?,?)",
            [(i, text.take(rng.randint(20, 60)), _T0 + i * 600.0) for i in range(1, n_threads + 1)],
        )
        con.executemany(
            "INSERT INTO kv VALUES(?,?)",
            [(f"agent/state/{i}", text.take(rng.randint(50, 400))) for i in range(200)],
        )
        next_id, t = 1, _T0
        threads = list(range(1, n_threads + 1))
        while True:
            _insert_messages(con, rng, text, f"{seed}/emb", next_id, 500, threads, t)
            next_id, t = next_id + 500, t + 500 * 7.5
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            if pages * 4096 >= target:
                break
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def _log_line(rng: random.Random, text: _Text, ts: float, node: str) -> bytes:
    event = rng.choice(("llm.call", "tool.call", "memory.write", "retrieval", "turn.end"))
    obj = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1e3) % 1000:03d}Z",
        "level": "info" if rng.random() < 0.93 else rng.choice(("warn", "error", "debug")),
        "node": node,
        "thread": rng.randint(1, 1500),
        "event": event,
        "latency_ms": int(rng.lognormvariate(5.5, 0.9)),
        "tokens_in": rng.randint(20, 4000),
        "tokens_out": rng.randint(1, 1200),
        "text": text.take(int(min(3000, max(20, rng.lognormvariate(5.3, 1.0))))),
    }
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _log_name(day: int) -> str:
    return f"agent-2026-11-{20 + day:02d}.jsonl"


def _append_log(path: Path, rng: random.Random, text: _Text, nbytes: int, ts: float) -> float:
    written = 0
    lines: list[bytes] = []
    while written < nbytes:
        line = _log_line(rng, text, ts, "edge-01")
        lines.append(line)
        written += len(line)
        ts += rng.expovariate(1 / 1.7)
    with open(path, "ab") as f:
        f.write(b"".join(lines))
    return ts


def _write_logs(root: Path, seed: int, scale: float) -> None:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    per_day = int(LOG_TARGET * scale / LOG_DAYS)
    for day in range(1, LOG_DAYS + 1):
        rng, text = _rng(seed, f"log{day}"), _Text(f"{seed}/log{day}")
        _append_log(root / "logs" / _log_name(day), rng, text, per_day, _T0 + day * 86400)


def _prompt_body(rng: random.Random, text: _Text, kind: str, name: str) -> bytes:
    size = int(min(24 * 1024, max(1024, rng.lognormvariate(8.4, 0.7))))
    if kind == "md":
        parts = [f"# {name}\n\nYou are an edge assistant for site {rng.randint(1, 99)}.\n\n"]
        while sum(map(len, parts)) < size:
            parts.append(f"## {text.take(30).strip()}\n\n{text.take(rng.randint(200, 900))}\n\n")
    elif kind == "j2":
        parts = ["{% extends 'base.j2' %}\n{% block body %}\n"]
        while sum(map(len, parts)) < size:
            parts.append(f"{{{{ {text.take(12).strip()} }}}} {text.take(rng.randint(80, 400))}\n")
        parts.append("{% endblock %}\n")
    else:  # yaml-ish
        parts = [f"name: {name}\nversion: {rng.randint(1, 9)}.{rng.randint(0, 30)}\nrules:\n"]
        while sum(map(len, parts)) < size:
            parts.append(
                f"  - id: r{rng.randint(1000, 9999)}\n    when: {text.take(40)!r}\n"
                f"    action: {rng.choice(('allow', 'deny', 'redact', 'escalate'))}\n"
                f"    note: {text.take(rng.randint(40, 200))!r}\n"
            )
    return "".join(parts).encode("utf-8", "replace")


def _prompt_files() -> list[tuple[str, str]]:
    """(relative path, kind) of every prompt/policy file, in a fixed order."""
    out = []
    for sub, count, ext in PROMPT_DIRS:
        for i in range(count):
            out.append((f"{sub}/{sub[:-1] if sub.endswith('s') else sub}-{i:03d}{ext}", ext[1:]))
    for i in range(POLICY_COUNT):
        out.append((f"policies/policy-{i:03d}.yaml", "yaml"))
    return out


def _write_prompts(root: Path, seed: int) -> None:
    rng, text = _rng(seed, "prompts"), _Text(f"{seed}/prompts")
    for rel, kind in _prompt_files():
        path = root / "prompts" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_prompt_body(rng, text, kind, Path(rel).stem))


def tree_stats(root: Path) -> dict[str, Any]:
    """Bytes and files per top-level folder, and in all."""
    out: dict[str, Any] = {"files": 0, "bytes": 0, "parts": {}}
    for part in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = [p for p in (root / part).rglob("*") if p.is_file()]
        n = sum(p.stat().st_size for p in files)
        out["parts"][part] = {"files": len(files), "bytes": n}
        out["files"] += len(files)
        out["bytes"] += n
    return out


def generate(root: Path, seed: int = DEFAULT_SEED, scale: float = 1.0) -> dict[str, Any]:
    """Write the node into ``root`` (which must not exist); return its stats."""
    root.mkdir(parents=True)
    _write_models(root, seed, scale)
    _write_db(root, seed, scale)
    _write_logs(root, seed, scale)
    _write_prompts(root, seed)
    return tree_stats(root)


def cache_dir(seed: int, scale: float) -> Path:
    return WORK_DIR / "ainode" / f"v{GEN_VERSION}-seed{seed}-scale{scale:g}"


def ensure_node(seed: int = DEFAULT_SEED, scale: float = 1.0, *, quiet: bool = False) -> Path:
    """The cached node tree for ``(seed, scale)``, generated on first use. Do not modify
    it: take a :func:`working_copy` to mutate."""
    base = cache_dir(seed, scale)
    root, marker = base / "node", base / "ainode.json"
    if marker.exists() and root.is_dir():
        return root
    if base.exists():
        shutil.rmtree(base)  # a half-written earlier attempt
    base.mkdir(parents=True)
    t0 = time.perf_counter()
    if not quiet:
        print(f"ainode: generating seed {seed} scale {scale:g} in {base} ...", file=sys.stderr)
    stats = generate(root, seed, scale)
    stats.update(seed=seed, scale=scale, version=GEN_VERSION)
    stats["generate_s"] = round(time.perf_counter() - t0, 1)
    # mtimes well in the past, as on a node whose files were written long ago (Amber
    # re-reads files modified within 2 s of its previous scan, so they must be older)
    old = time.time() - 86400
    for p in [root, *root.rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)
    marker.write_text(json.dumps(stats, indent=2))
    if not quiet:
        print(
            f"ainode: {stats['bytes'] / MiB:.0f} MiB in {stats['files']} files "
            f"({stats['generate_s']} s)",
            file=sys.stderr,
        )
    return root


def node_stats(root: Path) -> dict[str, Any]:
    marker = root.parent / "ainode.json"
    return json.loads(marker.read_text()) if marker.exists() else tree_stats(root)


def working_copy(src: Path, dst: Path) -> Path:
    """Replace ``dst`` with a copy of ``src`` (reflinks where the filesystem can), keeping
    modes and times."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(src, dst, symlinks=True)
    return dst


# --------------------------------------------------------------------------- mutation


def _largest_model(root: Path) -> Path:
    models = sorted((root / "models").iterdir(), key=lambda p: (-p.stat().st_size, p.name))
    return models[0]


def mutate(root: Path, seed: int = DEFAULT_SEED, round_: int = 1) -> dict[str, Any]:
    """Apply a day of changes to the node at ``root`` in place; return what changed.

    Deterministic in ``(seed, round_)``; apply each round once to a copy of the cache.
    """
    rng = _rng(seed, f"mutate{round_}")
    out: dict[str, Any] = {}

    # 1. a fine-tune patch: ~1 % of the largest model, in a few contiguous regions
    model = _largest_model(root)
    size = model.stat().st_size
    region = int(size * MUTATE_MODEL_FRACTION / MUTATE_REGIONS) // 2 * 2
    offsets = []
    with open(model, "r+b") as f:
        for i in range(MUTATE_REGIONS):
            lo = size * i // MUTATE_REGIONS
            hi = size * (i + 1) // MUTATE_REGIONS - region
            off = rng.randrange(lo, max(lo + 1, hi)) // 2 * 2
            f.seek(off)
            f.write(model_like_block(f"{seed}/finetune{round_}", "bf16", off, region))
            offsets.append(off)
    out["model"] = {"file": model.name, "bytes": region * MUTATE_REGIONS, "offsets": offsets}

    # 2. 1,000 messages (and their embeddings) into the agent's memory
    db = root / "memory" / "agent.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        last = con.execute("SELECT max(id) FROM messages").fetchone()[0]
        n_threads = con.execute("SELECT max(id) FROM threads").fetchone()[0]
        t_last = con.execute("SELECT max(created_at) FROM messages").fetchone()[0]
        active = sorted(rng.sample(range(1, n_threads + 1), min(20, n_threads)))
        con.execute("BEGIN")
        _insert_messages(
            con,
            rng,
            _Text(f"{seed}/db-mutate{round_}"),
            f"{seed}/emb",
            last + 1,
            MUTATE_ROWS,
            active,
            t_last + 60.0,
        )
        con.execute(
            "INSERT OR REPLACE INTO kv VALUES(?,?)", ("agent/state/cursor", str(last + MUTATE_ROWS))
        )
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    out["db"] = {"rows": MUTATE_ROWS, "threads": len(active)}

    # 3. 2 MiB more of today's log
    log = root / "logs" / _log_name(LOG_DAYS)
    before = log.stat().st_size
    _append_log(
        log,
        _rng(seed, f"log-mutate{round_}"),
        _Text(f"{seed}/log-mutate{round_}"),
        MUTATE_LOG_BYTES,
        _T0 + (LOG_DAYS + round_) * 86400,
    )
    out["log"] = {"file": log.name, "appended": log.stat().st_size - before}

    # 4. five prompts edited: one paragraph rewritten in the middle of each
    text = _Text(f"{seed}/prompt-mutate{round_}")
    files = _prompt_files()
    edited = []
    for rel, _kind in rng.sample(files, MUTATE_PROMPTS):
        path = root / "prompts" / rel
        data = path.read_bytes()
        mid = len(data) // 2
        new = text.take(rng.randint(150, 600)).encode()
        path.write_bytes(data[:mid] + new + data[mid + len(new) // 2 :])
        edited.append(rel)
    out["prompts"] = edited
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build (or find) the cached bench AI node.")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--scale", type=float, default=1.0, help="size factor (1.0 = ~1 GiB)")
    p.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE}")
    p.add_argument("--copy", metavar="DIR", help="also copy the node to DIR")
    p.add_argument("--mutate", action="store_true", help="mutate the copy (needs --copy)")
    args = p.parse_args(argv)
    scale = QUICK_SCALE if args.quick else args.scale
    root = ensure_node(args.seed, scale)
    print(json.dumps({"root": str(root), **node_stats(root)}, indent=2))
    if args.copy:
        dst = working_copy(root, Path(args.copy))
        if args.mutate:
            print(json.dumps(mutate(dst, args.seed), indent=2))
    elif args.mutate:
        p.error("--mutate changes files: give --copy DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
