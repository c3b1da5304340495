"""Explicit SQLite transactions on an aiosqlite connection that survive cancellation.

Shared by the agent's journal and the hub's catalog (they import :mod:`amber.protocol`
and this module, never each other). Both run their connection in autocommit mode and
write in ``BEGIN IMMEDIATE ... COMMIT``; statements run in order on the connection's
thread, whatever happens to the task that queued them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite


async def rollback_if_open(db: aiosqlite.Connection) -> None:
    """ROLLBACK, unless there is nothing to roll back: SQLite rolls back by itself on
    some errors (a full disk, an I/O error), a BEGIN may never have run, and a COMMIT
    that ran while its task was being cancelled leaves none. Either way the original
    error (not "cannot rollback - no transaction is active") is the one to report."""
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        if db.in_transaction:
            raise


async def begin_immediate(db: aiosqlite.Connection) -> None:
    """BEGIN IMMEDIATE. Cancelled while it waits on the connection's thread, the BEGIN
    runs anyway and would leave a transaction open for the next writer: a ROLLBACK is
    queued behind it (shielded), and the cancellation goes on."""
    try:
        await db.execute("BEGIN IMMEDIATE")
    except BaseException:
        await asyncio.shield(rollback_if_open(db))
        raise


@asynccontextmanager
async def immediate(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error or cancellation."""
    await begin_immediate(db)
    try:
        yield
        await db.execute("COMMIT")
    except BaseException:
        await rollback_if_open(db)
        raise
