"""Bundles: checkpoints, manifests and chunks in one signed, streamable tar file.

Pure codecs and checks, no I/O: the JSON header, index, signature and receipt
members, the member names and their size limits, and :class:`BundleVerifier`, the
state machine that a reader feeds every member to, front to back, and that checks
their order, their content, the index and the signature. Reading and writing the tar
container is :mod:`amber.bundlefile`'s job. Layout in docs/FORMAT.md ("Bundle").
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import blake3

from amber.protocol import wire
from amber.protocol.chunk import (
    FLAG_ZSTD,
    MAX_CHUNK_SIZE,
    blob_overhead,
    parse_chunk_header,
)
from amber.protocol.codec import index_limit
from amber.protocol.errors import (
    FormatError,
    IntegrityError,
    ProtocolError,
    SignatureError,
    UnknownVersionError,
)
from amber.protocol.keys import SigningKey, verify_signature
from amber.protocol.records import (
    KIND_CHECKPOINT,
    KIND_PART,
    MAX_RECORD_SIZE,
    Checkpoint,
    checkpoint_public,
    manifest_public,
    parse,
    part_public,
    record_id,
)

BUNDLE_FORMAT = "amber-bundle"
INDEX_FORMAT = "amber-bundle-index"
SIGNATURE_FORMAT = "amber-bundle-signature"
RECEIPT_FORMAT = "amber-bundle-receipt"
BUNDLE_VERSION = 1
HUB_EXPORT, NODE_EXPORT, RECEIPT = "hub-export", "node-export", "receipt"
PRODUCERS = {HUB_EXPORT: "hub", NODE_EXPORT: "node", RECEIPT: "node"}
HEADER_NAME = "amber-bundle/BUNDLE"
INDEX_NAME = "amber-bundle/INDEX"
SIGNATURE_NAME = "amber-bundle/SIGNATURE"
ORDER_NAME = "order"
RECEIPT_NAME = "receipt.json"
RECORD_DIR, CHUNK_DIR = "records/", "chunks/"
MAX_HEADER_SIZE = 64 * 1024
MAX_ORDER_SIZE = 64 * 1024
MAX_RECEIPT_SIZE = 64 * 1024
MAX_SIGNATURE_SIZE = 4 * 1024
MAX_CHUNK_MEMBER = MAX_CHUNK_SIZE + 64 * 1024  # a zstd frame may outgrow its plaintext a little
MAX_MEMBERS = 1_000_000
MAX_INDEX_SIZE = 192 * 1024 * 1024
OUTCOMES = ("imported", "executed", "replayed", "refused")
JOB_STATES = (*wire.REPORT_STATES, "swapping", "cancelled")  # agent/restore/jobs.py's states
INT64_MAX = 2**63 - 1

# role of a member -> its size limit in bytes
LIMITS = {"header": MAX_HEADER_SIZE, "record": MAX_RECORD_SIZE, "chunk": MAX_CHUNK_MEMBER}
LIMITS |= {"order": MAX_ORDER_SIZE, "receipt": MAX_RECEIPT_SIZE}
LIMITS |= {"index": MAX_INDEX_SIZE, "signature": MAX_SIGNATURE_SIZE}
# which content members each kind of bundle may hold
ALLOWED = {HUB_EXPORT: ("record", "chunk", "order"), NODE_EXPORT: ("record", "chunk")}
ALLOWED[RECEIPT] = ("receipt",)
_FIXED = {HEADER_NAME: "header", INDEX_NAME: "index", SIGNATURE_NAME: "signature"}
_FIXED |= {ORDER_NAME: "order", RECEIPT_NAME: "receipt"}
_HEX_ID = re.compile(r"[0-9a-f]{64}")


def digest(data: bytes) -> bytes:
    """BLAKE3 of a member's bytes, as the INDEX lists it."""
    return blake3.blake3(data).digest()


def member_role(name: str) -> tuple[str, bytes]:
    """``(role, id)`` of a member name; the id only for records and chunks."""
    role = _FIXED.get(name)
    if role is not None:
        return role, b""
    for prefix, kind in ((RECORD_DIR, "record"), (CHUNK_DIR, "chunk")):
        if name.startswith(prefix) and _HEX_ID.fullmatch(name[len(prefix) :]):
            return kind, bytes.fromhex(name[len(prefix) :])
    raise FormatError(f"bundle member {name[:80]!r} is not part of the bundle format")


def plan_id_for(bundle_id: bytes) -> str:
    """The restore plan id of the order a hub-export bundle carries."""
    return "bundle-" + bundle_id.hex()[:12]


# --- JSON members -------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise FormatError("JSON object has a duplicate key")
    return out


