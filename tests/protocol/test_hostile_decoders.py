"""Every decoder against its worst input: bounded memory, and only typed errors.

The attacker is whoever can hand Amber bytes: a hostile hub (wire messages, records,
bundles), a stolen node (records it signs and seals with the vault key it holds, chunk
blobs, packs) or a crafted file on a USB disk (bundles). Two promises are checked:

- memory: decoding takes at most ``RATIO`` times the input's size at its peak (measured
  with tracemalloc), whatever the input: many empty containers, deep nesting, lengths
  that claim far more than the input holds, the costliest small values;
- errors: whatever comes in, what comes out is a decoded value or an ``AmberError``
  subclass (never a ValueError, OverflowError, RecursionError ... far from the decoder),
  including for NUL in names and paths, out-of-range modes and times and wrong types.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import blake3
import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.protocol import bundle, chunk, codec, keys, packfile, records, wire
from amber.protocol.errors import AmberError, FormatError

VAULT = keys.VaultKeys.from_master(bytes(range(32)))
NODE_KEY = keys.SigningKey(bytes(range(32, 64)))
RATIO = 32
FIXED = 2 * 1024 * 1024  # the process: exception objects, its table of interned strings
N = 1 << 19  # 512 KiB inputs: tracemalloc makes every allocation slow


# --- building hostile bytes -------------------------------------------------------------


def arr(item: bytes, count: int) -> bytes:
    """A msgpack array32 of ``count`` copies of the encoded ``item``."""
    return b"\xdd" + count.to_bytes(4, "big") + item * count


def array_of(parts: list[bytes]) -> bytes:
    return b"\xdd" + len(parts).to_bytes(4, "big") + b"".join(parts)


def distinct_keys(count: int) -> list[bytes]:
    """``count`` different 3-character msgpack strs (each its own Python object)."""
    out = []
    for i in range(count):
        a, b, c = 33 + i % 94, 33 + i // 94 % 94, 33 + i // 8836 % 94
        out.append(b"\xa3" + bytes([a, b, c]))
    return out


def split(item: bytes, count: int, most: int) -> list[bytes]:
    """``count`` items as arrays of at most ``most`` items each."""
    parts = []
    while count > 0:
        parts.append(arr(item, min(count, most)))
        count -= most
    return parts


def msgpack_worst_cases() -> dict[str, bytes]:
    neg, wide = b"\xe0", b"\xa2\xc4\x80"  # -32 (an uncached int), "Ā" (a 76-byte str)
    keys3 = distinct_keys(N // 8)
    cases = {
        "empty maps": arr(b"\x80", N),
        "empty arrays": arr(b"\x90", N),
        "nested [[]]": arr(b"\x91\x90", N // 2),
        "one-pair maps": arr(b"\x81\xa0\x00", N // 3),
        "negative fixints": arr(neg, N),
        "negative fixints, split": array_of(split(neg, N, N // 8)),
        "wide one-char strs": arr(wide, N // 3),
        "wide strs, split": array_of(split(wide, N // 3, N // 8)),
        "mix of ints and strs": array_of(split(neg, N // 16, N // 8) + split(wide, N // 3, N // 8)),
        "maps of distinct keys": array_of(
            [
                b"\x8f" + b"".join(k + neg for k in keys3[i : i + 15])
                for i in range(0, N // 8 - 15, 15)
            ]
        ),
        "distinct keys, then wide strs": array_of(
            [b"\x8f" + b"".join(k + neg for k in keys3[i : i + 15]) for i in range(0, N // 32, 15)]
            + split(wide, (N - N // 32 * 5) // 3 - 64, N // 8)
        ),
        "one map of distinct keys": b"\xdf"
        + (N // 8).to_bytes(4, "big")
        + b"".join(k + neg for k in keys3),
        "deep nesting": b"\x91" * N + b"\x00",
        "deep maps": b"\x81\xa0" * (N // 2) + b"\x00",
        "str claiming 4 GiB": b"\xdb\xff\xff\xff\xff" + b"a" * N,
        "bin claiming 4 GiB": b"\xc6\xff\xff\xff\xff" + bytes(N),
        "array claiming 4G items": b"\xdd\xff\xff\xff\xff" + b"\x00" * N,
        "map claiming 4G pairs": b"\xdf\xff\xff\xff\xff" + b"\xa0\x00" * (N // 2),
        "ext claiming 4 GiB": b"\xc9\xff\xff\xff\xff\x01" + bytes(N),
        "timestamps": arr(b"\xd6\xff\x00\x00\x00\x01", N // 6),
    }
    return cases


def as_wire_message(payload: bytes) -> bytes:
    """A chunk.query message whose ids field is ``payload``."""
    return b"\x83\xa1v\x01\xa1t\xabchunk.query\xa3ids" + payload


def raw_record(kind: int, public: bytes, sealed: bytes) -> bytes:
    """A record with these exact public and sealed bytes, sealed under the vault key and
    signed: what a stolen node can make (records.seal, minus the packing)."""
    head = records.HEAD.pack(b"AMBR", 1, kind, 0, len(public)) + public
    nonce = blake3.blake3(head + sealed, key=VAULT.meta_nonce).digest(12)
    ct = AESGCM(VAULT.meta_enc).encrypt(nonce, sealed, head)
    body = head + nonce + struct.pack(">I", len(ct)) + ct + NODE_KEY.public
    return body + NODE_KEY.sign(body)


def good_public() -> bytes:
    m = records.Manifest(vault="v", node="n", source="s", kind="files", tier="hot", time_us=1)
    return codec.pack(m.public())


# --- measuring --------------------------------------------------------------------------


def peak_of(fn: Callable[[], Any]) -> tuple[int, str]:
    """Peak traced memory while ``fn`` runs, and its outcome (``ok`` or the error class).

    ``fn`` runs once untraced first: msgpack interns map keys, and the interpreter's
    table of interned strings (shared by the whole process, megabytes in a test run)
    is copied when it grows; that one-off cost belongs to the process, not the input."""
    try:
        fn()
    except AmberError:
        pass
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        outcome = "ok"
    except AmberError as exc:
        outcome = type(exc).__name__
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, outcome


def check_bounded(fn: Callable[[], Any], size: int) -> str:
    peak, outcome = peak_of(fn)
    assert peak <= RATIO * size + FIXED, f"{peak / size:.1f}x the input ({outcome})"
    return outcome


CASES = msgpack_worst_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_msgpack_decoders_stay_within_32x(name: str) -> None:
    payload = CASES[name]
    check_bounded(lambda: codec.unpack(payload, what="x", max_size=64 * N), len(payload))
    msg = as_wire_message(payload)
    outcome = check_bounded(lambda: wire.decode(msg), len(msg))
    assert outcome != "ok"
    public = good_public()
    for kind, pub, sealed in (
        (records.KIND_MANIFEST, payload, b"\x80"),  # a hostile hub or node: public part
        (records.KIND_MANIFEST, public, payload),  # a stolen node: the sealed part
        (records.KIND_CHECKPOINT, public, payload),
    ):
        data = raw_record(kind, pub, sealed)
        decode = (
            records.decode_manifest if kind == records.KIND_MANIFEST else records.decode_checkpoint
        )
        assert check_bounded(lambda: decode(data, VAULT), len(data)) != "ok"  # noqa: B023


def test_one_mebibyte_of_empty_maps_is_refused_early() -> None:
    """Before the limits, 1 MB of empty maps decoded into 73 MB of dicts."""
    payload = array_of([b"\x9f" + b"\x80" * 15] * (N // 16))
    peak, outcome = peak_of(lambda: codec.unpack(payload, what="x", max_size=64 * N))
    assert outcome == "FormatError" and peak < 8 * len(payload)
    with pytest.raises(FormatError, match="more arrays, maps or items than its size allows"):
        codec.unpack(payload, what="x", max_size=64 * N)


def test_real_records_and_messages_are_far_from_the_limits() -> None:
    """The limits refuse nothing Amber writes: a manifest of 20,000 small files."""
    entries = tuple(
        records.Entry(
            path=f"d/{i}",
            type="f",
            size=1,
            mtime_ns=i,
            digest=bytes(32),
            chunks=((blake3.blake3(b"%d" % i).digest(), 1),),
        )
        for i in range(20_000)
    )
    m = records.Manifest(
        vault="v", node="n", source="s", kind="files", tier="hot", time_us=1, entries=entries
    )
    data = records.encode_manifest(m, VAULT, NODE_KEY)
    assert records.decode_manifest(data, VAULT) == m
    ids = tuple(blake3.blake3(b"%d" % i).digest() for i in range(wire.MAX_IDS_PER_MESSAGE))
    assert wire.decode(wire.encode(wire.ChunkQuery(ids=ids))) == wire.ChunkQuery(ids=ids)


# --- bundle INDEX and JSON members ---------------------------------------------------------


JSON_CASES = {
    "empty lists": "[" + ",".join(["[]"] * (N // 3)) + "]",
    "empty objects": "[" + ",".join(["{}"] * (N // 3)) + "]",
    "one-key objects": "[" + ",".join(['{"":0}'] * (N // 7)) + "]",
    "small ints": "[" + ",".join(["-7"] * (N // 3)) + "]",
    "deep nesting": "[" * N + "]" * N,
}


def index_of(members: str) -> bytes:
    head = '{"format":"amber-bundle-index","version":1,"bundle":"' + "00" * 32 + '","members":'
    return (head + members + "}").encode()


@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_bundle_json_decoders_stay_within_32x(name: str) -> None:
    data = index_of(JSON_CASES[name])
    assert check_bounded(lambda: bundle.decode_index(data), len(data)) == "FormatError"
    for decode in (bundle.decode_header, bundle.decode_signature, bundle.decode_receipt):
        check_bounded(lambda: decode(data), len(data))  # noqa: B023


def test_the_index_is_bounded_by_the_members_before_it() -> None:
    """A bundle of 3 members cannot carry a 100 MB INDEX: the reader refuses it from
    its tar header, before reading it (amber.bundlefile calls ``limit``)."""
    verifier = bundle.BundleVerifier()
    header = bundle.BundleHeader("node-export", "v", "n", 1, NODE_KEY.public)
    verifier.feed(bundle.HEADER_NAME, header.encode())
    limit = verifier.limit(bundle.INDEX_NAME)
    assert limit == codec.index_limit(1) < 1024
    real = bundle.encode_index(bundle.BundleIndex(bundle.digest(header.encode()), ()))
    assert len(real) <= limit
    with pytest.raises(FormatError, match="over its"):
        verifier.feed(bundle.INDEX_NAME, index_of("[" + ",".join(["[]"] * 400) + "]"))
    worst = bundle.IndexEntry("chunks/" + "f" * 64, codec.INT64_MAX, bytes(32))
    one = bundle.encode_index(bundle.BundleIndex(bytes(32), (worst,)))
    many = bundle.encode_index(bundle.BundleIndex(bytes(32), (worst,) * 1000))
    assert len(one) <= codec.index_limit(1) and len(many) <= codec.index_limit(1000)


# --- chunk blobs and packs ------------------------------------------------------------------


def test_chunk_and_pack_headers_claiming_too_much_cost_nothing() -> None:
    cid = chunk.chunk_id(VAULT, b"x")
    for version in (1, 2):
        blob = chunk.HEADER.pack(b"AMBC", version, 1, 0, chunk.MAX_CHUNK_SIZE) + bytes(64)
        assert check_bounded(lambda: chunk.decode_chunk(VAULT, cid, blob), len(blob)) != "ok"  # noqa: B023
    pack = packfile.HEADER + packfile.ENTRY.pack(cid, 2**32 - 1) + bytes(1000)
    assert check_bounded(lambda: list(packfile.entries(pack, "p")), len(pack)) == "FormatError"


# --- hypothesis: only typed errors ------------------------------------------------------------

text = st.text(max_size=6) | st.sampled_from(["", "\0", "a\0b", "../x", "/etc"])
ints = st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0o177777 + 1]) | st.integers()
scalars = st.none() | st.booleans() | ints | st.floats() | text | st.binary(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
BIG = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_typed_errors(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except AmberError:
        pass


def packable(obj: Any) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None  # outside msgpack (ints over 64 bits): cannot be on the wire


def entry_like(draw: st.DrawFn) -> dict[str, Any]:
    good = records.Entry(path="a", size=1, digest=bytes(32), chunks=((bytes(32), 1),)).to_obj()
    field = draw(st.sampled_from(sorted(good)))
    return {**good, field: draw(values)}


@BIG
@given(data=st.data())
def test_wire_decode_only_typed_errors(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(wire.MESSAGES)))
    names = [f for f in wire.MESSAGES[kind].__dataclass_fields__]
    body: dict[str, Any] = {"v": data.draw(st.sampled_from([1, 1, 1, 2, "1"])), "t": kind}
    for name in names:
        body[name] = data.draw(values)
    raw = packable(body)
    if raw is not None:
        only_typed_errors(lambda: wire.decode(raw))


@BIG
@given(data=st.data())
def test_manifest_decode_only_typed_errors(data: st.DataObject) -> None:
    m = records.Manifest(vault="v", node="n", source="s", kind="files", tier="hot", time_us=1)
    public, sealed = m.public(), m.sealed()
    target = data.draw(st.sampled_from(["public", "sealed", "entry"]))
    if target == "entry":
        sealed["entries"] = [entry_like(data.draw)]
    else:
        part = public if target == "public" else sealed
        part[data.draw(st.sampled_from(sorted(part)))] = data.draw(values)
    pub, seal = packable(public), packable(sealed)
    if pub is not None and seal is not None:
        record = raw_record(records.KIND_MANIFEST, pub, seal)
        only_typed_errors(lambda: records.decode_manifest(record, VAULT))
        only_typed_errors(lambda: records.manifest_public(record))


@BIG
@given(data=st.data())
def test_checkpoint_decode_only_typed_errors(data: st.DataObject) -> None:
    cp = records.Checkpoint(vault="v", node="n", seq=0, prev=None, time_us=1, manifests={})
    public = cp.public()
    public[data.draw(st.sampled_from(sorted(public)))] = data.draw(values)
    pub = packable(public)
    if pub is not None:
        record = raw_record(records.KIND_CHECKPOINT, pub, codec.pack({"note": "x"}))
        only_typed_errors(lambda: records.decode_checkpoint(record, VAULT))
        only_typed_errors(lambda: records.checkpoint_public(record))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", "a\0b"),
        ("target", "\0"),
        ("mode", -1),
        ("mode", 0o177777 + 1),
        ("mode", 2**63),
        ("mtime_ns", 2**63),
        ("mtime_ns", 2**64 - 1),
        ("size", "1"),
        ("digest", "00"),
        ("chunks", [[bytes(32), -1]]),
    ],
)
def test_manifest_entries_with_hostile_fields_are_format_errors(field: str, value: Any) -> None:
    good = records.Entry(path="a", size=1, digest=bytes(32), chunks=((bytes(32), 1),)).to_obj()
    m = records.Manifest(vault="v", node="n", source="s", kind="files", tier="hot", time_us=1)
    sealed = {**m.sealed(), "entries": [{**good, field: value}]}
    data = raw_record(records.KIND_MANIFEST, codec.pack(m.public()), codec.pack(sealed))
    with pytest.raises(FormatError):
        records.decode_manifest(data, VAULT)


@pytest.mark.parametrize("time_us", [-1, codec.MAX_TIME_US + 1, 2**63 - 1])
def test_record_times_out_of_range_are_format_errors(time_us: int) -> None:
    cp = records.Checkpoint(vault="v", node="n", seq=0, prev=None, time_us=time_us, manifests={})
    data = raw_record(records.KIND_CHECKPOINT, codec.pack(cp.public()), codec.pack({"note": ""}))
    with pytest.raises(FormatError, match="time_us"):
        records.checkpoint_public(data)


json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)


@BIG
@given(data=st.data())
def test_bundle_json_members_only_typed_errors(data: st.DataObject) -> None:
    decode, fmt = data.draw(
        st.sampled_from(
            [
                (bundle.decode_header, bundle.BUNDLE_FORMAT),
                (bundle.decode_index, bundle.INDEX_FORMAT),
                (bundle.decode_signature, bundle.SIGNATURE_FORMAT),
                (bundle.decode_receipt, bundle.RECEIPT_FORMAT),
            ]
        )
    )
    obj = data.draw(st.dictionaries(text, json_values, max_size=6))
    obj |= {"format": fmt, "version": data.draw(st.sampled_from([1, 1, 2, True, "1"]))}
    raw = json.dumps(obj).encode()
    only_typed_errors(lambda: decode(raw))
    only_typed_errors(lambda: decode(raw[: data.draw(st.integers(0, len(raw)))]))


@BIG
@given(data=st.binary(max_size=300), cid=st.binary(min_size=32, max_size=32))
def test_chunk_and_pack_decoders_only_typed_errors(data: bytes, cid: bytes) -> None:
    for head in (b"", b"AMBC\x01\x00\x00\x00", b"AMBC\x02\x01\x00\x00"):
        only_typed_errors(lambda: chunk.parse_chunk_header(head + data))  # noqa: B023
        only_typed_errors(lambda: chunk.decode_chunk(VAULT, cid, head + data))  # noqa: B023
    for head in (b"", packfile.HEADER):
        only_typed_errors(lambda: list(packfile.entries(head + data, "p")))  # noqa: B023
        only_typed_errors(lambda: packfile.check_header(head + data, "p"))  # noqa: B023
