"""What SeaweedFS alone costs: the CPU floor under any client's S3 throughput here.

Starts the same SeaweedFS S3 gateway as the tests and benches (``tests/support/servers.py``),
PUTs ``--mib`` MiB of incompressible data as ``--object-mib`` MiB objects from 4
threads, then GETs them all back, and reports the CPU-seconds the weed process (with its
children) used for each phase, per GiB, next to the client's own CPU. On a machine where
the benchmark client and SeaweedFS share the cores, ``weed CPU-s / cores`` is a lower
bound on the wall time of moving that many bytes through it, whatever the client does.

    .venv/bin/python bench/s3_floor.py [--mib 740] [--object-mib 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import own_cpu, proc_cpu

from tests.support.servers import SeaweedS3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--mib", type=int, default=740, help="bytes to move (default: Amber's stored node)"
    )
    ap.add_argument("--object-mib", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    size = args.object_mib * 1024 * 1024
    count = max(1, args.mib // args.object_mib)
    body = os.urandom(size)
    out: dict[str, object] = {"objects": count, "object_bytes": size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="amber-s3floor-") as tmp:
        weed = SeaweedS3(Path(tmp)).start()
        try:
            client = weed.client()
            client.create_bucket(Bucket="floor")
            pid = weed.pid
            assert pid is not None
            phases = {
                "put": lambda i: client.put_object(Bucket="floor", Key=f"o{i}", Body=body),
                "get": lambda i: client.get_object(Bucket="floor", Key=f"o{i}")["Body"].read(),
            }
            for name, fn in phases.items():
                w0, c0, t0 = proc_cpu(pid), own_cpu(), time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(fn, range(count)))
                wall = time.perf_counter() - t0
                gib = count * size / 2**30
                out[name] = {
                    "wall_s": round(wall, 2),
                    "weed_cpu_s": round(proc_cpu(pid) - w0, 2),
                    "client_cpu_s": round(own_cpu() - c0, 2),
                    "weed_cpu_s_per_gib": round((proc_cpu(pid) - w0) / gib, 2),
                    "mib_s": round(count * size / 2**20 / wall),
                }
        finally:
            weed.stop()
    if args.json:
        print(json.dumps(out, indent=2))
    for name in ("put", "get"):
        r = out[name]
        assert isinstance(r, dict)
        print(
            f"{name}: {count} x {args.object_mib} MiB in {r['wall_s']} s ({r['mib_s']} MiB/s); "
            f"weed {r['weed_cpu_s']} CPU-s ({r['weed_cpu_s_per_gib']} per GiB), "
            f"client {r['client_cpu_s']} CPU-s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
