"""Rotating a node's credentials: the old enrolment stops working at once, the new one
works after `amber-agent enroll`, and the node's history carries on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from tests.support.hub import HubProcess, synced_node
from tests.support.hubtls import enrolment_tls


def _connects(enrolment: Path) -> bool:
    return asyncio.run(_try_connect(enrolment))


async def _try_connect(enrolment: Path) -> bool:
    enr = json.loads(enrolment.read_text())
    try:
        nc = await nats.connect(
            enr["nats_servers"],
            user=enr["user"],
            password=enr["password"],
            connect_timeout=2,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            **enrolment_tls(enr),
        )
    except Exception:
        return False
    await nc.close()
    return True


def test_rotate_node_credentials(hub: HubProcess, tmp_path: Path) -> None:
    agent = synced_node(hub, tmp_path)
    old, src = agent.enrolment, tmp_path / "src"
    assert old is not None
    assert _connects(old)

    new = tmp_path / "n1-rotated.enrol"
    hub.ok("node", "rotate", "n1", "--vault", "v1", "--out", new)
    assert new.stat().st_mode & 0o077 == 0
    assert not _connects(old)  # a stolen copy of the old enrolment is now useless
    assert _connects(new)
    assert agent.run("sync", "--once").code == 50  # the node still holds the old password

    agent.ok("enroll", new)
    (src / "b.txt").write_text("b\n")
    agent.ok("checkpoint")
    agent.ok("sync", "--once")
    assert [c["seq"] for c in hub.checkpoints("n1", "v1")] == [0, 1]
