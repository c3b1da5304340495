"""Assertions the format and protocol tests share: the exact error a call raises, and
single-bit corruption.

Plain Python apart from ``pytest.raises``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from amber.protocol.errors import AmberError

E = TypeVar("E", bound=AmberError)


def raises(exc: type[E], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> E:
    """Call ``fn`` and return the error, which must be exactly ``exc`` (not a subclass
    nor another AmberError)."""
    with pytest.raises(AmberError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    return info.value  # type: ignore[return-value]


def flip(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (0 = the lowest bit of the first byte) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)
