"""`amber-hub catalog rebuild`: the catalog is an index the store alone can recreate.

Two nodes of one vault (sharing a model) and a node of another vault sync to a real hub;
the hub is stopped, its catalog's index wiped (or catalog.db deleted), the catalog
rebuilt from the object store, and the checkpoints, manifests and objects must equal
what they were. The rebuilt catalog then serves a restore and the chains continue. A
damaged record in the store is skipped and reported, never fatal.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import (
    assert_restored,
    copy_tree,
    grow_memory,
    make_memory,
    make_model,
    snapshot,
)
from tests.support.hub import HubProcess, assert_exactly_once_at_hub, new_agent
from tests.support.node import Agent, add_memory_sources

VAULT = "fleet"
MiB = 1024 * 1024


def synced_fleet(hub: HubProcess, root: Path, vault_key: Path) -> dict[str, Agent]:
    model = make_model(root / "model", 2 * MiB)
    first = new_agent(hub, root, "edge1", VAULT, vault_key)
    add_memory_sources(first, make_memory(root / "mem1", seed=1))
    first.add("model", "model", model)
    first.checkpoint()
    grow_memory(root / "mem1")
    first.checkpoint()
    assert first.sync()["checkpoints"] == 2

    second = new_agent(hub, root, "edge2", VAULT, vault_key)
    add_memory_sources(second, make_memory(root / "mem2", seed=2))
    second.add("model", "model", copy_tree(model, root / "model2"))
    second.checkpoint()
    assert second.sync()["chunks_skipped"] > 0  # shares the model's chunks

    # the same node name in another vault: the rebuilt index must keep vaults apart
    other = new_agent(hub, root, "edge1", "lab")
    add_memory_sources(other, make_memory(root / "mem3", seed=3))
    other.checkpoint()
    other.sync()
    return {"edge1": first, "edge2": second, "lab": other}


def api_state(hub: HubProcess) -> dict[str, Any]:
    """What the admin API says the hub holds (receipt times are not in the store)."""
    checkpoints = [{k: v for k, v in c.items() if k != "received_us"} for c in hub.checkpoints()]
    status = hub.status()
    return {
        "checkpoints": checkpoints,
        "objects": status["objects"],
        "stored_bytes": status["stored_bytes"],
    }


def index_state(hub: HubProcess) -> dict[str, Any]:
    """The catalog's index tables, read directly (hub stopped), minus local times."""
    return {
        "objects": hub.catalog_query(
            "SELECT vault, hex(id), kind, size, hex(pack), off FROM objects ORDER BY vault, id"
        ),
        "manifests": hub.catalog_query("SELECT * FROM manifests ORDER BY vault, id"),
        "checkpoints": hub.catalog_query(
            "SELECT vault, node, seq, hex(id), hex(prev), time_us, kind, labels, manifests, "
            "hex(signer) FROM checkpoints ORDER BY vault, node, seq"
        ),
    }


def rebuild(hub: HubProcess) -> dict[str, int]:
    res = hub.admin_proc("catalog", "rebuild")
    assert res.code == 0, res
    line = next(x for x in res.out.splitlines() if "rebuilt" in x)
    counts = dict(
        (name, int(n)) for n, name in (part.split() for part in line.split(": ", 1)[1].split(", "))
    )
    counts["_stderr"] = res.err  # type: ignore[assignment]
    return counts


