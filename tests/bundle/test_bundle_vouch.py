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

from pathlib import Path

from bundle_helpers import VAULT, Site


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
