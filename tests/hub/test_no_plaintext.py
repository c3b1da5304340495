"""The hub never sees a plaintext, a file name or a key (issue 4, "Sync").

A real agent protects sources full of known markers — in file contents (compressible
and incompressible), in file and directory names, in a SQLite database's rows and
schema, in a JSONL log and in lineage labels — checkpoints twice and syncs to a real
hub in a box. With the hub stopped (so every file is flushed), every byte it stored
is scanned: the object store, the catalog and its WAL, the nats-server's JetStream
store, the hub's own logs, and every file name among them. No marker may appear,
raw or as UTF-16, hex or base64, and neither may the vault key, its subkeys or the
node's signing seed. Positive controls prove the markers are really on the node and
that the scanner finds each form when it is present.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import sqlite3
from pathlib import Path

import zstandard

from amber.protocol.keys import VaultKeys
from tests.support.hub import HubProcess
from tests.support.node import cli_ok
from tests.support.security import scan, scanned_bytes, walk_files

VAULT, NODE = "v1", "leaky"
TOKEN = secrets.token_hex(6)


def marker(what: str) -> str:
    return f"AMBERLEAK{what}{TOKEN}"


MARKERS = {
    name: marker(name)
    for name in (
        "TEXT",  # compressible file contents
        "RANDOM",  # inside incompressible file contents
        "MODEL",  # inside a model artifact
        "FILENAME",
        "DIRNAME",
        "ROOTDIR",  # the name of a source's root directory
        "SQLROW",
        "SQLTABLE",
        "DBNAME",
        "JSONL",
        "LOGNAME",
        "LINEAGEVALUE",
        "LINEAGEKEY",
        "APPENDED",  # written between the two checkpoints
    )
}


def random_with(needle: str, size: int, seed: int) -> bytes:
    """Incompressible bytes with ``needle`` at a few places (chunk boundaries vary)."""
    data = bytearray(random.Random(seed).randbytes(size))
    for at in (0, size // 3, size // 2, size - 200):
        data[at : at + len(needle)] = needle.encode()
    return bytes(data)


def make_sources(root: Path) -> dict[str, Path]:
    m = MARKERS
    files = root / m["ROOTDIR"]
    (files / "prompts" / m["DIRNAME"]).mkdir(parents=True)
    (files / "prompts" / m["DIRNAME"] / f"{m['FILENAME']}.txt").write_text(
        "".join(f"line {i}: remember {m['TEXT']} forever\n" for i in range(6000))
    )
    (files / "weights.bin").write_bytes(random_with(m["RANDOM"], 700_000, 1))
    (files / "empty").write_bytes(b"")

    model = root / "model.safetensors"
    model.write_bytes(random_with(m["MODEL"], 1_200_000, 2))

    db = root / f"memory-{m['DBNAME']}.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=wal")
    con.execute(f"CREATE TABLE mem_{m['SQLTABLE']}(id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany(
        f"INSERT INTO mem_{m['SQLTABLE']}(body) VALUES(?)",
        [(f"user said {m['SQLROW']} at turn {i}",) for i in range(2000)],
    )
    con.commit()
    con.close()

    log = root / "logs" / f"{m['LOGNAME']}.jsonl"
    log.parent.mkdir()
    with log.open("w") as fh:
        for i in range(1500):
            fh.write(json.dumps({"turn": i, "role": "user", "text": f"{m['JSONL']} #{i}"}) + "\n")
    return {"files": files, "model": model, "sqlite": db, "jsonl": log}


def change_sources(paths: dict[str, Path]) -> None:
    """Between the checkpoints: an appended log tail, new rows, a new file."""
    m = MARKERS
    with paths["jsonl"].open("a") as fh:
        for i in range(200):
            fh.write(json.dumps({"turn": 1500 + i, "text": f"{m['APPENDED']} {i}"}) + "\n")
    con = sqlite3.connect(paths["sqlite"])
    con.execute(f"INSERT INTO mem_{m['SQLTABLE']}(body) VALUES(?)", (m["APPENDED"],))
    con.commit()
    con.close()
    (paths["files"] / "prompts" / m["DIRNAME"] / "new.txt").write_text(m["APPENDED"] * 50)


def key_secrets(state: Path) -> dict[str, bytes]:
    vault_file, node_file = (state / "vault.key").read_bytes(), (state / "node.key").read_bytes()
    keys = VaultKeys.from_file_bytes(vault_file)
    out = {
        "vault key": vault_file[8:40],
        "signing seed": node_file[8:40],
        "chunk-id subkey": keys.chunk_id,
        "chunk encryption subkey": keys.chunk_enc,
        "metadata encryption subkey": keys.meta_enc,
        "metadata nonce subkey": keys.meta_nonce,
    }
    assert out["vault key"] == keys.master
    return out


def test_hub_stores_no_plaintext_names_or_keys(hub: HubProcess, tmp_path: Path) -> None:
    node_root = tmp_path / "node"
    paths = make_sources(node_root / "data")
    enrolment = tmp_path / f"{NODE}.json"
    hub.enrolment(VAULT, NODE, enrolment)
    state = node_root / "state"
    cli_ok("init", "--dir", state, "--node", NODE, "--vault", VAULT, "--enroll", enrolment)
    cfg = state / "agent.toml"
    lineage = [
        "--lineage",
        f"model={MARKERS['LINEAGEVALUE']}",
        "--lineage",
        f"{MARKERS['LINEAGEKEY']}=1",
    ]
    for kind, path in paths.items():
        cli_ok("--config", cfg, "source", "add", kind, "--kind", kind, "--path", path, *lineage)
    first = json.loads(cli_ok("--config", cfg, "checkpoint", "--json").out)
    change_sources(paths)
    second = json.loads(cli_ok("--config", cfg, "checkpoint", "--json").out)
    synced = json.loads(cli_ok("--config", cfg, "sync", "--once", "--json").out)
    assert synced["checkpoints"] == 2
    at_hub = [r["id"] for r in hub.checkpoints(vault=VAULT, node=NODE)]
    assert at_hub == [first["id"], second["id"]]
    chunk_bytes = sum(
        size for key, size in hub.stored_files().items() if f"/{VAULT}/packs/" in f"/{key}"
    )
    assert chunk_bytes > 700_000 + 1_200_000  # the incompressible data is at the hub
    hub.stop()  # flush everything to disk before reading it
    assert not hub.running

    leaks = {name: text.encode() for name, text in MARKERS.items()}
    leaks.update(key_secrets(state))

    # positive control 1: every marker really is on the node, in plain form
    on_node = {f.secret for f in scan(node_root / "data", leaks) if f.form == "raw"}
    on_node |= {f.secret for f in scan(cfg, leaks) if f.form == "raw"}  # lineage labels
    assert on_node >= set(MARKERS), set(MARKERS) - on_node

    # the scan: every byte (and every file name) the hub stored, and its logs
    scanned = sorted(str(p.relative_to(hub.data)) for p in walk_files([hub.data]))
    assert any(p.startswith("objects/") for p in scanned)
    assert any(p.startswith("nats/js/") for p in scanned), scanned
    assert "catalog.db" in scanned
    assert scanned_bytes(hub.data) > chunk_bytes
    findings = scan(hub.data, leaks)
    findings += scan(hub.log, leaks)
    assert not findings, "the hub stored secrets:\n" + "\n".join(map(str, findings))

    # positive control 2: the same scan finds each form once it is in the hub's tree
    planted = hub.data / "nats" / "js" / "planted" / f"x-{MARKERS['DIRNAME']}"
    planted.mkdir(parents=True)
    vault_key = leaks["vault key"]
    (planted / "blob").write_bytes(
        os.urandom(100)
        + MARKERS["TEXT"].encode("utf-16-le")
        + os.urandom(7)
        + base64.b64encode(b"\x01" + vault_key + b"\x02\x03")
        + leaks["signing seed"].hex().encode()
        + MARKERS["SQLROW"].encode()
    )
    (hub.data / "objects" / "planted.db").write_bytes(
        base64.urlsafe_b64encode(b"xy" + leaks["metadata encryption subkey"])
        + os.urandom(50)
        + zstandard.ZstdCompressor().compress(f"{MARKERS['JSONL']} ".encode() * 1000)
    )
    found = {(f.secret, f.form) for f in scan(hub.data, leaks)}
    assert {
        ("TEXT", "utf-16-le"),
        ("vault key", "base64/1"),
        ("signing seed", "hex"),
        ("SQLROW", "raw"),
        ("DIRNAME", "raw"),  # in a directory name
        ("metadata encryption subkey", "base64url/2"),
        ("JSONL", "raw+zstd"),  # compressed, not encrypted
    } <= found, found
