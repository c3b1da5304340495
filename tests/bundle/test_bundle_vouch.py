"""A hub-signed bundle vouches for the checkpoints its index names.

A replacement device starts with the vault key and a fresh node key (the old one died
with the old device). The hub's signature on a bundle, checked against the hub key the
node already trusts, is what makes the old device's checkpoints restorable on it: the
import, the carried restore order, and later ``restore --to`` and ``verify`` without any
hub. The journal records who vouched for each checkpoint; ``checkpoints`` shows it.

The attacker here holds the vault key (a former employee, a stolen backup of vault.key)
and signs with a key of their own: a bundle they sign is refused, and a checkpoint no
hub-signed index named stays refused even when it sits in the journal's records.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from amber.bundlefile import BundleStream, BundleWriter
from amber.protocol import bundle as b
from amber.protocol import wire
from amber.protocol.errors import ConfigError
from amber.protocol.keys import SigningKey
from tests.support.node import Agent, agent_cli
from tests.support.site import VAULT, Site


def test_fresh_device_restores_hub_vouched_checkpoints(site: Site, tmp_path: Path) -> None:
    site.enrol("edge-v")
    old = site.machine("edge-v", "edge-v")
    good = old.write_state(31)
    cp = old.checkpoint()
    site.ship(old, tmp_path / "up.tar")

    new = site.machine("edge-v-new", "edge-v")  # vault key only: a fresh node key
    new.agent.set_hub(key=site.hub_key)
    down = tmp_path / "down.tar"
    site.hub_ok(
        "bundle", "export", "--node", "edge-v", "--vault", VAULT, "--restore-order", "--out", down
    )
    out = new.run("bundle", "import", down, "--json")
    assert out.code == 0, out
    new.assert_state(good)

    (row,) = new.checkpoints()
    assert (row["id"], row["signer"]) == (cp["id"], "hub")
    listed = new.ok("checkpoints").out
    assert "hub" in listed
    new.ok("restore", cp["id"][:12], "--to", tmp_path / "again")
    new.ok("verify", cp["id"][:12])


def test_a_never_enrolled_device_trusts_the_hub_key_it_was_initialised_with(
    site: Site, tmp_path: Path
) -> None:
    site.enrol("edge-z")
    old = site.machine("edge-z", "edge-z")
    old.write_state(61)
    cp = old.checkpoint()
    site.ship(old, tmp_path / "up.tar")
    plain = tmp_path / "plain.tar"
    site.hub_ok("bundle", "export", "--node", "edge-z", "--vault", VAULT, "--out", plain)

    bare = Agent.init(tmp_path / "bare", "edge-z", VAULT, site.key)  # no hub key at all
    refused = bare.run("bundle", "import", plain)
    assert refused.code == ConfigError.exit_code, refused
    assert "no hub key is known" in refused.err

    init = ["init", "--dir", tmp_path / "air", "--node", "edge-z", "--vault", VAULT]
    assert agent_cli(*init, "--vault-key", site.key, "--hub-key", "abc").code == 2
    res = agent_cli(*init, "--vault-key", site.key, "--hub-key", site.hub_key)
    assert res.code == 0, res
    air = Agent(tmp_path / "air", "edge-z", VAULT)
    air.ok("bundle", "import", plain)
    assert [(c["id"], c["signer"]) for c in air.checkpoints()] == [(cp["id"], "hub")]
    air.ok("restore", cp["id"][:12], "--to", tmp_path / "restored")


def resign(genuine: Path, out: Path, signer: SigningKey) -> None:
    """The vault-key holder's bundle: the genuine bundle's members, its order re-made for
    the new bundle id, all signed with ``signer``."""
    with open(genuine, "rb") as fh:
        stream = BundleStream(fh)
        header = dataclasses.replace(stream.header(), signer=signer.public)
        members = list(stream.members())
        stream.finish()
    with BundleWriter(str(out), header) as w:
        for m in members:
            if m.order is not None:
                plan = b.plan_id_for(w.bundle_id)
                order = dataclasses.replace(m.order, plan_id=plan)
                w.add(m.name, wire.encode(wire.sign_order(order, signer)))
            else:
                w.add(m.name, m.data)
        w.finish(signer)


def test_a_bundle_signed_by_a_vault_key_holder_vouches_for_nothing(
    site: Site, tmp_path: Path
) -> None:
    site.enrol("edge-w")
    old = site.machine("edge-w", "edge-w")
    old.write_state(41)
    cp = old.checkpoint()
    site.ship(old, tmp_path / "up.tar")
    genuine = tmp_path / "genuine.tar"
    site.hub_ok(
        "bundle", "export", "--node", "edge-w", "--vault", VAULT, "--restore-order",
        "--out", genuine,
    )  # fmt: skip

    new = site.machine("edge-w-new", "edge-w")
    new.agent.set_hub(key=site.hub_key)
    mine = new.write_state(42)
    crafted = tmp_path / "crafted.tar"
    resign(genuine, crafted, SigningKey.generate())
    journal = new.journal()
    out = new.run("bundle", "import", crafted, "--json")
    assert out.code == 13, out  # SignatureError
    assert "not this node's hub key" in out.err
    assert new.journal() == journal and not new.agent.journal_query("SELECT * FROM vouches")
    new.assert_state(mine)
    refused = new.run("restore", cp["id"][:12], "--to", tmp_path / "x")
    assert refused.code != 0 and not (tmp_path / "x").exists()


def test_a_checkpoint_no_hub_named_stays_refused(site: Site, tmp_path: Path) -> None:
    """The hub vouched for checkpoint A of the old device; B, signed by the same old key
    (its thief holds it and the vault key) and slipped into the journal's records and
    index, is still refused: a vouch is for the checkpoint the hub named, not its key."""
    site.enrol("edge-y")
    old = site.machine("edge-y", "edge-y")
    old.write_state(51)
    a = old.checkpoint()
    site.ship(old, tmp_path / "up.tar")
    old.write_state(52)
    b_cp = old.checkpoint()  # the hub never sees this one
    new = site.machine("edge-y-new", "edge-y")
    new.agent.set_hub(key=site.hub_key)
    down = tmp_path / "down.tar"
    site.hub_ok("bundle", "export", "--node", "edge-y", "--vault", VAULT, "--out", down)
    new.ok("bundle", "import", down)
    new.ok("restore", a["id"][:12], "--to", tmp_path / "a")

    slip = sqlite3.connect(old.agent.journal)
    rows = slip.execute("SELECT * FROM records").fetchall()
    index = slip.execute("SELECT * FROM checkpoints WHERE seq = 1").fetchall()
    slip.close()
    con = sqlite3.connect(new.agent.journal)
    con.executemany("INSERT OR IGNORE INTO records VALUES(?,?,?,?)", rows)
    con.executemany("INSERT INTO checkpoints VALUES(?,?,?,?,?,?,?)", index)
    con.commit()
    con.close()
    out = new.run("restore", b_cp["id"][:12], "--to", tmp_path / "b")
    assert out.code == 13, out  # SignatureError: signed by an untrusted key
    assert "untrusted key" in out.err and not (tmp_path / "b").exists()
    assert [c["signer"] for c in new.checkpoints()] == ["hub", "unknown"]
