"""A node's NATS credentials reach only that node's subjects (DESIGN.md, "Wire (NATS)").

A real hub in a box runs as a process; nodes connect with the credentials its
`amber-hub node add` wrote. Every refusal is checked as a refusal: the server's
permissions violation delivered to the client's error_cb (and the request that
never got an answer), an ErrorReply from the hub, or a failed connect — never only
the absence of data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig

from amber.protocol import wire
from amber.protocol.chunk import HEADER
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import KIND_CHECKPOINT, record_id
from tests.support.hub import HubProcess
from tests.support.hubtls import hub_nats_tls
from tests.support.procs import wait_for
from tests.support.security import Errors, checkpoint_record, connect

STREAM = "AMBER_INGEST"
DURABLE = "hub-ingest"
REFUSED = 0.5  # seconds to wait for an answer that must never come


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    root = tmp_path_factory.mktemp("perm")
    h = HubProcess(root / "hub").start()
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture(scope="module")
def enr(hub: HubProcess) -> dict[str, dict[str, Any]]:
    """Enrolments: a1 and b1 in vault v1, c1 in vault v2."""
    out = {}
    for vault, node in (("v1", "a1"), ("v1", "b1"), ("v2", "c1")):
        out[node] = hub.enrolment(vault, node, hub.data.parent / f"{node}.json", api=node != "a1")
    return out


async def hub_conn(hub: HubProcess) -> Any:
    """The hub's own (unrestricted) NATS user, to look at the stream from outside."""
    password = json.loads((hub.data / "secrets.json").read_text())["nats_password"]
    return await nats.connect(
        [hub.nats_url],
        user="amber-hub",
        password=password,
        allow_reconnect=False,
        **hub_nats_tls(hub.data),
    )


def node_users(hub: HubProcess) -> dict[str, dict[str, list[str]]]:
    """Each node user's allowed publish and subscribe patterns, from the nats-server
    config the hub generated (its users are a JSON list)."""
    text = (hub.data / "nats" / "nats.conf").read_text()
    at = text.index("users:") + len("users:")
    users, _ = json.JSONDecoder().raw_decode(text[at:].lstrip())
    return {
        u["user"]: {
            kind: list(u["permissions"].get(kind, {}).get("allow", []))
            for kind in ("publish", "subscribe")
        }
        for u in users
        if "permissions" in u
    }


