"""The hub in a box keeps its nats-server alive: killed, it comes back on the same port
with its JetStream store, and nodes sync again without anyone restarting the hub."""

from __future__ import annotations

from pathlib import Path

from tests.support.hub import HubProcess, synced_node
from tests.support.procs import pid_alive, wait_until


def test_hub_restarts_its_killed_nats_server(hub: HubProcess, tmp_path: Path) -> None:
    agent = synced_node(hub, tmp_path)
    src = tmp_path / "src"

    port = hub.nats_port
    old = hub.kill_nats()
    assert not pid_alive(old)

    def restarted() -> int | None:
        pid = hub.nats_pid()
        return pid if pid not in (None, old) else None

    new = wait_until("a new nats-server", restarted, timeout=20)
    assert hub.running and hub.nats_port == port  # same address: enrolments stay valid

    (src / "b.txt").write_text("second\n")
    agent.ok("checkpoint")
    wait_until(
        "a sync through the new server",
        lambda: agent.run("sync", "--once").code == 0,
        timeout=30,
        interval=0.5,
    )
    assert [c["seq"] for c in hub.checkpoints("n1", "v1")] == [0, 1]
    assert pid_alive(new)
