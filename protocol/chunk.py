"""Chunk ids and the chunk blob codec.

id    = BLAKE3-keyed(chunk-id subkey, plaintext)                          32 bytes
nonce = BLAKE3-keyed(chunk-nonce subkey, prefix || id || body)[:12]       (version 2)
blob  = prefix(12) || nonce(12) || AES-256-GCM(chunk-enc subkey, nonce,
                                               aad=prefix || nonce || id, body)
body  = zstd?(plaintext)

Version 2 (written) derives the nonce from the encoded body (a synthetic nonce), so
two different bodies of one chunk (another zstd level or library) never share a GCM
nonce; version 1 (read only) used ``id[:12]``, which they did (docs/DECISIONS.md D33).
Deterministic: the same body under the same vault key always gives the same blob, so
every store write is idempotent. Thread-safe and free of I/O; the heavy calls (BLAKE3,
zstd, AES-GCM) release the GIL, so callers run them in a thread pool. Layout in
docs/FORMAT.md ("Chunk blob").
"""

from __future__ import annotations

import struct
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from amber.protocol.errors import FormatError, IntegrityError, UnknownVersionError
from amber.protocol.keys import VaultKeys

CHUNK_MAGIC = b"AMBC"
CHUNK_VERSION = 2  # what writers produce
READ_VERSIONS = (1, 2)
# the prefix every version starts with: magic, version, flags, reserved, plaintext length
HEADER = struct.Struct(">4sBBHI")
HEADER_SIZE = HEADER.size  # 12: the whole header of version 1
NONCE_SIZE = 12
HEADER_SIZES = {1: HEADER_SIZE, 2: HEADER_SIZE + NONCE_SIZE}  # version 2 adds its nonce
TAG_SIZE = 16
ID_SIZE = 32
FLAG_ZSTD = 0x01
KNOWN_FLAGS = FLAG_ZSTD
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_LEVEL = 3
MIN_SAVING = 0.05  # store raw when zstd saves less than this
SAMPLE_FROM = 256 * 1024  # chunks at least this big are sampled before compressing
SAMPLE_SIZE = 16 * 1024

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def chunk_id(keys: VaultKeys, plaintext: bytes | memoryview) -> bytes:
    """Keyed BLAKE3 of the plaintext: the hub cannot confirm guesses about content."""
    return blake3.blake3(plaintext, key=keys.chunk_id).digest()


def _worth_compressing(data: bytes | memoryview) -> bool:
    """A cheap, deterministic look at one sample; skips incompressible chunks.

    One 16 KiB window from the middle, compressed at level 1 (about 6 % of the work of
    compressing a 256 KiB chunk; three windows cost 19 % and decided the same on every
    kind of data the benchmarks hold, since one chunk of weights, archive or media is
    uniform at this scale).
    """
    n = len(data)
    if n < SAMPLE_FROM:
        return True
    mid = n // 2
    packed = _compressor(1).compress(memoryview(data)[mid : mid + SAMPLE_SIZE])
    return len(packed) < SAMPLE_SIZE * (1 - MIN_SAVING / 2)


