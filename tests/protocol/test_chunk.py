"""Chunk ids and chunk blobs (AMBC)."""

from __future__ import annotations

import struct

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.protocol import chunk, keys
from amber.protocol.errors import AmberError, FormatError, IntegrityError, UnknownVersionError
from tests.support.checks import flip, raises

VAULT = keys.VaultKeys.from_master(bytes(range(32)))
OTHER_VAULT = keys.VaultKeys.from_master(bytes(range(1, 33)))
RANDOM_1K = blake3.blake3(b"incompressible").digest(1024)
TEXT_1K = (b"the agent remembers the conversation. " * 30)[:1024]

plaintexts = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=16), st.integers(1, 300)),
)


def expected_for_flip(blob: bytes, bit: int) -> type[AmberError]:
    """Which error a blob with this bit flipped must raise, by header field."""
    byte = bit // 8
    if byte < 4:
        return FormatError  # magic
    if byte == 4:
        return UnknownVersionError
    if byte == 5:
        return IntegrityError if bit % 8 == 0 else FormatError  # zstd flag is authenticated
    if byte in (6, 7):
        return FormatError  # reserved
    if byte < 12:
        (n,) = struct.unpack(">I", flip(blob, bit)[8:12])
        return FormatError if n > chunk.MAX_CHUNK_SIZE else IntegrityError
    return IntegrityError  # the nonce, the ciphertext and the tag


def seal_body(body: bytes, flags: int, n: int, cid: bytes, nonce: bytes = bytes(12)) -> bytes:
    """What a holder of the vault key could write: any body, any nonce, a valid tag."""
    header = chunk.HEADER.pack(b"AMBC", 2, flags, 0, n) + nonce
    return header + AESGCM(VAULT.chunk_enc).encrypt(nonce, body, header + cid)


def seal_v1(body: bytes, flags: int, n: int, cid: bytes) -> bytes:
    """A version 1 blob, as writers before version 2 made them: nonce = id[:12]."""
    header = chunk.HEADER.pack(b"AMBC", 1, flags, 0, n)
    return header + AESGCM(VAULT.chunk_enc).encrypt(cid[:12], body, header + cid)


# --- ids and round trips ----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(plain=plaintexts)
def test_round_trip_and_determinism(plain: bytes) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    assert cid == blake3.blake3(plain, key=VAULT.chunk_id).digest()
    assert (cid, blob) == chunk.encode_chunk(VAULT, plain)
    assert chunk.encode_chunk(VAULT, memoryview(plain)) == (cid, blob)
    assert chunk.decode_chunk(VAULT, cid, blob) == plain
    assert chunk.decode_chunk(VAULT, cid, memoryview(blob)) == plain


@settings(max_examples=50, deadline=None)
@given(plain=plaintexts)
def test_layout(plain: bytes) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    magic, version, flags, reserved, n, nonce = struct.unpack(">4sBBHI12s", blob[:24])
    assert (magic, version, reserved, n) == (b"AMBC", 2, 0, len(plain))
    body = AESGCM(VAULT.chunk_enc).decrypt(nonce, blob[24:], blob[:24] + cid)
    want = blake3.blake3(blob[:12] + cid + body, key=VAULT.chunk_nonce).digest(12)
    assert nonce == want
    if flags == chunk.FLAG_ZSTD:
        assert zstandard.ZstdDecompressor().decompress(body) == plain
        assert len(body) <= len(plain) * 0.95
    else:
        assert flags == 0 and body == plain and len(blob) == 24 + len(plain) + 16
    assert chunk.blob_overhead(blob) == 40


@settings(max_examples=30, deadline=None)
@given(plain=plaintexts)
def test_ids_and_blobs_depend_on_the_vault_key(plain: bytes) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    other_cid, other_blob = chunk.encode_chunk(OTHER_VAULT, plain)
    assert cid != other_cid and blob[12:] != other_blob[12:]
    raises(IntegrityError, chunk.decode_chunk, OTHER_VAULT, cid, blob)
    raises(IntegrityError, chunk.decode_chunk, OTHER_VAULT, other_cid, blob)


@settings(max_examples=30, deadline=None)
@given(plain=plaintexts)
def test_precomputed_id_gives_the_same_blob(plain: bytes) -> None:
    cid = chunk.chunk_id(VAULT, plain)
    assert chunk.encode_chunk(VAULT, plain, cid=cid) == chunk.encode_chunk(VAULT, plain)


