"""Hostile input through a node's own, legitimate credentials (issue 4, "Faults and bad
input"): malformed, oversized or wrongly signed messages on the node's ingest subject
are rejected without being stored, counted per node in the admin API's status and
logged with the node's name; bad requests get an ErrorReply; and the hub keeps
serving: afterwards a real agent of another node checkpoints and syncs.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.errors import MaxPayloadError

from amber.protocol import wire
from amber.protocol.chunk import HEADER, MAX_CHUNK_SIZE
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import (
    KIND_CHECKPOINT,
    KIND_MANIFEST,
    SIG_SIZE,
    Manifest,
    record_id,
    seal,
)
from tests.support.hub import HubProcess
from tests.support.hubtls import host_port, hub_nats_tls, tls_socket
from tests.support.node import cli_ok
from tests.support.procs import wait_for
from tests.support.security import checkpoint_record, connect

VAULT, NODE = "v1", "h1"
INGEST, RPC = f"amber.{VAULT}.{NODE}.ingest", f"amber.{VAULT}.{NODE}.rpc"
KEYS, SIGNER = VaultKeys.generate(), SigningKey.generate()
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    h = HubProcess(tmp_path_factory.mktemp("hostile") / "hub").start()
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture(scope="module")
def hostile(hub: HubProcess) -> dict[str, Any]:
    return hub.enrolment(VAULT, NODE, hub.data.parent / f"{NODE}.json", api=True)


# --- message builders ------------------------------------------------------------------


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def blob(n: int = 100, *, magic: bytes = b"AMBC", version: int = 1, flags: int = 0) -> bytes:
    return HEADER.pack(magic, version, flags, 0, n) + os.urandom(n + 16)


def chunk_put(cid: bytes, data: bytes) -> bytes:
    return pack({"v": 1, "t": "chunk.put", "id": cid, "blob": data})


def record_put(data: bytes, kind: int, rid: bytes | None = None) -> bytes:
    rid = record_id(data) if rid is None else rid
    return wire.encode(wire.RecordPut(id=rid, kind=kind, data=data))


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def cp_public(**overrides: Any) -> dict[str, Any]:
    pub = {
        "vault": VAULT,
        "node": NODE,
        "seq": 0,
        "prev": None,
        "time_us": int(time.time() * 1e6),
        "manifests": {},
        "labels": {},
        "kind": "regular",
    }
    return {**pub, **overrides}


def manifest_record(**public: Any) -> bytes:
    m = Manifest(vault=VAULT, node=NODE, source="s", kind="files", tier="warm", time_us=1)
    pub = {**m.public(), **public}
    return seal(KIND_MANIFEST, pub, m.sealed(), KEYS, SIGNER)


def valid_checkpoint() -> bytes:
    return checkpoint_record(KEYS, SIGNER, VAULT, NODE)


def sealed_checkpoint(**public: Any) -> bytes:
    """A checkpoint record, validly signed, whose public part says anything."""
    return seal(KIND_CHECKPOINT, cp_public(**public), {"note": ""}, KEYS, SIGNER)


CP0 = valid_checkpoint()


def signer_swapped() -> bytes:
    """A record signed by one key that names another key as its signer."""
    data = valid_checkpoint()
    other = SigningKey.generate().public
    at = len(data) - SIG_SIZE - 32
    return data[:at] + other + data[at + 32 :]


# name: (build the payload, a fragment of the reason the hub logs, lower case)
MALFORMED: dict[str, tuple[Callable[[], bytes], str]] = {
    # not a wire message at all
    "garbage": (lambda: b"\xc1" + os.urandom(500), "msgpack"),
    "empty": (lambda: b"", "msgpack"),
    "text": (lambda: b'{"v": 1, "t": "chunk.put"}', "msgpack"),
    "msgpack-list": (lambda: pack([1, "chunk.put", b"x"]), "not a map"),
    "deep-nesting": (lambda: b"\x91" * 5000 + b"\xc0", "msgpack"),
    "ext-type": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": msgpack.ExtType(5, b"x")}),
        "extension type",
    ),
    "timestamp": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": msgpack.Timestamp(1, 2)}),
        "timestamp",
    ),
    "array-bomb": (lambda: b"\xdd\xff\xff\xff\xff", "msgpack"),
    # a map with the wrong types, fields or version
    "id-is-str": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": "00" * 32, "blob": blob()}),
        "chunk.put.id",
    ),
    "blob-is-int": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": os.urandom(32), "blob": 7}),
        "chunk.put.blob",
    ),
    "missing-field": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": os.urandom(32)}),
        "blob",
    ),
    "extra-field": (
        lambda: pack({"v": 1, "t": "chunk.put", "id": os.urandom(32), "blob": blob(), "x": 1}),
        "chunk.put",
    ),
    "kind-is-str": (
        lambda: pack({"v": 1, "t": "record.put", "id": os.urandom(32), "kind": "2", "data": b""}),
        "record.put.kind",
    ),
    "version-2": (
        lambda: pack({"v": 2, "t": "chunk.put", "id": os.urandom(32), "blob": blob()}),
        "version 2",
    ),
    "version-true": (
        lambda: pack({"v": True, "t": "chunk.put", "id": os.urandom(32), "blob": blob()}),
        "version true",
    ),
    "non-str-key": (lambda: pack({1: 1, "v": 1, "t": "chunk.put"}), "msgpack"),
    # unknown, or not an ingest message
    "unknown-type": (
        lambda: pack({"v": 1, "t": "chunk.delete", "id": os.urandom(32)}),
        "'chunk.delete'",
    ),
    "type-is-int": (lambda: pack({"v": 1, "t": 3}), "type 3"),
    "request-on-ingest": (
        lambda: wire.encode(wire.ChunkQuery(ids=(os.urandom(32),))),
        "chunk.query is not an ingest message",
    ),
    "reply-on-ingest": (
        lambda: wire.encode(wire.ErrorReply(code="x", message="y")),
        "error is not an ingest message",
    ),
    # chunk blobs with a bad header
    "chunk-bad-magic": (lambda: chunk_put(os.urandom(32), blob(magic=b"EVIL")), "bad magic"),
    "chunk-bad-version": (lambda: chunk_put(os.urandom(32), blob(version=9)), "version 9"),
    "chunk-bad-flags": (lambda: chunk_put(os.urandom(32), blob(flags=0x80)), "flags 0x80"),
    "chunk-reserved": (
        lambda: chunk_put(os.urandom(32), HEADER.pack(b"AMBC", 1, 0, 1, 10) + b"\0" * 26),
        "/0x1",
    ),
    "chunk-truncated": (lambda: chunk_put(os.urandom(32), b"AMBC\x01"), "shorter than"),
    "chunk-no-tag": (
        lambda: chunk_put(os.urandom(32), HEADER.pack(b"AMBC", 1, 0, 0, 0) + b"\0"),
        "tag",
    ),
    "chunk-claims-too-much": (
        lambda: chunk_put(
            os.urandom(32), HEADER.pack(b"AMBC", 1, 0, 0, MAX_CHUNK_SIZE + 1) + b"\0" * 64
        ),
        "claims",
    ),
    "chunk-short-id": (lambda: chunk_put(os.urandom(31), blob()), "32 bytes"),
    "chunk-long-id": (lambda: chunk_put(os.urandom(33), blob()), "32 bytes"),
    # under NATS's max_payload but over the wire protocol's message limit
    "oversized-message": (
        lambda: chunk_put(os.urandom(32), blob(8 * MiB - 32 * 1024)),
        "exceeds",
    ),
    # records: framing, signature, ownership
    "record-id-mismatch": (
        lambda: record_put(valid_checkpoint(), KIND_CHECKPOINT, os.urandom(32)),
        "does not match its bytes",
    ),
    "record-flipped-old-id": (
        lambda: record_put(flip(CP0, 40), KIND_CHECKPOINT, record_id(CP0)),
        "does not match its bytes",
    ),
    "record-bad-signature-body": (
        lambda: record_put(flip(valid_checkpoint(), 40), KIND_CHECKPOINT),
        "signature",
    ),
    "record-bad-signature-sig": (
        lambda: record_put(flip(valid_checkpoint(), -1), KIND_CHECKPOINT),
        "signature",
    ),
    "record-signer-swapped": (lambda: record_put(signer_swapped(), KIND_CHECKPOINT), "signature"),
    "record-truncated": (
        lambda: record_put(valid_checkpoint()[:-10], KIND_CHECKPOINT),
        "truncated",
    ),
    "record-not-a-record": (lambda: record_put(b"\0" * 200, KIND_CHECKPOINT), "bad magic"),
    "record-kind-mismatch": (
        lambda: record_put(valid_checkpoint(), KIND_MANIFEST),
        "kind does not match",
    ),
    "record-unknown-kind": (
        lambda: record_put(seal(3, cp_public(), {}, KEYS, SIGNER), 3),
        "unknown kind 3",
    ),
    "message-unknown-kind": (
        lambda: record_put(valid_checkpoint(), 3),
        "kind does not match",
    ),
    "checkpoint-other-node": (
        lambda: record_put(checkpoint_record(KEYS, SIGNER, VAULT, "b1"), KIND_CHECKPOINT),
        "a record of v1/b1 was sent by node v1/h1",
    ),
    "checkpoint-other-vault": (
        lambda: record_put(checkpoint_record(KEYS, SIGNER, "v2", NODE), KIND_CHECKPOINT),
        "a record of v2/h1 was sent by node v1/h1",
    ),
    "checkpoint-bad-kind": (
        lambda: record_put(sealed_checkpoint(kind="evil"), KIND_CHECKPOINT),
        "'evil'",
    ),
    "checkpoint-wrong-types": (
        lambda: record_put(sealed_checkpoint(seq="0"), KIND_CHECKPOINT),
        "checkpoint.seq",
    ),
    "checkpoint-seq0-with-prev": (
        lambda: record_put(sealed_checkpoint(prev=os.urandom(32)), KIND_CHECKPOINT),
        "seq 0 must have no previous",
    ),
    "checkpoint-time-overflow": (
        lambda: record_put(sealed_checkpoint(time_us=2**64 - 1), KIND_CHECKPOINT),
        "time_us",
    ),
    "checkpoint-seq-overflow": (
        lambda: record_put(sealed_checkpoint(seq=2**64 - 1, prev=os.urandom(32)), KIND_CHECKPOINT),
        "seq",
    ),
    "manifest-other-node": (
        lambda: record_put(manifest_record(node="b1"), KIND_MANIFEST),
        "a record of v1/b1 was sent by node v1/h1",
    ),
    "manifest-size-overflow": (
        lambda: record_put(manifest_record(size=2**64 - 1), KIND_MANIFEST),
        "size",
    ),
    "manifest-time-overflow": (
        lambda: record_put(manifest_record(time_us=2**63), KIND_MANIFEST),
        "time_us",
    ),
    "manifest-unknown-tier": (
        lambda: record_put(manifest_record(tier="forever-free"), KIND_MANIFEST),
        "'forever-free'",
    ),
    "manifest-unknown-kind": (
        lambda: record_put(manifest_record(kind="exe"), KIND_MANIFEST),
        "'exe'",
    ),
    "manifest-bad-chunk-id": (
        lambda: record_put(manifest_record(chunks=[b"x"]), KIND_MANIFEST),
        "manifest.chunks",
    ),
}


# --- helpers -----------------------------------------------------------------------------


def rejection_lines(hub: HubProcess) -> list[str]:
    return [
        line
        for line in hub.output().splitlines()
        if "rejected" in line and f"{VAULT}/{NODE}" in line
    ]


async def ingest_stream_state(hub: HubProcess) -> Any:
    """The ingest stream's state, seen with the hub's own NATS user."""
    password = json.loads((hub.data / "secrets.json").read_text())["nats_password"]
    nc = await nats.connect(
        [hub.nats_url], user="amber-hub", password=password, **hub_nats_tls(hub.data)
    )
    try:
        return (await nc.jetstream(timeout=5).stream_info("AMBER_INGEST")).state
    finally:
        await nc.close()


async def publish(nc: Any, payload: bytes) -> None:
    """Into the node's own ingest stream: JetStream acknowledges it, so the hub gets it."""
    ack = await nc.jetstream(timeout=10).publish(INGEST, payload)
    assert ack.stream == "AMBER_INGEST"


