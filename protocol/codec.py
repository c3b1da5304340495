"""Strict msgpack packing and schema checks shared by records and wire messages.

Only maps with str keys, lists, str, bytes, int, float, bool and None are used.
Unpacking refuses anything else (ext types, non-str keys, oversize inputs) with a
:class:`FormatError`, never another exception.

Unpacking also bounds the work a hostile input can cause: every length msgpack reads
(str, bin, array, map, ext) is capped by the format's :class:`Limits` and by the input
size, and the number of containers and of their elements is capped in proportion to the
input, so that a decoded value never takes more than about 32 times the input's size in
memory (``tests/protocol/test_hostile_decoders.py``). The limits of every decoder live
here, in one place (docs/FORMAT.md §2, "Decoding limits").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from amber.protocol.errors import FormatError

MAX_DEPTH = 16
KiB, MiB = 1024, 1024 * 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MODE = 0o177777  # st_mode: file type and permission bits
MAX_TIME_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, the last datetime


@dataclass(frozen=True)
class Limits:
    """What one msgpack format may hold, whatever its input size (which its decoder
    bounds: records.MAX_RECORD_SIZE, wire.MAX_MESSAGE_SIZE)."""

    max_str: int  # bytes of one str
    max_bin: int  # bytes of one bin
    max_items: int  # elements of one array, pairs of one map


# Records (docs/FORMAT.md §9): public and sealed parts. The largest str is a lineage value
# or a note; the largest bin a digest or an id; the longest list a manifest's entries.
RECORD_LIMITS = Limits(max_str=1 * MiB, max_bin=1 * MiB, max_items=10_000_000)
# Wire messages (PROTOCOL.md): a chunk blob is the largest bin; the longest lists are
# the id lists of chunk queries (wire.MAX_IDS_PER_MESSAGE).
WIRE_LIMITS = Limits(max_str=1 * MiB, max_bin=8 * MiB, max_items=1_000_000)
DEFAULT_LIMITS = Limits(max_str=64 * MiB, max_bin=64 * MiB, max_items=10_000_000)
# In proportion to the input: at most one container (array or map) per CONTAINER_BYTES
# bytes, one element (array item or map pair) per ELEMENT_BYTES bytes over the whole
# input, and ARRAY_BYTES for the items of any one array, plus SLACK of each for small
# inputs. msgpack allocates an array's items before its hook counts them, hence the
# tighter bound on one array. The costliest items per input byte are an empty map (1 byte,
# 64 of memory and 8 of pointer), a negative fixint below -5 (1 byte, 32 + 8) and a
# one-character str above U+00FF (3 bytes, 76 + 8), and a map pair whose key is new
# (msgpack interns every key: a 3-character key and its pair cost ~230 bytes for 5 of
# input, hence at most one distinct key per KEY_BYTES bytes). Amber's own arrays, maps
# and keys are far larger (a manifest entry: 8 pairs of the same 8 keys in ~60+ bytes).
CONTAINER_BYTES = 16
ELEMENT_BYTES = 4
ARRAY_BYTES = 8
KEY_BYTES = 32
SLACK = 64
MAX_EXT = 16  # the longest extension msgpack reads (a timestamp is 12) before refusing it
# Bundle INDEX (JSON, docs/FORMAT.md §13): bounded by the number of members read before
# it. One entry ["chunks/<64 hex>", <size>, "<64 hex>"], is at most 164 bytes.
INDEX_ENTRY_BYTES = 192
INDEX_FIXED_BYTES = 512


def index_limit(members: int) -> int:
    """The most bytes a bundle INDEX listing ``members`` members may have."""
    return INDEX_FIXED_BYTES + INDEX_ENTRY_BYTES * members


def pack(obj: Any) -> bytes:
    """Deterministic msgpack: maps keep the caller's key order (callers sort)."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


