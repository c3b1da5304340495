"""Wire messages: the msgpack envelope {"v", "t", fields...}, its checks and its limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.protocol import wire
from amber.protocol.errors import AmberError, FormatError, ProtocolError, UnknownVersionError
from tests.support.checks import raises

ID = bytes(range(32))
int64ish = st.integers(-(2**63), 2**63 - 1)  # decoders refuse ints beyond int64
short_bytes = st.binary(max_size=40)
short_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)

FIELD_STRATEGIES: dict[Any, st.SearchStrategy] = {
    str: short_text,
    int: int64ish,
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    bytes: short_bytes,
    tuple[bytes, ...]: st.lists(short_bytes, max_size=5).map(tuple),
    tuple[str, ...]: st.lists(short_text, max_size=5).map(tuple),
    dict[str, str]: st.dictionaries(short_text, short_text, max_size=4),
    bytes | None: st.none() | short_bytes,
    str | None: st.none() | short_text,
    int | None: st.none() | int64ish,
}

msgpack_values = st.recursive(
    st.none() | st.booleans() | int64ish | st.floats() | short_text | short_bytes,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4),
    max_leaves=12,
)


def message_strategy(cls: type[wire.Message]) -> st.SearchStrategy:
    hints = get_type_hints(cls)
    built = st.builds(
        cls, **{f.name: FIELD_STRATEGIES[hints[f.name]] for f in dataclasses.fields(cls)}
    )
    if cls is wire.FetchReply:  # a blob per id, or it is not a valid reply
        return built.filter(lambda m: len(m.ids) == len(m.blobs))
    return built


def all_types() -> list[type[wire.Message]]:
    return sorted(wire.MESSAGES.values(), key=lambda cls: cls.TYPE)


messages = st.sampled_from(all_types()).flatmap(message_strategy)


def envelope(t: str = "chunk.query", v: Any = 1, **fields: Any) -> bytes:
    return msgpack.packb({"v": v, "t": t, **fields}, use_bin_type=True)


def decode_or_amber_error(data: bytes, expect=None) -> wire.Message | None:
    try:
        msg = wire.decode(data, expect)
    except AmberError:
        return None
    assert isinstance(msg, wire.Message)
    assert expect is None or type(msg) is expect
    return msg


def test_strategies_cover_every_field_type_the_codec_knows() -> None:
    assert set(FIELD_STRATEGIES) == set(wire._CHECKS)
    for cls in all_types():
        hints = get_type_hints(cls)
        assert all(hints[f.name] in FIELD_STRATEGIES for f in dataclasses.fields(cls)), cls


# --- round trips --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(msg=messages)
def test_round_trip_and_determinism(msg: wire.Message) -> None:
    data = wire.encode(msg)
    assert data == wire.encode(msg)
    assert wire.decode(data) == msg
    assert wire.decode(data, expect=type(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(msg=messages)
def test_envelope_layout(msg: wire.Message) -> None:
    body = msgpack.unpackb(wire.encode(msg), raw=False)
    assert list(body)[:2] == ["v", "t"]
    assert body.pop("v") == wire.WIRE_VERSION == 1 and body.pop("t") == msg.TYPE
    assert list(body) == [f.name for f in dataclasses.fields(msg)]
    for name, value in body.items():
        original = getattr(msg, name)
        assert value == (list(original) if isinstance(original, tuple) else original)


def test_chunk_query_bytes() -> None:
    data = wire.encode(wire.ChunkQuery(ids=(ID,)))
    assert data == b"\x83\xa1v\x01\xa1t\xabchunk.query\xa3ids\x91\xc4\x20" + ID


# --- refusals -----------------------------------------------------------------------------


def test_version_refusals() -> None:
    raises(UnknownVersionError, wire.decode, envelope(v=2, ids=[]))
    raises(UnknownVersionError, wire.decode, envelope(v=0, ids=[]))
    raises(UnknownVersionError, wire.decode, envelope(v="1", ids=[]))
    raises(UnknownVersionError, wire.decode, envelope(v=None, ids=[]))
    raises(UnknownVersionError, wire.decode, msgpack.packb({"t": "chunk.query", "ids": []}))
    bytes_keys = msgpack.packb({b"v": 1, b"t": b"chunk.query", b"ids": []}, use_bin_type=True)
    raises(UnknownVersionError, wire.decode, bytes_keys)


def test_type_and_field_refusals() -> None:
    raises(FormatError, wire.decode, envelope(t="chunk.delete", ids=[]))
    raises(FormatError, wire.decode, envelope(t=1, ids=[]))
    raises(FormatError, wire.decode, msgpack.packb({"v": 1, "ids": []}))
    raises(FormatError, wire.decode, envelope())  # missing field
    raises(FormatError, wire.decode, envelope(ids=[], extra=1))
    raises(FormatError, wire.decode, envelope(ids=[ID], **{"1": 2}))
    raises(FormatError, wire.decode, envelope(ids=["not bytes"]))
    raises(FormatError, wire.decode, envelope(ids=ID))
    raises(FormatError, wire.decode, envelope(ids=None))
    raises(FormatError, wire.decode, envelope("chunk.put", id=ID, blob=None))
    raises(FormatError, wire.decode, envelope("record.put", id=ID, kind=True, data=b""))
    raises(FormatError, wire.decode, envelope("record.put", id=ID, kind=1.0, data=b""))
    raises(FormatError, wire.decode, envelope("checkpoints.list.reply", records=[], more=1))
    raises(FormatError, wire.decode, msgpack.packb([1, "chunk.query", []]))


def test_limits() -> None:
    many = [ID] * (wire.MAX_IDS_PER_MESSAGE + 1)
    raises(FormatError, wire.decode, envelope(ids=many))
    assert len(wire.decode(envelope(ids=many[1:])).ids) == wire.MAX_IDS_PER_MESSAGE
    huge = wire.ChunkPut(id=ID, blob=bytes(wire.MAX_MESSAGE_SIZE))
    raises(ProtocolError, wire.encode, huge)
    raises(
        FormatError, wire.decode, envelope("chunk.put", id=ID, blob=bytes(wire.MAX_MESSAGE_SIZE))
    )
    fits = wire.ChunkPut(id=ID, blob=bytes(wire.MAX_MESSAGE_SIZE - 100))
    assert wire.decode(wire.encode(fits)) == fits


def test_expect() -> None:
    data = wire.encode(wire.ChunkQuery(ids=(ID,)))
    raises(FormatError, wire.decode, data, wire.Receipt)
    refusal = wire.encode(wire.ErrorReply(code="quota", message="vault over quota"))
    err = raises(ProtocolError, wire.decode, refusal, wire.ChunkQueryReply)
    assert "quota" in str(err)
    assert wire.decode(refusal, wire.ErrorReply) == wire.ErrorReply("quota", "vault over quota")
    raises(FormatError, wire.decode, envelope("error", code=1, message="x"), wire.Receipt)


def test_every_truncation_and_trailing_garbage() -> None:
    data = wire.encode(wire.Heartbeat("edge-01", 1, 2, 3, 4, 5, 6, "0.1.0"))
    for n in range(len(data)):
        raises(FormatError, wire.decode, data[:n])
    for garbage in (b"\0", b"\xc0", data):
        raises(FormatError, wire.decode, data + garbage)


def test_every_bit_flip_decodes_or_raises_an_amber_error() -> None:
    """The envelope has no integrity of its own (NATS carries it; blobs and records
    inside authenticate themselves): a flip may decode, but never crashes a reader."""
    data = wire.encode(wire.FetchReply(ids=(ID,), blobs=(b"blob",), missing=()))
    for bit in range(len(data) * 8):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        decode_or_amber_error(bytes(bad))
        decode_or_amber_error(bytes(bad), wire.FetchReply)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_amber_errors(data: bytes) -> None:
    decode_or_amber_error(data)
    decode_or_amber_error(b"\x83\xa1v\x01\xa1t" + data)


@settings(max_examples=120, deadline=None)
@given(
    cls=st.sampled_from(all_types()),
    v=st.sampled_from([1, 1, 1, 2, "1", None]),
    fields=st.dictionaries(short_text, msgpack_values, max_size=4),
    data=st.data(),
)
def test_structured_maps_with_wrong_field_types_only_amber_errors(cls, v, fields, data) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    wrong = {n: data.draw(msgpack_values, label=n) for n in names}
    for body in ({**wrong}, {**fields}, {**wrong, **fields}):
        raw = msgpack.packb({"v": v, "t": cls.TYPE, **body}, use_bin_type=True)
        msg = decode_or_amber_error(raw)
        if msg is not None:
            assert type(msg) is cls and v == 1
        decode_or_amber_error(raw, cls)
        decode_or_amber_error(raw, wire.ChunkQuery)


@settings(max_examples=200, deadline=None)
@given(msg=messages, data=st.data())
def test_one_field_of_a_wrong_type_is_refused(msg: wire.Message, data) -> None:
    body = msgpack.unpackb(wire.encode(msg), raw=False)
    hints = get_type_hints(type(msg))
    fields = dataclasses.fields(msg)
    if not fields:
        return
    field = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(msgpack_values, label="value")
    body[field.name] = value
    raw = msgpack.packb(body, use_bin_type=True)
    try:
        got = wire.decode(raw)
    except FormatError:
        return
    assert _fits(hints[field.name], value), (field.name, value)
    assert type(got) is type(msg)


def _fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` is a legal value of a field typed ``hint``."""
    if value is None:
        return hint in (bytes | None, str | None, int | None)
    if isinstance(value, bool):
        return hint is bool
    if isinstance(value, int):
        return hint in (int, float, int | None)
    if isinstance(value, float):
        return hint is float
    if isinstance(value, str):
        return hint in (str, str | None)
    if isinstance(value, bytes):
        return hint in (bytes, bytes | None)
    if isinstance(value, list):
        kind = {tuple[bytes, ...]: bytes, tuple[str, ...]: str}.get(hint)
        return kind is not None and all(isinstance(v, kind) for v in value)
    if isinstance(value, dict):
        return hint == dict[str, str] and all(isinstance(v, str) for v in value.values())
    return False


