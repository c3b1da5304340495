"""The restore coordinator: moves running plans wave by wave, halts on failure.

Rules:
- a wave starts only when every node of the previous waves reported ``healthy``;
- a ``failed`` node halts the plan: no further wave starts, and (unless the plan says
  otherwise) every node of the plan that already restored, or is restoring, is sent a
  ``rollback`` order, which returns it to the safety checkpoint it took first;
- ``abort`` does the same on the operator's word.
The rules are pure functions of a plan (:func:`next_step`, :func:`halt_step`,
:func:`abort_step`, :func:`build_order`, :func:`report_goes_on`); :class:`Coordinator`
applies what they decide to the plan book and publishes the orders.
Orders go to the node's durable command subject (JetStream stream AMBER_CMD), signed
with the hub's key, so a node that is offline executes them when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from amber.hub.plans import NodeState, PlanBook, PlanNode, PlanState, RestorePlan
from amber.protocol import wire
from amber.protocol.errors import AmberError, NotFoundError
from amber.protocol.keys import SigningKey

log = logging.getLogger("amber.hub.coordinator")
ORDER_TTL_US = 7 * 86400 * 1_000_000
IN_PROGRESS = frozenset(NodeState) - {NodeState.PLANNED, NodeState.FAILED, NodeState.ROLLED_BACK}
"""Node states that a halt or an abort rolls back: the node restored or is restoring."""
GATE_FAILED = frozenset((NodeState.FAILED, NodeState.ROLLED_BACK))
SETTLED = frozenset((PlanState.DONE, PlanState.ABORTED))


async def ensure_cmd_stream(js: Any) -> None:
    cfg = StreamConfig(
        name=wire.CMD_STREAM,
        subjects=[wire.any_node("cmd")],
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
        wire.CMD_STREAM,
        ConsumerConfig(
            durable_name=wire.cmd_consumer(vault, node),
            filter_subject=wire.subject(vault, node, "cmd"),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,
        ),
    )


# --- the rules (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """An order to send: ``restore`` the node's restore point, or ``rollback``."""

    node: PlanNode
    action: str


@dataclass(frozen=True, slots=True)
class Step:
    """What to do with a plan now: a new plan state (if any, set first), then orders."""

    state: PlanState | None = None
    reason: str = ""
    orders: tuple[Order, ...] = ()


def next_step(plan: RestorePlan) -> Step:
    """A running plan's next move. A node that failed its gate (its own verification
    or a check the plan names) halts the plan; otherwise the first wave that is not all
    healthy gets restore orders for its nodes still ``planned`` (none once they are
    all sent: it waits for their reports); when every wave is healthy, the plan is done."""
    if plan.state != PlanState.RUNNING:
        return Step()
    failed = [n for n in plan.nodes if n.state in GATE_FAILED]
    if failed:
        return halt_step(plan, PlanState.HALTED, f"{failed[0].node} failed: {failed[0].detail}")
    for wave in plan.waves:
        if not wave.healthy:
            todo = [Order(n, "restore") for n in wave.nodes if n.state == NodeState.PLANNED]
            return Step(orders=tuple(todo))
    return Step(state=PlanState.DONE)


def halt_step(plan: RestorePlan, state: PlanState, reason: str) -> Step:
    """Stop the plan; unless it says otherwise, roll back every node that restored or is
    restoring (to the safety checkpoint it took first). Nodes still planned are left."""
    orders: tuple[Order, ...] = ()
    if plan.spec.rollback_on_failure:
        orders = tuple(Order(n, "rollback") for n in plan.nodes if n.state in IN_PROGRESS)
    return Step(state, reason, orders)


def abort_step(plan: RestorePlan) -> Step:
    """The operator's abort: a halt, refused on a plan already done or aborted."""
    if plan.state in SETTLED:
        raise NotFoundError(f"plan {plan.id} is already {plan.state}")
    return halt_step(plan, PlanState.ABORTED, "aborted by the operator")


def build_order(plan: RestorePlan, order: Order, order_id: str, now_us: int) -> wire.RestoreOrder:
    """The order for one node; it names the plan's checks, which only the node's own
    agent.toml defines (the hub never sends a command line)."""
    n, spec = order.node, plan.spec
    return wire.RestoreOrder(
        order_id=order_id,
        plan_id=plan.id,
        vault=n.vault,
        node=n.node,
        action=order.action,
        checkpoint=n.checkpoint if order.action == "restore" else b"",
        source_node=n.source_node,
        sources=tuple(spec.sources),
        checks=tuple(spec.checks),
        issued_us=now_us,
        expires_us=now_us + ORDER_TTL_US,
    )


def report_goes_on(plan: RestorePlan, state: NodeState) -> bool:
    """Whether a node reporting ``state`` should go on with its order: while the plan
    runs; and a node that failed or rolled back always finishes (its rollback)."""
    return plan.state == PlanState.RUNNING or state in GATE_FAILED


# --- applying them ---------------------------------------------------------------------


class Coordinator:
    def __init__(self, book: PlanBook, js: Any, signer: SigningKey) -> None:
        self.book, self.js, self.signer = book, js, signer
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                for plan in await self.book.list():
                    if plan.state == PlanState.RUNNING:
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

    async def step(self, plan: RestorePlan) -> None:
        await self.apply(plan, next_step(plan))

    async def apply(self, plan: RestorePlan, step: Step) -> None:
        if step.state is not None:
            await self.book.set_state(plan.id, step.state, step.reason)
            if step.state == PlanState.DONE:
                log.info("restore plan %s done", plan.id)
            else:
                log.warning("restore plan %s %s: %s", plan.id, step.state, step.reason)
        for order in step.orders:
            await self.send(plan, order)

    async def abort(self, plan_id: str) -> RestorePlan:
        plan = await self.book.get(plan_id)
        await self.apply(plan, abort_step(plan))
        return await self.book.get(plan_id)

    async def send(self, plan: RestorePlan, order: Order) -> None:
        n = order.node
        msg = build_order(plan, order, f"o-{uuid.uuid4().hex[:12]}", int(time.time() * 1e6))
        signed = wire.sign_order(msg, self.signer)
        # recorded before publishing: a node that is online reports on the order at once,
        # and a report on an order id the plan does not know tells the node to stop
        fields: dict[str, Any] = {"order_id": msg.order_id}
        if order.action == "restore":
            fields["state"] = NodeState.QUEUED
        await self.book.set_node(plan.id, n.vault, n.node, **fields)
        try:
            await ensure_node_consumer(self.js, n.vault, n.node)
            await self.js.publish(
                wire.subject(n.vault, n.node, "cmd"),
                wire.encode(signed),
                headers={"Nats-Msg-Id": msg.order_id},
            )
        except Exception:  # not sent: the next step tries again
            await self.book.set_node(plan.id, n.vault, n.node, order_id=n.order_id, state=n.state)
            raise
        log.info(
            "sent %s order %s to %s/%s (plan %s)",
            order.action,
            msg.order_id,
            n.vault,
            n.node,
            plan.id,
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
            state=NodeState(rep.state),
            detail=rep.detail[:500],
            done=rep.done,
            total=rep.total,
        )
        self.wake.set()
        return report_goes_on(plan, NodeState(rep.state))
