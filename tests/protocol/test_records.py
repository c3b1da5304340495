"""Signed, encrypted records (AMBR): manifests, checkpoints and their hash chain."""

from __future__ import annotations

import dataclasses
import itertools
import struct

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.protocol import codec, keys, records, wire
from amber.protocol.errors import (
    AmberError,
    ChainError,
    FormatError,
    IntegrityError,
    SignatureError,
    UnknownVersionError,
)
from amber.protocol.records import Checkpoint, Entry, Manifest
from tests.support.checks import flip, raises

VAULT = keys.VaultKeys.from_master(bytes(range(32)))
OTHER_VAULT = keys.VaultKeys.from_master(bytes(range(1, 33)))
NODE_KEY = keys.SigningKey(bytes(range(64, 96)))
OTHER_NODE_KEY = keys.SigningKey(bytes(range(96, 128)))
IDS = [blake3.blake3(bytes([i])).digest() for i in range(6)]

# --- strategies --------------------------------------------------------------------------

ids = st.sampled_from(IDS) | st.binary(min_size=32, max_size=32)
texts = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\0"
)  # decoders refuse NUL in strings
names = st.text(texts, max_size=12)
record_names = st.from_regex(wire.NAME_RE, fullmatch=True)  # vault, node and source names
component = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=8
).filter(lambda c: c not in (".", ".."))
entry_paths = st.lists(component, min_size=1, max_size=3).map("/".join)
int64 = st.integers(-(2**63), 2**63 - 1)
times_us = st.integers(0, codec.MAX_TIME_US)
uint32 = st.integers(0, 2**32 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | names | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def entries(draw) -> Entry:
    kind = draw(st.sampled_from(records.ENTRY_TYPES))
    chunks = tuple(draw(st.lists(st.tuples(ids, uint32), max_size=4))) if kind == "f" else ()
    size = sum(n for _, n in chunks) if kind == "f" else draw(uint32)
    return Entry(
        path=draw(entry_paths),
        type=kind,
        mode=draw(st.integers(0, records.MAX_MODE)),
        size=size,
        mtime_ns=draw(int64),
        digest=draw(st.none() | st.binary(max_size=64)),
        chunks=chunks,
        target=draw(names.filter(lambda t: "\0" not in t)) if kind == "l" else "",
    )


manifests = st.builds(
    Manifest,
    vault=record_names,
    node=record_names,
    source=record_names,
    kind=st.sampled_from(records.SOURCE_KINDS),
    tier=st.sampled_from(records.TIERS),
    time_us=times_us,
    entries=st.lists(entries(), max_size=4).map(tuple),
    meta=st.dictionaries(names, json_values, max_size=3),
    lineage=st.dictionaries(names, names, max_size=3),
    parent=st.none() | ids,
)

checkpoints = st.builds(
    Checkpoint,
    vault=record_names,
    node=record_names,
    seq=st.integers(0, 2**40),
    prev=st.none(),
    time_us=times_us,
    manifests=st.dictionaries(record_names, ids, max_size=4),
    labels=st.dictionaries(names, names, max_size=3),
    kind=st.sampled_from(records.CHECKPOINT_KINDS),
    note=st.text(texts, max_size=30),
).map(lambda cp: dataclasses.replace(cp, prev=None if cp.seq == 0 else IDS[cp.seq % 6]))

SMALL_MANIFEST = Manifest(
    vault="v",
    node="edge-01",
    source="memory",
    kind="sqlite",
    tier="hot",
    time_us=1_717_200_000_000_000,
    entries=(
        Entry(path="db", size=7, chunks=((IDS[1], 3), (IDS[0], 4)), digest=b"d" * 32),
        Entry(path="dir", type="d", mode=0o755),
    ),
    meta={"page_size": 4096},
    lineage={"model_version": "m1"},
)
SEQ0 = Checkpoint(
    vault="v", node="edge-01", seq=0, prev=None, time_us=1, manifests={"memory": IDS[0]}
)


def expected_for_flip(data: bytes, bit: int) -> tuple[type[AmberError], ...]:
    """The error a record with this bit flipped must raise, by field."""
    byte = bit // 8
    (pub_len,) = struct.unpack(">I", data[8:12])
    ct_len_at = 12 + pub_len + 12
    if byte < 4 or 5 <= byte < 8:
        return (FormatError,)  # magic, kind, flags
    if byte == 4:
        return (UnknownVersionError,)
    if 8 <= byte < 12 or ct_len_at <= byte < ct_len_at + 4:
        return (FormatError, SignatureError)  # a length: framing, or by chance the signature
    return (SignatureError,)  # public part, nonce, ciphertext, signer, signature


def decode_any(data: bytes, kind: int | None = None):
    """Decode as the kind the record was written as (default: what its header says)."""
    if (data[5] if kind is None else kind) == records.KIND_MANIFEST:
        return records.decode_manifest(data, VAULT)
    return records.decode_checkpoint(data, VAULT)


# --- round trips, determinism, layout -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(m=manifests)
def test_manifest_round_trip_and_determinism(m: Manifest) -> None:
    data = records.encode_manifest(m, VAULT, NODE_KEY)
    assert data == records.encode_manifest(m, VAULT, NODE_KEY)
    got = records.decode_manifest(data, VAULT, trusted=NODE_KEY.public)
    assert got == m
    assert records.encode_manifest(got, VAULT, NODE_KEY) == data
    public = records.manifest_public(data)
    assert public == m.public()
    assert public["chunks"] == sorted(set(public["chunks"]))
    assert public["size"] == sum(e.size for e in m.entries)


@settings(max_examples=60, deadline=None)
@given(cp=checkpoints)
def test_checkpoint_round_trip_and_determinism(cp: Checkpoint) -> None:
    data = records.encode_checkpoint(cp, VAULT, NODE_KEY)
    assert data == records.encode_checkpoint(cp, VAULT, NODE_KEY)
    got = records.decode_checkpoint(data, VAULT, trusted={NODE_KEY.public})
    assert got == cp
    assert records.encode_checkpoint(got, VAULT, NODE_KEY) == data
    assert records.checkpoint_public(data) == dataclasses.replace(cp, note="")
    reordered = dataclasses.replace(
        cp,
        manifests=dict(reversed(cp.manifests.items())),
        labels=dict(reversed(cp.labels.items())),
    )
    assert records.encode_checkpoint(reordered, VAULT, NODE_KEY) == data


@settings(max_examples=40, deadline=None)
@given(m=manifests)
def test_record_layout(m: Manifest) -> None:
    data = records.encode_manifest(m, VAULT, NODE_KEY)
    magic, version, kind, flags, pub_len = struct.unpack(">4sBBHI", data[:12])
    assert (magic, version, kind, flags) == (b"AMBR", 1, records.KIND_MANIFEST, 0)
    public = data[12 : 12 + pub_len]
    assert public == codec.pack(m.public())
    nonce = data[12 + pub_len : 24 + pub_len]
    (ct_len,) = struct.unpack(">I", data[24 + pub_len : 28 + pub_len])
    ct = data[28 + pub_len : 28 + pub_len + ct_len]
    signer, sig = data[28 + pub_len + ct_len : -64], data[-64:]
    assert signer == NODE_KEY.public and len(data) == 28 + pub_len + ct_len + 32 + 64
    plain = codec.pack(m.sealed())
    assert nonce == blake3.blake3(data[: 12 + pub_len] + plain, key=VAULT.meta_nonce).digest(12)
    assert AESGCM(VAULT.meta_enc).decrypt(nonce, ct, data[: 12 + pub_len]) == plain
    Ed25519PublicKey.from_public_bytes(signer).verify(sig, data[:-64])
    raw = records.parse(data)
    assert raw.id == records.record_id(data) == blake3.blake3(data).digest()
    assert (raw.kind, raw.signer, raw.nonce, raw.ciphertext) == (kind, signer, nonce, ct)


def test_equal_content_under_another_vault_or_node_gives_another_record() -> None:
    a = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    b = records.encode_manifest(SMALL_MANIFEST, OTHER_VAULT, NODE_KEY)
    c = records.encode_manifest(SMALL_MANIFEST, VAULT, OTHER_NODE_KEY)
    assert len({a, b, c}) == 3
    assert a[:-96] == c[:-96]  # the node key signs; it does not enter the sealed part


# --- damage --------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["manifest", "checkpoint"])
def test_every_bit_flip_is_refused(what: str) -> None:
    if what == "manifest":
        data = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    else:
        data = records.encode_checkpoint(SEQ0, VAULT, NODE_KEY)
    for bit in range(len(data) * 8):
        with pytest.raises(AmberError) as info:
            decode_any(flip(data, bit), kind=data[5])
        assert type(info.value) in expected_for_flip(data, bit), (bit, info.value)


@settings(max_examples=150, deadline=None)
@given(m=manifests, cp=checkpoints, data=st.data())
def test_random_bit_flip_is_refused(m: Manifest, cp: Checkpoint, data) -> None:
    for record in (
        records.encode_manifest(m, VAULT, NODE_KEY),
        records.encode_checkpoint(cp, VAULT, NODE_KEY),
    ):
        bit = data.draw(st.integers(0, len(record) * 8 - 1), label="bit")
        bad = flip(record, bit)
        for decode in (
            lambda d: records.decode_manifest(d, VAULT),
            lambda d: records.decode_checkpoint(d, VAULT),
            records.checkpoint_public,
            records.manifest_public,
        ):
            with pytest.raises(FormatError):
                decode(bad)


@pytest.mark.parametrize("what", ["manifest", "checkpoint"])
def test_every_truncation_and_trailing_garbage(what: str) -> None:
    if what == "manifest":
        data = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    else:
        data = records.encode_checkpoint(SEQ0, VAULT, NODE_KEY)
    for n in range(len(data)):
        raises(FormatError, decode_any, data[:n], kind=data[5])
    for garbage in (b"\0", b"\0" * 96, data):
        raises(FormatError, decode_any, data + garbage)


def test_unknown_version_bad_magic_kind_and_flags() -> None:
    data = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    for version in set(range(256)) - {1, 2}:
        raises(UnknownVersionError, decode_any, data[:4] + bytes([version]) + data[5:])
    # the signature covers the version; re-signed, a version 1 public map is no version 2 head
    v2 = data[:4] + b"\2" + data[5 : -records.SIG_SIZE]
    raises(FormatError, decode_any, v2 + NODE_KEY.sign(v2))
    for magic in (b"AMBC", b"ambr", b"\0\0\0\0"):
        raises(FormatError, decode_any, magic + data[4:])
    for kind in (0, 3, 255):
        raises(FormatError, records.parse, data[:5] + bytes([kind]) + data[6:])
    raises(FormatError, records.parse, data[:6] + b"\0\1" + data[8:])
    raises(FormatError, records.parse, bytes(records.MAX_RECORD_SIZE + 1))


def test_a_manifest_is_not_a_checkpoint() -> None:
    m = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    cp = records.encode_checkpoint(SEQ0, VAULT, NODE_KEY)
    raises(FormatError, records.decode_checkpoint, m, VAULT)
    raises(FormatError, records.checkpoint_public, m)
    raises(FormatError, records.decode_manifest, cp, VAULT)
    raises(FormatError, records.manifest_public, cp)


def test_wrong_vault_key_is_an_integrity_error() -> None:
    m = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    cp = records.encode_checkpoint(SEQ0, VAULT, NODE_KEY)
    raises(IntegrityError, records.decode_manifest, m, OTHER_VAULT)
    raises(IntegrityError, records.decode_checkpoint, cp, OTHER_VAULT)
    assert records.checkpoint_public(cp) == SEQ0  # the hub's view needs no vault key
    assert records.manifest_public(m) == SMALL_MANIFEST.public()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_amber_errors(data: bytes) -> None:
    for candidate in (data, b"AMBR\x01\x01\x00\x00" + data, b"AMBR\x01\x02\x00\x00" + data):
        for decode in (
            lambda d: records.decode_manifest(d, VAULT),
            lambda d: records.decode_checkpoint(d, VAULT),
            records.checkpoint_public,
            records.manifest_public,
        ):
            with pytest.raises(FormatError):
                decode(candidate)


# --- signers ------------------------------------------------------------------------------


def test_untrusted_signer_is_refused() -> None:
    m = records.encode_manifest(SMALL_MANIFEST, VAULT, OTHER_NODE_KEY)
    cp = records.encode_checkpoint(SEQ0, VAULT, OTHER_NODE_KEY)
    for trusted in (NODE_KEY.public, {NODE_KEY.public}, set()):
        raises(SignatureError, records.decode_manifest, m, VAULT, trusted=trusted)
        raises(SignatureError, records.decode_checkpoint, cp, VAULT, trusted=trusted)
        raises(SignatureError, records.checkpoint_public, cp, trusted=trusted)
    both = {NODE_KEY.public, OTHER_NODE_KEY.public}
    assert records.decode_manifest(m, VAULT, trusted=both) == SMALL_MANIFEST
    assert records.decode_checkpoint(cp, VAULT, trusted=OTHER_NODE_KEY.public) == SEQ0


def test_resigned_record_is_only_caught_by_the_trusted_set() -> None:
    """The signer key is not bound into the sealed part: anyone can re-sign a record.
    That is why readers MUST pass the node's key as ``trusted``."""
    data = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    body = data[:-96] + OTHER_NODE_KEY.public
    forged = body + OTHER_NODE_KEY.sign(body)
    assert records.decode_manifest(forged, VAULT) == SMALL_MANIFEST
    raises(SignatureError, records.decode_manifest, forged, VAULT, trusted=NODE_KEY.public)
    swapped = data[:-96] + OTHER_NODE_KEY.public + data[-64:]
    raises(SignatureError, records.decode_manifest, swapped, VAULT)


# --- manifest invariants -------------------------------------------------------------------


def sealed_manifest(public_changes=None, sealed_changes=None, m: Manifest = SMALL_MANIFEST):
    public, sealed = (
        {**m.public(), **(public_changes or {})},
        {**m.sealed(), **(sealed_changes or {})},
    )
    return records.seal(records.KIND_MANIFEST, public, sealed, VAULT, NODE_KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"chunks": [IDS[0]]},
        {"chunks": [IDS[0], IDS[1], IDS[2]]},
        {"chunks": [IDS[1], IDS[0]]},
        {"chunks": [IDS[0], IDS[0], IDS[1]]},
        {"chunks": []},
        {"size": 8},
        {"size": 0},
    ],
)
def test_public_chunk_list_or_size_disagreeing_with_entries_is_refused(changes) -> None:
    data = sealed_manifest(changes)
    records.manifest_public(data)  # the hub cannot tell ...
    err = raises(IntegrityError, records.decode_manifest, data, VAULT)  # ... a key holder can
    assert "disagrees" in str(err)


