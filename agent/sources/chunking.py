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


def cdc_seed(keys: VaultKeys) -> int:
    """The vault's FastCDC gear-table seed (31 bits, never 0)."""
    return (int.from_bytes(derive_subkey(keys.master, b"cdc-seed")[:4], "big") >> 1) | 1


def make_cdc(keys: VaultKeys, params: CdcParams) -> FastCDC:
    return FastCDC(
        avg_size=params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        seed=cdc_seed(keys),
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
