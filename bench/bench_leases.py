"""Cost of a chunk query's upload leases in the catalog (hub/limits.py): one read of the
leases for the ids and one write transaction, per query of QUERY ids.

    python bench/bench_leases.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from amber.hub.catalog import Catalog
from amber.hub.limits import UploadLeases

QUERY = 4096  # ids per chunk query (agent/sync.py QUERY_BATCH)
ROUNDS = 20


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cat = await Catalog.open(Path(tmp) / "catalog.db")
        leases = UploadLeases(cat, term=60, per_node=10**9)
        await leases.setup()
        for size in (1, 64, QUERY):
            fresh = renewed = 0.0
            for r in range(ROUNDS):
                ids = [os.urandom(32) for _ in range(size)]
                t = time.perf_counter()
                await leases.grant("v", f"n{r}", ids)  # every lease new
                fresh += time.perf_counter() - t
                t = time.perf_counter()
                await leases.grant("v", f"m{r}", ids)  # every id leased by another node
                renewed += time.perf_counter() - t
            print(
                f"{size:5d} ids: {fresh / ROUNDS * 1e3:7.2f} ms granting, "
                f"{renewed / ROUNDS * 1e3:7.2f} ms when all are leased "
                f"({fresh / ROUNDS / size * 1e6:6.1f} us per id)"
            )
        await cat.close()


if __name__ == "__main__":
    asyncio.run(main())
