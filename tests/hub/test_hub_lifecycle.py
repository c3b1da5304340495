"""The hub's parts open and close as one: a start that fails midway closes what it
opened (its nats-server child, the catalog) before the error reaches the caller, and a
hub that served closes everything on exit. In process, with the real embedded
nats-server and SQLite catalog.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from amber.hub.config import HubConfig
from amber.hub.server import Hub
from amber.protocol.errors import ConfigError

pytestmark = pytest.mark.servers  # starts hub or nats-server processes itself


def open_files_under(root: Path) -> list[str]:
    """Files under ``root`` this process holds open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
    except OSError:
        return True
    return state == "Z"


def nats_pid(data: Path) -> int:
    return int((data / "nats" / "nats-server.pid").read_text().strip())


async def test_a_start_failing_at_the_admin_bind_leaves_nothing_open(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = HubConfig(data_dir=data, nats_listen="127.0.0.1:0", admin_listen=f"127.0.0.1:{port}")
        hub = Hub(cfg)
        with pytest.raises(ConfigError, match=f"admin.listen: cannot serve .*{port}") as err:
            await hub.start()  # not even close(): start cleans up after itself
        assert "free port" in err.value.hint
        assert hub.embedded is not None and hub.embedded.proc is not None
        assert gone(hub.embedded.proc.pid), "the nats-server child outlived the failed start"
        assert open_files_under(data) == [], "the catalog is still open"
        await hub.close()  # harmless: nothing left to close

    cfg = HubConfig(data_dir=data, nats_listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
    async with Hub(cfg) as hub:
        pid = nats_pid(data)
        assert not gone(pid) and hub.admin_url and open_files_under(data)
    assert gone(pid)
    assert open_files_under(data) == []
