"""Throughput of the chunk pipeline's primitives on model-like data.

Measures, on ``--size-mib`` MiB (default 256) of deterministic model-like data held
in memory (see ``datagen.py``):

(a) each stage alone, on one thread: FastCDC chunking (pyfastcdc, 1 MiB average by
    default; ``--avg-kib 256`` matches the agent's model sources), the chunk id (keyed
    BLAKE3), the compressibility sample ``encode_chunk`` takes before compressing,
    zstd level 1 and 3 of every chunk, AES-256-GCM of every chunk;
(b) the whole per-chunk pipeline ``amber.protocol.chunk.encode_chunk``
    (id -> zstd? -> AES-GCM) over pre-cut chunks on one thread and on thread pools of
    2 and 4 workers, then end to end (FastCDC in the calling thread feeding the pool);
(c) what the pipeline stores: the blob/plaintext ratio and the fraction of chunks
    (and bytes) stored raw because compression would save too little.

Every figure is the best of ``--runs`` (default 3) timed with ``time.perf_counter``.
The runs are interleaved (round 1 of every stage, then round 2, ...) so that a burst
of activity from other processes spoils one round of a few stages rather than every
round of one stage. MiB/s are plaintext MiB per second of wall time; "CPU s" is the
CPU time this process used during that best run (CPU s / best s = cores kept busy).
On Linux the bench also reports how much CPU other processes took while it ran,
so a noisy result can be recognised. No disk or network is involved.

    .venv/bin/python bench/primitives.py                 # 256 MiB of bf16-like weights
    .venv/bin/python bench/primitives.py --quick         # 32 MiB
    .venv/bin/python bench/primitives.py --dtype fp32 --json > primitives.json

With ``--json`` the table goes to stderr and one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from datagen import DTYPES, model_like_bytes
from harness import machine_cpu, own_cpu

try:
    import blake3
    import pyfastcdc
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from amber.protocol import chunk as amber_chunk
    from amber.protocol.keys import VaultKeys
except ImportError as exc:  # pragma: no cover - environment problem, not a bench result
    sys.exit(
        f"primitives.py: cannot import {exc.name!r}. Run it with the project's venv "
        "(`make bench`, or `.venv/bin/python bench/primitives.py` once `make test` "
        "has created .venv)."
    )

MiB = 1024 * 1024
KiB = 1024
SEED = "primitives"
# a fixed, public vault key: the bench must be reproducible, and nothing is secret here
BENCH_KEY = bytes(range(32))


@dataclass
class Stage:
    """One timed row of the table."""

    section: str
    name: str
    fn: Callable[[bool], Any]  # fn(keep): keep=True only in the first round
    threads: int = 1
    # called once, outside the timing, with the first run's result; returns extra fields
    inspect: Callable[[Any], dict[str, Any]] | None = None
    best: float = float("inf")
    cpu: float = 0.0
    extra: dict[str, Any] | None = None


def cut(data: bytes, avg: int) -> list[memoryview]:
    """FastCDC with pyfastcdc's defaults around ``avg``: min avg/4, max 4 avg."""
    cdc = pyfastcdc.FastCDC(avg_size=avg)
    return [c.data for c in cdc.cut_buf(data)]


# Outputs are dropped as they are made (only their sizes are kept) except in the first
# round, whose blobs are checked: an agent hands each blob to its journal and frees it,
# whereas keeping 256 MiB of fresh blobs would make the bench time page faults.


def encode_serial(
    keys: VaultKeys, chunks: Iterable[memoryview], level: int, keep: bool
) -> list[bytes] | list[int]:
    if keep:
        return [amber_chunk.encode_chunk(keys, c, level=level)[1] for c in chunks]
    return [len(amber_chunk.encode_chunk(keys, c, level=level)[1]) for c in chunks]


def encode_pool(
    pool: cf.ThreadPoolExecutor, keys: VaultKeys, chunks: list[memoryview], level: int, keep: bool
) -> list[bytes] | list[int]:
    def one(c: memoryview) -> bytes | int:
        blob = amber_chunk.encode_chunk(keys, c, level=level)[1]
        return blob if keep else len(blob)

    return list(pool.map(one, chunks))


