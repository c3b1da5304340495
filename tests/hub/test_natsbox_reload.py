"""Enrolment waits for nats-server to apply its new configuration (SIGHUP is asynchronous):
an enrolment handed out earlier would be refused on first use. The generated config
holds passwords: 0600 and fsynced."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

import nats
import pytest

from amber.hub.catalog import NodeRow
from amber.hub.natsbox import EmbeddedNats
from amber.hub.tls import ensure_hub_tls
from amber.protocol.errors import HubUnavailableError
from tests.support.servers import free_port

pytestmark = pytest.mark.servers  # starts hub or nats-server processes itself


def node_row(password: str) -> NodeRow:
    return NodeRow("v1", "n1", "node.v1.n1", password, 0, {}, None, None, None)


async def connects(box: EmbeddedNats, password: str) -> bool:
    try:
        nc = await nats.connect(
            box.url,
            user="node.v1.n1",
            password=password,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            **box.client_options(),  # type: ignore[arg-type]
        )
    except Exception:
        return False
    await nc.close()
    return True


@pytest.fixture
async def box(tmp_path: Path):  # type: ignore[no-untyped-def]
    nats_box = EmbeddedNats(
        tmp_path / "nats", "127.0.0.1", free_port(), "hub-password", ensure_hub_tls(tmp_path, [])
    )
    await nats_box.start([])
    try:
        yield nats_box
    finally:
        assert nats_box.proc is not None
        os.kill(nats_box.proc.pid, signal.SIGCONT)
        await nats_box.stop()


async def test_reload_returns_only_once_the_new_user_can_log_in(box: EmbeddedNats) -> None:
    assert box.proc is not None
    mode = stat.S_IMODE(box.config_path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert not await connects(box, "pw-1")

    os.kill(box.proc.pid, signal.SIGSTOP)  # a busy server: SIGHUP waits
    task = asyncio.create_task(box.reload_for([node_row("pw-1")], "node.v1.n1", "pw-1"))
    await asyncio.sleep(1.0)
    assert not task.done(), "the enrolment was handed out before the server applied it"
    os.kill(box.proc.pid, signal.SIGCONT)
    await asyncio.wait_for(task, 15)
    assert await connects(box, "pw-1")  # usable the moment it is handed out


async def test_a_reload_that_never_applies_is_an_error(box: EmbeddedNats) -> None:
    assert box.proc is not None
    os.kill(box.proc.pid, signal.SIGSTOP)
    with pytest.raises(HubUnavailableError, match="did not apply"):
        await box.reload_for([node_row("pw-2")], "node.v1.n1", "pw-2", timeout=1.5)
