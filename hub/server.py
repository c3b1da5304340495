"""The hub process: NATS (embedded or external), store, catalog, ingest, admin API.

async with Hub(cfg) as hub:
    await hub.wait_closed()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from typing import Any

import nats
from aiohttp import web

from amber.hub.admin import AdminApi, make_app
from amber.hub.catalog import Catalog
from amber.hub.config import HubConfig, load_hub_key, load_secrets, split_hostport, write_runtime
from amber.hub.coordinator import Coordinator, ensure_cmd_stream, ensure_node_consumer
from amber.hub.ingest import Ingestor, IngestStats
from amber.hub.ingest_stream import IngestStream
from amber.hub.limits import Quotas, UploadLeases
from amber.hub.metrics import HubMetrics
from amber.hub.natsbox import HUB_USER, EmbeddedNats
from amber.hub.nodeapi import NodeApi
from amber.hub.plans import PlanBook
from amber.hub.store.base import open_store
from amber.hub.tls import HubTls, ensure_hub_tls, host_of
from amber.protocol import wire
from amber.protocol.enrolment import Enrolment, enrolment_object
from amber.protocol.errors import ConfigError, HubUnavailableError
from amber.tlsctx import client_context

log = logging.getLogger("amber.hub")


class Hub:
    """The hub's parts, opened in :meth:`start` on one exit stack: :meth:`close` closes
    exactly what was opened, in reverse order, also after a start that failed midway."""

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.secrets = load_secrets(cfg.data_dir)
        self.signer = load_hub_key(cfg.data_dir)  # signs restore orders and bundles
        self.tls: HubTls = ensure_hub_tls(cfg.data_dir, tls_hosts(cfg))  # renews if due
        self.embedded: EmbeddedNats | None = None
        self.ingestor: Ingestor | None = None
        self.nc: Any = None
        self.admin_url = ""
        self.nats_url = ""
        self.metrics_url: str | None = None
        self.stopping = asyncio.Event()
        self._parts = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open every part; if one fails, close those already open and raise."""
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        async with contextlib.AsyncExitStack() as parts:
            self.catalog = await Catalog.open(cfg.catalog_path)
            parts.push_async_callback(self.catalog.close)
            self.plans = PlanBook(self.catalog)
            await self.plans.setup()
            self.metrics = HubMetrics(self.catalog, self.plans, self._ingest_stats)
            self.store = self.metrics.watch_store(open_store(cfg.store()))
            parts.push_async_callback(self.store.close)
            self.ingestor = Ingestor(self.store, self.catalog, cfg.retention)
            await self._start_nats(parts)
            lim = cfg.limits
            quotas = Quotas(self.catalog, lim, self.ingestor.stats.quota_refused)
            await quotas.setup()
            self.ingest_stream = IngestStream(
                self.nc,
                self.catalog,
                self.ingestor,
                cfg.ingest_workers,
                quotas,
                (cfg.ingest_stream_bytes, cfg.ingest_node_messages),
            )
            parts.push_async_callback(self.ingest_stream.stop)
            await self.ingest_stream.start()
            leases = UploadLeases(self.catalog, lim.upload_lease, lim.leases_per_node)
            await leases.setup()
            self.nodeapi = NodeApi(self.nc, self.store, self.catalog, leases, quotas)
            parts.push_async_callback(self.nodeapi.stop)
            await self.nodeapi.start()
            await self._start_restores(parts)
            await self._start_admin(parts, self.ingestor.stats)
            if cfg.metrics_listen:
                parts.push_async_callback(self.metrics.stop)
                self.metrics_url = await self.metrics.start(cfg.metrics_listen)
            self._parts = parts.pop_all()
        write_runtime(
            cfg.data_dir,
            {
                "admin_url": self.admin_url,
                "nats_url": self.nats_url,
                "metrics_url": self.metrics_url,
                "ca_file": str(self.tls.ca_file),
                "pid": os.getpid(),
            },
        )
        log.info(
            "hub serving: nats %s, admin %s, metrics %s",
            self.nats_url,
            self.admin_url,
            self.metrics_url or "off",
        )

    def _ingest_stats(self) -> IngestStats | None:
        return self.ingestor.stats if self.ingestor is not None else None

    async def _start_nats(self, parts: contextlib.AsyncExitStack) -> None:
        cfg = self.cfg
        if cfg.nats_url:
            self.nats_url = cfg.nats_url
            user, password = cfg.nats_user, cfg.nats_password
            self._check_tls_urls(cfg.nats_url.split(","), "nats.url")
            options: dict[str, Any] = {"tls": client_context(self.nats_ca())}
        else:
            host, port = split_hostport(cfg.nats_listen, "nats.listen")
            if port == 0:  # pick a free port once and keep it, so enrolments stay valid
                saved = cfg.data_dir / "nats" / "port"
                port = int(saved.read_text()) if saved.exists() else _free_port()
                saved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                saved.write_text(str(port))
            self.embedded = EmbeddedNats(
                cfg.data_dir / "nats", host, port, self.secrets.nats_password, self.tls
            )
            parts.push_async_callback(self.embedded.stop)  # also a half-started server
            await self.embedded.start(await self.catalog.nodes())
            watch = asyncio.create_task(
                self.embedded.supervise(self.catalog.nodes), name="nats-supervisor"
            )
            parts.push_async_callback(_cancel, watch)
            self.nats_url = self.embedded.url
            user, password = HUB_USER, self.secrets.nats_password
            options = self.embedded.client_options()
        try:
            self.nc = await nats.connect(
                self.nats_url.split(","),
                user=user,
                password=password,
                name="amber-hub",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                **options,
            )
        except Exception as exc:
            raise HubUnavailableError(f"cannot connect to NATS at {self.nats_url}: {exc}") from None
        parts.push_async_callback(_close_nats, self.nc)

    async def _start_admin(self, parts: contextlib.AsyncExitStack, stats: IngestStats) -> None:
        host, port = split_hostport(self.cfg.admin_listen, "admin.listen")
        api = AdminApi(
            token=self.secrets.admin_token,
            catalog=self.catalog,
            plans=self.plans,
            coordinator=self.coordinator,
            ingest_stats=stats,
            enrol=self.enrol,
            rotate=self.rotate,
            replace=self.replace,
        )
        runner = web.AppRunner(make_app(api), access_log=None)
        await runner.setup()
        parts.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, ssl_context=self.tls.server_context())
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"admin.listen: cannot serve the admin API on {host}:{port}: {exc.strerror or exc}",
                hint="pick a free port ([admin] listen in hub.toml)",
            ) from None
        bound = site._server.sockets[0].getsockname()[1] if port == 0 else port  # type: ignore[union-attr]
        self.admin_url = f"https://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}"

    def advertised_nats(self) -> list[str]:
        if self.cfg.nats_advertise:
            return [u.strip() for u in self.cfg.nats_advertise.split(",")]
        return self.nats_url.split(",")

    def nats_ca(self) -> str | None:
        """The CA a node verifies NATS against: the hub's own, or ``nats.ca_file`` for an
        external server (None: the system's trust store)."""
        if self.embedded is not None:
            return self.tls.ca_pem()
        path = self.cfg.nats_ca_file
        if path is None:
            return None
        try:
            return path.read_text()
        except OSError as exc:
            raise ConfigError(f"nats.ca_file: cannot read {path}: {exc.strerror}") from None

    def _check_tls_urls(self, urls: list[str], what: str) -> None:
        """No credential crosses a network in clear: every NATS URL must be ``tls://``
        unless hub.toml says ``[nats] insecure_plaintext = true``."""
        plain = [u for u in urls if not u.strip().startswith("tls://")]
        if plain and not self.cfg.insecure_plaintext:
            raise ConfigError(
                f"{what}: {', '.join(plain)} would carry NATS passwords in clear",
                hint="use tls:// URLs (the hub in a box serves TLS only), or set "
                "insecure_plaintext = true under [nats] in hub.toml for a trusted network",
            )

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

    async def replace(self, vault: str, node: str) -> dict[str, Any]:
        """A node's new device: new NATS credentials (the old ones stop working at once,
        so only the holder of the new enrolment can sign next) and its old signing key
        retired; the new device's key is pinned when it first signs."""
        enrolment = await self.rotate(vault, node)
        old = await self.catalog.unpin(vault, node)
        log.warning(
            "node %s/%s replaced: key %s retired",
            vault,
            node,
            old.hex()[:16] if old else "(none pinned)",
            extra={"vault": vault, "node": node},
        )
        return enrolment

    def _need_embedded(self) -> None:
        if self.embedded is None:
            raise ConfigError(
                "this hub uses an external NATS; manage the node's user there",
                hint="see docs/PROTOCOL.md section 12 for the permissions a node user needs",
            )

    async def _issue(self, vault: str, node: str, user: str, password: str) -> dict[str, Any]:
        assert self.embedded is not None
        servers = self.advertised_nats()
        self._check_tls_urls(servers, "nats.advertise")
        await self.embedded.reload_for(await self.catalog.nodes(), user, password)
        return enrolment_object(
            Enrolment(
                vault=vault,
                node=node,
                servers=tuple(servers),
                user=user,
                password=password,
                inbox_prefix=wire.inbox_prefix(vault, node),
                hub_key=self.signer.public,
                ca=self.nats_ca() or "",
                tls_handshake_first=True,
            )
        )

    async def _start_restores(self, parts: contextlib.AsyncExitStack) -> None:
        """The command stream, a command consumer per enrolled node, the coordinator."""
        js = self.nc.jetstream(timeout=10)
        await ensure_cmd_stream(js)
        for n in await self.catalog.nodes():
            await ensure_node_consumer(js, n.vault, n.node)
        self.coordinator = Coordinator(self.plans, js, self.signer)
        self.nodeapi.coordinator = self.coordinator
        task = asyncio.create_task(self.coordinator.run(), name="coordinator")
        parts.push_async_callback(_cancel, task)

    async def wait_closed(self) -> None:
        await self.stopping.wait()

    async def close(self) -> None:
        """Close what :meth:`start` opened, in reverse order (nothing if it did not run)."""
        await self._parts.aclose()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _close_nats(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 5)
    except Exception:
        pass


def tls_hosts(cfg: HubConfig) -> list[str]:
    """Every host the hub's server certificate must name, from its listen and advertise
    addresses and ``[tls] hostnames``."""
    addresses = [cfg.nats_listen, cfg.admin_listen, *cfg.tls_hostnames]
    addresses += [a for a in (cfg.nats_advertise or "").split(",") if a.strip()]
    return [h for h in map(host_of, addresses) if h]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
