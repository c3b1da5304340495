"""The bundle reader raises nothing but AmberError, whatever it is fed.

Random bytes, the frozen sample bundle cut anywhere, with bits flipped anywhere, or
with one member's bytes swapped for random ones: reading and verifying it (as ``bundle
inspect`` and both importers do) either fails with an ``AmberError`` subclass or, when
the damage hit bytes a tar reader skips (block padding), gives exactly the sample's
values.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.bundlefile import BundleStream, summarize
from amber.protocol.errors import AmberError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLE = (FIXTURES / "bundle_v1.tar").read_bytes()
EXPECTED = json.loads((FIXTURES / "bundle_v1.json").read_text())
with tarfile.open(fileobj=io.BytesIO(SAMPLE)) as _tf:
    MEMBERS = [(ti.offset_data, ti.size) for ti in _tf.getmembers()]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read(data: bytes) -> dict[str, Any] | AmberError:
    try:
        return summarize(BundleStream(io.BytesIO(data)))
    except AmberError as exc:
        return exc


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    assert isinstance(read(data), AmberError)


@FUZZ
@given(st.binary(min_size=512, max_size=3000))
def test_random_bytes_behind_a_valid_tar_header(data: bytes) -> None:
    assert isinstance(read(SAMPLE[:512] + data), AmberError)


@FUZZ
@given(st.integers(0, len(SAMPLE)))
def test_truncations(at: int) -> None:
    out = read(SAMPLE[:at])
    assert isinstance(out, AmberError) or out == EXPECTED


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255)), max_size=3))
def test_bit_flips(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SAMPLE)
    for at, xor in flips:
        data[at] ^= xor
    out = read(bytes(data))
    assert isinstance(out, AmberError) or out == EXPECTED


@FUZZ
@given(st.integers(0, len(MEMBERS) - 1), st.binary(max_size=64), st.integers(0, 2000))
def test_a_member_overwritten(which: int, junk: bytes, at: int) -> None:
    offset, size = MEMBERS[which]
    at = offset + at % max(size, 1)
    n = min(len(junk), offset + size - at)
    data = bytearray(SAMPLE)
    data[at : at + n] = junk[:n]
    out = read(bytes(data))
    assert isinstance(out, AmberError) or out == EXPECTED
