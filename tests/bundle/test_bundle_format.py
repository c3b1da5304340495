"""The bundle format's pure parts (amber.protocol.bundle) and the strict tar reader.

Bytes in, values or typed errors out: the JSON members (closed, versioned), member
names and limits, the order the members must come in, the INDEX and the SIGNATURE.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable

import pytest

from amber.bundlefile import BundleStream, summarize
from amber.protocol import bundle as b
from amber.protocol.errors import (
    AmberError,
    FormatError,
    IntegrityError,
    SignatureError,
    UnknownVersionError,
)
from amber.protocol.keys import SigningKey

HUB = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
HEADER = b.BundleHeader(b.NODE_EXPORT, "v1", "n1", 1_700_000_000_000_000, HUB.public)
RECEIPT = b.BundleReceipt(
    bundle=bytes(32), outcome="executed", order_id="o-1", plan_id="bundle-1", state="healthy",
    detail="ok", safety=bytes(range(32)), checkpoint=bytes(32), added=2, error="", exit_code=0,
    time_us=5,
)  # fmt: skip


def tar(members: list[tuple[str, bytes]], kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def bundle(
    content: list[tuple[str, bytes]],
    header: b.BundleHeader = HEADER,
    signer: SigningKey = HUB,
    edit: Callable[[list[tuple[str, bytes]]], None] | None = None,
) -> bytes:
    """A bundle as the writer makes it; ``edit`` may change the members first."""
    hdr = header.encode()
    members = [(b.HEADER_NAME, hdr), *content]
    entries = tuple(b.IndexEntry(n, len(d), b.digest(d)) for n, d in members)
    index = b.encode_index(b.BundleIndex(b.digest(hdr), entries))
    members += [(b.INDEX_NAME, index), (b.SIGNATURE_NAME, b.encode_signature(signer, index))]
    if edit is not None:
        edit(members)
    return tar(members)


def read(data: bytes) -> dict:
    return summarize(BundleStream(io.BytesIO(data)))


# --- JSON members ---------------------------------------------------------------------


def test_header_and_receipt_round_trip() -> None:
    assert b.decode_header(HEADER.encode()) == HEADER
    assert b.decode_receipt(RECEIPT.encode()) == RECEIPT
    assert json.loads(HEADER.encode())["producer"] == "node"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": 2}, UnknownVersionError),
        ({"version": True}, UnknownVersionError),
        ({"format": "tar"}, FormatError),
        ({"extra": 1}, FormatError),
        ({"created_us": -1}, FormatError),
        ({"created_us": "1"}, FormatError),
        ({"producer": "hub"}, FormatError),
        ({"kind": "backup"}, FormatError),
        ({"vault": "a.b"}, FormatError),
        ({"signer": "00"}, FormatError),
        ({"signer": "ZZ" * 32}, FormatError),
    ],
)
def test_bad_headers_are_refused(change: dict, error: type[AmberError]) -> None:
    obj = {**json.loads(HEADER.encode()), **change}
    with pytest.raises(error):
        b.decode_header(json.dumps(obj).encode())


@pytest.mark.parametrize(
    "text",
    [b"", b"\xff", b"[" * 100_000, b'{"format": NaN}', b'{"a":1,"a":2}', b"1e999999", b"[]"],
)
def test_malformed_json_is_a_format_error(text: bytes) -> None:
    with pytest.raises(FormatError):
        b.decode_header(text)


def test_member_names() -> None:
    assert b.member_role("records/" + "ab" * 32) == ("record", bytes.fromhex("ab" * 32))
    assert b.member_role("order") == ("order", b"")
    for name in ("records/" + "AB" * 32, "chunks/x", "../order", "amber-bundle/OTHER", ""):
        with pytest.raises(FormatError):
            b.member_role(name)


# --- order, index and signature -----------------------------------------------------


def test_a_minimal_bundle_reads() -> None:
    summary = read(bundle([]))
    assert (summary["kind"], summary["members"], summary["signature"]) == (
        "node-export",
        3,
        "valid",
    )


def _drop(name: str) -> Callable[[list[tuple[str, bytes]]], None]:
    def edit(members: list[tuple[str, bytes]]) -> None:
        members[:] = [m for m in members if m[0] != name]

    return edit


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (_drop(b.INDEX_NAME), FormatError, "before its INDEX"),
        (_drop(b.SIGNATURE_NAME), IntegrityError, "truncated"),
        (_drop(b.HEADER_NAME), FormatError, "not an Amber bundle"),
        (lambda m: m.append((b.ORDER_NAME, b"x")), FormatError, "follows the SIGNATURE"),
        (lambda m: m.insert(1, (b.ORDER_NAME, b"x")), FormatError, "cannot hold"),
        (lambda m: m.insert(1, ("notes.txt", b"x")), FormatError, "not part of"),
        (lambda m: m.insert(1, (b.HEADER_NAME, HEADER.encode())), FormatError, "cannot hold"),
        (lambda m: m.insert(-1, (b.INDEX_NAME, m[-2][1])), FormatError, "follows the INDEX"),
        (lambda m: m.__setitem__(0, (m[0][0], m[0][1] + b" ")), IntegrityError, "another bundle"),
    ],
)
def test_members_out_of_place_are_refused(
    edit: Callable[[list[tuple[str, bytes]]], None], error: type[AmberError], words: str
) -> None:
    with pytest.raises(error, match=words):
        read(bundle([], edit=edit))


def test_a_member_the_index_does_not_list_is_refused() -> None:
    def sneak(members: list[tuple[str, bytes]]) -> None:
        members.insert(
            1, ("chunks/" + "00" * 32, b"AMBC\x01\x00\x00\x00\x00\x00\x00\x00" + bytes(16))
        )

    with pytest.raises(IntegrityError, match="does not match the INDEX"):
        read(bundle([], edit=sneak))


def test_a_record_under_another_id_is_refused() -> None:
    with pytest.raises(IntegrityError, match="damaged"):
        read(bundle([("records/" + "00" * 32, b"AMBR")]))


def test_signatures() -> None:
    with pytest.raises(SignatureError, match="another key"):
        read(bundle([], signer=OTHER))
    forged = b.BundleHeader(b.NODE_EXPORT, "v1", "n1", 1, OTHER.public)
    with pytest.raises(SignatureError, match="does not verify"):
        read(bundle([], header=forged, edit=lambda m: m.__setitem__(-1, _resigned(m))))


def _resigned(members: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """A SIGNATURE that names the header's key but was made by another one."""
    obj = json.loads(b.encode_signature(HUB, members[-2][1]))
    obj["signer"] = OTHER.public.hex()
    return b.SIGNATURE_NAME, json.dumps(obj).encode()


# --- the tar layer ------------------------------------------------------------------


def test_only_regular_ustar_files_are_read() -> None:
    with pytest.raises(FormatError, match="regular files only"):
        read(tar([(b.HEADER_NAME, HEADER.encode())], kind=tarfile.SYMTYPE))
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(b.HEADER_NAME)
        info.pax_headers = {"comment": "x"}
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(FormatError, match="regular files only"):
        read(pax.getvalue())


def test_a_member_over_its_limit_is_refused_before_it_is_read() -> None:
    block = bytearray(tar([(b.HEADER_NAME, b"")])[:512])
    block[124:136] = b"%011o\0" % (b.MAX_HEADER_SIZE + 1)
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    with pytest.raises(FormatError, match="over its limit"):
        read(bytes(block))