async def expect_rejected(hub: HubProcess, nc: Any, payload: bytes) -> str:
    """Publish ``payload``; the hub must reject it: counted, logged, nothing stored."""
    before = hub.holdings()
    count, lines = hub.rejected(VAULT, NODE), len(rejection_lines(hub))
    await publish(nc, payload)
    await asyncio.to_thread(
        wait_for,
        lambda: hub.rejected(VAULT, NODE) > count,
        10,
        f"the hub to count the rejection (stderr tail: {hub.output()[-1500:]})",
    )
    assert hub.rejected(VAULT, NODE) == count + 1
    logged = await asyncio.to_thread(
        wait_for, lambda: rejection_lines(hub)[lines:], 5, "the rejection in the hub's log"
    )
    assert len(logged) == 1, logged
    await asyncio.sleep(0.05)
    assert hub.holdings() == before
    assert hub.running
    return str(logged[0])


# --- ingest --------------------------------------------------------------------------------


def match_reasons(reasons: dict[str, str], lines: list[str]) -> dict[str, str]:
    """Pair every case with a distinct log line that contains its reason (a bipartite
    matching, so a vague reason cannot take the line a precise one needs)."""
    owner: dict[int, str] = {}

    def assign(case: str, seen: set[int]) -> bool:
        for i, line in enumerate(lines):
            if i in seen or reasons[case] not in line.lower():
                continue
            seen.add(i)
            if i not in owner or assign(owner[i], seen):
                owner[i] = case
                return True
        return False

    unmatched = [case for case in reasons if not assign(case, set())]
    assert not unmatched, "no log line gives the reason for: " + ", ".join(
        f"{c} ({reasons[c]!r})" for c in unmatched
    )
    return {case: lines[i] for i, case in owner.items()}


