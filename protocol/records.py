"""Signed, encrypted records: manifests and checkpoints.

A record is a container with a public part (what the hub needs to index and check
it: ids, sizes, sequence numbers, times, chunk references) and a sealed part
(AES-256-GCM under the vault's metadata key: paths, digests, lineage), signed by
the node's Ed25519 key. Its id is the BLAKE3 hash of its bytes; a checkpoint's
public part names the id of the node's previous checkpoint, forming a hash chain.
Encoding is deterministic (the nonce is derived from the content). Layout in
docs/FORMAT.md ("Record").

Version 2 (docs/FORMAT.md, "Manifest parts") splits a manifest too large for one NATS
message into a head record and manifest part records: each part carries a run of
entries (sealed) and their chunk ids (public); the signed head lists the parts' ids,
so a part cannot be swapped, dropped or reordered without breaking the head's
signature. Manifests that fit ``INLINE_LIMIT`` are still written as version 1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
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
from amber.protocol.wire import check_name

RECORD_MAGIC = b"AMBR"
RECORD_VERSION = 1  # what checkpoints and small manifests are written as
PARTS_VERSION = 2  # manifest heads and manifest parts (a manifest over INLINE_LIMIT)
VERSIONS = (RECORD_VERSION, PARTS_VERSION)
HEAD = struct.Struct(">4sBBHI")  # magic, version, kind, flags, public length
KIND_MANIFEST = 1
KIND_CHECKPOINT = 2
KIND_PART = 3  # version 2 only
KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_CHECKPOINT: "checkpoint", KIND_PART: "manifest part"}
INLINE_LIMIT = 4 * 1024 * 1024
"""A manifest whose packed public and sealed parts exceed this is written as parts."""
PART_TARGET = 2 * 1024 * 1024
"""Packed entries per manifest part (a part is cut before the entry that would cross it)."""
MAX_RECORD_SIZE = 64 * 1024 * 1024
NONCE_SIZE = 12
SIG_SIZE = 64
PUB_SIZE = 32
SOURCE_KINDS = ("sqlite", "files", "model", "jsonl", "state")
TIERS = ("hot", "warm", "cold")
ENTRY_TYPES = ("f", "d", "l")
MAX_MODE = 0o7777  # permission bits only (restore keeps just 0o777 of them)


def record_id(data: bytes) -> bytes:
    """The id of a record: BLAKE3 of all its bytes (no key: anyone can check it)."""
    return blake3.blake3(data).digest()


@dataclass(frozen=True)
class RawRecord:
    """A record whose framing and signature were checked, not yet decrypted."""

    id: bytes
    kind: int
    version: int
    public: dict[str, Any]
    aad: bytes
    nonce: bytes
    ciphertext: bytes
    signer: bytes


def seal(
    kind: int, public: dict[str, Any], sealed: dict[str, Any], keys: VaultKeys, signer: SigningKey
) -> bytes:
    """Encode, encrypt and sign a record."""
    return seal_packed(kind, public, c.pack(sealed), keys, signer)


def seal_packed(
    kind: int,
    public: dict[str, Any],
    plain: bytes,
    keys: VaultKeys,
    signer: SigningKey,
    version: int = RECORD_VERSION,
) -> bytes:
    """Encode, encrypt and sign a record whose sealed map is already packed (``plain``)."""
    pub = c.pack(public)
    head = HEAD.pack(RECORD_MAGIC, version, kind, 0, len(pub)) + pub
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
    if version not in VERSIONS:
        raise UnknownVersionError(f"record version {version} is not supported")
    if kind not in KIND_NAMES or flags or (kind == KIND_PART and version < PARTS_VERSION):
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
        version=version,
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
        check_entry_path(f["path"], path)
        if f["mode"] > MAX_MODE or "\0" in f["target"]:
            raise FormatError(f"{path}: mode {f['mode']:#o} or symlink target out of range")
        chunks = tuple(_chunk_ref(x, f"{path}.chunks[{i}]") for i, x in enumerate(f["chunks"]))
        if f["type"] == "f" and sum(n for _, n in chunks) != f["size"]:
            raise FormatError(f"{path}: chunk lengths do not add up to the file size")
        return cls(**{**f, "chunks": chunks})


def check_entry_path(rel: str, where: str) -> str:
    """An entry's path is relative to its source's root and stays under it: not empty,
    not absolute, no ``..``, ``.`` or empty component, no NUL."""
    parts = rel.split("/")
    if not rel or "\0" in rel or rel.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise FormatError(f"{where}: entry path {rel!r} escapes its source root")
    return rel


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
        return {"entries": [e.to_obj() for e in self.entries], **self.sealed_meta()}

    def sealed_meta(self) -> dict[str, Any]:
        """The sealed map of a version 2 head: the manifest's fields other than entries."""
        return {
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
    """The manifest as one version 1 record (whatever its size; see encode_manifest_records)."""
    return seal(KIND_MANIFEST, m.public(), m.sealed(), keys, signer)


def encode_manifest_records(
    m: Manifest,
    keys: VaultKeys,
    signer: SigningKey,
    *,
    inline_limit: int = INLINE_LIMIT,
    part_target: int = PART_TARGET,
) -> list[bytes]:
    """The records of a manifest, its head first: one version 1 record when it fits in
    ``inline_limit``, else a version 2 head followed by its parts, in order, each cut
    before the entry that would take its packed entries over ``part_target`` (readers
    depend on neither: the frozen fixtures use small ones)."""
    nchunks = len({cid for e in m.entries for cid, _ in e.chunks})
    total = 34 * nchunks + len(c.pack(m.sealed_meta())) + 1024  # the v1 record, estimated
    parts: list[bytes] = []
    held: list[tuple[int, list[bytes]]] = []  # runs cut while the manifest may still be v1
    start, run, size = 0, [], 0
    for i, e in enumerate(m.entries):  # packed entries are kept for one run at a time
        pe = c.pack(e.to_obj())
        total += len(pe)
        if run and size + len(pe) > part_target:
            held.append((start, run))
            start, run, size = i, [], 0
        run.append(pe)
        size += len(pe)
        if total > inline_limit:
            for s, r in held:
                parts.append(_seal_part(m, len(parts), s, r, keys, signer))
            held = []
    if total <= inline_limit:
        return [encode_manifest(m, keys, signer)]
    parts.append(_seal_part(m, len(parts), start, run, keys, signer))
    public = {
        "vault": m.vault,
        "node": m.node,
        "source": m.source,
        "kind": m.kind,
        "tier": m.tier,
        "time_us": m.time_us,
        "parent": m.parent,
        "size": m.size,
        "nchunks": nchunks,
        "parts": [record_id(p) for p in parts],
    }
    head = seal_packed(
        KIND_MANIFEST, public, c.pack(m.sealed_meta()), keys, signer, version=PARTS_VERSION
    )
    return [head, *parts]


def _seal_part(
    m: Manifest,
    index: int,
    start: int,
    packed: Sequence[bytes],
    keys: VaultKeys,
    signer: SigningKey,
) -> bytes:
    """Part ``index``: the entries from ``start`` on; ``packed``: their msgpack bytes."""
    entries = m.entries[start : start + len(packed)]
    public = {
        "vault": m.vault,
        "node": m.node,
        "source": m.source,
        "index": index,
        "chunks": sorted({cid for e in entries for cid, _ in e.chunks}),
    }
    pk = msgpack.Packer(use_bin_type=True)
    plain = b"".join(
        [pk.pack_map_header(1), pk.pack("entries"), pk.pack_array_header(len(packed)), *packed]
    )
    return seal_packed(KIND_PART, public, plain, keys, signer, version=PARTS_VERSION)


def decode_manifest(
    data: bytes,
    keys: VaultKeys,
    *,
    trusted: bytes | set[bytes] | None = None,
    parts: Sequence[bytes] = (),
) -> Manifest:
    """Decode a manifest record; a version 2 head needs its ``parts`` records, in order."""
    raw = parse(data, expect_kind=KIND_MANIFEST)
    check_signer(raw, trusted)
    if raw.version == PARTS_VERSION:
        return _decode_parted(raw, keys, parts)
    if parts:
        raise FormatError("a version 1 manifest has no parts")
    pub = c.fields(raw.public, "manifest", _MANIFEST_PUBLIC)
    sealed = c.fields(unseal(raw, keys), "manifest", _MANIFEST_SEALED)
    entries = tuple(
        Entry.from_obj(e, f"manifest.entries[{i}]") for i, e in enumerate(sealed["entries"])
    )
    m = _manifest(pub, sealed, entries)
    if m.chunk_ids() != pub["chunks"] or m.size != pub["size"]:
        raise IntegrityError("manifest: public chunk list or size disagrees with its entries")
    return m


def _manifest(pub: dict[str, Any], sealed: dict[str, Any], entries: tuple[Entry, ...]) -> Manifest:
    if pub["kind"] not in SOURCE_KINDS or pub["tier"] not in TIERS:
        raise FormatError(f"manifest: unknown source kind {pub['kind']!r} or tier {pub['tier']!r}")
    _check_names(pub["vault"], pub["node"], [pub["source"]])
    return Manifest(
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


def _decode_parted(raw: RawRecord, keys: VaultKeys, parts: Sequence[bytes]) -> Manifest:
    pub = c.fields(raw.public, "manifest", _HEAD_PUBLIC)
    sealed = c.fields(unseal(raw, keys), "manifest", _HEAD_SEALED)
    entries: list[Entry] = []
    for i, (part, ppub) in enumerate(_bound_parts(raw, pub, parts)):
        entries.extend(_part_entries(part, ppub, i, keys))
    m = _manifest(pub, sealed, tuple(entries))
    if len(m.chunk_ids()) != pub["nchunks"] or m.size != pub["size"]:
        raise IntegrityError("manifest: chunk count or size disagrees with its parts' entries")
    return m


def _part_entries(part: RawRecord, ppub: dict[str, Any], i: int, keys: VaultKeys) -> list[Entry]:
    body = c.fields(unseal(part, keys), f"manifest part {i}", {"entries": c.list_of(c.is_any)})
    run = [
        Entry.from_obj(e, f"manifest.parts[{i}].entries[{j}]")
        for j, e in enumerate(body["entries"])
    ]
    if sorted({cid for e in run for cid, _ in e.chunks}) != ppub["chunks"]:
        raise IntegrityError(f"manifest part {i}: public chunk list disagrees with its entries")
    return run


def part_entries(head: bytes, index: int, part: bytes, keys: VaultKeys) -> list[Entry]:
    """The entries of part ``index`` of the version 2 manifest ``head``, checked to be the
    part the head names: a reader that keeps one part in memory at a time (the totals
    over all parts are checked only by :func:`decode_manifest`)."""
    raw = parse(head, expect_kind=KIND_MANIFEST)
    if raw.version != PARTS_VERSION:
        raise FormatError("a version 1 manifest has no parts")
    pub = c.fields(raw.public, "manifest", _HEAD_PUBLIC)
    if not 0 <= index < len(pub["parts"]):
        raise IntegrityError(f"manifest {raw.id.hex()[:16]} has no part {index}")
    (bound,) = _bound_parts(raw, {**pub, "parts": [pub["parts"][index]]}, [part], first=index)
    return _part_entries(*bound, index, keys)


def _bound_parts(
    raw: RawRecord, pub: dict[str, Any], parts: Sequence[bytes], first: int = 0
) -> list[tuple[RawRecord, dict[str, Any]]]:
    """Check that ``parts`` are exactly the parts the signed head names, in its order
    (``pub["parts"]`` from position ``first`` on)."""
    what = f"manifest {raw.id.hex()[:16]}"
    if len(parts) != len(pub["parts"]):
        raise IntegrityError(f"{what} has {len(pub['parts'])} part(s), {len(parts)} were given")
    out = []
    for i, (pid, data) in enumerate(zip(pub["parts"], parts, strict=True), start=first):
        if record_id(data) != pid:
            raise IntegrityError(
                f"part {i} of {what} is not the part its signed head names",
                hint="the hub or bundle served a substituted or damaged part: restore from "
                "another region or bundle, and check the hub's store",
            )
        part = parse(data, expect_kind=KIND_PART)
        if part.signer != raw.signer:
            raise SignatureError(f"part {i} of {what} is signed by another key than its head")
        ppub = c.fields(part.public, f"manifest part {i}", _PART_PUBLIC)
        place = (ppub["vault"], ppub["node"], ppub["source"], ppub["index"])
        if place != (pub["vault"], pub["node"], pub["source"], i):
            raise IntegrityError(f"part {i} of {what} names another manifest or position")
        out.append((part, ppub))
    return out


def manifest_public(data: bytes) -> dict[str, Any]:
    """What the hub may read of a manifest without the vault key (signature checked).
    Version 1: the fields of the public map, with "chunks"; version 2 (a head): with
    "nchunks" and "parts" instead (see :func:`manifest_chunk_ids`)."""
    raw = parse(data, expect_kind=KIND_MANIFEST)
    spec = _HEAD_PUBLIC if raw.version == PARTS_VERSION else _MANIFEST_PUBLIC
    pub = c.fields(raw.public, "manifest", spec)
    _check_names(pub["vault"], pub["node"], [pub["source"]])
    return pub


def manifest_part_ids(data: bytes) -> list[bytes]:
    """The ids of a manifest's parts, in order (none for a version 1 manifest)."""
    return list(manifest_public(data).get("parts", []))


def manifest_chunk_ids(data: bytes, parts: Sequence[bytes] = ()) -> list[bytes]:
    """Every distinct chunk id a manifest needs, sorted, read without the vault key;
    a version 2 head needs its parts (checked to be the ones it names)."""
    raw = parse(data, expect_kind=KIND_MANIFEST)
    if raw.version != PARTS_VERSION:
        return list(c.fields(raw.public, "manifest", _MANIFEST_PUBLIC)["chunks"])
    pub = c.fields(raw.public, "manifest", _HEAD_PUBLIC)
    ids = {cid for _, ppub in _bound_parts(raw, pub, parts) for cid in ppub["chunks"]}
    return sorted(ids)


def part_public(data: bytes) -> dict[str, Any]:
    """The public fields of a manifest part (signature checked): what the hub indexes."""
    pub = c.fields(parse(data, expect_kind=KIND_PART).public, "manifest part", _PART_PUBLIC)
    _check_names(pub["vault"], pub["node"], [pub["source"]])
    return pub


_HEAD_PUBLIC: dict[str, c.Check] = {
    **{k: v for k, v in _MANIFEST_PUBLIC.items() if k != "chunks"},
    "nchunks": c.is_uint,
    "parts": c.list_of(c.is_id, max_len=100_000),
}
_HEAD_SEALED: dict[str, c.Check] = {"meta": c.dict_of(c.is_any), "lineage": c.dict_of(c.is_str)}
_PART_PUBLIC: dict[str, c.Check] = {
    "vault": c.is_str,
    "node": c.is_str,
    "source": c.is_str,
    "index": c.is_uint,
    "chunks": c.list_of(c.is_id),
}


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


def _check_names(vault: str, node: str, sources: Any) -> None:
    """Names in records become paths on restore (``<dest>/<source>``): a crafted record
    naming a source ``../../etc`` is refused here, like a bad name in agent.toml."""
    check_name(vault, "vault")
    check_name(node, "node")
    for name in sources:
        check_name(name, "source")


def _checkpoint_from_public(pub: dict[str, Any], note: str) -> Checkpoint:
    _check_names(pub["vault"], pub["node"], pub["manifests"])
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