class _Budget:
    """Counts containers, elements and distinct map keys as msgpack finishes each
    container (its list and object hooks)."""

    def __init__(self, n: int, what: str) -> None:
        self.containers = n // CONTAINER_BYTES + SLACK
        self.elements = n // ELEMENT_BYTES + SLACK
        self.max_keys = n // KEY_BYTES + SLACK
        self.keys: set[str] = set()
        self.what = what

    def take_list(self, obj: list[Any]) -> list[Any]:
        self.containers -= 1
        self.elements -= len(obj)
        if self.containers < 0 or self.elements < 0:
            raise self._error()
        return obj

    def take_map(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.take_list(obj)  # type: ignore[arg-type]
        self.keys.update(obj)
        if len(self.keys) > self.max_keys:
            raise self._error()
        return obj

    def _error(self) -> FormatError:
        return FormatError(f"{self.what} holds more arrays, maps or items than its size allows")


def unpack(
    data: bytes | memoryview, *, what: str, max_size: int, limits: Limits = DEFAULT_LIMITS
) -> Any:
    n = len(data)
    if n > max_size:
        raise FormatError(f"{what} of {n} bytes exceeds the {max_size}-byte limit")
    budget = _Budget(n, what)
    items = min(limits.max_items, n // ARRAY_BYTES + SLACK)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            list_hook=budget.take_list,
            object_hook=budget.take_map,
            max_str_len=min(limits.max_str, n),
            max_bin_len=min(limits.max_bin, n),
            max_array_len=items,
            max_map_len=min(items, n // 2),
            max_ext_len=min(n, MAX_EXT),  # read, then refused by name (_refuse_ext)
        )
        _check_plain(obj, 0)
        return obj
    except FormatError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise FormatError(f"{what} is not valid msgpack: {exc}") from None


_PLAIN = (str, bytes, int, float, bool, type(None))


def _check_plain(obj: Any, depth: int) -> None:
    """Refuse what msgpack decodes beyond plain values (e.g. its built-in Timestamp)."""
    if depth > MAX_DEPTH:
        raise FormatError(f"msgpack nesting deeper than {MAX_DEPTH}")
    if isinstance(obj, list):
        for v in obj:
            if not isinstance(v, _PLAIN):
                _check_plain(v, depth + 1)
    elif isinstance(obj, dict):
        for v in obj.values():
            if not isinstance(v, _PLAIN):
                _check_plain(v, depth + 1)
    elif not isinstance(obj, _PLAIN):
        raise FormatError(f"msgpack value of type {type(obj).__name__} is not allowed")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise FormatError(f"msgpack extension type {code} is not allowed")


# --- schema checks ------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def fail(path: str, expected: str, value: Any) -> FormatError:
    return FormatError(f"{path}: expected {expected}, got {type(value).__name__}")


def is_str(value: Any, path: str) -> str:
    """A str without NUL (no name, path, label or note of Amber holds one: the OS and
    SQLite would cut it short)."""
    if not isinstance(value, str):
        raise fail(path, "a string", value)
    if "\0" in value:
        raise FormatError(f"{path}: a string holding a NUL character")
    return value


def is_int(value: Any, path: str) -> int:
    """An integer in the signed 64-bit range (what SQLite and the OS store)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(path, "an integer", value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise FormatError(f"{path}: {value} is outside the 64-bit integer range")
    return value


def int_in(low: int, high: int) -> Check:
    """An integer in ``low..high`` (file modes, times)."""

    def run(value: Any, path: str) -> int:
        if not low <= is_int(value, path) <= high:
            raise FormatError(f"{path}: {value} is outside {low}..{high}")
        return value

    return run


def is_uint(value: Any, path: str) -> int:
    if is_int(value, path) < 0:
        raise FormatError(f"{path}: expected a non-negative integer, got {value}")
    return value


def is_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise fail(path, "a boolean", value)
    return value


def is_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise FormatError(f"{path}: {value} is not a finite number")
    try:
        return float(value)
    except OverflowError:  # an int beyond a float's range
        raise FormatError(f"{path}: {value} is out of a number's range") from None


def is_bytes(value: Any, path: str) -> bytes:
    if not isinstance(value, bytes):
        raise fail(path, "bytes", value)
    return value


def is_id(value: Any, path: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise FormatError(f"{path}: expected a 32-byte id")
    return value


def optional(check: Check) -> Check:
    def run(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)

    return run


def list_of(check: Check, *, max_len: int = 10_000_000) -> Check:
    def run(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise fail(path, "a list", value)
        if len(value) > max_len:
            raise FormatError(f"{path}: more than {max_len} items")
        return [check(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return run


def dict_of(check: Check) -> Check:
    def run(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(path, "a map", value)
        return {is_str(k, path): check(v, f"{path}.{k}") for k, v in value.items()}

    return run


def is_any(value: Any, path: str) -> Any:
    return value


def fields(value: Any, path: str, spec: Mapping[str, Check]) -> dict[str, Any]:
    """Check a map against ``spec``: every field present, none unknown."""
    if not isinstance(value, dict):
        raise fail(path, "a map", value)
    missing = spec.keys() - value.keys()
    if missing:
        raise FormatError(f"{path}: missing field(s) {', '.join(sorted(missing))}")
    unknown = value.keys() - spec.keys()
    if unknown:
        raise FormatError(f"{path}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return {k: check(value[k], f"{path}.{k}") for k, check in spec.items()}