def _refuse_constant(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed")


def load_json(data: bytes, what: str, fmt: str, fields: dict[str, type]) -> dict[str, Any]:
    """A closed JSON object: ``format`` = ``fmt``, ``version`` 1, exactly ``fields``."""
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise FormatError(f"{what} is not an Amber {fmt} document")
    version = obj.get("version")
    if type(version) is not int or version != BUNDLE_VERSION:
        raise UnknownVersionError(f"{what} version {version!r} is not supported")
    expected = {"format", "version", *fields}
    if set(obj) != expected:
        odd = sorted(set(obj) ^ expected)
        raise FormatError(f"{what}: missing or unknown field(s) {', '.join(odd)}")
    for key, typ in fields.items():
        value = obj[key]
        if type(value) is not typ:  # bool is not int, int is not str
            raise FormatError(f"{what}.{key}: expected {typ.__name__}")
        if typ is int and not 0 <= value <= INT64_MAX:
            raise FormatError(f"{what}.{key}: {value} is out of range")
    return obj


def dump_json(fmt: str, fields: dict[str, Any]) -> bytes:
    obj = {"format": fmt, "version": BUNDLE_VERSION, **fields}
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def _plain(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _hex(value: str, what: str, size: int | None = 32) -> bytes:
    if value == "" and size is None:
        return b""
    if not re.fullmatch(r"[0-9a-f]*", value) or len(value) % 2:
        raise FormatError(f"{what} is not lowercase hex")
    raw = bytes.fromhex(value)
    if size is not None and len(raw) != size:
        raise FormatError(f"{what} has {len(raw)} bytes, expected {size}")
    return raw


# --- header -----------------------------------------------------------------------


@dataclass(frozen=True)
class BundleHeader:
    """The first member: what the bundle is, for whom, and which key signs it."""

    kind: str
    vault: str
    node: str
    created_us: int
    signer: bytes

    @property
    def producer(self) -> str:
        return PRODUCERS[self.kind]

    def encode(self) -> bytes:
        return dump_json(BUNDLE_FORMAT, {k: _plain(getattr(self, k)) for k in _HEADER_FIELDS})


_HEADER_FIELDS = {"kind": str, "vault": str, "node": str, "created_us": int}
_HEADER_FIELDS |= {"producer": str, "signer": str}


def decode_header(data: bytes) -> BundleHeader:
    obj = load_json(data, "bundle header", BUNDLE_FORMAT, _HEADER_FIELDS)
    if obj["kind"] not in PRODUCERS or obj["producer"] != PRODUCERS[obj["kind"]]:
        raise FormatError(f"bundle kind {obj['kind']!r} / producer {obj['producer']!r} unknown")
    return BundleHeader(
        kind=obj["kind"],
        vault=wire.check_name(obj["vault"], "vault"),
        node=wire.check_name(obj["node"], "node"),
        created_us=obj["created_us"],
        signer=_hex(obj["signer"], "bundle header signer"),
    )


# --- index and signature --------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    name: str
    size: int
    digest: bytes


@dataclass(frozen=True)
class BundleIndex:
    """Every member before the INDEX, in order; ``bundle`` = BLAKE3 of the header bytes."""

    bundle: bytes
    entries: tuple[IndexEntry, ...]


def encode_index(index: BundleIndex) -> bytes:
    members = [[e.name, e.size, e.digest.hex()] for e in index.entries]
    return dump_json(INDEX_FORMAT, {"bundle": index.bundle.hex(), "members": members})


def decode_index(data: bytes) -> BundleIndex:
    obj = load_json(data, "bundle INDEX", INDEX_FORMAT, {"bundle": str, "members": list})
    if len(obj["members"]) > MAX_MEMBERS:
        raise FormatError(f"bundle INDEX lists more than {MAX_MEMBERS} members")
    entries = []
    for i, item in enumerate(obj["members"]):
        ok = isinstance(item, list) and len(item) == 3
        if not ok or type(item[0]) is not str or type(item[1]) is not int or item[1] < 0:
            raise FormatError(f"bundle INDEX entry {i} is not [name, size, digest]")
        if type(item[2]) is not str:
            raise FormatError(f"bundle INDEX entry {i}: digest is not a string")
        entries.append(IndexEntry(item[0], item[1], _hex(item[2], f"INDEX entry {i} digest")))
    return BundleIndex(_hex(obj["bundle"], "bundle INDEX header digest"), tuple(entries))


def encode_signature(signer: SigningKey, index_bytes: bytes) -> bytes:
    sig = {"signer": signer.public.hex(), "signature": signer.sign(index_bytes).hex()}
    return dump_json(SIGNATURE_FORMAT, {"algorithm": "ed25519", **sig})


def decode_signature(data: bytes) -> tuple[bytes, bytes]:
    """``(signer public key, signature)`` of a SIGNATURE member."""
    fields = {"algorithm": str, "signer": str, "signature": str}
    obj = load_json(data, "bundle SIGNATURE", SIGNATURE_FORMAT, fields)
    if obj["algorithm"] != "ed25519":
        raise FormatError(f"bundle signature algorithm {obj['algorithm']!r} is unknown")
    return _hex(obj["signer"], "bundle signer"), _hex(obj["signature"], "bundle signature", 64)


# --- receipts -----------------------------------------------------------------------


@dataclass(frozen=True)
class BundleReceipt:
    """What a node did with a hub-export bundle (the ``receipt.json`` member)."""

    bundle: bytes  # header digest of the bundle answered; empty if it was unreadable
    outcome: str  # imported, executed, replayed, refused
    order_id: str
    plan_id: str
    state: str  # the restore job's state; empty without an executed order
    detail: str
    safety: bytes  # the safety checkpoint's id, or empty
    checkpoint: bytes  # the restore point, or empty
    added: int  # checkpoints the import added to the journal
    error: str  # the error class that refused the bundle or the order, or empty
    exit_code: int
    time_us: int

    def encode(self) -> bytes:
        return dump_json(RECEIPT_FORMAT, {k: _plain(getattr(self, k)) for k in _RECEIPT_FIELDS})


_RECEIPT_FIELDS = dict.fromkeys(("bundle", "outcome", "order_id", "plan_id", "state"), str)
_RECEIPT_FIELDS |= {"detail": str, "safety": str, "checkpoint": str, "added": int}
_RECEIPT_FIELDS |= {"error": str, "exit_code": int, "time_us": int}


def decode_receipt(data: bytes) -> BundleReceipt:
    obj = load_json(data, "bundle receipt", RECEIPT_FORMAT, _RECEIPT_FIELDS)
    if obj["outcome"] not in OUTCOMES:
        raise FormatError(f"receipt outcome {obj['outcome']!r} is unknown")
    if obj["state"] and obj["state"] not in JOB_STATES:
        raise FormatError(f"receipt state {obj['state']!r} is unknown")
    for key in ("bundle", "safety", "checkpoint"):
        obj[key] = _hex(obj[key], f"receipt {key}", None)
        if len(obj[key]) not in (0, 32):
            raise FormatError(f"receipt {key} is not a 32-byte id")
    del obj["format"], obj["version"]
    return BundleReceipt(**obj)


# --- reading a bundle member by member --------------------------------------------


@dataclass(frozen=True)
class Member:
    """A content member that passed its checks (parsed where the format allows)."""

    name: str
    role: str  # record, chunk, order, receipt
    id: bytes
    data: bytes
    checkpoint: Checkpoint | None = None  # public part of a checkpoint record
    manifest: dict[str, Any] | None = None  # public part of a manifest record
    part: dict[str, Any] | None = None  # public part of a manifest part (record version 2)
    order: wire.RestoreOrder | wire.RestoreOrderV1 | None = None
    receipt: BundleReceipt | None = None


class BundleVerifier:
    """Fed every member in archive order; raises on the first thing that is wrong.

    Only after :meth:`finish` returned is the bundle known to be complete, unaltered
    and signed by ``header.signer``; whether that key is trusted is the caller's call.
    """

    def __init__(self) -> None:
        self.header: BundleHeader | None = None
        self.bundle_id = b""
        self.index: BundleIndex | None = None
        self._entries: list[IndexEntry] = []
        self._names: set[str] = set()
        self._index_bytes = b""
        self._phase = "header"  # header, content, tail, signature, done

    def limit(self, name: str) -> int:
        """The most bytes member ``name`` may have (checked before reading it)."""
        role, _ = member_role(name)
        if len(self._entries) >= MAX_MEMBERS + 1:
            raise FormatError(f"bundle has more than {MAX_MEMBERS} members")
        if role == "index":  # it lists the members read so far, so it is bounded by them
            return min(LIMITS[role], index_limit(len(self._entries)))
        return LIMITS[role]

    def feed(self, name: str, data: bytes) -> Member | None:
        role, oid = member_role(name)
        most = self.limit(name)
        if len(data) > most:
            raise FormatError(f"bundle member {name} is over its {most}-byte limit")
        if self._phase == "done":
            raise FormatError(f"bundle member {name} follows the SIGNATURE")
        if self._phase == "header":
            if role != "header":
                raise FormatError(
                    f"not an Amber bundle: it starts with {name!r}, not {HEADER_NAME}"
                )
            self.header = decode_header(data)
            self.bundle_id = digest(data)
            self._keep(name, data)
            self._phase = "content"
            return None
        if role == "signature":
            self._signature(data)
            return None
        if self._phase == "signature":
            raise FormatError(f"bundle member {name} follows the INDEX")
        if role == "index":
            self._index(data)
            return None
        return self._content(role, oid, name, data)

    def finish(self) -> BundleIndex:
        """The verified index, once the archive ended; raises if the bundle is cut short."""
        if self._phase != "done" or self.index is None:
            missing = "SIGNATURE" if self._phase == "signature" else "INDEX and SIGNATURE"
            raise IntegrityError(f"the bundle is truncated: it ends before its {missing}")
        return self.index

    # -- internals
    def _keep(self, name: str, data: bytes) -> None:
        if name in self._names:
            raise IntegrityError(f"bundle member {name} appears twice")
        self._names.add(name)
        self._entries.append(IndexEntry(name, len(data), digest(data)))

    def _content(self, role: str, oid: bytes, name: str, data: bytes) -> Member:
        assert self.header is not None
        if role not in ALLOWED[self.header.kind] or role == "header":
            raise FormatError(f"a {self.header.kind} bundle cannot hold member {name}")
        if self._phase == "tail":
            raise FormatError(f"bundle member {name} follows the {ORDER_NAME}/{RECEIPT_NAME}")
        with _damaged(f"bundle member {name}"):
            member = _check_content(self.header, self.bundle_id, role, oid, name, data)
        self._keep(name, data)
        if role in ("order", "receipt"):
            self._phase = "tail"
        return member

    def _index(self, data: bytes) -> None:
        assert self.header is not None
        if self.header.kind == RECEIPT and RECEIPT_NAME not in self._names:
            raise FormatError(f"a receipt bundle lacks its {RECEIPT_NAME}")
        with _damaged("the bundle INDEX"):
            index = decode_index(data)
        if index.bundle != self.bundle_id:
            raise IntegrityError("the bundle INDEX names another bundle header")
        seen = tuple(self._entries)
        if index.entries != seen:
            bad = next(
                (a.name for a, b in zip(seen, index.entries, strict=False) if a != b),
                "the member list",
            )
            raise IntegrityError(f"bundle member {bad} does not match the INDEX")
        self.index, self._index_bytes, self._phase = index, data, "signature"

    def _signature(self, data: bytes) -> None:
        assert self.header is not None
        if self._phase != "signature":
            raise FormatError("the bundle SIGNATURE comes before its INDEX")
        with _damaged("the bundle SIGNATURE"):
            signer, sig = decode_signature(data)
        if signer != self.header.signer:
            raise SignatureError("the bundle SIGNATURE is by another key than its header names")
        try:
            verify_signature(signer, sig, self._index_bytes)
        except SignatureError:
            raise SignatureError(
                f"the bundle signature does not verify under {signer.hex()[:16]}"
            ) from None
        self._phase = "done"


@contextlib.contextmanager
def _damaged(what: str) -> Iterator[None]:
    """Bytes that fail their format inside a bundle: the bundle is damaged."""
    try:
        yield
    except UnknownVersionError:
        raise
    except (FormatError, ProtocolError) as exc:
        raise IntegrityError(f"{what} is damaged: {exc}") from None


def _check_content(
    header: BundleHeader, bundle_id: bytes, role: str, oid: bytes, name: str, data: bytes
) -> Member:
    if role == "record":
        return _check_record(header, oid, name, data)
    if role == "chunk":
        flags, n = parse_chunk_header(data)
        if not flags & FLAG_ZSTD and len(data) != blob_overhead(data) + n:
            raise FormatError(f"raw chunk blob has {len(data)} bytes for {n} bytes of plaintext")
        return Member(name, role, oid, data)
    if role == "order":
        signed = wire.decode(data, wire.SignedOrder)
        assert isinstance(signed, wire.SignedOrder)
        order = wire.open_order(signed, header.signer)
        target = (order.vault, order.node, order.action, order.plan_id)
        if target != (header.vault, header.node, "restore", plan_id_for(bundle_id)):
            raise FormatError("the carried order is not this bundle's restore order")
        return Member(name, role, b"", data, order=order)
    return Member(name, role, b"", data, receipt=decode_receipt(data))


def _check_record(header: BundleHeader, oid: bytes, name: str, data: bytes) -> Member:
    if record_id(data) != oid:
        raise FormatError("record bytes do not hash to the record id in its name")
    raw = parse(data)
    if raw.kind == KIND_CHECKPOINT:
        cp = checkpoint_public(data)
        owner, member = (cp.vault, cp.node), Member(name, "record", oid, data, checkpoint=cp)
    elif raw.kind == KIND_PART:
        pub = part_public(data)
        owner, member = (pub["vault"], pub["node"]), Member(name, "record", oid, data, part=pub)
    else:
        pub = manifest_public(data)
        owner, member = (pub["vault"], pub["node"]), Member(name, "record", oid, data, manifest=pub)
    if owner != (header.vault, header.node):
        raise FormatError(
            f"record of {owner[0]}/{owner[1]} in a bundle for {header.vault}/{header.node}"
        )
    return member
