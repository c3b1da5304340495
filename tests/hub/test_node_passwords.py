"""Node NATS passwords are kept as bcrypt hashes: whoever reads the hub's catalog or its
nats-server config (a backup of the hub's disk, a leaked file) cannot log in as a node."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import bcrypt
import pytest

from amber.hub.catalog import Catalog
from tests.support.hub import HubProcess
from tests.support.security import connect

pytestmark = pytest.mark.servers  # starts hub or nats-server processes itself


def test_the_catalog_and_the_server_config_hold_no_node_password(
    hub: HubProcess, tmp_path: Path
) -> None:
    enr = json.loads(hub.enrol("edge-1", "fleet", tmp_path / "edge-1.enrol").read_text())
    plain = enr["password"]
    (stored,) = hub.catalog_query("SELECT password FROM nodes WHERE node='edge-1'")[0]
    conf = (hub.data / "nats" / "nats.conf").read_text()
    assert plain not in stored and plain not in conf
    assert stored.startswith("$2a$") and stored in conf
    assert bcrypt.checkpw(plain.encode(), stored.encode())

    async def login(password: str) -> bool:
        try:
            nc = await connect({**enr, "password": password})
        except Exception:
            return False
        await nc.close()
        return True

    assert asyncio.run(login(plain))  # the node itself still connects
    assert not asyncio.run(login(stored))  # the attacker holding the hash does not


@pytest.mark.asyncio
async def test_an_old_catalog_with_clear_passwords_is_hashed_at_open(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE nodes(vault TEXT NOT NULL, node TEXT NOT NULL, user TEXT NOT NULL UNIQUE, "
        "password TEXT NOT NULL, created_us INTEGER NOT NULL, labels TEXT NOT NULL DEFAULT "
        "'{}', last_seen_us INTEGER, heartbeat TEXT, signer BLOB, PRIMARY KEY(vault, node))"
    )
    con.execute(
        "CREATE TABLE refusals(vault TEXT NOT NULL, id BLOB NOT NULL, reason TEXT NOT NULL, "
        "at_us INTEGER NOT NULL, PRIMARY KEY(vault, id)) WITHOUT ROWID"
    )
    con.execute("INSERT INTO nodes VALUES('v','n','node.v.n','clear-pass',0,'{}',NULL,NULL,NULL)")
    con.execute("INSERT INTO refusals VALUES('v', x'00', 'planted', 0)")
    con.commit()
    con.close()
    cat = await Catalog.open(path)
    try:
        (row,) = await cat.nodes()
        assert row.password.startswith("$2a$")
        assert bcrypt.checkpw(b"clear-pass", row.password.encode())
        assert await cat.refusals("v", "n", [b"\x00"]) == {}  # old per-vault refusals dropped
    finally:
        await cat.close()