# --- names and subjects -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "edge-01", "Vault_7", "0", "x" * 63])
def test_valid_names(name: str) -> None:
    assert wire.check_name(name, "node") == name
    assert wire.subject(name, name, "ingest") == f"amber.{name}.{name}.ingest"


@pytest.mark.parametrize(
    "name", ["", "-a", "_a", "a.b", "a b", "a*", "a>", "é", "x" * 64, "a/b", "\na"]
)
def test_invalid_names(name: str) -> None:
    raises(FormatError, wire.check_name, name, "node")
    raises(FormatError, wire.subject, "vault", name, "ingest")
    raises(FormatError, wire.subject, name, "node", "ingest")


def test_names_with_a_trailing_newline_are_refused() -> None:
    raises(FormatError, wire.check_name, "node1\n", "node")


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70))
def test_check_name_only_lets_subject_tokens_through(name: str) -> None:
    try:
        assert wire.check_name(name, "node") == name
    except FormatError:
        return
    token = name
    assert 1 <= len(token) <= 63 and all(
        ch.isascii() and (ch.isalnum() or ch in "-_") for ch in token
    )
    assert token[0].isalnum()


def test_register() -> None:
    assert wire.register(wire.ChunkQuery) is wire.ChunkQuery

    @dataclass(frozen=True)
    class Impostor(wire.Message):
        TYPE: ClassVar[str] = "chunk.query"
        ids: tuple[bytes, ...]

    with pytest.raises(ValueError):
        wire.register(Impostor)
    assert wire.MESSAGES["chunk.query"] is wire.ChunkQuery


