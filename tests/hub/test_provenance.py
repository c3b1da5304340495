"""Provenance: what a node restores from the hub is what it asked for.

The attacker is a compromised hub (or whoever can write its store). It holds genuine,
signed records of the vault and swaps them: asked for the manifest of the clean
checkpoint, it serves the manifest of the ransomware-era one. The node must refuse with
an integrity error naming the id, and restore nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.hub import HubProcess, new_agent
from tests.support.node import Agent

VAULT = "prov"


def _manifest_of(hub: HubProcess, cp_hex: str) -> str:
    import json

    rows = hub.catalog_query("SELECT manifests FROM checkpoints WHERE hex(id)=?", (cp_hex.upper(),))
    manifests = json.loads(rows[0][0])
    return str(manifests["docs"]).lower()


def _two_checkpoints(hub: HubProcess, tmp_path: Path, vault_key: Path) -> tuple[Agent, str, str]:
    """A node's clean checkpoint and a later "encrypted by ransomware" one, both synced."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "ledger.txt").write_text("clean books\n")
    agent = new_agent(hub, tmp_path, "edge1", VAULT, vault_key)
    agent.add("docs", "files", src)
    clean = agent.checkpoint()["id"]
    (src / "ledger.txt").write_text("ENCRYPTED: pay 5 BTC\n")
    bad = agent.checkpoint()["id"]
    agent.sync()
    return agent, clean, bad


def _fresh_device(hub: HubProcess, tmp_path: Path, vault_key: Path) -> Agent:
    """The node's replacement: same vault key, new credentials, an empty journal."""
    enrolment = tmp_path / "edge1-new.enrol.json"
    hub.ok("node", "rotate", "edge1", "--vault", VAULT, "--out", enrolment)
    return Agent.init(tmp_path / "edge1-new", "edge1", VAULT, vault_key, enroll=enrolment)


def test_hub_serving_another_genuine_manifest_is_refused(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    _, clean, bad = _two_checkpoints(hub, tmp_path, vault_key)
    clean_m, bad_m = _manifest_of(hub, clean), _manifest_of(hub, bad)
    assert clean_m != bad_m
    target = hub.record_path(VAULT, clean_m)  # the hostile hub swaps the clean manifest
    target.chmod(0o644)
    shutil.copyfile(hub.record_path(VAULT, bad_m), target)

    device = _fresh_device(hub, tmp_path, vault_key)
    dest = tmp_path / "restored"
    res = device.run("restore", clean, "--to", dest)
    assert res.code == 12, res  # IntegrityError
    assert clean_m[:16] in res.err and bad_m[:16] in res.err, res.err
    assert not (dest / "docs").exists()  # nothing restored, least of all the ransom note
