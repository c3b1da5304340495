"""A stolen node cannot hurt the others: upload leases, quotas, a bounded ingest stream.

Each test plays the attacker with a real hub in a box (hub and nats-server processes)
and real agents: a node that queries a shared model's chunk ids in a loop, holding their
upload leases, and a node that uploads more than its quota.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from nats.js.api import DiscardPolicy

from amber.protocol import wire
from amber.protocol.chunk import encode_chunk
from amber.protocol.keys import VaultKeys
from tests.support.data import make_memory, make_model
from tests.support.hub import HubProcess, new_agent
from tests.support.hubtls import hub_nats_tls
from tests.support.security import connect

pytestmark = pytest.mark.servers  # starts hub or nats-server processes itself

MiB = 1024 * 1024


class LeaseHog:
    """A stolen node's credentials asking about ``ids`` in a loop, in a thread."""

    def __init__(self, enrolment: Path, ids: list[bytes]) -> None:
        self.enr, self.ids = json.loads(enrolment.read_text()), ids
        self.stop, self.queries = threading.Event(), 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def _loop(self) -> None:
        nc = await connect(self.enr)
        subject = wire.subject(self.enr["vault"], self.enr["node"], "rpc")
        try:
            while not self.stop.is_set():
                msg = wire.encode(wire.ChunkQuery(ids=tuple(self.ids)))
                await nc.request(subject, msg, timeout=5)
                self.queries += 1
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def __enter__(self) -> LeaseHog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def test_a_node_looping_chunk_queries_cannot_stall_another_nodes_sync(
    tmp_path: Path, vault_key: Path
) -> None:
    hub = HubProcess(tmp_path / "hub", config="[limits]\nupload_lease = 3\n")
    try:
        hub.start()
        thief = new_agent(hub, tmp_path, "thief", "fleet", vault_key)
        honest = new_agent(hub, tmp_path, "honest", "fleet", vault_key)
        for agent in (thief, honest):  # the same model on both: the same chunk ids
            agent.add("model", "model", make_model(tmp_path / f"{agent.node}-model", 4 * MiB))
            agent.checkpoint()
        ids = [r[0] for r in thief.journal_query("SELECT id FROM chunks")]
        assert thief.enrolment is not None
        with LeaseHog(thief.enrolment, ids) as hog:
            while hog.queries < 3:  # it holds every lease before the honest node asks
                time.sleep(0.05)
            started = time.monotonic()
            res = honest.proc("sync", "--once", "--json", timeout=90)
            took = time.monotonic() - started
        assert res.code == 0, res
        assert hog.queries > 20
        # one lease term (3 s) plus a re-ask (5 s) and the upload, not the hog's whole run
        assert took < 45, f"the honest node's sync took {took:.1f} s"
        assert [c["seq"] for c in hub.checkpoints("honest", "fleet")] == [0]
    finally:
        hub.cleanup()


def _metric(url: str, name: str, labels: dict[str, str]) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_node_over_its_quota_is_refused_and_the_others_are_not(
    tmp_path: Path, vault_key: Path
) -> None:
    config = '[limits]\nbytes_per_day = "3MiB"\n[metrics]\nlisten = "127.0.0.1:0"\n'
    hub = HubProcess(tmp_path / "hub", config=config)
    try:
        hub.start()
        greedy = new_agent(hub, tmp_path, "greedy", "fleet", vault_key)
        other = new_agent(hub, tmp_path, "other", "fleet", vault_key)
        model = make_model(tmp_path / "greedy-model", 4 * MiB, seed=1)
        greedy.add("model", "model", model)
        greedy.checkpoint()
        greedy.sync()  # under quota when it asked: this pass goes through (4 MiB stored)
        make_model(tmp_path / "greedy-model", 2 * MiB, seed=2)  # new weights
        greedy.checkpoint()
        res = greedy.proc("sync", "--once", timeout=60)
        assert res.code == 43, res  # QuotaExceededError, docs/ERRORS.md
        assert "bytes_per_day" in res.err and "hint:" in res.err, res.err
        assert [c["seq"] for c in hub.checkpoints("greedy", "fleet")] == [0]
        # skipping the query does not help: ingest refuses its chunks, and says so by receipt
        assert greedy.enrolment is not None
        junk = _sneak_chunk(hub, greedy.enrolment)
        assert junk not in hub.catalog_object_ids("fleet")
        assert "QuotaExceededError" in _receipt_error(greedy.enrolment, junk)
        # the other node of the same vault syncs as if nothing happened
        other.add("memory", "files", make_memory(tmp_path / "other-memory"))
        other.checkpoint()
        assert other.proc("sync", "--once", timeout=60).code == 0
        assert [c["seq"] for c in hub.checkpoints("other", "fleet")] == [0]
        # the operator's alert: a counter by node and quota, and a log line
        url = hub.runtime["metrics_url"]
        labels = {"vault": "fleet", "node": "greedy", "quota": "bytes_per_day"}
        assert _metric(url, "amber_hub_quota_refusals_total", labels) >= 1
        assert "node fleet/greedy is over its bytes_per_day quota" in hub.log.read_text()
    finally:
        hub.cleanup()


