"""The `amber-agent` command line end to end: init, keys, sources, checkpoints, status."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amber.agent.config import TierPolicy, load_config
from tests.support.data import age_tree, make_files_tree, make_sqlite, tree, write
from tests.support.node import Node, cli, cli_proc, fingerprint_of


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_config_journal_and_private_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = cli("init", "--dir", state, "--node", "edge-1", "--vault", "fleet")
    assert res.code == 0, res
    for name in ("agent.toml", "journal.db", "vault.key", "node.key"):
        assert (state / name).is_file(), name
    assert mode(state / "vault.key") == 0o600
    assert mode(state / "node.key") == 0o600
    assert mode(state / "journal.db") & 0o077 == 0
    cfg = load_config(state / "agent.toml")
    assert (cfg.node, cfg.vault, cfg.state_dir) == ("edge-1", "fleet", state.resolve())
    # the written config is usable as is
    st = cli("--config", state / "agent.toml", "status", "--json")
    assert st.code == 0, st
    assert st.json()["head"] is None
    assert (st.json()["node"], st.json()["vault"]) == ("edge-1", "fleet")
    # a second init over the same state refuses to clobber it
    again = cli("init", "--dir", state, "--node", "edge-1", "--vault", "fleet")
    assert again.code == 3, again
    assert "already exists" in again.err


def test_keygen_gives_several_nodes_one_vault_key(tmp_path: Path) -> None:
    keyfile = tmp_path / "fleet.key"
    res = cli("keygen", "--out", keyfile)
    assert res.code == 0, res
    assert mode(keyfile) == 0o600
    fp = fingerprint_of(res.out)
    a = Node.init(tmp_path / "a", node="a", vault="fleet", vault_key=keyfile)
    b = Node.init(tmp_path / "b", node="b", vault="fleet", vault_key=keyfile)
    assert a.fingerprint == b.fingerprint == fp
    assert (a.state / "vault.key").read_bytes() == (b.state / "vault.key").read_bytes()
    # a fresh init without --vault-key makes a different key
    c = Node.init(tmp_path / "c", node="c", vault="fleet")
    assert c.fingerprint != fp
    # keygen never overwrites an existing key
    assert cli("keygen", "--out", keyfile).code == 20


def test_key_export_and_passphrase_import(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "vault.export"
    monkeypatch.setenv("AMBER_VAULT_PASSPHRASE", "correct horse battery staple")
    node.ok("key-export", "--out", export)
    assert mode(export) == 0o600
    assert node.fingerprint not in export.read_bytes().decode("latin-1")
    other = Node.init(tmp_path / "other", node="n2", vault="v1", vault_key=export)
    assert other.fingerprint == node.fingerprint

    monkeypatch.setenv("AMBER_VAULT_PASSPHRASE", "wrong horse")
    bad = cli(
        "init", "--dir", tmp_path / "third", "--node", "n3", "--vault", "v1",
        "--vault-key", export,
    )  # fmt: skip
    assert bad.code == 20, bad
    assert "passphrase" in bad.err
    assert not (tmp_path / "third" / "vault.key").exists()


def test_source_add_every_kind(node: Node, data: Path) -> None:
    make_files_tree(data / "tree")
    write(data / "model.bin", b"\x00" * 1000)
    write(data / "log.jsonl", '{"a": 1}\n')
    make_sqlite(data / "mem.db")
    node.add("prompts", "files", data / "tree", "--tier", "hot", "--exclude", "*.tmp")
    node.add("weights", "model", data / "model.bin", "--tier", "cold", "--lineage", "model=v3")
    node.add("log", "jsonl", data / "log.jsonl")
    node.add("memory", "sqlite", data / "mem.db", "--tier", "hot")
    rows = node.ok("source", "list", "--json").json()
    assert {(r["name"], r["kind"], r["tier"]) for r in rows} == {
        ("prompts", "files", "hot"),
        ("weights", "model", "cold"),
        ("log", "jsonl", "warm"),
        ("memory", "sqlite", "hot"),
    }
    cfg = load_config(node.config)
    assert cfg.source("prompts").exclude == ("*.tmp",)
    assert cfg.source("weights").lineage == {"model": "v3"}
    assert cfg.source("memory").path == (data / "mem.db").resolve()
    # names are unique, kinds are checked
    assert node.run("source", "add", "log", "--kind", "jsonl", "--path", data).code == 3
    assert node.run("source", "add", "x", "--kind", "tape", "--path", data).code == 2
    node.ok("source", "remove", "log")
    assert "log" not in {r["name"] for r in node.ok("source", "list", "--json").json()}


def test_checkpoint_json_checkpoints_and_labels(node: Node, data: Path) -> None:
    make_files_tree(data / "tree")
    write(data / "log.jsonl", '{"turn": 1}\n' * 100)
    node.add("prompts", "files", data / "tree")
    node.add("log", "jsonl", data / "log.jsonl")
    first = node.checkpoint("--label", "model=v3", "--label", "run=a=b")
    assert set(first) >= {
        "id", "seq", "time_us", "sources", "changed", "labels",
        "read_bytes", "new_chunks", "new_bytes", "dedup_chunks",
    }  # fmt: skip
    assert len(first["id"]) == 64 and int(first["id"], 16) >= 0
    assert first["seq"] == 0
    assert first["sources"] == ["log", "prompts"]
    assert sorted(first["changed"]) == ["log", "prompts"]
    assert first["labels"] == {"model": "v3", "run": "a=b"}
    assert first["read_bytes"] > 300_000
    assert first["new_chunks"] > 0 and first["new_bytes"] > 0
    assert abs(first["time_us"] / 1e6 - time.time()) < 60

    # only one source scanned; the other keeps its manifest in the new checkpoint
    write(data / "log.jsonl", '{"turn": 1}\n' * 100 + '{"turn": 2}\n')
    second = node.checkpoint("--source", "log")
    assert second["seq"] == 1
    assert second["sources"] == ["log", "prompts"]
    assert second["changed"] == ["log"]
    assert second["labels"] == {}
    assert second["read_bytes"] < 100

    plain = node.ok("checkpoint")
    third_id = plain.out.strip()
    assert len(third_id) == 64

    rows = node.checkpoints()
    assert [r["id"] for r in rows] == [first["id"], second["id"], third_id]
    assert [r["seq"] for r in rows] == [0, 1, 2]
    assert {r["kind"] for r in rows} == {"regular"}
    assert rows[0]["labels"] == {"model": "v3", "run": "a=b"}
    assert rows[0]["sources"] == ["log", "prompts"]
    assert rows[0]["synced"] is False
    text = node.ok("checkpoints").out
    assert first["id"][:16] in text and "model=v3" in text


def test_status_backlog_rpo_and_drift(node: Node, data: Path) -> None:
    make_files_tree(data / "tree")
    age_tree(data / "tree")
    db = make_sqlite(data / "mem.db")
    node.add("prompts", "files", data / "tree", "--tier", "hot")
    node.add("memory", "sqlite", db, "--tier", "warm")
    before = node.status()
    assert before["head"] is None
    assert before["backlog_chunks"] == 0
    for s in before["sources"]:
        assert s["drift"] == "never checkpointed"
        assert s["last_checkpoint_us"] is None and s["rpo_breached"] is True

    cp = node.checkpoint()
    st = node.status()
    assert st["head"]["id"] == cp["id"] and st["head"]["seq"] == 0
    assert st["backlog_chunks"] >= cp["new_chunks"] > 0
    assert st["backlog_bytes"] >= cp["new_bytes"]
    assert st["journal_bytes"] >= cp["new_bytes"]
    by = {s["name"]: s for s in st["sources"]}
    assert by["prompts"]["rpo_seconds"] == 900 and by["memory"]["rpo_seconds"] == 4 * 3600
    for s in by.values():
        assert s["drift"] == "unchanged", s
        assert 0 <= s["age_seconds"] < 60 and s["rpo_breached"] is False

    # drift: an edit, an added and a removed file; a new row in the database
    write(data / "tree" / "prompts" / "system.txt", "You are terse.\n")
    write(data / "tree" / "new.txt", "hello")
    (data / "tree" / "policies" / "allow.json").unlink()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO msgs(role, body) VALUES('user', 'hi')")
    con.commit()
    con.close()
    by = {s["name"]: s for s in node.status()["sources"]}
    assert by["prompts"]["drift"] == "changed"
    assert (by["prompts"]["added"], by["prompts"]["removed"], by["prompts"]["modified"]) == (
        1,
        1,
        1,
    )
    assert by["memory"]["drift"] == "changed"
    text = node.ok("status").out
    assert "drift: changed" in text and "+1 -1 ~1" in text

    node.checkpoint()
    by = {s["name"]: s for s in node.status()["sources"]}
    assert by["prompts"]["drift"] == "unchanged" and by["memory"]["drift"] == "unchanged"

    # an RPO shorter than the checkpoint's age is reported as breached
    cfg = load_config(node.config)
    node.configure(tiers={**cfg.tiers, "hot": TierPolicy(interval=1, rpo=1)})
    time.sleep(1.2)
    by = {s["name"]: s for s in node.status()["sources"]}
    assert by["prompts"]["rpo_breached"] is True and by["prompts"]["age_seconds"] > 1
    assert by["memory"]["rpo_breached"] is False
    assert "RPO BREACHED" in node.ok("status").out
    # a fresh checkpoint covers the source again, even though its content is unchanged
    again = node.checkpoint()
    assert again["changed"] == []
    by = {s["name"]: s for s in node.status()["sources"]}
    assert by["prompts"]["rpo_breached"] is False and by["prompts"]["age_seconds"] < 1
    assert by["prompts"]["last_checkpoint_us"] >= again["time_us"] - 1_000_000


def test_drift_ignores_a_touch_free_reread(node: Node, data: Path) -> None:
    """Reading files (as the restore test and backups do) is not drift."""
    make_files_tree(data / "tree")
    node.add("prompts", "files", data / "tree")
    node.checkpoint()
    tree(data / "tree")  # reads every file
    assert node.source_status("prompts")["drift"] == "unchanged"


def test_verify_ok(node: Node, data: Path) -> None:
    make_files_tree(data / "tree")
    make_sqlite(data / "mem.db")
    node.add("prompts", "files", data / "tree")
    node.add("memory", "sqlite", data / "mem.db")
    a = node.checkpoint()
    write(data / "tree" / "more.txt", "x" * 5000)
    b = node.checkpoint()
    res = node.ok("verify")
    assert "verified 2 checkpoint(s)" in res.out
    assert a["id"][:16] in res.out and b["id"][:16] in res.out
    one = node.ok("verify", b["id"][:10])
    assert "verified 1 checkpoint(s)" in one.out
    assert node.ok("verify", "seq:0").out.startswith(a["id"][:16])
    assert node.ok("verify", "latest").out.startswith(b["id"][:16])


def test_config_from_environment(
    node: Node, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(data / "notes.txt", "remember this")
    monkeypatch.setenv("AMBER_AGENT_CONFIG", str(node.config))
    monkeypatch.chdir(tmp_path)
    res = cli("source", "add", "notes", "--kind", "files", "--path", data)
    assert res.code == 0, res
    cp = cli("checkpoint", "--json")
    assert cp.code == 0, cp
    assert [r["id"] for r in node.checkpoints()] == [cp.json()["id"]]
    # a real process reads the variable too; --config still wins over it
    env = {"AMBER_AGENT_CONFIG": str(node.config)}
    proc = cli_proc("checkpoints", "--json", env=env)
    assert proc.code == 0, proc
    assert [r["id"] for r in proc.json()] == [cp.json()["id"]]
    other = Node.init(tmp_path / "other", node="n2")
    assert cli("--config", other.config, "checkpoints", "--json").json() == []
    monkeypatch.delenv("AMBER_AGENT_CONFIG")
    missing = cli_proc("checkpoints", env={"AMBER_AGENT_CONFIG": str(tmp_path / "nope.toml")})
    assert missing.code == 3, missing
    assert "nope.toml" in missing.err and "AMBER_AGENT_CONFIG" in missing.err


def test_console_script_reports_errors_with_exit_codes(node: Node, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "amber-agent"
    if not exe.exists():
        pytest.skip("the amber-agent console script is not installed next to this Python")
    proc = subprocess.run(
        [exe, "--config", node.config, "restore", "deadbeef", "--to", tmp_path / "r"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 44, proc.stderr
    assert "deadbeef" in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