async def test_malformed_ingest_is_rejected(hub: HubProcess, hostile: dict[str, Any]) -> None:
    """Every case enters the stream (JetStream acknowledges it) and is then rejected:
    counted once, logged once with the node's name and the reason, nothing stored."""
    before = hub.holdings()
    count, seen = hub.rejected(VAULT, NODE), len(rejection_lines(hub))
    nc = await connect(hostile)
    try:
        for build, _ in MALFORMED.values():
            await publish(nc, build())
    finally:
        await nc.close()
    want = count + len(MALFORMED)
    await asyncio.to_thread(
        wait_for,
        lambda: hub.rejected(VAULT, NODE) >= want,
        20,
        f"{len(MALFORMED)} rejections (got {hub.rejected(VAULT, NODE) - count}; "
        f"hub log tail: {hub.output()[-3000:]})",
    )
    await asyncio.sleep(0.5)  # nothing is counted twice, nothing is retried
    assert hub.rejected(VAULT, NODE) == want
    lines = rejection_lines(hub)[seen:]
    assert len(lines) == len(MALFORMED), "\n".join(lines)
    matched = match_reasons({k: reason for k, (_, reason) in MALFORMED.items()}, lines)
    assert all("node v1/h1" in line for line in matched.values())
    assert hub.holdings() == before
    assert "Traceback" not in hub.output()
    assert hub.running
    # nothing is left in the ingest stream to be retried
    stream = await ingest_stream_state(hub)
    assert stream.messages == 0, stream


