"""Executing the hub's restore orders on the node.

A restore order: record the job (at most once per order id) → safety checkpoint of what
is there → fetch only the chunks the journal lacks and verify every chunk and file into
staging directories beside the sources → pre-restore hook → swap (previous content is
kept aside, and the swap plan is journaled first) → post-restore hook → the checks the
order names (defined only in agent.toml, ``restore/checks.py``) → ``healthy``, or on any
failure swap the previous content back → ``failed``. An order that carries a command line
(version 1) or names a check the node does not define fails before anything is fetched.
A rollback order returns the node to the safety checkpoint of the plan's restore.
An agent killed mid-restore rolls back when it starts again (:meth:`recover`).
Every step is reported to the hub; unreported states are re-sent when the link is up.
A report carries states, counts and error codes (the error's class and exit code), never
a path or a hook's or check's output: those stay in the journal's job row and the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from amber.agent.config import SourceConfig
from amber.agent.hublink import HubLink
from amber.agent.restore import swap
from amber.agent.restore.checks import resolve, run_checks
from amber.agent.restore.chunksource import ChainedChunks
from amber.agent.restore.inplace import restore_in_place
from amber.agent.restore.jobs import RestoreJobs
from amber.agent.restore.localchunks import LocalChunks
from amber.agent.runtime import AgentRuntime
from amber.protocol import wire
from amber.protocol.errors import AmberError, RestoreError, WrongTargetError

log = logging.getLogger("amber.agent.restore.orders")
HOOK_TIMEOUT = 300.0


class OrderExecutor:
    def __init__(self, rt: AgentRuntime, link: HubLink | None) -> None:
        self.rt, self.link = rt, link
        self.jobs = RestoreJobs(rt.journal)

    # --- reporting ------------------------------------------------------------------

    async def report(self, job_id: str) -> bool:
        """Send the job's current state; True if the hub wants the order carried on."""
        job = await self.jobs.get(job_id)
        if job is None or self.link is None or job.local:
            return True
        rep = wire.RestoreReport(
            order_id=job.order_id,
            plan_id=job.plan_id,
            state=_wire_state(job.state),
            detail=report_detail(job.state, job.detail),
            done=job.done,
            total=job.total,
            safety=job.safety,
        )
        try:
            ack = await self.link.request(rep, wire.ReportAck)
        except AmberError as exc:
            log.info("restore report not delivered yet: %s", exc)
            return True
        await self.jobs.mark_reported(job.order_id, job.updated_us)
        return bool(ack.ok)

    async def flush_reports(self) -> None:
        for job in await self.jobs.all():
            if not job.reported:
                await self.report(job.order_id)

    async def set(self, job_id: str, **fields: Any) -> bool:
        await self.jobs.update(job_id, **fields)
        return await self.report(job_id)

    # --- orders ---------------------------------------------------------------------

    async def take(self, order: AnyOrder, ack: Callable[[], Awaitable[Any]]) -> None:
        """Journal, acknowledge and run one order of the command stream. Never raises an
        order's own failure (one bad order never stops the order loop): it is logged and,
        once the order is journaled, reported as failed."""
        try:
            new = await self.accept(order)
        except AmberError as exc:
            log.error("refused restore order %s: %s", order.order_id, exc)
            new = False
        await ack()  # journaled (or refused): the order never runs twice
        if not new:
            return
        log.info("restore order %s (%s) of plan %s", order.order_id, order.action, order.plan_id)
        try:
            await self.execute(order)
        except Exception as exc:  # a bug: the job fails, the loop carries on
            log.exception("restore order %s failed unexpectedly", order.order_id)
            await self.fail(order.order_id, exc)

    async def fail(self, job_id: str, exc: BaseException) -> None:
        """Mark an unfinished job failed with the error's code, and report it if possible."""
        try:
            job = await self.jobs.get(job_id)
            if job is not None and not job.finished:
                await self.set(job_id, state="failed", detail=failure_detail(exc))
        except Exception:
            log.exception("could not record the failure of restore order %s", job_id)

    async def accept(self, order: AnyOrder) -> bool:
        """Journal a new order; False if this order id was already seen."""
        cfg = self.rt.cfg
        if (order.vault, order.node) != (cfg.vault, cfg.node):
            raise WrongTargetError(
                f"order {order.order_id} is for {order.vault}/{order.node}, "
                f"this node is {cfg.vault}/{cfg.node}"
            )
        return await self.jobs.add(order.order_id, order.plan_id, order.action, order.checkpoint)

    async def execute(self, order: AnyOrder) -> None:
        job = order.order_id
        try:  # before anything is fetched or swapped: no command line, only defined checks
            order = wire.current_order(order)
            checks = resolve(self.rt.cfg, order.checks) if order.action == "restore" else []
        except AmberError as exc:
            log.error("restore order %s refused: %s (hint: %s)", job, exc, exc.hint)
            await self.set(job, state="failed", detail=failure_detail(exc))
            return
        # a rollback is sent because the plan halted or was aborted: it never waits for
        # the hub's go-ahead (the hub answers "stop" for every plan that is not running)
        if not await self.report(job) and order.action != "rollback":
            await self.jobs.update(job, state="cancelled", detail="the plan no longer runs")
            return
        async with self.rt.writing():
            if order.action == "rollback":
                await self._rollback_plan(order)
            else:
                await self._restore(order, checks)

    async def _restore(self, order: wire.RestoreOrder, checks: list[Any]) -> None:
        job = order.order_id
        swaps: list[dict[str, str]] = []
        hooked = False
        try:
            restorer = self.rt.restorer(None, self.link)
            _, manifests = await restorer.load(order.checkpoint)
            chosen = {n: m for n, m in manifests.items() if not order.sources or n in order.sources}
            targets = {n: self.rt.cfg.source(n) for n in chosen}
            present = [n for n, s in targets.items() if s.path.exists()]
            safety = b""
            if present:
                res = await self.rt.checkpointer().checkpoint(
                    present,
                    {"amber.safety_for": order.checkpoint.hex(), "amber.plan": order.plan_id},
                    kind="safety",
                )
                safety = res.id
            local = await self._local_chunks(safety, targets)
            hub = CountingChunks(self.link) if self.link is not None else None
            restorer.chunks = ChainedChunks(
                *(c for c in (self.rt.journal, local, hub) if c is not None)
            )
            total = sum(len(e.chunks) for m in chosen.values() for e in m.entries)
            if not await self.set(job, state="fetching", safety=safety, total=total):
                raise RestoreError("the hub halted the plan")
            staged = await self._stage(job, restorer, chosen, targets, total)
            await self.set(job, state="verifying", done=total)
            hooked = True  # from here on, post_restore must run whatever happens
            await _hook(self.rt.cfg.hooks.get("pre_restore"), "pre_restore hook")
            if not await self.report(job):  # aborted while the hook ran: do not swap
                raise RestoreError("the hub halted the plan before the swap")
            swaps = swap.plan(targets, staged)
            root_is_dir = {n: bool(m.meta.get("root_is_dir", True)) for n, m in chosen.items()}
            await swap.swap_all(self.jobs, job, swaps, targets, root_is_dir)
            await self.set(job, state="swapped")
            await _hook(self.rt.cfg.hooks.get("post_restore"), "post_restore hook")
            await run_checks(checks, targets)
        except Exception as exc:  # AmberError, OSError, or a bug: the node goes back
            if not isinstance(exc, AmberError | OSError):
                log.exception("restore order %s failed unexpectedly", job)
            await self._undo(job, swaps, exc, hooked)
            return
        fetched = hub.fetched if hub is not None else 0
        await self.set(
            job,
            state="healthy",
            detail=f"restored and healthy; {fetched} chunk(s) "
            f"fetched from the hub, {local.hits} reused from local files",
        )
        swap.drop_old(swaps)

    async def _local_chunks(self, safety: bytes, targets: dict[str, SourceConfig]) -> LocalChunks:
        """Index the chunks of the files on disk now (as the safety checkpoint saw them)."""
        local = LocalChunks(self.rt.ident.keys, self.rt.pool)
        if not safety:
            return local
        _, now = await self.rt.restorer().load(safety)
        for name, m in now.items():
            if name in targets:
                local.add(targets[name], m)
        return local

    async def _stage(
        self,
        job: str,
        restorer: Any,
        chosen: dict[str, Any],
        targets: dict[str, SourceConfig],
        total: int,
    ) -> dict[str, Path]:
        staged: dict[str, Path] = {}
        stop = asyncio.Event()

        async def progress() -> None:
            while not stop.is_set():
                await asyncio.sleep(1.0)
                ok = await self.set(job, state="fetching", done=restorer.stats.chunks, total=total)
                if not ok:
                    raise RestoreError("the hub halted the plan")

        ticker = asyncio.create_task(progress())
        try:
            for name, m in chosen.items():
                staged[name] = stage = swap.new_stage(targets[name])
                work = asyncio.create_task(restorer.materialize(m, stage))
                done, _ = await asyncio.wait({work, ticker}, return_when=asyncio.FIRST_COMPLETED)
                if ticker in done and not work.done():
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    ticker.result()
                await work
        except BaseException:
            for stage in staged.values():
                shutil.rmtree(stage, ignore_errors=True)
            raise
        finally:
            stop.set()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return staged

    async def _undo(
        self, job: str, swaps: list[dict[str, str]], exc: BaseException, hooked: bool = False
    ) -> None:
        reason = failure_detail(exc)
        swap.undo(swaps, self.rt.cfg.sources)
        if hooked:  # pre_restore stopped the owner of the data: start it again on the old data
            try:
                await _hook(self.rt.cfg.hooks.get("post_restore"), "post_restore hook")
            except AmberError as again:
                reason = f"{reason}; and then {again}"
        log.warning(
            "restore order %s failed: %s; the node stays on its previous state", job, reason
        )
        await self.set(job, state="failed", detail=f"{reason}; rolled back to the previous state")

    async def _rollback_plan(self, order: wire.RestoreOrder) -> None:
        """Return to the safety checkpoint the plan's restore took, if it changed anything."""
        mine = [
            j for j in await self.jobs.all() if j.plan_id == order.plan_id and j.action == "restore"
        ]
        for j in mine:
            if j.state in ("swapped", "healthy", "swapping") and j.safety:
                await restore_in_place(
                    self.rt.cfg,
                    self.rt.restorer(None, self.link),
                    self.rt.checkpointer(),
                    j.safety,
                    None,
                    plan_id=order.plan_id,
                )
            if not j.finished or j.state == "healthy":
                await self.jobs.update(
                    j.order_id, state="rolled_back", detail="rolled back by the plan"
                )
        await self.set(
            order.order_id,
            state="rolled_back",
            detail="returned to the safety checkpoint" if mine else "nothing to undo",
        )

    async def recover(self) -> None:
        """After a crash (at the daemon's start): every job left unfinished is rolled
        back (``swap.roll_back_interrupted``, which also runs whenever a process takes
        the write lock); orders still queued are dropped; the hub hears of each."""
        async with self.rt.writing():
            await swap.roll_back_interrupted(self.jobs, self.rt.cfg.sources)
            for job in await self.jobs.all():
                if job.state == "queued":
                    await self.jobs.update(
                        job.order_id,
                        state="rolled_back",
                        detail="interrupted (the agent stopped) before it started",
                    )
        await self.flush_reports()


