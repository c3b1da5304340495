"""Strict msgpack packing and the schema checks shared by records and wire messages."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.protocol import codec as c
from amber.protocol.errors import AmberError, FormatError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def raises_format(fn, *args, **kwargs) -> FormatError:
    with pytest.raises(AmberError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is FormatError, f"{type(info.value).__name__}: {info.value}"
    return info.value


@settings(max_examples=100, deadline=None)
@given(value=values)
def test_pack_round_trip_and_determinism(value) -> None:
    data = c.pack(value)
    assert data == c.pack(value)
    assert c.unpack(data, what="x", max_size=len(data)) == value


def test_pack_keeps_the_callers_map_order() -> None:
    assert c.pack({"b": 1, "a": 2}) != c.pack({"a": 2, "b": 1})
    assert list(c.unpack(c.pack({"b": 1, "a": 2}), what="x", max_size=100)) == ["b", "a"]


def test_pack_uses_bin_for_bytes_and_str_for_text() -> None:
    assert c.pack(b"\x01") == b"\xc4\x01\x01"
    assert c.pack("a") == b"\xa1a"
    assert c.pack((1, 2)) == c.pack([1, 2])


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_unpack_arbitrary_bytes_only_format_errors(data: bytes) -> None:
    try:
        c.unpack(data, what="x", max_size=1000)
    except FormatError:
        pass


def test_unpack_refuses_what_is_not_plain_msgpack() -> None:
    raises_format(c.unpack, msgpack.packb(msgpack.ExtType(5, b"abc")), what="x", max_size=100)
    raises_format(c.unpack, b"\xc1", what="x", max_size=100)  # never used
    raises_format(c.unpack, b"\xa3ab", what="x", max_size=100)  # truncated str
    raises_format(c.unpack, c.pack(1) + b"\x00", what="x", max_size=100)  # trailing bytes
    raises_format(c.unpack, b"", what="x", max_size=100)
    raises_format(c.unpack, b"\xa2\xff\xfe", what="x", max_size=100)  # invalid UTF-8
    raises_format(c.unpack, b"\x81\x01\x02", what="x", max_size=100)  # int map key
    raises_format(c.unpack, b"\x81\x90\x02", what="x", max_size=100)  # list map key
    raises_format(c.unpack, b"\x91" * 5000 + b"\xc0", what="x", max_size=10_000)  # too deep
    raises_format(c.unpack, b"\xdd\xff\xff\xff\xff", what="x", max_size=100)  # huge array


def test_unpack_size_limit() -> None:
    data = c.pack("x" * 100)
    assert c.unpack(data, what="x", max_size=len(data)) == "x" * 100
    err = raises_format(c.unpack, data, what="thing", max_size=len(data) - 1)
    assert "thing" in str(err)


def test_unpack_refuses_the_timestamp_extension() -> None:
    raises_format(c.unpack, b"\xd6\xff\x00\x00\x00\x01", what="x", max_size=100)


# --- schema checks -----------------------------------------------------------------------

CHECKS = {
    "str": (
        c.is_str,
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=5),
    ),
    "int": (c.is_int, st.integers(c.INT64_MIN, c.INT64_MAX)),
    "uint": (c.is_uint, st.integers(min_value=0, max_value=c.INT64_MAX)),
    "bool": (c.is_bool, st.booleans()),
    "float": (c.is_float, st.floats(allow_nan=False, allow_infinity=False) | st.integers(-9, 9)),
    "bytes": (c.is_bytes, st.binary(max_size=5)),
    "id": (c.is_id, st.binary(min_size=32, max_size=32)),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_scalar_checks_accept_their_type_and_refuse_others(name: str, data) -> None:
    check, good = CHECKS[name]
    value = data.draw(good, label="good")
    got = check(value, "f")
    assert got == value and (name != "float" or isinstance(got, float))
    other = data.draw(values, label="other")
    if _fits(name, other):  # a float field takes any number, as a float (2**53 + 1 rounds)
        assert check(other, "f") == (float(other) if name == "float" else other)
    else:
        with pytest.raises(FormatError, match=r"^f: "):
            check(other, "f")


def _fits(name: str, value) -> bool:
    if name == "str":
        return isinstance(value, str)
    if name in ("int", "uint"):
        return (
            isinstance(value, int) and not isinstance(value, bool) and (name == "int" or value >= 0)
        )
    if name == "bool":
        return isinstance(value, bool)
    if name == "float":  # a finite number (decoders refuse inf and NaN)
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (not isinstance(value, float) or math.isfinite(value))
        )
    if name == "bytes":
        return isinstance(value, bytes)
    return isinstance(value, bytes) and len(value) == 32


def test_bool_is_not_an_int_and_int_is_not_a_bool() -> None:
    raises_format(c.is_int, True, "f")
    raises_format(c.is_uint, False, "f")
    raises_format(c.is_float, True, "f")
    raises_format(c.is_bool, 1, "f")
    raises_format(c.is_uint, -1, "f")


def test_combinators() -> None:
    assert c.optional(c.is_str)(None, "f") is None
    assert c.optional(c.is_str)("a", "f") == "a"
    raises_format(c.optional(c.is_str), 1, "f")
    assert c.list_of(c.is_int)([1, 2], "f") == [1, 2]
    raises_format(c.list_of(c.is_int), (1, 2), "f")
    raises_format(c.list_of(c.is_int), [1, "2"], "f")
    raises_format(c.list_of(c.is_int, max_len=2), [1, 2, 3], "f")
    assert c.dict_of(c.is_int)({"a": 1}, "f") == {"a": 1}
    raises_format(c.dict_of(c.is_int), {b"a": 1}, "f")
    raises_format(c.dict_of(c.is_int), {"a": "1"}, "f")
    raises_format(c.dict_of(c.is_int), [("a", 1)], "f")


def test_fields_requires_every_field_and_refuses_unknown_ones() -> None:
    spec = {"a": c.is_int, "b": c.optional(c.is_str)}
    assert c.fields({"b": None, "a": 1}, "m", spec) == {"a": 1, "b": None}
    assert list(c.fields({"b": None, "a": 1}, "m", spec)) == ["a", "b"]  # spec order
    assert "missing" in str(raises_format(c.fields, {"a": 1}, "m", spec))
    assert "unknown" in str(raises_format(c.fields, {"a": 1, "b": None, "c": 0}, "m", spec))
    raises_format(c.fields, {"a": 1, "b": None, b"c": 0}, "m", spec)
    raises_format(c.fields, {"a": "1", "b": None}, "m", spec)
    raises_format(c.fields, [1, None], "m", spec)


@settings(max_examples=150, deadline=None)
@given(value=values)
def test_fields_on_arbitrary_values_only_format_errors(value) -> None:
    spec = {"a": c.is_int, "b": c.list_of(c.is_id), "c": c.dict_of(c.is_str)}
    try:
        c.fields(value, "m", spec)
    except FormatError:
        pass