async def test_chain_fork_is_rejected(hub: HubProcess, hostile: dict[str, Any]) -> None:
    first = valid_checkpoint()
    nc = await connect(hostile)
    try:
        count = hub.rejected(VAULT, NODE)
        await publish(nc, record_put(first, KIND_CHECKPOINT))
        rows = await asyncio.to_thread(
            wait_for, lambda: hub.checkpoints(node=NODE), 10, "the first checkpoint"
        )
        assert [(r["seq"], r["id"]) for r in rows] == [(0, record_id(first).hex())]
        assert hub.rejected(VAULT, NODE) == count

        # another seq 0 (a different id): the chain would fork
        fork = checkpoint_record(KEYS, SIGNER, VAULT, NODE, time_us=int(time.time() * 1e6) + 7)
        assert record_id(fork) != record_id(first)
        line = await expect_rejected(hub, nc, record_put(fork, KIND_CHECKPOINT))
        assert "fork" in line
        # the same fork signed by another key
        other = checkpoint_record(KEYS, SigningKey.generate(), VAULT, NODE, time_us=5)
        await expect_rejected(hub, nc, record_put(other, KIND_CHECKPOINT))
        # seq 1 that names a checkpoint other than the head as its previous one
        bad_prev = checkpoint_record(KEYS, SIGNER, VAULT, NODE, seq=1, prev=os.urandom(32))
        await expect_rejected(hub, nc, record_put(bad_prev, KIND_CHECKPOINT))
        # the legitimate next one is still accepted
        good = checkpoint_record(KEYS, SIGNER, VAULT, NODE, seq=1, prev=record_id(first))
        await publish(nc, record_put(good, KIND_CHECKPOINT))
        rows = await asyncio.to_thread(
            wait_for, lambda: len(hub.checkpoints(node=NODE)) == 2, 10, "the second checkpoint"
        )
        assert [r["id"] for r in hub.checkpoints(node=NODE)] == [
            record_id(first).hex(),
            record_id(good).hex(),
        ]
    finally:
        await nc.close()


