"""Cutting files into chunk plaintexts, streamed in bounded memory.

Two ways: content-defined (FastCDC, for files, models and log tails), whose gear
table is seeded from the vault key so chunk boundaries do not reveal content
across vaults; and fixed page-aligned blocks (for SQLite copies), so that changed
pages map to changed blocks. Iterators here run in a worker thread, never on the
event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

from amber.protocol.keys import VaultKeys, derive_subkey

KiB = 1024
READ_SIZE = 1024 * KiB


@dataclass(frozen=True)
class CdcParams:
    min_size: int
    avg_size: int
    max_size: int


FILES_CDC = CdcParams(min_size=16 * KiB, avg_size=64 * KiB, max_size=256 * KiB)
MODEL_CDC = CdcParams(min_size=64 * KiB, avg_size=256 * KiB, max_size=1024 * KiB)
SQLITE_BLOCK = 64 * KiB


# How a vault's seed is derived (docs/DECISIONS.md D2, D35). Boundaries depend on it, so
# it is part of a vault's format: 1 is what every vault uses; 2 is the most pyfastcdc
# takes, for a vault-wide setting that does not exist yet (changing it re-chunks everything).
CDC_SEED_V1, CDC_SEED_V2 = 1, 2
CDC_SEED_DEFAULT = CDC_SEED_V1
MAX_CDC_SEED = 2**63 - 1  # pyfastcdc computes ``seed << 1`` in 64 bits: 63 bits at most


def cdc_seed(keys: VaultKeys, version: int = CDC_SEED_DEFAULT) -> int:
    """The vault's FastCDC gear-table seed, odd and never 0: version 1 has 31 bits of
    ``subkey("cdc-seed")``, version 2 has 63 (pyfastcdc XORs the seed into every gear
    table entry, its only key material)."""
    raw = int.from_bytes(derive_subkey(keys.master, b"cdc-seed")[:8], "big")
    if version == CDC_SEED_V1:
        return (raw >> 33) | 1  # the first 4 bytes, shifted right by one
    if version == CDC_SEED_V2:
        return (raw >> 1) | 1
    raise ValueError(f"unknown FastCDC seed version {version}")


def make_cdc(keys: VaultKeys, params: CdcParams, seed_version: int = CDC_SEED_DEFAULT) -> FastCDC:
    return FastCDC(
        avg_size=params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        seed=cdc_seed(keys, seed_version),
    )


def cdc_pieces(stream: BinaryIO, cdc: FastCDC) -> Iterator[bytes]:
    """Content-defined chunks of ``stream`` from its current position to EOF."""
    for chunk in cdc.cut_stream(stream):
        yield bytes(chunk.data)  # the chunker reuses its buffer: copy before the next cut


def block_pieces(stream: BinaryIO, block_size: int) -> Iterator[bytes]:
    """Fixed-size blocks of ``stream`` (the last one may be short)."""
    while True:
        block = stream.read(block_size)
        if not block:
            return
        yield block


def aligned_block_size(page_size: int, target: int = SQLITE_BLOCK) -> int:
    """A block size that is a whole number of pages, close to ``target``."""
    if page_size <= 0:
        return target
    return max(page_size, (target // page_size) * page_size)
