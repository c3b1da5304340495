"""A hostile hub (or whoever holds its admin token and NATS credentials) cannot run code
on a node, a restore report tells the hub codes and counts only, and one bad order does
not stop a node's order loop.

Each test plays the attacker against a real hub in a box and real agent daemons
(the ``fresh`` fleet of conftest.py): an order naming a check the node does not define, a
version 1 order carrying a command line, signed with the hub's key and published with the
hub's NATS credentials, a check whose output names paths, a malformed and a foreign order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import nats

from amber.agent.config import CheckConfig, load_config
from amber.hub.config import load_hub_key, load_secrets
from amber.hub.coordinator import ensure_node_consumer
from amber.hub.natsbox import HUB_USER
from amber.protocol import wire
from tests.support.fleet import VAULT, Fleet, assert_restored, assert_untouched, node_states
from tests.support.hubtls import hub_nats_tls


def publish_as_hub(fleet: Fleet, node: str, payloads: list[bytes]) -> None:
    """Publish on ``node``'s command subject with the hub's own NATS credentials."""
    secrets = load_secrets(fleet.hub.data)

    async def go() -> None:
        nc = await nats.connect(
            fleet.hub.nats_url,
            user=HUB_USER,
            password=secrets.nats_password,
            connect_timeout=5,
            allow_reconnect=False,
            **hub_nats_tls(fleet.hub.data),
        )
        try:
            js = nc.jetstream()
            await ensure_node_consumer(js, VAULT, node)
            for data in payloads:
                msg_id = uuid.uuid4().hex
                subject = wire.subject(VAULT, node, "cmd")
                await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        finally:
            await nc.close()

    asyncio.run(go())


def signed_order(fleet: Fleet, order: wire.Message) -> bytes:
    """An order signed with the hub's own key: what a compromised hub can send."""
    return wire.encode(wire.sign_order(order, load_hub_key(fleet.hub.data)))  # type: ignore[arg-type]


def order_fields(node: str, plan_id: str, checkpoint: str, order_id: str = "") -> dict:
    now = int(time.time() * 1e6)
    return {
        "order_id": order_id or f"o-{uuid.uuid4().hex[:12]}",
        "plan_id": plan_id,
        "vault": VAULT,
        "node": node,
        "action": "restore",
        "checkpoint": bytes.fromhex(checkpoint),
        "source_node": node,
        "sources": (),
        "issued_us": now,
        "expires_us": now + 3600 * 1_000_000,
    }


def catalog_write(fleet: Fleet, sql: str, args: tuple) -> None:
    con = sqlite3.connect(fleet.hub.catalog_path, timeout=30)
    try:
        with con:
            con.execute(sql, args)
    finally:
        con.close()


def test_an_undefined_check_is_refused_before_anything_moves(fresh: Fleet) -> None:
    prep = fresh.prepare(["n1"])
    n1 = fresh["n1"]
    safety_before = [c for c in n1.checkpoints() if c["kind"] == "safety"]
    plan = fresh.plan("--nodes", "n1", "--check", "dump-vault-key", health=False)
    assert plan["spec"]["checks"] == ["dump-vault-key"]
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "halted", final
    assert final["reason"] == "n1 failed: OrderRefusedError (exit 72)", final
    assert node_states(final) == {"n1": "failed"}
    # nothing fetched, no safety checkpoint, no hook, not a byte changed
    assert_untouched(n1, prep["n1"].b)
    assert [c for c in n1.checkpoints() if c["kind"] == "safety"] == safety_before
    assert n1.hook_times("pre") == []
    assert "does not define" in n1.log_tail(40)


