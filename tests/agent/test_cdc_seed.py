"""The FastCDC seed: unchanged for existing vaults, 63 bits available."""

from __future__ import annotations

import blake3
import pytest
from pyfastcdc import FastCDC

from amber.agent.sources import chunking
from amber.protocol.keys import VaultKeys, derive_subkey

KEYS = VaultKeys.from_master(bytes(range(32)))
DATA = blake3.blake3(b"cdc seed").digest(1 << 20)


def cuts(seed_version: int) -> list[int]:
    cdc = chunking.make_cdc(KEYS, chunking.FILES_CDC, seed_version)
    return [c.length for c in cdc.cut_buf(DATA)]


def test_version_1_is_the_seed_every_vault_has_used() -> None:
    """Boundaries of existing vaults must not move: the formula of D2, verbatim."""
    old = (int.from_bytes(derive_subkey(KEYS.master, b"cdc-seed")[:4], "big") >> 1) | 1
    assert chunking.cdc_seed(KEYS) == chunking.cdc_seed(KEYS, 1) == old
    assert chunking.CDC_SEED_DEFAULT == 1


def test_version_2_uses_the_63_bits_pyfastcdc_takes() -> None:
    seed = chunking.cdc_seed(KEYS, 2)
    assert seed & 1 and 0 < seed <= chunking.MAX_CDC_SEED
    assert seed >> 32 != 0  # more than the 31 bits of version 1
    assert cuts(2) != cuts(1) and sum(cuts(2)) == len(DATA)
    FastCDC(avg_size=65536, seed=chunking.MAX_CDC_SEED)
    with pytest.raises(OverflowError):
        FastCDC(avg_size=65536, seed=chunking.MAX_CDC_SEED + 1)
    with pytest.raises(ValueError, match="seed version 3"):
        chunking.cdc_seed(KEYS, 3)
