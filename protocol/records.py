"""Signed, encrypted records: manifests and checkpoints.

A record is a container with a public part (what the hub needs to index and check
it: ids, sizes, sequence numbers, times, chunk references) and a sealed part
(AES-256-GCM under the vault's metadata key: paths, digests, lineage), signed by
the node's Ed25519 key. Its id is the BLAKE3 hash of its bytes; a checkpoint's
public part names the id of the node's previous checkpoint, forming a hash chain.
Encoding is deterministic (the nonce is derived from the content). Layout in
docs/FORMAT.md ("Record").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amber.protocol import codec as c
from amber.protocol.errors import (
    ChainError,
    FormatError,
    IntegrityError,
    SignatureError,
    UnknownVersionError,
)
from amber.protocol.keys import SigningKey, VaultKeys, verify_signature

RECORD_MAGIC = b"AMBR"
RECORD_VERSION = 1
HEAD = struct.Struct(">4sBBHI")  # magic, version, kind, flags, public length
KIND_MANIFEST = 1
KIND_CHECKPOINT = 2
KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_CHECKPOINT: "checkpoint"}
MAX_RECORD_SIZE = 64 * 1024 * 1024
NONCE_SIZE = 12
SIG_SIZE = 64
PUB_SIZE = 32
SOURCE_KINDS = ("sqlite", "files", "model", "jsonl", "state")
TIERS = ("hot", "warm", "cold")
ENTRY_TYPES = ("f", "d", "l")


def record_id(data: bytes) -> bytes:
    """The id of a record: BLAKE3 of all its bytes (no key: anyone can check it)."""
    return blake3.blake3(data).digest()


@dataclass(frozen=True)
class RawRecord:
    """A record whose framing and signature were checked, not yet decrypted."""

    id: bytes
    kind: int
    public: dict[str, Any]
    aad: bytes
    nonce: bytes
    ciphertext: bytes
    signer: bytes


def seal(
    kind: int, public: dict[str, Any], sealed: dict[str, Any], keys: VaultKeys, signer: SigningKey
) -> bytes:
    """Encode, encrypt and sign a record."""
    pub = c.pack(public)
    head = HEAD.pack(RECORD_MAGIC, RECORD_VERSION, kind, 0, len(pub)) + pub
    plain = c.pack(sealed)
    nonce = blake3.blake3(head + plain, key=keys.meta_nonce).digest(NONCE_SIZE)
    ct = AESGCM(keys.meta_enc).encrypt(nonce, plain, head)
    body = head + nonce + struct.pack(">I", len(ct)) + ct + signer.public
    return body + signer.sign(body)


def parse(data: bytes, *, expect_kind: int | None = None) -> RawRecord:
    """Check framing and the embedded signature; return the still-sealed record."""
    data = bytes(data)
    n = len(data)
    if n > MAX_RECORD_SIZE:
        raise FormatError(f"record of {n} bytes exceeds the {MAX_RECORD_SIZE}-byte limit")
    if n < HEAD.size:
        raise FormatError(f"record truncated: {n} bytes is shorter than its header")
    magic, version, kind, flags, pub_len = HEAD.unpack_from(data)
    if magic != RECORD_MAGIC:
        raise FormatError("not an Amber record (bad magic)")
    if version != RECORD_VERSION:
        raise UnknownVersionError(f"record version {version} is not supported")
    if kind not in KIND_NAMES or flags:
        raise FormatError(f"record has unknown kind {kind} or flags {flags:#x}")
    if expect_kind is not None and kind != expect_kind:
        raise FormatError(f"expected a {KIND_NAMES[expect_kind]}, got a {KIND_NAMES[kind]}")
    ct_at = HEAD.size + pub_len + NONCE_SIZE + 4
    if n < ct_at + PUB_SIZE + SIG_SIZE:
        raise FormatError("record truncated")
    (ct_len,) = struct.unpack_from(">I", data, ct_at - 4)
    if n != ct_at + ct_len + PUB_SIZE + SIG_SIZE:
        raise FormatError("record truncated or has trailing bytes")
    signer = data[ct_at + ct_len : ct_at + ct_len + PUB_SIZE]
    verify_signature(signer, data[-SIG_SIZE:], data[:-SIG_SIZE])
    public = c.unpack(
        data[HEAD.size : HEAD.size + pub_len], what="record", max_size=n, limits=c.RECORD_LIMITS
    )
    if not isinstance(public, dict):
        raise FormatError("record public part is not a map")
    return RawRecord(
        id=record_id(data),
        kind=kind,
        public=public,
        aad=data[: HEAD.size + pub_len],
        nonce=data[HEAD.size + pub_len : HEAD.size + pub_len + NONCE_SIZE],
        ciphertext=data[ct_at : ct_at + ct_len],
        signer=signer,
    )


def unseal(raw: RawRecord, keys: VaultKeys) -> dict[str, Any]:
    try:
        plain = AESGCM(keys.meta_enc).decrypt(raw.nonce, raw.ciphertext, raw.aad)
    except InvalidTag:
        raise IntegrityError(
            f"{KIND_NAMES[raw.kind]} {raw.id.hex()[:16]} does not decrypt under vault key "
            f"{keys.fingerprint}",
            hint="configure the vault key this node's data was written with",
        ) from None
    sealed = c.unpack(plain, what="record", max_size=MAX_RECORD_SIZE, limits=c.RECORD_LIMITS)
    if not isinstance(sealed, dict):
        raise FormatError("record sealed part is not a map")
    return sealed


def check_signer(raw: RawRecord, trusted: bytes | set[bytes] | None) -> None:
    if trusted is None:
        return
    allowed = {trusted} if isinstance(trusted, bytes) else trusted
    if raw.signer not in allowed:
        raise SignatureError(
            f"{KIND_NAMES[raw.kind]} {raw.id.hex()[:16]} is signed by an untrusted key "
            f"{raw.signer.hex()[:16]}"
        )


# --- manifests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink of a source. ``chunks`` = [(chunk id, length)]."""

    path: str
    type: str = "f"
    mode: int = 0o644
    size: int = 0
    mtime_ns: int = 0
    digest: bytes | None = None
    chunks: tuple[tuple[bytes, int], ...] = ()
    target: str = ""

    def to_obj(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "digest": self.digest,
            "chunks": [[cid, n] for cid, n in self.chunks],
            "target": self.target,
        }

    @classmethod
    def from_obj(cls, obj: Any, path: str) -> Entry:
        f = c.fields(obj, path, _ENTRY_SPEC)
        if f["type"] not in ENTRY_TYPES:
            raise FormatError(f"{path}.type: unknown entry type {f['type']!r}")
        chunks = tuple(_chunk_ref(x, f"{path}.chunks[{i}]") for i, x in enumerate(f["chunks"]))
        if f["type"] == "f" and sum(n for _, n in chunks) != f["size"]:
            raise FormatError(f"{path}: chunk lengths do not add up to the file size")
        return cls(**{**f, "chunks": chunks})