def end_to_end(
    pool: cf.ThreadPoolExecutor | None,
    workers: int,
    keys: VaultKeys,
    data: bytes,
    avg: int,
    level: int,
    keep: bool,
) -> list[bytes] | list[int]:
    """Chunk in this thread while a pool encodes, at most 2 chunks in flight per worker
    (the way a streaming agent bounds its memory)."""
    cdc = pyfastcdc.FastCDC(avg_size=avg)
    out: list[Any] = []
    if pool is None:
        for c in cdc.cut_buf(data):
            blob = amber_chunk.encode_chunk(keys, c.data, level=level)[1]
            out.append(blob if keep else len(blob))
        return out
    window: deque[cf.Future[tuple[bytes, bytes]]] = deque()
    for c in cdc.cut_buf(data):
        if len(window) >= 2 * workers:
            blob = window.popleft().result()[1]
            out.append(blob if keep else len(blob))
        window.append(pool.submit(amber_chunk.encode_chunk, keys, c.data, level=level))
    for f in window:
        blob = f.result()[1]
        out.append(blob if keep else len(blob))
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("pyfastcdc", "blake3", "zstandard", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="data size in MiB (default 256)")
    p.add_argument("--quick", action="store_true", help="32 MiB instead (smoke test)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="data (default bf16)")
    p.add_argument("--runs", type=int, default=3, help="best of N runs (default 3)")
    p.add_argument(
        "--level",
        type=int,
        default=amber_chunk.DEFAULT_LEVEL,
        help=f"zstd level for the pipeline (default {amber_chunk.DEFAULT_LEVEL}, as the agent)",
    )
    p.add_argument(
        "--avg-kib",
        type=int,
        default=1024,
        help="FastCDC average chunk size in KiB (default 1024; min is a quarter, max 4x)",
    )
    p.add_argument("--threads", default="2,4", help="pool sizes to try (default 2,4)")
    p.add_argument("--json", action="store_true", help="JSON to stdout, table to stderr")
    args = p.parse_args(argv)
    size = (32 if args.quick else args.size_mib) * MiB
    try:
        pool_sizes = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError:
        p.error(f"--threads takes comma-separated integers, not {args.threads!r}")
    if size <= 0 or args.runs <= 0 or any(t < 1 for t in pool_sizes):
        p.error("--size-mib, --runs and --threads must be positive")
    if not 1 <= args.avg_kib <= 4096:
        p.error("--avg-kib must be within 1..4096 (pyfastcdc's limits)")
    avg = args.avg_kib * KiB
    avg_label = f"{avg // MiB} MiB" if avg % MiB == 0 else f"{args.avg_kib} KiB"
    out = sys.stderr if args.json else sys.stdout
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    t0 = time.perf_counter()
    data = model_like_bytes(size, SEED, args.dtype)
    gen_s = time.perf_counter() - t0
    keys = VaultKeys.from_master(BENCH_KEY)
    chunks = cut(data, avg)
    n = len(chunks)
    print(
        f"Amber chunk primitives: {size / MiB:.0f} MiB of {args.dtype}-like data "
        f"(generated in {gen_s:.1f} s), {n} chunks of {size / n / MiB:.2f} MiB mean, "
        f"{cpus} CPUs usable, best of {args.runs}, Python {platform.python_version()}",
        file=out,
    )

    # --- the stages -----------------------------------------------------------------
    a = "(a) stages alone, one thread"
    b = f"(b) encode_chunk pipeline (id -> zstd-{args.level}? -> AES-GCM)"
    stages: list[Stage] = [
        Stage(a, f"FastCDC cut_buf (avg {avg_label})", lambda keep: cut(data, avg)),
        Stage(
            a,
            "chunk id (keyed BLAKE3)",
            lambda keep: [amber_chunk.chunk_id(keys, c) for c in chunks],
        ),
    ]
    sampler = getattr(amber_chunk, "_worth_compressing", None)
    if sampler is not None:  # a private helper: measured as long as it exists

        def verdicts(res: list[bool]) -> dict[str, Any]:
            return {"sample_says_compress": sum(res), "note": f"compress {sum(res)}/{n} chunks"}

        stages.append(
            Stage(
                a,
                "compressibility sample (16 KiB, zstd-1)",
                lambda keep: [sampler(c) for c in chunks],
                inspect=verdicts,
            )
        )
    for level in (1, 3):
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)

        def ratio(res: list[int]) -> dict[str, Any]:
            r = sum(res) / size
            return {"ratio": round(r, 4), "note": f"ratio {r:.3f}"}

        stages.append(
            Stage(
                a,
                f"zstd level {level} (every chunk)",
                lambda keep, cctx=cctx: [len(cctx.compress(c)) for c in chunks],
                inspect=ratio,
            )
        )
    aead = AESGCM(keys.chunk_enc)
    nonce, aad = bytes(12), bytes(44)
    stages.append(
        Stage(
            a,
            "AES-256-GCM encrypt",
            lambda keep: [len(aead.encrypt(nonce, c, aad)) for c in chunks],
        )
    )

    digests: dict[str, str] = {}
    stored: dict[str, Any] = {}

    def pipeline_check(label: str, keep: bool = False) -> Callable[[list[bytes]], dict[str, Any]]:
        def check(blobs: list[bytes]) -> dict[str, Any]:
            h = blake3.blake3()
            for blob in blobs:
                h.update(blob)
            digests[label] = h.hexdigest()
            if keep:
                raw = [x for x in blobs if not x[5] & amber_chunk.FLAG_ZSTD]
                overhead = (
                    amber_chunk.HEADER_SIZES[amber_chunk.CHUNK_VERSION] + amber_chunk.TAG_SIZE
                )
                stored.update(
                    stored_bytes=sum(len(x) for x in blobs),
                    raw_chunks=len(raw),
                    raw_bytes=sum(len(x) - overhead for x in raw),
                )
            return {}

        return check

    pools = {w: cf.ThreadPoolExecutor(max_workers=w) for w in pool_sizes}
    lvl = args.level
    stages.append(
        Stage(
            b,
            "encode_chunk, pre-cut chunks",
            lambda keep: encode_serial(keys, chunks, lvl, keep),
            inspect=pipeline_check("serial", keep=True),
        )
    )
    for w, pool in pools.items():
        stages.append(
            Stage(
                b,
                "encode_chunk, pre-cut chunks",
                lambda keep, pool=pool: encode_pool(pool, keys, chunks, lvl, keep),
                threads=w,
                inspect=pipeline_check(f"pool{w}"),
            )
        )
    stages.append(
        Stage(
            b,
            "FastCDC + encode_chunk (end to end)",
            lambda keep: end_to_end(None, 1, keys, data, avg, lvl, keep),
            inspect=pipeline_check("e2e1"),
        )
    )
    for w, pool in pools.items():
        stages.append(
            Stage(
                b,
                "FastCDC + encode_chunk (end to end)",
                lambda keep, pool=pool, w=w: end_to_end(pool, w, keys, data, avg, lvl, keep),
                threads=w,
                inspect=pipeline_check(f"e2e{w}"),
            )
        )

    # --- interleaved rounds -----------------------------------------------------------
    started = time.perf_counter()
    busy0, cpu0 = machine_cpu(), own_cpu()
    try:
        for r in range(args.runs):
            print(f"round {r + 1}/{args.runs} ...", file=out, flush=True)
            for st in stages:
                c0, w0 = own_cpu(), time.perf_counter()
                res = st.fn(r == 0)
                wall, cpu = time.perf_counter() - w0, own_cpu() - c0
                if wall < st.best:
                    st.best, st.cpu = wall, cpu
                if r == 0:
                    st.extra = st.inspect(res) if st.inspect else {}
                del res
    finally:
        for pool in pools.values():
            pool.shutdown()
    elapsed = time.perf_counter() - started
    busy1, ours = machine_cpu(), own_cpu() - cpu0
    others = steal = None
    if busy0 and busy1:
        others = max(0.0, busy1[0] - busy0[0] - ours)
        steal = busy1[1] - busy0[1]

    # --- report -------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    section = ""
    for st in stages:
        if st.section != section:
            section = st.section
            print(f"\n{section}", file=out)
            print(
                f"  {'stage':<44} {'threads':>7} {'best s':>7} {'MiB/s':>7} {'CPU s':>6}",
                file=out,
            )
        extra = dict(st.extra or {})
        note = extra.pop("note", "")
        mibs = size / MiB / st.best
        print(
            f"  {st.name:<44} {st.threads:>7} {st.best:>7.3f} {mibs:>7.0f} {st.cpu:>6.2f}"
            + (f"  {note}" if note else ""),
            file=out,
        )
        rows.append(
            {
                "section": section,
                "stage": st.name,
                "threads": st.threads,
                "best_seconds": round(st.best, 4),
                "mib_per_s": round(mibs, 1),
                "cpu_seconds": round(st.cpu, 3),
                **extra,
            }
        )

    same = len(set(digests.values())) == 1
    stored_ratio = stored["stored_bytes"] / size
    print("\n(c) stored by encode_chunk", file=out)
    print(
        f"  blobs/plaintext {stored_ratio:.4f} ({stored['stored_bytes'] / MiB:.1f} of "
        f"{size / MiB:.0f} MiB); chunks stored raw {stored['raw_chunks']}/{n} "
        f"({stored['raw_chunks'] / n:.1%}), bytes stored raw {stored['raw_bytes'] / size:.1%}",
        file=out,
    )
    print(
        f"  blobs identical whatever the thread count: {'yes' if same else 'NO (bug!)'}",
        file=out,
    )
    load = ""
    if others is not None and steal is not None:
        load = (
            f"; other processes used {others:.1f} CPU-s meanwhile "
            f"({others / elapsed / (cpus or 1):.0%} of the machine), steal {steal:.1f} s"
        )
    print(f"\nmeasured in {elapsed:.0f} s, this process {ours:.1f} CPU-s{load}", file=out)

    if args.json:
        doc = {
            "bench": "primitives",
            "date": datetime.date.today().isoformat(),
            "dtype": args.dtype,
            "size_bytes": size,
            "runs": args.runs,
            "pipeline_zstd_level": args.level,
            "cpus": cpus,
            "machine": platform.machine(),
            "versions": versions(),
            "cdc_avg_size": avg,
            "chunks": n,
            "mean_chunk_bytes": size // n,
            "stored_ratio": round(stored_ratio, 4),
            "raw_chunk_fraction": round(stored["raw_chunks"] / n, 4),
            "raw_byte_fraction": round(stored["raw_bytes"] / size, 4),
            "blobs_identical_across_threads": same,
            "rows": rows,
            "bench_seconds": round(elapsed, 1),
            "own_cpu_seconds": round(ours, 1),
            "other_processes_cpu_seconds": None if others is None else round(others, 1),
            "steal_seconds": None if steal is None else round(steal, 1),
        }
        json.dump(doc, sys.stdout, indent=2)
        print()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
