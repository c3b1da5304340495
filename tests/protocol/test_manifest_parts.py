"""Record version 2: a manifest too large for one message as a head and its parts.

Round trips at several part sizes, the choice between version 1 and 2, the bytes of a
part's sealed map, and what a key-less party (the hub) can do to the parts: substitute,
drop, reorder, replay another manifest's part or re-sign one with another key.
"""

from __future__ import annotations

import pytest

from amber.protocol import codec, keys, records
from amber.protocol.errors import FormatError, IntegrityError
from amber.protocol.records import Entry, Manifest

VAULT = keys.VaultKeys.from_master(bytes(range(32)))
NODE_KEY = keys.SigningKey(bytes(range(64, 96)))
OTHER_KEY = keys.SigningKey(bytes(range(96, 128)))


def dataset(n: int, source: str = "data") -> Manifest:
    entries = tuple(
        Entry(
            path=f"d/{i:06d}.bin",
            size=10,
            digest=bytes([i % 256]) * 32,
            chunks=((i.to_bytes(32, "big"), 10),),
        )
        for i in range(n)
    )
    return Manifest("v", "n", source, "files", "warm", 1, entries, {"k": 1}, {"ds": "2"})


def encode(m: Manifest, part_target: int = 2000) -> list[bytes]:
    return records.encode_manifest_records(
        m, VAULT, NODE_KEY, inline_limit=1000, part_target=part_target
    )


@pytest.mark.parametrize("target", [1, 500, 2000, 10**9])
def test_round_trip_at_any_part_size(target: int) -> None:
    m = dataset(300)
    head, *parts = encode(m, target)
    assert len(parts) >= 1 and records.parse(head).version == 2
    assert records.decode_manifest(head, VAULT, trusted=NODE_KEY.public, parts=parts) == m
    assert records.manifest_chunk_ids(head, parts) == m.chunk_ids()
    pub = records.manifest_public(head)
    assert (pub["nchunks"], pub["size"], "chunks" in pub) == (300, 3000, False)
    assert encode(m, target) == [head, *parts]  # deterministic


def test_small_manifests_stay_version_1() -> None:
    m = dataset(3)
    (only,) = records.encode_manifest_records(m, VAULT, NODE_KEY)
    assert only == records.encode_manifest(m, VAULT, NODE_KEY)
    assert records.manifest_part_ids(only) == []


def test_a_part_seals_the_same_map_msgpack_would() -> None:
    m = dataset(40)
    _, *parts = encode(m, 10**9)
    raw = records.parse(parts[0])
    sealed = records.unseal(raw, VAULT)
    assert codec.pack(sealed) == codec.pack({"entries": [e.to_obj() for e in m.entries]})


def test_a_head_refuses_substituted_dropped_or_reordered_parts() -> None:
    head, *parts = encode(dataset(300), 500)
    _, *other = encode(dataset(300, source="other"), 500)
    assert len(parts) >= 3
    for wrong in (parts[::-1], parts[:-1], [*parts, parts[0]], [other[0], *parts[1:]]):
        with pytest.raises(IntegrityError):
            records.decode_manifest(head, VAULT, parts=wrong)
        with pytest.raises(IntegrityError):
            records.manifest_chunk_ids(head, wrong)
    with pytest.raises(IntegrityError):
        records.decode_manifest(head, VAULT)  # parts withheld


def test_a_part_re_signed_by_another_key_does_not_fit_the_head() -> None:
    head, *parts = encode(dataset(300), 500)
    body = parts[0][: -records.SIG_SIZE - records.PUB_SIZE] + OTHER_KEY.public
    resigned = body + OTHER_KEY.sign(body)
    with pytest.raises(IntegrityError):  # its id changed: the signed head names the old one
        records.decode_manifest(head, VAULT, parts=[resigned, *parts[1:]])


def test_a_version_1_manifest_takes_no_parts_and_parts_need_version_2() -> None:
    (v1,) = records.encode_manifest_records(dataset(3), VAULT, NODE_KEY)
    _, *parts = encode(dataset(300), 500)
    with pytest.raises(FormatError):
        records.decode_manifest(v1, VAULT, parts=parts[:1])
    v1_part = parts[0][:4] + b"\1" + parts[0][5 : -records.SIG_SIZE]
    with pytest.raises(FormatError):  # kind 3 does not exist in version 1
        records.parse(v1_part + NODE_KEY.sign(v1_part))
    with pytest.raises(FormatError):
        records.decode_manifest(parts[0], VAULT)  # a part is not a manifest


def test_parts_read_one_at_a_time_are_checked_against_the_head() -> None:
    m = dataset(300)
    head, *parts = encode(m, 500)
    got = [e for i, p in enumerate(parts) for e in records.part_entries(head, i, p, VAULT)]
    assert tuple(got) == m.entries
    with pytest.raises(IntegrityError):
        records.part_entries(head, 0, parts[1], VAULT)  # another position
    with pytest.raises(IntegrityError):
        records.part_entries(head, len(parts), parts[0], VAULT)  # no such part
    (v1,) = records.encode_manifest_records(dataset(3), VAULT, NODE_KEY)
    with pytest.raises(FormatError):
        records.part_entries(v1, 0, parts[0], VAULT)
