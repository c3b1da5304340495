"""Sync between a real agent and a real hub in a box (hub and nats-server as processes).

Covers: each checkpoint lands once and a second pass sends nothing; dedup across the
nodes of a vault (and none across vaults); eviction after the hub's receipt with restores
still working from the hub; the lost-disk flow (re-init, list, restore, continue the
chain); heartbeats in `amber-hub status`; the daemon syncing by itself; an offline node
catching up when the hub comes up.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from pathlib import Path

from amber.agent.config import load_config
from amber.agent.remote import heartbeat
from amber.agent.runtime import AgentRuntime
from tests.support.data import (
    assert_restored,
    copy_tree,
    grow_memory,
    make_memory,
    make_model,
    snapshot,
    write,
)
from tests.support.hub import (
    HubProcess,
    assert_evicted_only_durable,
    assert_exactly_once_at_hub,
    new_agent,
)
from tests.support.node import Agent, add_memory_sources
from tests.support.procs import stop_proc, wait_until

VAULT = "fleet"
MiB = 1024 * 1024


def memory_and_model(agent: Agent, root: Path, model_size: int, tier: str = "warm") -> Path:
    data = make_memory(root / "data")
    add_memory_sources(agent, data, tier)
    agent.add("model", "model", make_model(root / "model", model_size), "--tier", tier)
    return data


def sources_of(root: Path) -> dict[str, Path]:
    """Source name -> the directory it protects (the sqlite source is compared apart)."""
    data = root / "data"
    return {
        "logs": data / "logs",
        "prompts": data / "prompts",
        "policies": data / "policies",
        "model": root / "model",
    }


def test_each_checkpoint_lands_once_and_a_second_sync_sends_nothing(
    hub: HubProcess, tmp_path: Path
) -> None:
    agent = new_agent(hub, tmp_path, "edge1", VAULT)
    data = memory_and_model(agent, tmp_path, 3 * MiB)
    cp0 = agent.checkpoint()
    grow_memory(data)
    cp1 = agent.checkpoint()
    assert [c["synced"] for c in agent.checkpoints()] == [False, False]
    assert agent.status()["backlog_chunks"] > 0

    stats = agent.sync()
    assert stats["checkpoints"] == 2
    assert stats["chunks_sent"] > 0 and stats["bytes_sent"] > 3 * MiB
    remote = assert_exactly_once_at_hub(hub, agent)
    assert [c["id"] for c in remote] == [cp0["id"], cp1["id"]]
    assert all(c["synced"] for c in agent.checkpoints())
    status = agent.status()
    assert (status["backlog_bytes"], status["backlog_chunks"]) == (0, 0)

    again = agent.sync()
    assert (again["checkpoints"], again["chunks_sent"], again["bytes_sent"]) == (0, 0, 0)
    assert hub.checkpoints(node="edge1") == remote

    # a checkpoint of unchanged data sends its records and no chunk
    cp2 = agent.checkpoint()
    third = agent.sync()
    assert (third["checkpoints"], third["chunks_sent"]) == (1, 0)
    assert [c["id"] for c in assert_exactly_once_at_hub(hub, agent)][-1] == cp2["id"]


def test_status_shows_last_checkpoint_and_backlog_from_heartbeats(
    hub: HubProcess, tmp_path: Path
) -> None:
    agent = new_agent(hub, tmp_path, "edge1", VAULT)
    data = make_memory(tmp_path / "data")
    add_memory_sources(agent, data, "hot")
    cp0 = agent.checkpoint()
    agent.sync()  # sends a heartbeat after the pass
    node = wait_until(
        "a heartbeat", lambda: (n := hub.node_status("edge1"))["agent_version"] and n, 10
    )
    assert node["last_seq"] == 0 and node["last_checkpoint_us"] == cp0["time_us"]
    assert (node["backlog_bytes"], node["backlog_chunks"]) == (0, 0)
    assert node["rpo_seconds"] == load_config(agent.config).tiers["hot"].rpo
    assert node["rpo_breached"] is False

    # a checkpoint not yet synced shows up as the node's backlog at its next heartbeat
    grow_memory(data, rows=300)
    cp1 = agent.checkpoint()
    backlog = agent.status()["backlog_bytes"]
    assert backlog > 0
    seen = node["last_seen_us"]

    async def beat() -> None:
        async with AgentRuntime.open(load_config(agent.config)) as rt:
            async with rt.hub(required=True) as link:
                assert link is not None
                await heartbeat(rt, link)

    asyncio.run(beat())
    node = wait_until(
        "the second heartbeat",
        lambda: (n := hub.node_status("edge1"))["last_seen_us"] != seen and n,
        10,
    )
    assert node["backlog_bytes"] == backlog and node["backlog_chunks"] > 0
    assert node["last_seq"] == 0  # the hub holds seq 0 only

    agent.sync()
    node = wait_until(
        "the backlog to clear",
        lambda: (n := hub.node_status("edge1"))["backlog_bytes"] == 0 and n,
        10,
    )
    assert node["last_seq"] == 1 and node["last_checkpoint_us"] == cp1["time_us"]
    text = hub.ok("status").out
    assert "fleet/edge1" in text and "backlog on node 0 bytes" in text


def test_a_second_node_of_the_vault_sends_only_what_the_hub_lacks(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    model_size = 12 * MiB
    model = make_model(tmp_path / "model", model_size)
    first = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    first.add("model", "model", model)
    first.add("prompts", "files", write(tmp_path / "p1" / "system.txt", "node one\n").parent)
    first.checkpoint()
    sent_first = first.sync()
    assert sent_first["bytes_sent"] > model_size

    # the same model on another node of the vault, next to a file of its own
    second = new_agent(hub, tmp_path, "edge2", VAULT, vault_key)
    second.add("model", "model", copy_tree(model, tmp_path / "model-copy"))
    second.add("prompts", "files", write(tmp_path / "p2" / "system.txt", "node two\n").parent)
    cp = second.checkpoint()
    sent_second = second.sync()
    assert sent_second["checkpoints"] == 1
    assert sent_second["chunks_sent"] + sent_second["chunks_skipped"] == cp["new_chunks"]
    assert sent_second["chunks_skipped"] >= sent_first["chunks_sent"] - 2  # all the model's
    assert sent_second["chunks_sent"] <= 2  # its own small file (and nothing else)
    assert sent_second["bytes_sent"] < model_size // 100
    assert_exactly_once_at_hub(hub, second)

    # a node of another vault (another key) shares nothing: chunk ids are keyed
    other = new_agent(hub, tmp_path, "edge3", "elsewhere")
    other.add("model", "model", copy_tree(model, tmp_path / "model-other"))
    other.checkpoint()
    assert other.sync()["bytes_sent"] > model_size

    # the shared model restores on the second node, fetched from the hub if need be
    second.restore_to("latest", tmp_path / "restored")
    assert_restored(tmp_path / "restored", snapshot({"model": model}))


def test_eviction_after_sync_keeps_restores_working_from_the_hub(
    hub: HubProcess, tmp_path: Path
) -> None:
    agent = new_agent(hub, tmp_path, "edge1", VAULT)
    cache = 256 * 1024
    agent.configure(journal_cache_bytes=cache)
    memory_and_model(agent, tmp_path, 8 * MiB)
    agent.checkpoint()
    snap = snapshot(sources_of(tmp_path), tmp_path / "data" / "memory.db")
    held_before = agent.held_chunk_bytes()
    journal_before = agent.status()["journal_bytes"]
    assert held_before > 8 * MiB

    stats = agent.sync()
    assert stats["evicted_bytes"] > 7 * MiB
    assert agent.held_chunk_bytes() <= cache
    assert agent.status()["journal_bytes"] < journal_before - 7 * MiB
    assert assert_evicted_only_durable(hub, agent) > 10
    assert_exactly_once_at_hub(hub, agent)

    agent.restore_to("latest", tmp_path / "restored")
    assert_restored(tmp_path / "restored", snap, db_source="memory")


def test_eviction_waits_while_another_command_writes_the_journal(
    hub: HubProcess, tmp_path: Path
) -> None:
    # eviction rewrites and deletes pack files: never while another process (a checkpoint
    # or restore command next to the daemon) holds the write lock and appends to them
    agent = new_agent(hub, tmp_path, "edge1", VAULT)
    agent.configure(journal_cache_bytes=256 * 1024)
    memory_and_model(agent, tmp_path, 8 * MiB)
    agent.checkpoint()
    held = agent.held_chunk_bytes()
    packs = sorted((agent.state / "packs").iterdir())
    fd = os.open(agent.state / "agent.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another command is writing
        stats = agent.sync()
        assert stats["checkpoints"] == 1 and stats["evicted_bytes"] == 0
        assert agent.held_chunk_bytes() == held
        assert sorted((agent.state / "packs").iterdir()) == packs
    finally:
        os.close(fd)
    assert agent.sync()["evicted_bytes"] > 7 * MiB  # the next pass catches up


def test_lost_disk_relists_restores_and_continues_the_chain(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    agent = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    data = memory_and_model(agent, tmp_path, 2 * MiB)
    db = data / "memory.db"
    cp0 = agent.checkpoint()
    snap0 = snapshot(sources_of(tmp_path), db)
    grow_memory(data)
    write(data / "prompts" / "tools.md", "# tools\nsearch, calculator\n")
    cp1 = agent.checkpoint()
    snap1 = snapshot(sources_of(tmp_path), db)
    assert agent.sync()["checkpoints"] == 2

    shutil.rmtree(agent.state)  # the node's disk is lost (and its signing key); vault key kept
    # the operator vouches for the replacement: new credentials, the old key retired
    replaced = tmp_path / "edge1-replaced.enrol"
    hub.ok("node", "replace", "edge1", "--vault", VAULT, "--out", replaced)
    fresh = Agent.init(tmp_path / "new-state", "edge1", VAULT, vault_key, enroll=replaced)
    assert "2 checkpoint(s) already at the hub" in fresh.init_output
    listed = fresh.checkpoints()
    assert [(c["seq"], c["id"], c["synced"]) for c in listed] == [
        (0, cp0["id"], True),
        (1, cp1["id"], True),
    ]
    for cp, snap in ((cp0, snap0), (cp1, snap1)):
        dest = tmp_path / f"restored-{cp['seq']}"
        fresh.restore_to(cp["id"], dest)
        assert_restored(dest, snap, db_source="memory")

    # the re-initialised node continues the same chain
    add_memory_sources(fresh, data)
    fresh.add("model", "model", tmp_path / "model")
    grow_memory(data, seed=5)
    cp2 = fresh.checkpoint()
    assert cp2["seq"] == 2
    stats = fresh.sync()
    assert stats["checkpoints"] == 1
    assert stats["chunks_skipped"] > 0  # the model is at the hub already
    remote = assert_exactly_once_at_hub(hub, fresh)
    assert [c["id"] for c in remote] == [cp0["id"], cp1["id"], cp2["id"]]
    assert remote[2]["prev"] == cp1["id"]
    dest = tmp_path / "restored-2"
    fresh.restore_to(cp2["id"], dest)
    assert_restored(dest, snapshot(sources_of(tmp_path), db), db_source="memory")


def test_the_daemon_checkpoints_and_syncs_by_itself(hub: HubProcess, tmp_path: Path) -> None:
    agent = new_agent(hub, tmp_path, "edge1", VAULT)
    data = make_memory(tmp_path / "data")
    add_memory_sources(agent, data, "hot")
    agent.set_tier("hot", interval=1)
    agent.set_hub(sync_interval=1)

    proc = agent.popen("run")
    try:
        wait_until("two checkpoints at the hub", lambda: len(hub.checkpoints("edge1")) >= 2, 30)
        grow_memory(data)
        count = len(agent.journal_checkpoints())
        wait_until(
            "a checkpoint of the new rows at the hub",
            lambda: len(hub.checkpoints("edge1")) > count,
            30,
        )
    finally:
        code = stop_proc(proc, grace=15)
    assert code == 0, f"the daemon exited with {code} on SIGTERM"
    agent.sync()  # what it checkpointed after its last pass
    assert_exactly_once_at_hub(hub, agent)
    assert hub.node_status("edge1")["last_seen_us"] is not None


def test_an_offline_node_keeps_checkpointing_and_catches_up(
    hub: HubProcess, tmp_path: Path
) -> None:
    enrolment = hub.enrol("edge1", VAULT, tmp_path / "edge1.enrol.json")
    hub.stop()
    agent = Agent.init(tmp_path / "edge1-state", "edge1", VAULT, enroll=enrolment)
    assert "unreachable" in agent.init_output
    data = make_memory(tmp_path / "data")
    add_memory_sources(agent, data, "hot")
    agent.set_tier("hot", interval=1)
    agent.set_hub(sync_interval=1)
    agent.checkpoint()

    started = time.monotonic()
    res = agent.proc("sync", "--once", timeout=40)
    assert res.code == 50, res  # hub unreachable: a clear error, nothing lost
    assert "cannot reach the hub" in res.err
    assert time.monotonic() - started < 30
    assert agent.status()["backlog_chunks"] > 0

    proc = agent.popen("run")
    try:
        wait_until("offline checkpoints", lambda: len(agent.journal_checkpoints()) >= 3, 30)
        grow_memory(data)
        assert proc.poll() is None
        hub.start()
        wait_until(
            "the offline checkpoints at the hub",
            lambda: len(hub.checkpoints("edge1")) >= 4,
            45,
        )
    finally:
        code = stop_proc(proc, grace=15)
    assert code == 0
    agent.sync()
    remote = assert_exactly_once_at_hub(hub, agent)
    assert len(remote) >= 4
    agent.restore_to("latest", tmp_path / "restored")
    assert_restored(
        tmp_path / "restored",
        snapshot({"logs": data / "logs"}, data / "memory.db"),
        db_source="memory",
    )
