"""The restore coordinator's rules, in process: waves, gates, halts, aborts, rollbacks.

The rules are pure functions of a :class:`RestorePlan` (no I/O); plans are made by the
:class:`PlanBook` in a real SQLite catalog under tmp_path; one test drives a
:class:`Coordinator` over a real nats-server. The same rules run through real agent
processes in tests/restore/test_staged_restore.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from amber.hub.catalog import Catalog
from amber.hub.coordinator import (
    Coordinator,
    Order,
    Step,
    abort_step,
    build_order,
    next_step,
    report_goes_on,
)
from amber.hub.plans import (
    NodeState,
    PlanBook,
    PlanNode,
    PlanSpec,
    PlanState,
    RestorePlan,
    parse_waves,
)
from amber.protocol import wire
from amber.protocol.errors import NotFoundError, UsageError
from amber.protocol.keys import SigningKey
from amber.protocol.records import Checkpoint
from tests.support.servers import NatsServer

V = "fleet"
S = NodeState


def plan_of(
    states: dict[str, tuple[int, NodeState]],
    state: PlanState = PlanState.RUNNING,
    rollback: bool = True,
) -> RestorePlan:
    """A plan whose nodes are ``name: (wave, state)``."""
    nodes = tuple(
        PlanNode(V, name, wave, bytes([i]) * 32, 7, name, st, detail=f"{name} said so")
        for i, (name, (wave, st)) in enumerate(sorted(states.items(), key=lambda kv: kv[1][0]))
    )
    spec = PlanSpec(vault=V, nodes=list(states), checks=["smoke"], rollback_on_failure=rollback)
    return RestorePlan("p-test", 1, state, "", spec, nodes)


def sent(step_orders: tuple[Order, ...]) -> list[tuple[str, str]]:
    return [(o.node.node, o.action) for o in step_orders]


# --- waves ----------------------------------------------------------------------------


def test_a_wave_starts_only_when_every_earlier_wave_is_healthy() -> None:
    waves = {"c": 0, "a1": 1, "a2": 1, "b1": 2}
    states = {n: (w, S.PLANNED) for n, w in waves.items()}
    step = next_step(plan_of(states))
    assert step.state is None and sent(step.orders) == [("c", "restore")]
    # the canary is on its way: nothing more is sent, whatever it reports short of healthy
    for st in (S.QUEUED, S.FETCHING, S.VERIFYING, S.SWAPPED):
        states["c"] = (0, st)
        assert next_step(plan_of(states)).orders == ()
    states["c"] = (0, S.HEALTHY)
    assert sent(next_step(plan_of(states)).orders) == [("a1", "restore"), ("a2", "restore")]
    # orders already sent are not sent again; one healthy node does not open the next wave
    states["a1"], states["a2"] = (1, S.HEALTHY), (1, S.QUEUED)
    assert next_step(plan_of(states)) == Step()
    states["a2"] = (1, S.HEALTHY)
    assert sent(next_step(plan_of(states)).orders) == [("b1", "restore")]
    states["b1"] = (2, S.HEALTHY)
    done = next_step(plan_of(states))
    assert done.state == PlanState.DONE and done.orders == ()


@pytest.mark.parametrize(
    "state", [PlanState.DRAFT, PlanState.HALTED, PlanState.ABORTED, PlanState.DONE]
)
def test_only_a_running_plan_moves(state: PlanState) -> None:
    step = next_step(plan_of({"c": (0, S.PLANNED), "x": (1, S.FAILED)}, state))
    assert step.state is None and step.orders == ()


def test_exported_plans_are_left_to_their_receipts() -> None:
    step = next_step(plan_of({"c": (0, S.QUEUED)}, PlanState.EXPORTED))
    assert step.state is None and step.orders == ()


# --- gates, halts, rollbacks ------------------------------------------------------------


@pytest.mark.parametrize("gate", [S.FAILED, S.ROLLED_BACK])
def test_a_failed_gate_halts_the_plan_and_rolls_back_what_restored(gate: NodeState) -> None:
    """A node failing its verification or the plan's named check reports ``failed`` (or
    ``rolled_back`` once it undid the swap): no further wave, and every node that restored
    or is restoring gets a rollback order; nodes still planned are left alone."""
    states = {
        "c": (0, S.HEALTHY),
        "a1": (1, gate),
        "a2": (1, S.SWAPPED),
        "a3": (1, S.FETCHING),
        "b1": (2, S.PLANNED),
    }
    step = next_step(plan_of(states))
    assert step.state == PlanState.HALTED
    assert step.reason == "a1 failed: a1 said so"
    assert sent(step.orders) == [("c", "rollback"), ("a2", "rollback"), ("a3", "rollback")]


def test_a_plan_may_forgo_rollbacks() -> None:
    step = next_step(plan_of({"c": (0, S.HEALTHY), "a": (1, S.FAILED)}, rollback=False))
    assert step.state == PlanState.HALTED and step.orders == ()


def test_abort_rolls_back_and_refuses_a_settled_plan() -> None:
    states = {"c": (0, S.HEALTHY), "a": (1, S.QUEUED), "b": (1, S.PLANNED)}
    step = abort_step(plan_of(states))
    assert step.state == PlanState.ABORTED and step.reason == "aborted by the operator"
    assert sent(step.orders) == [("c", "rollback"), ("a", "rollback")]
    assert abort_step(plan_of(states, PlanState.DRAFT)).state == PlanState.ABORTED
    for settled in (PlanState.DONE, PlanState.ABORTED):
        with pytest.raises(NotFoundError, match=f"already {settled}"):
            abort_step(plan_of(states, settled))


def test_orders_name_the_restore_point_and_the_check_never_a_command() -> None:
    plan = plan_of({"c": (0, S.PLANNED)})
    node = plan.nodes[0]
    restore = build_order(plan, Order(node, "restore"), "o-1", 1_000)
    assert (restore.action, restore.checkpoint, restore.source_node) == (
        "restore",
        node.checkpoint,
        "c",
    )
    assert restore.checks == ("smoke",)  # a name the node's agent.toml defines
    assert not hasattr(restore, "health_cmd")  # the wire order has no command line field
    assert restore.plan_id == "p-test" and restore.expires_us > restore.issued_us == 1_000
    rollback = build_order(plan, Order(node, "rollback"), "o-2", 1_000)
    assert rollback.action == "rollback" and rollback.checkpoint == b""


def test_a_node_goes_on_only_while_the_plan_runs_or_to_finish_a_rollback() -> None:
    running, halted = plan_of({"c": (0, S.QUEUED)}), plan_of({"c": (0, S.QUEUED)}, PlanState.HALTED)
    assert report_goes_on(running, S.FETCHING)
    assert not report_goes_on(halted, S.FETCHING)
    assert report_goes_on(halted, S.FAILED) and report_goes_on(halted, S.ROLLED_BACK)


# --- plans in a real catalog ----------------------------------------------------------


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[PlanBook]:
    catalog = await Catalog.open(tmp_path / "catalog.db")
    try:
        plans = PlanBook(catalog)
        await plans.setup()
        yield plans
    finally:
        await catalog.close()


async def enrol(book: PlanBook, node: str, checkpoints: int = 2, **labels: str) -> list[bytes]:
    """Enrol ``node`` in the catalog with a chain of checkpoints; their ids."""
    await book.catalog.add_node(V, node, f"node.{V}.{node}", "pw-" + node, labels)
    ids, prev = [], None
    for seq in range(checkpoints):
        cid = os.urandom(32)
        cp = Checkpoint(
            V, node, seq, prev, 1_000 + seq, {"memory": os.urandom(32)}, {"v": str(seq)}
        )
        await book.catalog.add_checkpoint(cp, cid, b"s" * 32)
        ids.append(cid)
        prev = cid
    return ids


async def test_canary_then_percentage_waves_in_the_catalog(book: PlanBook) -> None:
    names = [f"n{i:02}" for i in range(10)]
    latest = {n: (await enrol(book, n))[-1] for n in names}
    spec = PlanSpec(vault=V, nodes=names, canary=1, waves=parse_waves("50%,100%"))
    plan = await book.create(spec)
    assert plan.state == PlanState.DRAFT and isinstance(plan.state, PlanState)
    assert [len(w.nodes) for w in plan.waves] == [1, 5, 4]  # 9 after the canary: 5, then 4
    assert [w.index for w in plan.waves] == [0, 1, 2]
    assert all(n.state == S.PLANNED and n.checkpoint == latest[n.node] for n in plan.nodes)
    again = await book.get(plan.id)
    assert again == plan
    view = plan.to_json()  # the admin API's JSON: plain strings, as before
    assert view["state"] == "draft" and {n["state"] for n in view["nodes"]} == {"planned"}
    assert view["spec"]["waves"] == [50, 100] and view["nodes"][0]["checkpoint"] == (
        plan.nodes[0].checkpoint.hex()
    )
    assert [p.id for p in await book.list()] == [plan.id]


async def test_nodes_are_chosen_by_ids_or_labels(book: PlanBook) -> None:
    await enrol(book, "a1", site="north", gpu="yes")
    await enrol(book, "a2", site="north")
    await enrol(book, "b1", site="south", gpu="yes")
    by_label = await book.create(PlanSpec(vault=V, selector={"site": "north"}, canary=0))
    assert sorted(n.node for n in by_label.nodes) == ["a1", "a2"]
    both = await book.create(PlanSpec(vault=V, selector={"site": "north", "gpu": "yes"}))
    assert [n.node for n in both.nodes] == ["a1"]
    by_id = await book.create(PlanSpec(vault=V, nodes=["b1", "a2"], canary=1))
    assert {n.node: n.wave for n in by_id.nodes} == {"b1": 0, "a2": 1}
    with pytest.raises(NotFoundError, match="unknown node"):
        await book.create(PlanSpec(vault=V, nodes=["a1", "zz"]))
    with pytest.raises(NotFoundError, match="no node matches"):
        await book.create(PlanSpec(vault=V, selector={"site": "east"}))
    with pytest.raises(UsageError, match="--nodes or --selector"):
        await book.create(PlanSpec(vault=V))
    onto = await book.create(PlanSpec(vault=V, nodes=["a1"], to_node="b1", point="label:v=0"))
    (row,) = onto.nodes
    assert (row.node, row.source_node, row.seq) == ("b1", "a1", 0)


async def test_node_rows_take_only_known_fields_and_states_count(book: PlanBook) -> None:
    await enrol(book, "a1")
    plan = await book.create(PlanSpec(vault=V, nodes=["a1"]))
    with pytest.raises(ValueError, match="not a plan node field"):
        await book.set_node(plan.id, V, "a1", wave=3)
    await book.set_node(plan.id, V, "a1", state=S.FETCHING, order_id="o-9")
    await book.set_state(plan.id, PlanState.RUNNING)
    assert await book.by_order("o-9") == (plan.id, V, "a1")
    assert (await book.get(plan.id)).nodes[0].state == S.FETCHING
    by_plan, by_node = await book.counts([PlanState.RUNNING])
    assert by_plan == {"running": 1} and by_node == {"fetching": 1}


# --- the coordinator over a real nats-server --------------------------------------------


async def test_the_coordinator_sends_waves_halts_and_rolls_back(
    book: PlanBook, fresh_nats: NatsServer
) -> None:
    from amber.hub.coordinator import ensure_cmd_stream

    for n in ("c", "a", "b"):
        await enrol(book, n)
    plan = await book.create(PlanSpec(vault=V, nodes=["c", "a", "b"], canary=1))
    await book.set_state(plan.id, PlanState.RUNNING)
    hub_key = SigningKey.generate()
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream(timeout=10)
        await ensure_cmd_stream(js)
        got: list[wire.RestoreOrder] = []

        async def on_order(msg: nats.aio.msg.Msg) -> None:
            signed = wire.decode(msg.data, wire.SignedOrder)
            assert isinstance(signed, wire.SignedOrder)
            got.append(wire.open_order(signed, hub_key.public))

        await nc.subscribe(f"amber.{V}.*.cmd", cb=on_order)
        coord = Coordinator(book, js, hub_key)

        async def step() -> list[tuple[str, str]]:
            got.clear()
            await coord.step(await book.get(plan.id))
            await nc.flush()
            await asyncio.sleep(0.3)  # the cmd subject's messages reach our subscription
            return sorted((o.node, o.action) for o in got)

        async def report(order: wire.RestoreOrder, state: NodeState) -> bool:
            rep = wire.RestoreReport(
                order_id=order.order_id,
                plan_id=plan.id,
                state=str(state),
                detail="gate said no",
                done=1,
                total=1,
                safety=b"",
            )
            return await coord.report(V, order.node, rep)

        assert await step() == [("c", "restore")]
        (canary,) = got
        assert await report(canary, S.HEALTHY)
        assert await step() == [("a", "restore"), ("b", "restore")]
        orders = {o.node: o for o in got}
        assert await report(orders["b"], S.SWAPPED)
        assert await report(orders["a"], S.FAILED)  # it goes on: to roll itself back
        assert await step() == [("b", "rollback"), ("c", "rollback")]
        rollbacks = {o.node: o for o in got}
        halted = await book.get(plan.id)
        assert halted.state == PlanState.HALTED and halted.reason == "a failed: gate said no"
        assert not await report(orders["b"], S.HEALTHY)  # superseded by its rollback order
        assert await step() == []  # a halted plan sends nothing more
        with pytest.raises(NotFoundError, match="its own orders"):
            await report(wire.RestoreOrder(**{**vars(rollbacks["b"]), "node": "c"}), S.HEALTHY)
    finally:
        await nc.close()