def test_a_command_line_from_the_hub_never_runs(fresh: Fleet, tmp_path: Path) -> None:
    """The hub's keys and NATS credentials in the attacker's hands: a version 1 order
    (the old wire format) whose health_cmd would create a marker file."""
    prep = fresh.prepare(["n1"])
    n1, marker = fresh["n1"], tmp_path / "pwned"
    plan = fresh.plan("--nodes", "n1", health=False)  # a draft the hub tracks
    fields = order_fields("n1", plan["id"], prep["n1"].cp)
    # the node is marked as ordered before the plan runs: a running plan with a node still
    # planned would have the coordinator send that node a genuine order of its own
    catalog_write(
        fresh,
        "UPDATE plan_nodes SET order_id = ?, state = 'queued' WHERE plan = ?",
        (fields["order_id"], plan["id"]),
    )
    catalog_write(fresh, "UPDATE plans SET state = 'running' WHERE id = ?", (plan["id"],))
    crafted = wire.RestoreOrderV1(**fields, health_cmd=f"touch {marker}")
    publish_as_hub(fresh, "n1", [signed_order(fresh, crafted)])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "halted", final
    assert final["reason"] == "n1 failed: OrderRefusedError (exit 72)", final
    time.sleep(1.0)  # had anything been started, it would have had time
    assert not marker.exists()
    assert_untouched(n1, prep["n1"].b)
    assert n1.hook_times("pre") == []
    assert "never runs a command the hub sends" in n1.log_tail(40)


def test_a_check_gates_the_wave_and_its_output_stays_on_the_node(fresh: Fleet) -> None:
    """A check the node defines sees the restored sources through AMBER_SOURCE_*; its
    failure halts the plan, and the hub hears only the error code."""
    prep = fresh.prepare(["n1", "n2"])
    n1 = fresh["n1"]
    seen = n1.home / "check-env.txt"
    script = (
        f'env > {seen}; test -s "$AMBER_SOURCE_FILES/policy.json" || exit 3; '
        'echo "leak: $AMBER_SOURCE_MODEL secret-output"; exit 1'
    )
    original = load_config(n1.agent.config).checks
    n1.stop()
    n1.agent.configure(checks={"leaky": CheckConfig("leaky", ("/bin/sh", "-c", script), 60)})
    n1.start()
    try:
        plan = fresh.plan("--nodes", "n1,n2", "--canary", "1", "--check", "leaky", health=False)
        fresh.start_plan(plan["id"])
        final = fresh.wait_settled(plan["id"])
    finally:
        n1.stop()
        n1.agent.configure(checks=original)
        n1.start()
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["AMBER_SOURCE_FILES"] == str(n1.data / "files")
    assert env["AMBER_SOURCE_MODEL"] == str(n1.data / "model")
    assert env["AMBER_SOURCE_MEMORY"] == str(n1.db)
    assert "AMBER_TEST_HOME" not in env  # a minimal environment, not the daemon's
    assert final["state"] == "halted", final
    assert node_states(final) == {"n1": "failed", "n2": "planned"}
    # the hub knows the code; the output and the paths stay in the node's journal and log
    text = str(final)
    assert "CheckFailedError (exit 73)" in text
    assert "secret-output" not in text and str(n1.data) not in text
    ((local,),) = n1.agent.journal_query(
        "SELECT detail FROM restore_jobs WHERE plan_id = ?", (plan["id"],)
    )
    assert "secret-output" in local
    assert_untouched(n1, prep["n1"].b)  # it swapped, failed its gate and went back
    assert_untouched(fresh["n2"], prep["n2"].b)


def test_a_bad_order_does_not_stop_the_order_loop(fresh: Fleet) -> None:
    """Malformed bytes, an order for another node, then a good plan: the good one runs."""
    prep = fresh.prepare(["n2"])
    foreign = wire.RestoreOrder(**order_fields("n3", "p-foreign", prep["n2"].cp), checks=())
    publish_as_hub(fresh, "n2", [b"\x93not an order", signed_order(fresh, foreign)])
    plan = fresh.plan("--nodes", "n2")
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "done", final
    assert_restored(fresh["n2"], prep["n2"].a)
    assert "is for fleet/n3" in fresh["n2"].log_tail(80)
    assert fresh["n3"].jobs("p-foreign") == []
