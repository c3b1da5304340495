"""Staged restores across a real fleet: a hub process and four agent daemons of one vault.

Covers: a canary then two waves restoring bit-exact files and a sound SQLite database on
every node, wave by wave, each node taking a safety checkpoint first; a canary whose
health command fails halting the plan with no other node touched; point in time, labels
and selectors choosing checkpoints and nodes; one node's checkpoint restored onto a
replacement node; an operator's abort rolling back the nodes already restored.
"""

from __future__ import annotations

from typing import Any

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
    from hub_helpers import sqlite_dump, tree

    assert tree(dest / "files") == prep["n2"].b.files
    assert tree(dest / "model") == prep["n2"].b.model
    assert sqlite_dump(dest / "memory" / "memory.db") == prep["n2"].b.dump
