"""Sync under real faults: links cut and slowed by the fault proxy between the agent and
NATS, the hub process and its nats-server killed with SIGKILL mid-sync.

After every fault the same guarantees must hold: each checkpoint is at the hub exactly
once (one unbroken chain), it restores bit for bit, and the journal evicted only chunks
the hub's catalog holds. The agent's link goes through a ThreadedProxy with a bandwidth
limit so that a sync of a few tens of MiB lasts long enough to be hit mid-way.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import (
    Snapshot,
    assert_restored,
    grow_memory,
    make_memory,
    make_model,
    snapshot,
    write,
)
from tests.support.faultproxy import ThreadedProxy
from tests.support.hub import (
    HubProcess,
    assert_evicted_only_durable,
    assert_exactly_once_at_hub,
    new_agent,
)
from tests.support.node import Agent, add_memory_sources, agent_argv
from tests.support.procs import Result, spawn, stop_proc, tail, wait_until

VAULT = "fleet"
MiB = 1024 * 1024
MODEL = 24 * MiB
CACHE = 1 * MiB  # small, so that the journal really evicts after the hub's receipts
LINK = 8 * MiB  # bytes/s through the proxy: a full sync takes ~3 s


@pytest.fixture
def proxy(hub: HubProcess) -> Iterator[ThreadedProxy]:
    p = ThreadedProxy(hub.nats_port)
    try:
        yield p
    finally:
        p.close()


def loaded_node(
    hub: HubProcess, root: Path, model_size: int = MODEL
) -> tuple[Agent, list[Snapshot]]:
    """A node with agent memory and a model, two checkpoints taken, nothing synced; the
    snapshots are what each checkpoint must restore to."""
    agent = new_agent(hub, root, "edge1", VAULT)
    agent.configure(journal_cache_bytes=CACHE)
    data = make_memory(root / "data")
    add_memory_sources(agent, data)
    agent.add("model", "model", make_model(root / "model", model_size))
    sources = {"logs": data / "logs", "prompts": data / "prompts", "model": root / "model"}
    snaps = []
    agent.checkpoint()
    snaps.append(snapshot(sources, data / "memory.db"))
    grow_memory(data)
    write(root / "model" / "adapter.bin", b"\x01" * 300_000)
    agent.checkpoint()
    snaps.append(snapshot(sources, data / "memory.db"))
    return agent, snaps


def check_guarantees(hub: HubProcess, agent: Agent, root: Path, snaps: list[Snapshot]) -> None:
    remote = assert_exactly_once_at_hub(hub, agent)
    assert len(remote) == len(snaps)
    assert assert_evicted_only_durable(hub, agent) > 0
    final = agent.sync()  # nothing left to send, nothing re-sent
    assert (final["checkpoints"], final["chunks_sent"]) == (0, 0)
    for seq, snap in enumerate(snaps):  # evicted chunks come back from the hub
        dest = root / f"restored-{seq}-{time.monotonic_ns()}"
        agent.restore_to(f"seq:{seq}", dest)
        assert_restored(dest, snap, db_source="memory")


def sync_until_done(
    agent: Agent,
    during: Callable[[subprocess.Popen[bytes]], None] = lambda proc: None,
    timeout: float = 50.0,
    attempts: int = 12,
) -> list[Result]:
    """Run `sync --once` processes until one succeeds, calling ``during(proc)`` while
    each runs; a failed pass (hub unreachable) is simply run again, as cron would."""
    deadline = time.monotonic() + timeout
    results: list[Result] = []
    for _ in range(attempts):
        out = agent.log.with_name(f"sync-{len(results)}.out")
        proc = spawn(agent_argv("--config", agent.config, "sync", "--once", "--json"), out)
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"sync did not finish in {timeout}s:\n{tail(out)}")
                during(proc)
                time.sleep(0.02)
        finally:
            stop_proc(proc, grace=5)
        text = out.read_text(errors="replace")
        results.append(Result(proc.returncode, text, ""))
        if proc.returncode == 0:
            return results
        assert proc.returncode == 50, f"sync failed with an unexpected error:\n{text}"
        time.sleep(0.3)
    raise AssertionError(f"sync did not succeed in {attempts} passes: {results[-1]}")


def test_link_cut_repeatedly_during_sync_once(
    hub: HubProcess, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    agent, snaps = loaded_node(hub, tmp_path)
    agent.point_at(proxy.url)
    proxy.set_bandwidth(LINK)
    # two short cuts the client rides out by reconnecting, then one that lasts until the
    # pass gives up ("hub unreachable", exit 50) once its reconnect budget (~5 s) is spent,
    # rather than retrying its publishes until a one-hour deadline
    at = [0.15, 0.4, 0.65]
    cuts: list[int] = []
    gave_up: list[float] = []

    def cut_as_planned(proc: subprocess.Popen[bytes]) -> None:
        if len(cuts) == len(at) or proxy.bytes_upstream < MODEL * at[len(cuts)]:
            return
        cuts.append(proxy.bytes_upstream)
        proxy.cut()
        if len(cuts) < len(at):
            time.sleep(0.7)
        else:
            start = time.monotonic()
            wait_until("the pass to give up", lambda: proc.poll() is not None, 30)
            gave_up.append(time.monotonic() - start)
        proxy.restore()

    results = sync_until_done(agent, cut_as_planned)
    assert len(cuts) == 3, f"only {len(cuts)} cuts happened: {results}"
    assert gave_up and gave_up[0] < 30
    codes = [r.code for r in results]
    assert codes[-1] == 0 and 50 in codes, results
    assert any("cannot reach the hub" in r.out or "lost the connection" in r.out for r in results)
    check_guarantees(hub, agent, tmp_path, snaps)
    # re-sends after the cuts cost at most the chunks in flight, not the whole model
    assert proxy.bytes_upstream < 2 * MODEL


def test_link_cut_and_black_holed_during_daemon_sync(
    hub: HubProcess, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    agent, snaps = loaded_node(hub, tmp_path)
    agent.point_at(proxy.url)
    agent.set_hub(sync_interval=1)  # the daemon only syncs: no source is due yet
    proxy.set_bandwidth(LINK)

    proc = agent.popen("run")
    try:
        wait_until("a quarter uploaded", lambda: proxy.bytes_upstream > MODEL // 4, 30)
        proxy.cut(silent=True)  # packets vanish; the agent only notices by timeouts
        time.sleep(2)
        proxy.restore()
        mark = proxy.bytes_upstream
        wait_until("more uploaded", lambda: proxy.bytes_upstream > mark + MODEL // 4, 30)
        proxy.cut()
        time.sleep(1)
        proxy.restore()
        wait_until(
            "every checkpoint synced and the journal trimmed",
            lambda: (
                all(s == 2 for _, _, s in agent.journal_checkpoints())
                and agent.held_chunk_bytes() <= CACHE
            ),
            45,
        )
        assert proc.poll() is None, tail(agent.log)
    finally:
        code = stop_proc(proc, grace=15)
    assert code == 0, tail(agent.log)
    check_guarantees(hub, agent, tmp_path, snaps)


@pytest.mark.parametrize("agent_limit", [None, 460 * 1024], ids=["unpaced", "paced"])
def test_slow_link_still_completes(
    hub: HubProcess, proxy: ThreadedProxy, tmp_path: Path, agent_limit: int | None
) -> None:
    """A slow, far link completes. Paced by the agent's own `bandwidth_limit` just under
    the link's speed, nothing queues up long enough for a publish to time out and be
    sent twice; unpaced, some may be (the bytes are bounded, not exact)."""
    agent, snaps = loaded_node(hub, tmp_path, model_size=4 * MiB)
    agent.point_at(proxy.url)
    proxy.set_latency(0.1)  # +200 ms per round trip
    if agent_limit is None:
        proxy.set_bandwidth(1 * MiB)
    else:
        proxy.set_bandwidth(512 * 1024)
        agent.set_hub(bandwidth_limit=agent_limit)
    res = agent.proc("sync", "--once", "--json", timeout=50)
    assert res.code == 0, res
    stats = res.json()
    assert stats["checkpoints"] == 2 and stats["bytes_sent"] > 4 * MiB
    wire_bytes = proxy.bytes_upstream
    assert wire_bytes < (1.1 if agent_limit else 2.0) * stats["bytes_sent"]
    proxy.set_latency(0)
    proxy.set_bandwidth(None)
    check_guarantees(hub, agent, tmp_path, snaps)


def test_hub_killed_mid_sync_and_restarted(
    hub: HubProcess, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    agent, snaps = loaded_node(hub, tmp_path)
    agent.point_at(proxy.url)
    proxy.set_bandwidth(LINK)
    nats_before = hub.nats_pid()
    killed: list[float] = []

    def kill_hub_once(proc: subprocess.Popen[bytes]) -> None:
        if not killed and proxy.bytes_upstream > MODEL // 3:
            hub.kill()  # SIGKILL: ingest batches in flight are never acknowledged
            killed.append(time.monotonic())
            time.sleep(1)
            hub.start()  # same --data: adopts the nats-server the killed hub left

    results = sync_until_done(agent, kill_hub_once)
    assert killed, results
    assert hub.nats_pid() == nats_before  # the restarted hub adopted it
    check_guarantees(hub, agent, tmp_path, snaps)


def test_nats_server_killed_mid_sync_and_hub_restarted(
    hub: HubProcess, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    agent, snaps = loaded_node(hub, tmp_path)
    agent.point_at(proxy.url)
    proxy.set_bandwidth(LINK)
    nats_before = hub.nats_pid()
    killed: list[Any] = []

    def kill_nats_once(proc: subprocess.Popen[bytes]) -> None:
        if not killed and proxy.bytes_upstream > MODEL // 3:
            killed.append(hub.kill_nats())  # SIGKILL the JetStream server mid-upload
            hub.restart()  # the hub starts a new nats-server on the same port and store
            assert hub.nats_pid() not in (None, nats_before)

    results = sync_until_done(agent, kill_nats_once)
    assert killed, results
    check_guarantees(hub, agent, tmp_path, snaps)