def test_a_wrong_precomputed_id_makes_a_blob_nobody_can_read() -> None:
    """encode_chunk does not re-check a passed id: writers MUST pass the plaintext's own."""
    wrong = chunk.chunk_id(VAULT, RANDOM_1K)
    cid, blob = chunk.encode_chunk(VAULT, TEXT_1K, cid=wrong)
    assert cid == wrong
    raises(IntegrityError, chunk.decode_chunk, VAULT, wrong, blob)
    raises(IntegrityError, chunk.decode_chunk, VAULT, chunk.chunk_id(VAULT, TEXT_1K), blob)


def test_empty_chunk() -> None:
    cid, blob = chunk.encode_chunk(VAULT, b"")
    assert len(blob) == 40 and blob[5] == 0
    assert chunk.decode_chunk(VAULT, cid, blob) == b""


@pytest.mark.parametrize("level", [1, 3, 9, 19])
def test_compression_level_changes_nothing_but_the_body(level: int) -> None:
    cid, blob = chunk.encode_chunk(VAULT, TEXT_1K, level=level)
    assert cid == chunk.chunk_id(VAULT, TEXT_1K) and blob[5] == chunk.FLAG_ZSTD
    assert chunk.decode_chunk(VAULT, cid, blob) == TEXT_1K


# --- the compression decision -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(plain=plaintexts)
def test_small_chunks_are_compressed_iff_zstd_saves_five_percent(plain: bytes) -> None:
    _, blob = chunk.encode_chunk(VAULT, plain)
    packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(plain)
    want = bool(plain) and len(packed) <= len(plain) * 0.95
    assert blob[5] == (chunk.FLAG_ZSTD if want else 0)


def test_large_chunk_with_an_incompressible_sample_is_stored_raw() -> None:
    n, s = 512 * 1024, chunk.SAMPLE_SIZE
    data = bytearray(n)  # zeros: the whole would compress to almost nothing
    data[n // 2 : n // 2 + s] = blake3.blake3(b"noise").digest(s)  # but the sample is noise
    cid, blob = chunk.encode_chunk(VAULT, bytes(data))
    assert blob[5] == 0 and len(blob) == 24 + n + 16
    assert chunk.decode_chunk(VAULT, cid, blob) == data


@pytest.mark.parametrize(("size", "flags"), [(256 * 1024, chunk.FLAG_ZSTD), (512 * 1024, 0)])
def test_large_chunk_with_a_compressible_sample_is_judged_on_the_whole(size, flags) -> None:
    """Zeros exactly where the sample is, noise elsewhere: the sample says "compress";
    the whole then saves 16 KiB, which is 6.25 % of 256 KiB but only 3.1 % of 512 KiB."""
    s = chunk.SAMPLE_SIZE
    data = bytearray(blake3.blake3(b"noise").digest(size))
    data[size // 2 : size // 2 + s] = bytes(s)
    cid, blob = chunk.encode_chunk(VAULT, bytes(data))
    assert blob[5] == flags
    assert chunk.decode_chunk(VAULT, cid, blob) == data


def test_chunk_size_limit() -> None:
    raises(FormatError, chunk.encode_chunk, VAULT, bytes(chunk.MAX_CHUNK_SIZE + 1))
    cid, blob = chunk.encode_chunk(VAULT, b"x")
    for version in (1, 2):
        too_big = chunk.HEADER.pack(b"AMBC", version, 0, 0, chunk.MAX_CHUNK_SIZE + 1) + blob[12:]
        raises(FormatError, chunk.decode_chunk, VAULT, cid, too_big)


# --- damaged blobs ----------------------------------------------------------------------


@pytest.mark.parametrize("plain", [RANDOM_1K[:100], TEXT_1K], ids=["raw", "zstd"])
def test_every_bit_flip_is_refused(plain: bytes) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    for bit in range(len(blob) * 8):
        bad = flip(blob, bit)
        raises(expected_for_flip(blob, bit), chunk.decode_chunk, VAULT, cid, bad)
    for bit in range(len(cid) * 8):
        raises(IntegrityError, chunk.decode_chunk, VAULT, flip(cid, bit), blob)


@settings(max_examples=200, deadline=None)
@given(plain=plaintexts, data=st.data())
def test_random_bit_flip_is_refused(plain: bytes, data: st.DataObject) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    raises(expected_for_flip(blob, bit), chunk.decode_chunk, VAULT, cid, flip(blob, bit))


@pytest.mark.parametrize("plain", [RANDOM_1K[:100], TEXT_1K, b""], ids=["raw", "zstd", "empty"])
def test_every_truncation_and_trailing_garbage(plain: bytes) -> None:
    cid, blob = chunk.encode_chunk(VAULT, plain)
    for n in range(len(blob)):
        expected = FormatError if n < 24 + chunk.TAG_SIZE else IntegrityError
        raises(expected, chunk.decode_chunk, VAULT, cid, blob[:n])
    for garbage in (b"\0", b"\0" * 16, blob):
        raises(IntegrityError, chunk.decode_chunk, VAULT, cid, blob + garbage)


def test_unknown_versions_bad_magic_flags_and_reserved() -> None:
    cid, blob = chunk.encode_chunk(VAULT, TEXT_1K)
    for version in set(range(256)) - {1, 2}:
        raises(
            UnknownVersionError,
            chunk.decode_chunk,
            VAULT,
            cid,
            blob[:4] + bytes([version]) + blob[5:],
        )
    for magic in (b"AMBR", b"ambc", b"\0\0\0\0", b"AMBK"):
        raises(FormatError, chunk.decode_chunk, VAULT, cid, magic + blob[4:])
    for flags in range(2, 256):
        raises(FormatError, chunk.decode_chunk, VAULT, cid, blob[:5] + bytes([flags]) + blob[6:])
    raises(FormatError, chunk.decode_chunk, VAULT, cid, blob[:6] + b"\0\1" + blob[8:])


def test_wrong_id() -> None:
    cid, blob = chunk.encode_chunk(VAULT, TEXT_1K)
    other, _ = chunk.encode_chunk(VAULT, RANDOM_1K)
    raises(IntegrityError, chunk.decode_chunk, VAULT, other, blob)
    for size in (0, 12, 31, 33):
        raises(FormatError, chunk.decode_chunk, VAULT, cid[:size] + bytes(max(0, size - 32)), blob)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200), cid=st.binary(min_size=32, max_size=32))
