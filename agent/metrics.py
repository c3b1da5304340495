"""Prometheus metrics of `amber-agent run` (prometheus-client, a private registry).

Served by prometheus-client's own HTTP server in a daemon thread on
``[metrics] listen`` (agent.toml; port 0 picks a free port). A scrape never touches
the event loop: it reads values the daemon keeps up to date, and computes checkpoint
ages against the clock at scrape time. While the daemon runs, STATE_DIR/agent.json
names the bound URL (``metrics_url``).

Per source (label ``source``):
    amber_source_last_checkpoint_timestamp_seconds   when the source was last checkpointed
    amber_source_checkpoint_age_seconds               now minus that (at scrape time)
    amber_source_rpo_seconds                          the tier's recovery point objective
    amber_source_rpo_breached                         1 if never checkpointed or age > RPO
Journal:
    amber_journal_backlog_bytes    committed locally, not yet durable at the hub
    amber_journal_bytes            bytes the journal holds (chunks and records)
Counters since the daemon started:
    amber_uploaded_bytes_total, amber_uploaded_chunks_total
    amber_dedup_chunks_total       chunks the hub already had + chunks deduplicated
                                   against the journal while checkpointing
    amber_sync_errors_total
    amber_checkpoints_total{kind}, amber_checkpoint_failures_total
    amber_agent_info{node,vault,version} = 1
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from amber import __version__
from amber.agent.config import AgentConfig
from amber.agent.sources.registry import scanned_us
from amber.protocol.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from amber.agent.checkpointer import CheckpointResult
    from amber.agent.journal import Journal
    from amber.agent.runtime import AgentRuntime

log = logging.getLogger("amber.agent.metrics")
RUNTIME_FILE = "agent.json"


class _SourceCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cfg, now = self.m.cfg, time.time()
        last = GaugeMetricFamily(
            "amber_source_last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint that captured the source",
            labels=["source"],
        )
        age = GaugeMetricFamily(
            "amber_source_checkpoint_age_seconds",
            "Seconds since the last checkpoint that captured the source",
            labels=["source"],
        )
        rpo = GaugeMetricFamily(
            "amber_source_rpo_seconds",
            "Recovery point objective of the source's tier",
            labels=["source"],
        )
        breached = GaugeMetricFamily(
            "amber_source_rpo_breached",
            "1 if the source was never checkpointed or its last checkpoint is older than its RPO",
            labels=["source"],
        )
        stamps = dict(self.m.last_checkpoint)
        for src in cfg.sources:
            target = cfg.tiers[src.tier].rpo
            rpo.add_metric([src.name], target)
            when = stamps.get(src.name)
            if when is None:
                breached.add_metric([src.name], 1)
                continue
            last.add_metric([src.name], when)
            age.add_metric([src.name], max(0.0, now - when))
            breached.add_metric([src.name], 1 if now - when > target else 0)
        yield from (last, age, rpo, breached)


class AgentMetrics:
    """The daemon's metrics; hooks are cheap and safe to call from the event loop."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.last_checkpoint: dict[str, float] = {}  # source -> unix time
        self.backlog = Gauge(
            "amber_journal_backlog_bytes",
            "Bytes committed in the journal and not yet durable at the hub",
            registry=r,
        )
        self.journal_bytes = Gauge(
            "amber_journal_bytes", "Bytes the journal holds (chunk blobs and records)", registry=r
        )
        self.uploaded_bytes = Counter(
            "amber_uploaded_bytes", "Chunk bytes sent to the hub", registry=r
        )
        self.uploaded_chunks = Counter(
            "amber_uploaded_chunks", "Chunks sent to the hub", registry=r
        )
        self.dedup_chunks = Counter(
            "amber_dedup_chunks",
            "Chunks not stored or sent again: already in the journal or already at the hub",
            registry=r,
        )
        self.sync_errors = Counter(
            "amber_sync_errors", "Sync passes that failed (they are retried)", registry=r
        )
        self.checkpoints = Counter(
            "amber_checkpoints", "Checkpoints committed", ["kind"], registry=r
        )
        self.checkpoint_failures = Counter(
            "amber_checkpoint_failures", "Scheduled checkpoints that failed", registry=r
        )
        for kind in ("regular", "safety"):
            self.checkpoints.labels(kind=kind)
        info = Gauge(
            "amber_agent_info", "The agent's identity", ["node", "vault", "version"], registry=r
        )
        info.labels(node=cfg.node, vault=cfg.vault, version=__version__).set(1)
        r.register(_SourceCollector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # --- hooks ----------------------------------------------------------------------

    def checkpoint_committed(self, res: CheckpointResult, sources: list[str]) -> None:
        self.checkpoints.labels(kind=res.checkpoint.kind).inc()
        self.dedup_chunks.inc(res.stats.dedup_chunks)
        for name in sources:
            self.last_checkpoint[name] = res.checkpoint.time_us / 1e6

    def checkpoint_failed(self) -> None:
        self.checkpoint_failures.inc()

    def chunk_uploaded(self, nbytes: int) -> None:
        self.uploaded_chunks.inc()
        self.uploaded_bytes.inc(nbytes)

    def chunks_at_hub(self, n: int) -> None:
        self.dedup_chunks.inc(n)

    def sync_failed(self) -> None:
        self.sync_errors.inc()

    async def refresh_journal(self, journal: Journal) -> None:
        backlog, _ = await journal.backlog()
        self.backlog.set(backlog)
        self.journal_bytes.set(await journal.held_bytes())

    async def load(self, journal: Journal) -> None:
        """Learn each source's last checkpoint time from the journal (at start)."""
        head = await journal.head()
        for src in self.cfg.sources:
            saved = await journal.source_state(src.name)
            when = scanned_us(saved[1]) if saved is not None else None
            if when is None and head is not None and saved is not None:
                when = head.time_us
            if when is not None:
                self.last_checkpoint[src.name] = when / 1e6
        await self.refresh_journal(journal)

    # --- serving --------------------------------------------------------------------

    def start(self, listen: str) -> str:
        """Serve /metrics on ``listen`` (host:port) from a thread; returns the URL."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        try:
            self._server, self._thread = start_http_server(int(port), host, self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metrics.listen: cannot serve metrics on {listen}: {exc.strerror or exc}",
                hint="pick a free port in [metrics] listen, or remove it to turn metrics off",
            ) from None
        bound = self._server.server_port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{bound}/metrics"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


@contextlib.asynccontextmanager
async def serving(metrics: AgentMetrics, rt: AgentRuntime) -> AsyncIterator[str | None]:
    """Load the metrics' starting values, serve them if ``[metrics] listen`` is set, and
    name the daemon (pid, metrics URL) in STATE_DIR/agent.json while it runs."""
    cfg = rt.cfg
    await metrics.load(rt.journal)
    url = metrics.start(cfg.metrics_listen) if cfg.metrics_listen else None
    if url:
        log.info("metrics at %s", url, extra={"node": cfg.node, "vault": cfg.vault})
    path = cfg.state_dir / RUNTIME_FILE
    info = {"pid": os.getpid(), "node": cfg.node, "vault": cfg.vault, "metrics_url": url}
    write_runtime(path, info)
    try:
        yield url
    finally:
        metrics.stop()
        with contextlib.suppress(OSError):
            if read_runtime(path).get("pid") == os.getpid():
                path.unlink()


def write_runtime(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


def read_runtime(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