async def test_payload_over_max_payload_is_refused(
    hub: HubProcess, hostile: dict[str, Any]
) -> None:
    """Over NATS's max_payload (8 MiB): nats-py refuses it, and so does the server when
    a client does not check (a raw protocol connection)."""
    before, count = hub.holdings(), hub.rejected(VAULT, NODE)
    payload = chunk_put(os.urandom(32), blob(8 * MiB + 1024))
    nc = await connect(hostile)
    try:
        assert nc.max_payload == 8 * MiB
        with pytest.raises(MaxPayloadError):
            await nc.publish(INGEST, payload)
        with pytest.raises(MaxPayloadError):
            await nc.jetstream(timeout=5).publish(INGEST, payload)
        assert nc.is_connected
    finally:
        await nc.close()

    host, port = host_port(hub.nats_url)
    reply = await asyncio.to_thread(raw_publish, hub.data, host, port, hostile, payload)
    assert "maximum payload violation" in reply.lower(), reply
    await asyncio.sleep(0.3)
    assert hub.holdings() == before
    assert hub.rejected(VAULT, NODE) == count


def raw_publish(data: Path, host: str, port: int, enr: dict[str, Any], payload: bytes) -> str:
    """Speak the NATS protocol directly (over TLS), with no client-side size check."""
    with tls_socket(data, host, port) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        connect_opts = {"user": enr["user"], "pass": enr["password"], "verbose": False}
        s.sendall(b"CONNECT " + json.dumps(connect_opts).encode() + b"\r\nPING\r\n")
        assert f.readline() == b"PONG\r\n"
        try:
            s.sendall(f"PUB {INGEST} {len(payload)}\r\n".encode() + payload + b"\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        out = b""
        try:
            while line := f.readline():
                out += line
                if line.startswith(b"-ERR"):
                    break
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            pass  # the server closes the link after -ERR (an SSL EOF under TLS)
        return out.decode(errors="replace")


# --- rpc and heartbeats ------------------------------------------------------------------

BAD_REQUESTS: dict[str, bytes] = {
    "garbage": b"\xc1\xc1\xc1",
    "empty": b"",
    "not-a-map": pack([1, 2, 3]),
    "wrong-types": pack({"v": 1, "t": "checkpoints.list", "node": 5, "after_seq": "x"}),
    "unknown-type": pack({"v": 1, "t": "objects.delete", "ids": []}),
    "not-a-request": wire.encode(wire.ChunkPut(id=os.urandom(32), blob=blob())),
    "error-as-request": wire.encode(wire.ErrorReply(code="a", message="b")),
    "version-9": pack({"v": 9, "t": "chunk.query", "ids": []}),
    "too-many-ids": pack({"v": 1, "t": "fetch", "ids": [os.urandom(32)] * 16_385}),
    "seq-overflow": wire.encode(wire.ListCheckpoints(node=NODE, after_seq=2**64 - 1)),
    "other-node": wire.encode(wire.ListCheckpoints(node="g1", after_seq=-1)),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_requests_get_an_error_reply(
    hub: HubProcess, hostile: dict[str, Any], case: str
) -> None:
    nc = await connect(hostile)
    try:
        reply = await nc.request(RPC, BAD_REQUESTS[case], timeout=10)
        answer = wire.decode(reply.data)
        assert isinstance(answer, wire.ErrorReply), answer
        assert answer.code != "internal", answer  # a refusal, not a failure
        assert answer.message
        # and the hub still answers a good request right after
        ok = await nc.request(RPC, wire.encode(wire.ChunkQuery(ids=(b"\1" * 32,))), timeout=10)
        assert wire.decode(ok.data) == wire.ChunkQueryReply(missing=(b"\1" * 32,))
    finally:
        await nc.close()
    assert hub.running


async def test_bad_heartbeats_are_ignored(hub: HubProcess, hostile: dict[str, Any]) -> None:
    nc = await connect(hostile)
    try:
        for payload in (b"\xc1", pack({"v": 1, "t": "heartbeat", "node": 1}), b""):
            await nc.publish(f"amber.{VAULT}.{NODE}.status", payload)
        await nc.flush()
        ok = await nc.request(RPC, wire.encode(wire.ChunkQuery(ids=())), timeout=10)
        assert wire.decode(ok.data) == wire.ChunkQueryReply(missing=())
    finally:
        await nc.close()
    assert hub.running


# --- afterwards ----------------------------------------------------------------------------


def test_hub_keeps_serving_a_real_agent(hub: HubProcess, hostile: dict[str, Any]) -> None:
    """After all of the above, a real agent of another node enrols, checkpoints and syncs,
    and the hostile node's rejections are on record in the admin API."""
    assert hub.rejected(VAULT, NODE) >= len(MALFORMED)
    root = hub.data.parent / "good"
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello from a good node\n" * 100)
    (src / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    enrolment = root / "g1.json"
    hub.enrolment(VAULT, "g1", enrolment)
    state = root / "state"
    cli_ok("init", "--dir", state, "--node", "g1", "--vault", VAULT, "--enroll", enrolment)
    cfg = state / "agent.toml"
    cli_ok("--config", cfg, "source", "add", "docs", "--kind", "files", "--path", src)
    cp = json.loads(cli_ok("--config", cfg, "checkpoint", "--json").out)
    synced = json.loads(cli_ok("--config", cfg, "sync", "--once", "--json").out)
    assert synced["checkpoints"] == 1
    rows = hub.checkpoints(vault=VAULT, node="g1")
    assert [r["id"] for r in rows] == [cp["id"]]
    assert hub.rejected(VAULT, "g1") == 0
    assert hub.running
