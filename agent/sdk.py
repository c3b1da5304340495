"""`amber.agent.sdk`: agent thread/run state as an append-only event stream.

An agent framework appends events per thread, records checkpoints (full snapshots of
its state) and loads the state of a thread as of any event or checkpoint label (time
travel). Everything lives in one SQLite file (WAL, ``synchronous=FULL``): configure it
as a ``state`` source and ``amber-agent`` backs it up consistently. docs/SDK.md has an
example and the guarantees.

The state at event seq N is the latest snapshot at or before N, plus the events after
it up to N replayed through the store's reducer.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from amber.protocol.errors import (
    AmberError,
    DiskFullError,
    FormatError,
    NotFoundError,
    SourceBusyError,
    SourceError,
    UnknownVersionError,
    UsageError,
)

FORMAT = "amber-agent-state"
VERSION = 1
PAGE = 512  # rows fetched per round trip
MAX_SEQ = 2**63 - 1
SNAP = "id, thread, seq, label, time_us"  # the columns of a StateCheckpoint

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');
CREATE TABLE IF NOT EXISTS events (
    thread TEXT NOT NULL, seq INTEGER NOT NULL, time_us INTEGER NOT NULL,
    type TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (thread, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY, thread TEXT NOT NULL, seq INTEGER NOT NULL, label TEXT,
    time_us INTEGER NOT NULL, state BLOB NOT NULL, UNIQUE (thread, label)
);
CREATE INDEX IF NOT EXISTS snapshots_at ON snapshots (thread, seq, id);
CREATE TRIGGER IF NOT EXISTS events_append_only BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS snapshots_append_only BEFORE UPDATE ON snapshots
    BEGIN SELECT RAISE(ABORT, 'snapshots are append-only'); END;
"""
# One statement each: the next seq is chosen and used inside one write transaction.
APPEND = (
    "INSERT INTO events (thread, seq, time_us, type, payload) SELECT ?,"
    " COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM events WHERE thread = ? RETURNING seq"
)
SNAPSHOT = (
    "INSERT INTO snapshots (thread, seq, label, time_us, state) SELECT ?,"
    f" COALESCE(MAX(seq), 0), ?, ?, ? FROM events WHERE thread = ? RETURNING {SNAP}"
)
VALUE_HINT = (
    "use dicts, lists, str, bytes, int, float, bool and None only; convert tuples to "
    "lists and other objects (datetime, Enum, dataclasses) to those types first"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One appended event. ``seq`` counts from 1 in each thread, without gaps."""

    thread: str
    seq: int
    time_us: int
    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StateCheckpoint:
    """A snapshot of a thread's full state, taken when its last event was ``seq``."""

    id: int
    thread: str
    seq: int
    label: str | None
    time_us: int


@dataclass(frozen=True, slots=True)
class ThreadState:
    """A thread's state as of event ``seq``; ``base`` is the snapshot it was rebuilt
    from (None: from the empty state) and ``replayed`` counts the events applied."""

    thread: str
    seq: int
    state: dict[str, Any]
    base: StateCheckpoint | None
    replayed: int


Reducer = Callable[[dict[str, Any], Event], dict[str, Any]]


def default_reducer(state: dict[str, Any], event: Event) -> dict[str, Any]:
    """``update`` merges the payload into the state; ``message`` appends the payload to
    ``state["messages"]``; any other type leaves the state as it is."""
    if event.type == "update":
        return {**state, **event.payload}
    if event.type == "message":
        return {**state, "messages": [*state.get("messages", []), event.payload]}
    return state


def _pack(value: object, what: str) -> bytes:
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a dict, not {type(value).__name__}", hint=VALUE_HINT)
    try:
        return msgpack.packb(value, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UsageError(f"{what} cannot be stored: {exc}", hint=VALUE_HINT) from None


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"{what} is damaged: {exc}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} is damaged: not a map")
    return obj


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _db_error(exc: sqlite3.Error, path: Path) -> AmberError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return SourceBusyError(
            f"state store {path} stayed locked by another writer: {text}",
            hint="retry, raise busy_timeout in StateStore.open, or end the long transaction",
        )
    if "full" in text:
        return DiskFullError(f"state store {path}: {text}")
    if "not a database" in text or "malformed" in text:
        return FormatError(f"{path} is not a readable state store: {text}")
    return SourceError(f"state store {path}: {text}")


def _now_us() -> int:
    return time.time_ns() // 1000


async def _rows(db: aiosqlite.Connection, sql: str, *params: object) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def _checkpoint(row: Any) -> StateCheckpoint:
    return StateCheckpoint(id=row[0], thread=row[1], seq=row[2], label=row[3], time_us=row[4])


class _Opening:
    """What :meth:`StateStore.open` returns: await it, or use it with ``async with``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __await__(self) -> Generator[Any, None, StateStore]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> StateStore:
        await self._store._connect()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        await self._store.close()


class StateStore:
    """Append-only event streams with checkpoints, one SQLite file, safe to share
    between asyncio tasks and with other processes writing the same file."""

    def __init__(self, path: Path, reducer: Reducer, busy_timeout: float, create: bool) -> None:
        self.path, self.reducer = path, reducer
        self.busy_timeout, self._create = busy_timeout, create
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        reducer: Reducer = default_reducer,
        busy_timeout: float = 10.0,
        create: bool = True,
    ) -> _Opening:
        """Open (or with ``create`` make) the store at ``path``. ``busy_timeout`` is how
        many seconds to wait for another process's write lock."""
        return _Opening(cls(Path(path), reducer, busy_timeout, create))

    async def _connect(self) -> None:
        if not self._create and not self.path.exists():
            raise NotFoundError(f"state store {self.path} does not exist")
        try:
            self._db = await aiosqlite.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None
        try:
            async with self._op() as db:  # connect(timeout=) set the busy timeout
                await self._prepare(db)  # first: a refused file is left as it was
                await db.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        except BaseException:
            await self.close()
            raise

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        if not await _rows(db, sql):
            try:  # IF NOT EXISTS: another process may be creating it too
                await db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        meta: dict[str, str] = {}
        if "meta" in {r[0] for r in await _rows(db, sql)}:
            meta = dict(await _rows(db, "SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise FormatError(
                f"{self.path} is a SQLite database but not an Amber state store",
                hint="point StateStore.open at a new file or at one the SDK created",
            )
        if meta.get("version") != str(VERSION):
            raise UnknownVersionError(
                f"{self.path} is state store format version {meta.get('version')}; "
                f"this build reads version {VERSION}"
            )

    async def close(self) -> None:
        """Close the store; waits for operations in flight. Closing twice is harmless."""
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    @asynccontextmanager
    async def _op(self) -> AsyncIterator[aiosqlite.Connection]:
        """Serialise use of the one connection and translate SQLite errors."""
        async with self._lock:
            if self._db is None:
                raise UsageError("the state store is closed", hint="use StateStore.open(path)")
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise _db_error(exc, self.path) from None

    async def append(self, thread_id: str, type: str, payload: dict[str, Any]) -> int:
        """Append an event atomically; returns its seq (1, 2, 3... in each thread)."""
        _name(thread_id, "thread_id")
        _name(type, "event type")
        blob = _pack(payload, "event payload")
        async with self._op() as db:
            rows = await _rows(db, APPEND, thread_id, _now_us(), type, blob, thread_id)
        return int(rows[0][0])

    async def checkpoint(
        self, thread_id: str, state: dict[str, Any], label: str | None = None
    ) -> StateCheckpoint:
        """Record ``state`` as the full state of the thread at its current last event.
        A ``label`` names it for :meth:`load`; labels are unique within a thread."""
        _name(thread_id, "thread_id")
        if label is not None:
            _name(label, "label")
        blob = _pack(state, "state")
        async with self._op() as db:
            try:
                rows = await _rows(db, SNAPSHOT, thread_id, label, _now_us(), blob, thread_id)
            except sqlite3.IntegrityError:
                raise UsageError(
                    f"thread {thread_id!r} already has a checkpoint labelled {label!r}",
                    hint="labels name one moment each; choose another label",
                ) from None
        return _checkpoint(rows[0])

    async def load(self, thread_id: str, at: int | str | None = None) -> ThreadState:
        """The thread's state: latest (``at=None``), as of event seq ``at`` (an int), or
        exactly as checkpointed under label ``at`` (a str). An unknown thread is empty."""
        _name(thread_id, "thread_id")
        if isinstance(at, bool) or not isinstance(at, int | str | None):
            raise UsageError(f"at must be an event seq, a label or None, not {at!r}")
        async with self._op() as db:
            await db.execute("BEGIN")  # one read snapshot for the whole rebuild
            try:
                if isinstance(at, str):
                    return await self._labelled(db, thread_id, at)
                return await self._replay(db, thread_id, at)
            finally:
                if db.in_transaction:
                    await db.execute("ROLLBACK")

    async def _labelled(self, db: aiosqlite.Connection, thread: str, label: str) -> ThreadState:
        sql = f"SELECT {SNAP}, state FROM snapshots WHERE thread = ? AND label = ?"
        rows = await _rows(db, sql, thread, label)
        if not rows:
            raise NotFoundError(
                f"thread {thread!r} has no checkpoint labelled {label!r}",
                hint="list them with StateStore.checkpoints(thread_id)",
            )
        snap = _checkpoint(rows[0])
        return ThreadState(thread, snap.seq, _unpack(rows[0][5], f"checkpoint {label!r}"), snap, 0)

    async def _replay(self, db: aiosqlite.Connection, thread: str, at: int | None) -> ThreadState:
        sql = "SELECT MAX(seq) FROM events WHERE thread = ?"
        last = (await _rows(db, sql, thread))[0][0] or 0
        target = last if at is None else at
        if not 0 <= target <= last:
            raise NotFoundError(f"thread {thread!r} has {last} event(s); there is no seq {target}")
        sql = (
            f"SELECT {SNAP}, state FROM snapshots WHERE thread = ? AND seq <= ?"
            " ORDER BY seq DESC, id DESC LIMIT 1"
        )
        rows = await _rows(db, sql, thread, target)
        base = _checkpoint(rows[0]) if rows else None
        state = _unpack(rows[0][5], f"checkpoint {rows[0][0]}") if rows else {}
        replayed = 0
        async with db.execute(
            "SELECT seq, time_us, type, payload FROM events"
            " WHERE thread = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (thread, base.seq if base else 0, target),
        ) as cur:
            while batch := await cur.fetchmany(PAGE):
                for seq, time_us, etype, payload in batch:
                    event = Event(thread, seq, time_us, etype, _unpack(payload, f"event {seq}"))
                    state = self.reducer(state, event)
                    if not isinstance(state, dict):
                        raise UsageError(f"the reducer returned {type(state).__name__}, not a dict")
                    replayed += 1
        return ThreadState(thread, target, state, base, replayed)

    async def events(
        self, thread_id: str, after: int = 0, until: int | None = None
    ) -> AsyncIterator[Event]:
        """Iterate the thread's events with ``after < seq <= until`` in seq order, a page
        at a time (other calls may run between pages). ``until=None``: to the end."""
        _name(thread_id, "thread_id")
        last, end = after, MAX_SEQ if until is None else until
        sql = (
            "SELECT seq, time_us, type, payload FROM events"
            " WHERE thread = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        )
        while True:
            async with self._op() as db:
                rows = await _rows(db, sql, thread_id, last, end, PAGE)
            for seq, time_us, etype, payload in rows:
                yield Event(thread_id, seq, time_us, etype, _unpack(payload, f"event {seq}"))
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    async def checkpoints(self, thread_id: str) -> list[StateCheckpoint]:
        """The thread's checkpoints, oldest first."""
        _name(thread_id, "thread_id")
        sql = f"SELECT {SNAP} FROM snapshots WHERE thread = ? ORDER BY seq, id"
        async with self._op() as db:
            return [_checkpoint(r) for r in await _rows(db, sql, thread_id)]

    async def threads(self) -> list[str]:
        """Every thread with at least one event or checkpoint, sorted."""
        sql = "SELECT thread FROM events UNION SELECT thread FROM snapshots ORDER BY 1"
        async with self._op() as db:
            return [r[0] for r in await _rows(db, sql)]
