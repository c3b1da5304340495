"""Adopting the hub's checkpoints never splices a forked history into the journal."""

from __future__ import annotations

import os
from pathlib import Path

from amber.agent.journal import Journal
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import Checkpoint, encode_checkpoint, record_id


def _cp(keys: VaultKeys, signer: SigningKey, seq: int, prev: bytes | None):  # type: ignore[no-untyped-def]
    cp = Checkpoint(vault="v", node="n", seq=seq, prev=prev, time_us=seq + 1, manifests={})
    data = encode_checkpoint(cp, keys, signer)
    return record_id(data), data, cp


async def test_adopt_follows_the_chain_and_refuses_forks(tmp_path: Path) -> None:
    keys, signer = VaultKeys.generate(), SigningKey.generate()
    journal = await Journal.open(tmp_path / "j.db", keys, vault="v", node="n", create=True)
    try:
        a = _cp(keys, signer, 0, None)
        b = _cp(keys, signer, 1, a[0])
        fork = _cp(keys, signer, 2, os.urandom(32))  # names a seq 1 this journal never had
        assert await journal.adopt([fork, b, a]) == 2
        assert [r.id for r in await journal.checkpoints()] == [a[0], b[0]]
        c = _cp(keys, signer, 2, b[0])
        assert await journal.adopt([c]) == 1
        assert [r.seq for r in await journal.checkpoints()] == [0, 1, 2]
    finally:
        await journal.close()