def overlap(p: str, q: str) -> bool:
    """Whether two NATS subject patterns can match a common subject."""
    a, b = p.split("."), q.split(".")
    for x, y in zip(a, b, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(a) == len(b)


def concrete(pattern: str) -> str:
    """A subject the pattern matches."""
    return ".".join("x" if t in ("*", ">") else t for t in pattern.split("."))


async def settle(nc: Any) -> None:
    """Let the server's asynchronous -ERR reach the error callback."""
    await nc.flush(timeout=5)
    await asyncio.sleep(0.1)
    await nc.flush(timeout=5)


def blob(n: int = 64, fill: bytes = b"\x5a") -> bytes:
    """A chunk blob with a valid header (the hub cannot and does not decrypt it)."""
    return HEADER.pack(b"AMBC", 1, 0, 0, n) + fill * (n + 16)


async def rpc(nc: Any, subject: str, msg: wire.Message) -> wire.Message:
    reply = await nc.request(subject, wire.encode(msg), timeout=5)
    return wire.decode(reply.data)


# --- positive controls ---------------------------------------------------------------


async def test_node_uses_its_own_subjects(hub: HubProcess, enr: dict[str, dict[str, Any]]) -> None:
    errors = Errors()
    nc = await connect(enr["a1"], errors)
    try:
        js = nc.jetstream(timeout=5)
        cid = os.urandom(32)
        ack = await js.publish(
            "amber.v1.a1.ingest",
            wire.encode(wire.ChunkPut(id=cid, blob=blob())),
            headers={"Nats-Msg-Id": cid.hex()},
        )
        assert ack.stream == STREAM and ack.seq > 0
        assert enr["a1"]["inbox_prefix"]  # requests use the node's own inbox prefix
        receipt = await wait_for_receipt(nc, "amber.v1.a1.rpc", cid)
        assert receipt.durable == (cid,)
        listed = await rpc(nc, "amber.v1.a1.rpc", wire.ListCheckpoints(node="a1", after_seq=-1))
        assert isinstance(listed, wire.CheckpointList)
        await nc.publish(
            "amber.v1.a1.status",
            wire.encode(
                wire.Heartbeat(
                    node="a1",
                    time_us=1,
                    backlog_bytes=0,
                    backlog_chunks=0,
                    last_seq=-1,
                    last_checkpoint_us=0,
                    rpo_seconds=60,
                    agent_version="test",
                )
            ),
        )
        # its own durable command consumer (named in its permissions): pull and ack
        pulls = [
            p
            for p in node_users(hub)[enr["a1"]["user"]]["publish"]
            if p.startswith("$JS.API.CONSUMER.MSG.NEXT.")
        ]
        assert len(pulls) == 1, pulls
        stream, durable = pulls[0].split(".")[-2:]
        psub = await js.pull_subscribe_bind(
            durable=durable,
            stream=stream,
            inbox_prefix=(enr["a1"]["inbox_prefix"] + ".").encode(),
        )
        h = await hub_conn(hub)
        try:
            await h.jetstream(timeout=5).publish("amber.v1.a1.cmd", b"an order for a1")
        finally:
            await h.close()
        (order,) = await psub.fetch(1, timeout=5)
        assert order.data == b"an order for a1"
        await order.ack()
        await settle(nc)
        assert errors.seen == []
    finally:
        await nc.close()


async def wait_for_receipt(nc: Any, subject: str, oid: bytes) -> wire.Receipt:
    for _ in range(200):
        reply = await rpc(nc, subject, wire.ReceiptQuery(ids=(oid,)))
        assert isinstance(reply, wire.Receipt)
        if reply.durable:
            return reply
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hub never stored {oid.hex()}")


async def test_wrong_password_is_refused(hub: HubProcess, enr: dict[str, dict[str, Any]]) -> None:
    for user, password in (
        (enr["a1"]["user"], "not-" + enr["a1"]["password"]),
        (enr["a1"]["user"], enr["b1"]["password"]),  # B's password with A's user
        ("amber-hub", enr["a1"]["password"]),  # the hub's unrestricted user
        ("nobody", "nothing"),
    ):
        errors = Errors()
        with pytest.raises(NatsError) as info:
            await connect(
                {**enr["a1"], "user": user, "password": password},
                errors,
                max_reconnect_attempts=0,
            )
        assert "authorization violation" in str(info.value).lower()
        assert any("authorization violation" in t for t in errors.texts())


# --- another node's subjects -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ingest", "rpc", "status", "cmd"])
async def test_cannot_publish_into_another_nodes_subjects(
    hub: HubProcess, enr: dict[str, dict[str, Any]], kind: str
) -> None:
    errors = Errors()
    nc = await connect(enr["a1"], errors)
    try:
        target = f"amber.v1.b1.{kind}"
        await nc.publish(target, b"from a1")
        await settle(nc)
        assert errors.violations("publish", target), errors.texts()
        assert nc.is_connected  # refused, not just disconnected
    finally:
        await nc.close()


async def test_cannot_upload_or_request_as_another_node(
    hub: HubProcess, enr: dict[str, dict[str, Any]]
) -> None:
    """A JetStream publish and an rpc request on B's subjects fail, and the hub never
    saw them."""
    errors = Errors()
    nc = await connect(enr["a1"], errors)
    try:
        keys, signer = VaultKeys.generate(), SigningKey.generate()
        data = checkpoint_record(keys, signer, "v1", "b1")
        put = wire.RecordPut(id=record_id(data), kind=KIND_CHECKPOINT, data=data)
        js = nc.jetstream(timeout=REFUSED)
        with pytest.raises(NatsError):  # no PubAck: the message never entered the stream
            await js.publish("amber.v1.b1.ingest", wire.encode(put))
        with pytest.raises(NatsError):
            await nc.request(
                "amber.v1.b1.rpc",
                wire.encode(wire.ListCheckpoints(node="b1", after_seq=-1)),
                timeout=REFUSED,
            )
        await settle(nc)
        assert errors.violations("publish", "amber.v1.b1.ingest"), errors.texts()
        assert errors.violations("publish", "amber.v1.b1.rpc"), errors.texts()
        # a message A may send goes through behind them, so the hub has seen all A sent
        ack = await nc.jetstream(timeout=5).publish(
            "amber.v1.a1.ingest", wire.encode(wire.ChunkPut(id=os.urandom(32), blob=blob()))
        )
        assert ack.stream == STREAM
    finally:
        await nc.close()
    assert hub.checkpoints(node="b1") == []
    assert hub.rejected("v1", "b1") == 0


@pytest.mark.parametrize(
    "subject",
    [
        "amber.v1.b1.cmd",
        "amber.v1.b1.rpc",
        "amber.v1.b1.ingest",
        "amber.v1.b1.>",
        "amber.v1.*.cmd",
        "amber.>",
        "_INBOX_v1.b1.>",
        "_INBOX_v1.>",
        "_INBOX.>",
        "$JS.>",
        ">",
    ],
)
async def test_cannot_subscribe_to_another_nodes_subjects(
    hub: HubProcess, enr: dict[str, dict[str, Any]], subject: str
) -> None:
    errors = Errors()
    nc = await connect(enr["a1"], errors)
    try:
        sub = await nc.subscribe(subject)
        await settle(nc)
        assert errors.violations("subscription", subject), errors.texts()
        assert nc.is_connected
        with pytest.raises(NatsError):  # and nothing arrives on it
            await sub.next_msg(timeout=0.05)
    finally:
        await nc.close()


async def test_cannot_read_another_nodes_commands_or_replies(
    hub: HubProcess, enr: dict[str, dict[str, Any]]
) -> None:
    """B's commands (its subject, and whatever JetStream subjects B's own user may use to
    pull and acknowledge them) and B's rpc replies are out of A's reach: each attempt is
    refused, and traffic that does flow to B never reaches A."""
    b_user = node_users(hub)[enr["b1"]["user"]]
    b_js = [p for p in b_user["publish"] if p.startswith("$JS.")]
    errors = Errors()
    a = await connect(enr["a1"], errors)
    b = await connect(enr["b1"])
    h = await hub_conn(hub)
    try:
        cmd_sub = await a.subscribe("amber.v1.b1.cmd")
        inbox_sub = await a.subscribe(enr["b1"]["inbox_prefix"] + ".>")
        tried = [concrete(p) for p in b_js] + [
            "$JS.API.CONSUMER.CREATE.AMBER_CMD",
            "$JS.API.CONSUMER.CREATE.AMBER_CMD.steal.amber.v1.b1.cmd",
            "$JS.API.CONSUMER.DURABLE.CREATE.AMBER_CMD.steal",
            "$JS.API.CONSUMER.MSG.NEXT.AMBER_CMD.steal",
        ]
        for subject in tried:
            await a.publish(subject, b'{"batch": 1}', reply=a.new_inbox())
        await settle(a)
        await h.publish("amber.v1.b1.cmd", b"order for b1")
        reply = await rpc(b, "amber.v1.b1.rpc", wire.ChunkQuery(ids=(os.urandom(32),)))
        assert isinstance(reply, wire.ChunkQueryReply)  # B's reply came through B's inbox
        for sub in (cmd_sub, inbox_sub):
            with pytest.raises(NatsError):
                await sub.next_msg(timeout=0.2)
        assert errors.violations("subscription", "amber.v1.b1.cmd")
        assert errors.violations("subscription", enr["b1"]["inbox_prefix"] + ".>")
        for subject in tried:
            assert errors.violations("publish", subject), (subject, errors.texts())
    finally:
        for nc in (a, b, h):
            await nc.close()


# --- the JetStream API -----------------------------------------------------------------


async def test_cannot_call_the_jetstream_api(
    hub: HubProcess, enr: dict[str, dict[str, Any]]
) -> None:
    """Info, delete, purge, consumer deletion and stream creation are refused by the
    server, and the stream keeps its data: the hub is paused (SIGSTOP) so a message
    stays in the stream while A tries, and is ingested once the hub resumes."""
    errors = Errors()
    a = await connect(enr["a1"], errors)
    h = await hub_conn(hub)
    assert hub.proc is not None
    paused = False
    try:
        hjs = h.jetstream(timeout=5)
        keys, signer = VaultKeys.generate(), SigningKey.generate()
        data = checkpoint_record(keys, signer, "v1", "a1")
        cp_id = record_id(data)
        os.kill(hub.proc.pid, signal.SIGSTOP)
        paused = True
        ack = await a.jetstream(timeout=5).publish(
            "amber.v1.a1.ingest",
            wire.encode(wire.RecordPut(id=cp_id, kind=KIND_CHECKPOINT, data=data)),
            headers={"Nats-Msg-Id": cp_id.hex()},
        )
        before = await hjs.stream_info(STREAM)
        assert before.state.messages >= 1 and before.state.last_seq == ack.seq

        js = a.jetstream(timeout=REFUSED)
        attempts = {
            f"$JS.API.STREAM.INFO.{STREAM}": js.stream_info(STREAM),
            f"$JS.API.STREAM.DELETE.{STREAM}": js.delete_stream(STREAM),
            f"$JS.API.STREAM.PURGE.{STREAM}": js.purge_stream(STREAM),
            f"$JS.API.CONSUMER.DELETE.{STREAM}.{DURABLE}": js.delete_consumer(STREAM, DURABLE),
            f"$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}": js.consumer_info(STREAM, DURABLE),
            f"$JS.API.STREAM.MSG.GET.{STREAM}": js.get_msg(STREAM, seq=ack.seq),
            f"$JS.API.STREAM.UPDATE.{STREAM}": js.update_stream(
                StreamConfig(name=STREAM, subjects=["amber.>"])
            ),
            "$JS.API.STREAM.CREATE.STEAL": js.add_stream(name="STEAL", subjects=["amber.v1.b1.>"]),
            "$JS.API.INFO": js.account_info(),
        }
        results = await asyncio.gather(*attempts.values(), return_exceptions=True)
        for subject, res in zip(attempts, results, strict=True):
            assert isinstance(res, NatsError | asyncio.TimeoutError), (subject, res)
        await settle(a)
        for subject in attempts:
            assert errors.violations("publish", subject), (subject, errors.texts())
        assert a.is_connected

        after = await hjs.stream_info(STREAM)
        assert after.config.subjects == before.config.subjects
        assert after.state.messages == before.state.messages
        assert (after.state.first_seq, after.state.last_seq) == (
            before.state.first_seq,
            before.state.last_seq,
        )
        assert (await hjs.consumer_info(STREAM, DURABLE)).name == DURABLE
        names = [s.config.name for s in await hjs.streams_info()]
        assert STREAM in names and "STEAL" not in names
    finally:
        if paused:
            os.kill(hub.proc.pid, signal.SIGCONT)
        await a.close()
        await h.close()
    # the message A could not delete is ingested once the hub runs again
    rows = wait_for(lambda: hub.checkpoints(node="a1"), what="a1's checkpoint at the hub")
    assert [r["id"] for r in rows] == [cp_id.hex()]


# --- the hub's rpc ---------------------------------------------------------------------


async def test_cannot_list_another_nodes_checkpoints(
    hub: HubProcess, enr: dict[str, dict[str, Any]]
) -> None:
    keys, signer = VaultKeys.generate(), SigningKey.generate()
    data = checkpoint_record(keys, signer, "v1", "b1")
    b = await connect(enr["b1"])
    try:
        await b.jetstream(timeout=5).publish(
            "amber.v1.b1.ingest",
            wire.encode(wire.RecordPut(id=record_id(data), kind=KIND_CHECKPOINT, data=data)),
        )
        wait_for(lambda: hub.checkpoints(node="b1"), what="b1's checkpoint at the hub")
        own = await rpc(b, "amber.v1.b1.rpc", wire.ListCheckpoints(node="b1", after_seq=-1))
        assert isinstance(own, wire.CheckpointList) and own.records == (data,)
    finally:
        await b.close()

    a = await connect(enr["a1"])
    try:
        for after in (-1, 0, 10**6):
            reply = await rpc(
                a, "amber.v1.a1.rpc", wire.ListCheckpoints(node="b1", after_seq=after)
            )
            assert isinstance(reply, wire.ErrorReply), reply
            assert reply.code == "NotFoundError"
            assert "own" in reply.message
    finally:
        await a.close()


async def test_other_vault_is_unreachable(hub: HubProcess, enr: dict[str, dict[str, Any]]) -> None:
    """c1 (vault v2) can neither publish nor subscribe under v1, and the hub answers its
    requests from vault v2 only, even for ids that exist in v1."""
    errors = Errors()
    nc = await connect(enr["c1"], errors)
    try:
        for subject in ("amber.v1.a1.ingest", "amber.v1.b1.rpc", "amber.v1.a1.status"):
            await nc.publish(subject, b"from v2")
        for subject in ("amber.v1.a1.cmd", "amber.v1.>", "_INBOX_v1.a1.>"):
            await nc.subscribe(subject)
        await settle(nc)
        for subject in ("amber.v1.a1.ingest", "amber.v1.b1.rpc", "amber.v1.a1.status"):
            assert errors.violations("publish", subject), errors.texts()
        for subject in ("amber.v1.a1.cmd", "amber.v1.>", "_INBOX_v1.a1.>"):
            assert errors.violations("subscription", subject), errors.texts()

        b1_rows = wait_for(lambda: hub.checkpoints(vault="v1", node="b1"), what="b1's checkpoint")
        v1_id = bytes.fromhex(b1_rows[0]["id"])
        fetched = await rpc(nc, "amber.v2.c1.rpc", wire.FetchRequest(ids=(v1_id,)))
        assert isinstance(fetched, wire.FetchReply)
        assert fetched.ids == () and fetched.missing == (v1_id,)
        receipt = await rpc(nc, "amber.v2.c1.rpc", wire.ReceiptQuery(ids=(v1_id,)))
        assert isinstance(receipt, wire.Receipt) and receipt.durable == ()
        listed = await rpc(nc, "amber.v2.c1.rpc", wire.ListCheckpoints(node="b1", after_seq=-1))
        assert isinstance(listed, wire.ErrorReply)
    finally:
        await nc.close()


async def test_enrolled_nodes_share_no_subjects(hub: HubProcess, tmp_path: Path) -> None:
    """Node x-y of vault w and node y of vault w-x are different nodes: different NATS
    users, and no subject pattern one may publish or subscribe to overlaps the other's
    (for every pair of enrolled nodes, read from the server's generated config)."""
    first = hub.enrolment("w", "x-y", tmp_path / "first.json", api=True)
    second = hub.enrolment("w-x", "y", tmp_path / "second.json", api=True)
    assert first["user"] != second["user"]
    users = node_users(hub)
    assert first["user"] in users and second["user"] in users
    shared = [
        (u1, u2, kind, p1, p2)
        for u1, perm1 in users.items()
        for u2, perm2 in users.items()
        if u1 < u2
        for kind in ("publish", "subscribe")
        for p1 in perm1[kind]
        for p2 in perm2[kind]
        if overlap(p1, p2)
    ]
    assert not shared, shared
    for enr, own, other in (
        (first, "amber.w.x-y", "amber.w-x.y"),
        (second, "amber.w-x.y", "amber.w.x-y"),
    ):
        errors = Errors()
        nc = await connect(enr, errors)
        try:
            reply = await rpc(nc, f"{own}.rpc", wire.ChunkQuery(ids=()))
            assert isinstance(reply, wire.ChunkQueryReply)
            await nc.publish(f"{other}.ingest", b"x")
            await settle(nc)
            assert errors.violations("publish", f"{other}.ingest"), errors.texts()
        finally:
            await nc.close()
