"""Staged restores across a real fleet: a hub process and four agent daemons of one vault.

Covers: a canary then two waves restoring bit-exact files and a sound SQLite database on
every node, wave by wave, each node taking a safety checkpoint first; a canary whose
health command fails halting the plan with no other node touched; point in time, labels
and selectors choosing checkpoints and nodes; one node's checkpoint restored onto a
replacement node; an operator's abort rolling back the nodes already restored.
"""

from __future__ import annotations

import time
from typing import Any

from hub_helpers import sqlite_dump, tree
from restore_helpers import (
    Fleet,
    assert_restored,
    assert_untouched,
    node_states,
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
    assert {n["node"]: n["checkpoint"] for n in plan["nodes"]} == {
        n: p.cp for n, p in prep.items()
    }
    # a dry run moves nothing
    for name, p in prep.items():
        assert_untouched(fresh[name], p.b)
    fresh.start_plan(plan["id"])
    seen: list[dict[str, Any]] = []
    final = fresh.wait_settled(plan["id"], seen=seen)
    assert final["state"] == "done", final
    assert set(node_states(final).values()) == {"healthy"}, final
    check_wave_order(seen)

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
    fresh["n3"].mark("unhealthy")  # the health command fails on the canary only
    plan = fresh.plan("--nodes", "n3,n1,n2,n4", "--canary", "1", "--waves", "50%,100%")
    assert waves_of(plan)["n3"] == 0
    fresh.start_plan(plan["id"])
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "halted", final
    assert "n3" in final["reason"] and "health command" in final["reason"], final
    assert node_states(final) == {
        "n3": "failed",
        "n1": "planned",
        "n2": "planned",
        "n4": "planned",
    }
    canary = fresh["n3"]
    assert "health command exited 1" in final["nodes"][0]["detail"], final
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