def encode_chunk(
    keys: VaultKeys,
    plaintext: bytes | memoryview,
    *,
    level: int = DEFAULT_LEVEL,
    cid: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Return ``(id, blob)`` for one chunk of plaintext.

    ``cid`` may pass an id the caller already computed with :func:`chunk_id` for this
    very plaintext (it is not re-checked here; decoding always checks it).
    """
    n = len(plaintext)
    if n > MAX_CHUNK_SIZE:
        raise FormatError(f"chunk of {n} bytes exceeds the {MAX_CHUNK_SIZE}-byte limit")
    if cid is None:
        cid = chunk_id(keys, plaintext)
    flags, body = 0, plaintext
    if n and _worth_compressing(plaintext):
        packed = _compressor(level).compress(plaintext)
        if len(packed) <= n * (1 - MIN_SAVING):
            flags, body = FLAG_ZSTD, packed
    prefix = HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, flags, 0, n)
    header = prefix + synthetic_nonce(keys, prefix, cid, body)
    sealed = AESGCM(keys.chunk_enc).encrypt(header[HEADER_SIZE:], body, header + cid)
    return cid, header + sealed


def synthetic_nonce(keys: VaultKeys, prefix: bytes, cid: bytes, body: bytes | memoryview) -> bytes:
    """The version 2 nonce: a keyed hash of everything the GCM key seals (the 12-byte
    header prefix, the id and the encoded body), so that two different bodies get two
    nonces whatever the writer's compression level, library or policy."""
    h = blake3.blake3(prefix, key=keys.chunk_nonce)
    h.update(cid)
    h.update(body)
    return h.digest(NONCE_SIZE)


def parse_chunk_header(blob: bytes | memoryview) -> tuple[int, int]:
    """Check magic, version, flags and length; return ``(flags, plaintext_length)``.

    Needs no key: the hub checks blobs with it before storing them."""
    if len(blob) < HEADER_SIZE:
        raise FormatError(f"chunk blob truncated: {len(blob)} bytes is shorter than its header")
    magic, version, flags, reserved, n = HEADER.unpack_from(blob)
    if magic != CHUNK_MAGIC:
        raise FormatError("not an Amber chunk blob (bad magic)")
    if version not in READ_VERSIONS:
        raise UnknownVersionError(
            f"chunk blob version {version} is not supported (this Amber reads "
            f"versions {', '.join(map(str, READ_VERSIONS))})"
        )
    if flags & ~KNOWN_FLAGS or reserved:
        raise FormatError(f"chunk blob has unknown flags {flags:#x}/{reserved:#x}")
    if n > MAX_CHUNK_SIZE:
        raise FormatError(f"chunk blob claims {n} bytes, over the {MAX_CHUNK_SIZE}-byte limit")
    if len(blob) < HEADER_SIZES[version] + TAG_SIZE:
        raise FormatError("chunk blob truncated: no room for its header and tag")
    return flags, n


def blob_overhead(blob: bytes | memoryview) -> int:
    """Bytes a blob adds to its body (header and tag), by its version; call after
    :func:`parse_chunk_header`. A raw blob is exactly this plus its plaintext length."""
    return HEADER_SIZES[blob[4]] + TAG_SIZE


def decode_chunk(keys: VaultKeys, cid: bytes, blob: bytes | memoryview) -> bytes:
    """Authenticate and decrypt a blob, then check that it hashes back to ``cid``."""
    if len(cid) != ID_SIZE:
        raise FormatError(f"chunk id has {len(cid)} bytes, expected {ID_SIZE}")
    flags, n = parse_chunk_header(blob)
    size = HEADER_SIZES[blob[4]]
    header = bytes(blob[:size])
    nonce = cid[:NONCE_SIZE] if size == HEADER_SIZE else header[HEADER_SIZE:]
    try:
        # a view, not bytes(...): copying a blob of a few hundred KiB into a fresh buffer
        # cost more than decrypting it (measured 0.37 s against 0.06 s per 500 MiB)
        sealed = memoryview(blob)[size:]
        body = AESGCM(keys.chunk_enc).decrypt(nonce, sealed, header + cid)
    except InvalidTag:
        raise IntegrityError(
            f"chunk {cid.hex()[:16]} failed authentication "
            f"(corrupted, or not encrypted under vault key {keys.fingerprint})"
        ) from None
    if flags & FLAG_ZSTD:
        try:
            declared = zstandard.frame_content_size(body)
            if declared < 0 or declared != n:  # never let a frame size the allocation
                raise IntegrityError(f"chunk {cid.hex()[:16]} has a bad compressed frame size")
            body = _decompressor().decompress(body, max_output_size=n)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"chunk {cid.hex()[:16]} does not decompress: {exc}") from None
    if len(body) != n:
        raise IntegrityError(f"chunk {cid.hex()[:16]} has {len(body)} bytes, header says {n}")
    if chunk_id(keys, body) != cid:
        raise IntegrityError(f"chunk {cid.hex()[:16]} does not hash back to its id")
    return body
