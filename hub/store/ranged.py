"""Reading objects back by id: records and old chunk objects by their own key, packed
chunks by byte ranges of their pack, with neighbouring ranges merged into one read.

Restores ask for chunks in file order, which is the order a node uploaded them and so
the order they sit in the hub's packs: a fetch of 32 chunks usually becomes one or two
ranged reads instead of 32 (on S3, one GET instead of 32).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from amber.hub.catalog import PACK, Location
from amber.hub.store.base import ObjectStore
from amber.hub.store.layout import object_key
from amber.protocol.errors import IntegrityError

MERGE_GAP = 1024 * 1024
"""Ranges of one pack at most this far apart are read together (the gap is discarded)."""
MAX_READ = 16 * 1024 * 1024 + 64 * 1024
"""Largest merged read; a single chunk may be larger and is then read alone."""
PARALLEL = 16
"""Store reads in flight per call."""


async def read_objects(
    store: ObjectStore, vault: str, wanted: Sequence[tuple[bytes, Location]]
) -> list[bytes]:
    """The bytes of every (id, location) in ``wanted``, in the same order."""
    out: list[bytes | None] = [None] * len(wanted)
    reads: list[tuple[str, int, int | None, list[tuple[int, int, int]]]] = []
    by_pack: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
    for i, (oid, loc) in enumerate(wanted):
        if loc.pack is None or loc.off is None:
            reads.append((object_key(vault, oid, loc.kind), 0, None, [(i, 0, -1)]))
        else:
            by_pack[loc.pack].append((loc.off, loc.size, i))
    for pack, ranges in by_pack.items():
        key = object_key(vault, pack, PACK)
        for start, length, parts in _merge(sorted(ranges)):
            reads.append((key, start, length, parts))
    gate = asyncio.Semaphore(PARALLEL)

    async def read(key: str, start: int, length: int | None, parts: list[tuple[int, int, int]]):
        async with gate:
            data = await store.get(key, offset=start, length=length)
        if length is not None and len(data) < length:
            raise IntegrityError(
                f"pack object {key} ends at {start + len(data)}, before the chunks the "
                f"catalog places up to {start + length}",
                hint="the object is truncated or the catalog is out of date: run "
                "'amber-hub catalog rebuild', then sync the affected nodes again",
            )
        for i, rel, size in parts:
            out[i] = data if size < 0 else data[rel : rel + size]

    await asyncio.gather(*(read(*r) for r in reads))
    return [b if b is not None else b"" for b in out]


def _merge(
    ranges: list[tuple[int, int, int]],
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group sorted (offset, length, index) into reads (start, length, [(index, offset
    within the read, length)])."""
    groups: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    start = end = -1
    parts: list[tuple[int, int, int]] = []
    for off, size, i in ranges:
        if parts and off - end <= MERGE_GAP and off + size - start <= MAX_READ:
            parts.append((i, off - start, size))
            end = max(end, off + size)
            continue
        if parts:
            groups.append((start, end - start, parts))
        start, end, parts = off, off + size, [(i, 0, size)]
    if parts:
        groups.append((start, end - start, parts))
    return groups