def _chunk_ref(obj: Any, path: str) -> tuple[bytes, int]:
    if not isinstance(obj, list) or len(obj) != 2:
        raise FormatError(f"{path}: expected [chunk id, length]")
    return c.is_id(obj[0], path), c.is_uint(obj[1], path)


_ENTRY_SPEC: dict[str, c.Check] = {
    "path": c.is_str,
    "type": c.is_str,
    "mode": c.int_in(0, c.MAX_MODE),
    "size": c.is_uint,
    "mtime_ns": c.is_int,
    "digest": c.optional(c.is_bytes),
    "chunks": c.list_of(c.is_any),
    "target": c.is_str,
}


@dataclass(frozen=True)
class Manifest:
    """One source at one moment."""

    vault: str
    node: str
    source: str
    kind: str
    tier: str
    time_us: int
    entries: tuple[Entry, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    parent: bytes | None = None

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def chunk_ids(self) -> list[bytes]:
        """Every distinct chunk id the manifest needs, sorted."""
        return sorted({cid for e in self.entries for cid, _ in e.chunks})

    def public(self) -> dict[str, Any]:
        return {
            "vault": self.vault,
            "node": self.node,
            "source": self.source,
            "kind": self.kind,
            "tier": self.tier,
            "time_us": self.time_us,
            "parent": self.parent,
            "size": self.size,
            "chunks": self.chunk_ids(),
        }

    def sealed(self) -> dict[str, Any]:
        return {
            "entries": [e.to_obj() for e in self.entries],
            "meta": dict(sorted(self.meta.items())),
            "lineage": dict(sorted(self.lineage.items())),
        }


_MANIFEST_PUBLIC: dict[str, c.Check] = {
    "vault": c.is_str,
    "node": c.is_str,
    "source": c.is_str,
    "kind": c.is_str,
    "tier": c.is_str,
    "time_us": c.int_in(0, c.MAX_TIME_US),
    "parent": c.optional(c.is_id),
    "size": c.is_uint,
    "chunks": c.list_of(c.is_id),
}
_MANIFEST_SEALED: dict[str, c.Check] = {
    "entries": c.list_of(c.is_any),
    "meta": c.dict_of(c.is_any),
    "lineage": c.dict_of(c.is_str),
}


def encode_manifest(m: Manifest, keys: VaultKeys, signer: SigningKey) -> bytes:
    return seal(KIND_MANIFEST, m.public(), m.sealed(), keys, signer)


def decode_manifest(
    data: bytes, keys: VaultKeys, *, trusted: bytes | set[bytes] | None = None
) -> Manifest:
    raw = parse(data, expect_kind=KIND_MANIFEST)
    check_signer(raw, trusted)
    pub = c.fields(raw.public, "manifest", _MANIFEST_PUBLIC)
    sealed = c.fields(unseal(raw, keys), "manifest", _MANIFEST_SEALED)
    if pub["kind"] not in SOURCE_KINDS or pub["tier"] not in TIERS:
        raise FormatError(f"manifest: unknown source kind {pub['kind']!r} or tier {pub['tier']!r}")
    entries = tuple(
        Entry.from_obj(e, f"manifest.entries[{i}]") for i, e in enumerate(sealed["entries"])
    )
    m = Manifest(
        vault=pub["vault"],
        node=pub["node"],
        source=pub["source"],
        kind=pub["kind"],
        tier=pub["tier"],
        time_us=pub["time_us"],
        entries=entries,
        meta=sealed["meta"],
        lineage=sealed["lineage"],
        parent=pub["parent"],
    )
    if m.chunk_ids() != pub["chunks"] or m.size != pub["size"]:
        raise IntegrityError("manifest: public chunk list or size disagrees with its entries")
    return m


def manifest_public(data: bytes) -> dict[str, Any]:
    """What the hub may read of a manifest without the vault key (signature checked)."""
    return c.fields(parse(data, expect_kind=KIND_MANIFEST).public, "manifest", _MANIFEST_PUBLIC)


# --- checkpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One node at one moment: its source manifests, chained to the previous checkpoint."""

    vault: str
    node: str
    seq: int
    prev: bytes | None
    time_us: int
    manifests: dict[str, bytes]
    labels: dict[str, str] = field(default_factory=dict)
    kind: str = "regular"  # or "safety": taken before a restore overwrote anything
    note: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "vault": self.vault,
            "node": self.node,
            "seq": self.seq,
            "prev": self.prev,
            "time_us": self.time_us,
            "manifests": dict(sorted(self.manifests.items())),
            "labels": dict(sorted(self.labels.items())),
            "kind": self.kind,
        }


