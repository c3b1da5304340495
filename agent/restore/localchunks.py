"""The data already on the node as a chunk source for restores.

The safety checkpoint taken before a restore describes the files that are on disk now,
chunk by chunk (id, length, in order). A restore that needs one of those chunks reads
it from the live file instead of fetching it from the hub, after hashing it back to the
id, so restoring a node that still holds most of its data moves only what changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

from amber.agent.config import SourceConfig
from amber.protocol.chunk import chunk_id, encode_chunk
from amber.protocol.keys import VaultKeys
from amber.protocol.records import Manifest


class LocalChunks:
    def __init__(self, keys: VaultKeys, pool: Executor) -> None:
        self.keys, self.pool = keys, pool
        self.index: dict[bytes, tuple[Path, int, int]] = {}
        self.hits = 0

    def add(self, src: SourceConfig, m: Manifest) -> None:
        """Index where each chunk of ``m`` lies in the source's files on disk now."""
        # (for sqlite/state the manifest describes a backup copy; the live file keeps the
        # same page layout for every page not still in the WAL, and each chunk read is
        # hashed back to its id before use, so a page that differs is simply fetched)
        root_is_dir = bool(m.meta.get("root_is_dir", True))
        for e in m.entries:
            if e.type != "f":
                continue
            path = src.path / e.path if root_is_dir else src.path
            offset = 0
            for cid, n in e.chunks:
                self.index.setdefault(cid, (path, offset, n))
                offset += n

    def _read(self, cid: bytes) -> bytes | None:
        path, offset, n = self.index[cid]
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(n)
        except OSError:
            return None
        if len(data) != n or chunk_id(self.keys, data) != cid:
            return None  # the file changed since: fetch it elsewhere
        return encode_chunk(self.keys, data, cid=cid)[1]

    async def get_chunks(self, ids: Sequence[bytes]) -> dict[bytes, bytes]:
        loop = asyncio.get_running_loop()
        wanted = [i for i in ids if i in self.index]
        blobs = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._read, i) for i in wanted)
        )
        found = {i: b for i, b in zip(wanted, blobs, strict=True) if b is not None}
        self.hits += len(found)
        return found
