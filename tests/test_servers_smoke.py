"""Smoke tests for the real-server test bed in tests/support/servers.py."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import nats
import pytest
from botocore.exceptions import ClientError
from nats.js.api import StreamConfig

from tests.support.servers import NatsServer, SeaweedS3, ServerError, find_binary, free_port

MiB = 1024 * 1024


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- helpers


def test_find_binary_and_free_port() -> None:
    assert os.access(find_binary("nats-server"), os.X_OK)
    assert os.access(find_binary("weed"), os.X_OK)
    with pytest.raises(ServerError, match="no-such-binary"):
        find_binary("no-such-binary-amber")
    assert 0 < free_port() < 65536


# --------------------------------------------------------------------------- NATS


async def test_jetstream_dedup_pull_and_large_payload(nats_server: NatsServer) -> None:
    stream = _name("SMOKE")
    subject = f"smoke.{stream}.ingest"
    nc = await nats.connect(nats_server.url)
    try:
        async with asyncio.timeout(30):
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=stream, subjects=[subject]))

            ack = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "m-1"})
            assert ack.stream == stream
            assert ack.seq == 1
            assert not ack.duplicate

            again = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "m-1"})
            assert again.duplicate is True
            assert again.seq == 1

            # 2 MiB > the 1 MiB default: proves max_payload 8MB is in effect.
            assert nc.max_payload >= 8 * MiB
            big = os.urandom(2 * MiB)
            big_ack = await js.publish(subject, big, headers={"Nats-Msg-Id": "m-2"})
            assert big_ack.seq == 2
            assert not big_ack.duplicate

            psub = await js.pull_subscribe(subject, durable="smoke", stream=stream)
            msgs = await psub.fetch(2, timeout=5)
            assert [m.data for m in msgs] == [b"hello", big]
            assert msgs[0].headers is not None
            assert msgs[0].headers.get("Nats-Msg-Id") == "m-1"
            for m in msgs:
                await m.ack()

            info = await js.stream_info(stream)
            assert info.state.messages == 2
            await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_fresh_nats_kill_restart_keeps_stream(fresh_nats: NatsServer) -> None:
    stream = _name("DURABLE")
    subject = f"durable.{stream}"
    payloads = [os.urandom(1000 + i) for i in range(20)]

    nc = await nats.connect(fresh_nats.url)
    try:
        async with asyncio.timeout(30):
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
            for i, p in enumerate(payloads):
                await js.publish(subject, p, headers={"Nats-Msg-Id": f"id-{i}"})
    finally:
        await nc.close()

    port, old_pid = fresh_nats.port, fresh_nats.pid
    fresh_nats.kill()
    assert fresh_nats.pid is None
    fresh_nats.restart()
    assert fresh_nats.port == port
    assert fresh_nats.pid not in (None, old_pid)

    nc = await nats.connect(fresh_nats.url)
    try:
        async with asyncio.timeout(30):
            js = nc.jetstream()
            info = await js.stream_info(stream)
            assert info.state.messages == len(payloads)
            for seq, p in enumerate(payloads, start=1):
                msg = await js.get_msg(stream, seq)
                assert msg.data == p
            # The dedup window survives the restart too.
            dup = await js.publish(subject, payloads[0], headers={"Nats-Msg-Id": "id-0"})
            assert dup.duplicate is True
    finally:
        await nc.close()


async def test_fresh_nats_reload(fresh_nats: NatsServer) -> None:
    fresh_nats.write_config("# enrolment would add authorization here\n")
    fresh_nats.reload()
    fresh_nats.write_config("this is { not valid")
    with pytest.raises(ServerError, match="rejected"):
        fresh_nats.reload()
    # A failed reload leaves the server running on its old config.
    nc = await nats.connect(fresh_nats.url)
    await nc.close()


# --------------------------------------------------------------------------- S3


def test_s3_object_lock_compliance_refuses_version_delete(s3_server: SeaweedS3) -> None:
    s3 = s3_server.client()
    bucket = s3_server.make_bucket(object_lock=True)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"

    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    put = s3.put_object(
        Bucket=bucket,
        Key="chunks/abc",
        Body=b"immutable",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    version = put["VersionId"]
    assert version

    retention = s3.get_object_retention(Bucket=bucket, Key="chunks/abc", VersionId=version)
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    assert retention["Retention"]["RetainUntilDate"] == until

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key="chunks/abc", VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # COMPLIANCE cannot be bypassed, not even with the governance bypass header.
    with pytest.raises(ClientError):
        s3.delete_object(
            Bucket=bucket, Key="chunks/abc", VersionId=version, BypassGovernanceRetention=True
        )

    body = s3.get_object(Bucket=bucket, Key="chunks/abc", VersionId=version)["Body"].read()
    assert body == b"immutable"


def test_s3_plain_bucket_and_auth(s3_server: SeaweedS3) -> None:
    s3 = s3_server.client()
    bucket = s3_server.make_bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    s3.delete_object(Bucket=bucket, Key="k")
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=bucket, Key="k")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    # Writes to a bucket that does not exist fail as on AWS (no auto-create).
    with pytest.raises(ClientError) as nobucket:
        s3.put_object(Bucket=f"amber-missing-{uuid.uuid4().hex[:8]}", Key="k", Body=b"v")
    assert nobucket.value.response["Error"]["Code"] == "NoSuchBucket"
    # Unsigned requests are refused.
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{bucket}", timeout=10)
    assert unsigned.value.code == 403