def test_arbitrary_blob_only_amber_errors(blob: bytes, cid: bytes) -> None:
    for version in (b"\x01", b"\x02"):
        for flags in (b"\x00", b"\x01"):
            candidate = b"AMBC" + version + flags + b"\x00\x00" + blob
            with pytest.raises(FormatError):
                chunk.decode_chunk(VAULT, cid, candidate)
    with pytest.raises(FormatError):
        chunk.decode_chunk(VAULT, cid, blob)


# --- blobs forged by a holder of the vault key ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=300),
    zstd=st.booleans(),
    n=st.integers(0, 400),
    plain=st.binary(max_size=64),
)
def test_forged_body_with_valid_tag_never_yields_a_wrong_plaintext(body, zstd, n, plain) -> None:
    cid = chunk.chunk_id(VAULT, plain)
    blob = seal_body(body, chunk.FLAG_ZSTD if zstd else 0, n, cid)
    try:
        got = chunk.decode_chunk(VAULT, cid, blob)
    except IntegrityError:
        return
    assert got == plain


def test_forged_zstd_body_of_other_content_is_refused() -> None:
    plain = TEXT_1K
    cid = chunk.chunk_id(VAULT, plain)
    other = TEXT_1K.replace(b"agent", b"AGENT")
    body = zstandard.ZstdCompressor().compress(other)
    err = raises(
        IntegrityError, chunk.decode_chunk, VAULT, cid, seal_body(body, 1, len(plain), cid)
    )
    assert "hash back" in str(err)
    body = zstandard.ZstdCompressor().compress(plain + b"!")
    raises(IntegrityError, chunk.decode_chunk, VAULT, cid, seal_body(body, 1, len(plain), cid))
    raises(
        IntegrityError, chunk.decode_chunk, VAULT, cid, seal_body(plain[:-1], 0, len(plain), cid)
    )


def _zstd_frame_claiming(content_size: int, payload: bytes) -> bytes:
    """A zstd frame whose header claims ``content_size`` (single segment, one raw block)."""
    block = ((len(payload) << 3) | 1).to_bytes(3, "little")
    return b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", content_size) + block + payload


