"""Strict msgpack packing and schema checks shared by records and wire messages.

Only maps with str keys, lists, str, bytes, int, float, bool and None are used.
Unpacking refuses anything else (ext types, non-str keys, oversize inputs) with a
:class:`FormatError`, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from amber.protocol.errors import FormatError

MAX_DEPTH = 16


def pack(obj: Any) -> bytes:
    """Deterministic msgpack: maps keep the caller's key order (callers sort)."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def unpack(data: bytes | memoryview, *, what: str, max_size: int) -> Any:
    if len(data) > max_size:
        raise FormatError(f"{what} of {len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
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
    if not isinstance(value, str):
        raise fail(path, "a string", value)
    return value


def is_int(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(path, "an integer", value)
    return value


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
    return float(value)


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
