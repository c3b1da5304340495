"""Pinned node identities: the hub accepts a node's records only under the key it pinned.

Attackers: the holder of a node's stolen credentials and the vault key, signing with a
key of their own; the thief of a replaced device, holding its old key and credentials.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.hub import HubProcess, new_agent
from tests.support.node import Agent

VAULT = "pin"


def _pin(hub: HubProcess, node: str) -> bytes | None:
    rows = hub.catalog_query(
        "SELECT signer FROM signer_pins WHERE vault=? AND node=?", (VAULT, node)
    )
    return rows[0][0] if rows else None


def _node_with_data(hub: HubProcess, tmp_path: Path, vault_key: Path) -> tuple[Agent, Path]:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    agent.add("docs", "files", src)
    agent.checkpoint()
    agent.sync()
    return agent, src


def _impostor(tmp_path: Path, name: str, vault_key: Path, enrolment: Path, src: Path) -> Agent:
    """A device with the node's credentials and the vault key, but a key of its own,
    that took the hub's chain head first (so only the key can tell it apart)."""
    dev = Agent.init(tmp_path / name, "edge1", VAULT, vault_key, enroll=enrolment)
    dev.add("docs", "files", src)
    head = dev.ok("checkpoints", "--json").json()
    assert head, "the device adopted no checkpoint from the hub"
    return dev


def test_records_signed_by_another_key_are_refused(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    agent, src = _node_with_data(hub, tmp_path, vault_key)
    pinned = _pin(hub, "edge1")
    assert pinned is not None
    assert agent.enrolment is not None
    thief = _impostor(tmp_path, "thief", vault_key, agent.enrolment, src)
    (src / "a.txt").write_text("planted\n")
    thief.checkpoint()
    res = thief.run("sync", "--once")
    assert [c["seq"] for c in hub.checkpoints("edge1", VAULT)] == [0], res
    assert _pin(hub, "edge1") == pinned


def test_node_replace_pins_the_new_device_and_retires_the_old_key(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    agent, src = _node_with_data(hub, tmp_path, vault_key)
    old_key = _pin(hub, "edge1")
    new_enrol = tmp_path / "edge1-replaced.enrol.json"
    hub.ok("node", "replace", "edge1", "--vault", VAULT, "--out", new_enrol)
    assert _pin(hub, "edge1") is None
    assert agent.run("sync", "--once").code == 50  # the old credentials stop working

    device = _impostor(tmp_path, "device2", vault_key, new_enrol, src)
    (src / "b.txt").write_text("b\n")
    device.checkpoint()
    device.sync()
    assert [c["seq"] for c in hub.checkpoints("edge1", VAULT)] == [0, 1]
    new_key = _pin(hub, "edge1")
    assert new_key not in (None, old_key)


def test_an_old_catalog_pins_each_node_from_its_latest_checkpoint(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    _node_with_data(hub, tmp_path, vault_key)
    pinned = _pin(hub, "edge1")
    hub.stop()
    with sqlite3.connect(hub.catalog_path) as db:  # as a catalog made before pinning
        db.execute("DROP TABLE signer_pins")
        db.execute("UPDATE nodes SET signer=NULL")
        db.execute("PRAGMA user_version=0")
    hub.start()
    assert _pin(hub, "edge1") == pinned
