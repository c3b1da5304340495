"""A manifest larger than one NATS message syncs, restores and survives a rebuild.

A `files` source whose manifest is well over the 8 MB `max_payload` (long paths make
a few thousand files enough) is checkpointed, synced to a real hub, restored by a node
that lost its disk (every manifest part fetched from the hub) and indexed again by
`amber-hub catalog rebuild`, and travels by bundle both ways (node to hub, and hub
to a node that restores with the hub out of reach). Before manifest parts (record
version 2) the sync failed with "record.put message of N bytes is too large".
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from amber.protocol.wire import MAX_MESSAGE_SIZE
from tests.support.data import tree
from tests.support.hub import HubProcess, assert_exactly_once_at_hub, new_agent
from tests.support.node import Agent

VAULT = "fleet"
FILES = 6000


def make_dataset(root: Path) -> Path:
    """FILES tiny files under long paths: a manifest of about 9 MB."""
    deep = root.joinpath(*(f"{i}-" + "d" * 200 for i in range(6)))
    deep.mkdir(parents=True)
    for i in range(FILES):
        (deep / f"{i:05d}-{'f' * 200}").write_bytes(b"sample %d\n" % i)
    return root


def manifest_record_sizes(hub: HubProcess) -> list[int]:
    con = sqlite3.connect(hub.catalog_path)
    try:
        return [r[0] for r in con.execute("SELECT size FROM objects WHERE kind = 'r'")]
    finally:
        con.close()


def test_a_manifest_over_one_message_syncs_restores_and_rebuilds(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    data = make_dataset(tmp_path / "dataset")
    agent = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    agent.add("dataset", "files", data)
    cp = agent.checkpoint()
    stats = agent.sync()
    assert stats["checkpoints"] == 1 and stats["chunks_sent"] == FILES
    assert_exactly_once_at_hub(hub, agent)
    down, up = tmp_path / "down.tar", tmp_path / "up.tar"
    res = hub.admin("bundle", "export", "--node", "edge1", "--vault", VAULT, "--out", down)
    assert res.code == 0, res
    agent.ok("bundle", "export", "--all", "--out", up)
    res = hub.admin("bundle", "import", up, "--json")
    assert res.code == 0, res
    assert res.json()["checkpoints"] == 1

    hub.stop()
    sizes = manifest_record_sizes(hub)
    assert sum(sizes) > MAX_MESSAGE_SIZE  # the manifest could not travel as one message
    assert len(sizes) >= 4 and max(sizes) < MAX_MESSAGE_SIZE  # head, parts, checkpoint
    res = hub.admin_proc("catalog", "rebuild")
    assert res.code == 0, res
    assert "1 manifests" in res.out and "1 checkpoints" in res.out and "0 skipped" in res.out
    assert sorted(manifest_record_sizes(hub)) == sorted(sizes)
    # the hub out of reach: a new machine restores from the hub's bundle alone
    hub_key = json.loads(agent.enrolment.read_text())["hub_key"]  # type: ignore[union-attr]
    offline = Agent.init(tmp_path / "offline-state", "edge1", VAULT, vault_key)
    shutil.copyfile(agent.state / "node.key", offline.state / "node.key")  # from safekeeping
    offline.ok("bundle", "import", down, "--hub-key", hub_key)
    offline.restore_to(cp["id"], tmp_path / "from-bundle")
    assert tree(tmp_path / "from-bundle" / "dataset") == tree(data)

    hub.start()

    fresh = Agent.init(tmp_path / "new-state", "edge1", VAULT, vault_key, enroll=agent.enrolment)
    assert "1 checkpoint(s) already at the hub" in fresh.init_output
    fresh.restore_to(cp["id"], tmp_path / "restored")
    assert tree(tmp_path / "restored" / "dataset") == tree(data)
