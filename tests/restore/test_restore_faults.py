"""Staged restores under real faults: a node offline during its wave, agents killed with
SIGKILL mid-restore (while fetching, inside the pre_restore hook, after the swap while the
health command runs), a chunk tampered with in the hub's object store.

Whatever happens, a node ends on the restored state (healthy) or on its previous state
(rolled back or failed), never on a half-swapped source, and the plan shows it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.data import tree
from tests.support.fleet import Fleet, Node, assert_restored, assert_untouched, node_states
from tests.support.procs import wait_until

MiB = 1024 * 1024


def test_offline_node_gets_its_order_when_it_comes_back(fresh: Fleet) -> None:
    prep = fresh.prepare(["n1", "n2", "n3", "n4"])
    offline = fresh["n4"]
    offline.stop()
    plan = fresh.plan("--nodes", "n1,n2,n3,n4", "--canary", "1", "--waves", "100%")
    fresh.start_plan(plan["id"])
    fresh.wait_plan(
        plan["id"],
        lambda p: [node_states(p)[n] for n in ("n1", "n2", "n3")] == ["healthy"] * 3,
        "the nodes that are online to restore",
    )
    time.sleep(1.5)  # the coordinator goes round a few times: nothing moves without n4
    plan_now = fresh.status(plan["id"])
    assert plan_now["state"] == "running"
    assert node_states(plan_now)["n4"] == "queued"
    assert_untouched(offline, prep["n4"].b)
    offline.start()
    final = fresh.wait_settled(plan["id"])
    assert final["state"] == "done", final
    assert set(node_states(final).values()) == {"healthy"}
    for name, p in prep.items():
        assert_restored(fresh[name], p.a)
    # the order ran once, although the node was down when it was sent
    assert [j[1:] for j in offline.jobs(plan["id"])] == [("restore", "healthy")]


@pytest.mark.parametrize("when", ["fetching", "pre_restore_hook", "health_command"])
def test_agent_killed_mid_restore_ends_on_its_previous_state(fresh: Fleet, when: str) -> None:
    if when == "fetching":  # a model that crawls in through a slow link
        name = "n4"
        prep = fresh.prepare([name], model_size=6 * MiB)
        node = fresh[name]
        wait_until(
            "the journal to evict what the hub holds", lambda: not node.agent.held_chunk_bytes(), 20
        )
        fresh.proxies[name].set_bandwidth(1 * MiB)
    else:
        name = "n2" if when == "pre_restore_hook" else "n3"
        prep = fresh.prepare([name])
        node = fresh[name]
        node.mark("hold-pre" if when == "pre_restore_hook" else "hold-health")
    plan = fresh.plan("--nodes", name)
    fresh.start_plan(plan["id"])

    if when == "fetching":
        fresh.wait_plan(
            plan["id"],
            lambda p: node_states(p)[name] == "fetching" and node.leftovers(),
            "the fetch into staging",
        )
        time.sleep(1.0)
        assert node.leftovers(), "the staging copy is gone before the kill"
        assert node_states(fresh.status(plan["id"]))[name] == "fetching", "fetched too fast"
    elif when == "pre_restore_hook":
        wait_until("the pre_restore hook", lambda: node.hook_times("pre"), 30)
    else:
        wait_until("the health command", lambda: node.hook_times("health"), 30)
        # swapped: the restored content is in place, the previous kept aside
        assert tree(node.data / "files") == prep[name].a.files
        assert any(n.startswith(".amber-old-") for n in node.leftovers())
    node.crash()
    for marker in ("hold-pre", "hold-health"):
        node.unmark(marker)
    if name in fresh.proxies:
        fresh.proxies[name].set_bandwidth(None)
    node.start()

    final = fresh.wait_settled(plan["id"])
    (row,) = final["nodes"]
    assert row["state"] in ("healthy", "rolled_back"), final
    if row["state"] == "healthy":
        assert_restored(node, prep[name].a)
    else:
        assert final["state"] == "halted" and name in final["reason"], final
        assert "interrupted" in row["detail"], row
        assert_untouched(node, prep[name].b)
    assert [j[1:] for j in node.jobs(plan["id"])] == [("restore", row["state"])]


def flip_chunk_at_hub(fleet: Fleet, cid: bytes) -> tuple[Path, bytes]:
    """Flip the last byte of one chunk's blob inside the hub pack that holds it; returns
    the pack's path and its original bytes."""
    ((vault, pack, off, size),) = fleet.hub.catalog_query(
        "SELECT vault, hex(pack), off, size FROM objects WHERE id=?", (cid,)
    )
    path = fleet.hub.objects_dir / vault / "packs" / pack[:2].lower() / pack.lower()
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[off + size - 1] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(damaged))
    os.chmod(path, 0o444)
    return path, original


def journal_chunk_ids(node: Node) -> set[bytes]:
    """Every chunk the node's journal has a row for (evicted or not)."""
    return {r[0] for r in node.agent.journal_query("SELECT id FROM chunks")}


def test_tampered_chunk_at_the_hub_is_detected_and_the_node_stays_put(fresh: Fleet) -> None:
    node = fresh["n2"]
    before = journal_chunk_ids(node)
    prep = fresh.prepare(["n2", "n1"])
    new = sorted(journal_chunk_ids(node) - before)  # the chunks of n2's new state A
    assert new
    wait_until("n2's journal to evict", lambda: not node.agent.held_chunk_bytes(), 20)
    damaged = new[len(new) // 2]  # at the hub only, now
    victim, original = flip_chunk_at_hub(fresh, damaged)
    try:
        plan = fresh.plan("--nodes", "n2,n1", "--canary", "1")
        fresh.start_plan(plan["id"])
        final = fresh.wait_settled(plan["id"])
    finally:
        os.chmod(victim, 0o644)
        victim.write_bytes(original)
        os.chmod(victim, 0o444)
    assert final["state"] == "halted" and "n2" in final["reason"], final
    assert node_states(final) == {"n2": "failed", "n1": "planned"}
    detail = next(n["detail"] for n in final["nodes"] if n["node"] == "n2")
    assert detail == "IntegrityError (exit 12)", detail  # the hub hears the code only
    ((local,),) = node.agent.journal_query(
        "SELECT detail FROM restore_jobs WHERE plan_id = ?", (plan["id"],)
    )
    assert damaged.hex()[:16] in local, local  # the node's journal names the damaged chunk
    assert_untouched(node, prep["n2"].b)
    assert fresh["n1"].jobs(plan["id"]) == []
    assert_untouched(fresh["n1"], prep["n1"].b)