def test_subject_patterns_live_in_one_place() -> None:
    """Every subject, wildcard, inbox and command consumer name comes from protocol/wire.py."""
    assert wire.subject("v1", "n-1", "rpc") == "amber.v1.n-1.rpc"
    assert wire.node_prefix("v1", "n-1") == "amber.v1.n-1"
    assert wire.any_node("ingest") == "amber.*.*.ingest"
    assert wire.subject_owner("amber.v1.n-1.status") == ("v1", "n-1")
    for bad in ("amber.v1.n1", "amber.v1.n1.other", "nats.v1.n1.rpc", "amber.v1.n1.rpc.x"):
        with pytest.raises(FormatError):
            wire.subject_owner(bad)
    assert wire.inbox_prefix("v1", "n-1") == "_INBOX_v1.n-1"
    # names may hold '-': the vault's length keeps w/x-y and w-x/y apart
    assert wire.cmd_consumer("w", "x-y") != wire.cmd_consumer("w-x", "y")
    with pytest.raises(FormatError):
        wire.node_prefix("v1", "a.b")  # a '.' would reach into another node's subjects


def test_a_fetch_reply_with_more_ids_than_blobs_is_a_format_error() -> None:
    """A malformed reply from a hostile hub is a typed error at decode, not a ValueError
    deep in the node's fetch loop."""
    bad = wire.encode(wire.FetchReply(ids=(b"i" * 32, b"j" * 32), blobs=(b"x",), missing=()))
    with pytest.raises(FormatError, match="differ in number"):
        wire.decode(bad, wire.FetchReply)