@pytest.mark.parametrize("loss", ["index wiped", "catalog.db deleted"])
def test_rebuild_restores_the_index_from_the_store(
    hub: HubProcess, tmp_path: Path, vault_key: Path, loss: str
) -> None:
    agents = synced_fleet(hub, tmp_path, vault_key)
    before_api = api_state(hub)
    assert len(before_api["checkpoints"]) == 4
    hub.stop()
    before = index_state(hub)
    assert len(before["manifests"]) > 0 and len(before["objects"]) == before_api["objects"]
    assert all(o[4] for o in before["objects"] if o[2] == "c")  # every chunk is in a pack

    if loss == "index wiped":
        con = sqlite3.connect(hub.catalog_path)
        with con:
            for table in ("objects", "manifests", "checkpoints"):
                con.execute(f"DELETE FROM {table}")
        con.close()
        assert index_state(hub)["objects"] == []
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{hub.catalog_path}{suffix}").unlink(missing_ok=True)

    counts = rebuild(hub)
    assert counts["checkpoints"] == 4 and counts["skipped"] == 0
    assert counts["manifests"] == len(before["manifests"])
    assert index_state(hub) == before

    hub.start()
    assert api_state(hub) == before_api
    if loss == "catalog.db deleted":
        return  # node enrolments are not in the store: re-enrolling is another story

    # the rebuilt catalog serves a node that lost its disk ...
    edge2 = agents["edge2"]
    fresh = Agent.init(tmp_path / "edge2-new", "edge2", VAULT, vault_key, enroll=edge2.enrolment)
    assert "1 checkpoint(s) already at the hub" in fresh.init_output
    fresh.restore_to("latest", tmp_path / "restored")
    assert_restored(
        tmp_path / "restored",
        snapshot({"logs": tmp_path / "mem2" / "logs", "model": tmp_path / "model2"}),
    )
    # ... and the chains continue where they were, sending only what is new
    first = agents["edge1"]
    grow_memory(tmp_path / "mem1", seed=8)
    assert first.checkpoint()["seq"] == 2
    stats = first.sync()
    assert stats["checkpoints"] == 1 and stats["chunks_skipped"] > 0
    assert_exactly_once_at_hub(hub, first)


def test_rebuild_skips_and_reports_damaged_records(
    hub: HubProcess, tmp_path: Path, vault_key: Path
) -> None:
    synced_fleet(hub, tmp_path, vault_key)
    hub.stop()
    before = index_state(hub)

    # one manifest with a flipped byte, one checkpoint cut short, one stray file, and
    # one pack object of the other vault cut inside its second entry
    manifest = next(r for r in before["manifests"] if r[0] == VAULT and r[2] == "edge2")
    manifest_hex = manifest[1].hex()
    newest = next(c for c in before["checkpoints"] if c[:3] == (VAULT, "edge1", 1))
    checkpoint_hex = newest[3].lower()
    flipped = hub.record_path(VAULT, manifest_hex)
    cut = hub.record_path(VAULT, checkpoint_hex)
    for path in (flipped, cut):
        path.chmod(0o644)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:40])
    (hub.record_path(VAULT, "not-a-record")).write_bytes(b"junk")
    in_pack = [o for o in before["objects"] if o[0] == "lab" and o[4]]
    pack_hex = max({o[4] for o in in_pack}, key=lambda p: sum(o[4] == p for o in in_pack))
    entries = sorted(o[5] for o in in_pack if o[4] == pack_hex)
    assert len(entries) >= 2
    pack = hub.objects_dir / "lab" / "packs" / pack_hex[:2].lower() / pack_hex.lower()
    pack.chmod(0o644)
    pack.write_bytes(pack.read_bytes()[: entries[1] + 10])
    lost = {o[1] for o in in_pack if o[4] == pack_hex and o[5] > entries[0]}

    counts = rebuild(hub)
    assert counts["skipped"] == 4
    assert counts["checkpoints"] == 3 and counts["manifests"] == len(before["manifests"]) - 1
    for rid in (manifest_hex, checkpoint_hex, pack_hex.lower()):
        assert rid in str(counts["_stderr"]), counts["_stderr"]
    assert "truncated" in str(counts["_stderr"])

    after = index_state(hub)
    damaged = {manifest_hex.upper(), checkpoint_hex.upper()}
    assert after["objects"] == [o for o in before["objects"] if o[1] not in damaged | lost]
    assert after["manifests"] == [m for m in before["manifests"] if m[1].hex() != manifest_hex]
    assert after["checkpoints"] == [c for c in before["checkpoints"] if c != newest]

    hub.start()  # the hub serves the rest
    listed = hub.checkpoints()
    assert [(c["vault"], c["node"], c["seq"]) for c in listed] == [
        ("fleet", "edge1", 0),
        ("fleet", "edge2", 0),
        ("lab", "edge1", 0),
    ]
