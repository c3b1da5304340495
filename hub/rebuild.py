"""`amber-hub catalog rebuild`: recreate the catalog's index from the store alone.

Manifests and checkpoints are stored objects, so the store is the source of truth:
list every object, re-read every record's public part (its signature is checked) and
every pack's entries, and insert objects, manifests and checkpoints again. Manifest
parts (record version 2) are indexed as objects; their heads as manifests. Node
enrolments are kept.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from amber.hub.catalog import CHUNK, PACK, RECORD, Catalog
from amber.hub.store.base import ObjectStore
from amber.hub.store.layout import parse_key
from amber.protocol import packfile
from amber.protocol.chunk import parse_chunk_header
from amber.protocol.errors import AmberError
from amber.protocol.records import (
    KIND_CHECKPOINT,
    KIND_PART,
    checkpoint_public,
    manifest_public,
    parse,
    part_public,
)

log = logging.getLogger("amber.hub.rebuild")


async def rebuild_catalog(store: ObjectStore, catalog: Catalog) -> dict[str, int]:
    await catalog.clear_index()
    counts = {"chunks": 0, "packs": 0, "manifests": 0, "checkpoints": 0, "skipped": 0}
    objects: dict[str, list[tuple[bytes, str, int]]] = defaultdict(list)
    checkpoints = []
    async for key in store.list(""):
        parsed = parse_key(key)
        info = await store.head(key)
        if parsed is None or info is None:
            counts["skipped"] += 1
            continue
        vault, oid, kind = parsed
        if kind == PACK:
            rows = await _pack_rows(store, key, counts)
            await catalog.add_packed(vault, oid, rows)
            counts["chunks"] += len(rows)
            counts["packs"] += 1
            continue
        if kind == CHUNK:
            objects[vault].append((oid, CHUNK, info.size))
            counts["chunks"] += 1
            continue
        data = await store.get(key)
        try:
            raw = parse(data)
            if raw.kind == KIND_CHECKPOINT:
                checkpoints.append((checkpoint_public(data), oid, raw.signer))
            elif raw.kind == KIND_PART:  # a part of a version 2 manifest: only an object
                part_public(data)
            else:
                await catalog.add_manifest(vault, oid, manifest_public(data))
                counts["manifests"] += 1
        except AmberError as exc:
            log.warning("skipping damaged record %s: %s", key, exc)
            counts["skipped"] += 1
            continue
        objects[vault].append((oid, RECORD, info.size))
    for vault, rows in objects.items():
        await catalog.add_objects(vault, rows)
    for cp, oid, signer in sorted(checkpoints, key=lambda c: (c[0].vault, c[0].node, c[0].seq)):
        await catalog.add_checkpoint(cp, oid, signer)
        counts["checkpoints"] += 1
    return counts


async def _pack_rows(
    store: ObjectStore, key: str, counts: dict[str, int]
) -> list[tuple[bytes, int, int]]:
    """The index of one pack object: (chunk id, blob offset, length) of each entry whose
    blob header is sound. A damaged pack keeps the entries before the damage."""
    data = memoryview(await store.get(key))
    rows: list[tuple[bytes, int, int]] = []
    try:
        for cid, off, length in packfile.entries(data, f"pack object {key}"):
            try:
                parse_chunk_header(data[off : off + length])
            except AmberError as exc:
                log.warning("skipping a damaged chunk in %s: %s", key, exc)
                counts["skipped"] += 1
                continue
            rows.append((cid, off, length))
    except AmberError as exc:
        log.warning("pack %s is damaged after %d entries: %s", key, len(rows), exc)
        counts["skipped"] += 1
    return rows
