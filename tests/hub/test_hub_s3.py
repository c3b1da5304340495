"""A hub configured with an S3 store (SeaweedFS): sync lands objects under Object Lock,
and a node that lost its disk restores from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amber.agent.cli import main as agent

PY = sys.executable


def _start_hub(data: Path, store_url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [PY, "-m", "amber.hub.cli", "--data", str(data), "serve", "--store", store_url]
    argv += ["--nats-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / "hub.err", "wb"),
    )
    deadline = time.monotonic() + 30
    while not (data / "hub.json").exists():
        assert proc.poll() is None, (data.parent / "hub.err").read_text()
        assert time.monotonic() < deadline, "hub did not start"
        time.sleep(0.05)
    return proc


def _stop_hub(proc: subprocess.Popen[bytes], data: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    pid_file = data / "nats" / "nats-server.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def s3_hub(s3_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    bucket = s3_server.make_bucket(object_lock=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    url = f"s3://{bucket}/amber?endpoint={s3_server.endpoint_url}&region={s3_server.region}"
    data = tmp_path / "hub"
    data.mkdir()
    proc = _start_hub(data, url, env)
    try:
        yield data, bucket
    finally:
        _stop_hub(proc, data)


def _hub_cli(data: Path, *args: str) -> str:
    res = subprocess.run(
        [PY, "-m", "amber.hub.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout


def test_sync_to_s3_hub_locks_objects_and_restores(s3_hub, s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, bucket = s3_hub
    enrol = tmp_path / "n1.enrol"
    _hub_cli(data, "node", "add", "n1", "--vault", "v1", "--out", str(enrol))
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(3 * 1024 * 1024)
    (src / "weights.bin").write_bytes(payload)
    state = tmp_path / "state"
    cfg = ["--config", str(state / "agent.toml")]
    assert (
        agent(
            ["init", "--dir", str(state), "--node", "n1", "--vault", "v1", "--enroll", str(enrol)]
        )
        == 0
    )
    assert (
        agent(
            [
                *cfg,
                "source",
                "add",
                "model",
                "--kind",
                "model",
                "--path",
                str(src),
                "--tier",
                "cold",
            ]
        )
        == 0
    )
    assert agent([*cfg, "checkpoint"]) == 0
    assert agent([*cfg, "sync", "--once"]) == 0

    client = s3_server.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    assert any("/packs/" in k for k in keys) and any("/records/" in k for k in keys)
    assert not any("/chunks/" in k for k in keys)  # chunks travel in pack objects
    now = datetime.now(UTC)
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > now  # immutable: a thief cannot erase it

    # the node loses its disk; a fresh one with the vault key restores from S3 via the hub
    state2 = tmp_path / "state2"
    assert (
        agent(
            [
                "init",
                "--dir",
                str(state2),
                "--node",
                "n1",
                "--vault",
                "v1",
                "--vault-key",
                str(state / "vault.key"),
                "--enroll",
                str(enrol),
            ]
        )
        == 0
    )
    out = tmp_path / "restored"
    assert (
        agent(["--config", str(state2 / "agent.toml"), "restore", "latest", "--to", str(out)]) == 0
    )
    assert (out / "model" / "weights.bin").read_bytes() == payload
    listed = json.loads(_hub_cli(data, "checkpoints", "--json"))
    assert [c["seq"] for c in listed] == [0]


def test_only_referenced_packs_are_locked(s3_hub, s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A stolen node uploads junk it never references: the hub stores it unlocked, so
    a sweep can remove it; the packs a manifest it accepted names are locked."""
    import asyncio
    import sqlite3

    import nats

    from amber.protocol import wire
    from amber.protocol.chunk import encode_chunk
    from amber.protocol.keys import VaultKeys

    data, bucket = s3_hub
    enrol = tmp_path / "n1.enrol"
    _hub_cli(data, "node", "add", "n1", "--vault", "v1", "--out", str(enrol))
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(1024 * 1024))
    state = tmp_path / "state"
    cfg = ["--config", str(state / "agent.toml")]
    init = ["init", "--dir", str(state), "--node", "n1", "--vault", "v1", "--enroll", str(enrol)]
    assert agent(init) == 0
    assert agent([*cfg, "source", "add", "model", "--kind", "model", "--path", str(src)]) == 0
    assert agent([*cfg, "checkpoint"]) == 0
    assert agent([*cfg, "sync", "--once"]) == 0

    junk_id, blob = encode_chunk(VaultKeys.generate(), os.urandom(64 * 1024))
    enr = json.loads(enrol.read_text())

    async def upload_junk() -> None:
        nc = await nats.connect(
            enr["nats_servers"],
            user=enr["user"],
            password=enr["password"],
            inbox_prefix=enr["inbox_prefix"],
        )
        try:
            put = wire.encode(wire.ChunkPut(id=junk_id, blob=blob))
            await nc.jetstream().publish("amber.v1.n1.ingest", put, timeout=10)
        finally:
            await nc.close()

    asyncio.run(upload_junk())

    def packs() -> dict[bytes, bytes]:
        con = sqlite3.connect(f"file:{data / 'catalog.db'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id, pack FROM objects WHERE kind='c'").fetchall()
        finally:
            con.close()
        return {r[0]: r[1] for r in rows}

    deadline = time.monotonic() + 30
    while junk_id not in packs():
        assert time.monotonic() < deadline, "the junk chunk was never stored"
        time.sleep(0.1)
    where = packs()
    junk_pack = where.pop(junk_id)
    client = s3_server.client()

    def lock(pack: bytes) -> object:
        key = f"amber/v1/packs/{pack.hex()[:2]}/{pack.hex()}"
        return client.head_object(Bucket=bucket, Key=key).get("ObjectLockMode")

    assert lock(junk_pack) is None  # never referenced: never locked, removable
    assert where and all(lock(p) == "COMPLIANCE" for p in set(where.values()))
