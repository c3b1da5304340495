"""`--vault` may be left out of hub commands when the hub holds exactly one vault."""

from __future__ import annotations

from pathlib import Path

from tests.support.hub import HubProcess


def test_vault_is_the_hubs_only_vault(hub: HubProcess, tmp_path: Path) -> None:
    none = hub.admin("node", "add", "n0", "--out", tmp_path / "n0.json")
    assert none.code == 2 and "holds no vault" in none.err, none
    hub.ok("node", "add", "n1", "--vault", "fleet", "--out", tmp_path / "n1.json")
    res = hub.ok("node", "add", "n2", "--out", tmp_path / "n2.json", "--label", "site=a")
    assert "enrolled fleet/n2" in res.out
    res = hub.ok("node", "rotate", "n2", "--out", tmp_path / "n2.json")
    assert "fleet/n2" in res.out
    plan = hub.admin("restore", "plan", "--selector", "site=a")
    # planned in fleet, where the selector finds n2 (which has no checkpoint yet)
    assert plan.code == 44 and "no checkpoints" in plan.err, plan
    # offline, from the catalog: the export looks in the only vault
    export = hub.admin("bundle", "export", "--node", "n1", "--out", tmp_path / "b.tar")
    assert export.code == 44 and "fleet/n1" in export.err, export

    hub.ok("node", "add", "m1", "--vault", "lab", "--out", tmp_path / "m1.json")
    for argv in (
        ("node", "add", "n3", "--out", tmp_path / "n3.json"),
        ("restore", "plan", "--nodes", "n1"),
        ("bundle", "export", "--node", "n1", "--out", tmp_path / "c.tar"),
    ):
        res = hub.admin(*argv)
        assert res.code == 2, res
        assert "2 vaults (fleet, lab)" in res.err and "--vault" in res.err, res
