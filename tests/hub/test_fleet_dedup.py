"""A fleet of nodes syncing the same model at the same moment sends it about once."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.hub import HubProcess
from tests.support.node import Agent

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

    with ThreadPoolExecutor(len(agents)) as pool:  # four agent processes at once
        runs = list(pool.map(lambda a: a.proc("sync", "--once", "--json", timeout=180), agents))
    sent = []
    for res in runs:
        assert res.code == 0, res
        sent.append(json.loads(res.out.strip().splitlines()[-1])["bytes_sent"])
    assert min(sent) >= 0
    # the model crosses the network about once, not four times
    assert sum(sent) <= 1.1 * len(model) + 64 * 1024, sent
    for i in range(4):
        assert [c["seq"] for c in hub.checkpoints(f"n{i}", "fleet")] == [0]