@settings(max_examples=60, deadline=None)
@given(m=manifests, chunks=st.lists(ids, max_size=5))
def test_any_other_public_chunk_list_is_refused(m: Manifest, chunks: list[bytes]) -> None:
    data = sealed_manifest({"chunks": chunks}, m=m)
    if chunks == m.chunk_ids():
        assert records.decode_manifest(data, VAULT) == m
    else:
        raises(IntegrityError, records.decode_manifest, data, VAULT)


def _entry(**changes):
    return {**SMALL_MANIFEST.entries[0].to_obj(), **changes}


@pytest.mark.parametrize(
    ("public", "sealed"),
    [
        ({"kind": "tarball"}, None),
        ({"tier": "frozen"}, None),
        ({"time_us": 1.5}, None),
        ({"size": -7}, None),
        ({"parent": b"short"}, None),
        ({"chunks": [b"short"]}, None),
        ({"extra": 1}, None),
        (None, {"entries": [_entry(size=8)]}),
        (None, {"entries": [_entry(type="x")]}),
        (None, {"entries": [_entry(chunks=[[IDS[1], 3], [IDS[0]]])]}),
        (None, {"entries": [_entry(chunks=[[IDS[1], 3], [IDS[0][:31], 4]])]}),
        (None, {"entries": [_entry(chunks=[[IDS[1], 11], [IDS[0], -4]])]}),
        (None, {"entries": [_entry(mode=-1)]}),
        (None, {"entries": [_entry(digest="abc")]}),
        (None, {"entries": [{"path": "db"}]}),
        (None, {"entries": ["db"]}),
        (None, {"lineage": {"seed": 42}}),
        (None, {"meta": []}),
        (None, {"extra": 1}),
    ],
)
def test_manifest_schema_violations_are_format_errors(public, sealed) -> None:
    raises(FormatError, records.decode_manifest, sealed_manifest(public, sealed), VAULT)


