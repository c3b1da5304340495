"""`amber-agent run`: checkpoint each source on its tier's schedule until SIGTERM.

Scheduling: each tier has an interval; a source is due when its last checkpoint is
older than that. All sources due at once go into one checkpoint. On SIGTERM or
SIGINT the running checkpoint is cancelled (its tentative chunks are discarded, the
journal keeps its last committed checkpoint) and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import TYPE_CHECKING

from amber import sdnotify
from amber.agent.config import AgentConfig
from amber.agent.enrolment import load_installed
from amber.agent.metrics import AgentMetrics, serving
from amber.agent.remote import heartbeat, sync
from amber.agent.restore.orders import OrderExecutor
from amber.agent.runtime import AgentRuntime
from amber.protocol import wire
from amber.protocol.errors import AmberError

if TYPE_CHECKING:
    from amber.agent.hublink import HubLink

log = logging.getLogger("amber.agent")
MIN_SLEEP = 1.0


class AgentDaemon:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.last_run: dict[str, float] = {}
        self.checkpoints = 0
        self.synced = 0
        self.kick = asyncio.Event()  # set after a checkpoint: sync it now
        self.metrics = AgentMetrics(cfg)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sdnotify.stopping_then(self.stop.set))

    def due(self, now: float) -> list[str]:
        out = []
        for s in self.cfg.sources:
            interval = self.cfg.tiers[s.tier].interval
            if now - self.last_run.get(s.name, 0.0) >= interval:
                out.append(s.name)
        return out

    def next_wake(self, now: float) -> float:
        waits = [
            self.last_run.get(s.name, 0.0) + self.cfg.tiers[s.tier].interval - now
            for s in self.cfg.sources
        ]
        return max(MIN_SLEEP, min(waits, default=60.0))

    async def run(self) -> None:
        async with AgentRuntime.open(self.cfg) as rt, serving(self.metrics, rt):
            head = await rt.journal.head()
            start = head.time_us / 1e6 if head else 0.0
            self.last_run = {s.name: start for s in self.cfg.sources}
            recovering = OrderExecutor(rt, None)
            await recovering.jobs.setup()
            await recovering.recover()  # a restore cut short by a crash is rolled back
            uplink = asyncio.create_task(self._uplink(rt), name="uplink")
            watchdog = sdnotify.ready(f"node {self.cfg.node}: {len(self.cfg.sources)} source(s)")
            log.info("agent running", extra={"node": self.cfg.node})
            try:
                while not self.stop.is_set():
                    await self._cycle(rt)
                    try:
                        await asyncio.wait_for(self.stop.wait(), self.next_wake(time.time()))
                    except TimeoutError:
                        pass
            finally:
                uplink.cancel()
                watchdog.cancel()
                await asyncio.gather(uplink, watchdog, return_exceptions=True)
            try:  # taking the writer lock discards what a cancelled checkpoint left behind
                async with rt.writing(timeout=5):
                    pass
            except AmberError as exc:
                log.warning("leftover chunks stay until the next writer: %s", exc)
            log.info("agent stopped", extra={"node": self.cfg.node})

    async def _uplink(self, rt: AgentRuntime) -> None:
        """Sync and send heartbeats whenever the hub is reachable; never give up."""
        if load_installed(self.cfg.state_dir) is None:
            return
        interval = float(self.cfg.hub.get("sync_interval", 5))
        delay = 1.0
        while True:
            try:
                async with rt.hub(timeout=10, required=True, persistent=True) as link:
                    assert link is not None
                    delay = 1.0
                    orders = asyncio.create_task(self._orders(rt, link), name="orders")
                    try:
                        await self._sync_loop(rt, link, interval)
                    finally:
                        orders.cancel()
                        await asyncio.gather(orders, return_exceptions=True)
            except AmberError as exc:
                self.metrics.sync_failed()
                log.warning(
                    "sync paused: %s (retrying in %.0fs)", exc, delay, extra={"node": self.cfg.node}
                )
            except Exception as exc:
                self.metrics.sync_failed()
                log.exception("sync failed unexpectedly: %s", exc, extra={"node": self.cfg.node})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _sync_loop(self, rt: AgentRuntime, link: HubLink, interval: float) -> None:
        while True:
            await heartbeat(rt, link)
            stats = await sync(rt, link, metrics=self.metrics)
            self.synced += stats.checkpoints
            await self.metrics.refresh_journal(rt.journal)
            self.kick.clear()
            try:
                await asyncio.wait_for(self.kick.wait(), interval)
            except TimeoutError:
                pass

    async def _orders(self, rt: AgentRuntime, link: HubLink) -> None:
        """Pull restore orders from this node's durable command consumer and run them."""
        from nats.js.errors import FetchTimeoutError  # nats-py is loaded: the link is up

        enr = link.enr
        executor = OrderExecutor(rt, link)
        await executor.flush_reports()
        psub = await link.js.pull_subscribe_bind(
            durable=wire.cmd_consumer(enr.vault, enr.node),
            stream=wire.CMD_STREAM,
            inbox_prefix=(enr.inbox_prefix + ".").encode(),
        )
        while True:
            try:
                msgs = await psub.fetch(1, timeout=5)
            except (TimeoutError, FetchTimeoutError):
                continue
            for m in msgs:  # one bad order is logged (and reported); the loop carries on
                order = self._open_order(m.data, enr.hub_key)
                if order is None:
                    await m.ack()
                    continue
                await executor.take(order, m.ack)

    def _open_order(
        self, data: bytes, hub_key: bytes
    ) -> wire.RestoreOrder | wire.RestoreOrderV1 | None:
        try:
            signed = wire.decode(data, wire.SignedOrder)
            assert isinstance(signed, wire.SignedOrder)
            order = wire.open_order(signed, hub_key)
        except AmberError as exc:
            log.error("refused a command: %s", exc, extra={"node": self.cfg.node})
            return None
        if order.expires_us < time.time_ns() // 1000:
            log.error("refused an expired restore order %s", order.order_id)
            return None
        return order

    async def _cycle(self, rt: AgentRuntime) -> None:
        due = self.due(time.time())
        if not due:
            return
        task = asyncio.create_task(self._checkpoint(rt, due))
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            log.info("checkpoint cancelled by shutdown; nothing was committed")
        except AmberError as exc:
            self.metrics.checkpoint_failed()
            log.error(
                "checkpoint failed: %s (hint: %s)",
                exc,
                exc.hint,
                extra={"node": self.cfg.node, "source": ",".join(due)},
            )
            for name in due:  # retry after a short pause, not a whole interval
                self.last_run[name] = (
                    time.time() - self.cfg.tiers[rt.cfg.source(name).tier].interval + 30
                )

    async def _checkpoint(self, rt: AgentRuntime, due: list[str]) -> None:
        started = time.time()
        async with rt.writing():
            res = await rt.checkpointer().checkpoint(due)
        for name in due:
            self.last_run[name] = started
        self.checkpoints += 1
        self.kick.set()
        self.metrics.checkpoint_committed(res, due)  # the checkpointer logged it, with its ids
        await self.metrics.refresh_journal(rt.journal)