class CountingChunks:
    """The hub as a chunk source, counting what crossed the network."""

    def __init__(self, link: HubLink) -> None:
        self.link, self.fetched = link, 0

    async def get_chunks(self, ids: Any) -> dict[bytes, bytes]:
        found = await self.link.get_chunks(ids)
        self.fetched += len(found)
        return found


AnyOrder = wire.RestoreOrder | wire.RestoreOrderV1


def error_code(exc: BaseException) -> str:
    """What the hub may hear of a failure: the error's class and exit code (or errno)."""
    if isinstance(exc, AmberError):
        return f"{type(exc).__name__} (exit {exc.exit_code})"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} ({errno.errorcode.get(exc.errno or 0, 'no errno')})"
    return f"internal ({type(exc).__name__})"


def failure_detail(exc: BaseException) -> str:
    """A failed job's detail in the journal: the code first, then the whole message."""
    return f"{error_code(exc)}: {exc}"


def report_detail(state: str, detail: str) -> str:
    """A job's detail as reported to the hub (or carried by a receipt): a failure's code
    only; other states' details are fixed texts and counts, sent as they are."""
    if state == "failed":
        return detail.split(": ", 1)[0]
    return detail


def _wire_state(state: str) -> str:
    return {"swapping": "verifying", "cancelled": "rolled_back"}.get(state, state)


async def _hook(cmd: str | None, what: str) -> None:
    if not cmd:
        return
    proc = await asyncio.create_subprocess_shell(
        cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        raise RestoreError(f"{what} timed out after {HOOK_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        tail = output.decode(errors="replace").strip()[-200:]
        raise RestoreError(f"{what} exited {proc.returncode}: {tail}")