def test_missing_fields_and_non_map_parts_are_format_errors() -> None:
    for field in SMALL_MANIFEST.public():
        public = {k: v for k, v in SMALL_MANIFEST.public().items() if k != field}
        data = records.seal(records.KIND_MANIFEST, public, SMALL_MANIFEST.sealed(), VAULT, NODE_KEY)
        raises(FormatError, records.decode_manifest, data, VAULT)
    for public, sealed in ((["x"], SMALL_MANIFEST.sealed()), (SMALL_MANIFEST.public(), ["x"])):
        data = records.seal(records.KIND_MANIFEST, public, sealed, VAULT, NODE_KEY)
        raises(FormatError, records.decode_manifest, data, VAULT)


def test_sealed_part_that_is_not_msgpack_is_a_format_error() -> None:
    """Only a holder of the vault key can write this; it must still not crash a reader."""
    good = records.encode_manifest(SMALL_MANIFEST, VAULT, NODE_KEY)
    raw = records.parse(good)
    ct = AESGCM(VAULT.meta_enc).encrypt(raw.nonce, b"\xc1\xc1", raw.aad)
    body = raw.aad + raw.nonce + struct.pack(">I", len(ct)) + ct + NODE_KEY.public
    raises(FormatError, records.decode_manifest, body + NODE_KEY.sign(body), VAULT)


