"""A fleet of nodes syncing the same model at the same moment sends it about once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from hub_helpers import Agent, HubProcess, agent_argv

MiB = 1024 * 1024


def test_concurrent_fleet_sends_a_shared_model_about_once(
    hub: HubProcess, vault_key: Path, tmp_path: Path
) -> None:
    model = os.urandom(16 * MiB)
    agents = []
    for i in range(4):
        enrol = hub.enrol(f"n{i}", "fleet", tmp_path / f"n{i}.enrol")
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "weights.bin").write_bytes(model)
        (src / "own.txt").write_text(f"node {i}\n")
        agent = Agent.init(
            tmp_path / f"state{i}", f"n{i}", "fleet", vault_key=vault_key, enroll=enrol
        )
        agent.ok("source", "add", "model", "--kind", "model", "--path", src)
        agent.ok("checkpoint")
        with open(agent.config, "a") as fh:  # slow uploads, so the syncs really overlap
            fh.write('\n[hub]\nbandwidth_limit = "4MiB"\n')
        agents.append(agent)

    procs = [
        subprocess.Popen(
            agent_argv("--config", a.config, "sync", "--once", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for a in agents
    ]
    sent = []
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0
        sent.append(json.loads(out.strip().splitlines()[-1])["bytes_sent"])
    assert min(sent) >= 0
    # the model crosses the network about once, not four times
    assert sum(sent) <= 1.1 * len(model) + 64 * 1024, sent
    for i in range(4):
        assert [c["seq"] for c in hub.checkpoints(f"n{i}", "fleet")] == [0]
