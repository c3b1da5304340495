"""Reading a manifest from wherever its records are: a version 2 head and its parts.

A manifest too large for one NATS message is a head record and part records
(docs/FORMAT.md, "Manifest parts"); these helpers gather them through any
``record(id)`` source (the journal, the hub, a bundle) and decode them together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from amber.protocol.errors import IntegrityError, NotFoundError
from amber.protocol.keys import VaultKeys
from amber.protocol.records import Manifest, decode_manifest, manifest_part_ids, record_id

GetRecord = Callable[[bytes], Awaitable[bytes | None]]


async def manifest_records(get: GetRecord, mid: bytes) -> list[tuple[bytes, bytes]] | None:
    """The manifest's records as (id, bytes), head first then its parts in order;
    None when the head is not there. Raises NotFoundError for a missing part."""
    head = await get(mid)
    if head is None:
        return None
    check_record_id(mid, head, "manifest")
    out = [(mid, head)]
    for i, pid in enumerate(manifest_part_ids(head)):
        data = await get(pid)
        if data is None:
            raise NotFoundError(
                f"part {i} ({pid.hex()[:16]}) of manifest {mid.hex()[:16]} is missing",
                hint="sync again, or fetch the checkpoint from the hub or a bundle",
            )
        check_record_id(pid, data, f"part {i} of manifest {mid.hex()[:16]}")
        out.append((pid, data))
    return out


def check_record_id(rid: bytes, data: bytes, what: str) -> None:
    """Raise :class:`IntegrityError` unless ``data`` is the record ``rid`` (its hash)."""
    got = record_id(data)
    if got != rid:
        raise IntegrityError(
            f"{what} {rid.hex()[:16]} was asked for, but record {got.hex()[:16]} came back",
            hint="the hub (or its store) served another record: nothing was restored; "
            "tell the hub's operator (docs/OPERATIONS.md, 'A restore says a record is not the "
            "one asked for')",
        )


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