# --- checkpoints and the hash chain --------------------------------------------------------


def chain(length: int, note: str = "") -> list[tuple[bytes, Checkpoint]]:
    out: list[tuple[bytes, Checkpoint]] = []
    prev = None
    for seq in range(length):
        cp = dataclasses.replace(SEQ0, seq=seq, prev=prev, time_us=seq, note=note)
        data = records.encode_checkpoint(cp, VAULT, NODE_KEY)
        prev = records.record_id(data)
        out.append((prev, records.decode_checkpoint(data, VAULT, trusted=NODE_KEY.public)))
    return out


def test_encode_refuses_a_broken_chain_link() -> None:
    raises(
        ChainError,
        records.encode_checkpoint,
        dataclasses.replace(SEQ0, prev=IDS[0]),
        VAULT,
        NODE_KEY,
    )
    raises(ChainError, records.encode_checkpoint, dataclasses.replace(SEQ0, seq=1), VAULT, NODE_KEY)


def test_decode_refuses_a_broken_chain_link() -> None:
    for seq, prev in ((0, IDS[0]), (1, None), (7, None)):
        public = {**SEQ0.public(), "seq": seq, "prev": prev}
        data = records.seal(records.KIND_CHECKPOINT, public, {"note": ""}, VAULT, NODE_KEY)
        raises(ChainError, records.decode_checkpoint, data, VAULT)
        raises(ChainError, records.checkpoint_public, data)


