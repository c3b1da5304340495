"""Where objects live in the store, and how long Object Lock keeps them.

<vault>/packs/<id hex[:2]>/<id hex>    packs of encrypted chunk blobs (FORMAT.md §18);
                                       the id is the BLAKE3 of the pack's bytes
<vault>/chunks/<id hex[:2]>/<id hex>   one encrypted chunk blob (written by hubs before
                                       packs; still read)
<vault>/records/<id hex>               signed manifests and checkpoints
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from amber.hub.catalog import CHUNK, PACK

DEFAULT_RETENTION_DAYS = {"hot": 7, "warm": 30, "cold": 365}


def object_key(vault: str, oid: bytes, kind: str) -> str:
    h = oid.hex()
    if kind == CHUNK:
        return f"{vault}/chunks/{h[:2]}/{h}"
    if kind == PACK:
        return f"{vault}/packs/{h[:2]}/{h}"
    return f"{vault}/records/{h}"


def parse_key(key: str) -> tuple[str, bytes, str] | None:
    """(vault, id, kind) of a store key, or None for keys that are not ours."""
    parts = key.split("/")
    try:
        if len(parts) == 4 and parts[1] == "chunks":
            return parts[0], bytes.fromhex(parts[3]), CHUNK
        if len(parts) == 4 and parts[1] == "packs":
            return parts[0], bytes.fromhex(parts[3]), PACK
        if len(parts) == 3 and parts[1] == "records":
            return parts[0], bytes.fromhex(parts[2]), "r"
    except ValueError:
        return None
    return None


def retain_until(days: int) -> datetime | None:
    return datetime.now(UTC) + timedelta(days=days) if days > 0 else None


def tier_days(retention: dict[str, int], tiers: list[str]) -> int:
    """Records keep the longest retention of the tiers they belong to; chunks, which any
    tier may share, keep the longest configured."""
    chosen = tiers or list(retention)
    return max((retention.get(t, 0) for t in chosen), default=0)
