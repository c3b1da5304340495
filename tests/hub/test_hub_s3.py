"""A hub configured with an S3 store (SeaweedFS): sync lands objects under Object Lock,
and a node that lost its disk restores from it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amber.protocol import wire
from amber.protocol.chunk import encode_chunk
from amber.protocol.keys import VaultKeys
from tests.support.hub import HubProcess
from tests.support.node import Agent
from tests.support.procs import wait_until
from tests.support.security import connect
from tests.support.servers import SeaweedS3


@pytest.fixture
def s3_hub(s3_server: SeaweedS3, tmp_path: Path) -> Iterator[tuple[HubProcess, str]]:
    """A hub in a box whose store is a fresh Object Lock bucket of the session's S3."""
    bucket = s3_server.make_bucket(object_lock=True)
    url = f"s3://{bucket}/amber?endpoint={s3_server.endpoint_url}&region={s3_server.region}"
    keys = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    hub = HubProcess(tmp_path / "hub", serve_options=["--store", url], env=keys)
    try:
        yield hub.start(), bucket
    finally:
        hub.cleanup()


def test_sync_to_s3_hub_locks_objects_and_restores(
    s3_hub: tuple[HubProcess, str], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    hub, bucket = s3_hub
    enrol = hub.enrol("n1", "v1", tmp_path / "n1.enrol")
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(3 * 1024 * 1024)
    (src / "weights.bin").write_bytes(payload)
    node = Agent.init(tmp_path / "state", "n1", "v1", enroll=enrol)
    node.add("model", "model", src, "--tier", "cold")
    node.ok("checkpoint")
    node.ok("sync", "--once")

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
    fresh = Agent.init(
        tmp_path / "state2", "n1", "v1", vault_key=node.state / "vault.key", enroll=enrol
    )
    out = tmp_path / "restored"
    fresh.restore_to("latest", out)
    assert (out / "model" / "weights.bin").read_bytes() == payload
    assert [c["seq"] for c in hub.checkpoints()] == [0]


def test_only_referenced_packs_are_locked(
    s3_hub: tuple[HubProcess, str], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    """A stolen node uploads junk it never references: the hub stores it unlocked, so
    a sweep can remove it; the packs a manifest it accepted names are locked."""
    hub, bucket = s3_hub
    enrol = hub.enrol("n1", "v1", tmp_path / "n1.enrol")
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(1024 * 1024))
    node = Agent.init(tmp_path / "state", "n1", "v1", enroll=enrol)
    node.add("model", "model", src)
    node.ok("checkpoint")
    node.ok("sync", "--once")

    junk_id, blob = encode_chunk(VaultKeys.generate(), os.urandom(64 * 1024))
    enr = json.loads(enrol.read_text())

    async def upload_junk() -> None:
        nc = await connect(enr)
        try:
            put = wire.encode(wire.ChunkPut(id=junk_id, blob=blob))
            await nc.jetstream().publish(wire.subject("v1", "n1", "ingest"), put, timeout=10)
        finally:
            await nc.close()

    asyncio.run(upload_junk())

    def packs() -> dict[bytes, bytes]:
        con = sqlite3.connect(f"file:{hub.data / 'catalog.db'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT id, pack FROM objects WHERE kind='c'").fetchall()
        finally:
            con.close()
        return {r[0]: r[1] for r in rows}

    wait_until("the junk chunk stored", lambda: junk_id in packs(), timeout=30)
    where = packs()
    junk_pack = where.pop(junk_id)
    client = s3_server.client()

    def lock(pack: bytes) -> object:
        key = f"amber/v1/packs/{pack.hex()[:2]}/{pack.hex()}"
        return client.head_object(Bucket=bucket, Key=key).get("ObjectLockMode")

    assert lock(junk_pack) is None  # never referenced: never locked, removable
    assert where and all(lock(p) == "COMPLIANCE" for p in set(where.values()))