def _sneak_chunk(hub: HubProcess, enrolment: Path) -> bytes:
    """Publish a well-formed chunk straight to the node's ingest subject; wait until the
    hub has handled it (refused: the node's rejected count rises; or stored). Its id."""
    cid, blob = encode_chunk(VaultKeys.generate(), b"sneaked past the chunk query" * 1000)
    enr = json.loads(enrolment.read_text())

    async def publish() -> None:
        nc = await connect(enr)
        try:
            subject = wire.subject(enr["vault"], enr["node"], "ingest")
            put = wire.encode(wire.ChunkPut(id=cid, blob=blob))
            await nc.jetstream().publish(subject, put, timeout=10)
        finally:
            await nc.close()

    def rejected() -> int:
        return int(hub.status()["ingest"]["rejected"].get(f"{enr['vault']}/{enr['node']}", 0))

    before = rejected()
    asyncio.run(publish())
    deadline = time.monotonic() + 30
    while rejected() == before and cid not in hub.catalog_object_ids(enr["vault"]):
        assert time.monotonic() < deadline, "the hub never handled the sneaked chunk"
        time.sleep(0.1)
    return cid


def _receipt_error(enrolment: Path, cid: bytes) -> str:
    enr = json.loads(enrolment.read_text())

    async def ask() -> str:
        nc = await connect(enr)
        try:
            subject = wire.subject(enr["vault"], enr["node"], "rpc")
            reply = await nc.request(subject, wire.encode(wire.ReceiptQuery(ids=(cid,))), 10)
            msg = wire.decode(reply.data)
            return msg.code if isinstance(msg, wire.ErrorReply) else repr(msg)
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_the_ingest_stream_is_bounded_per_node_with_discard_new(tmp_path: Path) -> None:
    config = '[limits]\ningest_stream_bytes = "1GiB"\ningest_node_messages = 500\n'
    hub = HubProcess(tmp_path / "hub", config=config)
    try:
        hub.start()
        secrets = json.loads((hub.data / "secrets.json").read_text())

        async def info() -> object:
            import nats

            nc = await nats.connect(
                hub.nats_url,
                user="amber-hub",
                password=secrets["nats_password"],
                **hub_nats_tls(hub.data),
            )
            try:
                return (await nc.jetstream().stream_info("AMBER_INGEST")).config
            finally:
                await nc.close()

        cfg = asyncio.run(info())
        assert cfg.max_bytes == 1024**3  # type: ignore[attr-defined]
        assert cfg.max_msgs_per_subject == 500  # type: ignore[attr-defined]
        assert cfg.discard == DiscardPolicy.NEW  # type: ignore[attr-defined]
        assert cfg.discard_new_per_subject is True  # type: ignore[attr-defined]
    finally:
        hub.cleanup()


def test_a_node_cannot_pre_refuse_another_nodes_record(
    tmp_path: Path, hub: HubProcess, vault_key: Path
) -> None:
    thief = new_agent(hub, tmp_path, "thief", "fleet", vault_key)
    honest = new_agent(hub, tmp_path, "honest", "fleet", vault_key)
    honest.add("memory", "files", make_memory(tmp_path / "memory"))
    target = bytes.fromhex(honest.checkpoint()["id"])  # learnt, say, from a shared log
    assert thief.enrolment is not None

    async def plant() -> None:  # garbage under the honest node's checkpoint id
        nc = await connect(json.loads(thief.enrolment.read_text()))  # type: ignore[union-attr]
        try:
            put = wire.RecordPut(id=target, kind=3, data=b"\x00garbage" * 8)
            subject = wire.subject("fleet", "thief", "ingest")
            await nc.jetstream().publish(subject, wire.encode(put), timeout=10)
        finally:
            await nc.close()

    asyncio.run(plant())
    key = "fleet/thief"
    deadline = time.monotonic() + 30
    while not hub.status()["ingest"]["rejected"].get(key):
        assert time.monotonic() < deadline, "the hub never looked at the planted record"
        time.sleep(0.1)
    res = honest.proc("sync", "--once", timeout=60)
    assert res.code == 0, res
    assert [c["id"] for c in hub.checkpoints("honest", "fleet")] == [target.hex()]
