"""Air-gapped sites: backups to the hub and restores back, by bundle files alone.

A real hub in a box; nodes whose agents never open a connection to it: they know only
the hub's public key (given as --hub-key, as [hub] key in agent.toml, or in an enrolment
file whose NATS address is out of reach). Covers: a node shipping its checkpoints to the
hub (the chain intact, importing twice adding nothing, a later export through a pipe
carrying only what the hub lacks); a hub bundle carrying a restore order, restored
bit-exact on the node with a safety checkpoint, hooks and a check it names, its receipt
turning the plan ``done`` at the hub, a replay of the order refused; a replacement
machine restoring from bundles alone (one read from a pipe); an import killed
mid-restore, rolled back when run again, its receipt halting the plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from amber.agent.config import CheckConfig
from tests.support.site import VAULT, Site, pipe


def test_offline_node_ships_its_checkpoints_to_the_hub(site: Site, tmp_path: Path) -> None:
    site.enrol("ship-1")
    m = site.machine("ship-1", "ship-1")
    m.write_state(1)
    cp0 = m.checkpoint()
    m.write_state(2)
    cp1 = m.checkpoint("release=1")
    res = site.ship(m, tmp_path / "up1.tar")
    assert (res["checkpoints"], res["new_checkpoints"]) == (2, 2)
    rows = site.hub.checkpoints(node="ship-1", vault=VAULT)
    assert [(r["seq"], r["id"], r["prev"]) for r in rows] == [
        (0, cp0["id"], None),
        (1, cp1["id"], cp0["id"]),
    ]
    assert rows[1]["labels"] == {"release": "1"}
    text = site.hub_ok("checkpoints", "--node", "ship-1").out
    assert cp0["id"][:16] in text and cp1["id"][:16] in text

    # the same bundle again: nothing changes
    before = site.catalog()
    again = site.hub_ok("bundle", "import", tmp_path / "up1.tar", "--json").json()
    assert (again["new_checkpoints"], again["new_chunks"]) == (0, 0)
    assert site.catalog() == before

    # later, only what the hub lacks (one changed file, not the model again), by a pipe
    (m.data / "files" / "policy.json").write_text('{"allow": []}')
    cp2 = m.checkpoint()
    agent = ("amber.agent.cli", "--config", m.agent.config, "bundle", "export")
    hub = ("amber.hub.cli", "--data", site.hub.data, "bundle", "import", "-", "--json")
    res = pipe([*agent, "--since", cp1["id"][:12], "--out", "-"], [*hub]).json()
    assert (res["checkpoints"], res["new_checkpoints"], res["chunks"]) == (1, 1, 1)
    rows = site.hub.checkpoints(node="ship-1", vault=VAULT)
    assert [r["id"] for r in rows] == [cp0["id"], cp1["id"], cp2["id"]]
    assert rows[2]["prev"] == cp1["id"]
    # the node's key is pinned at the hub on the first import
    (signer,) = [r[2] for r in site.catalog()["signers"] if r[1] == "ship-1"]
    assert signer.hex() in m.agent.init_output


def test_restore_order_by_bundle_runs_like_an_online_restore(site: Site, tmp_path: Path) -> None:
    site.enrol("edge-a")
    m = site.machine("edge-a", "edge-a")
    good = m.write_state(11)
    cp = m.checkpoint("release=7")
    m.write_state(12)
    m.checkpoint()
    site.ship(m, tmp_path / "up.tar")
    m.write_state(13)  # what the restore overwrites

    down = tmp_path / "down.tar"
    # the check is the node's: it finds the restored files through AMBER_SOURCE_FILES
    script = f'test -s "$AMBER_SOURCE_FILES/policy.json" && echo check >> {m.home}/hooks.log'
    m.agent.configure(checks={"policy": CheckConfig("policy", ("/bin/sh", "-c", script), 60)})
    res = site.hub_ok(
        "bundle", "export", "--node", "edge-a", "--vault", VAULT, "--point", "label:release=7",
        "--restore-order", "--check", "policy", "--out", down, "--json",
    ).json()  # fmt: skip
    plan = res["plan"]
    assert plan == "bundle-" + res["bundle"][:12]
    status = site.hub_ok("restore", "status", plan, "--json").json()
    assert status["state"] == "exported"
    assert [(n["node"], n["state"], n["checkpoint"]) for n in status["nodes"]] == [
        ("edge-a", "queued", cp["id"])
    ]
    seen = m.ok("bundle", "inspect", down, "--json").json()
    assert (seen["kind"], seen["signature"], seen["signer"]) == (
        "hub-export",
        "valid",
        site.hub_key,
    )
    assert seen["order"]["order_id"] == res["order"] and seen["order"]["checkpoint"] == cp["id"]
    assert [c["id"] for c in seen["checkpoints"]] == [cp["id"]]

    receipt = tmp_path / "receipt.tar"
    out = m.run("bundle", "import", down, "--hub-key", site.hub_key, "--receipt", receipt, "--json")
    assert out.code == 0, out
    m.assert_state(good)
    assert m.hooks() == ["pre", "post", "check"]
    safety = [
        c
        for c in m.checkpoints()
        if c["kind"] == "safety" and c["labels"].get("amber.plan") == plan
    ]
    assert len(safety) == 1 and out.json()["safety"] == safety[0]["id"]
    assert out.json()["state"] == "healthy"

    back = site.hub_ok("bundle", "import", receipt, "--json").json()
    assert (back["plan"], back["outcome"], back["state"]) == (plan, "executed", "healthy")
    status = site.hub_ok("restore", "status", plan, "--json").json()
    assert status["state"] == "done"
    assert status["nodes"][0]["state"] == "healthy"
    listed = site.hub_ok("bundle", "receipts", "--json").json()
    assert [(r["order_id"], r["state"]) for r in listed if r["plan_id"] == plan] == [
        (res["order"], "healthy")
    ]

    # the same order again: refused, nothing touched; the receipt says what happened before
    journal, data = m.journal(), m.raw()
    again = m.run("bundle", "import", down, "--hub-key", site.hub_key, "--receipt", receipt)
    assert again.code == 71, again
    assert "already run" in again.err
    assert (m.journal(), m.raw()) == (journal, data)
    replayed = site.hub_ok("bundle", "import", receipt, "--json").json()
    assert (replayed["outcome"], replayed["state"]) == ("replayed", "healthy")
    assert site.hub_ok("restore", "status", plan, "--json").json()["state"] == "done"


def test_replacement_machine_restores_from_the_bundle_alone(site: Site, tmp_path: Path) -> None:
    site.enrol("edge-b")
    old = site.machine("edge-b", "edge-b")
    good = old.write_state(21)
    cp = old.checkpoint()
    site.ship(old, tmp_path / "up.tar")

    new = site.replacement("edge-b-new", old)  # a fresh journal, no data
    new.agent.set_hub(key=site.hub_key)  # the hub key in agent.toml this time
    plain = tmp_path / "all.tar"
    site.hub_ok("bundle", "export", "--node", "edge-b", "--vault", VAULT, "--out", plain)
    hub = ("amber.hub.cli", "--data", site.hub.data, "bundle", "export", "--node", "edge-b")
    agent = ("amber.agent.cli", "--config", new.agent.config, "bundle", "import", "-")
    piped = pipe([*hub, "--vault", VAULT, "--out", "-"], [*agent, "--json"])
    assert piped.code == 0, piped
    first = piped.json()
    assert (first["added"], first["order"]) == (1, None)
    journal = new.journal()
    second = new.ok("bundle", "import", plain, "--json").json()
    assert (second["added"], second["new_chunks"]) == (0, 0)
    assert new.journal() == journal

    some = new.ok("bundle", "inspect", plain, "--json").json()
    site.hub_ok("bundle", "export", "--node", "edge-b", "--vault", VAULT, "--sources", "files",
                "--out", tmp_path / "files.tar")  # fmt: skip
    part = new.ok("bundle", "inspect", tmp_path / "files.tar", "--json").json()
    assert part["manifests"] == some["manifests"] == 3  # a restore reads them all
    assert 0 < part["chunks"] < some["chunks"]

    down = tmp_path / "down.tar"
    site.hub_ok(
        "bundle", "export", "--node", "edge-b", "--vault", VAULT, "--restore-order", "--out", down
    )
    out = new.run("bundle", "import", down, "--json")
    assert out.code == 0, out
    new.assert_state(good)
    assert [c["id"] for c in new.checkpoints()] == [cp["id"]]  # nothing was there: no safety
    new.ok("verify")


def test_import_killed_mid_restore_rolls_back_when_run_again(site: Site, tmp_path: Path) -> None:
    enrolment = site.enrol("edge-k")
    m = site.machine("edge-k", "edge-k")
    # the enrolment file carried to the site, its NATS address unreachable from there: the
    # hub key comes from it this time
    enrolment["nats_servers"] = ["tls://127.0.0.1:9"]
    fd = os.open(m.agent.state / "enrolment.json", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(enrolment, fh)
    m.write_state(51)
    m.checkpoint()
    site.ship(m, tmp_path / "up.tar")
    live = m.write_state(52)
    down = tmp_path / "down.tar"
    export = ("bundle", "export", "--node", "edge-k", "--vault", VAULT, "--restore-order")
    plan = site.hub_ok(*export, "--out", down, "--json").json()["plan"]

    m.agent.configure(hooks={"pre_restore": "kill -9 $PPID"})  # the agent dies mid-restore
    killed = m.agent.proc("bundle", "import", down)
    assert killed.code == -9, killed
    m.agent.configure(hooks={})
    receipt = tmp_path / "receipt.tar"
    again = m.run("bundle", "import", down, "--receipt", receipt)
    assert again.code == 71, again
    m.assert_state(live)
    assert not list(m.data.glob(".amber-*"))
    back = site.hub_ok("bundle", "import", receipt, "--json").json()
    assert (back["outcome"], back["state"]) == ("replayed", "rolled_back")
    status = site.hub_ok("restore", "status", plan, "--json").json()
    assert (status["state"], status["nodes"][0]["state"]) == ("halted", "rolled_back")