def test_forged_frame_content_size_is_bounded_by_the_header() -> None:
    plain = b"hello"
    cid = chunk.chunk_id(VAULT, plain)
    blob = seal_body(_zstd_frame_claiming(2**62, plain), chunk.FLAG_ZSTD, len(plain), cid)
    raises(IntegrityError, chunk.decode_chunk, VAULT, cid, blob)


# --- version 1 blobs (nonce = id[:12]) are still read --------------------------------------


def v1_blob(plain: bytes, level: int = 3) -> tuple[bytes, bytes]:
    """What a version 1 writer stored for ``plain`` (raw, or zstd at ``level``)."""
    cid = chunk.chunk_id(VAULT, plain)
    packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(plain)
    if plain and len(packed) <= len(plain) * 0.95:
        return cid, seal_v1(packed, chunk.FLAG_ZSTD, len(plain), cid)
    return cid, seal_v1(plain, 0, len(plain), cid)


@pytest.mark.parametrize("plain", [RANDOM_1K[:100], TEXT_1K, b""], ids=["raw", "zstd", "empty"])
def test_version_1_blobs_decode_and_every_bit_flip_is_refused(plain: bytes) -> None:
    cid, blob = v1_blob(plain)
    assert chunk.parse_chunk_header(blob)[1] == len(plain)
    assert chunk.blob_overhead(blob) == 28
    assert chunk.decode_chunk(VAULT, cid, blob) == plain
    for bit in range(len(blob) * 8):
        raises(expected_for_flip(blob, bit), chunk.decode_chunk, VAULT, cid, flip(blob, bit))
    for n in range(len(blob)):
        expected = FormatError if n < 28 else IntegrityError
        raises(expected, chunk.decode_chunk, VAULT, cid, blob[:n])


def test_a_version_1_blob_relabelled_version_2_is_refused() -> None:
    cid, blob = v1_blob(TEXT_1K)
    raises(IntegrityError, chunk.decode_chunk, VAULT, cid, blob[:4] + b"\x02" + blob[5:])
    cid, blob = chunk.encode_chunk(VAULT, TEXT_1K)
    raises(IntegrityError, chunk.decode_chunk, VAULT, cid, blob[:4] + b"\x01" + blob[5:])


# --- the attacker who sees two encodings of one chunk -------------------------------------


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def test_two_encodings_of_one_chunk_never_share_a_nonce() -> None:
    """The hub (or anyone reading the store) holds two blobs of one chunk, written at two
    zstd levels (a checkpoint at level 1, an in-place restore re-encrypting at level 3).

    Version 1 sealed both under nonce id[:12]: GCM's keystream depends only on key and
    nonce, so XORing the two ciphertexts gives the XOR of the two bodies, and a known
    body (here: the attacker guesses one) reveals the other; the shared nonce also gives
    away GHASH's key (forgery). Version 2 derives the nonce from the body: the nonces
    differ and the ciphertext XOR no longer equals the body XOR."""
    plain = b"".join(
        b"turn %d: the agent remembers the user's account number\n" % i for i in range(64)
    )
    cid = chunk.chunk_id(VAULT, plain)
    body1 = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(plain)
    body3 = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(plain)
    assert body1 != body3

    old1, old3 = (seal_v1(b, chunk.FLAG_ZSTD, len(plain), cid) for b in (body1, body3))
    assert chunk.decode_chunk(VAULT, cid, old1) == chunk.decode_chunk(VAULT, cid, old3) == plain
    c1, c3 = old1[12:-16], old3[12:-16]
    leak = xor(c1, c3)
    assert leak == xor(body1, body3)  # keystream cancelled: the bodies' XOR is public
    assert xor(leak, body1) == body3[: len(leak)]  # one known body gives the other away

    _, new1 = chunk.encode_chunk(VAULT, plain, level=1)
    _, new3 = chunk.encode_chunk(VAULT, plain, level=19)
    gcm = AESGCM(VAULT.chunk_enc)
    bodies = [gcm.decrypt(blob[12:24], blob[24:], blob[:24] + cid) for blob in (new1, new3)]
    assert bodies == [body1, body3]  # the same two bodies as under version 1
    assert new1[12:24] != new3[12:24]  # but two nonces
    assert xor(new1[24:-16], new3[24:-16]) != xor(body1, body3)  # so no keystream cancels
    assert chunk.decode_chunk(VAULT, cid, new1) == chunk.decode_chunk(VAULT, cid, new3) == plain
    assert chunk.encode_chunk(VAULT, plain, level=1)[1] == new1  # still deterministic
