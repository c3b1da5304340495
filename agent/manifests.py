"""Reading a manifest from wherever its records are: a version 2 head and its parts.

A manifest too large for one NATS message is a head record and part records
(docs/FORMAT.md, "Manifest parts"); these helpers gather them through any
``record(id)`` source (the journal, the hub, a bundle) and decode them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from amber.protocol.errors import NotFoundError
from amber.protocol.keys import VaultKeys
from amber.protocol.records import Manifest, decode_manifest, manifest_part_ids

GetRecord = Callable[[bytes], Awaitable[bytes | None]]


async def manifest_records(get: GetRecord, mid: bytes) -> list[tuple[bytes, bytes]] | None:
    """The manifest's records as (id, bytes), head first then its parts in order;
    None when the head is not there. Raises NotFoundError for a missing part."""
    head = await get(mid)
    if head is None:
        return None
    out = [(mid, head)]
    for i, pid in enumerate(manifest_part_ids(head)):
        data = await get(pid)
        if data is None:
            raise NotFoundError(
                f"part {i} ({pid.hex()[:16]}) of manifest {mid.hex()[:16]} is missing",
                hint="sync again, or fetch the checkpoint from the hub or a bundle",
            )
        out.append((pid, data))
    return out


async def load_manifest(
    get: GetRecord,
    mid: bytes,
    keys: VaultKeys,
    *,
    trusted: bytes | set[bytes] | None = None,
) -> Manifest | None:
    """Decode the manifest ``mid`` (head and parts, checked to belong together)."""
    recs = await manifest_records(get, mid)
    if recs is None:
        return None
    parts = [d for _, d in recs[1:]]
    return await asyncio.to_thread(decode_manifest, recs[0][1], keys, trusted=trusted, parts=parts)
