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

from amber.protocol.errors import AmberError

from .config import AgentConfig
from .runtime import AgentRuntime

log = logging.getLogger("amber.agent")
MIN_SLEEP = 1.0


class AgentDaemon:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.last_run: dict[str, float] = {}
        self.checkpoints = 0

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)

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
        async with AgentRuntime.open(self.cfg) as rt:
            head = await rt.journal.head()
            start = head.time_us / 1e6 if head else 0.0
            self.last_run = {s.name: start for s in self.cfg.sources}
            log.info("agent running", extra={"node": self.cfg.node})
            while not self.stop.is_set():
                await self._cycle(rt)
                try:
                    await asyncio.wait_for(self.stop.wait(), self.next_wake(time.time()))
                except TimeoutError:
                    pass
            log.info("agent stopped", extra={"node": self.cfg.node})

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
            log.error("checkpoint failed: %s (hint: %s)", exc, exc.hint)
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
        log.info(
            "checkpoint %s seq %d sources %s", res.id.hex()[:16], res.checkpoint.seq, ",".join(due)
        )
