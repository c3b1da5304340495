"""Where a restore reads from: the interfaces of chunk and record sources, and chains of them.

Implemented by the journal (``Journal.get_chunks``/``Journal.record``), the hub link,
the local files of a node (``localchunks.LocalChunks``) and counting wrappers; used by
the restorer and the file pipeline (``restore/files.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ChunkSource(Protocol):
    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]: ...


class RecordSource(Protocol):
    async def record(self, rid: bytes) -> bytes | None: ...


class ChainedChunks:
    """Ask each source in turn for what the earlier ones lacked (journal, then hub)."""

    def __init__(self, *sources: ChunkSource) -> None:
        self.sources = sources

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for src in self.sources:
            missing = [i for i in ids if i not in found]
            if not missing:
                break
            found.update(await src.get_chunks(missing))
        return found


class ChainedRecords:
    """Records from the journal, else from the hub."""

    def __init__(self, *sources: RecordSource) -> None:
        self.sources = sources

    async def record(self, rid: bytes) -> bytes | None:
        for src in self.sources:
            data = await src.record(rid)
            if data is not None:
                return data
        return None
