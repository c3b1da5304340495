"""The journal's ``vouches`` table (docs/FORMAT.md §14): written with every checkpoint
the node commits or adopts, and filled from the index when a version 2 journal opens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from amber.agent.journal import Journal
from amber.agent.vouches import LINK, MIGRATED, SELF, Vouch, signer_label, vouches
from amber.protocol.keys import SigningKey, VaultKeys
from amber.protocol.records import Checkpoint, encode_checkpoint, record_id

KEYS = VaultKeys.generate()


def _cp(signer: SigningKey, seq: int, prev: bytes | None):  # type: ignore[no-untyped-def]
    cp = Checkpoint(vault="v", node="n", seq=seq, prev=prev, time_us=seq + 1, manifests={})
    data = encode_checkpoint(cp, KEYS, signer)
    return record_id(data), data, cp


async def test_a_version_2_journal_is_migrated_with_each_checkpoints_signer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    old_device, own = SigningKey.generate(), SigningKey.generate()
    a = _cp(old_device, 0, None)
    async with await Journal.open(path, KEYS, vault="v", node="n", create=True) as j:
        await j.adopt([a])
    con = sqlite3.connect(path)  # back to version 2: no vouches table
    con.execute("DROP TABLE vouches")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    con.commit()
    con.close()
    async with await Journal.open(path, KEYS, vault="v", node="n") as j:
        got = await vouches(j.query)
        b = _cp(old_device, 1, a[0])
        await j.adopt([b])
        assert await vouches(j.query, [b[0]]) == {b[0]: Vouch(old_device.public, LINK, b"")}
    assert got == {a[0]: Vouch(old_device.public, MIGRATED, b"")}
    assert signer_label(got[a[0]], own.public) == old_device.public.hex()[:16]
    assert signer_label(got[a[0]], old_device.public) == SELF
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'version'").fetchall() == [("3",)]
    con.close()
