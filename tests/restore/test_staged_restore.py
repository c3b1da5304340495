"""Staged restores across a real fleet: a hub process and four agent daemons of one vault.

Covers: a canary then two waves restoring bit-exact files and a sound SQLite database on
every node, wave by wave, each node taking a safety checkpoint first; a canary whose
health command fails halting the plan with no other node touched; point in time, labels
and selectors choosing checkpoints and nodes; one node's checkpoint restored onto a
replacement node; an operator's abort rolling back the nodes already restored.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from tests.support.data import integrity, sqlite_dump, tree
from tests.support.fleet import (
    Fleet,
    assert_restored,
    assert_untouched,
    node_states,
    settled,
    waves_of,
)

ALL = ["n1", "n2", "n3", "n4"]


def check_wave_order(seen: list[dict[str, Any]]) -> None:
    """In every status polled: a node of wave w left ``planned`` only when every node
    of the earlier waves was ``healthy``."""
    for plan in seen:
        for n in plan["nodes"]:
            if n["state"] == "planned":
                continue
            early = [m for m in plan["nodes"] if m["wave"] < n["wave"]]
            assert all(m["state"] == "healthy" for m in early), (
                f"{n['node']} (wave {n['wave']}) was {n['state']} while "
                f"{[(m['node'], m['state']) for m in early]}"
            )


def test_canary_then_two_waves_restore_every_node(fresh: Fleet) -> None:
    prep = fresh.prepare(ALL)
    plan = fresh.plan("--nodes", ",".join(ALL), "--canary", "1", "--waves", "50%,100%")
    assert plan["state"] == "draft"
    assert waves_of(plan) == {"n1": 0, "n2": 1, "n3": 1, "n4": 2}
    assert {n["node"]: n["checkpoint"] for n in plan["nodes"]} == {n: p.cp for n, p in prep.items()}
    # a dry run moves nothing
    for name, p in prep.items():
        assert_untouched(fresh[name], p.b)
    fresh.start_plan(plan["id"])
    seen: list[dict[str, Any]] = []
    final = fresh.wait_settled(plan["id"], seen=seen)
    assert final["state"] == "done", final
    assert set(node_states(final).values()) == {"healthy"}, final
    check_wave_order(seen)
    listed = {p["id"]: p["state"] for p in fresh.hub.ok("restore", "list", "--json").json()}
    assert listed[plan["id"]] == "done"
    text = fresh.hub.ok("restore", "status", plan["id"]).out
    lines = text.splitlines()
    assert lines[0] == f"plan {plan['id']}: done", text
    assert len(lines) == 5 and all("  healthy - " in line for line in lines[1:]), text

    # per node: the safety checkpoint, then the pre hook, the swap, the health gate
    healthy_us = {n["node"]: n["updated_us"] for n in final["nodes"]}
    for name, p in prep.items():
        node = fresh[name]
        assert_restored(node, p.a)
        (pre,) = node.hook_times("pre")
        (post,) = node.hook_times("post")
        (health,) = node.hook_times("health")
        assert pre < post < health < healthy_us[name]
        safety = [
            c
            for c in node.checkpoints()
            if c["kind"] == "safety" and c["labels"].get("amber.plan") == plan["id"]
        ]
        assert len(safety) == 1, safety
        assert safety[0]["time_us"] < pre
        assert sorted(safety[0]["sources"]) == ["files", "memory", "model"]
    # waves in order, by the clock: no node of a wave started before the previous wave
    # was healthy
    waves = waves_of(final)
    for wave in (1, 2):
        earlier = max(healthy_us[n] for n in waves if waves[n] < wave)
        first = min(fresh[n].hook_times("pre")[0] for n in waves if waves[n] == wave)
        assert first > earlier, f"wave {wave} started before wave {wave - 1} was healthy"
    # the safety checkpoint holds what was there before the restore
    node = fresh["n2"]
    (safety_id,) = [
        c["id"]
        for c in node.checkpoints()
        if c["kind"] == "safety" and c["labels"].get("amber.plan") == plan["id"]
    ]
    dest = fresh.root / "n2-safety"
    node.agent.ok("restore", safety_id, "--to", dest)
    assert tree(dest / "files") == prep["n2"].b.files
    assert tree(dest / "model") == prep["n2"].b.model
    assert sqlite_dump(dest / "memory" / "memory.db") == prep["n2"].b.dump


def test_failing_canary_halts_the_plan_and_touches_no_other_node(fresh: Fleet) -> None:
    prep = fresh.prepare(ALL)
    fresh["n3"].mark("unhealthy")  # the health check fails on the canary only
    plan = fresh.plan("--nodes", "n3,n1,n2,n4", "--canary", "1", "--waves", "50%,100%")
    assert waves_of(plan)["n3"] == 0
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "halted", final
    assert "n3" in final["reason"] and "CheckFailedError" in final["reason"], final
    assert node_states(final) == {
        "n3": "failed",
        "n1": "planned",
        "n2": "planned",
        "n4": "planned",
    }
    canary = fresh["n3"]
    # the hub hears the error's code, never the check's output: that stays on the node
    assert final["nodes"][0]["detail"] == "CheckFailedError (exit 73)", final
    ((local,),) = canary.agent.journal_query(
        "SELECT detail FROM restore_jobs WHERE plan_id = ?", (plan["id"],)
    )
    assert "check 'health' exited 1" in local, local
    assert canary.hook_times("health"), "the canary never ran its health command"
    # the canary swapped, failed its gate, and is back on its previous state, bit for bit
    assert_untouched(canary, prep["n3"].b)
    # no other node was touched: no order, no job, no hook, same bytes
    for name in ("n1", "n2", "n4"):
        node = fresh[name]
        assert node.jobs(plan["id"]) == []
        assert node.hook_times("pre") == []
        assert_untouched(node, prep[name].b)
    # a halted plan stays halted: nothing more is sent
    fresh["n3"].unmark("unhealthy")
    time.sleep(1.5)
    again = fresh.status(plan["id"])
    assert node_states(again) == node_states(final) and again["state"] == "halted"
    for name in ("n1", "n2", "n4"):
        assert fresh[name].jobs(plan["id"]) == []


def at_or_before(rows: list[dict[str, Any]], node: str, limit_us: int) -> str:
    """What the hub's catalog says a point in time means for ``node``: its last regular
    checkpoint at or before the limit."""
    mine = [
        r for r in rows if r["node"] == node and r["kind"] == "regular" and r["time_us"] <= limit_us
    ]
    return max(mine, key=lambda r: r["time_us"])["id"]


def test_point_in_time_labels_and_selectors_choose_checkpoints_and_nodes(fresh: Fleet) -> None:
    # three rounds of checkpoints, the second labelled; t_mid falls inside the first round
    ids: dict[str, list[str]] = {n: [] for n in ALL}
    states: dict[str, list[Any]] = {n: [] for n in ALL}
    t_mid = t_round1 = 0.0
    for rnd in range(3):
        for name in ALL:
            states[name].append(fresh[name].write_state(fresh.next_seed()))
            labels = ("release=r2",) if rnd == 1 else ()
            ids[name].append(fresh[name].checkpoint(*labels)["id"])
            if rnd == 0 and name == "n2":
                t_mid = time.time()
        if rnd == 0:
            t_round1 = time.time()
    rows = fresh.wait_at_hub({i for v in ids.values() for i in v})
    rows = [r for r in rows if r["vault"] == "fleet"]

    def chosen(plan: dict[str, Any]) -> dict[str, str]:
        return {n["node"]: n["checkpoint"] for n in plan["nodes"]}

    # at: a time between checkpoint 1 and 2 of every node (unix seconds and ISO)
    for point in (f"at:{t_round1:.6f}", "at:" + datetime.fromtimestamp(t_round1, UTC).isoformat()):
        plan = fresh.plan("--nodes", ",".join(ALL), "--point", point)
        assert chosen(plan) == {n: ids[n][0] for n in ALL}, point
    # per node: a time after n1's and n2's first checkpoint, before n3's and n4's
    plan = fresh.plan("--nodes", ",".join(ALL), "--point", f"at:{t_mid:.6f}")
    limit = int(t_mid * 1e6)
    assert chosen(plan) == {n: at_or_before(rows, n, limit) for n in ALL}
    assert chosen(plan)["n2"] == ids["n2"][0]
    assert chosen(plan)["n3"] not in ids["n3"]  # its last checkpoint before this test
    # no checkpoint that early: refused, nothing planned
    res = fresh.hub.admin(
        "restore", "plan", "--vault", "fleet", "--nodes", "n1", "--point", "at:1000000000"
    )
    assert res.code != 0 and "no checkpoint at or before" in res.err, res
    # an id prefix
    plan = fresh.plan("--nodes", "n3", "--point", ids["n3"][0][:12])
    assert chosen(plan) == {"n3": ids["n3"][0]}
    # selectors over the enrolment labels; label: picks the labelled checkpoints
    plan = fresh.plan("--selector", "site=south,role=edge", "--point", "label:release=r2")
    assert chosen(plan) == {"n3": ids["n3"][1], "n4": ids["n4"][1]}
    plan = fresh.plan(
        "--selector", "site=north", "--point", "label:release=r2", "--sources", "files"
    )
    assert chosen(plan) == {"n1": ids["n1"][1], "n2": ids["n2"][1]}
    before = {n: fresh[n].capture() for n in ("n1", "n2")}
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "done", final
    for name in ("n1", "n2"):
        node = fresh[name]
        assert tree(node.data / "files") == states[name][1].files  # the labelled state
        assert tree(node.data / "model") == before[name].model  # not among --sources
        assert sqlite_dump(node.db) == before[name].dump
        assert node.leftovers() == []
    for name in ("n3", "n4"):  # not selected
        assert fresh[name].jobs(plan["id"]) == []
        assert_untouched(fresh[name], states[name][2])


def test_to_node_restores_one_nodes_checkpoint_onto_a_replacement(fresh: Fleet) -> None:
    prep = fresh.prepare(["n1"])
    spare = fresh.add_node("n5", ("site=spare",), data=False)  # new hardware, nothing on it
    spare.start()
    assert not spare.data.exists()
    plan = fresh.plan("--nodes", "n1", "--to-node", "n5", "--point", "latest")
    assert [(n["node"], n["source_node"], n["checkpoint"]) for n in plan["nodes"]] == [
        ("n5", "n1", prep["n1"].cp)
    ]
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "done" and node_states(final) == {"n5": "healthy"}, final
    assert_restored(spare, prep["n1"].a)
    assert_untouched(fresh["n1"], prep["n1"].b)  # the source node is not touched
    assert fresh["n1"].jobs(plan["id"]) == []
    assert [j[1:] for j in spare.jobs(plan["id"])] == [("restore", "healthy")]


def test_abort_rolls_back_the_nodes_already_restored(fresh: Fleet) -> None:
    prep = fresh.prepare(ALL)
    fresh["n3"].mark("hold-pre")  # n3 (wave 1) waits in its pre_restore hook
    plan = fresh.plan("--nodes", ",".join(ALL), "--canary", "1", "--waves", "50%,100%")
    assert waves_of(plan) == {"n1": 0, "n2": 1, "n3": 1, "n4": 2}
    fresh.start_plan(plan["id"])
    fresh.wait_plan(
        plan["id"],
        lambda p: node_states(p)["n2"] == "healthy" and fresh["n3"].hook_times("pre"),
        "n1 and n2 restored, n3 in its pre_restore hook",
    )
    assert_restored(fresh["n1"], prep["n1"].a)
    assert_restored(fresh["n2"], prep["n2"].a)
    res = fresh.hub.ok("restore", "abort", plan["id"])
    assert "aborted" in res.out
    fresh["n3"].unmark("hold-pre")
    final = fresh.wait_plan(
        plan["id"],
        lambda p: settled(p) and node_states(p)["n3"] != "healthy",
        "the rollbacks",
    )
    assert final["state"] == "aborted" and "operator" in final["reason"], final
    assert node_states(final) == {
        "n1": "rolled_back",
        "n2": "rolled_back",
        "n3": "rolled_back",
        "n4": "planned",
    }, final
    for name in ("n1", "n2", "n3"):
        node = fresh[name]
        b = prep[name].b
        assert node.leftovers() == []
        assert tree(node.data / "files") == b.files, name
        assert tree(node.data / "model") == b.model, name
        assert sqlite_dump(node.db) == b.dump, name
        assert integrity(node.db) == "ok"
    assert fresh["n4"].jobs(plan["id"]) == []
    assert_untouched(fresh["n4"], prep["n4"].b)
