"""A hub configured with an S3 store (SeaweedFS): sync lands objects under Object Lock,
and a node that lost its disk restores from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.hub import HubProcess
from tests.support.node import Agent
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
