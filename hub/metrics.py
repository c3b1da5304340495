"""Prometheus metrics of `amber-hub serve` (prometheus-client, a private registry).

Served by aiohttp on the hub's event loop at ``http://[metrics] listen/metrics``
(hub.toml, or ``serve --metrics-listen``; port 0 picks a free port, named as
``metrics_url`` in DATA/hub.json). A scrape awaits two indexed catalog queries (run in
aiosqlite's thread) and renders a few dozen series, so it never blocks the loop; a
hub whose loop is wedged stops answering scrapes, which is itself the alert.

    amber_hub_ingested_bytes_total, amber_hub_ingested_chunks_total   new chunks stored
    amber_hub_ingested_records_total       manifests and checkpoints stored
    amber_hub_duplicates_total             messages for objects already stored
    amber_hub_ingest_retries_total         records that arrived before what they name
    amber_hub_rejected_messages_total{vault,node}   invalid messages, by sender
    amber_hub_quota_refusals_total{vault,node,quota}   refused: the node is over a quota
                                           (quota = bytes_per_day or bytes_held)
    amber_hub_node_last_seen_timestamp_seconds{vault,node}
    amber_hub_node_last_checkpoint_timestamp_seconds{vault,node}
    amber_hub_store_errors_total           object store operations that failed
    amber_hub_restore_plans{state}         staged restore plans by state (draft, running,
                                           halted, done, aborted, exported)
    amber_hub_restore_nodes{state}         nodes of running or halted plans by state
                                           (planned, queued, fetching, verifying, swapped,
                                           healthy, failed, rolled_back)
    amber_hub_info{version} = 1

Ingest rate: ``rate(amber_hub_ingested_bytes_total[5m])``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from amber import __version__
from amber.hub.catalog import Catalog
from amber.hub.config import split_hostport
from amber.hub.ingest import IngestStats
from amber.hub.plans import NODE_STATES, PLAN_STATES, PlanBook, PlanState
from amber.hub.store.base import ObjectStore
from amber.hub.store.counting import CountingStore
from amber.protocol.errors import ConfigError

log = logging.getLogger("amber.hub.metrics")
T = TypeVar("T")

# Every state is exported (0 when empty) so dashboards and alerts work before any plan.
ACTIVE_PLAN_STATES = (PlanState.RUNNING, PlanState.HALTED)


class _HubCollector(Collector):
    """Reads the ingestor's counters and the catalog snapshot of the last scrape."""

    def __init__(self, metrics: HubMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        st = self.m.ingest_stats()

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter(
            "amber_hub_ingested_bytes", "Bytes of new chunks stored", st.chunk_bytes if st else 0
        )
        yield counter("amber_hub_ingested_chunks", "New chunks stored", st.chunks if st else 0)
        yield counter(
            "amber_hub_ingested_records",
            "Manifests and checkpoints stored",
            st.records if st else 0,
        )
        yield counter(
            "amber_hub_duplicates",
            "Ingest messages for objects the hub already held",
            st.duplicates if st else 0,
        )
        yield counter(
            "amber_hub_ingest_retries",
            "Records that arrived before the objects they name (retried)",
            st.retries if st else 0,
        )
        rejected = CounterMetricFamily(
            "amber_hub_rejected_messages",
            "Ingest messages rejected as invalid, by the node that sent them",
            labels=["vault", "node"],
        )
        for key, n in _snapshot(st.rejected if st else None).items():
            vault, _, node = key.partition("/")
            rejected.add_metric([vault, node], n)
        yield rejected
        quota = CounterMetricFamily(
            "amber_hub_quota_refusals",
            "Requests and uploads refused because the node is over a quota, by quota",
            labels=["vault", "node", "quota"],
        )
        for key, n in _snapshot(st.quota_refused if st else None).items():
            vault, node, name = key.split("/", 2)
            quota.add_metric([vault, node, name], n)
        yield quota
        seen = GaugeMetricFamily(
            "amber_hub_node_last_seen_timestamp_seconds",
            "Unix time the hub last heard from the node (heartbeat or checkpoint)",
            labels=["vault", "node"],
        )
        last = GaugeMetricFamily(
            "amber_hub_node_last_checkpoint_timestamp_seconds",
            "Unix time of the node's newest checkpoint held by the hub",
            labels=["vault", "node"],
        )
        for (vault, node), seen_us in sorted(self.m.seen_us.items()):
            if seen_us is not None:
                seen.add_metric([vault, node], seen_us / 1e6)
        for (vault, node), time_us in sorted(self.m.checkpoint_us.items()):
            last.add_metric([vault, node], time_us / 1e6)
        yield seen
        yield last


def _snapshot(counts: dict[str, int] | None) -> dict[str, int]:
    if not counts:
        return {}
    for _ in range(5):  # the event loop may add a key while a scrape copies
        try:
            return dict(counts)
        except RuntimeError:
            continue
    return {}


class HubMetrics:
    """The hub's registry. It reads the catalog and the plan book at each scrape, and
    the ingest counters through ``ingest_stats`` (None until the ingestor exists)."""

    def __init__(
        self,
        catalog: Catalog,
        plans: PlanBook,
        ingest_stats: Callable[[], IngestStats | None],
    ) -> None:
        self.catalog, self.plans, self.ingest_stats = catalog, plans, ingest_stats
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.store_errors = Counter(
            "amber_hub_store_errors", "Object store operations that failed", registry=r
        )
        self.restore_plans = Gauge(
            "amber_hub_restore_plans", "Staged restore plans, by state", ["state"], registry=r
        )
        self.restore_nodes = Gauge(
            "amber_hub_restore_nodes",
            "Nodes of running or halted restore plans, by state",
            ["state"],
            registry=r,
        )
        self._set_counts(self.restore_plans, PLAN_STATES, {})
        self._set_counts(self.restore_nodes, NODE_STATES, {})
        info = Gauge("amber_hub_info", "The hub's version", ["version"], registry=r)
        info.labels(version=__version__).set(1)
        self.seen_us: dict[tuple[str, str], int | None] = {}
        self.checkpoint_us: dict[tuple[str, str], int] = {}
        r.register(_HubCollector(self))
        self.runner: web.AppRunner | None = None
        self.url: str | None = None

    @staticmethod
    def _set_counts(gauge: Gauge, known: tuple[str, ...], counts: dict[str, int]) -> None:
        for state in (*known, *(s for s in counts if s not in known)):
            gauge.labels(state=state).set(counts.get(state, 0))

    def watch_store(self, store: ObjectStore) -> ObjectStore:
        """``store``, with its failures counted in amber_hub_store_errors_total."""
        return CountingStore(store, self.store_errors)

    async def refresh(self) -> None:
        """Read per-node times from the catalog (called before each scrape)."""
        try:
            nodes = await self.catalog.nodes()
            heads = await self.catalog.head_times()
        except Exception as exc:  # keep serving the last values
            log.warning("metrics: cannot read the catalog: %s", exc)
            return
        self.seen_us = {(n.vault, n.node): n.last_seen_us for n in nodes}
        self.checkpoint_us = heads
        try:
            plans, nodes_by_state = await self.plans.counts(ACTIVE_PLAN_STATES)
        except Exception as exc:
            log.warning("metrics: cannot read the restore plans: %s", exc)
            return
        self._set_counts(self.restore_plans, PLAN_STATES, plans)
        self._set_counts(self.restore_nodes, NODE_STATES, nodes_by_state)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, request: web.Request) -> web.Response:
        await self.refresh()
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, listen: str) -> str:
        """Serve /metrics on ``listen`` (host:port, port 0: any free port); the URL."""
        host, port = split_hostport(listen, "metrics.listen")
        host = host.strip("[]")
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"metrics.listen: cannot serve metrics on {listen}: {exc.strerror or exc}",
                hint="pick a free port ([metrics] listen or --metrics-listen)",
            ) from None
        bound = site._server.sockets[0].getsockname()[1] if port == 0 else port  # type: ignore[union-attr]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{bound}/metrics"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