@pytest.mark.parametrize(
    ("public", "sealed"),
    [
        ({"kind": "weekly"}, None),
        ({"seq": -1, "prev": IDS[0]}, None),
        ({"manifests": {"memory": b"short"}}, None),
        ({"labels": {"release": 7}}, None),
        ({"extra": 1}, None),
        (None, {"note": 3}),
        (None, {"note": "", "extra": 1}),
        (None, {}),
    ],
)
def test_checkpoint_schema_violations_are_format_errors(public, sealed) -> None:
    pub = {**SEQ0.public(), **(public or {})}
    data = records.seal(
        records.KIND_CHECKPOINT, pub, {"note": ""} if sealed is None else sealed, VAULT, NODE_KEY
    )
    raises(FormatError, records.decode_checkpoint, data, VAULT)


@settings(max_examples=10, deadline=None)
@given(length=st.integers(2, 6), note=st.text(texts, max_size=10))
def test_check_chain_accepts_successors_and_refuses_gaps(length: int, note: str) -> None:
    links = chain(length, note)
    records.check_chain(None, None, links[0][1])
    for (prev_id, prev), (_, cp) in itertools.pairwise(links):
        records.check_chain(prev_id, prev.seq, cp)
    for i, (_, cp) in enumerate(links):
        for j, (other_id, other) in enumerate(links):
            if j != i - 1:
                raises(ChainError, records.check_chain, other_id, other.seq, cp)
        if i:
            raises(ChainError, records.check_chain, None, None, cp)


def test_check_chain_refuses_forks() -> None:
    (id0, cp0), (id1, cp1) = chain(2)
    fork1 = dataclasses.replace(cp1, note="fork", time_us=99)
    fork1_id = records.record_id(records.encode_checkpoint(fork1, VAULT, NODE_KEY))
    assert fork1_id != id1
    records.check_chain(id0, 0, fork1)  # one link alone looks fine ...
    cp2 = dataclasses.replace(cp1, seq=2, prev=id1)
    records.check_chain(id1, 1, cp2)
    raises(ChainError, records.check_chain, fork1_id, 1, cp2)  # ... the fork does not continue
    raises(ChainError, records.check_chain, id1, 1, fork1)  # nor replays seq 1
    raises(ChainError, records.check_chain, id0, 0, cp0)
    raises(ChainError, records.check_chain, id1, 0, cp2)