_CHECKPOINT_PUBLIC: dict[str, c.Check] = {
    "vault": c.is_str,
    "node": c.is_str,
    "seq": c.is_uint,
    "prev": c.optional(c.is_id),
    "time_us": c.int_in(0, c.MAX_TIME_US),
    "manifests": c.dict_of(c.is_id),
    "labels": c.dict_of(c.is_str),
    "kind": c.is_str,
}
CHECKPOINT_KINDS = ("regular", "safety")


def encode_checkpoint(cp: Checkpoint, keys: VaultKeys, signer: SigningKey) -> bytes:
    if (cp.seq == 0) != (cp.prev is None):
        raise ChainError("only the first checkpoint (seq 0) may lack a previous checkpoint")
    return seal(KIND_CHECKPOINT, cp.public(), {"note": cp.note}, keys, signer)


def _checkpoint_from_public(pub: dict[str, Any], note: str) -> Checkpoint:
    if pub["kind"] not in CHECKPOINT_KINDS:
        raise FormatError(f"checkpoint: unknown kind {pub['kind']!r}")
    if (pub["seq"] == 0) != (pub["prev"] is None):
        raise ChainError("checkpoint: seq 0 must have no previous checkpoint, others must")
    return Checkpoint(note=note, **pub)


def checkpoint_public(data: bytes, *, trusted: bytes | set[bytes] | None = None) -> Checkpoint:
    """Decode a checkpoint without the vault key (the hub's view; ``note`` is empty)."""
    raw = parse(data, expect_kind=KIND_CHECKPOINT)
    check_signer(raw, trusted)
    return _checkpoint_from_public(c.fields(raw.public, "checkpoint", _CHECKPOINT_PUBLIC), "")


def decode_checkpoint(
    data: bytes, keys: VaultKeys, *, trusted: bytes | set[bytes] | None = None
) -> Checkpoint:
    raw = parse(data, expect_kind=KIND_CHECKPOINT)
    check_signer(raw, trusted)
    pub = c.fields(raw.public, "checkpoint", _CHECKPOINT_PUBLIC)
    sealed = c.fields(unseal(raw, keys), "checkpoint", {"note": c.is_str})
    return _checkpoint_from_public(pub, sealed["note"])


def check_chain(prev_id: bytes | None, prev_seq: int | None, cp: Checkpoint) -> None:
    """Raise :class:`ChainError` unless ``cp`` directly follows the given checkpoint."""
    expected_seq = 0 if prev_seq is None else prev_seq + 1
    if cp.seq != expected_seq or cp.prev != prev_id:
        raise ChainError(
            f"checkpoint seq {cp.seq} of node {cp.node} does not follow seq {prev_seq} "
            f"({(prev_id or b'').hex()[:16] or 'none'})"
        )
