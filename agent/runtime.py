"""The open agent: configuration, identity, journal and worker pools, owned together.

    async with AgentRuntime.open(cfg) as rt:
        await rt.checkpointer().checkpoint()

Writers (checkpoint, restore, the daemon's cycles) take the state directory's
lock, so two agent processes never commit to one journal at once. Whoever takes it
cleans up after a writer that was killed: tentative chunks are discarded and a restore
cut short mid-swap is rolled back (``restore/swap.py``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from amber.agent.checkpointer import SCANS_AT_ONCE, Checkpointer
from amber.agent.config import AgentConfig
from amber.agent.enrolment import load_installed
from amber.agent.hublink import HubLink
from amber.agent.identity import NodeIdentity, load_identity
from amber.agent.journal import Journal
from amber.agent.restore.chunksource import ChainedChunks, ChainedRecords
from amber.agent.restore.jobs import RestoreJobs
from amber.agent.restore.restorer import Restorer
from amber.agent.restore.swap import roll_back_interrupted
from amber.agent.vouches import vouched_signer
from amber.protocol.errors import ConfigError, HubUnavailableError, JournalError

log = logging.getLogger("amber.agent")


@dataclass
class AgentRuntime:
    cfg: AgentConfig
    ident: NodeIdentity
    journal: Journal
    pool: ThreadPoolExecutor
    reader: ThreadPoolExecutor

    @classmethod
    @asynccontextmanager
    async def open(cls, cfg: AgentConfig, *, create: bool = False) -> AsyncIterator[AgentRuntime]:
        ident = load_identity(cfg)
        journal = await Journal.open(
            cfg.journal_path, ident.keys, vault=cfg.vault, node=cfg.node, create=create
        )
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="amber-chunk")
        reader = ThreadPoolExecutor(SCANS_AT_ONCE, thread_name_prefix="amber-read")
        try:
            yield cls(cfg, ident, journal, pool, reader)
        finally:
            await journal.close()
            pool.shutdown(wait=True, cancel_futures=True)
            reader.shutdown(wait=True, cancel_futures=True)

    def checkpointer(self, progress: Callable[[int], None] | None = None) -> Checkpointer:
        return Checkpointer(self.cfg, self.ident, self.journal, self.pool, self.reader, progress)

    def restorer(
        self, progress: Callable[[int], None] | None = None, link: HubLink | None = None
    ) -> Restorer:
        """A restorer reading the journal first, then (if given) the hub."""
        if link is None:
            return Restorer(
                self.ident,
                self.journal,
                self.journal,
                self.pool,
                progress=progress,
                vouched=vouched_signer(self.journal.query),
            )
        return Restorer(
            self.ident,
            ChainedRecords(self.journal, link),
            ChainedChunks(self.journal, link),
            self.pool,
            trusted=None,
            progress=progress,
        )

    @asynccontextmanager
    async def hub(
        self, *, timeout: float = 10.0, required: bool = False, persistent: bool = False
    ) -> AsyncIterator[HubLink | None]:
        """A link to the hub, or None if the node is not enrolled or (unless required)
        the hub cannot be reached now."""
        enr = load_installed(self.cfg.state_dir)
        link = None
        if enr is None:
            if required:
                raise ConfigError(
                    "this node is not enrolled with a hub",
                    hint="run 'amber-agent enroll FILE' with its enrolment file",
                )
        else:
            try:
                link = await HubLink.connect(
                    enr,
                    timeout=timeout,
                    persistent=persistent,
                    bandwidth=self.cfg.hub.get("bandwidth_limit"),
                    insecure_plaintext=self.cfg.hub.get("insecure_plaintext", False),
                )
            except (HubUnavailableError, ConfigError) as exc:
                if required:
                    raise
                if isinstance(exc, ConfigError):  # a plaintext enrolment: say why, work offline
                    log.warning("not connecting to the hub: %s (%s)", exc, exc.hint)
        try:
            yield link
        finally:
            if link is not None:
                await link.close()

    @asynccontextmanager
    async def writing(
        self, timeout: float = 600.0, *, or_skip: bool = False
    ) -> AsyncIterator[bool]:
        """Hold the state directory's write lock; clean up after a crashed writer.

        Yields True once the lock is held. If another process holds it past ``timeout``
        seconds this raises :class:`JournalError`, or with ``or_skip`` yields False
        without the lock (for work that can wait for a later turn)."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.cfg.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        if or_skip:
                            yield False
                            return
                        raise JournalError(
                            "another amber-agent process is writing to this journal",
                            hint="wait for it to finish (or stop the daemon) and retry",
                        ) from None
                    await asyncio.sleep(0.1)
            await self.journal.discard_tentative()
            await roll_back_interrupted(RestoreJobs(self.journal), self.cfg.sources)
            yield True
        finally:
            os.close(fd)
