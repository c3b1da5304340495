"""The restore coordinator: moves running plans wave by wave, halts on failure.

Rules:
- a wave starts only when every node of the previous waves reported ``healthy``;
- a ``failed`` node halts the plan: no further wave starts, and (unless the plan says
  otherwise) every node of the plan that already restored, or is restoring, is sent a
  ``rollback`` order, which returns it to the safety checkpoint it took first;
- ``abort`` does the same on the operator's word.
Orders go to the node's durable command subject (JetStream stream AMBER_CMD), signed
with the hub's key, so a node that is offline executes them when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from amber.hub.plans import PlanBook
from amber.protocol import wire
from amber.protocol.errors import AmberError, NotFoundError
from amber.protocol.keys import SigningKey

log = logging.getLogger("amber.hub.coordinator")
CMD_STREAM = "AMBER_CMD"
ORDER_TTL_US = 7 * 86400 * 1_000_000
IN_PROGRESS = ("queued", "fetching", "verifying", "swapped", "healthy")


def cmd_consumer(vault: str, node: str) -> str:
    # the vault's length makes the name unambiguous: names may contain '-', so without
    # it node x-y of vault w and node y of vault w-x would share one consumer (and read
    # and acknowledge each other's orders); natsbox.node_permissions grants the same name
    return f"cmd-{len(vault)}-{vault}-{node}"


async def ensure_cmd_stream(js: Any) -> None:
    cfg = StreamConfig(
        name=CMD_STREAM,
        subjects=["amber.*.*.cmd"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * 86400.0,
        duplicate_window=600.0,
    )
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError:
        await js.update_stream(cfg)


async def ensure_node_consumer(js: Any, vault: str, node: str) -> None:
    """The node's durable pull consumer on its own command subject."""
    await js.add_consumer(
        CMD_STREAM,
        ConsumerConfig(
            durable_name=cmd_consumer(vault, node),
            filter_subject=f"amber.{vault}.{node}.cmd",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,
        ),
    )


class Coordinator:
    def __init__(self, book: PlanBook, js: Any, signer: SigningKey) -> None:
        self.book, self.js, self.signer = book, js, signer
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                for plan in await self.book.list():
                    if plan["state"] in ("running", "halted", "aborted"):
                        await self.step(plan)
            except AmberError as exc:
                log.warning("coordinator: %s", exc)
            except Exception:
                log.exception("coordinator step failed")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), 0.5)
            except TimeoutError:
                pass

    async def step(self, plan: dict[str, Any]) -> None:
        nodes = plan["nodes"]
        if plan["state"] != "running":
            return
        failed = [n for n in nodes if n["state"] in ("failed", "rolled_back")]
        if failed:
            reason = f"{failed[0]['node']} failed: {failed[0]['detail']}"
            await self.halt(plan, "halted", reason)
            return
        for wave in sorted({n["wave"] for n in nodes}):
            members = [n for n in nodes if n["wave"] == wave]
            if all(n["state"] == "healthy" for n in members):
                continue
            for n in members:
                if n["state"] == "planned":
                    await self.send(plan, n, "restore")
            return
        await self.book.set_state(plan["id"], "done")
        log.info("restore plan %s done", plan["id"])

    async def halt(self, plan: dict[str, Any], state: str, reason: str) -> None:
        await self.book.set_state(plan["id"], state, reason)
        log.warning("restore plan %s %s: %s", plan["id"], state, reason)
        if not plan["spec"].get("rollback_on_failure", True):
            return
        for n in plan["nodes"]:
            if n["state"] in IN_PROGRESS:
                await self.send(plan, n, "rollback")

    async def abort(self, plan_id: str) -> dict[str, Any]:
        plan = await self.book.get(plan_id)
        if plan["state"] in ("done", "aborted"):
            raise NotFoundError(f"plan {plan_id} is already {plan['state']}")
        await self.halt(plan, "aborted", "aborted by the operator")
        return await self.book.get(plan_id)

    async def send(self, plan: dict[str, Any], n: dict[str, Any], action: str) -> None:
        spec = plan["spec"]
        now = int(time.time() * 1e6)
        order = wire.RestoreOrder(
            order_id=f"o-{uuid.uuid4().hex[:12]}",
            plan_id=plan["id"],
            vault=n["vault"],
            node=n["node"],
            action=action,
            checkpoint=bytes.fromhex(n["checkpoint"]) if action == "restore" else b"",
            source_node=n["source_node"],
            sources=tuple(spec.get("sources") or ()),
            health_cmd=spec.get("health_cmd") or "",
            issued_us=now,
            expires_us=now + ORDER_TTL_US,
        )
        signed = wire.sign_order(order, self.signer)
        # recorded before publishing: a node that is online reports on the order at once,
        # and a report on an order id the plan does not know tells the node to stop
        fields: dict[str, Any] = {"order_id": order.order_id}
        if action == "restore":
            fields["state"] = "queued"
        await self.book.set_node(plan["id"], n["vault"], n["node"], **fields)
        try:
            await ensure_node_consumer(self.js, n["vault"], n["node"])
            await self.js.publish(
                f"amber.{n['vault']}.{n['node']}.cmd",
                wire.encode(signed),
                headers={"Nats-Msg-Id": order.order_id},
            )
        except Exception:  # not sent: the next step tries again
            await self.book.set_node(
                plan["id"], n["vault"], n["node"], order_id=n["order_id"], state=n["state"]
            )
            raise
        log.info(
            "sent %s order %s to %s/%s (plan %s)",
            action,
            order.order_id,
            n["vault"],
            n["node"],
            plan["id"],
        )

    async def report(self, vault: str, node: str, rep: wire.RestoreReport) -> bool:
        """A node's progress; returns whether it should go on with the order."""
        where = await self.book.by_order(rep.order_id)
        if where is None:
            return False  # superseded (e.g. a rollback was sent since): stop
        plan_id, pv, pn = where
        if (pv, pn) != (vault, node):
            raise NotFoundError("a node may report only on its own orders")
        if rep.state not in wire.REPORT_STATES:
            raise NotFoundError(f"unknown restore state {rep.state!r}")
        plan = await self.book.get(plan_id)
        await self.book.set_node(
            plan_id,
            vault,
            node,
            state=rep.state,
            detail=rep.detail[:500],
            done=rep.done,
            total=rep.total,
        )
        self.wake.set()
        return plan["state"] == "running" or rep.state in ("rolled_back", "failed")
