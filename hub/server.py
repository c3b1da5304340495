"""The hub process: NATS (embedded or external), store, catalog, ingest, admin API.

async with Hub(cfg) as hub:
    await hub.wait_closed()
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any

import nats
from aiohttp import web

from amber.hub.admin import make_app
from amber.hub.catalog import Catalog
from amber.hub.config import HubConfig, load_hub_key, load_secrets, split_hostport, write_runtime
from amber.hub.coordinator import Coordinator, ensure_cmd_stream, ensure_node_consumer
from amber.hub.ingest import Ingestor
from amber.hub.ingest_stream import IngestStream
from amber.hub.metrics import HubMetrics
from amber.hub.natsbox import HUB_USER, EmbeddedNats
from amber.hub.nodeapi import NodeApi
from amber.hub.plans import PlanBook
from amber.hub.store.base import ObjectStore, open_store
from amber.protocol.errors import ConfigError, HubUnavailableError

log = logging.getLogger("amber.hub")
ENROLMENT_FORMAT = "amber-enrolment"
ENROLMENT_VERSION = 1


class Hub:
    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.secrets = load_secrets(cfg.data_dir)
        self.signer = load_hub_key(cfg.data_dir)  # signs restore orders and bundles
        self.embedded: EmbeddedNats | None = None
        self.nc: Any = None
        self.store: ObjectStore
        self.catalog: Catalog
        self.ingestor: Ingestor
        self.ingest_stream: IngestStream
        self.nodeapi: NodeApi
        self.runner: web.AppRunner | None = None
        self.admin_url = ""
        self.nats_url = ""
        self.metrics = HubMetrics(self)
        self.metrics_url: str | None = None
        self.stopping = asyncio.Event()

    async def __aenter__(self) -> Hub:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.catalog = await Catalog.open(cfg.catalog_path)
        self.store = self.metrics.watch_store(open_store(cfg.store()))
        self.ingestor = Ingestor(self.store, self.catalog, cfg.retention)
        await self._start_nats()
        self.ingest_stream = IngestStream(self.nc, self.catalog, self.ingestor, cfg.ingest_workers)
        await self.ingest_stream.start()
        self.nodeapi = NodeApi(self.nc, self.store, self.catalog)
        await self.nodeapi.start()
        await self._start_restores()
        await self._start_admin()
        if cfg.metrics_listen:
            self.metrics_url = await self.metrics.start(cfg.metrics_listen)
        write_runtime(
            cfg.data_dir,
            {
                "admin_url": self.admin_url,
                "nats_url": self.nats_url,
                "metrics_url": self.metrics_url,
                "pid": os.getpid(),
            },
        )
        log.info(
            "hub serving: nats %s, admin %s, metrics %s",
            self.nats_url,
            self.admin_url,
            self.metrics_url or "off",
        )

    async def _start_nats(self) -> None:
        cfg = self.cfg
        if cfg.nats_url:
            self.nats_url = cfg.nats_url
            user, password = cfg.nats_user, cfg.nats_password
        else:
            host, port = split_hostport(cfg.nats_listen, "nats.listen")
            if port == 0:  # pick a free port once and keep it, so enrolments stay valid
                saved = cfg.data_dir / "nats" / "port"
                port = int(saved.read_text()) if saved.exists() else _free_port()
                saved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                saved.write_text(str(port))
            self.embedded = EmbeddedNats(
                cfg.data_dir / "nats", host, port, self.secrets.nats_password
            )
            await self.embedded.start(await self.catalog.nodes())
            self.nats_watch = asyncio.create_task(
                self.embedded.supervise(self.catalog.nodes), name="nats-supervisor"
            )
            self.nats_url = self.embedded.url
            user, password = HUB_USER, self.secrets.nats_password
        try:
            self.nc = await nats.connect(
                self.nats_url.split(","),
                user=user,
                password=password,
                name="amber-hub",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
            )
        except Exception as exc:
            raise HubUnavailableError(f"cannot connect to NATS at {self.nats_url}: {exc}") from None

    async def _start_admin(self) -> None:
        host, port = split_hostport(self.cfg.admin_listen, "admin.listen")
        self.runner = web.AppRunner(make_app(self), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1] if port == 0 else port  # type: ignore[union-attr]
        self.admin_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}"

    def advertised_nats(self) -> list[str]:
        if self.cfg.nats_advertise:
            return [u.strip() for u in self.cfg.nats_advertise.split(",")]
        return self.nats_url.split(",")

    async def enrol(self, vault: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
        """Create a node's NATS user (scoped to its subjects) and return its enrolment."""
        self._need_embedded()
        # '.' cannot occur in vault or node names, so no two nodes share a user name
        # (with '-', w/x-y and w-x/y would both be node-w-x-y)
        user, password = f"node.{vault}.{node}", secrets.token_urlsafe(24)
        await self.catalog.add_node(vault, node, user, password, labels)
        await ensure_node_consumer(self.nc.jetstream(timeout=10), vault, node)
        return await self._issue(vault, node, user, password)

    async def rotate(self, vault: str, node: str) -> dict[str, Any]:
        """Give a node a new NATS password (the old one stops working at once)."""
        self._need_embedded()
        row = await self.catalog.node(vault, node)
        password = secrets.token_urlsafe(24)
        await self.catalog.set_password(vault, node, password)
        return await self._issue(vault, node, row.user, password)

    def _need_embedded(self) -> None:
        if self.embedded is None:
            raise ConfigError(
                "this hub uses an external NATS; manage the node's user there",
                hint="see docs/PROTOCOL.md section 12 for the permissions a node user needs",
            )

    async def _issue(self, vault: str, node: str, user: str, password: str) -> dict[str, Any]:
        assert self.embedded is not None
        self.embedded.reload(await self.catalog.nodes())
        await asyncio.sleep(0.2)  # the server applies SIGHUP asynchronously
        return {
            "format": ENROLMENT_FORMAT,
            "version": ENROLMENT_VERSION,
            "vault": vault,
            "node": node,
            "nats_servers": self.advertised_nats(),
            "user": user,
            "password": password,
            "inbox_prefix": f"_INBOX_{vault}.{node}",
            "hub_key": self.signer.public.hex(),
        }

    async def _start_restores(self) -> None:
        """Restore plans, the command stream, and a command consumer per enrolled node."""
        self.plans = PlanBook(self.catalog)
        await self.plans.setup()
        js = self.nc.jetstream(timeout=10)
        await ensure_cmd_stream(js)
        for n in await self.catalog.nodes():
            await ensure_node_consumer(js, n.vault, n.node)
        self.coordinator = Coordinator(self.plans, js, self.signer)
        self.nodeapi.coordinator = self.coordinator
        self.coordinator_task = asyncio.create_task(self.coordinator.run(), name="coordinator")

    async def wait_closed(self) -> None:
        await self.stopping.wait()

    async def close(self) -> None:
        for name in ("coordinator_task", "nats_watch"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for name in ("nodeapi", "ingest_stream"):
            part = getattr(self, name, None)
            if part is not None:
                await part.stop()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 5)
            except Exception:
                pass
        if self.runner is not None:
            await self.runner.cleanup()
        await self.metrics.stop()
        if self.embedded is not None:
            await self.embedded.stop()
        if getattr(self, "store", None) is not None:
            await self.store.close()
        if getattr(self, "catalog", None) is not None:
            await self.catalog.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
